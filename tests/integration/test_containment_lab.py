"""Pods are contained, seen from inside pods of a real lab with real kubectl: what a container runtime gives.

A pod cannot read kwire's data (another pod's service-account token, the server's data dir, the lab's state file),
cannot see or enter the node's namespaces, sees only its own processes, and runs with the uid, groups,
capabilities and no_new_privs of its securityContext (containerd's default capability set when it names none); a
privileged pod gets every capability and the node's devices; runAsNonRoot with uid 0 is refused in kubelet's words.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labkit import Lab, in_terminal, wait_for

pytestmark = pytest.mark.lab

# containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
# SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
DEFAULT_CAPS = "00000000a80425fb"
# every capability the node has (a privileged container gets what the runtime itself holds)
ALL_CAPS = next(
    line.split()[1] for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapBnd")
)

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: plain}
spec:
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: restricted}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000]}
  containers:
  - name: main
    image: busybox
    command: [sleep, "3600"]
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
---
apiVersion: v1
kind: Pod
metadata: {name: privileged}
spec:
  containers:
  - {name: main, image: busybox, command: [sleep, "3600"], securityContext: {privileged: true}}
---
apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  shareProcessNamespace: true
  containers:
  - {name: a, image: busybox, command: [sleep, "3601"]}
  - {name: b, image: busybox, command: [sleep, "3602"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hostpid}
spec:
  hostPID: true
  containers: [{name: main, image: busybox, command: [sleep, "3603"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: nonroot}
spec:
  securityContext: {runAsNonRoot: true}
  containers: [{name: main, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: nonroot-uid0}
spec:
  containers:
  - {name: main, image: busybox, command: [sleep, "3600"], securityContext: {runAsNonRoot: true, runAsUser: 0}}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab("kwt-contain", 1, "vxlan") as lab_:
        lab_.apply(PODS)
        for name in ("plain", "restricted", "privileged", "shared", "hostpid"):
            wait_for(lambda n=name: _running(lab_, n), timeout=60, what=f"{name} running")  # type: ignore[misc]
        yield lab_


def _running(lab: Lab, name: str) -> bool:
    statuses = lab.get("pod", name).get("status", {}).get("containerStatuses") or [{}]
    return "running" in statuses[0].get("state", {})


def _sh(lab: Lab, pod: str, script: str) -> str:
    res = lab.kubectl("exec", pod, "--", "sh", "-c", script, check=False)
    return res.stdout + res.stderr


def _status(lab: Lab, pod: str) -> dict[str, str]:
    text = lab.kubectl("exec", pod, "--", "cat", "/proc/self/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_a_pod_cannot_reach_kwires_data_nor_other_pods_tokens(lab: Lab) -> None:
    dns: dict[str, Any] = lab.get("pods", "-n", "kube-system", "-l", "k8s-app=kube-dns")["items"][0]
    node = dns["spec"]["nodeName"]
    token = lab.topo.state_dir / node / "pods" / dns["metadata"]["uid"] / "serviceaccount" / "token"
    state = lab.topo.state_dir / "state.json"
    server = lab.topo.state_dir / "server"
    assert token.is_file() and state.is_file() and server.is_dir()  # they are there, on the node
    for path in (token, state, server / "tls"):
        out = _sh(lab, "plain", f"ls {path}; cat {path}")
        assert out.count("No such file or directory") == 2, f"{path}: {out}"
    # kwire's data dir, the node's network namespaces, other pods' resolv.conf, the admin's home: empty
    out = _sh(lab, "plain", "ls -A /var/lib/kwire /run/netns /var/run/netns /etc/netns /root; echo end")
    seen = [line for line in out.splitlines() if line and not line.endswith(":")]
    # (the interpreter kwire's own images run stays visible when it lives under /root, as with pyenv)
    assert seen in (["end"], [".pyenv", "end"]), out
    # the node's namespaces cannot be entered (no CAP_SYS_ADMIN), not even the pod's own PID 1's
    out = _sh(lab, "plain", "nsenter --net=/proc/1/ns/net true; echo rc=$?")
    assert "Operation not permitted" in out and "rc=1" in out, out
    # a device node made where the container can write does not open (nodev: what runc's device cgroup ensures)
    out = _sh(lab, "plain", "mknod /tmp/kw-null c 1 3 && echo x > /tmp/kw-null; echo rc=$?; mknod /dev/kw c 1 3")
    assert "cannot create /tmp/kw-null: Permission denied" in out and "/dev/kw: Read-only file system" in out, out
    # the node's root filesystem is the image, read-only; /tmp is the container's own
    out = _sh(lab, "plain", "touch /usr/kwire-x; echo hi > /tmp/kwire-contain-x && cat /tmp/kwire-contain-x")
    assert "Read-only file system" in out and "hi" in out
    assert not Path("/usr/kwire-x").exists() and not Path("/tmp/kwire-contain-x").exists()


def test_a_pod_sees_only_its_own_processes(lab: Lab) -> None:
    out = lab.kubectl("exec", "plain", "--", "ps", "-e", "-o", "pid=,comm=").stdout.split("\n")
    procs = [line.split() for line in out if line.strip()]
    assert procs[0] == ["1", "tini"] and ["2", "sleep"] in procs, procs
    assert {comm for _, comm in procs} <= {"tini", "sleep", "ps"}, procs


def test_share_process_namespace_and_host_pid_as_the_spec_says(lab: Lab) -> None:
    out = lab.kubectl("exec", "shared", "-c", "a", "--", "ps", "-e", "-o", "pid=,args=").stdout
    procs = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    # the pod's PID namespace is held by its pause (tini), and holds both containers' processes
    assert procs[0][0] == "1" and "tini" in procs[0][1], procs
    assert {"sleep 3601", "sleep 3602"} <= {args for _, args in procs}, procs
    # hostPID: the node's processes (the lab's kwire agents among them)
    out = lab.kubectl("exec", "hostpid", "--", "ps", "-e", "-o", "args=").stdout
    assert "sleep 3603" in out and "kwire" in out and len(out.splitlines()) > 20
    assert "kwire agent" not in lab.kubectl("exec", "plain", "--", "ps", "-e", "-o", "args=").stdout


def test_the_default_identity_is_root_with_containerds_capabilities(lab: Lab) -> None:
    st = _status(lab, "plain")
    assert st["Uid"].split() == ["0"] * 4
    assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == DEFAULT_CAPS
    assert st["CapInh"] == st["CapAmb"] == "0000000000000000"
    assert st["NoNewPrivs"] == "0"  # kubelet sets it only for allowPrivilegeEscalation: false


def test_run_as_user_groups_capabilities_and_no_new_privs(lab: Lab) -> None:
    assert lab.kubectl("exec", "restricted", "--", "id", "-u").stdout.strip() == "1000"
    assert lab.kubectl("exec", "restricted", "--", "id", "-g").stdout.strip() == "3000"
    assert lab.kubectl("exec", "restricted", "--", "id", "-G").stdout.split() == ["3000", "4000"]
    st = _status(lab, "restricted")
    assert st["Uid"].split() == ["1000"] * 4 and st["Gid"].split() == ["3000"] * 4
    # a non-root process keeps only the bounding set, as under runc (no ambient capabilities)
    assert st["CapBnd"] == "0000000000000400" and st["CapEff"] == st["CapPrm"] == "0000000000000000"
    assert st["NoNewPrivs"] == "1"
    out = _sh(lab, "restricted", "touch /tmp/x; echo rc=$?")
    assert "Read-only file system" in out and "rc=1" in out  # readOnlyRootFilesystem: no private /tmp either


def test_a_privileged_pod_keeps_every_capability_and_the_nodes_devices(lab: Lab) -> None:
    st = _status(lab, "privileged")
    assert st["CapEff"] == st["CapBnd"] == ALL_CAPS
    node_devices = {p.name for p in Path("/dev").iterdir()}
    seen = set(lab.kubectl("exec", "privileged", "--", "ls", "/dev").stdout.split())
    assert seen == node_devices or len(seen) > 20, seen
    plain = set(lab.kubectl("exec", "plain", "--", "ls", "/dev").stdout.split())
    assert plain == {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd"} | {
        "stdin",
        "stdout",
        "stderr",
    }
    mounts = lab.kubectl("exec", "privileged", "--", "cat", "/proc/self/mounts").stdout.splitlines()
    assert any(m.split()[1] == "/sys" and m.split()[3].startswith("rw") for m in mounts), mounts
    mounts = lab.kubectl("exec", "plain", "--", "cat", "/proc/self/mounts").stdout.splitlines()
    assert any(m.split()[1] == "/sys" and m.split()[3].startswith("ro") for m in mounts), mounts


def test_run_as_non_root_with_uid_0_is_refused_in_kubelets_words(lab: Lab) -> None:
    def waiting(name: str) -> dict[str, Any] | None:
        sts = lab.get("pod", name).get("status", {}).get("containerStatuses") or [{}]
        w: dict[str, Any] | None = sts[0].get("state", {}).get("waiting")
        return w if w and w.get("reason") == "CreateContainerConfigError" else None

    for name, text in (
        ("nonroot", "container has runAsNonRoot and image will run as root"),
        ("nonroot-uid0", "container's runAsUser breaks non-root policy"),
    ):
        w = wait_for(lambda n=name: waiting(n), timeout=40, what=f"{name} refused")  # type: ignore[misc]
        uid = lab.get("pod", name)["metadata"]["uid"]
        assert w["message"] == f'{text} (pod: "{name}_default({uid})", container: main)'
        events = lab.get("events", "--field-selector", f"involvedObject.name={name}")["items"]
        assert any(e["reason"] == "Failed" and e["message"] == f"Error: {w['message']}" for e in events)


def test_kwires_files_on_the_machine_are_private(lab: Lab) -> None:
    """As K3s keeps them: data dirs 0700; keys, tokens, the datastore and the lab's state file 0600."""
    state = lab.topo.state_dir
    dirs = [state, state / "server", state / "server" / "db", state / "server" / "tls", state / "server" / "cred"]
    dirs += [state / n.name for n in lab.topo.nodes]
    for d in dirs:
        assert d.stat().st_mode & 0o777 == 0o700, d
    files = [state / "state.json", state / "server" / "token", *(state / "server" / "tls").glob("*.key")]
    files += sorted((state / "server" / "db").glob("state.db*"))
    assert len(files) >= 5, files
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f


