"""The CustomResourceDefinition kind itself: defaulting, validation, status (accepted names, conditions, stored
versions) and the kinds a CRD makes the API serve.

Mirrors apiextensions-apiserver: `SetDefaults_CustomResourceDefinition*`, `ValidateCustomResourceDefinition`
(names, scope, versions, exactly one storage version, structural v1 schemas), the naming controller
(`NamesAccepted` with reasons PluralConflict/SingularConflict/ShortNamesConflict/KindConflict/ListKindConflict
and the message `"x" is already in use`, names checked against the other CRDs of the same group), the
establishing controller (`Established`) and the CRD strategy that keeps the storage version in
`status.storedVersions`. kube runs the two controllers asynchronously; kwire computes the same status in the
write path, so a CRD is served as soon as its create returns.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from typing import Any

from kwire.api import validation
from kwire.api.crd import cel, custom
from kwire.api.crd import schema as schema_mod
from kwire.api.errors import FieldError, RawValue, forbidden, invalid, not_supported, required
from kwire.api.registry import CustomVersion, Kind, all_kinds, by_path, version_priority

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Errs = list[FieldError]

GROUP = "apiextensions.k8s.io"
FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
APPROVAL = "api-approved.kubernetes.io"  # required on CRDs of *.k8s.io / *.kubernetes.io groups
CRDS = by_path(GROUP, "v1", "customresourcedefinitions")
DEFAULT_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec(obj: Obj) -> Obj:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


# -- defaulting ---------------------------------------------------------------------------------------------------
def apply_defaults(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    names = spec.get("names")
    if isinstance(names, dict) and names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    conv = spec.setdefault("conversion", {"strategy": "None"})
    if isinstance(conv, dict):
        conv.setdefault("strategy", "None")


# -- validation ---------------------------------------------------------------------------------------------------
def _versions_value(versions: Any) -> RawValue:
    names = ", ".join(f'"{(v or {}).get("name", "")}"' for v in versions or [] if isinstance(v, dict))
    return RawValue(f"[]apiextensions.CustomResourceDefinitionVersion{{{names}}}")


def _check_names(names: Obj, path: str) -> Errs:
    errs: Errs = []
    for field in ("plural", "singular", "kind", "listKind"):
        if not names.get(field):
            errs.append(required(f"{path}.{field}", ""))
    for field in ("plural", "singular"):
        value = names.get(field)
        if value:
            msgs = validation.dns1035_label(str(value))
            if msgs:
                errs.append(invalid(f"{path}.{field}", value, ",".join(msgs)))
    for field in ("kind", "listKind"):
        value = names.get(field)
        if value:
            msgs = validation.dns1035_label(str(value).lower())
            if msgs:
                errs.append(
                    invalid(
                        f"{path}.{field}", value, "may have mixed case, but should otherwise match: " + ",".join(msgs)
                    )
                )
    for i, short in enumerate(names.get("shortNames") or []):
        msgs = validation.dns1035_label(str(short))
        if msgs:
            errs.append(invalid(f"{path}.shortNames[{i}]", short, ",".join(msgs)))
    for i, cat in enumerate(names.get("categories") or []):
        msgs = validation.dns1035_label(str(cat))
        if msgs:
            errs.append(invalid(f"{path}.categories[{i}]", cat, ",".join(msgs)))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        errs.append(invalid(f"{path}.listKind", names.get("listKind"), "kind and listKind may not be the same"))
    return errs


def _default_errors(schema: Obj, path: str, data_path: str) -> Errs:
    """A `default` must validate against its own schema and survive pruning (kube's validateDefaults)."""
    default = copy.deepcopy(schema["default"])
    errs = [
        FieldError(e.type, f"{path}.default", e.detail, e.value, e.supported)
        for e in schema_mod.validate(schema, default, data_path)
    ]
    pruned = copy.deepcopy(default)
    schema_mod.prune(schema, pruned)
    if pruned != default:
        errs.append(invalid(f"{path}.default", RawValue("..."), "must not have unknown fields"))
    return errs


def _structural(schema: Any, path: str, *, root: bool = False, data_path: str = "") -> Errs:
    """The structural-schema rules kube enforces for v1 CRDs (the parts that matter for serving)."""
    if not isinstance(schema, dict):
        return [invalid(path, RawValue("null"), "must be an object")]
    errs: Errs = []
    stype = schema.get("type")
    if root and stype != "object":
        if not stype:
            errs.append(required(f"{path}.type", "must not be empty at the root"))
        else:
            errs.append(invalid(f"{path}.type", stype, "must be object at the root"))
    special = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if not stype and not special and not root:
        errs.append(required(f"{path}.type", "must not be empty for specified object fields"))
    if schema.get("properties") and isinstance(schema.get("additionalProperties"), dict):
        errs.append(
            forbidden(f"{path}.additionalProperties", "additionalProperties and properties are mutual exclusive")
        )
    if schema.get("additionalProperties") is False:
        errs.append(forbidden(f"{path}.additionalProperties", "must not be used in structural schemas"))
    if stype == "array" and not isinstance(schema.get("items"), dict):
        errs.append(required(f"{path}.items", "must be specified"))
    if schema.get("uniqueItems") is True:  # kube never checks it: it refuses it
        errs.append(
            forbidden(
                f"{path}.uniqueItems",
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            )
        )
    if "default" in schema and not root:
        errs += _default_errors(schema, path, data_path)
    for name, sub in (schema.get("properties") or {}).items():
        errs += _structural(sub, f"{path}.properties[{name}]", data_path=f"{data_path}.{name}" if data_path else name)
    if isinstance(schema.get("items"), dict):
        errs += _structural(schema["items"], f"{path}.items", data_path=f"{data_path}[0]")
    if isinstance(schema.get("additionalProperties"), dict):
        errs += _structural(
            schema["additionalProperties"], f"{path}.additionalProperties", data_path=f"{data_path}[key]"
        )
    if schema.get("x-kubernetes-list-type") == "map" and not schema.get("x-kubernetes-list-map-keys"):
        errs.append(
            required(f"{path}.x-kubernetes-list-map-keys", "must not be empty if x-kubernetes-list-type is map")
        )
    return errs


def validate_crd(obj: Obj, old: Obj | None) -> Errs:
    """ValidateCustomResourceDefinition (and ...Update: group, names.plural and scope are immutable)."""
    spec = _spec(obj)
    errs: Errs = []
    group = str(spec.get("group") or "")
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    assert isinstance(names, dict)
    name = str((obj.get("metadata") or {}).get("name") or "")
    plural = str(names.get("plural") or "")
    if name and name != f"{plural}.{group}":
        errs.append(invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if not group:
        errs.append(required("spec.group", ""))
    else:
        msgs = validation.dns1123_subdomain(group)
        if msgs:
            errs.append(invalid("spec.group", group, ",".join(msgs)))
        if "." not in group:
            errs.append(invalid("spec.group", group, "should be a domain with at least one dot"))
    if group == "k8s.io" or group.endswith((".k8s.io", ".kubernetes.io")) or group == "kubernetes.io":
        ann = (obj.get("metadata") or {}).get("annotations") or {}
        if not ann.get(APPROVAL):
            errs.append(
                required(
                    f"metadata.annotations[{APPROVAL}]",
                    f'protected groups must have approval annotation "{APPROVAL}", see '
                    "https://github.com/kubernetes/enhancements/pull/1111",
                )
            )
    scope = spec.get("scope")
    if not scope:
        errs.append(required("spec.scope", ""))
    elif scope not in ("Cluster", "Namespaced"):
        errs.append(not_supported("spec.scope", scope, ("Cluster", "Namespaced")))
    errs += _check_names(names, "spec.names")
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        errs.append(required("spec.versions", "must have exactly one version marked as storage version"))
        versions = []
    seen: set[str] = set()
    storage = 0
    unique = True
    for i, v in enumerate(versions):
        p = f"spec.versions[{i}]"
        if not isinstance(v, dict):
            errs.append(invalid(p, RawValue("null"), "must be an object"))
            continue
        vname = str(v.get("name") or "")
        if vname in seen:
            unique = False
        seen.add(vname)
        msgs = validation.dns1035_label(vname)
        if msgs:
            errs.append(invalid(f"{p}.name", vname, ",".join(msgs)))
        if v.get("storage") is True:
            storage += 1
        schema = (v.get("schema") or {}).get("openAPIV3Schema") if isinstance(v.get("schema"), dict) else None
        if schema is None:
            errs.append(required(f"{p}.schema.openAPIV3Schema", "schemas are required"))
        else:
            errs += _structural(schema, f"{p}.schema.openAPIV3Schema", root=True)
        sub = v.get("subresources") or {}
        scale = sub.get("scale") if isinstance(sub, dict) else None
        if isinstance(scale, dict):
            for field in ("specReplicasPath", "statusReplicasPath"):
                path = scale.get(field)
                if not path:
                    errs.append(required(f"{p}.subresources.scale.{field}", ""))
                elif not str(path).startswith("."):
                    errs.append(
                        invalid(f"{p}.subresources.scale.{field}", path, "should be a json path starting with .")
                    )
        for j, sel in enumerate(v.get("selectableFields") or []):
            sp = f"{p}.selectableFields[{j}].jsonPath"
            path = sel.get("jsonPath") if isinstance(sel, dict) else None
            if not path:
                errs.append(required(sp, ""))
            elif not str(path).startswith("."):
                errs.append(invalid(sp, path, "must be a simple json path starting with ."))
        for j, col in enumerate(v.get("additionalPrinterColumns") or []):
            cp = f"{p}.additionalPrinterColumns[{j}]"
            if not isinstance(col, dict):
                continue
            if not col.get("name"):
                errs.append(required(f"{cp}.name", ""))
            if col.get("type") not in ("integer", "number", "string", "boolean", "date"):
                errs.append(
                    not_supported(f"{cp}.type", col.get("type"), ("integer", "number", "string", "boolean", "date"))
                )
            if not col.get("jsonPath"):
                errs.append(required(f"{cp}.JSONPath", ""))
    if not unique:
        errs.append(invalid("spec.versions", _versions_value(versions), "must contain unique version names"))
    if versions and storage != 1:
        errs.append(
            invalid(
                "spec.versions", _versions_value(versions), "must have exactly one version marked as storage version"
            )
        )
    conv = spec.get("conversion") or {}
    strategy = conv.get("strategy") if isinstance(conv, dict) else None
    if strategy not in ("None", "Webhook"):
        errs.append(not_supported("spec.conversion.strategy", strategy, ("None", "Webhook")))
    elif strategy == "Webhook" and not (conv.get("webhook") or {}).get("clientConfig"):
        errs.append(required("spec.conversion.webhook", "required when strategy is set to Webhook"))
    if old is not None:
        ospec = _spec(old)
        if ospec.get("group") != spec.get("group"):
            errs.append(invalid("spec.group", spec.get("group"), "field is immutable"))
        if (ospec.get("names") or {}).get("plural") != names.get("plural"):
            errs.append(invalid("spec.names.plural", names.get("plural"), "field is immutable"))
        if ospec.get("scope") != spec.get("scope"):
            errs.append(invalid("spec.scope", spec.get("scope"), "field is immutable"))
    return errs


# -- status (naming + establishing controllers, stored versions) ---------------------------------------------------
def storage_version(obj: Obj) -> str:
    for v in _spec(obj).get("versions") or []:
        if isinstance(v, dict) and v.get("storage") is True:
            return str(v.get("name"))
    return ""


def _condition(ctype: str, status: str, reason: str, message: str, old: list[Obj]) -> Obj:
    prev = next((c for c in old if c.get("type") == ctype), None)
    when = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
    return {
        "type": ctype,
        "status": status,
        "lastTransitionTime": when or _now(),
        "reason": reason,
        "message": message,
    }


def compute_status(obj: Obj, others: list[Obj]) -> None:
    """Set status.acceptedNames, the NamesAccepted/Established conditions and storedVersions on `obj`.

    `others` are the other stored CRDs; only those of the same group claim names, as in kube's naming controller.
    """
    spec = _spec(obj)
    group = spec.get("group")
    status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    assert isinstance(status, dict)
    old_conds = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    accepted = dict(status.get("acceptedNames") or {})
    requested = spec.get("names") or {}
    resources: set[str] = set()
    kinds: set[str] = set()
    for other in others:
        if _spec(other).get("group") != group:
            continue
        an = (other.get("status") or {}).get("acceptedNames") or {}
        resources.update(x for x in [an.get("plural"), an.get("singular"), *(an.get("shortNames") or [])] if x)
        kinds.update(x for x in [an.get("kind"), an.get("listKind")] if x)
    for k in all_kinds():  # built-in kinds of the same group claim their names too
        if k.group == group and k.custom is None:
            resources.update([k.plural, k.singular, *k.short_names])
            kinds.update([k.kind, k.list_kind_name])

    problem: tuple[str, str] | None = None

    def fresh(req: Any, acc: Any, used: set[str]) -> str | None:
        if req == acc or req not in used:
            return None
        return f'"{req}" is already in use'

    new_names: Obj = dict(accepted)
    for field, reason, used in (
        ("plural", "PluralConflict", resources),
        ("singular", "SingularConflict", resources),
    ):
        err = fresh(requested.get(field), accepted.get(field), used)
        if err:
            problem = (reason, err)
        elif requested.get(field):
            new_names[field] = requested[field]
    shorts = list(requested.get("shortNames") or [])
    if shorts != list(accepted.get("shortNames") or []):
        mine = set(accepted.get("shortNames") or [])
        errs = [e for s in shorts if s not in mine and (e := fresh(s, "", resources))]
        if errs:
            problem = ("ShortNamesConflict", errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]")
        elif shorts:
            new_names["shortNames"] = shorts
        else:
            new_names.pop("shortNames", None)
    for field, reason in (("kind", "KindConflict"), ("listKind", "ListKindConflict")):
        err = fresh(requested.get(field), accepted.get(field), kinds)
        if err:
            problem = (reason, err)
        elif requested.get(field):
            new_names[field] = requested[field]
    if requested.get("categories"):
        new_names["categories"] = list(requested["categories"])
    else:
        new_names.pop("categories", None)
    if problem:
        names_cond = _condition("NamesAccepted", "False", problem[0], problem[1], old_conds)
    else:
        names_cond = _condition("NamesAccepted", "True", "NoConflicts", "no conflicts found", old_conds)
    was_established = any(c.get("type") == "Established" and c.get("status") == "True" for c in old_conds)
    if was_established or not problem:
        est = _condition(
            "Established", "True", "InitialNamesAccepted", "the initial names have been accepted", old_conds
        )
    else:
        est = _condition("Established", "False", "NotAccepted", "not all names are accepted", old_conds)
    conds = [names_cond, est]
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        conds.append(
            _condition(
                "Terminating", "True", "InstanceDeletionInProgress", "CustomResource deletion is in progress", old_conds
            )
        )
    stored = list(status.get("storedVersions") or [])
    sv = storage_version(obj)
    if sv and sv not in stored:
        stored.append(sv)
    obj["status"] = {"conditions": conds, "acceptedNames": new_names, "storedVersions": stored}


def established(obj: Obj) -> bool:
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
        if isinstance(c, dict)
    )


# -- serving -----------------------------------------------------------------------------------------------------
def version_schema(version: Obj) -> Obj | None:
    schema = version.get("schema")
    if isinstance(schema, dict) and isinstance(schema.get("openAPIV3Schema"), dict):
        return dict(schema["openAPIV3Schema"])
    return None


def served_kinds(obj: Obj) -> tuple[Kind, ...]:
    """The kinds an established CRD serves, one per served version, named by its accepted names."""
    if not established(obj):
        return ()
    spec = _spec(obj)
    names = (obj.get("status") or {}).get("acceptedNames") or {}
    crd_name = str(obj["metadata"]["name"])
    storage = storage_version(obj)
    out: list[Kind] = []
    versions = [v for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("served")]
    versions.sort(key=lambda v: version_priority(str(v.get("name"))))
    for v in versions:
        sub = v.get("subresources") if isinstance(v.get("subresources"), dict) else {}
        assert isinstance(sub, dict)
        scale = sub.get("scale") if isinstance(sub.get("scale"), dict) else None
        subresources = (("status",) if "status" in sub else ()) + (("scale",) if scale else ())
        schema = version_schema(v)
        skipped = cel.skipped_rules(schema)  # compiled now, so a rule cel-python cannot run is reported at once
        if skipped:
            log.warning("CRD %s %s: CEL rules not enforced: %s", crd_name, v.get("name"), skipped)
        served = CustomVersion(
            crd_name=crd_name,
            storage_version=storage,
            schema=schema,
            printer_columns=tuple(c for c in v.get("additionalPrinterColumns") or [] if isinstance(c, dict))
            or DEFAULT_COLUMNS,
            spec_replicas_path=str((scale or {}).get("specReplicasPath") or ""),
            status_replicas_path=str((scale or {}).get("statusReplicasPath") or ""),
            label_selector_path=str((scale or {}).get("labelSelectorPath") or ""),
            preserve_unknown=bool(spec.get("preserveUnknownFields")),
            selectable_fields=tuple(
                str(f.get("jsonPath")) for f in v.get("selectableFields") or [] if isinstance(f, dict)
            ),
            singular=str(names.get("singular") or ""),
        )
        out.append(
            Kind(
                group=str(spec.get("group")),
                version=str(v.get("name")),
                kind=str(names.get("kind")),
                plural=str(names.get("plural")),
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=subresources,
                list_kind=str(names.get("listKind") or ""),
                custom=custom.derive(served),
            )
        )
    return tuple(out)


def crd_openapi_schemas() -> dict[tuple[str, str, str], Obj]:
    """(group, version, kind) -> the openAPIV3Schema of every custom kind served right now (live).

    For the OpenAPI documents (`kubectl explain`): the schema as the CRD author wrote it.
    """
    return {(k.group, k.version, k.kind): dict(k.custom.schema) for k in all_kinds() if k.custom and k.custom.schema}
