"""The kubelet as users see it, in a real lab with the real kubectl: configuration from ConfigMaps and Secrets,
volumes, hostnames, container states and kubelet's events, logs, phases of run-to-completion pods, and cluster DNS
answering right after `lab up` returns."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labkit import Lab, in_terminal, wait_for

pytestmark = pytest.mark.lab

DNS_POD = """
apiVersion: v1
kind: Pod
metadata: {name: dns-at-once}
spec:
  restartPolicy: Never
  nodeName: node2
  containers: [{name: q, image: busybox, command: [nslookup, kubernetes.default]}]
"""

CONFIG = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: app}}
data: {{greeting: hello, color: blue, app.conf: "port=8080"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
data: {{password: {base64.b64encode(b"s3cret").decode()}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: configured, labels: {{app: configured}}}}
spec:
  hostname: box
  subdomain: group
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
    env:
    - {{name: GREETING, valueFrom: {{configMapKeyRef: {{name: app, key: greeting}}}}}}
    - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
    - {{name: BOTH, value: "$(GREETING)-$(PASSWORD)"}}
    envFrom: [{{prefix: APP_, configMapRef: {{name: app}}}}]
    volumeMounts:
    - {{name: cfg, mountPath: /etc/app}}
    - {{name: creds, mountPath: /etc/creds, readOnly: true}}
    - {{name: info, mountPath: /etc/podinfo}}
    - {{name: scratch, mountPath: /scratch}}
  volumes:
  - {{name: cfg, configMap: {{name: app}}}}
  - {{name: creds, secret: {{secretName: creds}}}}
  - name: info
    downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}
  - {{name: scratch, emptyDir: {{}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: waits-for-config}}
spec:
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
    env: [{{name: LATER, valueFrom: {{configMapKeyRef: {{name: later, key: value}}}}}}]
"""

