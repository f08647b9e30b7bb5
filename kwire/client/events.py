"""The Event recorder: core/v1 Events written as client-go's `record.EventRecorder` writes them.

Shared by the controllers and the node agent's kubelet (it lives in the client layer so both can use it). It mirrors
client-go's EventCorrelator: an event repeated for the same object, reason and message bumps `count` and
`lastTimestamp` of the existing Event instead of adding one (what `kubectl describe` shows as `x8 over 8s`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kwire.base import fields
from kwire.base.timefmt import now_rfc3339
from kwire.client.client import EVENTS, ApiClient, NotFound

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CORRELATION_WINDOW = 600.0  # seconds: client-go aggregates repeats within ten minutes
MAX_REMEMBERED = 4096  # bounded: the correlation cache is cleared when it grows past this


class EventRecorder:
    """Writes Events for one component (and, for the kubelet, one host). Events of cluster-scoped objects (Nodes)
    go to the `default` namespace. Failures are logged, never raised."""

    def __init__(self, client: ApiClient, *, component: str, host: str = "") -> None:
        self.client = client
        self.component = component
        self.host = host
        self._seen: dict[tuple[str, ...], tuple[str, str, int, float]] = {}  # -> (namespace, name, count, when)

    async def event(self, obj: Obj, etype: str, reason: str, message: str, *, field_path: str = "") -> None:
        """Record one event about `obj`; `field_path` names a part of it (`spec.containers{web}`), as kubelet's
        container events do."""
        m = fields.meta(obj)
        name, obj_ns, uid = str(m.get("name") or ""), str(m.get("namespace") or ""), str(m.get("uid") or "")
        kind = str(obj.get("kind") or "")
        api_version = str(obj.get("apiVersion") or "v1")
        ns = obj_ns or "default"
        ident = (ns, kind, obj_ns, name, uid, field_path, etype, reason, message)
        now = now_rfc3339()
        seen = self._seen.get(ident)
        try:
            if seen is not None and time.monotonic() - seen[3] < CORRELATION_WINDOW:
                ens, ename, count, _ = seen
                try:
                    await self.client.patch(
                        EVENTS, ename, {"count": count + 1, "lastTimestamp": now}, namespace=ens, patch_type="merge"
                    )
                    self._seen[ident] = (ens, ename, count + 1, time.monotonic())
                    return
                except NotFound:
                    self._seen.pop(ident, None)  # the Event was deleted: record a new one
            involved: Obj = {
                "kind": kind,
                "apiVersion": api_version,
                "name": name,
                "uid": uid,
                "resourceVersion": str(m.get("resourceVersion") or ""),
            }
            if obj_ns:
                involved["namespace"] = obj_ns
            if field_path:
                involved["fieldPath"] = field_path
            source: Obj = {"component": self.component}
            if self.host:
                source["host"] = self.host
            ev = {
                "metadata": {"name": f"{name}.{time.time_ns():x}", "namespace": ns},
                "involvedObject": involved,
                "reason": reason,
                "message": message,
                "type": etype,
                "source": source,
                "reportingComponent": self.component,
                "reportingInstance": self.host,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            out = await self.client.create(EVENTS, ev, ns)
            if len(self._seen) > MAX_REMEMBERED:
                self._seen.clear()
            self._seen[ident] = (ns, str(fields.meta(out).get("name") or ""), 1, time.monotonic())
        except Exception as exc:  # an event is best effort: it must never fail a reconcile
            log.warning("event %s %s on %s/%s: %s", etype, reason, obj_ns, name, exc)
