"""apimachinery's string formats and the object-metadata rules built on them. Pure.

Ports of `k8s.io/apimachinery/pkg/util/validation` and `.../api/validate/content`
(`IsDNS1123Label`, `IsDNS1123Subdomain`, `IsDNS1035Label`, `IsLabelKey` alias
`IsQualifiedName`, `IsLabelValue`, `IsValidPortName`, `IsValidPortNum`,
`IsFullyQualifiedDomainName`) and of `ValidateObjectMeta`'s label and annotation checks
(`metav1validation.ValidateLabels`, `apimachinery/pkg/api/validation.ValidateAnnotations`).
Each check returns the messages upstream returns, in its order, so Status bodies read as a
real server's do. Go measures strings in bytes: so do these. Go's regexps are anchored
with `^...$` and have no trailing-newline escape, hence `fullmatch`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from bridge.testing.kube.errors import FieldError

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
DNS1035_LABEL_MAX = 63
LABEL_VALUE_MAX = 63
TOTAL_ANNOTATION_SIZE = 256 * (1 << 10)  # TotalAnnotationSizeLimitB

_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _LABEL_KEY_FMT + ")?"

_DNS1123_LABEL = re.compile(_DNS1123_LABEL_FMT)
_DNS1123_SUBDOMAIN = re.compile(_DNS1123_SUBDOMAIN_FMT)
_DNS1035_LABEL = re.compile(_DNS1035_LABEL_FMT)
_LABEL_KEY = re.compile(_LABEL_KEY_FMT)
_LABEL_VALUE = re.compile(_LABEL_VALUE_FMT)
_PORT_NAME_CHARSET = re.compile("[-a-z0-9]+")
_ONE_LETTER = re.compile("[a-z]")


def regex_error(message: str, fmt: str, *examples: str) -> str:
    """content.RegexError: the rule, examples, and the regex itself."""
    shown = ",  or ".join(f"'{e}'" for e in examples)
    return f"{message} (e.g. {shown}, regex used for validation is '{fmt}')"


def max_len_error(limit: int) -> str:
    return f"must be no more than {limit} characters"


def _size(value: str) -> int:
    return len(value.encode())


DNS1123_LABEL_MSG = regex_error(
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character", _DNS1123_LABEL_FMT, "my-name", "123-abc")
DNS1123_SUBDOMAIN_MSG = regex_error(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character", _DNS1123_SUBDOMAIN_FMT, "example.com")
DNS1035_LABEL_MSG = regex_error(
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character", _DNS1035_LABEL_FMT, "my-name", "abc-123")
LABEL_KEY_MSG = regex_error(
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character", _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
LABEL_VALUE_MSG = regex_error(
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character", _LABEL_VALUE_FMT, "MyValue", "my_value", "12345")


def dns1123_label(value: str) -> list[str]:
    """IsDNS1123Label (a valid subdomain that is no label can only hold dots)."""
    found = [max_len_error(DNS1123_LABEL_MAX)] if _size(value) > DNS1123_LABEL_MAX else []
    if not _DNS1123_LABEL.fullmatch(value):
        found.append("must not contain dots" if _DNS1123_SUBDOMAIN.fullmatch(value) else DNS1123_LABEL_MSG)
    return found


def _pattern(value: str, limit: int, pattern: re.Pattern[str], message: str) -> list[str]:
    found = [max_len_error(limit)] if _size(value) > limit else []
    return found if pattern.fullmatch(value) else [*found, message]


def dns1123_subdomain(value: str) -> list[str]:
    """IsDNS1123Subdomain."""
    return _pattern(value, DNS1123_SUBDOMAIN_MAX, _DNS1123_SUBDOMAIN, DNS1123_SUBDOMAIN_MSG)


def dns1035_label(value: str) -> list[str]:
    """IsDNS1035Label: what a Service name must be (it must start with a letter)."""
    return _pattern(value, DNS1035_LABEL_MAX, _DNS1035_LABEL, DNS1035_LABEL_MSG)


def label_key(value: str) -> list[str]:
    """content.IsLabelKey (alias IsQualifiedName): `[prefix/]name`, the prefix a DNS subdomain."""
    parts = value.split("/")
    found: list[str] = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            found.append("prefix part must be non-empty")
        else:
            found += ["prefix part " + msg for msg in dns1123_subdomain(prefix)]
    else:
        return ["a valid label key " + LABEL_KEY_MSG
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        found.append("name part must be non-empty")
    elif _size(name) > LABEL_VALUE_MAX:
        found.append("name part " + max_len_error(LABEL_VALUE_MAX))
    if not _LABEL_KEY.fullmatch(name):
        found.append("name part " + LABEL_KEY_MSG)
    return found


def label_value(value: str) -> list[str]:
    """content.IsLabelValue: empty, or at most 63 characters of the label alphabet."""
    return _pattern(value, LABEL_VALUE_MAX, _LABEL_VALUE, LABEL_VALUE_MSG)


def port_name(value: str) -> list[str]:
    """IsValidPortName (IANA_SVC_NAME): what a named targetPort or containerPort name must be."""
    found = [max_len_error(15)] if _size(value) > 15 else []
    if not _PORT_NAME_CHARSET.fullmatch(value):
        found.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _ONE_LETTER.search(value):
        found.append("must contain at least one letter (a-z)")
    if "--" in value:
        found.append("must not contain consecutive hyphens")
    if value and (value[0] == "-" or value[-1] == "-"):
        found.append("must not begin or end with a hyphen")
    return found


def port_number(value: int) -> list[str]:
    """IsValidPortNum."""
    return [] if 1 <= value <= 65535 else ["must be between 1 and 65535, inclusive"]


def invalid(field: str, value: Any, messages: list[str]) -> list[FieldError]:
    """One `Invalid` error per message, as `for _, msg := range ... field.Invalid(...)` builds."""
    return [FieldError("Invalid", field, value, msg) for msg in messages]


def check(rule: Callable[[str], list[str]], value: Any, field: str) -> list[FieldError]:
    """`rule` applied to a string field; a value of another JSON type never decodes into one."""
    if not isinstance(value, str):
        return [FieldError("Invalid", field, value, "must be a string")]
    return invalid(field, value, rule(value))


def fqdn(value: str, field: str) -> list[FieldError]:
    """IsFullyQualifiedDomainName: a subdomain of at least two labels, a final '.' allowed."""
    if not value:
        return [FieldError("Required", field)]
    name = value[:-1] if value.endswith(".") else value
    found = dns1123_subdomain(name)
    if found:
        return [FieldError("Invalid", field, name, ",".join(found))]
    labels = name.split(".")
    if len(labels) < 2:
        return [FieldError("Invalid", field, name, "should be a domain with at least two segments separated by dots")]
    for label in labels:
        found = dns1123_label(label)
        if found:
            return [FieldError("Invalid", field, label, ",".join(found))]
    return []


def labels_errors(labels: Any, field: str) -> list[FieldError]:
    """metav1validation.ValidateLabels: every key a label key, every value a label value.
    Go walks the map in random order; sorted here, so the order is at least stable."""
    if not isinstance(labels, dict):
        return [FieldError("Invalid", field, labels, "must be a map")]
    found: list[FieldError] = []
    for key, value in sorted(labels.items()):
        found += invalid(field, key, label_key(str(key)))
        found += check(label_value, value, field)
    return found


def annotations_errors(annotations: Any, field: str) -> list[FieldError]:
    """ValidateAnnotations: keys are label keys in any case; keys and values together at most
    256 KiB (a `TooLong` error that, as upstream, does not repeat the value)."""
    if not isinstance(annotations, dict):
        return [FieldError("Invalid", field, annotations, "must be a map")]
    found: list[FieldError] = []
    for key in sorted(annotations):
        found += invalid(field, key, label_key(str(key).lower()))
    size = 0
    for key, value in annotations.items():
        if not isinstance(value, str):
            found.append(FieldError("Invalid", field, value, "must be a string"))
            continue
        size += _size(str(key)) + _size(value)
    if size > TOTAL_ANNOTATION_SIZE:
        found.append(FieldError("TooLong", field, None, f"must have at most {TOTAL_ANNOTATION_SIZE} bytes"))
    return found