STATES = """
apiVersion: v1
kind: Pod
metadata: {name: no-binary}
spec:
  containers: [{name: main, image: kwire/host, command: [/nonexistent/server]}]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - {name: main, image: kwire/host, command: [sh, -c, "echo run at $(date +%s%N); echo oops >&2; sleep 1; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: job-ok}
spec:
  restartPolicy: Never
  containers: [{name: main, image: kwire/host, command: [sh, -c, "echo start; sleep 2; echo done"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: job-fail}
spec:
  restartPolicy: Never
  containers: [{name: main, image: kwire/host, command: [sh, -c, "exit 7"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: unready}
spec:
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 81}, periodSeconds: 2}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("kwt-kubelet", 2, "vxlan") as lab_:
        # Right after `up` returns, before anything else: a pod on the second node resolves a name at once.
        lab_.apply(DNS_POD.replace("node2", lab_.topo.nodes[1].name))
        lab_.apply(CONFIG)
        lab_.apply(STATES)
        yield lab_


def _pod(lab: Lab, name: str) -> dict[str, Any]:
    out: dict[str, Any] = lab.get("pod", name)
    return out


def _events(lab: Lab, pod: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lab.get("events", "--field-selector", f"involvedObject.name={pod}")["items"]
    return items


def _state(lab: Lab, pod: str) -> dict[str, Any]:
    statuses = _pod(lab, pod).get("status", {}).get("containerStatuses") or [{}]
    out: dict[str, Any] = statuses[0]
    return out


def test_cluster_dns_answers_right_after_lab_up(lab: Lab) -> None:
    wait_for(lambda: _pod(lab, "dns-at-once")["status"].get("phase") in ("Succeeded", "Failed"), timeout=40)
    out = lab.kubectl("logs", "dns-at-once").stdout
    assert _pod(lab, "dns-at-once")["status"]["phase"] == "Succeeded", out
    assert "kubernetes.default.svc.cluster.local" in out and "10.43.0.1" in out


def test_env_volumes_and_hostname_from_the_pod(lab: Lab) -> None:
    lab.wait_pods_ready("app=configured", 1, timeout=40)
    env = dict(
        line.split("=", 1) for line in lab.kubectl("exec", "configured", "--", "env").stdout.splitlines() if "=" in line
    )
    assert env["GREETING"] == "hello" and env["PASSWORD"] == "s3cret" and env["BOTH"] == "hello-s3cret"
    assert env["APP_color"] == "blue" and env["APP_greeting"] == "hello"
    assert lab.kubectl("exec", "configured", "--", "hostname").stdout.strip() == "box"
    assert lab.kubectl("exec", "configured", "--", "cat", "/etc/hostname").stdout == "box\n"
    hosts = lab.kubectl("exec", "configured", "--", "cat", "/etc/hosts").stdout
    ip = _pod(lab, "configured")["status"]["podIP"]
    assert f"{ip}\tbox.group.default.svc.cluster.local\tbox" in hosts
    script = "cat /etc/app/app.conf; echo; cat /etc/creds/password; echo; cat /etc/podinfo/labels; touch /scratch/x"
    out = lab.kubectl("exec", "configured", "--", "sh", "-c", script).stdout
    assert out.splitlines() == ["port=8080", "s3cret", 'app="configured"']
    ro = lab.kubectl("exec", "configured", "--", "touch", "/etc/creds/x", check=False)
    assert ro.returncode != 0 and "Read-only file system" in ro.stderr
    # The volume follows the ConfigMap (kubelet's AtomicWriter swap), while the env it started with stays.
    lab.kubectl("patch", "configmap", "app", "--type", "merge", "-p", '{"data":{"color":"green"}}')
    wait_for(
        lambda: lab.kubectl("exec", "configured", "--", "cat", "/etc/app/color").stdout == "green",
        timeout=40,
        what="the ConfigMap change in the volume",
    )
    assert "APP_color=blue" in lab.kubectl("exec", "configured", "--", "env").stdout


SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_PODS = """
apiVersion: v1
kind: Pod
metadata: {name: sa-holder, labels: {app: sa-holder}}
spec:
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: sa-none, labels: {app: sa-none}}
spec:
  automountServiceAccountToken: false
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
"""


def _review(lab: Lab, token: str, tmp_path: Path) -> dict[str, Any]:
    body = tmp_path / "review.json"
    body.write_text(
        json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
    )
    out = lab.kubectl("create", "--raw", "/apis/authentication.k8s.io/v1/tokenreviews", "-f", str(body)).stdout
    status: dict[str, Any] = json.loads(out)["status"]
    return status


def test_each_pod_gets_a_token_of_its_own_bound_to_it(lab: Lab, tmp_path: Path) -> None:
    lab.apply(TOKEN_PODS)
    lab.wait_pods_ready("app=sa-holder", 1, timeout=40)
    lab.wait_pods_ready("app=sa-none", 1, timeout=40)
    token = lab.kubectl("exec", "sa-holder", "--", "cat", f"{SA_DIR}/token").stdout.strip()
    assert lab.kubectl("exec", "sa-holder", "--", "cat", f"{SA_DIR}/namespace").stdout == "default"
    ca = lab.kubectl("exec", "sa-holder", "--", "cat", f"{SA_DIR}/ca.crt").stdout
    assert ca == (lab.topo.state_dir / "server" / "tls" / "server-ca.crt").read_text()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 3607  # kubelet's lifetime; refreshed at 80 %
    assert claims["kubernetes.io"]["pod"]["name"] == "sa-holder"
    status = _review(lab, token, tmp_path)
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:default:default"
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["sa-holder"]
    # the DNS pod is kube-system/coredns, not an admin
    dns = lab.pods("k8s-app=kube-dns", namespace="kube-system")[0]["metadata"]["name"]
    dns_token = lab.kubectl("exec", "-n", "kube-system", dns, "--", "cat", f"{SA_DIR}/token").stdout.strip()
    assert _review(lab, dns_token, tmp_path)["user"]["username"] == "system:serviceaccount:kube-system:coredns"
    # automountServiceAccountToken: false: no token at all
    none = lab.kubectl("exec", "sa-none", "--", "cat", f"{SA_DIR}/token", check=False)
    assert none.returncode != 0 and "No such file" in none.stderr
    # the token dies with its pod
    lab.kubectl("delete", "pod", "sa-holder", "sa-none", "--wait=true")
    status = _review(lab, token, tmp_path)
    assert "authenticated" not in status and "not found" in status["error"]


def test_missing_config_waits_with_kubelets_reason_then_starts(lab: Lab) -> None:
    def waiting() -> dict[str, Any] | None:
        w = _state(lab, "waits-for-config").get("state", {}).get("waiting")
        return w if w and w.get("reason") == "CreateContainerConfigError" else None

    w = wait_for(waiting, timeout=30, what="CreateContainerConfigError")
    assert w["message"] == 'configmap "later" not found'
    assert any(
        e["reason"] == "Failed" and e["message"] == 'Error: configmap "later" not found'
        for e in _events(lab, "waits-for-config")
    )
    lab.kubectl("create", "configmap", "later", "--from-literal=other=1")
    wait_for(
        lambda: (
            (_state(lab, "waits-for-config").get("state", {}).get("waiting") or {}).get("message")
            == "couldn't find key value in ConfigMap default/later"
        ),
        timeout=40,
    )
    lab.kubectl("patch", "configmap", "later", "--type", "merge", "-p", '{"data":{"value":"now"}}')
    wait_for(lambda: "running" in _state(lab, "waits-for-config").get("state", {}), timeout=60, what="running")
    assert "LATER=now" in lab.kubectl("exec", "waits-for-config", "--", "env").stdout


def test_a_missing_program_is_crash_loop_back_off_with_kubelets_events(lab: Lab) -> None:
    def backing_off() -> dict[str, Any] | None:
        st = _state(lab, "no-binary")
        return st if (st.get("state", {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff" else None

    st = wait_for(backing_off, timeout=40, what="CrashLoopBackOff")
    uid = _pod(lab, "no-binary")["metadata"]["uid"]
    assert st["state"]["waiting"]["message"].endswith(f"restarting failed container=main pod=no-binary_default({uid})")
    last = st["lastState"]["terminated"]
    assert last["exitCode"] == 128 and last["reason"] == "StartError"
    assert 'exec: "/nonexistent/server": stat /nonexistent/server: no such file or directory' in last["message"]
    assert st["restartCount"] >= 1
    reasons = {e["reason"]: e for e in _events(lab, "no-binary")}
    assert reasons["Pulled"]["message"] == 'Container image "kwire/host" already present on machine'
    assert reasons["Created"]["message"] == "Created container: main"
    assert reasons["Failed"]["message"].startswith("Error: failed to create containerd task")
    assert reasons["BackOff"]["message"] == f"Back-off restarting failed container main in pod no-binary_default({uid})"
    assert reasons["BackOff"]["involvedObject"]["fieldPath"] == "spec.containers{main}"
    assert reasons["Failed"]["source"] == {"component": "kubelet", "host": _pod(lab, "no-binary")["spec"]["nodeName"]}
    row = lab.kubectl("get", "pod", "no-binary", "--no-headers").stdout.split()
    assert row[2] in ("CrashLoopBackOff", "RunContainerError")


def test_restarts_logs_previous_and_timestamps(lab: Lab) -> None:
    wait_for(lambda: _state(lab, "crasher").get("restartCount", 0) >= 1, timeout=40, what="a restart")
    st = wait_for(lambda: _state(lab, "crasher") if _state(lab, "crasher").get("lastState") else None, timeout=20)
    last = st["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error" and last["startedAt"] <= last["finishedAt"]
    prev = lab.kubectl("logs", "crasher", "--previous").stdout.splitlines()
    assert prev[0].startswith("run at ") and prev[1] == "oops"
    stamped = lab.kubectl("logs", "crasher", "--previous", "--timestamps").stdout.splitlines()
    assert stamped[1].endswith("Z oops") and stamped[1][:4].isdigit()
    assert lab.kubectl("logs", "crasher", "--previous", "--tail=1").stdout == "oops\n"
    bad = lab.kubectl("logs", "job-fail", "--previous", check=False)
    assert bad.returncode != 0 and 'previous terminated container "main" in pod "job-fail" not found' in bad.stderr


def test_run_to_completion_pods_and_logs_follow_ends(lab: Lab) -> None:
    wait_for(lambda: _pod(lab, "job-ok")["status"].get("phase") in ("Running", "Succeeded"), timeout=40)
    t = time.monotonic()
    follow = subprocess.run(
        ["timeout", "30", *_kubectl_argv(lab), "logs", "-f", "job-ok"], capture_output=True, text=True, check=False
    )
    assert follow.returncode == 0 and follow.stdout == "start\ndone\n" and time.monotonic() - t < 25
    wait_for(lambda: _pod(lab, "job-ok")["status"].get("phase") == "Succeeded", timeout=20, what="Succeeded")
    ok = _state(lab, "job-ok")["state"]["terminated"]
    assert ok["exitCode"] == 0 and ok["reason"] == "Completed"
    wait_for(lambda: _pod(lab, "job-fail")["status"].get("phase") == "Failed", timeout=40, what="Failed")
    failed = _state(lab, "job-fail")["state"]["terminated"]
    assert failed["exitCode"] == 7 and failed["reason"] == "Error"
    rows = {r.split()[0]: r.split()[2] for r in lab.kubectl("get", "pods", "--no-headers").stdout.splitlines()}
    assert rows["job-ok"] == "Completed" and rows["job-fail"] == "Error"
    # an ended pod keeps its logs until it is deleted; then they go, as kubelet removes a pod's log directory
    node = _pod(lab, "job-ok")["spec"]["nodeName"]
    log = lab.topo.state_dir / node / "runtime" / "logs" / "default_job-ok_main.log"
    assert log.exists()
    lab.kubectl("delete", "pod", "job-ok")
    wait_for(lambda: not log.exists(), timeout=20, what="the deleted pod's log file to go")


def test_a_failed_readiness_probe_is_an_event_with_kubelets_text(lab: Lab) -> None:
    ip = wait_for(lambda: _pod(lab, "unready")["status"].get("podIP"), timeout=40, what="a pod IP")

    def unhealthy() -> dict[str, Any] | None:
        return next((e for e in _events(lab, "unready") if e["reason"] == "Unhealthy"), None)

    ev = wait_for(unhealthy, timeout=30, what="Unhealthy")
    assert ev["message"] == f"Readiness probe failed: dial tcp {ip}:81: connect: connection refused"
    assert ev["type"] == "Warning"
    wait_for(lambda: (unhealthy() or {}).get("count", 0) >= 2, timeout=30, what="an aggregated repeat")
    assert "x" in lab.kubectl("describe", "pod", "unready").stdout.split("Unhealthy", 1)[1].splitlines()[0]
    assert not _state(lab, "unready")["ready"]


def _kubectl_argv(lab: Lab) -> list[str]:
    from tests.integration.apiserver import KUBECTL

    return [KUBECTL, "--kubeconfig", str(lab.topo.kubeconfig)]


INITS = """
apiVersion: v1
kind: Pod
metadata: {name: inits}
spec:
  initContainers:
  - {name: first, image: busybox, command: [sh, -c, "sleep 4; echo first done"]}
  - {name: sidecar, image: busybox, restartPolicy: Always, command: [sleep, "3600"]}
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: init-fails}
spec:
  restartPolicy: Never
  initContainers: [{name: bad, image: busybox, command: [sh, -c, "exit 2"]}]
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
"""


def test_init_containers_in_order_then_the_pod_runs(lab: Lab) -> None:
    lab.apply(INITS)
    seen: set[str] = set()

    def running() -> bool:
        row = lab.kubectl("get", "pod", "inits", "--no-headers").stdout.split()
        seen.add(row[2])
        return row[2] == "Running"

    wait_for(running, timeout=60, interval=0.3, what="inits Running")
    assert "Init:0/2" in seen, seen
    pod = _pod(lab, "inits")
    init = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}
    assert init["first"]["state"]["terminated"]["reason"] == "Completed"
    assert "running" in init["sidecar"]["state"] and init["sidecar"]["started"]
    conds = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conds["Initialized"] == "True"
    assert lab.kubectl("logs", "inits", "-c", "first").stdout == "first done\n"
    assert lab.kubectl("get", "pod", "inits", "--no-headers").stdout.split()[1] == "2/2"  # the sidecar counts

    wait_for(lambda: _pod(lab, "init-fails")["status"].get("phase") == "Failed", timeout=40, what="Failed")
    assert lab.kubectl("get", "pod", "init-fails", "--no-headers").stdout.split()[2] == "Init:Error"
    main = _state(lab, "init-fails")
    assert main["state"] == {"waiting": {"reason": "PodInitializing"}}


HOOKS = """
apiVersion: v1
kind: Pod
metadata: {name: hooked}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "trap 'echo got TERM >> /out/log; exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{name: out, mountPath: /out}]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "echo poststart $(hostname) >> /out/log"]}}
      preStop: {exec: {command: [sh, -c, "echo prestop >> /out/log"]}}
  volumes: [{name: out, hostPath: {path: OUT, type: DirectoryOrCreate}}]
