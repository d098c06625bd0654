"""A subset of go-bexpr, Consul's `?filter=` language, evaluated over rendered JSON objects.

Supported: `==`, `!=`, `in`, `not in`, `contains`, `not contains`, `matches`,
`not matches`, `is empty`, `is not empty`, `and`, `or`, `not`, parentheses, dotted
selectors and `Map["key"]` / `Map.key` indexing, with quoted, backquoted, numeric,
boolean or bare values. Selectors are checked against the struct's field names, as
bexpr checks them against the Go type; errors come back the way Consul reports them
(500, `Failed to create boolean expression evaluator: ...`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge.testing.consul.errors import server_error

NODE_FIELDS = frozenset({"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"})
SERVICE_NODE_FIELDS = frozenset(
    {
        "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceKind", "ServiceID",
        "ServiceName", "ServiceTags", "ServiceAddress", "ServiceTaggedAddresses", "ServiceWeights",
        "ServiceMeta", "ServicePort", "ServiceSocketPath", "ServiceEnableTagOverride", "ServiceProxy",
        "ServiceConnect",
    }
)  # fmt: skip
NODE_SERVICE_FIELDS = frozenset(
    {
        "Kind", "ID", "Service", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "SocketPath",
        "Weights", "EnableTagOverride", "Proxy", "Connect", "PeerName", "Datacenter",
    }
)  # fmt: skip
HEALTH_CHECK_FIELDS = frozenset(
    {
        "Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags",
        "Type", "Interval", "Timeout", "ExposedPort",
    }
)  # fmt: skip
SERVICE_ENTRY_FIELDS = frozenset({"Node", "Service", "Checks"})

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<op>==|!=|\(|\)|\[|\]|\.)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_\-/:]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "contains", "matches", "is", "empty"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    value: Any = None


class FilterError(Exception):
    pass


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise FilterError(f"1:{pos + 1} ({pos}): no match found, unexpected {text[pos : pos + 1]!r}")
        pos = match.end()
        if match.group("string"):
            tokens.append(_Tok("value", match.group("string"), _unquote(match.group("string"))))
        elif match.group("raw"):
            tokens.append(_Tok("value", match.group("raw"), match.group("raw")[1:-1]))
        elif match.group("op"):
            tokens.append(_Tok("op", match.group("op")))
        elif match.group("number"):
            tokens.append(_Tok("value", match.group("number"), match.group("number")))
        else:
            word = match.group("word")
            tokens.append(_Tok("kw" if word in _KEYWORDS else "word", word, word))
    return tokens


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


Predicate = Callable[[Any], bool]


class _Parser:
    def __init__(self, tokens: list[_Tok], roots: frozenset[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.roots = roots

    def peek(self, offset: int = 0) -> _Tok | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of expression")
        self.pos += 1
        return tok

    def accept(self, kind: str, text: str | None = None) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == kind and (text is None or tok.text == text):
            self.pos += 1
            return True
        return False

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek().text!r}")  # type: ignore[union-attr]
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.accept("kw", "or"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda obj: any(p(obj) for p in parts))

    def and_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.accept("kw", "and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda obj: all(p(obj) for p in parts))

    def unary(self) -> Predicate:
        if self.accept("kw", "not"):
            inner = self.unary()
            return lambda obj: not inner(obj)
        if self.accept("op", "("):
            inner = self.or_expr()
            if not self.accept("op", ")"):
                raise FilterError("missing closing parenthesis")
            return inner
        return self.match()

    def match(self) -> Predicate:
        tok = self.peek()
        if tok is not None and tok.kind == "value":
            value = self.take().value
            negate = self.accept("kw", "not")
            if not self.accept("kw", "in"):
                raise FilterError(f"expected 'in' after value {tok.text}")
            selector = self.selector()
            return _negated(lambda obj: _contains(_select(obj, selector), value), negate)
        selector = self.selector()
        if self.accept("op", "=="):
            value = self.value()
            return lambda obj: _equals(_select(obj, selector), value)
        if self.accept("op", "!="):
            value = self.value()
            return lambda obj: not _equals(_select(obj, selector), value)
        if self.accept("kw", "is"):
            negate = self.accept("kw", "not")
            if not self.accept("kw", "empty"):
                raise FilterError("expected 'empty'")
            return _negated(lambda obj: _is_empty(_select(obj, selector)), negate)
        negate = self.accept("kw", "not")
        if self.accept("kw", "contains"):
            value = self.value()
            return _negated(lambda obj: _contains(_select(obj, selector), value), negate)
        if self.accept("kw", "matches"):
            pattern = re.compile(str(self.value()))
            return _negated(lambda obj: _matches(_select(obj, selector), pattern), negate)
        raise FilterError(f"no operator after selector {'.'.join(selector)!r}")

    def selector(self) -> list[str]:
        tok = self.take()
        if tok.kind != "word":
            raise FilterError(f"expected a selector, got {tok.text!r}")
        if tok.text not in self.roots:
            raise FilterError(f'Selector "{tok.text}" is not valid')
        path = [tok.text]
        while True:
            if self.accept("op", "."):
                path.append(self.take().text)
            elif self.accept("op", "["):
                key = self.take()
                path.append(str(key.value))
                if not self.accept("op", "]"):
                    raise FilterError("missing ']'")
            else:
                return path

    def value(self) -> Any:
        tok = self.take()
        if tok.kind not in ("value", "word"):
            raise FilterError(f"expected a value, got {tok.text!r}")
        return tok.value


def _negated(pred: Predicate, negate: bool) -> Predicate:
    return (lambda obj: not pred(obj)) if negate else pred


def _select(obj: Any, path: Iterable[str]) -> Any:
    current = obj
    for part in path:
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list):
            current = [item.get(part) for item in current if isinstance(item, dict)]
        else:
            return None
    return current


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def _equals(actual: Any, expected: Any) -> bool:
    if isinstance(actual, list):
        return any(_scalar_text(item) == str(expected) for item in actual)
    return _scalar_text(actual) == str(expected)


def _contains(container: Any, value: Any) -> bool:
    if isinstance(container, dict):
        return str(value) in container
    if isinstance(container, list):
        return any(_scalar_text(item) == str(value) for item in container)
    if isinstance(container, str):
        return str(value) in container
    return False


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _matches(value: Any, pattern: re.Pattern[str]) -> bool:
    if isinstance(value, list):
        return any(pattern.search(_scalar_text(item)) for item in value)
    return bool(pattern.search(_scalar_text(value)))


def compile_filter(expression: str, roots: frozenset[str]) -> Predicate | None:
    """Compile `?filter=`; None for an empty filter. Raises Consul's 500 on bad input."""
    if not expression:
        return None
    try:
        return _Parser(_tokenize(expression), roots).parse()
    except (FilterError, re.error) as exc:
        raise server_error(f"Failed to create boolean expression evaluator: {exc}") from None
