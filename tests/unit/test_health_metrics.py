"""Health check answers and request-metric labels as kube-apiserver gives them."""

from __future__ import annotations

from kwire.api.health import Health
from kwire.api.metrics import RequestInfo, metric_verb


def test_health_verbose_exclude_single_and_failure() -> None:
    up = {"etcd": True}
    h = Health()
    h.add("ping", lambda: True)
    h.add("etcd", lambda: up["etcd"])
    h.add("shutdown", lambda: True, ready_only=True)
    assert h.answer("readyz", sub="", verbose=False, exclude=[]) == (200, "ok")
    assert h.answer("readyz", sub="", verbose=True, exclude=[]) == (
        200,
        "[+]ping ok\n[+]etcd ok\n[+]shutdown ok\nreadyz check passed\n",
    )
    assert h.answer("livez", sub="", verbose=True, exclude=["etcd"]) == (
        200,
        "[+]ping ok\n[+]etcd excluded: ok\nlivez check passed\n",
    )
    assert h.answer("livez", sub="shutdown", verbose=False, exclude=[]) is None  # readyz-only check
    up["etcd"] = False
    assert h.answer("readyz", sub="", verbose=False, exclude=[]) == (
        500,
        "[+]ping ok\n[-]etcd failed: reason withheld\n[+]shutdown ok\nreadyz check failed\n",
    )
    assert h.answer("readyz", sub="etcd", verbose=False, exclude=[]) == (500, "internal server error: reason withheld")


def test_metric_verbs_and_long_running() -> None:
    assert metric_verb("GET", named=False, watch=False, subresource="") == "LIST"
    assert metric_verb("GET", named=True, watch=False, subresource="") == "GET"
    assert metric_verb("GET", named=False, watch=True, subresource="") == "WATCH"
    assert metric_verb("DELETE", named=False, watch=False, subresource="") == "DELETECOLLECTION"
    assert metric_verb("POST", named=True, watch=False, subresource="exec") == "CONNECT"
    assert metric_verb("GET", named=True, watch=False, subresource="log") == "GET"
    assert RequestInfo("GET", subresource="log").long_running and RequestInfo("WATCH").long_running
    assert not RequestInfo("LIST").long_running and RequestInfo("PATCH").mutating
