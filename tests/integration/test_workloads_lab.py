"""Workload controllers in a real lab: a StatefulSet's stable DNS names through the headless Service, Jobs on the
real kubelet, a Deployment's pod replaced on another node after its node dies (NoExecute eviction with a
shortened `default-unreachable-toleration-seconds`), and a CronJob firing on the wall clock (applied first, checked
last, so its minute mostly passes while the other tests run)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kwire.lab import lab as labmod
from tests.integration.labkit import Lab, wait_for

pytestmark = pytest.mark.lab

APPS = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80, name: http}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node1}
      containers: [{name: nginx, image: nginx, ports: [{containerPort: 80, name: http}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: probe}
spec:
  nodeSelector: {kubernetes.io/hostname: node1}
  containers: [{name: c, image: kwire/host, command: [sleep, "3600"]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: 2
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      containers: [{name: c, image: nginx}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          nodeSelector: {kubernetes.io/hostname: node1}
          containers: [{name: c, image: busybox, command: [sh, -c, "echo tick"]}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    cfg: Path = tmp_path_factory.mktemp("wl") / "config.yaml"
    cfg.write_text("node-monitor-grace-period: 5\ndefault-unreachable-toleration-seconds: 8\n")
    with Lab("kwt-wl", 2, "vxlan", config_file=str(cfg)) as lab_:
        lab_.apply(APPS)
        lab_.wait_pods_ready("k8s-app=kube-dns", 2, namespace="kube-system", timeout=60)  # two nodes: two replicas
        lab_.wait_pods_ready("app=web", 2, timeout=60)
        lab_.wait_pods_ready("app=spread", 2, timeout=60)
        wait_for(lambda: lab_.get("pod", "probe")["status"].get("phase") == "Running", what="probe pod")
        yield lab_


def test_statefulset_pods_resolve_by_stable_name(lab: Lab) -> None:
    pods = {p["metadata"]["name"]: p for p in lab.pods("app=web")}
    assert sorted(pods) == ["web-0", "web-1"]
    for name, pod in pods.items():
        fqdn = f"{name}.web.default.svc.cluster.local"
        got = wait_for(
            lambda f=fqdn: lab.run("probe", "dig", "+short", "+time=2", "+tries=2", f).split(),
            timeout=30,
            what=f"{fqdn} in DNS",
        )
        assert got == [pod["status"]["podIP"]]
    out = lab.kubectl("rollout", "status", "sts/web", "--timeout=30s").stdout
    assert "partitioned roll out complete: 2 new pods have been updated..." in out


JOBS = """
apiVersion: batch/v1
kind: Job
metadata: {name: ok}
spec:
  completions: 2
  template:
    spec:
      restartPolicy: Never
      nodeSelector: {kubernetes.io/hostname: node1}
      containers: [{name: c, image: busybox, command: [sh, -c, "echo done"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: broken}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      nodeSelector: {kubernetes.io/hostname: node1}
      containers: [{name: c, image: busybox, command: [sh, -c, "exit 3"]}]
"""


def test_jobs_run_to_completion_and_failure_on_the_real_kubelet(lab: Lab) -> None:
    lab.apply(JOBS)
    lab.kubectl("wait", "--for=condition=complete", "job/ok", "--timeout=60s")
    lab.kubectl("wait", "--for=condition=failed", "job/broken", "--timeout=60s")
    ok = lab.get("job", "ok")
    assert ok["status"]["succeeded"] == 2
    phases = sorted(p["status"]["phase"] for p in lab.pods("job-name=ok"))
    assert phases == ["Succeeded", "Succeeded"]
    broken = lab.get("job", "broken")
    assert broken["status"]["failed"] == 1
    assert {c["type"]: c["reason"] for c in broken["status"]["conditions"]}["Failed"] == "BackoffLimitExceeded"
    assert lab.kubectl("logs", "job/ok").stdout.strip() == "done"
    lab.kubectl("delete", "job", "ok", "broken")


def test_pods_of_a_stopped_node_are_replaced_elsewhere(lab: Lab) -> None:
    pods = lab.pods("app=spread")
    nodes = sorted(p["spec"]["nodeName"] for p in pods)
    assert nodes == ["node1", "node2"], nodes
    victim = next(p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == "node2")
    labmod.node_stop(lab.name, "node2")
    try:

        def replaced() -> bool:
            ready = lab.wait_pods_ready("app=spread", 2, timeout=5)
            return all(p["spec"]["nodeName"] == "node1" for p in ready)

        # grace period 5 s + toleration 8 s, then the replacement starts on node1.
        wait_for(replaced, timeout=90, interval=1, what="the stopped node's pod replaced on node1")
        node = lab.get("node", "node2")
        taints = {(t["key"], t["effect"]) for t in node["spec"]["taints"]}
        assert ("node.kubernetes.io/unreachable", "NoExecute") in taints
        old = lab.get("pod", victim)
        assert old["metadata"].get("deletionTimestamp")  # Terminating: no kubelet can confirm it
        reasons = {c.get("reason") for c in old["status"]["conditions"] if c["type"] == "DisruptionTarget"}
        assert reasons == {"DeletionByTaintManager"}
    finally:
        labmod.node_start(lab.name, "node2")


def test_cronjob_fires_on_the_minute(lab: Lab) -> None:
    def succeeded() -> dict[str, Any] | None:
        cj = lab.get("cronjob", "tick")
        return cj if cj.get("status", {}).get("lastSuccessfulTime") else None

    cj = wait_for(succeeded, timeout=90, interval=1, what="the CronJob's first run to succeed")
    jobs = [j for j in lab.get("jobs")["items"] if j["metadata"]["name"].startswith("tick-")]
    assert jobs, "no Job made by the CronJob"
    job = jobs[0]
    scheduled = job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
    minute = int(dt.datetime.fromisoformat(scheduled.replace("Z", "+00:00")).timestamp()) // 60
    assert job["metadata"]["name"] == f"tick-{minute}"
    assert cj["status"]["lastScheduleTime"] >= scheduled
    assert lab.kubectl("logs", f"job/{job['metadata']['name']}").stdout.strip() == "tick"
