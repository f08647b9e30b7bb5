"""Request bodies as kube-apiserver reads them: size limit, media types, JSON/YAML decoding, field validation.

Mirrors k8s.io/apiserver's handlers (`limitedReadBody`, the negotiated serializers, `fieldValidation`):

- a body over `--max-request-bytes` (3 MiB) is refused with 413 `Request entity too large: limit is 3145728`
  after reading at most that many bytes (Content-Length is checked first);
- Content-Type must be JSON, YAML or protobuf (415 `Unsupported Media Type` with kube's list otherwise);
- JSON: nesting deeper than orjson's 1,024 levels is a 400, never a 500 (kube's limit is 10,000: no real object
  comes near either); duplicate keys are detected;
- YAML: go-yaml's alias-expansion bound (CVE-2019-11253, "billion laughs"): aliases are counted as go-yaml's
  decoder counts them, on the composed node graph, and a document whose expansion ratio passes go-yaml's
  `allowedAliasRatio` is refused before anything is expanded; duplicate keys are detected with their line;
- `fieldValidation` Strict / Warn / Ignore (default Warn, as kube-apiserver): unknown fields (from the kind's
  schema, `fieldcheck.py`) and duplicate fields are a 400 `strict decoding error: ...`, `Warning` headers, or
  dropped silently. Values of the wrong type always fail decoding (Go's encoding/json error).

Hand-written because no maintained library offers go-yaml's alias accounting or kube's wording.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml
from aiohttp import web

from kwire.api import fieldcheck, protobuf
from kwire.api.errors import ApiError, bad_request
from kwire.api.registry import Kind

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MAX_REQUEST_BYTES = 3 * 1024 * 1024  # kube-apiserver --max-request-bytes default
STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
_ACCEPTED = f"{JSON}, {YAML}, {PROTOBUF}"


def too_large(limit: int = MAX_REQUEST_BYTES) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def unsupported_media_type() -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {_ACCEPTED}",
    )


async def read_body(request: web.Request, *, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, refusing (413) anything over `limit` without buffering more than `limit` + one chunk."""
    if request.content_length is not None:
        if request.content_length > limit:
            raise too_large(limit)
        return await request.read()  # the length is known and within the limit: one read
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", JSON).split(";")[0].strip().lower() or JSON


def validation_mode(request: web.Request) -> str:
    mode = request.query.get("fieldValidation", "") or WARN
    if mode not in (STRICT, WARN, IGNORE):
        raise bad_request(f"fieldValidation must be one of Ignore, Warn, Strict; got {mode!r}"[:200])
    return mode


# -- JSON ------------------------------------------------------------------------------------------------------
class _Dup:
    """Collects duplicate keys while the stdlib decoder builds objects."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def hook(self, pairs: list[tuple[str, Any]]) -> Obj:
        out: Obj = {}
        for key, value in pairs:
            if key in out:
                self.found.append(f'duplicate field "{key}"')
            out[key] = value
        return out


def _json_error(exc: Exception) -> ApiError:
    return bad_request(f"the body of the request could not be decoded: {exc}")


# A key is a string followed by a colon. Inside strings a quote is always escaped (`\"`), so in the body and in
# orjson's re-encoding of what it decoded the same number of `"...:` sequences come from string contents, and
# the difference is the number of duplicate keys, unless `\u` escapes are used (then the exact path runs).
_KEY_END = re.compile(rb'"[ \t\r\n]*:')


def _may_have_duplicates(raw: bytes, value: Any) -> bool:
    if b"\\u" in raw:
        return True
    return len(_KEY_END.findall(raw)) != len(_KEY_END.findall(orjson.dumps(value)))


def loads_json(raw: bytes, *, duplicates: bool) -> tuple[Any, list[str]]:
    """Decodes JSON; with `duplicates`, also reports duplicate keys (kube's strict decoder words).

    orjson decodes (fast; keeps the last of duplicate keys as Go does); the stdlib decoder with a pairs hook,
    ~20x slower, only runs when a cheap count says the body has more keys than the decoded value.
    """
    try:
        value = orjson.loads(raw)  # also refuses nesting deeper than 1024 with a decode error
    except orjson.JSONDecodeError as exc:
        raise _json_error(exc) from None
    if not duplicates or not isinstance(value, dict | list) or not _may_have_duplicates(raw, value):
        return value, []
    dup = _Dup()
    try:
        json.loads(raw, object_pairs_hook=dup.hook)
    except (ValueError, RecursionError):  # orjson accepted the body; its answer stands
        return value, []
    return value, dup.found


# -- YAML ------------------------------------------------------------------------------------------------------
class YamlBomb(Exception):
    pass


def _allowed_alias_ratio(decode_count: int) -> float:
    """go-yaml v2/v3 `allowedAliasRatio`."""
    if decode_count <= 400_000:
        return 0.99
    if decode_count >= 4_000_000:
        return 0.10
    return 0.99 - 0.89 * (decode_count - 400_000) / 3_600_000


def check_aliases(root: yaml.Node) -> int:
    """Counts nodes as go-yaml's decoder visits them (an alias re-visits its anchor's subtree), failing early.

    PyYAML's composer resolves an alias to the anchored node object itself, so a node met again in document
    order is an alias. Iterative and bounded: the walk stops as soon as the share of alias-reached nodes passes
    go-yaml's allowed ratio, so a bomb is refused after a few thousand steps whatever its expanded size.
    Returns the number of alias-reached nodes.
    """
    decode_count = 0
    alias_count = 0
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, in_alias = stack.pop()
        if not in_alias and id(node) in seen:
            in_alias = True
        seen.add(id(node))
        decode_count += 1
        if in_alias:
            alias_count += 1
        if (
            alias_count > 100
            and decode_count > 1000
            and alias_count / decode_count > _allowed_alias_ratio(decode_count)
        ):
            raise YamlBomb("yaml: document contains excessive aliasing")
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                children.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            children.extend(node.value)
        stack.extend((child, in_alias) for child in reversed(children))
    return alias_count


# libyaml's parser (C, refuses nesting deeper than 1000) when PyYAML was built with it; the pure-Python parser
# is quadratic in the nesting depth of flow collections, which a 3 MiB body of "[" would exploit.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Safe loader that records duplicate mapping keys (go-yaml: `line N: key "x" already set in map`)."""

    duplicates: list[str]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, str | int | float | bool):
                    continue
                if key in seen:
                    self.duplicates.append(f'line {key_node.start_mark.line + 1}: key "{key}" already set in map')
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# go-yaml keeps an unquoted timestamp (`2024-01-01`) as the string it is when decoding into JSON; PyYAML would
# build a datetime, which no string field accepts.
_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)


