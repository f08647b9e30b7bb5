"""kube-apiserver's max-in-flight filter (k8s.io/apiserver/pkg/server/filters/maxinflight.go, WithMaxInFlightLimit).

At most `--max-requests-inflight` (default 400) read-only and `--max-mutating-requests-inflight` (default 200)
mutating requests are served at once; 0 means no limit. K3s users set them with `kube-apiserver-arg`
(`max-requests-inflight=800`), which kwire's server reads here. As in kube:
- long-running requests (watches, logs, exec, attach, port-forward, proxy) are not counted;
- a request past its kind's limit is answered at once with 429, `Retry-After: 1` and kube's plain-text body, which
  client-go and kubectl retry by themselves;
- a user in system:masters (a cluster admin, or the server's own loopback clients) is never refused: "a
  system:master is so powerful that they should always get an answer".
The count is what one event loop is handling at once, so a flood queues behind a bounded number of requests
instead of piling memory and latency onto every request in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from kwire.config import ConfigError

log = logging.getLogger(__name__)

READ_ONLY = "readOnly"
MUTATING = "mutating"
DEFAULT_LIMITS = {READ_ONLY: 400, MUTATING: 200}
FLAGS = {"max-requests-inflight": READ_ONLY, "max-mutating-requests-inflight": MUTATING}
RETRY_AFTER_SECONDS = 1
TOO_MANY = "Too many requests, please try again later.\n"


def limits_from_args(args: Sequence[str]) -> dict[str, int]:
    """The in-flight limits of K3s's `--kube-apiserver-arg KEY=VALUE` list (kube's defaults where unset).

    Keys of kube-apiserver flags kwire has no use for are logged as ignored, as the agent does for
    `--kube-proxy-arg`; a bad value of a key it honours is an error (kube-apiserver would not start)."""
    limits = dict(DEFAULT_LIMITS)
    for arg in args:
        key, _, value = arg.lstrip("-").partition("=")
        kind = FLAGS.get(key)
        if kind is None:
            log.info("server: kube-apiserver-arg %r is not used by kwire's API server", arg)
            continue
        try:
            limit = int(value)
        except ValueError:
            raise ConfigError(f"kube-apiserver-arg {key}: invalid value {value!r}: must be a whole number") from None
        if limit < 0:
            raise ConfigError(f"kube-apiserver-arg {key}: invalid value {limit}: must not be negative")
        limits[kind] = limit
    return limits


@dataclass
class MaxInFlight:
    """The requests of each kind being served now, against their limits."""

    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    current: dict[str, int] = field(default_factory=lambda: {READ_ONLY: 0, MUTATING: 0})

    def admit(self, kind: str, *, privileged: bool) -> bool:
        """Counts the request in and says True, or says False (answer `too_many_requests()`) past the limit."""
        limit = self.limits.get(kind, 0)
        if limit and self.current[kind] >= limit and not privileged:
            return False
        self.current[kind] += 1
        return True

    def release(self, kind: str) -> None:
        self.current[kind] -= 1


def too_many_requests() -> web.Response:
    """kube's tooManyRequests: http.Error's plain text, with Retry-After."""
    return web.Response(
        status=429,
        text=TOO_MANY,
        content_type="text/plain",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS), "X-Content-Type-Options": "nosniff"},
    )