def test_no_new_privs_that_privileged_would_defeat_is_refused_in_kube_apiservers_words(lab: Lab) -> None:
    bad = """
apiVersion: v1
kind: Pod
metadata: {name: contradictory}
spec:
  containers:
  - name: main
    image: busybox
    command: [sleep, "1"]
    securityContext: {privileged: true, allowPrivilegeEscalation: false, runAsUser: -1}
"""
    res = lab.kubectl("apply", "-f", "-", input=bad, check=False)
    assert res.returncode != 0
    assert 'The Pod "contradictory" is invalid' in res.stderr
    assert "spec.containers[0].securityContext: Invalid value:" in res.stderr
    assert "cannot set `allowPrivilegeEscalation` to false and `privileged` to true" in res.stderr
    assert "spec.containers[0].securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647" in (
        res.stderr
    )


def test_terminals_come_from_the_containers_own_devpts(lab: Lab) -> None:
    """`kubectl run -it` and `kubectl exec -it`: the program's terminal is in the container's /dev/pts (runc's
    console), so `tty` names it, and the shell is the foreground of its own session."""
    res = in_terminal(
        lab, "run ttycheck --image=busybox -it --rm --restart=Never -- sh -c 'tty; ls /dev/pts'", typing="sleep 30"
    )
    assert "/dev/pts/0" in res.stdout and "not a tty" not in res.stdout, res.stdout + res.stderr
    res = in_terminal(lab, "exec -it plain -- tty", typing="sleep 20")
    assert res.stdout.strip().endswith("/dev/pts/0") or "/dev/pts/" in res.stdout, res.stdout + res.stderr
    assert "not a tty" not in res.stdout


