"""The kubelet part of the agent: pods bound to this node become sandboxes, processes, events and status.

One reconcile shape, as kubelet's pod workers: informer events put the pod's uid on a `WorkQueue` (client-go
semantics: deduplicated, one worker per key at a time, per-key exponential back-off on failure, forgotten on
success); `sync_pod` makes the node match the pod: the sandbox (sandbox.py), each container's configuration
(envconfig.py: env from ConfigMaps and Secrets, or CreateContainerConfigError until they exist), the runtime's
processes, the probes (prober.py) and the status (status.py). A pod being deleted is stopped (SIGTERM, SIGKILL
after its terminationGracePeriodSeconds), its sandbox removed, and its API object then deleted for good (grace 0),
as the kubelet confirms a deletion. Everything kept per pod (`PodWork`) goes with the pod.

The runtime is polled every second: container starts, exits, restarts and back-offs become kubelet's events
(Pulled, Created, Started, BackOff, Failed; aggregated by the EventRecorder) and the pod's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwire.agent.kubelet import hooks, podspec, satoken, status, volumes
from kwire.agent.kubelet.envconfig import ConfigError, container_env
from kwire.agent.kubelet.execstream import AttachTarget, ExecTarget, enter_argv
from kwire.agent.kubelet.portforward import ForwardTarget
from kwire.agent.kubelet.prober import PodProbes
from kwire.agent.kubelet.resourcemetrics import ContainerRef
from kwire.agent.kubelet.runtime_client import RuntimeClient
from kwire.agent.kubelet.sandbox import Sandbox, SandboxError, Sandboxes
from kwire.agent.kubelet.security import nonroot_error, runtime_security
from kwire.base.tasks import cancel_and_wait
from kwire.base.workqueue import WorkQueue
from kwire.client import ApiClient, Conflict, Informer, NotFound, Resource
from kwire.client.client import CONFIGMAPS, PODS, SECRETS
from kwire.client.events import EventRecorder

log = logging.getLogger(__name__)

Obj = dict[str, Any]
RUNTIME_POLL = 1.0
KUBELET_CONDITIONS = frozenset({"PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"})
DEFAULT_GRACE = 30.0
VOLUME_RESYNC = 10.0  # seconds: configMap/secret/downwardAPI volumes follow their objects within this
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
NODE_MASKS = (
    "/var/lib/kwire",
    "/etc/kwire",
    "/run/kwire",
    "/run/netns",
    "/var/run/netns",
    "/etc/netns",
    "/var/lib/cni",
    "/etc/rancher",
    "/var/lib/rancher",
    "/root",
)
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
PVS = Resource("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
KINDS = {"configmap": CONFIGMAPS, "secret": SECRETS, "persistentvolumeclaim": PVCS, "persistentvolume": PVS}


class _NotSettled(Exception):
    """A pod sync that did what it could but must look again (after the pod's back-off); not an error."""


@dataclass
class PodWork:
    """What the kubelet keeps about one pod while it runs here (dropped at teardown)."""

    sandbox: Sandbox
    probes: PodProbes = field(default_factory=PodProbes)
    config_errors: dict[str, str] = field(default_factory=dict)  # container -> CreateContainerConfigError message
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # container -> resolved env
    volumes: dict[str, str] | None = None  # volume -> path on the node, once they are all set up
    pids: dict[str, int] = field(default_factory=dict)  # container -> its running process (for exec)
    rt: Obj = field(default_factory=dict)  # the runtime's last status of the pod's containers
    running: frozenset[str] = frozenset()  # the containers handed to the runtime (init containers reached, ...)
    runs_seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # container -> (restarts, startedAt)
    backoff_seen: dict[str, float] = field(default_factory=dict)  # container -> the back-off already reported
    responders_reported: bool = False
    phase: str = ""  # the phase last computed


def _field_path(pod: Obj, container: str) -> str:
    for key in ("initContainers", "ephemeralContainers"):
        for c in podspec.spec(pod).get(key) or []:
            if c.get("name") == container:
                return f"spec.{key}{{{container}}}"
    return f"spec.containers{{{container}}}"


class Kubelet:
    def __init__(
        self,
        *,
        client: ApiClient,
        pods: Informer,
        node_name: str,
        node_ip: str,
        data_dir: Path,
        netns_prefix: str,
        cluster_dns: str,
        cluster_domain: str,
        conflist: Path,
        cni_bin_dir: Path,
        runtime: RuntimeClient,
        logs_dir: Path | None = None,
        workers: int = 4,
    ) -> None:
        self.client = client
        self.pods = pods
        self.node_name = node_name
        self.node_ip = node_ip
        self.runtime = runtime
        # what no container sees (contain.py masks them): kwire's data, the node's namespaces, other pods' files
        self.masks = [*NODE_MASKS, str(data_dir.resolve()), *([str(logs_dir.resolve())] if logs_dir else [])]
        self.logs_dir = logs_dir  # the runtime's container logs (removed with their pod, as kubelet does)
        self.sandboxes = Sandboxes(
            state_dir=data_dir / "pods",
            netns_prefix=netns_prefix,
            node_ip=node_ip,
            conflist=conflist,
            cni_bin_dir=cni_bin_dir,
            cni_cache=data_dir / "cni" / "cache",
            cluster_dns=cluster_dns,
            cluster_domain=cluster_domain,
        )
        self.recorder = EventRecorder(client, component="kubelet", host=node_name)
        self.sa_tokens = satoken.ServiceAccountTokens(client, ca_pem=client.config.ca_data or b"")
        self.queue: WorkQueue[str] = WorkQueue(name="kubelet", base_delay=0.5, max_delay=30.0)
        self.work: dict[str, PodWork] = {}
        self.workers = workers
        self._keys: dict[str, str] = {}  # uid -> namespace/name, for pods the informer showed or this node runs
        self.finished: set[str] = set()  # pods that ended here (Succeeded/Failed): their sandbox is gone
        self._tasks: list[asyncio.Task[None]] = []

    # -- start-up -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        for uid, sb in self.sandboxes.load().items():
            self.work[uid] = PodWork(sb)
            self._keys[uid] = f"{sb.namespace}/{sb.name}"
        self.pods.on_add(self._on_pod)
        self.pods.on_update(self._on_pod_update)
        self.pods.on_delete(self._on_pod)
        for _ in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker()))
        self._tasks.append(asyncio.create_task(self._adopt_then_poll()))

    async def _adopt_then_poll(self) -> None:
        await self.pods.wait_synced()
        # Pods the informer listed before the handlers above were registered (the agent starts its informers
        # first, so pods bound before this node's kubelet started, e.g. DaemonSet pods, came in no add event).
        for pod in self.pods.items():
            await self._on_pod(pod)
        # Pods recorded here that the API no longer has (deleted while the agent was away) are torn down.
        for uid in list(self.work):
            self.queue.add(uid)
        while True:
            await asyncio.sleep(RUNTIME_POLL)
            try:
                await self._poll_runtime()
            except Exception as exc:
                log.warning("kubelet: runtime poll failed: %s", exc)
                try:
                    await self._recover_runtime()
                except Exception:  # the next poll tries again: the poll loop never ends but by cancellation
                    log.exception("kubelet: recovering the pod runtime failed")

    async def _recover_runtime(self) -> None:
        """A runtime that no longer answers (killed, crashed) is replaced and handed every pod again. The new one
        ends what the old one left running, so each pod's containers start afresh, as when kubelet finds a pod's
        sandbox dead: each container counts a restart."""
        if await self.runtime.alive():
            return
        try:
            await self.runtime.ensure_running()
        except RuntimeError as exc:
            log.warning("kubelet: cannot restart the pod runtime: %s", exc)
            return
        log.warning("kubelet: the pod runtime was gone; started a new one and handing it %d pods", len(self.work))
        for uid, w in list(self.work.items()):
            pod = self._current(uid)
            if pod is None:
                continue
            for c in podspec.spec(pod).get("containers") or []:
                name = str(c.get("name", ""))
                w.sandbox.restarts[name] = w.sandbox.restarts.get(name, 0) + 1
            self.sandboxes.save(w.sandbox)
            self.queue.add(uid)

    async def stop(self) -> None:
        self.queue.shutdown()
        for w in self.work.values():
            await w.probes.stop()
        await cancel_and_wait(*self._tasks)

    # -- the queue ----------------------------------------------------------------------------------------------
    async def _on_pod(self, pod: Obj) -> None:
        m = podspec.meta(pod)
        uid = str(m.get("uid", ""))
        if not uid:
            return
        self._keys[uid] = f"{m.get('namespace')}/{m.get('name')}"
        self.queue.add(uid)

    async def _on_pod_update(self, _old: Obj, new: Obj) -> None:
        await self._on_pod(new)

    async def _worker(self) -> None:
        await self.queue.process(self._sync, failed=self._failed)

    async def _sync(self, uid: str) -> None:
        try:
            if not await self.sync_pod(uid):
                raise _NotSettled  # e.g. a ConfigMap that does not exist yet: look again after the back-off
        finally:
            if uid not in self.work and self._current(uid) is None:
                self._keys.pop(uid, None)

    def _failed(self, uid: str, exc: Exception, delay: float | None) -> None:
        if not isinstance(exc, _NotSettled):
            log.warning("kubelet: sync of pod %s failed: %s; retrying in %.1fs", self._keys.get(uid, uid), exc, delay)

    def _current(self, uid: str) -> Obj | None:
        key = self._keys.get(uid)
        if not key:
            return None
        ns, _, name = key.partition("/")
        pod = self.pods.get(ns, name)
        if pod is None or podspec.meta(pod).get("uid") != uid:
            return None
        return pod

    # -- what the node's API (logs, exec, attach) asks ------------------------------------------------------------
    def _running(self, namespace: str, name: str) -> tuple[PodWork, Obj] | None:
        for uid, w in self.work.items():
            if w.sandbox.namespace == namespace and w.sandbox.name == name:
                pod = self._current(uid)
                if pod is not None:
                    return w, pod
        return None

    def exec_target(self, namespace: str, name: str, container: str) -> ExecTarget | None:
        """Where `kubectl exec` runs in a pod this node runs (None if it runs no such pod)."""
        found = self._running(namespace, name)
        if found is None:
            return None
        w, pod = found
        return self._target(w, container, pod=pod)

    def forward_target(self, namespace: str, name: str) -> ForwardTarget | None:
        """Where `kubectl port-forward` connects for a pod this node runs (None if it runs no such pod)."""
        found = self._running(namespace, name)
        if found is None:
            return None
        w, _ = found
        return ForwardTarget(netns=w.sandbox.netns, pod_uid=w.sandbox.uid)

    def resource_containers(self) -> list[ContainerRef]:
        """Every container of the pods this node runs, with its process when it has one (`/metrics/resource`)."""
        out = []
        for uid, w in list(self.work.items()):
            pod = self._current(uid)
            if pod is None or w.phase in ("Succeeded", "Failed"):
                continue
            for c in podspec.spec(pod).get("containers") or []:
                name = str(c.get("name", ""))
                out.append(ContainerRef(w.sandbox.namespace, w.sandbox.name, name, pid=w.pids.get(name, 0)))
        return out

    def attach_target(self, namespace: str, name: str, container: str) -> AttachTarget | None:
        """What attach needs of a container of a pod this node runs (its state is None for a container that is not
        a process), or None if the node runs no such pod."""
        found = self._running(namespace, name)
        if found is None:
            return None
        w, pod = found
        uid = w.sandbox.uid
        spec: dict[str, Any] = next((c for c in _all_containers(pod) if c.get("name") == container), {})

        async def state() -> dict[str, Any] | None:
            try:
                pods = await asyncio.wait_for(self.runtime.pods(), timeout=5.0)
            except Exception:  # the runtime restarting or slow: no news this time
                return None
            if uid not in pods:  # the sandbox is gone (the pod ended and was torn down): the attach is over
                return {"running": False, "exitCode": 0}
            found: dict[str, Any] | None = ((pods.get(uid) or {}).get("containers") or {}).get(container)
            return found

        async def write(data: bytes, close: bool) -> bool:
            return await self.runtime.write_stdin(uid, container, data, close=close)

        return AttachTarget(state=state, write=write, stdin_once=bool(spec.get("stdinOnce")))

    # -- sync -----------------------------------------------------------------------------------------------
    async def sync_pod(self, uid: str) -> bool:
        """Make the node match the pod; False when something must be looked at again later (a container's
        configuration that cannot be resolved yet)."""
        pod = self._current(uid)
        if pod is None or podspec.spec(pod).get("nodeName") != self.node_name:
            await self.teardown(uid, pod)
            if uid in self.finished and uid in self._keys:  # an ended pod's logs, kept until it was deleted
                ns, _, name = self._keys[uid].partition("/")
                self._remove_logs(ns, name, uid)
            self.finished.discard(uid)
            return True
        m = podspec.meta(pod)
        if m.get("deletionTimestamp"):
            await self.teardown(uid, pod)
            if uid in self.finished:
                self._remove_logs(str(m.get("namespace")), str(m.get("name")), uid)
            with contextlib.suppress(NotFound, Conflict):
                await self.client.delete(PODS, m["name"], m["namespace"], grace_period=0, preconditions={"uid": uid})
            return True
        if uid in self.finished or (
            (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and uid not in self.work
        ):
            return True
        w = self.work.get(uid)
        if w is None:
            try:
                sb = await self.sandboxes.create(pod)
            except SandboxError as exc:
                await self.recorder.event(pod, "Warning", "FailedCreatePodSandBox", str(exc))
                raise
            w = self.work[uid] = PodWork(sb)
            for message in self.sandboxes.dns_warnings(pod):
                await self.recorder.event(pod, "Warning", "DNSConfigForming", message)
        self.sandboxes.write_files(pod, w.sandbox)
        settled = await self._resolve_config(pod, w)
        try:
            w.volumes = await volumes.setup(
                pod,
                pod_dir=self.sandboxes.pod_dir(uid),
                get=self._get_config,
                pod_ip=w.sandbox.pod_ip,
                host_ip=self.node_ip,
            )
        except (volumes.MountError, OSError) as exc:
            # kubelet waits for the volumes before it starts any container: the pod stays ContainerCreating
            await self.recorder.event(pod, "Warning", "FailedMount", str(exc))
            if w.volumes is None:
                await self._report(pod, w)
                return False
        if volumes.needs_resync(pod):
            self.queue.add_after(uid, VOLUME_RESYNC)
        if satoken.mounts_token(pod):
            try:
                self.queue.add_after(uid, await self.sa_tokens.ensure(pod, self._sa_dir(uid)))
            except Exception as exc:
                # kubelet does not start a pod whose kube-api-access volume cannot be set up
                await self.recorder.event(
                    pod,
                    "Warning",
                    "FailedMount",
                    f'MountVolume.SetUp failed for volume "kube-api-access" : failed to fetch token: {exc}',
                )
                await self._report(pod, w)
                return False
        # what the runtime runs now decides which init containers are done (see _to_run)
        w.rt = dict(((await self.runtime.pods()).get(uid) or {}).get("containers") or {})
        await self._ensure_runtime(pod, w)
        w.probes.start(
            podspec.spec(pod).get("containers") or [],
            pod_ip=w.sandbox.pod_ip,
            netns=w.sandbox.netns,
            on_failure=lambda c, what, msg: self._probe_failed(uid, c, what, msg),
            on_flip=lambda: self.queue.add(uid),
            on_liveness_failure=lambda c: self._restart_container(uid, c),
            enter=lambda c, argv: enter_argv(self._target(w, c, pod=self._current(uid) or pod), argv),
        )
        await self._report(pod, w)
        if w.phase in ("Succeeded", "Failed"):
            # A pod that ended keeps its status and logs, but not its sandbox: kubelet kills it and the IP is freed.
            self.finished.add(uid)
            await self.teardown(uid, pod, stopping_events=False)
        return settled

    async def _get_config(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A ConfigMap, Secret, PVC or PV (None if it does not exist). GETs, not informers: a node reads only the
        few objects its pods name (kubelet's configMapManager in its Get strategy)."""
        try:
            return await self.client.get(KINDS[kind], name, namespace or None)
        except NotFound:
            return None

    async def _resolve_config(self, pod: Obj, w: PodWork) -> bool:
        """Each container's environment, or its CreateContainerConfigError (with kubelet's Failed event)."""
        errors: dict[str, str] = {}
        for c in _all_containers(pod):
            name = str(c.get("name", ""))
            if name in w.envs:
                continue  # a started container keeps the environment it started with, as in Kubernetes
            if refused := nonroot_error(pod, c):
                errors[name] = refused  # kuberuntime's verifyRunAsNonRoot, before the container is created
                await self.recorder.event(
                    pod, "Warning", "Failed", f"Error: {refused}", field_path=_field_path(pod, name)
                )
                continue
            try:
                w.envs[name] = await container_env(
                    c, pod, get=self._get_config, pod_ip=w.sandbox.pod_ip, host_ip=self.node_ip
                )
            except ConfigError as exc:
                errors[name] = str(exc)
                # every attempt is an event, aggregated by the recorder (`x8 over 8s`), as kubelet's
                await self.recorder.event(pod, "Warning", "Failed", f"Error: {exc}", field_path=_field_path(pod, name))
        w.config_errors = errors
        return not errors

    def _mounts(self, pod: Obj, w: PodWork, sa_dir: str) -> dict[str, list[list[Any]]]:
        """Each container's binds: its volumeMounts (subPath too) and the service-account directory."""
        out: dict[str, list[list[Any]]] = {}
        vols = w.volumes or {}
        for c in _all_containers(pod):
            binds: list[list[Any]] = []
            for vm in c.get("volumeMounts") or []:
                src = vols.get(str(vm.get("name") or ""))
                dst = str(vm.get("mountPath") or "")
                if src is None or not dst.startswith("/"):
                    continue
                sub = str(vm.get("subPath") or "")
                if sub and not sub.startswith("/") and ".." not in sub.split("/"):
                    src = f"{src}/{sub}"
                binds.append([src, dst, bool(vm.get("readOnly"))])
            if sa_dir:
                binds.append([sa_dir, SA_MOUNT, True])
            if binds:
                out[str(c.get("name", ""))] = binds
        return out

    @staticmethod
    def _to_run(pod: Obj, w: PodWork) -> tuple[list[Obj], dict[str, str]]:
        """The containers to run now and their own restart policies: init containers in order, each once the one
        before has completed (a sidecar, `restartPolicy: Always`, once it is running), then the regular ones.
        An init container kwire has no program for (it would be a responder) counts as completed at once."""
        sp = podspec.spec(pod)
        init_policy = "Never" if sp.get("restartPolicy") == "Never" else "OnFailure"
        run: list[Obj] = []
        policies: dict[str, str] = {}
        inits = sp.get("initContainers") or []
        plans = {p.name: p for p in podspec.plan(pod, inits)}
        for c in inits:
            name = str(c.get("name", ""))
            sidecar = status.is_sidecar(c)
            run.append(c)
            policies[name] = "Always" if sidecar else init_policy
            if plans[name].kind != "process":
                continue
            rc = w.rt.get(name) or {}
            if sidecar and not rc.get("running"):
                return run, policies
            if not sidecar and not (rc.get("done") and rc.get("exitCode") == 0):
                return run, policies
        ephemeral = list(sp.get("ephemeralContainers") or [])
        for c in ephemeral:
            policies[str(c.get("name", ""))] = "Never"  # ephemeral containers are never restarted
        return run + list(sp.get("containers") or []) + ephemeral, policies

    async def _ensure_runtime(self, pod: Obj, w: PodWork) -> None:
        sa_dir = str(self._sa_dir(w.sandbox.uid)) if satoken.mounts_token(pod) else ""
        run, policies = self._to_run(pod, w)
        w.running = frozenset(str(c.get("name", "")) for c in run)
        body = podspec.runtime_spec(
            pod,
            node=self.node_name,
            pod_ip=w.sandbox.pod_ip,
            host_ip=self.node_ip,
            netns=w.sandbox.netns,
            uts=w.sandbox.uts,
            envs=w.envs,
            skip=frozenset(w.config_errors),
            mounts=self._mounts(pod, w, sa_dir),
            stage=str(self.sandboxes.pod_dir(w.sandbox.uid) / "stage"),
            masks=self.masks,
            containers=run,
            restart_policies=policies,
        )
        await self.runtime.put_pod(w.sandbox.uid, body)

    def _sa_dir(self, uid: str) -> Path:
        """Where the pod's service-account files (satoken.py) live on the node."""
        return self.sandboxes.pod_dir(uid) / "serviceaccount"

    # -- probes -----------------------------------------------------------------------------------------------
    async def _probe_failed(self, uid: str, container: str, what: str, message: str) -> None:
        pod = self._current(uid)
        if pod is not None:
            await self.recorder.event(
                pod, "Warning", "Unhealthy", f"{what} probe failed: {message}", field_path=_field_path(pod, container)
            )

    async def _restart_container(self, uid: str, name: str) -> None:
        """Liveness failure: kill and start the pod's processes/responders again (the runtime is per pod)."""
        pod, w = self._current(uid), self.work.get(uid)
        if pod is None or w is None:
            return
        await self.recorder.event(
            pod,
            "Normal",
            "Killing",
            f"Container {name} failed liveness probe, will be restarted",
            field_path=_field_path(pod, name),
        )
        w.sandbox.restarts[name] = w.sandbox.restarts.get(name, 0) + 1
        self.sandboxes.save(w.sandbox)
        await self.runtime.delete_pod(uid, grace=self._grace(pod))
        await self._ensure_runtime(pod, w)

    @staticmethod
    def _grace(pod: Obj) -> float:
        g = podspec.spec(pod).get("terminationGracePeriodSeconds")
        return float(g) if isinstance(g, int) and g >= 0 else DEFAULT_GRACE

    # -- status and events ----------------------------------------------------------------------------------------
    async def _poll_runtime(self) -> None:
        """Container starts, exits and restarts happen in the runtime: a pod whose containers changed there is
        synced again (by the queue's worker, so one pod's status is never written by two hands at once)."""
        rt = await self.runtime.pods()
        for uid, w in list(self.work.items()):
            if dict((rt.get(uid) or {}).get("containers") or {}) != w.rt:
                self.queue.add(uid)

    async def _container_events(self, pod: Obj, w: PodWork, rt: Obj | None) -> None:
        """kubelet's container events, from what changed in the runtime since the last look."""
        rcs = (rt or {}).get("containers") or {}
        plans = {p.name: p for p in podspec.plan(pod, _all_containers(pod))}
        now = time.time()
        for c in _all_containers(pod):
            name, image = str(c.get("name", "")), str(c.get("image", ""))
            fp = _field_path(pod, name)
            plan = plans.get(name)
            if plan is None or plan.kind == "error":
                continue
            if plan.kind == "responder":
                if not w.responders_reported and rt is not None and name in w.running:
                    await self._started_events(pod, name, image, fp)
                continue
            rc = rcs.get(name)
            if not rc:
                continue
            run = (int(rc.get("restartCount") or 0), float(rc.get("startedAt") or 0))
            if run[1] and w.runs_seen.get(name) != run:
                w.runs_seen[name] = run
                if rc.get("reason") == "StartError":
                    await self.recorder.event(pod, "Normal", "Pulled", _pulled(image), field_path=fp)
                    await self.recorder.event(pod, "Normal", "Created", f"Created container: {name}", field_path=fp)
                    await self.recorder.event(
                        pod, "Warning", "Failed", f"Error: {rc.get('message', '')}", field_path=fp
                    )
                else:
                    await self._started_events(pod, name, image, fp)
                    handler = (c.get("lifecycle") or {}).get("postStart")
                    if isinstance(handler, dict) and rc.get("running") and rc.get("pid"):
                        await self._post_start(pod, w, c, handler, int(rc["pid"]))
            until = float(rc.get("backoffUntil") or 0)
            if until > now and w.backoff_seen.get(name) != until:
                w.backoff_seen[name] = until
                await self.recorder.event(
                    pod,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {name} in pod {status.pod_ref(pod)}",
                    field_path=fp,
                )
        if rt is not None:
            w.responders_reported = True

    def _target(self, w: PodWork, name: str, pid: int = 0, *, pod: Obj) -> ExecTarget:
        spec = next((c for c in _all_containers(pod) if c.get("name") == name), {})
        security = runtime_security(pod, spec)
        # a container with no process running (a responder, one not started): the command gets a confinement of
        # its own, as the container's would be (contain.py's spec, without the runtime's ready pipe)
        sa_dir = str(self._sa_dir(w.sandbox.uid)) if satoken.mounts_token(pod) else ""
        mounts = self._mounts(pod, w, sa_dir).get(name, [])
        contain = {
            **security,
            "stage": str(self.sandboxes.pod_dir(w.sandbox.uid) / "stage"),
            "mounts": mounts,
            "masks": self.masks,
            "pidns": not podspec.spec(pod).get("hostPID"),
        }
        return ExecTarget(
            netns=w.sandbox.netns,
            uts=w.sandbox.uts,
            env=dict(w.envs.get(name) or {}),
            pid=pid or w.pids.get(name, 0),
            security=security,
            contain=contain,
        )

    async def _post_start(self, pod: Obj, w: PodWork, c: Obj, handler: Obj, pid: int) -> None:
        """kubelet: a failed postStart hook is an event, and the container is killed (its policy restarts it)."""
        name = str(c.get("name", ""))
        msg = await hooks.run(
            handler,
            pod=pod,
            container=c,
            target=self._target(w, name, pid, pod=pod),
            pod_ip=w.sandbox.pod_ip,
            timeout=30,
        )
        if not msg:
            return
        fp = _field_path(pod, name)
        await self.recorder.event(pod, "Warning", "FailedPostStartHook", msg, field_path=fp)
        await self.recorder.event(pod, "Normal", "Killing", "FailedPostStartHook", field_path=fp)
        with contextlib.suppress(RuntimeError):
            await self.runtime.kill(w.sandbox.uid, name)

    async def _pre_stop(self, pod: Obj, w: PodWork, grace: float) -> float:
        """Run the preStop hooks (at most `grace` seconds in all); the grace that is left for SIGTERM."""
        start = time.monotonic()
        for c in _all_containers(pod):
            name = str(c.get("name", ""))
            handler = (c.get("lifecycle") or {}).get("preStop")
            if not isinstance(handler, dict) or name not in w.pids:
                continue
            left = grace - (time.monotonic() - start)
            if left <= 0:
                break
            msg = await hooks.run(
                handler,
                pod=pod,
                container=c,
                target=self._target(w, name, pod=pod),
                pod_ip=w.sandbox.pod_ip,
                timeout=left,
            )
            if msg:
                await self.recorder.event(pod, "Warning", "FailedPreStopHook", msg, field_path=_field_path(pod, name))
        return max(0.0, grace - (time.monotonic() - start))

    async def _started_events(self, pod: Obj, name: str, image: str, fp: str) -> None:
        await self.recorder.event(pod, "Normal", "Pulled", _pulled(image), field_path=fp)
        await self.recorder.event(pod, "Normal", "Created", f"Created container: {name}", field_path=fp)
        await self.recorder.event(pod, "Normal", "Started", f"Started container {name}", field_path=fp)

    def compute_status(self, pod: Obj, w: PodWork, rt: Obj | None) -> Obj:
        rcs = (rt or {}).get("containers") or {}

        def views(containers: list[Obj], *, init: bool) -> list[status.ContainerView]:
            plans = {p.name: p for p in podspec.plan(pod, containers)}
            out = []
            for c in containers:
                name = str(c.get("name", ""))
                plan = plans[name]
                kind = plan.kind
                if init and kind == "responder" and name in w.running:
                    kind = "completed"  # see _to_run
                elif name not in w.running and plan.kind != "error":
                    kind = "initializing"
                out.append(
                    status.ContainerView(
                        name=name,
                        image=str(c.get("image", "")),
                        cid=f"kwire://{w.sandbox.uid[:8]}-{name}",
                        kind=kind,
                        runtime=rcs.get(name),
                        config_error=w.config_errors.get(name, ""),
                        image_error=plan.error,
                        ready_probe=None if init else w.probes.ready(name),
                        extra_restarts=w.sandbox.restarts.get(name, 0),
                        sandbox_started=w.sandbox.started_at,
                    )
                )
            return out

        sp = podspec.spec(pod)
        return status.pod_status(
            status.PodView(
                pod=pod,
                host_ip=self.node_ip,
                pod_ip=w.sandbox.pod_ip,
                started_at=w.sandbox.started_at,
                init=views(list(sp.get("initContainers") or []), init=True),
                containers=views(list(sp.get("containers") or []), init=False),
                ephemeral=views(list(sp.get("ephemeralContainers") or []), init=False),
            )
        )

    async def _report(self, pod: Obj, w: PodWork, rt: Obj | None = None, *, fetch: bool = True) -> None:
        if rt is None and fetch:
            rt = (await self.runtime.pods()).get(w.sandbox.uid)
        w.rt = dict((rt or {}).get("containers") or {})
        await self._container_events(pod, w, rt)
        w.pids = {
            str(n): int(c["pid"])
            for n, c in ((rt or {}).get("containers") or {}).items()
            if c.get("pid") and c.get("running")
        }
        new = self.compute_status(pod, w, rt)
        w.phase = str(new["phase"])
        old = pod.get("status") or {}
        # Compared with what the API shows (as kubelet's status manager does), not only with what was last sent:
        # the node lifecycle controller marks pods unready while a node is unreachable, and that must be undone.
        if status.summary(new, KUBELET_CONDITIONS) == status.summary(old, KUBELET_CONDITIONS):
            return
        status.keep_transitions(new, old)
        m = podspec.meta(pod)
        with contextlib.suppress(NotFound):
            await self.client.patch(PODS, m["name"], {"status": new}, namespace=m["namespace"], subresource="status")

    # -- teardown -----------------------------------------------------------------------------------------------
    async def teardown(self, uid: str, pod: Obj | None, *, stopping_events: bool = True) -> None:
        w = self.work.get(uid)
        if w is None:
            return
        await w.probes.stop()
        grace = self._grace(pod) if pod is not None else 2.0
        if pod is not None and stopping_events:
            plans = {p.name: p for p in podspec.plan(pod)}
            for c in podspec.spec(pod).get("containers") or []:
                name = str(c.get("name", ""))
                if name in plans and plans[name].kind != "error" and name not in w.config_errors:
                    await self.recorder.event(
                        pod, "Normal", "Killing", f"Stopping container {name}", field_path=_field_path(pod, name)
                    )
        if pod is not None and stopping_events:
            grace = await self._pre_stop(pod, w, grace)
        await self.runtime.delete_pod(uid, grace=grace)
        await self.sandboxes.remove(w.sandbox)  # raises (and the queue retries) while CNI DEL fails
        self.work.pop(uid, None)
        self.sa_tokens.forget(uid)
        if stopping_events:
            self._remove_logs(w.sandbox.namespace, w.sandbox.name, uid)

    def _remove_logs(self, namespace: str, name: str, uid: str) -> None:
        """A deleted pod's container logs go with it (a pod that merely ended keeps them for `kubectl logs`);
        not while another pod of the same name runs here."""
        if self.logs_dir is None:
            return
        current = self.pods.get(namespace, name)
        if current is not None and podspec.meta(current).get("uid") != uid:
            return
        if any(w.sandbox.namespace == namespace and w.sandbox.name == name for w in self.work.values()):
            return
        prefix = f"{namespace}_{name}_"
        for p in self.logs_dir.glob(f"{prefix}*.log"):
            if "_" not in p.name[len(prefix) :]:  # names have no '_': exactly this pod's containers
                p.unlink(missing_ok=True)


def _all_containers(pod: Obj) -> list[Obj]:
    sp = podspec.spec(pod)
    return [*(sp.get("initContainers") or []), *(sp.get("containers") or []), *(sp.get("ephemeralContainers") or [])]


def _pulled(image: str) -> str:
    return f'Container image "{image}" already present on machine'
