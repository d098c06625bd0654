"""Consul's ACL rule language: parsing a policy's `Rules` (HCL or JSON) and merging policies.

    service_prefix "" { policy = "read" }
    node "k8s-sync-east" { policy = "write" }
    key_prefix "bridge/clusters/" { policy = "read" }
    operator = "read"

HCL is parsed with python-hcl2; a `Rules` text starting with `{` is JSON, as Consul accepts
both. The result, `Rules`, maps a rule block to `{name or prefix: level}`; the one-level
resources (`acl`, `operator`, `keyring`, `mesh`, `peering`) are stored under the name "".
Levels are deny, read, list (keys only) and write. Where two rules (in one policy or in the
several policies of a token) name the same block and name, deny wins, then write, list, read
(Consul's `takesPrecedenceOver`). Error texts are Consul's (`acl/policy.go`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import hcl2

Rules = dict[str, dict[str, str]]

# Rule blocks with a name (each also as <block>_prefix), and the one-level resources.
NAMED = ("agent", "event", "key", "node", "query", "service", "session")
SCALAR = ("acl", "keyring", "mesh", "operator", "peering")
LEVELS = {"deny": 0, "read": 1, "list": 2, "write": 3}
_PRECEDENCE = ("deny", "write", "list", "read")

_HCL_OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


class RulesError(ValueError):
    """A policy's rules do not parse or name an invalid level; the text is Consul's."""


def parse_rules(text: str) -> Rules:
    """The rules of one policy, merged; raises RulesError with Consul's message."""
    if not text.strip():
        return {}
    try:
        if text.lstrip().startswith("{"):
            raw = json.loads(text)
        else:
            raw = hcl2.loads(text, serialization_options=_HCL_OPTIONS)
    except Exception as exc:  # lark and json raise many kinds; Consul reports them all alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RulesError(f"Failed to parse ACL rules: {first}") from None
    if not isinstance(raw, dict):
        raise RulesError("Failed to parse ACL rules: the rules are not an object")
    rules: Rules = {}
    for block, value in raw.items():
        for name, level in _entries(block, value):
            _check(block, name, level)
            merge_rule(rules, block, name, level)
    return rules


def validate(rules: Mapping[str, Mapping[str, str]]) -> Rules:
    """Rules given as a mapping (the test hooks' format), checked; a copy."""
    out: Rules = {}
    for block, names in rules.items():
        if block in SCALAR and isinstance(names, str):
            names = {"": names}
        for name, level in names.items():
            _check(block, name, level)
            merge_rule(out, block, name, level)
    return out


def merge(all_rules: Iterable[Mapping[str, Mapping[str, str]]]) -> Rules:
    """Several policies' rules as one, as Consul merges a token's policies."""
    out: Rules = {}
    for rules in all_rules:
        for block, names in rules.items():
            for name, level in names.items():
                merge_rule(out, block, name, level)
    return out


def merge_rule(rules: Rules, block: str, name: str, level: str) -> None:
    held = rules.setdefault(block, {})
    current = held.get(name)
    if current is None or _PRECEDENCE.index(level) < _PRECEDENCE.index(current):
        held[name] = level


def _entries(block: str, value: Any) -> list[tuple[str, str]]:
    if block in SCALAR:
        if not isinstance(value, str):
            raise RulesError(f"Failed to parse ACL rules: {block} must be a string")
        return [("", value)]
    if block.removesuffix("_prefix") not in NAMED:
        raise RulesError(f"Failed to parse ACL rules: invalid key {block!r}")
    items = value if isinstance(value, list) else [value]
    found = []
    for item in items:
        if not isinstance(item, dict):
            raise RulesError(f"Failed to parse ACL rules: {block} must be a block")
        for name, body in item.items():
            if not isinstance(body, dict) or not isinstance(body.get("policy", ""), str):
                raise RulesError(f"Failed to parse ACL rules: {block} {name!r} must be a block with policy")
            unknown = set(body) - {"policy", "intentions"}
            if unknown:
                raise RulesError(f"Failed to parse ACL rules: invalid key {sorted(unknown)[0]!r} in {block}")
            found.append((str(name), str(body.get("policy", ""))))
    return found


def _check(block: str, name: str, level: Any) -> None:
    resource = block.removesuffix("_prefix")
    if block not in SCALAR and resource not in NAMED:
        raise RulesError(f"Failed to parse ACL rules: invalid key {block!r}")
    if block in SCALAR and name != "":
        raise RulesError(f"Failed to parse ACL rules: {block} takes no name")
    if level not in LEVELS or (level == "list" and resource != "key"):
        # Consul prints the rule with %#v; the block, name and level say the same.
        raise RulesError(f"Invalid {block} policy: {name!r} = {level!r}")
