"""Create/update rules for ConfigMaps, Secrets and ServiceAccounts. Pure.

The counterparts of `pkg/apis/core/validation` (`ValidateConfigMap`, `ValidateSecret`,
`ValidateServiceAccount`) and of the v1 conversion that folds a Secret's write-only
`stringData` into `data`. The bridge reads none of these kinds; they are here so a deploy/
kustomization applies as it would to a cluster, with the same refusals.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from bridge.testing.kube import errors
from bridge.testing.kube.errors import FieldError

JSON = dict[str, Any]

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CONFIG_KEY_MSG = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
    "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)
_IMMUTABLE_MSG = "field is immutable when `immutable` is set"
_SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"


def config_key_errors(key: str, field: str) -> list[FieldError]:
    """validation.IsConfigMapKey, which ConfigMap and Secret keys share."""
    found = []
    if len(key) > 253:
        found.append(FieldError("Invalid", field, key, "must be no more than 253 characters"))
    if not _CONFIG_KEY.match(key):
        found.append(FieldError("Invalid", field, key, _CONFIG_KEY_MSG))
    if key in (".", ".."):
        found.append(FieldError("Invalid", field, key, f"must not be '{key}'"))
    elif key.startswith(".."):
        found.append(FieldError("Invalid", field, key, "must not start with '..'"))
    return found


def _undecodable(kind: str, detail: str) -> errors.StatusError:
    return errors.bad_request(f'{kind} in version "v1" cannot be handled as a {kind}: {detail}')


def _string_map(obj: JSON, kind: str, key: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _undecodable(kind, f"json: cannot unmarshal {type(value).__name__} into Go struct field {kind}.{key}")
    for item in value.values():
        if not isinstance(item, str):
            raise _undecodable(
                kind,
                f"json: cannot unmarshal {type(item).__name__} into Go struct field {kind}.{key} of type string",
            )
    return value


def _immutable_errors(obj: JSON, old: JSON | None, fields: tuple[str, ...]) -> list[FieldError]:
    if old is None or not old.get("immutable"):
        return []
    found = [FieldError("Forbidden", f, None, _IMMUTABLE_MSG) for f in fields if obj.get(f) != old.get(f)]
    if not obj.get("immutable"):
        found.append(FieldError("Forbidden", "immutable", None, _IMMUTABLE_MSG))
    return found


# --- ConfigMap ---------------------------------------------------------------------------


def default_config_map(obj: JSON) -> None:
    _string_map(obj, "ConfigMap", "data")
    _string_map(obj, "ConfigMap", "binaryData")


def validate_config_map(obj: JSON, old: JSON | None) -> list[FieldError]:
    found: list[FieldError] = []
    data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
    for key in data:
        found += config_key_errors(key, f"data[{key}]")
    for key in binary:
        found += config_key_errors(key, f"binaryData[{key}]")
        if key in data:
            found.append(FieldError("Invalid", f"data[{key}]", key, "duplicate of key present in binaryData"))
    return found + _immutable_errors(obj, old, ("data", "binaryData"))


# --- Secret ------------------------------------------------------------------------------


def default_secret(obj: JSON) -> None:
    """v1 conversion and defaulting: `stringData` overwrites `data` keys, then is dropped."""
    data = _string_map(obj, "Secret", "data")
    for value in data.values():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            position = next((i for i, c in enumerate(value) if not (c.isalnum() or c in "+/=")), len(value))
            raise _undecodable("Secret", f"illegal base64 data at input byte {position}") from None
    string_data = _string_map(obj, "Secret", "stringData")
    if string_data:
        merged = dict(data)
        merged.update({k: base64.b64encode(v.encode()).decode() for k, v in string_data.items()})
        obj["data"] = merged
    obj.pop("stringData", None)
    if not obj.get("type"):
        obj["type"] = "Opaque"


def validate_secret(obj: JSON, old: JSON | None) -> list[FieldError]:
    found: list[FieldError] = []
    data = obj.get("data") or {}
    for key in data:
        found += config_key_errors(key, f"data[{key}]")
    kind = obj.get("type")
    if kind == "kubernetes.io/service-account-token":
        if not ((obj.get("metadata") or {}).get("annotations") or {}).get(_SA_NAME_ANNOTATION):
            found.append(FieldError("Required", f"metadata.annotations[{_SA_NAME_ANNOTATION}]"))
    elif kind == "kubernetes.io/dockerconfigjson" and ".dockerconfigjson" not in data:
        found.append(FieldError("Required", "data[.dockerconfigjson]"))
    elif kind == "kubernetes.io/tls":
        found += [FieldError("Required", f"data[{k}]") for k in ("tls.crt", "tls.key") if k not in data]
    if old is not None and old.get("type") != kind:
        found.append(FieldError("Invalid", "type", kind, "field is immutable"))
    return found + _immutable_errors(obj, old, ("data",))


# --- ServiceAccount -------------------------------------------------------------------------


def validate_service_account(obj: JSON, old: JSON | None) -> list[FieldError]:
    found: list[FieldError] = []
    for i, ref in enumerate(obj.get("secrets") or []):
        if not isinstance(ref, dict):
            found.append(FieldError("Invalid", f"secrets[{i}]", ref, "must be an object"))
    automount = obj.get("automountServiceAccountToken")
    if automount is not None and not isinstance(automount, bool):
        raise _undecodable("ServiceAccount", "json: cannot unmarshal into Go struct field of type bool")
    return found
