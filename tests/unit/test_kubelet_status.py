"""The kubelet's pure parts: container states, kubelet's getPhase, conditions and the env it builds."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kwire.agent.kubelet import status
from kwire.agent.kubelet.envconfig import ConfigError, container_env, expand
from kwire.agent.kubelet.status import ContainerView, PodView, container_status, get_phase, pod_status

NOW = 1_800_000_000.0


def _pod(policy: str = "Always", containers: int = 1, init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
        "spec": {
            "restartPolicy": policy,
            "containers": [{"name": f"c{i}", "image": "busybox"} for i in range(containers)],
            "initContainers": init or [],
        },
    }


def _view(name: str = "c0", **rt: Any) -> ContainerView:
    return ContainerView(name=name, image="busybox", cid="kwire://x", kind="process", runtime=rt or None)


def _ended(code: int, reason: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "running": False,
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
        "startedAt": NOW - 5,
        "finishedAt": NOW - 1,
        **extra,
    }


def test_container_states_follow_the_runtime() -> None:
    pod = _pod()
    assert container_status(_view(), pod, now=NOW)["state"] == {"waiting": {"reason": "ContainerCreating"}}
    running = container_status(_view(running=True, startedAt=NOW - 3, restartCount=2), pod, now=NOW)
    assert running["state"] == {"running": {"startedAt": status.rfc3339(NOW - 3)}}
    assert running["restartCount"] == 2 and running["ready"] and running["started"]

    backoff = container_status(_view(**_ended(1, backoffUntil=NOW + 20, backoffSeconds=20)), pod, now=NOW)
    assert backoff["state"]["waiting"] == {
        "reason": "CrashLoopBackOff",
        "message": "back-off 20s restarting failed container=c0 pod=web_shop(u-1)",
    }
    assert backoff["lastState"]["terminated"]["exitCode"] == 1
    assert backoff["lastState"]["terminated"]["reason"] == "Error"
    assert not backoff["ready"]

    five_min = container_status(_view(**_ended(1, backoffUntil=NOW + 300, backoffSeconds=300)), pod, now=NOW)
    assert "back-off 5m0s restarting" in five_min["state"]["waiting"]["message"]

    start_err = container_status(_view(**_ended(128, "StartError", message="exec: nope")), pod, now=NOW)
    assert start_err["state"]["waiting"] == {"reason": "RunContainerError", "message": "exec: nope"}
    assert start_err["lastState"]["terminated"]["exitCode"] == 128

    done = container_status(_view(**_ended(0, done=True)), pod, now=NOW)
    assert done["state"]["terminated"]["reason"] == "Completed" and done["state"]["terminated"]["exitCode"] == 0

    cfg = ContainerView(name="c0", image="i", cid="x", kind="process", config_error='configmap "x" not found')
    assert container_status(cfg, pod, now=NOW)["state"] == {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'configmap "x" not found'}
    }


def _st(state: str, code: int = 0, last: int | None = None, name: str = "c0") -> dict[str, Any]:
    s: dict[str, Any] = {"name": name, "state": {state: {"exitCode": code}}, "lastState": {}}
    if last is not None:
        s["lastState"] = {"terminated": {"exitCode": last}}
    return s


@pytest.mark.parametrize(
    ("policy", "states", "phase"),
    [
        ("Always", [_st("waiting")], "Pending"),
        ("Always", [_st("running")], "Running"),
        ("Always", [_st("waiting", last=1)], "Running"),  # CrashLoopBackOff
        ("Always", [_st("terminated", 0)], "Running"),  # restarting
        ("Never", [_st("terminated", 0)], "Succeeded"),
        ("Never", [_st("terminated", 3)], "Failed"),
        ("OnFailure", [_st("terminated", 0)], "Succeeded"),
        ("OnFailure", [_st("waiting", last=2)], "Running"),
        ("Never", [_st("terminated", 0), _st("running", name="c1")], "Running"),
        ("Never", [_st("terminated", 0), _st("terminated", 1, name="c1")], "Failed"),
        ("Never", [_st("terminated", 0)], "Succeeded"),
    ],
)
def test_get_phase_is_kubelets(policy: str, states: list[dict[str, Any]], phase: str) -> None:
    assert get_phase(_pod(policy, containers=len(states)), [], states) == phase


def test_init_containers_hold_the_pod_pending_and_a_failed_one_fails_never_pods() -> None:
    init = [{"name": "setup", "image": "busybox"}]
    assert get_phase(_pod("Always", init=init), [_st("running", name="setup")], []) == "Pending"
    assert get_phase(_pod("Never", init=init), [_st("terminated", 1, name="setup")], []) == "Failed"
    sidecar = [{"name": "log", "image": "busybox", "restartPolicy": "Always"}]
    assert get_phase(_pod("Always", init=sidecar), [_st("running", name="log")], [_st("running")]) == "Running"


def test_conditions_and_completed_pods() -> None:
    view = PodView(pod=_pod("Never"), host_ip="192.168.77.11", pod_ip="10.42.0.5", started_at="t")
    view.containers = [_view(**_ended(0, done=True))]
    st = pod_status(view, now=NOW)
    conds = {c["type"]: c for c in st["conditions"]}
    assert st["phase"] == "Succeeded"
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodCompleted"
    view.pod = _pod("Always")
    view.containers = [_view(running=True, startedAt=NOW), ContainerView("c1", "i", "x", "process", {})]
    view.pod["spec"]["containers"].append({"name": "c1", "image": "i"})
    st = pod_status(view, now=NOW)
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert ready["message"] == "containers with unready status: [c1]" and st["phase"] == "Pending"


def test_expand_references() -> None:
    env = {"A": "x"}
    assert expand("$(A)-$(B)-$$(A)", env) == "x-$(B)-$(A)"


async def test_env_from_configmaps_and_secrets_with_kubelets_errors() -> None:
    objs = {
        ("configmap", "cfg"): {"data": {"greeting": "hello", "color": "blue"}},
        ("secret", "sec"): {"data": {"password": base64.b64encode(b"s3cret").decode()}},
    }

    async def get(kind: str, _ns: str, name: str) -> dict[str, Any] | None:
        return objs.get((kind, name))

    pod = _pod()
    c = {
        "name": "c0",
        "envFrom": [
            {"prefix": "CFG_", "configMapRef": {"name": "cfg"}},
            {"secretRef": {"name": "gone", "optional": True}},
        ],
        "env": [
            {"name": "G", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
            {"name": "P", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
            {"name": "O", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "none", "optional": True}}},
            {"name": "GG", "value": "$(G)-$(G)"},
            {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
    }
    env = await container_env(c, pod, get=get, pod_ip="10.42.0.5", host_ip="192.168.77.11")
    assert env["CFG_greeting"] == "hello" and env["CFG_color"] == "blue"
    assert env["G"] == "hello" and env["P"] == "s3cret" and env["GG"] == "hello-hello" and env["N"] == "shop"
    assert "O" not in env

    for ref, message in (
        ({"configMapKeyRef": {"name": "x", "key": "k"}}, 'configmap "x" not found'),
        ({"configMapKeyRef": {"name": "cfg", "key": "k"}}, "couldn't find key k in ConfigMap shop/cfg"),
        ({"secretKeyRef": {"name": "sec", "key": "k"}}, "couldn't find key k in Secret shop/sec"),
        ({"secretKeyRef": {"name": "nope", "key": "k"}}, 'secret "nope" not found'),
    ):
        with pytest.raises(ConfigError) as err:
            await container_env({"env": [{"name": "X", "valueFrom": ref}]}, pod, get=get, pod_ip="", host_ip="")
        assert str(err.value) == message
    with pytest.raises(ConfigError, match='configmap "y" not found'):
        await container_env({"envFrom": [{"configMapRef": {"name": "y"}}]}, pod, get=get, pod_ip="", host_ip="")