---
apiVersion: v1
kind: Pod
metadata: {name: badhook}
spec:
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
    lifecycle: {postStart: {exec: {command: [sh, -c, "echo nope; exit 3"]}}}
"""


def test_lifecycle_hooks_and_the_grace_period(lab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    lab.apply(HOOKS.replace("OUT", str(out)))
    wait_for(lambda: "running" in _state(lab, "hooked").get("state", {}), timeout=40, what="hooked running")
    wait_for(lambda: (out / "log").read_text() == "poststart hooked\n", timeout=10, what="postStart")
    lab.kubectl("delete", "pod", "hooked", "--wait=false")
    # preStop first, then SIGTERM (the trap), all within terminationGracePeriodSeconds
    wait_for(lambda: (out / "log").read_text().splitlines()[1:] == ["prestop", "got TERM"], timeout=30, what="preStop")

    def failed_hook() -> dict[str, Any] | None:
        return next((e for e in _events(lab, "badhook") if e["reason"] == "FailedPostStartHook"), None)

    ev = wait_for(failed_hook, timeout=40, what="FailedPostStartHook")
    uid = _pod(lab, "badhook")["metadata"]["uid"]
    assert ev["message"].startswith(
        f'Exec lifecycle hook ([sh -c echo nope; exit 3]) for Container "main" in Pod "badhook_default({uid})" failed'
        " - error: command 'sh -c echo nope; exit 3' exited with 3: nope"
    )
    assert any(e["reason"] == "Killing" and e["message"] == "FailedPostStartHook" for e in _events(lab, "badhook"))


NODE_DEBUGGER = """
apiVersion: v1
kind: Pod
metadata: {name: node-debugger}
spec:
  nodeName: NODE
  hostNetwork: true
  hostPID: true
  restartPolicy: Never
  containers:
  - {name: debugger, image: busybox, stdin: true, tty: true, volumeMounts: [{name: host-root, mountPath: /host}]}
  volumes: [{name: host-root, hostPath: {path: /}}]
