"""CRD structural schemas (validation words and paths, defaulting, pruning, CEL), printer-column JSONPath, and
the CRD kind's own validation and status, as kube-apiserver words them."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import yaml

from kwire.api.crd import cel, columns, definition, schema
from kwire.api.registry import set_custom_kinds
from tests import UPSTREAM


def _msgs(errs: list[Any]) -> list[str]:
    return [str(e) for e in errs]


S: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
                "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                "ratio": {"type": "number", "exclusiveMaximum": True, "maximum": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "port": {"x-kubernetes-int-or-string": True},
                "addr": {"type": "string", "format": "ipv4"},
                "net": {"type": "string", "format": "cidr"},
                "when": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "format": "uuid"},
                "odd": {"type": "string", "format": "no-such-format"},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "ports": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "port": {"type": "integer", "format": "int32"}},
                    },
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                },
                "labels": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 2},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
                "template": {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {}},
            },
        }
    },
}


def test_every_error_at_once_with_kube_words_and_paths() -> None:
    obj = {
        "spec": {
            "name": "ABCDEFG",
            "replicas": "string",
            "ratio": 1,
            "mode": "c",
            "port": True,
            "addr": "300.1.1.1",
            "net": "10.0.0.0",
            "when": "yesterday",
            "id": "nope",
            "odd": "anything goes",
            "tags": ["x", "x", "y"],
            "ports": [{"name": "a", "port": 1}, {"name": "a", "port": 3000000000}],
            "labels": {"a": "1", "b": 2, "c": "3"},
            "free": {"anything": [1, {"x": None}]},
            "maybe": None,
        }
    }
    got = _msgs(schema.validate(S, obj, ""))
    assert got == [
        "spec.name: Too long: may not be more than 5 bytes",
        "spec.name: Invalid value: \"ABCDEFG\": spec.name in body should match '^[a-z]+$'",
        'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"',
        "spec.ratio: Invalid value: 1: spec.ratio in body should be less than 1",
        'spec.mode: Unsupported value: "c": supported values: "a", "b"',
        'spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean"',
        'spec.addr: Invalid value: "300.1.1.1": spec.addr in body must be of type ipv4: "300.1.1.1"',
        'spec.net: Invalid value: "10.0.0.0": spec.net in body must be of type cidr: "10.0.0.0"',
        'spec.when: Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday"',
        'spec.id: Invalid value: "nope": spec.id in body must be of type uuid: "nope"',
        "spec.tags: Too many: 3: must have at most 2 items",
        'spec.tags[1]: Duplicate value: "x"',
        'spec.ports[1].port: Invalid value: 3000000000: spec.ports[1].port in body must be of type int32: "3000000000"',
        'spec.ports[1]: Duplicate value: map[string]interface {}{"name":"a"}',
        "spec.labels: Too many: 3: must have at most 2 items",
        'spec.labels[b]: Invalid value: "integer": spec.labels[b] in body must be of type string: "integer"',
    ]
    assert _msgs(schema.validate(S, {"spec": {"template": {"metadata": {}}}}, "")) == [
        "spec.name: Required value",
        "spec.template.apiVersion: Required value: must not be empty",
        "spec.template.kind: Required value: must not be empty",
    ]
    ok = {"spec": {"name": "ab", "replicas": 3, "port": "http", "when": "2024-01-02T03:04:05Z", "maybe": None}}
    assert schema.validate(S, ok, "") == []


def test_value_validation_combinators() -> None:
    s = {
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "mode": {"type": "string", "anyOf": [{"enum": ["a"]}, {"pattern": "^x-"}]},
            "one": {"type": "integer", "oneOf": [{"minimum": 0}, {"maximum": 10}]},
            "nope": {"type": "string", "not": {"enum": ["forbidden"]}},
            "both": {"type": "string", "allOf": [{"minLength": 2}, {"pattern": "^[a-z]+$"}]},
        },
    }
    ok = {"port": "http", "mode": "x-1", "one": 20, "nope": "fine", "both": "ab"}
    assert schema.validate(s, ok, "spec") == []
    bad = {"port": 8080, "mode": "b", "one": 5, "nope": "forbidden", "both": "A"}
    assert _msgs(schema.validate(s, bad, "spec")) == [
        'spec.mode: Invalid value: "b": spec.mode in body must validate at least one schema (anyOf)',
        "spec.one: Invalid value: 5: spec.one in body must validate one and only one schema (oneOf)",
        'spec.nope: Invalid value: "forbidden": spec.nope in body must not validate the schema (not)',
        'spec.both: Invalid value: "A": spec.both in body should be at least 2 chars long',
        "spec.both: Invalid value: \"A\": spec.both in body should match '^[a-z]+$'",
    ]


def test_defaulting_and_pruning() -> None:
    obj = {
        "apiVersion": "x.io/v1",
        "kind": "X",
        "metadata": {"name": "a"},
        "spec": {"name": "ab", "unknown": 1, "free": {"kept": {"deep": 1}}, "mode": None, "labels": {"k": "v"}},
        "status": {"whatever": 1},
    }
    schema.apply_defaults(S, obj)
    schema.prune(S, obj, root=True)
    assert obj == {
        "apiVersion": "x.io/v1",
        "kind": "X",
        "metadata": {"name": "a"},
        "spec": {"name": "ab", "replicas": 1, "free": {"kept": {"deep": 1}}, "labels": {"k": "v"}},
    }


def test_cel_rules_self_old_self_message_expression_and_skipped() -> None:
    s = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-validations": [
                    {"rule": "self.min <= self.max", "message": "min must not exceed max"},
                    {"rule": "self.max < 100", "messageExpression": "'max is ' + string(self.max)"},
                    {"rule": "self.max != 42"},
                    {"rule": "self.min > 0", "fieldPath": ".min", "reason": "FieldValueForbidden"},
                ],
                "properties": {
                    "min": {"type": "integer"},
                    "max": {"type": "integer"},
                    "fixed": {
                        "type": "string",
                        "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "Value is immutable"}],
                    },
                    "timeout": {
                        "type": "string",
                        "x-kubernetes-validations": [
                            {"rule": "duration(self).getSeconds() >= 1", "message": "at least a second"},
                            {"rule": "self.%%%(", "message": "cannot compile"},
                        ],
                    },
                },
            }
        },
    }
    assert cel.skipped_rules(s) == ["self.%%%("]
    bad = {"spec": {"min": 0, "max": 200, "fixed": "b", "timeout": "500ms"}}
    assert _msgs(cel.validate(s, {"spec": {"min": 5, "max": 3}}, None, "")) == [
        'spec: Invalid value: "object": min must not exceed max'
    ]
    assert _msgs(cel.validate(s, bad, None, "")) == [
        'spec: Invalid value: "object": max is 200',
        "spec.min: Forbidden: failed rule: self.min > 0",
        'spec.timeout: Invalid value: "string": at least a second',
    ]
    assert _msgs(cel.validate(s, {"spec": {"min": 1, "max": 42}}, None, "")) == [
        'spec: Invalid value: "object": failed rule: self.max != 42'
    ]
    old = {"spec": {"min": 1, "max": 2, "fixed": "a"}}
    new = {"spec": {"min": 1, "max": 2, "fixed": "b"}}
    assert _msgs(cel.validate(s, new, old, "")) == ['spec.fixed: Invalid value: "string": Value is immutable']
    assert cel.validate(s, old, old, "") == []
    lib = {
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.name.lowerAscii() == self.name", "message": "lower case only"},
            {"rule": "self.tags.join(',').split(',').size() == self.tags.size()", "message": "no commas"},
            {"rule": "self.name.indexOf('-') != 0 && self.tags.isSorted()", "message": "sorted tags"},
            {"rule": "isURL(self.home)", "message": "home must be a URL"},
            {"rule": "quantity(self.size).isGreaterThan(quantity('1'))", "message": "unsupported: never enforced"},
            {"rule": "self.missing == 1"},
        ],
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "home": {"type": "string"},
            "size": {"type": "string"},
        },
    }
    ok = {"name": "abc", "tags": ["a", "b"], "home": "https://x.example/", "size": "2", "missing": 1}
    assert cel.validate(lib, ok, None, "spec") == []
    bad = {"name": "aBc", "tags": ["b,c", "a"], "home": "not a url", "size": "0"}
    assert _msgs(cel.validate(lib, bad, None, "spec")) == [
        'spec: Invalid value: "object": lower case only',
        'spec: Invalid value: "object": no commas',
        'spec: Invalid value: "object": sorted tags',
        'spec: Invalid value: "object": home must be a URL',
        'spec: Invalid value: "object": no such key: missing evaluating rule: self.missing == 1',
    ]
    listed = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "v": {"type": "string"}},
            "x-kubernetes-validations": [{"rule": "self.v == oldSelf.v", "message": "v is immutable"}],
        },
    }
    old_list = [{"name": "a", "v": "1"}, {"name": "b", "v": "2"}]
    new_list = [{"name": "b", "v": "2"}, {"name": "c", "v": "9"}, {"name": "a", "v": "changed"}]
    assert _msgs(cel.validate(listed, new_list, old_list, "spec.items")) == [
        'spec.items[2]: Invalid value: "object": v is immutable'
    ]


def test_printer_column_jsonpath_subset() -> None:
    obj = {
        "metadata": {"name": "r", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"list": ["a", "b"], "n": 3, "m": {"x.y": 1}},
        "status": {"conditions": [{"type": "Other", "status": "False"}, {"type": "Ready", "status": "True"}]},
    }
    assert columns.find(obj, ".spec.list") == [["a", "b"]]
    assert columns.find(obj, ".spec.list[1]") == ["b"]
    assert columns.find(obj, ".spec.list[*]") == ["a", "b"]
    assert columns.find(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert columns.find(obj, ".spec.m['x.y']") == [1]
    assert columns.find(obj, ".spec.missing") == []
    from kwire.api.registry import CustomVersion, Kind

    cols = (
        {"name": "List", "type": "string", "jsonPath": ".spec.list"},
        {"name": "N", "type": "integer", "jsonPath": ".spec.n", "priority": 1},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Gone", "type": "string", "jsonPath": ".spec.gone"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )
    kind = Kind("x.io", "v1", "X", "xs", True, custom=CustomVersion("xs.x.io", "v1", None, cols))
    now = dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    assert columns.cells(kind, obj, now=now) == ["r", '["a","b"]', 3, "True", None, "2d"]
    assert [c["priority"] for c in columns.column_definitions(kind)] == [0, 0, 1, 0, 0, 0]


def _crd(plural: str = "widgets", group: str = "example.com", **names: Any) -> dict[str, Any]:
    kind = names.pop("kind", "Widget")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"plural": plural, "kind": kind, **names},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": S}}],
        },
    }


def test_crd_validation_words() -> None:
    crd = _crd()
    definition.apply_defaults(crd)
    assert crd["spec"]["names"]["singular"] == "widget" and crd["spec"]["names"]["listKind"] == "WidgetList"
    assert definition.validate_crd(crd, None) == []
    bad = copy.deepcopy(crd)
    bad["metadata"]["name"] = "other.example.com"
    bad["spec"]["scope"] = "Galaxy"
    bad["spec"]["versions"].append({"name": "v2", "served": True, "storage": True})
    bad["spec"]["names"]["shortNames"] = ["Bad_Name"]
    assert _msgs(definition.validate_crd(bad, None)) == [
        'metadata.name: Invalid value: "other.example.com": must be spec.names.plural+"."+spec.group',
        'spec.scope: Unsupported value: "Galaxy": supported values: "Cluster", "Namespaced"',
        'spec.names.shortNames[0]: Invalid value: "Bad_Name": a DNS-1035 label must consist of lower case '
        "alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character "
        "(e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        "spec.versions[1].schema.openAPIV3Schema: Required value: schemas are required",
        'spec.versions: Invalid value: []apiextensions.CustomResourceDefinitionVersion{"v1", "v2"}: '
        "must have exactly one version marked as storage version",
    ]
    nogroup = _crd(group="nodot")
    definition.apply_defaults(nogroup)
    assert _msgs(definition.validate_crd(nogroup, None)) == [
        'spec.group: Invalid value: "nodot": should be a domain with at least one dot'
    ]
    protected = _crd(group="x.k8s.io")
    definition.apply_defaults(protected)
    assert _msgs(definition.validate_crd(protected, None)) == [
        "metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must have approval "
        'annotation "api-approved.kubernetes.io", see https://github.com/kubernetes/enhancements/pull/1111'
    ]
    protected["metadata"]["annotations"] = {"api-approved.kubernetes.io": "https://github.com/kubernetes/x/pull/1"}
    assert definition.validate_crd(protected, None) == []
    unstructural = _crd()
    unstructural["spec"]["versions"][0]["schema"] = {
        "openAPIV3Schema": {"type": "object", "properties": {"spec": {"properties": {"a": {"type": "string"}}}}}
    }
    definition.apply_defaults(unstructural)
    assert _msgs(definition.validate_crd(unstructural, None)) == [
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: "
        "must not be empty for specified object fields"
    ]
    unique = _crd()
    unique["spec"]["versions"][0]["schema"] = {
        "openAPIV3Schema": {
            "type": "object",
            "properties": {"tags": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}},
        }
    }
    definition.apply_defaults(unique)
    assert _msgs(definition.validate_crd(unique, None)) == [
        "spec.versions[0].schema.openAPIV3Schema.properties[tags].uniqueItems: Forbidden: uniqueItems cannot be set "
        "to true since the runtime complexity becomes quadratic"
    ]
    bad_default = _crd()
    bad_default["spec"]["versions"][0]["schema"] = {
        "openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "n": {"type": "integer", "default": "three"},
                        "o": {"type": "object", "properties": {"a": {"type": "string"}}, "default": {"b": "x"}},
                        "ok": {"type": "integer", "default": 3},
                    },
                }
            },
        }
    }
    definition.apply_defaults(bad_default)
    assert _msgs(definition.validate_crd(bad_default, None)) == [
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[n].default: Invalid value: "
        '"string": spec.n in body must be of type integer: "string"',
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[o].default: Invalid value: "
        "...: must not have unknown fields",
    ]


def test_crd_status_names_accepted_and_clash() -> None:
    first = _crd(shortNames=["wd"])
    definition.apply_defaults(first)
    definition.compute_status(first, [])
    conds = {c["type"]: c for c in first["status"]["conditions"]}
    assert conds["NamesAccepted"]["status"] == "True" and conds["NamesAccepted"]["reason"] == "NoConflicts"
    assert conds["Established"]["status"] == "True"
    assert first["status"]["storedVersions"] == ["v1"]
    assert first["status"]["acceptedNames"]["shortNames"] == ["wd"]
    clash = _crd(plural="gadgets", kind="Gadget", shortNames=["wd"])
    definition.apply_defaults(clash)
    definition.compute_status(clash, [first])
    conds = {c["type"]: c for c in clash["status"]["conditions"]}
    assert (conds["NamesAccepted"]["status"], conds["NamesAccepted"]["reason"], conds["NamesAccepted"]["message"]) == (
        "False",
        "ShortNamesConflict",
        '"wd" is already in use',
    )
    assert (conds["Established"]["status"], conds["Established"]["reason"]) == ("False", "NotAccepted")
    assert definition.served_kinds(clash) == ()
    kinds = definition.served_kinds(first)
    assert [(k.group, k.version, k.plural, k.singular, k.short_names) for k in kinds] == [
        ("example.com", "v1", "widgets", "widget", ("wd",))
    ]
    same_kind = _crd(plural="others", kind="Widget")
    definition.apply_defaults(same_kind)
    definition.compute_status(same_kind, [first])
    names = next(c for c in same_kind["status"]["conditions"] if c["type"] == "NamesAccepted")
    assert (names["reason"], names["message"]) == ("ListKindConflict", '"WidgetList" is already in use')
    other_group = _crd(group="other.io", shortNames=["wd"])
    definition.apply_defaults(other_group)
    definition.compute_status(other_group, [first])
    assert definition.established(other_group)  # names are only claimed within one group, as in kube


def test_upstream_crds_are_valid_and_their_schemas_published() -> None:
    docs = [d for d in yaml.safe_load_all((UPSTREAM / "metallb-native-v0.14.9.yaml").read_text()) if d]
    for path in sorted((UPSTREAM / "traefik-crds-v34.5.0").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    assert len(crds) == 17
    try:
        for crd in crds:
            definition.apply_defaults(crd)
            assert definition.validate_crd(crd, None) == [], crd["metadata"]["name"]
            definition.compute_status(crd, [])
            set_custom_kinds(crd["metadata"]["name"], definition.served_kinds(crd))
            for v in crd["spec"]["versions"]:
                assert cel.skipped_rules(definition.version_schema(v)) == []
        published = definition.crd_openapi_schemas()
        assert ("metallb.io", "v1beta1", "IPAddressPool") in published
        assert ("traefik.io", "v1alpha1", "IngressRoute") in published
        assert published[("metallb.io", "v1beta1", "IPAddressPool")]["properties"]["spec"]["required"] == ["addresses"]
    finally:
        for crd in crds:
            set_custom_kinds(crd["metadata"]["name"], ())


async def test_storage_version_and_defaults_applied_on_read(tmp_path: Path) -> None:
    from kwire.api.allocator import ServiceAllocator
    from kwire.api.registry import by_path
    from kwire.api.resources import CRDS, Resources
    from kwire.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "state.db")
    res = Resources(store, allocator=ServiceAllocator(service_cidr="10.43.0.0/16", node_port_range=(30000, 32767)))
    try:
        await res.load()
        ns = by_path("", "v1", "namespaces")
        assert ns is not None and CRDS is not None
        await res.create(ns, None, {"metadata": {"name": "default"}})
        crd = _crd(plural="gears", group="store.test")
        crd["spec"]["versions"] = [
            {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": S}},
            {"name": "v1beta1", "served": True, "storage": False, "schema": {"openAPIV3Schema": S}},
        ]
        await res.create(CRDS, None, crd)
        beta = by_path("store.test", "v1beta1", "gears")
        assert beta is not None
        obj = {"apiVersion": "store.test/v1beta1", "kind": "Widget", "metadata": {"name": "g"}, "spec": {"name": "ab"}}
        created = await res.create(beta, "default", obj)
        assert created["apiVersion"] == "store.test/v1beta1"
        raw = store.get_now("/registry/store.test/gears/default/g")
        assert raw is not None and orjson.loads(raw.value)["apiVersion"] == "store.test/v1"  # the storage version
        # a default added to the schema later shows on read, without a write
        crd = await res.get(CRDS, None, "gears.store.test")
        for v in crd["spec"]["versions"]:
            props = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            props["note"] = {"type": "string", "default": "added later"}
        await res.update(CRDS, None, "gears.store.test", crd)
        v1 = by_path("store.test", "v1", "gears")
        assert v1 is not None
        got = await res.get(v1, "default", "g")
        assert got["apiVersion"] == "store.test/v1" and got["spec"]["note"] == "added later"
        assert "note" not in orjson.loads(store.get_now("/registry/store.test/gears/default/g").value)["spec"]  # type: ignore[union-attr]
    finally:
        set_custom_kinds("gears.store.test", ())
        await store.close()


def test_prune_reports_the_unknown_fields_it_drops() -> None:
    obj = {"apiVersion": "x/v1", "kind": "X", "metadata": {}, "spec": {"name": "a", "x": 1, "tags": []}, "y": 2}
    obj["spec"]["ports"] = [{"name": "p", "zz": 1}]
    assert schema.prune(S, obj, root=True) == ["spec.x", "spec.ports[0].zz", "y"]


def _pool_kind(spec_props: dict[str, Any], *, crd: str = "pools.example.com") -> Any:
    from kwire.api.crd import custom
    from kwire.api.registry import CustomVersion, Kind

    s = {"type": "object", "properties": {"spec": {"type": "object", "properties": spec_props}}}
    version = CustomVersion(crd_name=crd, storage_version="v1", schema=s)
    return Kind("example.com", "v1", "Pool", "pools", True, custom=custom.derive(version))


def test_field_validation_follows_the_served_schema_compiled_once_per_crd_version() -> None:
    """The decoder's unknown-field check compiles a CRD version's schema once, and a changed CRD (a new schema
    object) is checked against its new schema, never a stale compiled one, however many CRDs come and go."""
    from kwire.api import fieldcheck

    def unknown(kind: Any, spec: dict[str, Any]) -> list[str]:
        found = fieldcheck.kind_schema(kind)
        assert found is not None
        obj = {"apiVersion": "example.com/v1", "kind": "Pool", "metadata": {"name": "p", "bogus": 1}, "spec": spec}
        return fieldcheck.check(found[0], obj, types=found[1], builtin=found[1]).unknown

    before = _pool_kind({"a": {"type": "string"}})
    assert unknown(before, {"a": "x", "b": "y"}) == ["metadata.bogus", "spec.b"]
    assert fieldcheck.kind_schema(before) == fieldcheck.kind_schema(before)
    after = _pool_kind({"a": {"type": "string"}, "b": {"type": "string"}})
    assert unknown(after, {"a": "x", "b": "y"}) == ["metadata.bogus"]
    assert unknown(before, {"a": "x", "b": "y"}) == ["metadata.bogus", "spec.b"]
    for i in range(600):  # past the cache's bound: old entries go, answers stay right
        assert unknown(_pool_kind({f"f{i}": {"type": "string"}}), {f"f{i}": "x", "b": "y"}) == [
            "metadata.bogus",
            "spec.b",
        ]
    assert unknown(after, {"a": "x", "b": "y", "c": 1}) == ["metadata.bogus", "spec.c"]


def test_conversion_webhook_looked_up_once_per_crd_revision() -> None:
    """Every custom-resource write asks whether its CRD converts through a webhook: the stored CRD is decoded
    once per revision, and a changed or deleted CRD is seen at once."""
    from kwire.api.crd.conversion import WebhookConverter
    from kwire.store.base import KV

    stored: dict[str, KV | None] = {}
    reads: list[str] = []

    def put(rev: int, conversion: dict[str, Any]) -> None:
        crd = {"metadata": {"name": "pools.example.com"}, "spec": {"conversion": conversion}}
        stored["pools.example.com"] = KV("/registry/crd/pools.example.com", orjson.dumps(crd), rev, 1)

    def crd(name: str) -> KV | None:
        reads.append(name)
        return stored.get(name)

    conv = WebhookConverter(crd=crd, lookup=None)  # type: ignore[arg-type]
    kind = _pool_kind({})
    put(2, {"strategy": "None"})
    assert conv.webhook_for(kind) is None and conv.webhook_for(kind) is None
    hook = {"clientConfig": {"url": "https://127.0.0.1:1/convert"}, "conversionReviewVersions": ["v1"]}
    put(3, {"strategy": "Webhook", "webhook": hook})
    assert conv.webhook_for(kind) == hook
    assert conv.webhook_for(kind) is conv.webhook_for(kind)  # decoded once for revision 3
    put(4, {"strategy": "None"})
    assert conv.webhook_for(kind) is None
    stored["pools.example.com"] = None
    assert conv.webhook_for(kind) is None
    assert len(reads) == 7  # the live state is asked every time


def test_server_side_apply_schema_follows_each_served_crd_version() -> None:
    """A CRD that changes a list's type is served as a new version object; the field-manager schema of the new
    one is its own even when the old one is gone and its memory (its id) is reused."""
    from kwire.api import fieldset

    for i in range(40):
        list_type = "set" if i % 2 else "atomic"
        tags = {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": list_type}
        kind = _pool_kind({"tags": tags})
        node = fieldset.schema_for_kind(kind)
        assert node.fields is not None
        assert node.fields["spec"].fields["tags"].type == list_type, i
        del kind, node


def test_one_walk_defaults_then_prunes_as_two_passes_do() -> None:
    """A write defaults and prunes in one walk of the compiled schema: each object is defaulted before it is
    pruned, so the result and the dropped paths are those of defaulting the whole object, then pruning it."""
    s: dict[str, Any] = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object", "default": {"a": "b"}}}},
            "spec": {
                "type": "object",
                "properties": {
                    "opts": {"type": "object", "default": {"keep": 1, "junk": 2}, "properties": {"keep": {}}},
                    "nul": {"type": "string", "default": "d"},
                    "gone": {"type": "string"},
                    "maybe": {"type": "string", "nullable": True, "default": "m"},
                    "items": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"n": {"type": "integer", "default": 7}}},
                    },
                    "byName": {
                        "type": "object",
                        "additionalProperties": {"type": "object", "properties": {"on": {"default": True}}},
                    },
                },
            },
        },
    }
    obj = {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "a", "stray": 1},
        "spec": {"nul": None, "gone": None, "maybe": None, "items": [{"x": 1}, {}], "byName": {"k": {"y": 2}}},
        "top": 1,
    }
    two_passes = copy.deepcopy(obj)
    schema.apply_defaults(s, two_passes)
    dropped = schema.prune(s, two_passes, root=True)
    one_walk = copy.deepcopy(obj)
    assert schema.Node(s).prune(one_walk, root=True, defaults=True) == dropped
    assert one_walk == two_passes
    assert one_walk == {
        "apiVersion": "x/v1",
        "kind": "X",
        "metadata": {"name": "a", "stray": 1, "labels": {"a": "b"}},  # metadata: defaulted, never pruned here
        "spec": {
            "nul": "d",
            "maybe": None,
            "items": [{"n": 7}, {"n": 7}],
            "byName": {"k": {"on": True}},
            "opts": {"keep": 1},
        },
    }
    assert dropped == ["spec.items[0].x", "spec.byName.k.y", "spec.opts.junk", "top"]


def test_cel_rules_below_rule_free_subtrees_still_run() -> None:
    """The CEL walk skips subtrees without rules; a rule deep under rule-free objects and lists still runs."""
    rule = {"rule": "self.size() <= 3", "message": "too long"}
    s: dict[str, Any] = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "free": {"type": "object", "properties": {"a": {"type": "string"}}},
                    "list": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string", "x-kubernetes-validations": [rule]}},
                        },
                    },
                },
            }
        },
    }
    obj = {"spec": {"free": {"a": "long value"}, "list": [{"name": "abc"}, {"name": "abcd"}]}}
    assert [str(e) for e in cel.validate(s, obj, None, "")] == ['spec.list[1].name: Invalid value: "string": too long']
    assert cel.validate(s["properties"]["spec"]["properties"]["free"], obj["spec"]["free"], None, "") == []


def test_kinds_in_follows_the_served_crds() -> None:
    """The (group, version) index every /apis request consults sees a CRD's kinds when served and not after."""
    from kwire.api.registry import all_kinds, kinds_in

    kind = _pool_kind({}, crd="pools.example.com")
    assert kinds_in("example.com", "v1") == []
    set_custom_kinds("pools.example.com", (kind,))
    try:
        assert kinds_in("example.com", "v1") == [kind]
        for group, version in {(k.group, k.version) for k in all_kinds()}:
            assert kinds_in(group, version) == [k for k in all_kinds() if (k.group, k.version) == (group, version)]
    finally:
        set_custom_kinds("pools.example.com", ())
    assert kinds_in("example.com", "v1") == []
