"""The API's two timestamp formats: metav1.Time (`2026-11-30T21:45:00Z`, whole seconds, what
creationTimestamp, conditions' lastTransitionTime and Events carry) and metav1.MicroTime
(`2026-11-30T21:45:00.123456Z`, what Leases' acquireTime/renewTime carry), of now or of a Unix time."""

from __future__ import annotations

import datetime as dt


def now_rfc3339() -> str:
    """metav1.Time of now."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """metav1.MicroTime of now."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(epoch: float) -> str:
    """metav1.Time of a Unix time."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
