"""kube's max-in-flight filter: the limits K3s users set with kube-apiserver-arg, and who is refused past them."""

from __future__ import annotations

import pytest

from kwire.api.maxinflight import MUTATING, READ_ONLY, MaxInFlight, limits_from_args, too_many_requests
from kwire.config import ConfigError


def test_limits_default_to_kubes_and_follow_kube_apiserver_arg() -> None:
    assert limits_from_args([]) == {READ_ONLY: 400, MUTATING: 200}
    limits = limits_from_args(["max-requests-inflight=800", "--max-mutating-requests-inflight=0", "audit-log-path=x"])
    assert limits == {READ_ONLY: 800, MUTATING: 0}
    with pytest.raises(ConfigError, match="max-requests-inflight: invalid value 'many'"):
        limits_from_args(["max-requests-inflight=many"])
    with pytest.raises(ConfigError, match="must not be negative"):
        limits_from_args(["max-mutating-requests-inflight=-1"])


def test_past_the_limit_only_system_masters_get_an_answer() -> None:
    gate = MaxInFlight(limits={READ_ONLY: 2, MUTATING: 1})
    assert gate.admit(MUTATING, privileged=False)
    assert not gate.admit(MUTATING, privileged=False)  # the second mutating request: 429
    assert gate.admit(READ_ONLY, privileged=False)  # the kinds are counted apart
    assert gate.admit(MUTATING, privileged=True)  # an admin is served past the limit, and counted
    assert gate.current == {READ_ONLY: 1, MUTATING: 2}
    gate.release(MUTATING)
    gate.release(MUTATING)
    assert gate.admit(MUTATING, privileged=False)


def test_zero_means_no_limit() -> None:
    gate = MaxInFlight(limits={READ_ONLY: 0, MUTATING: 0})
    assert all(gate.admit(READ_ONLY, privileged=False) for _ in range(1000))


def test_the_refusal_is_kubes() -> None:
    resp = too_many_requests()
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert resp.text == "Too many requests, please try again later.\n"
