"""The kubelet part of the agent: pods bound to this node become sandboxes, processes and status.

For each pod (keyed by uid): a network namespace `<prefix><uid12>`, CNI ADD through the node's conflist, the
pod's /etc/netns/<ns>/resolv.conf and hosts (what `ip netns exec` shows the pod's processes), the runtime's
processes/responders, probes, and the pod status. A pod being deleted is stopped, CNI DEL'd, its namespace
removed, and then its API object is deleted for good (grace period 0), as the kubelet confirms a deletion.

What the kubelet has set up is recorded in `<data-dir>/pods/<uid>.json`, so a restarted agent adopts running
pods (their namespace, IP and processes are left alone) and tears down pods deleted while it was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kwire.agent.kubelet import podspec
from kwire.agent.kubelet.execstream import AttachTarget
from kwire.agent.kubelet.probes import ProbeState, run_probe
from kwire.agent.kubelet.runtime_client import RuntimeClient
from kwire.base.files import atomic_write, write_if_changed
from kwire.client import ApiClient, ApiStatusError, Conflict, Informer, NotFound
from kwire.client.client import EVENTS, PODS
from kwire.cni import invoke as cni
from kwire.kernel import netns

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ETC_NETNS = Path("/etc/netns")
CNI_PLUGIN_DIR = "/usr/lib/cni"
RUNTIME_POLL = 1.0
KUBELET_CONDITIONS = frozenset({"PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    netns: str  # "" for hostNetwork pods
    pod_ip: str
    started_at: str
    host_network: bool = False
    readiness: dict[str, ProbeState] = field(default_factory=dict)
    liveness: dict[str, ProbeState] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    last_status: Obj | None = None
    error: str = ""

    def record(self) -> Obj:
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "netns": self.netns,
            "podIP": self.pod_ip,
            "startedAt": self.started_at,
            "hostNetwork": self.host_network,
            "restarts": self.restarts,
        }


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
    ) -> None:
        self.client = client
        self.pods = pods
        self.node_name = node_name
        self.node_ip = node_ip
        self.state_dir = data_dir / "pods"
        self.netns_prefix = netns_prefix
        self.cluster_dns = cluster_dns
        self.cluster_domain = cluster_domain
        self.conflist_path = conflist
        self.cni_path = [str(cni_bin_dir), CNI_PLUGIN_DIR]
        self.cni_cache = data_dir / "cni" / "cache"
        self.runtime = runtime
        self.states: dict[str, PodState] = {}
        self._keys: dict[str, str] = {}  # uid -> namespace/name
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- start-up -----------------------------------------------------------------------------------------------
    def _load_records(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for p in self.state_dir.glob("*.json"):
            try:
                r = json.loads(p.read_text())
                st = PodState(
                    uid=r["uid"],
                    namespace=r["namespace"],
                    name=r["name"],
                    netns=r["netns"],
                    pod_ip=r["podIP"],
                    started_at=r["startedAt"],
                    host_network=bool(r.get("hostNetwork")),
                    restarts={str(k): int(v) for k, v in (r.get("restarts") or {}).items()},
                )
            except (OSError, ValueError, KeyError) as exc:
                log.warning("kubelet: ignoring unreadable pod record %s: %s", p, exc)
                continue
            self.states[st.uid] = st
            self._keys[st.uid] = f"{st.namespace}/{st.name}"

    def _save(self, st: PodState) -> None:
        atomic_write(self.state_dir / f"{st.uid}.json", json.dumps(st.record()))

    async def start(self, *, workers: int = 4) -> None:
        self._load_records()
        self.pods.on_add(self._on_pod)
        self.pods.on_update(self._on_pod_update)
        self.pods.on_delete(self._on_pod)
        for _ in range(workers):
            self._tasks.append(asyncio.create_task(self._worker()))
        self._tasks.append(asyncio.create_task(self._adopt_then_poll()))

    async def _adopt_then_poll(self) -> None:
        await self.pods.wait_synced()
        # Pods the informer listed before the handlers above were registered (the agent starts its informers
        # first, so pods bound before this node's kubelet started, e.g. DaemonSet pods, came in no add event).
        for pod in self.pods.items():
            await self._on_pod(pod)
        # Pods recorded here that the API no longer has (deleted while the agent was away) are torn down.
        for uid in list(self.states):
            self._enqueue(uid)
        while True:
            await asyncio.sleep(RUNTIME_POLL)
            try:
                await self._poll_runtime()
            except Exception as exc:
                log.warning("kubelet: runtime poll failed: %s", exc)
                await self._recover_runtime()

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
        log.warning("kubelet: the pod runtime was gone; started a new one and handing it %d pods", len(self.states))
        for st in list(self.states.values()):
            pod = self._current(st.uid)
            if pod is None:
                continue
            for c in podspec.spec(pod).get("containers") or []:
                name = str(c.get("name", ""))
                st.restarts[name] = st.restarts.get(name, 0) + 1
            self._save(st)
            self._enqueue(st.uid)

    async def stop(self) -> None:
        for st in self.states.values():
            for t in st.probe_tasks:
                t.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- events -------------------------------------------------------------------------------------------------
    def _enqueue(self, uid: str) -> None:
        if uid and uid not in self._queued:
            self._queued.add(uid)
            self._queue.put_nowait(uid)

    async def _on_pod(self, pod: Obj) -> None:
        m = podspec.meta(pod)
        uid = str(m.get("uid", ""))
        self._keys[uid] = f"{m.get('namespace')}/{m.get('name')}"
        self._enqueue(uid)

    async def _on_pod_update(self, _old: Obj, new: Obj) -> None:
        await self._on_pod(new)

    async def _worker(self) -> None:
        while True:
            uid = await self._queue.get()
            self._queued.discard(uid)
            lock = self._locks.setdefault(uid, asyncio.Lock())
            async with lock:
                try:
                    await self.sync_pod(uid)
                except Exception as exc:
                    log.warning("kubelet: sync of pod %s failed: %s; retrying", self._keys.get(uid, uid), exc)
                    asyncio.get_running_loop().call_later(2.0, self._enqueue, uid)

    def _running(self, namespace: str, name: str) -> PodState | None:
        for st in self.states.values():
            if st.namespace == namespace and st.name == name and self._current(st.uid) is not None:
                return st
        return None

    def pod_netns(self, namespace: str, name: str) -> str | None:
        """The network namespace of a pod this node runs ("" for hostNetwork), None if it runs no such pod."""
        st = self._running(namespace, name)
        return st.netns if st is not None else None

    def attach_target(self, namespace: str, name: str, container: str) -> AttachTarget | None:
        """What attach needs of a container of a pod this node runs (its state is None for a container that is not
        a process), or None if the node runs no such pod."""
        st = self._running(namespace, name)
        pod = self._current(st.uid) if st is not None else None
        if st is None or pod is None:
            return None
        uid = st.uid
        spec: dict[str, Any] = next(
            (c for c in podspec.spec(pod).get("containers") or [] if c.get("name") == container), {}
        )

        async def state() -> dict[str, Any] | None:
            try:
                pods = await self.runtime.pods()
            except Exception:  # the runtime restarting: no news this time
                return None
            found: dict[str, Any] | None = ((pods.get(uid) or {}).get("containers") or {}).get(container)
            return found

        async def write(data: bytes, close: bool) -> bool:
            return await self.runtime.write_stdin(uid, container, data, close=close)

        return AttachTarget(state=state, write=write, stdin_once=bool(spec.get("stdinOnce")))

    def _current(self, uid: str) -> Obj | None:
        key = self._keys.get(uid)
        if not key:
            return None
        ns, _, name = key.partition("/")
        pod = self.pods.get(ns, name)
        if pod is None or podspec.meta(pod).get("uid") != uid:
            return None
        return pod

    # -- sync -----------------------------------------------------------------------------------------------
    async def sync_pod(self, uid: str) -> None:
        pod = self._current(uid)
        if pod is None or podspec.spec(pod).get("nodeName") != self.node_name:
            await self.teardown(uid)
            return
        if podspec.meta(pod).get("deletionTimestamp"):
            await self.teardown(uid)
            m = podspec.meta(pod)
            with contextlib.suppress(NotFound, Conflict):
                await self.client.delete(PODS, m["name"], m["namespace"], grace_period=0, preconditions={"uid": uid})
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and uid not in self.states:
            return
        st = self.states.get(uid) or await self._create_sandbox(pod)
        if st is None:
            return
        await self._write_files(pod, st)
        await self._ensure_runtime(pod, st)
        self._ensure_probes(pod, st)
        await self.post_status(pod, st)

    async def _create_sandbox(self, pod: Obj) -> PodState | None:
        m, sp = podspec.meta(pod), podspec.spec(pod)
        uid = str(m["uid"])
        if sp.get("hostNetwork"):
            st = PodState(uid, m["namespace"], m["name"], "", self.node_ip, _now(), host_network=True)
        else:
            name = podspec.netns_name(self.netns_prefix, uid)
            await asyncio.to_thread(netns.create, name)
            args = {
                "IgnoreUnknown": "1",
                "K8S_POD_NAMESPACE": m["namespace"],
                "K8S_POD_NAME": m["name"],
                "K8S_POD_INFRA_CONTAINER_ID": uid,
                "K8S_POD_UID": uid,
            }
            caps: Obj = {}
            if pm := podspec.port_mappings(pod):
                caps["portMappings"] = pm
            if bw := podspec.bandwidth(pod):
                caps["bandwidth"] = bw
            conflist = await asyncio.to_thread(cni.load_conflist, self.conflist_path)
            try:
                result = await asyncio.to_thread(
                    cni.add_network,
                    conflist,
                    container_id=uid,
                    netns_path=netns.path(name),
                    ifname="eth0",
                    cni_path=self.cni_path,
                    args=args,
                    capability_args=caps,
                    cache_dir=self.cni_cache,
                )
            except cni.CniError as exc:
                await self._event(pod, "Warning", "FailedCreatePodSandBox", f"Failed to create pod sandbox: {exc}")
                await asyncio.to_thread(netns.remove, name)
                raise
            ips = [str(ip.get("address", "")).split("/")[0] for ip in result.get("ips") or []]
            if not ips:
                raise RuntimeError(f"CNI ADD for {m['namespace']}/{m['name']} returned no IP")
            st = PodState(uid, m["namespace"], m["name"], name, ips[0], _now())
        self.states[uid] = st
        self._save(st)
        log.info("kubelet: pod %s/%s sandbox ready (%s)", st.namespace, st.name, st.pod_ip)
        return st

    async def _write_files(self, pod: Obj, st: PodState) -> None:
        if st.host_network:
            return
        host_resolv = podspec.node_resolv_conf()
        d = ETC_NETNS / st.netns
        d.mkdir(parents=True, exist_ok=True)
        files = {
            "resolv.conf": podspec.resolv_conf(
                pod, cluster_dns=self.cluster_dns, cluster_domain=self.cluster_domain, host_resolv=host_resolv
            ),
            "hosts": podspec.hosts_file(pod, pod_ip=st.pod_ip, cluster_domain=self.cluster_domain),
        }
        for fname, text in files.items():
            write_if_changed(d / fname, text)

    async def _ensure_runtime(self, pod: Obj, st: PodState) -> None:
        errors = [p for p in podspec.plan(pod) if p.kind == "error"]
        st.error = "; ".join(p.error for p in errors)
        sa_dir = self._service_account(st) if podspec.needs_service_account(pod) else ""
        body = podspec.runtime_spec(
            pod, node=self.node_name, pod_ip=st.pod_ip, host_ip=self.node_ip, netns=st.netns, sa_dir=sa_dir
        )
        await self.runtime.put_pod(st.uid, body)

    def _service_account(self, st: PodState) -> str:
        """token, ca.crt and namespace for a pod's in-cluster client (kwire's built-in images)."""
        d = self.state_dir / st.uid / "serviceaccount"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = {
            "token": self.client.config.token or "",
            "ca.crt": (self.client.config.ca_data or b"").decode(),
            "namespace": st.namespace,
        }
        for name, text in files.items():
            write_if_changed(d / name, text, mode=0o600)
        return str(d)

    # -- probes -----------------------------------------------------------------------------------------------
    def _ensure_probes(self, pod: Obj, st: PodState) -> None:
        if st.probe_tasks:
            return
        for c in podspec.spec(pod).get("containers") or []:
            name = str(c.get("name", ""))
            if c.get("readinessProbe"):
                st.readiness[name] = ProbeState(c["readinessProbe"], initial=False)
                st.probe_tasks.append(asyncio.create_task(self._probe_loop(st, c, st.readiness[name], "Readiness")))
            if c.get("livenessProbe"):
                st.liveness[name] = ProbeState(c["livenessProbe"], initial=True)
                st.probe_tasks.append(asyncio.create_task(self._probe_loop(st, c, st.liveness[name], "Liveness")))

    async def _probe_loop(self, st: PodState, container: Obj, ps: ProbeState, what: str) -> None:
        await asyncio.sleep(ps.initial_delay)
        while True:
            ok, msg = await run_probe(ps.probe, container=container, pod_ip=st.pod_ip, netns=st.netns)
            flipped = ps.record(ok, msg)
            pod = self._current(st.uid)
            if not ok and pod is not None:
                await self._event(pod, "Warning", "Unhealthy", f"{what} probe failed: {msg}")
            if flipped and pod is not None:
                if what == "Liveness" and not ps.result:
                    await self._restart_container(pod, st, str(container.get("name", "")))
                    ps.reset()
                    await asyncio.sleep(ps.initial_delay)
                self._enqueue(st.uid)
            await asyncio.sleep(ps.period)

    async def _restart_container(self, pod: Obj, st: PodState, name: str) -> None:
        """Liveness failure: kill and start the pod's processes/responders again (the runtime is per pod)."""
        await self._event(pod, "Normal", "Killing", f"Container {name} failed liveness probe, will be restarted")
        st.restarts[name] = st.restarts.get(name, 0) + 1
        self._save(st)
        await self.runtime.delete_pod(st.uid)
        await self._ensure_runtime(pod, st)
        for rs in st.readiness.values():
            rs.reset()

    # -- status -----------------------------------------------------------------------------------------------
    async def _poll_runtime(self) -> None:
        """Container exits and restarts happen in the runtime; reflect them in the pod status."""
        status = await self.runtime.pods()
        for uid, st in list(self.states.items()):
            pod = self._current(uid)
            if pod is not None and st.last_status is not None:
                await self.post_status(pod, st, runtime_status=status.get(uid))

    def compute_status(self, pod: Obj, st: PodState, rt: Obj | None) -> Obj:
        containers = podspec.spec(pod).get("containers") or []
        rt_containers = (rt or {}).get("containers") or {}
        plans = {p.name: p for p in podspec.plan(pod)}
        statuses = []
        all_ready = True
        terminated = 0
        failed = 0
        for c in containers:
            name = str(c.get("name", ""))
            plan = plans[name]
            rc = rt_containers.get(name) or {}
            restarts = st.restarts.get(name, 0) + int(rc.get("restartCount", 0))
            cid = f"kwire://{st.uid[:8]}-{name}"
            base: Obj = {"name": name, "image": c.get("image", ""), "imageID": "", "restartCount": restarts}
            if plan.kind == "error":
                state: Obj = {"waiting": {"reason": "ErrImagePull", "message": plan.error}}
                ready = False
            elif plan.kind == "process" and rc and not rc.get("running"):
                code = rc.get("exitCode")
                if code is None:
                    state = {"waiting": {"reason": "ContainerCreating"}}
                elif (podspec.spec(pod).get("restartPolicy") or "Always") == "Always" or (
                    podspec.spec(pod).get("restartPolicy") == "OnFailure" and code != 0
                ):
                    state = {"waiting": {"reason": "CrashLoopBackOff", "message": f"exited with {code}"}}
                else:
                    state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
                    terminated += 1
                    failed += 1 if code else 0
                ready = False
            elif plan.kind == "process" and not rc:
                state = {"waiting": {"reason": "ContainerCreating"}}
                ready = False
            else:
                state = {"running": {"startedAt": st.started_at}}
                rp = st.readiness.get(name)
                ready = rp.result if rp is not None else True
            all_ready = all_ready and ready
            statuses.append({**base, "containerID": cid, "ready": ready, "started": "running" in state, "state": state})
        if containers and terminated == len(containers):
            phase = "Failed" if failed else "Succeeded"
            all_ready = False
        else:
            phase = "Running"
        now = _now()

        def cond(typ: str, ok: bool, reason: str = "") -> Obj:
            c: Obj = {
                "type": typ,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if reason and not ok:
                c["reason"] = reason
            return c

        conditions = [
            cond("PodReadyToStartContainers", True),
            cond("Initialized", True),
            cond("Ready", all_ready, "ContainersNotReady"),
            cond("ContainersReady", all_ready, "ContainersNotReady"),
            cond("PodScheduled", True),
        ]
        return {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.node_ip,
            "hostIPs": [{"ip": self.node_ip}],
            "podIP": st.pod_ip,
            "podIPs": [{"ip": st.pod_ip}],
            "startTime": st.started_at,
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
        }

    @staticmethod
    def _summary(status: Obj, types: frozenset[str] = KUBELET_CONDITIONS) -> tuple[Any, ...]:
        """What the kubelet owns in a pod status, without timestamps."""
        conds = tuple(
            sorted(
                (str(c.get("type")), str(c.get("status")))
                for c in status.get("conditions") or []
                if c.get("type") in types
            )
        )
        containers = tuple(
            (c.get("name"), c.get("ready"), c.get("restartCount"), tuple(sorted((c.get("state") or {}).keys())))
            for c in status.get("containerStatuses") or []
        )
        return (status.get("phase"), status.get("podIP"), status.get("hostIP"), conds, containers)

    async def post_status(self, pod: Obj, st: PodState, *, runtime_status: Obj | None = None) -> None:
        if runtime_status is None:
            runtime_status = (await self.runtime.pods()).get(st.uid)
        new = self.compute_status(pod, st, runtime_status)
        # Compared with what the API shows (as kubelet's status manager does), not only with what was last sent:
        # the node lifecycle controller marks pods unready while a node is unreachable, and that must be undone.
        if self._summary(new) == self._summary(pod.get("status") or {}):
            st.last_status = new
            return
        old_conds = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
        for c in new["conditions"]:
            prev = old_conds.get(c["type"])
            if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime"):
                c["lastTransitionTime"] = prev["lastTransitionTime"]
        m = podspec.meta(pod)
        try:
            await self.client.patch(PODS, m["name"], {"status": new}, namespace=m["namespace"], subresource="status")
        except NotFound:
            return
        st.last_status = new

    async def _event(self, pod: Obj, typ: str, reason: str, message: str) -> None:
        m = podspec.meta(pod)
        body = {
            "metadata": {"generateName": f"{m.get('name')}.", "namespace": m.get("namespace")},
            "involvedObject": {
                "kind": "Pod",
                "namespace": m.get("namespace"),
                "name": m.get("name"),
                "uid": m.get("uid"),
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message,
            "type": typ,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        with contextlib.suppress(ApiStatusError, OSError):
            await self.client.create(EVENTS, body, m.get("namespace"))

    # -- teardown -----------------------------------------------------------------------------------------------
    async def teardown(self, uid: str) -> None:
        st = self.states.pop(uid, None)
        if st is None:
            return
        for t in st.probe_tasks:
            t.cancel()
        await self.runtime.delete_pod(uid)
        if not st.host_network:
            try:
                conflist = await asyncio.to_thread(cni.load_conflist, self.conflist_path)
                await asyncio.to_thread(
                    cni.del_network,
                    conflist,
                    container_id=uid,
                    netns_path=netns.path(st.netns),
                    ifname="eth0",
                    cni_path=self.cni_path,
                    args={"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": st.namespace, "K8S_POD_NAME": st.name},
                    cache_dir=self.cni_cache,
                )
            except (cni.CniError, OSError) as exc:
                # CNI DEL must be retried until it succeeds, or the IP stays allocated (kubelet does the same).
                self.states[uid] = st
                raise RuntimeError(f"CNI DEL failed: {exc}") from exc
            await asyncio.to_thread(netns.remove, st.netns)
            shutil.rmtree(ETC_NETNS / st.netns, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / f"{uid}.json").unlink()
        shutil.rmtree(self.state_dir / uid, ignore_errors=True)
        log.info("kubelet: pod %s/%s torn down", st.namespace, st.name)