def loads_yaml(raw: bytes) -> tuple[Any, list[str]]:
    """Decodes one YAML document with go-yaml's alias bound; returns it and its duplicate-key messages."""
    loader = _Loader(raw)
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        aliased = check_aliases(node)
        value = loader.construct_document(node)
        if aliased:
            value = orjson.loads(orjson.dumps(value))  # aliases share Python objects: give each use its own copy
    except YamlBomb as exc:
        raise bad_request(f"error converting YAML to JSON: {exc}") from None
    except RecursionError:
        raise bad_request("error converting YAML to JSON: yaml: exceeded max depth") from None
    except yaml.YAMLError as exc:
        raise bad_request(f"error converting YAML to JSON: yaml: {exc}") from None
    finally:
        loader.dispose()
    dups = [f"yaml: unmarshal errors:\n  {d}" for d in loader.duplicates]
    return value, dups


# -- objects ---------------------------------------------------------------------------------------------------
@dataclass
class Decoded:
    obj: Obj
    warnings: list[str] = field(default_factory=list)


def _cannot_handle(kind: Kind, detail: str) -> ApiError:
    return bad_request(f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: {detail}')


def apply_field_validation(
    kind: Kind, obj: Obj, *, mode: str, duplicates: list[str], stored: Obj | None = None
) -> list[str]:
    """Drops unknown fields from `obj`; raises for Strict (or a type error); returns Warn's warnings.

    `stored` (patches) is the object the patch applied to: unknown fields it already carried (written before
    kwire validated fields) are dropped but not held against the patch, which did not send them.
    """
    found = fieldcheck.Findings()
    spec = fieldcheck.kind_schema(kind)
    if spec is not None:
        found = fieldcheck.check(spec[0], obj, types=spec[1], builtin=spec[1])
    if found.type_error:
        raise _cannot_handle(kind, found.type_error)
    unknown = found.unknown
    if unknown and stored is not None and spec is not None:
        inherited = set(fieldcheck.check(spec[0], copy.deepcopy(stored), types=False, builtin=spec[1]).unknown)
        unknown = [p for p in unknown if p not in inherited]
    problems = [*duplicates, *(f'unknown field "{p}"' for p in unknown)]
    if problems:
        log.debug("%s %s: %s (fieldValidation=%s)", kind.kind, (obj.get("metadata") or {}).get("name"), problems, mode)
    if not problems or mode == IGNORE:
        return []
    if mode == STRICT:
        raise _cannot_handle(kind, "strict decoding error: " + ", ".join(problems))
    return problems


def decode_object(raw: bytes, ctype: str, *, kind: Kind | None, mode: str) -> Decoded:
    """A create/update body as an object, with fieldValidation applied when `kind` is given."""
    dups: list[str] = []
    if ctype in (JSON, "*/*", ""):
        body, dups = loads_json(raw, duplicates=mode != IGNORE)
    elif ctype in (YAML, "application/x-yaml", "text/yaml"):
        body, dups = loads_yaml(raw)
    elif ctype == PROTOBUF:
        body = protobuf.decode(raw)
    else:
        raise unsupported_media_type()
    if not isinstance(body, dict):
        raise bad_request("the body of the request must be a JSON object")
    if kind is None:
        return Decoded(body)
    return Decoded(body, apply_field_validation(kind, body, mode=mode, duplicates=dups))


WARNINGS_TOTAL_RUNES = 4 * 1024  # k8s.io/apiserver's warning recorder: past this total, items are truncated
WARNING_ITEM_RUNES = 256


def bounded_warnings(warnings: list[str]) -> list[str]:
    """Deduplicated warnings, bounded as kube-apiserver bounds them: once the total passes 4 KiB each item is
    cut to 256 characters, and items that would still pass the total are dropped."""
    unique = list(dict.fromkeys(warnings))
    if sum(len(w) for w in unique) <= WARNINGS_TOTAL_RUNES:
        return unique
    out: list[str] = []
    total = 0
    for w in unique:
        w = w[:WARNING_ITEM_RUNES]
        if total + len(w) > WARNINGS_TOTAL_RUNES:
            break
        out.append(w)
        total += len(w)
    return out


def warning_header(message: str) -> str:
    """One RFC 7234 warning as kube-apiserver sends it: `299 - "text"`."""
    text = message.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'299 - "{text}"'
