"""The authentication.k8s.io API: TokenRequest (`serviceaccounts/<name>/token`, `kubectl create token`),
TokenReview and SelfSubjectReview (`kubectl auth whoami`), answered as kube-apiserver's REST storage answers them
(pkg/registry/core/serviceaccount/storage/token.go, pkg/registry/authentication/*): create-only, nothing stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kwire.api.authn.serviceaccount import (
    DEFAULT_EXPIRATION,
    MAX_EXPIRATION,
    MIN_EXPIRATION,
    BoundObject,
    InvalidToken,
    TokenIssuer,
    TokenValidator,
)
from kwire.api.errors import ApiError, bad_request, invalid, invalid_object, not_found
from kwire.api.user import UserInfo
from kwire.base.timefmt import rfc3339

Obj = dict[str, Any]
Lookup = Callable[[str, str | None, str], Obj | None]

GROUP = "authentication.k8s.io"
GROUP_VERSION = f"{GROUP}/v1"
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"


def token_request_path(path: str) -> tuple[str, str] | None:
    """(namespace, service account) of `/api/v1/namespaces/NS/serviceaccounts/NAME/token`, else None."""
    parts = [p for p in path.split("/") if p]
    if len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "serviceaccounts":
        if parts[6] == "token":
            return parts[3], parts[5]
    return None


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def token_request(
    body: Obj, *, namespace: str, name: str, issuer: TokenIssuer, lookup: Lookup, now: float | None = None
) -> Obj:
    """POST serviceaccounts/NAME/token: a TokenRequest answered with its status.token and expirationTimestamp."""
    spec = dict(body.get("spec") or {})
    expiration = spec.get("expirationSeconds")
    if expiration is None:
        expiration = DEFAULT_EXPIRATION
    if not isinstance(expiration, int) or isinstance(expiration, bool):
        raise bad_request("spec.expirationSeconds must be an integer")
    if expiration < MIN_EXPIRATION:
        errs = [invalid("spec.expirationSeconds", expiration, "may not specify a duration less than 10 minutes")]
        raise invalid_object("authentication.k8s.io", "TokenRequest", name, errs)
    if expiration > MAX_EXPIRATION:
        errs = [invalid("spec.expirationSeconds", expiration, "may not specify a duration larger than 2^32 seconds")]
        raise invalid_object("authentication.k8s.io", "TokenRequest", name, errs)
    sa = lookup("serviceaccounts", namespace, name)
    if sa is None:
        raise not_found("", "serviceaccounts", name)
    audiences = tuple(str(a) for a in spec.get("audiences") or ()) or issuer.audiences
    bound: BoundObject | None = None
    node: BoundObject | None = None
    ref = spec.get("boundObjectRef")
    if ref:
        kind, api_version, ref_name = (
            str(ref.get("kind", "")),
            str(ref.get("apiVersion", "v1")),
            str(ref.get("name", "")),
        )
        if api_version not in ("v1", "") or kind not in ("Pod", "Secret", "Node"):
            raise bad_request(f"cannot bind token to object of type {api_version or 'v1'}, Kind={kind}")
        plural = {"Pod": "pods", "Secret": "secrets", "Node": "nodes"}[kind]
        obj = lookup(plural, None if kind == "Node" else namespace, ref_name)
        if obj is None:
            raise not_found("", plural, ref_name)
        if kind == "Pod":
            pod_sa = str((obj.get("spec") or {}).get("serviceAccountName") or "default")
            if pod_sa != name:
                raise bad_request(
                    f'cannot bind token for serviceaccount "{name}" to pod running with different serviceaccount name.'
                )
            node_name = str((obj.get("spec") or {}).get("nodeName") or "")
            node_obj = lookup("nodes", None, node_name) if node_name else None
            if node_obj is not None:
                node = BoundObject("Node", node_name, _uid(node_obj))
        if ref.get("uid") and str(ref["uid"]) != _uid(obj):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind}.v1 "{ref_name}": the UID in the bound object reference '
                f"({ref['uid']}) does not match the UID in record. The object might have been deleted and then "
                "recreated",
            )
        bound = BoundObject(kind, ref_name, _uid(obj))
        spec["boundObjectRef"] = {"kind": kind, "apiVersion": "v1", "name": ref_name, "uid": _uid(obj)}
    issued = issuer.issue(
        namespace=namespace,
        service_account=(name, _uid(sa)),
        audiences=audiences,
        expiration_seconds=expiration,
        bound=bound,
        node=node,
        now=now,
    )
    spec["audiences"] = list(audiences)
    spec["expirationSeconds"] = expiration
    meta = dict(body.get("metadata") or {})
    meta.update({"name": name, "namespace": namespace, "creationTimestamp": None})
    return {
        "kind": "TokenRequest",
        "apiVersion": GROUP_VERSION,
        "metadata": meta,
        "spec": spec,
        "status": {"token": issued.token, "expirationTimestamp": rfc3339(issued.expires)},
    }


def token_review(body: Obj, *, validator: TokenValidator | None, now: float | None = None) -> Obj:
    """POST tokenreviews: whether spec.token authenticates, as whom, for which of spec.audiences."""
    spec = dict(body.get("spec") or {})
    token = str(spec.get("token") or "")
    if not token:
        raise bad_request("token is required for TokenReview in authentication")
    status: Obj = {"user": {}}
    if validator is not None:
        wanted = tuple(str(a) for a in spec.get("audiences") or ())
        try:
            result = validator.authenticate(token, audiences=wanted, now=now if now is not None else time.time())
        except InvalidToken as exc:
            status["error"] = f"[{exc}]"
        else:
            status = {"authenticated": True, "user": result.user.as_review(), "audiences": list(result.audiences)}
    else:
        status["error"] = "[invalid bearer token]"
    meta = dict(body.get("metadata") or {})
    meta["creationTimestamp"] = None
    return {"kind": "TokenReview", "apiVersion": GROUP_VERSION, "metadata": meta, "spec": spec, "status": status}


def self_subject_review(user: UserInfo) -> Obj:
    """POST selfsubjectreviews: the requester's own user info."""
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": GROUP_VERSION,
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": user.as_review()},
    }
