"""Mutating admission on create that kube-apiserver runs by default and that kwire mirrors.

- DefaultTolerationSeconds (plugin/pkg/admission/defaulttolerationseconds): every new Pod that does not already
  tolerate `node.kubernetes.io/not-ready:NoExecute` / `node.kubernetes.io/unreachable:NoExecute` gets a toleration
  `{key, operator: Exists, effect: NoExecute, tolerationSeconds: N}` for each, N from kube-apiserver's
  `--default-not-ready-toleration-seconds` / `--default-unreachable-toleration-seconds` (300 s by default), so its
  pods are evicted from a failed node that long after the taint appears.
- ServiceAccount (plugin/pkg/admission/serviceaccount): a Pod without `serviceAccountName` runs as `default`
  (also in the deprecated `serviceAccount` field, as kube's defaulting mirrors it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"


@dataclass(frozen=True)
class Admission:
    not_ready_toleration_seconds: int = 300
    unreachable_toleration_seconds: int = 300

    def admit_create(self, kind: str, obj: Obj) -> None:
        if kind == "Pod":
            self._default_toleration_seconds(obj)
            self._service_account(obj)

    @staticmethod
    def _service_account(pod: Obj) -> None:
        spec = pod.get("spec")
        if not isinstance(spec, dict):
            return
        name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = name
        spec["serviceAccount"] = name

    def _default_toleration_seconds(self, pod: Obj) -> None:
        spec = pod.get("spec")
        if not isinstance(spec, dict):
            return
        tolerations = spec.get("tolerations")
        if tolerations is not None and not isinstance(tolerations, list):
            return  # malformed: validation reports it
        current = [t for t in tolerations or [] if isinstance(t, dict)]

        def tolerated(key: str) -> bool:
            return any(
                (t.get("key") in (key, "", None)) and (t.get("effect") in ("NoExecute", "", None)) for t in current
            )

        added = []
        for key, seconds in (
            (TAINT_NOT_READY, self.not_ready_toleration_seconds),
            (TAINT_UNREACHABLE, self.unreachable_toleration_seconds),
        ):
            if not tolerated(key):
                added.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds})
        if added:
            spec["tolerations"] = [*(tolerations or []), *added]
