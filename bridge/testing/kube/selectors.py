"""Label and field selectors: parsing the query-string grammar and matching objects. Pure.

Follows apimachinery's `labels.Parse` and `fields.ParseSelector`:

- labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k` (exists), `!k` (does not
  exist), `k>1`, `k<1`; a comma means AND; `!=` and `notin` also match objects without the label;
- fields: `f=v`, `f==v`, `f!=v` joined by commas, with `\\,`, `\\=` and `\\\\` escapes; only
  the field names a resource supports (`metadata.name`, `metadata.namespace`, plus a few per
  resource) are accepted, as a real server does.

Parsing errors raise `SelectorError`; the HTTP layer answers them with 400 BadRequest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SPECIAL = "!=,()<>"


class SelectorError(ValueError):
    """The selector text does not parse; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """One AND-ed term of a label selector."""

    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        # gt/lt compare integers; a label that is not an integer never matches.
        if not present or value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.operator == "gt" else number < bound


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _validate_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        raise SelectorError(
            f'unable to parse requirement: key: Invalid value: "{key}": prefix part must be a '
            "lowercase RFC 1123 subdomain"
        )
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        raise SelectorError(
            f'unable to parse requirement: key: Invalid value: "{key}": name part must consist of '
            "alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
            "for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )


def _validate_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        raise SelectorError(
            f'unable to parse requirement: values[0]: Invalid value: "{value}": a valid label '
            "must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith(("!=", "=="), i):
            tokens.append(text[i : i + 2])
            i += 2
        elif ch in _SPECIAL:
            tokens.append(ch)
            i += 1
        else:
            start = i
            while i < len(text) and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            tokens.append(text[start:i])
    return tokens


def _is_identifier(token: str | None) -> bool:
    return token is not None and token not in ("!=", "==") and token not in _SPECIAL


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse `labelSelector` query text; an empty or missing selector matches everything."""
    tokens = _tokenize(text or "")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str | None:
        nonlocal pos
        token = peek()
        pos += 1
        return token

    requirements: list[Requirement] = []
    while pos < len(tokens):
        negated = False
        if peek() == "!":
            take()
            negated = True
        key = take()
        if not _is_identifier(key) or key in ("in", "notin"):
            raise SelectorError(f"unable to parse requirement: found '{key}', expected: identifier")
        assert key is not None
        _validate_key(key)
        nxt = peek()
        if negated or nxt in (None, ","):
            if negated and nxt not in (None, ","):
                raise SelectorError(f"unable to parse requirement: found '{nxt}', expected: ','")
            requirements.append(Requirement(key, "!" if negated else "exists"))
        else:
            op = take()
            if op in ("in", "notin"):
                if take() != "(":
                    raise SelectorError("unable to parse requirement: expected: '(' after set operator")
                values: list[str] = []
                while True:
                    token = take()
                    if token == ")" and not values:
                        raise SelectorError(
                            "unable to parse requirement: for 'in', 'notin' operators, values set can't be empty"
                        )
                    if token in (",", ")"):
                        # An empty element such as `in (a,)` stands for the empty value.
                        values.append("")
                    elif _is_identifier(token):
                        assert token is not None
                        values.append(token)
                        token = take()
                    else:
                        raise SelectorError(f"unable to parse requirement: found '{token}' in set")
                    if token == ")":
                        break
                    if token != ",":
                        raise SelectorError(f"unable to parse requirement: found '{token}', expected ','")
                for value in values:
                    _validate_value(value)
                requirements.append(Requirement(key, op, tuple(values)))
            elif op in ("=", "==", "!="):
                value = ""
                if _is_identifier(peek()):
                    value = take() or ""
                _validate_value(value)
                requirements.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in (">", "<"):
                bound = take()
                if bound is None or not re.fullmatch(r"-?\d+", bound):
                    raise SelectorError(
                        f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be "
                        f"an integer, found '{bound}'"
                    )
                requirements.append(Requirement(key, "gt" if op == ">" else "lt", (bound,)))
            else:
                raise SelectorError(
                    f"unable to parse requirement: found '{op}', expected: in, notin, =, ==, !=, gt, lt"
                )
        after = take()
        if after not in (None, ","):
            raise SelectorError(f"found '{after}', expected: ',' or 'end of string'")
        if after == "," and peek() is None:
            raise SelectorError("found 'end of string', expected: identifier")
    return LabelSelector(tuple(requirements))


def selector_from_map(match_labels: Mapping[str, str]) -> LabelSelector:
    """The selector a Service's `spec.selector` map stands for (every pair must match)."""
    return LabelSelector(tuple(Requirement(k, "=", (v,)) for k, v in sorted(match_labels.items())))


# --- field selectors ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldTerm:
    field: str
    operator: str  # "=" or "!="
    value: str


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[FieldTerm, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, fields: Mapping[str, str]) -> bool:
        for term in self.terms:
            equal = fields.get(term.field, "") == term.value
            if equal != (term.operator == "="):
                return False
        return True


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence in {value!r}")
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_field_selector(text: str | None, supported: frozenset[str] | None = None) -> FieldSelector:
    """Parse `fieldSelector` text; `supported` limits the field names as the resource does."""
    terms: list[FieldTerm] = []
    if not text:
        return FieldSelector()
    for raw in _split_unescaped(text, ","):
        if not raw:
            continue
        match = None
        i = 0
        while i < len(raw) and match is None:
            if raw[i] == "\\":
                i += 2
                continue
            for op in ("!=", "==", "="):
                if raw.startswith(op, i):
                    match = (i, op)
                    break
            i += 1
        if match is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{raw}'")
        index, op = match
        field = raw[:index].strip()
        value = _unescape(raw[index + len(op) :])
        if supported is not None and field not in supported:
            raise SelectorError(f"field label not supported: {field}")
        terms.append(FieldTerm(field, "!=" if op == "!=" else "=", value))
    return FieldSelector(tuple(terms))


_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_EXTRA_FIELDS: dict[str, frozenset[str]] = {
    "pods": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "namespaces": frozenset({"status.phase"}),
}


def supported_fields(resource: str) -> frozenset[str]:
    return _COMMON_FIELDS | _EXTRA_FIELDS.get(resource, frozenset())


def object_fields(resource: str, obj: Mapping[str, Any]) -> dict[str, str]:
    """The field-selector view of an object: field path -> string value."""
    meta = obj.get("metadata") or {}
    fields = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "")),
    }
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if resource == "pods":
        fields.update(
            {
                "spec.nodeName": str(spec.get("nodeName", "")),
                "spec.restartPolicy": str(spec.get("restartPolicy", "")),
                "spec.schedulerName": str(spec.get("schedulerName", "")),
                "spec.serviceAccountName": str(spec.get("serviceAccountName", "")),
                "spec.hostNetwork": "true" if spec.get("hostNetwork") else "false",
                "status.phase": str(status.get("phase", "")),
                "status.podIP": str(status.get("podIP", "")),
                "status.nominatedNodeName": str(status.get("nominatedNodeName", "")),
            }
        )
    elif resource == "namespaces":
        fields["status.phase"] = str(status.get("phase", ""))
    return fields
