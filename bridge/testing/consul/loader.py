"""Preloading the catalog from a YAML/JSON file or a list of catalog register bodies.

Each item is exactly what a client would PUT to /v1/catalog/register (keys matched
case-insensitively), and goes through the same decoding, validation and state path,
so a preloaded catalog is indistinguishable from one built over HTTP. Everything is
validated before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from bridge.testing.consul.acl import ALLOW_ALL
from bridge.testing.consul.api_catalog import prepare_registration, vet_register
from bridge.testing.consul.context import Api
from bridge.testing.consul.decode import REGISTER_REQUEST, DecodeError, decode_value, from_plain
from bridge.testing.consul.errors import ApplyError, HTTPError

Source = str | Path | Iterable[Mapping[str, Any]]


def read_source(source: Source) -> list[Mapping[str, Any]]:
    """The list of register bodies in `source` (a path to YAML/JSON, or the list itself)."""
    if isinstance(source, str | Path):
        text = Path(source).read_text(encoding="utf-8")
        where = str(source)
        try:
            items = json.loads(text)
        except ValueError:
            # Not JSON: read it as YAML (PyYAML is YAML 1.1, which misses a few JSON escapes).
            items = yaml.safe_load(text)
    else:
        items = list(source)
        where = "registrations"
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise ValueError(f"{where}: expected a list of catalog register bodies (mappings)")
    return items


def load_registrations(api: Api, source: Source) -> int:
    """Register every item; returns how many. Raises ValueError naming the bad item."""
    items = read_source(source)
    prepared = []
    for position, item in enumerate(items):
        try:
            body = decode_value(from_plain(item), REGISTER_REQUEST)
            prepared.append(prepare_registration(api, body, ALLOW_ALL))
        except DecodeError as exc:
            raise ValueError(f"registration #{position}: Request decode failed: {exc}") from None
        except HTTPError as exc:
            raise ValueError(f"registration #{position}: {exc.body}") from None
    for position, registration in enumerate(prepared):
        try:
            with api.store.lock:
                vet_register(api.store.tables, ALLOW_ALL, registration)
            with api.store.write() as txn:
                api.catalog.ensure_registration(txn, registration)
        except HTTPError as exc:
            raise ValueError(f"registration #{position}: {exc.body}") from None
        except ApplyError as exc:
            raise ValueError(f"registration #{position}: {exc}") from None
    return len(prepared)