def test_kubectl_debug_target_shares_the_target_containers_processes(lab: Lab) -> None:
    res = lab.kubectl(
        "debug", "plain", "-i", "--image=busybox", "--container=peek", "--target=main", "--", "ps", "-e", "-o", "args="
    )
    assert "sleep 3600" in res.stdout, res.stdout + res.stderr


def test_the_add_ons_run_with_their_upstream_security_context(lab: Lab) -> None:
    """CoreDNS with NET_BIND_SERVICE only, no_new_privs and a read-only root (K3s's coredns.yaml), and it answers;
    traefik's nginx without CAP_NET_ADMIN or SYS_ADMIN."""
    st = {
        k: v.strip()
        for k, _, v in (
            line.partition(":")
            for line in lab.kubectl(
                "-n", "kube-system", "exec", "deploy/coredns", "--", "cat", "/proc/1/status"
            ).stdout.splitlines()
        )
    }
    assert st["CapEff"] == "0000000000000400" and st["NoNewPrivs"] == "1", st
    out = lab.kubectl("exec", "plain", "--", "nslookup", "kubernetes.default").stdout
    assert "10.43.0.1" in out, out
    caps = lab.kubectl("-n", "kube-system", "exec", "deploy/traefik", "--", "grep", "CapBnd", "/proc/1/status").stdout
    bits = int(caps.split()[1], 16)
    assert not bits & (1 << 12) and not bits & (1 << 21) and bits & (1 << 10), caps  # NET_ADMIN, SYS_ADMIN; NET_BIND
