"""Go-compatible scalar formats used on Consul's wire: durations, bools, uints, quoting, JSON.

Consul is written in Go, so its parameters are parsed with `time.ParseDuration`,
`strconv.ParseBool` and `strconv.ParseUint`, its error texts use `%q`, and its bodies
are produced by `encoding/json`. Reproducing those exactly here keeps the fake's
accepted inputs and emitted bytes the same as a real agent's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote_plus

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS: dict[str, int] = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign
    "\u03bcs": MICROSECOND,  # Greek mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_MAX_INT64 = (1 << 63) - 1


class GoParseError(ValueError):
    """A value Go's parser would reject; the message is Go's own error text."""


def parse_duration(text: str) -> int:
    """Parse a Go duration string into nanoseconds; a line-by-line port of `time.ParseDuration`."""
    quoted = go_quote(text)
    invalid = GoParseError(f"time: invalid duration {quoted}")
    rest = text
    negative = False
    if rest and rest[0] in "+-":
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        if not (rest[0] == "." or "0" <= rest[0] <= "9"):
            raise invalid
        match = re.match(r"([0-9]*)(?:\.([0-9]*))?", rest)
        assert match is not None
        whole, frac = match.group(1), match.group(2)
        if not whole and not frac:
            raise invalid
        rest = rest[match.end() :]
        end = 0
        while end < len(rest) and not (rest[end] == "." or "0" <= rest[end] <= "9"):
            end += 1
        if end == 0:
            raise GoParseError(f"time: missing unit in duration {quoted}")
        unit_name, rest = rest[:end], rest[end:]
        if unit_name not in _UNITS:
            raise GoParseError(f"time: unknown unit {go_quote(unit_name)} in duration {quoted}")
        unit = _UNITS[unit_name]
        value = int(whole or "0")
        if value > _MAX_INT64 // unit:
            raise invalid
        value *= unit
        if frac:
            value += int(int(frac) * (unit / 10 ** len(frac)))
        total += value
        if total > _MAX_INT64:
            raise invalid
    return -total if negative else total


def format_duration(ns: int) -> str:
    """Render nanoseconds the way Go's `time.Duration.String` does ("1m30s", "250ms", "0s")."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < SECOND:
        for unit, size in (("ms", MILLISECOND), ("\u00b5s", MICROSECOND), ("ns", NANOSECOND)):
            if ns >= size:
                return sign + _trim_fraction(ns, size) + unit
    hours, rest = divmod(ns, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + _trim_fraction(rest, SECOND) + "s"


def _trim_fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"


def parse_bool(text: str) -> bool:
    """`strconv.ParseBool`: the only spellings Go accepts."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise GoParseError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def parse_uint(text: str) -> int:
    """`strconv.ParseUint(text, 10, 64)`: digits only, no sign, at most 2**64-1."""
    if not text or not text.isascii() or not text.isdigit():
        raise GoParseError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if value >= 1 << 64:
        raise GoParseError(f"strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


def go_quote(text: str) -> str:
    """Approximate Go's `%q` (a double-quoted, backslash-escaped string)."""
    return json.dumps(text, ensure_ascii=False)


def go_values_encode(params: Mapping[str, Iterable[str]]) -> str:
    """`url.Values.Encode`: keys sorted, values in order, query-escaped."""
    parts = []
    for key in sorted(params):
        for value in params[key]:
            parts.append(f"{quote_plus(key)}={quote_plus(value)}")
    return "&".join(parts)


def dumps(obj: Any, *, pretty: bool = False) -> bytes:
    """Serialise like Go's `json.Marshal`: compact, UTF-8, HTML-escaped, key order kept.

    Callers build objects with struct fields in Go declaration order and map keys
    already sorted (Go sorts map keys), so no re-sorting happens here.
    """
    if pretty:
        text = json.dumps(obj, ensure_ascii=False, indent=4) + "\n"
    else:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    # encoding/json escapes these by default so the output is safe inside HTML.
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return text.encode("utf-8")


def sorted_map(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy with keys in Go's map-marshalling order (sorted), or None for a nil map."""
    if value is None:
        return None
    return {key: value[key] for key in sorted(value)}
