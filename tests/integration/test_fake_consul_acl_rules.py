"""Consul's ACL rule language as the fake parses it (bridge/testing/consul/acl_rules.py).

HCL as Consul's documentation writes policies, the same rules as JSON, several rules for one
name merged as Consul's `takesPrecedenceOver` merges them (deny, then write, list, read), and
Consul's errors for what it refuses (acl/policy.go: `Invalid <block> policy`, `list` for keys
only; `Failed to parse ACL rules`).
"""

from __future__ import annotations

import json

import pytest

from bridge.testing.consul.acl_rules import RulesError, merge, parse_rules

CONSUL_DOCS_EXAMPLE = """
# comments are allowed
service_prefix "" {
  policy = "read"
}
service "web" { policy = "write" }
node "k8s-sync-east" {
  policy = "write"
}
node_prefix "" { policy = "read" }
key_prefix "bridge/clusters/" { policy = "list" }
session_prefix "" { policy = "write" }
agent_prefix "" { policy = "read" }
operator = "read"
acl = "write"
"""

PARSED = {
    "service_prefix": {"": "read"},
    "service": {"web": "write"},
    "node": {"k8s-sync-east": "write"},
    "node_prefix": {"": "read"},
    "key_prefix": {"bridge/clusters/": "list"},
    "session_prefix": {"": "write"},
    "agent_prefix": {"": "read"},
    "operator": {"": "read"},
    "acl": {"": "write"},
}


def test_hcl_rules_as_consul_documents_them() -> None:
    assert parse_rules(CONSUL_DOCS_EXAMPLE) == PARSED


def test_json_rules_parse_to_the_same() -> None:
    as_json = {block: (names[""] if block in ("operator", "acl") else
                       {name: {"policy": level} for name, level in names.items()})
               for block, names in PARSED.items()}
    assert parse_rules(json.dumps(as_json)) == PARSED


def test_empty_rules_grant_nothing() -> None:
    assert parse_rules("") == {} and parse_rules("  \n") == {}


def test_rules_for_one_name_merge_deny_first() -> None:
    text = 'service "web" { policy = "read" }\nservice "web" { policy = "write" }'
    assert parse_rules(text) == {"service": {"web": "write"}}
    assert merge([parse_rules(text), {"service": {"web": "deny"}}]) == {"service": {"web": "deny"}}
    assert merge([{"key": {"k": "read"}}, {"key": {"k": "list"}}]) == {"key": {"k": "list"}}


@pytest.mark.parametrize(("text", "error"), [
    ('service "web" { policy = "list" }', "Invalid service policy: 'web' = 'list'"),
    ('node "n" { policy = "root" }', "Invalid node policy: 'n' = 'root'"),
    ('operator = "list"', "Invalid operator policy: '' = 'list'"),
    ('servic "web" { policy = "read" }', "Failed to parse ACL rules: invalid key 'servic'"),
    ('service "web" { policy = "read"', "Failed to parse ACL rules: "),
    ('service "web" { policy = "read" colour = "red" }', "Failed to parse ACL rules: "),
    ('{"service": ', "Failed to parse ACL rules: "),
])
def test_what_consul_refuses(text: str, error: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert str(info.value).startswith(error), str(info.value)
