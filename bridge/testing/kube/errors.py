"""Kubernetes `Status` failures, shaped and worded the way kube-apiserver writes them.

Clients branch on `code` and `reason` (client-go's `IsNotFound`, `IsConflict`, the Python
client's `ApiException.status`), and humans read `message`, so both follow apimachinery's
`errors.New*` constructors. Anything in the fake that refuses a request raises `StatusError`;
the HTTP layer turns it into the response, and watches wrap it in an ERROR event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.testing.kube.resources import ResourceType

JSON = dict[str, Any]


class StatusError(Exception):
    """A failed request: HTTP code, machine reason, human message and optional details."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: JSON | None = None,
        *,
        retry_after: int | None = None,
        list_meta: JSON | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after
        self.list_meta = list_meta

    def to_status(self) -> JSON:
        status: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.list_meta or {}),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            status["details"] = self.details
        status["code"] = self.code
        return status

    def __repr__(self) -> str:
        return f"StatusError({self.code}, {self.reason!r}, {self.message!r})"


def _details(rt: ResourceType | None, name: str, kind: str | None = None) -> JSON:
    details: JSON = {"name": name} if name else {}
    if rt is not None and rt.group:
        details["group"] = rt.group
    details["kind"] = kind if kind is not None else (rt.plural if rt else "")
    return details


def not_found(rt: ResourceType, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{rt.qualified_name} "{name}" not found', _details(rt, name))


def path_not_found() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(rt: ResourceType, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{rt.qualified_name} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str | None = None) -> StatusError:
    why = why or ("the object has been modified; please apply your changes to the latest version and try again")
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified_name} "{name}": {why}',
        _details(rt, name),
    )


def forbidden(rt: ResourceType, name: str, why: str) -> StatusError:
    return StatusError(403, "Forbidden", f'{rt.qualified_name} "{name}" is forbidden: {why}', _details(rt, name))


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed() -> StatusError:
    return StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})


def unsupported_media_type(content_type: str, accepted: list[str]) -> StatusError:
    return StatusError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}",
        {},
    )


def not_acceptable(accepted: list[str]) -> StatusError:
    return StatusError(
        406,
        "NotAcceptable",
        f"only the following media types are accepted: {', '.join(accepted)}",
        {},
    )


def expired(message: str, continue_token: str | None = None) -> StatusError:
    meta = {"continue": continue_token} if continue_token else None
    return StatusError(410, "Expired", message, list_meta=meta)


def too_old_resource_version(requested: int, oldest: int) -> StatusError:
    return expired(f"too old resource version: {requested} ({oldest})")


def too_large_resource_version(requested: int, current: int) -> StatusError:
    return StatusError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def too_many_requests(retry_after: int) -> StatusError:
    return StatusError(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
        {"retryAfterSeconds": retry_after},
        retry_after=retry_after,
    )


def service_unavailable(
    message: str = "the server is currently unable to handle the request", retry_after: int | None = None
) -> StatusError:
    details: JSON = {"retryAfterSeconds": retry_after} if retry_after else {}
    return StatusError(503, "ServiceUnavailable", message, details, retry_after=retry_after)


def internal_error(cause: str) -> StatusError:
    return StatusError(
        500,
        "InternalError",
        f"Internal error occurred: {cause}",
        {"causes": [{"message": cause}]},
    )


def injected(code: int, retry_after: int | None = None) -> StatusError:
    """The failure a fault-injection rule asks for, with the reason a real server would use."""
    if code == 429:
        return too_many_requests(retry_after or 1)
    if code == 503:
        return service_unavailable(retry_after=retry_after)
    if code == 500:
        return internal_error("injected failure")
    if code == 504:
        return StatusError(504, "Timeout", "Timeout: request did not complete within allowed duration", {})
    reasons = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        410: "Expired",
        422: "Invalid",
    }
    return StatusError(code, reasons.get(code, "Unknown"), f"injected failure ({code})", {}, retry_after=retry_after)


# --- field validation errors (apimachinery's field.Error) -------------------------------------


class GoSyntax(str):
    """A value already written as Go prints it (a struct's %#v): shown as is."""


def _go_repr(value: Any) -> str:
    """Render a value roughly as Go's %#v does in validation messages."""
    if isinstance(value, GoSyntax):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[]string{" + ", ".join(json.dumps(v) for v in value) + "}"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation failure on one field path, e.g. `metadata.name`."""

    type: str  # Invalid | Required | Forbidden | Duplicate | NotSupported | TooLong | TooMany
    field: str
    value: Any = None
    detail: str = ""

    @property
    def reason(self) -> str:
        return {
            "Invalid": "FieldValueInvalid",
            "Required": "FieldValueRequired",
            "Forbidden": "FieldValueForbidden",
            "Duplicate": "FieldValueDuplicate",
            "NotSupported": "FieldValueNotSupported",
            "TooLong": "FieldValueTooLong",
            "TooMany": "FieldValueTooMany",
        }[self.type]

    @property
    def body(self) -> str:
        """The message without the field path, as a cause's `message` carries it."""
        if self.type == "Invalid":
            text = f"Invalid value: {_go_repr(self.value)}"
        elif self.type == "Required":
            text = "Required value"
        elif self.type == "Forbidden":
            text = "Forbidden"
        elif self.type == "Duplicate":
            text = f"Duplicate value: {_go_repr(self.value)}"
        elif self.type == "TooLong":
            text = "Too long"  # the value may be huge: upstream leaves it out
        elif self.type == "TooMany":
            text = f"Too many: {_go_repr(self.value)}"
        else:
            text = f"Unsupported value: {_go_repr(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


def invalid(rt: ResourceType, name: str, errors: list[FieldError]) -> StatusError:
    """apierrors.NewInvalid: every error a cause; the message lists them once each (the
    aggregate drops repeats) after the group-qualified kind, `EndpointSlice.discovery.k8s.io`."""
    lines = list(dict.fromkeys(map(str, errors)))
    listed = lines[0] if len(lines) == 1 else "[" + ", ".join(lines) + "]"
    details: JSON = _details(rt, name, kind=rt.kind)
    details["causes"] = [{"reason": e.reason, "message": e.body, "field": e.field} for e in errors]
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    return StatusError(422, "Invalid", f'{kind} "{name}" is invalid: {listed}', details)
