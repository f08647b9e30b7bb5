"""What authorization decides on: kube's `authorizer.Attributes` and `Decision`, made from a request's RequestInfo.

Mirrors k8s.io/apiserver/pkg/authorization/authorizer: a resource request (verb, API group/version, resource,
subresource, namespace, name) or a non-resource request (verb = lowercase HTTP method, path), always with the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kwire.api.metrics import RequestInfo
from kwire.api.user import UserInfo


@dataclass(frozen=True, slots=True)
class Attributes:
    user: UserInfo
    verb: str
    resource_request: bool
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def combined_resource(self) -> str:
        """`resource/subresource`, as rules name subresources."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def from_request(user: UserInfo, info: RequestInfo) -> Attributes:
    """The attributes of one HTTP request (kube's WithAuthorization filter builds the same from RequestInfo)."""
    if not info.resource_request:
        return Attributes(user=user, verb=info.api_verb, resource_request=False, path=info.path)
    return Attributes(
        user=user,
        verb=info.api_verb,
        resource_request=True,
        api_group=info.api_group,
        api_version=info.version,
        resource=info.api_resource,
        subresource=info.api_subresource,
        namespace=info.namespace,
        name=info.name,
        path=info.path,
    )


class Verdict(Enum):
    ALLOW = "allow"
    DENY = "deny"
    NO_OPINION = "no-opinion"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


NO_OPINION = Decision(Verdict.NO_OPINION)
