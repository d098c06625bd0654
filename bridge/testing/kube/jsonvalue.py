"""Helpers for plain JSON values (dict/list/str/int/float/bool/None), the fake's only data shape.

`clone` replaces `copy.deepcopy`: every object the store hands out or keeps is a JSON tree,
and a copy that knows it needs no memo or type dispatch is several times faster, which
matters when a controller rewrites 100-endpoint slices on every pod change.

`load_yaml`/`load_yaml_all` read YAML the way kubectl converts it to JSON: PyYAML's safe
loader would turn an unquoted `renewTime: 2026-01-01T00:00:00Z` into a datetime, which is
neither what the API stores nor JSON-serializable.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml

JSON = dict[str, Any]
T = TypeVar("T")


def clone(value: T) -> T:
    """A deep copy of a JSON value."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [clone(v) for v in value]  # type: ignore[return-value]
    return value


class _JSONishLoader(yaml.SafeLoader):
    """SafeLoader without the timestamp resolver: RFC 3339 values stay strings, as JSON has them."""


_JSONishLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """One YAML document as JSON values (timestamps are not turned into datetimes)."""
    return yaml.load(text, Loader=_JSONishLoader)  # a SafeLoader subclass: plain data only


def load_yaml_all(text: str) -> list[Any]:
    """All documents of a multi-document YAML text, as JSON values."""
    return list(yaml.load_all(text, Loader=_JSONishLoader))  # a SafeLoader subclass: plain data only
