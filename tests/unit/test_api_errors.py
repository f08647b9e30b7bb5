"""kwire/api/errors.py: the Status bodies of errors about one object, as kube-apiserver writes them (StatusDetails'
name, group and kind are omitempty, so a core resource's error has no group)."""

from __future__ import annotations

from kwire.api.authz.chain import forbidden_error
from kwire.api.errors import OPTIMISTIC_LOCK, already_exists, conflict, not_found


def test_not_found_of_a_core_and_a_grouped_resource() -> None:
    assert not_found("", "pods", "web").status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "web" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "web", "kind": "pods"},
    }
    assert not_found("apps", "deployments", "web").details == {"name": "web", "group": "apps", "kind": "deployments"}


def test_already_exists_and_the_optimistic_lock_conflict() -> None:
    e = already_exists("", "configmaps", "cm")
    assert (e.code, e.reason, e.message) == (409, "AlreadyExists", 'configmaps "cm" already exists')
    c = conflict("apps", "deployments", "web", OPTIMISTIC_LOCK)
    assert (c.code, c.reason) == (409, "Conflict")
    assert c.message == (
        'Operation cannot be fulfilled on deployments.apps "web": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


def test_forbidden_names_only_what_it_has() -> None:
    assert forbidden_error("", "", "", "no").details == {}
    assert forbidden_error("", "nodes", "n1", "no").details == {"name": "n1", "kind": "nodes"}