"""


def test_kubectl_debug_adds_an_ephemeral_container_in_the_pods_namespaces(lab: Lab) -> None:
    lab.kubectl("run", "target", "--image=nginx", "--port=8080")
    lab.wait_pods_ready("run=target", 1, timeout=40)
    script = 'hostname; wget -qO- http://127.0.0.1:8080/ | grep -o \'"pod":"[a-z]*"\'\n'
    res = subprocess.run(
        [*_kubectl_argv(lab), "debug", "-i", "target", "--image=busybox", "--container=dbg", "--", "sh"],
        input=script,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    # the debug shell sees the pod's hostname and its network (the responder on the pod's localhost)
    assert "target\n" in res.stdout and '"pod":"target"' in res.stdout
    assert [c["name"] for c in _pod(lab, "target")["spec"]["ephemeralContainers"]] == ["dbg"]

    def ended() -> dict[str, Any] | None:
        sts = _pod(lab, "target")["status"].get("ephemeralContainerStatuses") or []
        return next((s for s in sts if "terminated" in s["state"]), None)

    st = wait_for(ended, timeout=30, what="the debug container to end")
    assert st["name"] == "dbg" and st["state"]["terminated"]["exitCode"] == 0 and not st["ready"]
    # ephemeral containers are added, never changed
    patch = '{"spec":{"ephemeralContainers":[{"name":"dbg","image":"other"}]}}'
    bad = lab.kubectl("patch", "pod", "target", "--subresource=ephemeralcontainers", "-p", patch, check=False)
    assert bad.returncode != 0 and "may not be changed" in bad.stderr, bad.stderr


def test_kubectl_debug_it_is_a_shell_on_a_terminal(lab: Lab) -> None:
    """`kubectl debug -it POD --image=busybox`: no command, so busybox's shell, on a terminal, in the pod."""
    lab.wait_pods_ready("app=configured", 1, timeout=40)
    typing = "sleep 6; printf 'echo I am $(hostname) with $GREETING\\n'; sleep 2; printf 'exit\\n'; sleep 20"
    res = in_terminal(lab, "debug -it configured --image=busybox --container=shell", typing=typing)
    assert "I am box with" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 0


