"""Optional ACL enforcement: tokens, a test-friendly policy format, and Consul's error texts.

A policy is a mapping of rule blocks to `{name-or-prefix: level}`, mirroring HCL rules:

    {"service_prefix": {"": "read", "web": "write"},
     "node": {"k8s-sync": "write"},
     "key_prefix": {"locks/": "write"},
     "session_prefix": {"": "write"},
     "agent_prefix": {"": "read"}}

Levels are "deny" < "read" < "list" < "write" (list only matters for keys). As in Consul,
an exact rule beats any prefix rule and the longest prefix wins; with no match the
default policy applies. Writes without permission raise 403 `Permission denied: ...`,
unknown secrets raise 403 `ACL not found`; reads are filtered by the endpoints.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.testing.consul.errors import HTTPError
from bridge.testing.consul.wire import go_quote

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
_LEVELS = {"deny": 0, "read": 1, "list": 2, "write": 3}
_RESOURCES = ("service", "node", "key", "session", "agent")

Policy = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Token:
    """An ACL token: what clients send (secret) and what errors name (accessor)."""

    secret_id: str
    accessor_id: str
    policy: Policy = field(default_factory=dict)
    management: bool = False
    description: str = ""


def _validate_policy(policy: Policy) -> None:
    for block, rules in policy.items():
        resource = block.removesuffix("_prefix")
        if resource not in _RESOURCES:
            raise ValueError(f"unknown ACL rule block {block!r}")
        for level in rules.values():
            if level not in _LEVELS:
                raise ValueError(f"unknown ACL level {level!r} in {block!r}")


class Authorizer:
    """Answers permission questions for one resolved token."""

    def __init__(self, token: Token | None, default_policy: str, *, supplied: bool) -> None:
        # token None means ACLs are disabled: everything is allowed.
        self.token = token
        self.default_policy = default_policy
        # Whether the client sent a (non-anonymous) token; controls the filtered header.
        self.supplied = supplied

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def level(self, resource: str, name: str) -> int:
        if self.token is None or self.token.management:
            return _LEVELS["write"]
        exact = self.token.policy.get(resource, {})
        if name in exact:
            return _LEVELS[exact[name]]
        prefixes = self.token.policy.get(f"{resource}_prefix", {})
        best = None
        for prefix in prefixes:
            if name.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is not None:
            return _LEVELS[prefixes[best]]
        return _LEVELS["write"] if self.default_policy == "allow" else _LEVELS["deny"]

    def allowed(self, resource: str, name: str, access: str) -> bool:
        return self.level(resource, name) >= _LEVELS[access]

    def require(self, resource: str, name: str, access: str) -> None:
        """Raise Consul's 403 if this token lacks `resource:access` on `name`."""
        if not self.allowed(resource, name, access):
            raise self.denied(resource, name, access)

    def denied(self, resource: str, name: str, access: str) -> HTTPError:
        accessor = self.token.accessor_id if self.token else ""
        who = f"token with AccessorID '{accessor}'" if accessor else "provided token"
        return HTTPError(403, f"Permission denied: {who} lacks permission '{resource}:{access}' on {go_quote(name)}")


ALLOW_ALL = Authorizer(None, "allow", supplied=False)


class AclRegistry:
    """The token table. Disabled (everything allowed) unless a management token is given."""

    def __init__(self, master_token: str | None, *, default_policy: str = "deny") -> None:
        if default_policy not in ("allow", "deny"):
            raise ValueError("default_policy must be 'allow' or 'deny'")
        self._lock = threading.Lock()
        self.enabled = master_token is not None
        self.default_policy = default_policy if self.enabled else "allow"
        self._tokens: dict[str, Token] = {}
        if master_token is not None:
            self._tokens[master_token] = Token(master_token, str(uuid.uuid4()), management=True)
            self._tokens[ANONYMOUS_SECRET] = Token(ANONYMOUS_SECRET, ANONYMOUS_ACCESSOR)

    def create_token(
        self,
        policy: Policy | None = None,
        *,
        secret_id: str | None = None,
        accessor_id: str | None = None,
        management: bool = False,
        description: str = "",
    ) -> Token:
        """Add a token; returns it (use `.secret_id` as the X-Consul-Token)."""
        policy = {block: dict(rules) for block, rules in (policy or {}).items()}
        _validate_policy(policy)
        token = Token(
            secret_id=secret_id or str(uuid.uuid4()),
            accessor_id=accessor_id or str(uuid.uuid4()),
            policy=policy,
            management=management,
            description=description,
        )
        with self._lock:
            self._tokens[token.secret_id] = token
        return token

    def set_anonymous_policy(self, policy: Policy) -> None:
        """Give the anonymous token (used when no token is sent) a policy."""
        policy = {block: dict(rules) for block, rules in policy.items()}
        _validate_policy(policy)
        with self._lock:
            self._tokens[ANONYMOUS_SECRET] = Token(ANONYMOUS_SECRET, ANONYMOUS_ACCESSOR, policy)

    def delete_token(self, secret_id: str) -> None:
        with self._lock:
            self._tokens.pop(secret_id, None)

    def resolve(self, secret: str) -> Authorizer:
        """The authorizer for a request's token ("" means anonymous); 403 if unknown."""
        if not self.enabled:
            return ALLOW_ALL
        with self._lock:
            if not secret:
                return Authorizer(self._tokens[ANONYMOUS_SECRET], self.default_policy, supplied=False)
            token = self._tokens.get(secret)
        if token is None:
            raise HTTPError(403, "ACL not found")
        return Authorizer(token, self.default_policy, supplied=token.accessor_id != ANONYMOUS_ACCESSOR)
