"""securityContext as the runtime applies it: containerd's capability arithmetic, kubelet's effective context and
runAsNonRoot refusal (kwire/agent/kubelet/security.py)."""

from __future__ import annotations

from typing import Any

from kwire.agent.kubelet import security

Obj = dict[str, Any]


def _pod(psc: Obj | None = None, csc: Obj | None = None) -> Obj:
    c: Obj = {"name": "main", "image": "busybox"}
    if csc is not None:
        c["securityContext"] = csc
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
        "spec": {"securityContext": psc or {}, "containers": [c]},
    }


def _caps(csc: Obj) -> list[str]:
    pod = _pod(csc=csc)
    return security.capabilities(security.effective(pod, pod["spec"]["containers"][0]))


def test_capabilities_are_containerds_default_plus_add_minus_drop() -> None:
    assert set(_caps({})) == set(security.DEFAULT_CAPABILITIES) and len(security.DEFAULT_CAPABILITIES) == 14
    assert "SYS_ADMIN" not in _caps({}) and "NET_ADMIN" not in _caps({})
    assert _caps({"capabilities": {"add": ["NET_ADMIN"], "drop": ["CAP_NET_RAW"]}}) == sorted(
        {*security.DEFAULT_CAPABILITIES, "NET_ADMIN"} - {"NET_RAW"}, key=security.CAPABILITIES.index
    )
    assert _caps({"capabilities": {"drop": ["all"], "add": ["NET_BIND_SERVICE"]}}) == ["NET_BIND_SERVICE"]
    assert _caps({"capabilities": {"drop": ["ALL"]}}) == []
    assert _caps({"capabilities": {"add": ["ALL"]}}) == list(security.CAPABILITIES)
    assert _caps({"privileged": True, "capabilities": {"drop": ["ALL"]}}) == list(security.CAPABILITIES)


def test_the_runtime_spec_merges_pod_and_container_contexts() -> None:
    pod = _pod(
        {"runAsUser": 1000, "runAsGroup": 2000, "supplementalGroups": [3000], "fsGroup": 4000},
        {"runAsUser": 1001, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
    )
    rs = security.runtime_security(pod, pod["spec"]["containers"][0])
    assert rs == {
        "uid": 1001,
        "gid": 2000,
        "groups": [3000, 4000],
        "caps": [security.CAPABILITIES.index(c) for c in security.CAPABILITIES if c in security.DEFAULT_CAPABILITIES],
        "noNewPrivs": True,
        "privileged": False,
        "readOnlyRoot": True,
    }
    plain = _pod()
    rs = security.runtime_security(plain, plain["spec"]["containers"][0])
    assert (rs["uid"], rs["gid"], rs["groups"], rs["noNewPrivs"]) == (0, 0, [], False)


def test_run_as_non_root_refusals_in_kubelets_words() -> None:
    pod = _pod({"runAsNonRoot": True})
    c = pod["spec"]["containers"][0]
    assert security.nonroot_error(pod, c) == (
        'container has runAsNonRoot and image will run as root (pod: "p_ns(u-1)", container: main)'
    )
    pod = _pod({"runAsNonRoot": True}, {"runAsUser": 0})
    assert security.nonroot_error(pod, pod["spec"]["containers"][0]) == (
        'container\'s runAsUser breaks non-root policy (pod: "p_ns(u-1)", container: main)'
    )
    pod = _pod({"runAsNonRoot": True, "runAsUser": 65534})
    assert security.nonroot_error(pod, pod["spec"]["containers"][0]) == ""
    assert security.nonroot_error(_pod(), _pod()["spec"]["containers"][0]) == ""