def test_a_node_debugging_pod_sees_the_node(lab: Lab) -> None:
    """The pod `kubectl debug node/NAME` creates: hostNetwork, the node's root at /host, a shell."""
    node = lab.topo.nodes[0]
    lab.apply(NODE_DEBUGGER.replace("NODE", node.name))
    wait_for(lambda: "running" in _state(lab, "node-debugger").get("state", {}), timeout=40, what="debugger running")
    out = lab.kubectl("exec", "node-debugger", "--", "sh", "-c", "ls /host/etc/os-release; ip -4 -o addr").stdout
    assert "/host/etc/os-release" in out and node.ip in out


def test_kubectl_debug_node_makes_that_pod(lab: Lab) -> None:
    """The real `kubectl debug node/NAME` (which sends its Pod as protobuf): a running pod on that node, in the
    node's network, with the node's root at /host."""
    node = lab.topo.nodes[-1]
    out = lab.kubectl("debug", f"node/{node.name}", "--image=busybox", "--", "sleep", "3600").stdout
    name = next(w for w in out.split() if w.startswith(f"node-debugger-{node.name}"))

    def running() -> bool:
        return "running" in _state(lab, name).get("state", {})

    wait_for(running, timeout=40, what="the node debugger running")
    pod = lab.get("pod", name)
    assert pod["spec"]["nodeName"] == node.name and pod["spec"]["hostNetwork"] is True
    seen = lab.kubectl("exec", name, "--", "sh", "-c", "ls /host/etc/os-release; ip -4 -o addr").stdout
    assert "/host/etc/os-release" in seen and node.ip in seen
    lab.kubectl("delete", "pod", name, "--grace-period=0", "--force")


def test_python_client_write_stdin_reaches_the_process(lab: Lab) -> None:
    from kubernetes import client, config
    from kubernetes.stream import stream

    lab.wait_pods_ready("app=configured", 1, timeout=40)
    api = client.CoreV1Api(config.new_client_from_config(str(lab.topo.kubeconfig)))
    resp = stream(
        api.connect_get_namespaced_pod_exec,
        "configured",
        "default",
        command=["sh", "-c", "read line; echo got $line from $(hostname) with $GREETING"],
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    resp.write_stdin("hello\n")
    out = ""
    end = time.monotonic() + 20
    while resp.is_open() and time.monotonic() < end:
        resp.update(timeout=1)
        out += resp.read_stdout() if resp.peek_stdout() else ""
    resp.close()
    assert out == "got hello from box with hello\n"
