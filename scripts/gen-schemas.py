#!/usr/bin/env python3
"""Generates kwire/api/schemas/definitions.json: the OpenAPI v2 definitions of the built-in kinds kwire serves.

Source: the Kubernetes 1.32 OpenAPI definitions as shipped by the `kubernetes-validate` package (PyPI, a dev
dependency), which carries upstream's swagger converted to JSON Schema (kubernetes-json-schema, "-local" flavour:
one `_definitions.json`). This script turns them back into swagger 2.0 definitions as kube-apiserver serves them
at /openapi/v2: `"type": ["string", "null"]` -> `"type": "string"`, `#/$defs/` -> `#/definitions/`, IntOrString
and Quantity as upstream declares them, and drops the `enum` that the converter added to apiVersion/kind. Only
the stable versions of the groups kwire serves (or will serve) are kept, with everything they reference.

The kubernetes Python client (also a dev dependency) was the other candidate; its models lost the int32/int64
formats, `required`, and the x-kubernetes-* list/patch extensions, which field validation and kubectl need.

Run: `python scripts/gen-schemas.py` (writes the file; `--check` exits 1 when the checked-in file is stale).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

K8S_VERSION = "v1.32.0"
OUT = Path(__file__).resolve().parent.parent / "kwire" / "api" / "schemas" / "definitions.json"

# (group, version) whose kinds are kept as roots; "" is the core group.
GROUP_VERSIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("", "v1"),
        ("apps", "v1"),
        ("batch", "v1"),
        ("autoscaling", "v1"),
        ("autoscaling", "v2"),
        ("policy", "v1"),
        ("rbac.authorization.k8s.io", "v1"),
        ("storage.k8s.io", "v1"),
        ("certificates.k8s.io", "v1"),
        ("admissionregistration.k8s.io", "v1"),
        ("apiextensions.k8s.io", "v1"),
        ("events.k8s.io", "v1"),
        ("coordination.k8s.io", "v1"),
        ("discovery.k8s.io", "v1"),
        ("networking.k8s.io", "v1"),
        ("scheduling.k8s.io", "v1"),
        ("node.k8s.io", "v1"),
        ("authentication.k8s.io", "v1"),
        ("authorization.k8s.io", "v1"),
        ("apiregistration.k8s.io", "v1"),
    }
)

# Upstream's own declarations of the two "union" types (the JSON Schema conversion made them oneOf).
_SPECIAL: dict[str, dict[str, Any]] = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
        "description": "IntOrString is a type that can hold an int32 or a string.  When used in JSON or YAML "
        "marshalling and unmarshalling, it produces or consumes the inner type.  This allows you to have, for "
        "example, a JSON field that can accept a name or number.",
        "type": "string",
        "format": "int-or-string",
    },
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {
        "description": "Quantity is a fixed-point representation of a number. It provides convenient "
        "marshaling/unmarshaling in JSON and YAML, in addition to String() and AsInt64() accessors.",
        "type": "string",
    },
}


def _source() -> dict[str, Any]:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"{K8S_VERSION}-local"
    data: dict[str, Any] = json.loads((root / "_definitions.json").read_text())
    return data["$defs"]  # type: ignore[no-any-return]


def _convert(node: Any, *, top: bool = False) -> Any:
    if isinstance(node, list):
        return [_convert(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$schema", "$id"):
            continue
        if key == "$ref":
            out[key] = "#/definitions/" + value.rsplit("/", 1)[-1]
        elif key == "type" and isinstance(value, list):
            kinds = [t for t in value if t != "null"]
            out[key] = kinds[0] if len(kinds) == 1 else kinds
        elif key == "properties":
            props = {}
            for name, sub in value.items():
                conv = _convert(sub)
                if top and name in ("apiVersion", "kind"):
                    conv.pop("enum", None)  # added by the JSON Schema conversion, not upstream
                props[name] = conv
            out[key] = props
        else:
            out[key] = _convert(value)
    return out


def _refs(node: Any, acc: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            acc.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            _refs(value, acc)
    elif isinstance(node, list):
        for value in node:
            _refs(value, acc)


def generate() -> dict[str, Any]:
    src = _source()
    roots = [
        name
        for name, d in src.items()
        if any((g["group"], g["version"]) in GROUP_VERSIONS for g in d.get("x-kubernetes-group-version-kind", []))
    ]
    keep: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        found: set[str] = set()
        _refs(src[name], found)
        todo.extend(found - keep)
    defs = {}
    for name in sorted(keep):
        defs[name] = _SPECIAL.get(name) or _convert(src[name], top=True)
    return {"kubernetesVersion": K8S_VERSION, "definitions": defs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in file differs")
    args = parser.parse_args()
    text = json.dumps(generate(), indent=0, sort_keys=True, ensure_ascii=False) + "\n"
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print("up to date" if same else f"{OUT} is stale: run scripts/gen-schemas.py")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
