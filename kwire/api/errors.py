"""API errors in Kubernetes' own form: `Status` objects with kube-apiserver's reasons and messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# FieldError types, with the text kube-apiserver prints before the detail (k8s.io/apimachinery field.ErrorType).
INVALID = "FieldValueInvalid"
REQUIRED = "FieldValueRequired"
DUPLICATE = "FieldValueDuplicate"
NOT_SUPPORTED = "FieldValueNotSupported"
FORBIDDEN = "FieldValueForbidden"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"

_TYPE_TEXT = {
    INVALID: "Invalid value",
    REQUIRED: "Required value",
    DUPLICATE: "Duplicate value",
    NOT_SUPPORTED: "Unsupported value",
    FORBIDDEN: "Forbidden",
    TOO_LONG: "Too long",
    TOO_MANY: "Too many",
}

_OMIT = object()


class RawValue(str):
    """A value printed verbatim in a field error (what Go's %#v gives for a slice, e.g. []string{"10.43.0.5"})."""


def _render_value(value: Any) -> str:
    # apimachinery prints strings quoted, numbers and bools bare.
    if isinstance(value, RawValue):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


@dataclass(frozen=True)
class FieldError:
    """One bad field: `field.Error` of apimachinery."""

    type: str
    field: str
    detail: str = ""
    value: Any = _OMIT
    supported: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """The cause message, e.g. `Invalid value: 0: must be between 1 and 65535, inclusive`."""
        text = _TYPE_TEXT.get(self.type, self.type)
        if self.type in (REQUIRED, FORBIDDEN, TOO_LONG, TOO_MANY) or self.value is _OMIT:
            out = text
        else:
            out = f"{text}: {_render_value(self.value)}"
        if self.type == NOT_SUPPORTED and self.supported:
            out += ": supported values: " + ", ".join(f'"{s}"' for s in self.supported)
        elif self.detail:
            out += f": {self.detail}"
        return out

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError(INVALID, field, detail, value)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError(REQUIRED, field, detail)


def not_supported(field: str, value: Any, supported: tuple[str, ...]) -> FieldError:
    return FieldError(NOT_SUPPORTED, field, "", value, supported)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError(FORBIDDEN, field, detail)


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError(DUPLICATE, field, "", value)


class ApiError(Exception):
    """An error answered as a `Status` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _resource_ref(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def object_error(code: int, reason: str, message: str, *, group: str, plural: str, name: str) -> ApiError:
    """An error about one object: its StatusDetails carry the name, group and resource (kube's errors.New*),
    each left out when empty (StatusDetails' fields are omitempty)."""
    details = {key: value for key, value in (("name", name), ("group", group), ("kind", plural)) if value}
    return ApiError(code, reason, message, details=details)


def not_found(group: str, plural: str, name: str) -> ApiError:
    ref = _resource_ref(group, plural)
    return object_error(404, "NotFound", f'{ref} "{name}" not found', group=group, plural=plural, name=name)


def already_exists(group: str, plural: str, name: str) -> ApiError:
    ref = _resource_ref(group, plural)
    return object_error(409, "AlreadyExists", f'{ref} "{name}" already exists', group=group, plural=plural, name=name)


# k8s.io/apiserver's registry OptimisticLockErrorMsg: a write that names an older resourceVersion.
OPTIMISTIC_LOCK = "the object has been modified; please apply your changes to the latest version and try again"


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {_resource_ref(group, plural)} "{name}": {why}'
    return object_error(409, "Conflict", message, group=group, plural=plural, name=name)


def invalid_object(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid, worded as kube-apiserver's `errors.NewInvalid`."""
    qualified = f"{kind}.{group}" if group else kind
    msgs = [str(e) for e in errors]
    if len(msgs) == 1:
        agg = msgs[0]
    else:
        agg = "[" + ", ".join(msgs) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {agg}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": e.type, "message": e.message, "field": e.field} for e in errors],
        },
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type})",
    )
