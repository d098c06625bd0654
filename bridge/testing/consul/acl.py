"""ACLs as Consul has them: policies, tokens, and the authorizer a request's token resolves to.

Off unless an initial management token is given; then the default policy (deny unless told
otherwise) covers whatever no rule does. A token links policies (by ID), service and node
identities (Consul's synthetic policies for them) and, for tests only, inline rules in the
`Rules` mapping of acl_rules.py. Its rules are the merge of all of these; a link to the
builtin `global-management` policy makes it a management token. As in Consul, an exact rule
beats any prefix rule and the longest prefix wins. Unknown or expired secrets are 403
`ACL not found`; writes without permission are 403 `Permission denied: ...` in the words of
Consul's `acl/errors.go`; reads are filtered by the endpoints.

The HTTP surface is api_acl.py (policies, tokens) and acl_login.py (auth methods, binding
rules, login); this module holds the state they share, under one lock.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.testing.consul.acl_rules import LEVELS, Rules, merge, parse_rules, validate
from bridge.testing.consul.errors import HTTPError
from bridge.testing.consul.wire import go_quote
from bridge.testing.timers import SYSTEM, Clock

if TYPE_CHECKING:  # acl_login.py builds on this module
    from bridge.testing.consul.acl_login import AuthMethod, BindingRule

GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"
RESERVED_PREFIX = "00000000-0000-0000-0000-0000000000"

Policy = Mapping[str, Mapping[str, str]]  # the test hooks' inline rules (acl_rules.Rules)


def not_found() -> HTTPError:
    return HTTPError(403, "ACL not found")


def permission_denied(cause: str = "") -> HTTPError:
    return HTTPError(403, f"Permission denied: {cause}" if cause else "Permission denied")


@dataclass
class AclPolicy:
    """A stored policy; `parsed` is its Rules text, parsed once when written."""

    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: list[str] = field(default_factory=list)
    parsed: Rules = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


@dataclass
class Token:
    """An ACL token: what clients send (secret) and what errors name (accessor)."""

    secret_id: str
    accessor_id: str
    policy: Policy = field(default_factory=dict)  # inline rules (test hooks only)
    description: str = ""
    policy_ids: list[str] = field(default_factory=list)
    service_identities: list[dict[str, Any]] = field(default_factory=list)
    node_identities: list[dict[str, Any]] = field(default_factory=list)
    local: bool = False
    auth_method: str = ""
    create_time: float = 0.0
    expiration_time: float | None = None
    create_index: int = 0
    modify_index: int = 0

    def expired(self, now: float) -> bool:
        return self.expiration_time is not None and now >= self.expiration_time


def service_identity_rules(name: str) -> Rules:
    """`ACLServiceIdentity.SyntheticPolicy`: write on the service and its sidecar proxy,
    read on every service and node (for discovery)."""
    return {"service": {name: "write", f"{name}-sidecar-proxy": "write"},
            "service_prefix": {"": "read"}, "node_prefix": {"": "read"}}


def node_identity_rules(name: str) -> Rules:
    """`ACLNodeIdentity.SyntheticPolicy`: write on the node, read on every service."""
    return {"node": {name: "write"}, "service_prefix": {"": "read"}}


class Authorizer:
    """Answers permission questions for one resolved token."""

    def __init__(self, rules: Rules | None, default_policy: str, *, accessor: str = "",
                 management: bool = False, supplied: bool = False) -> None:
        self.rules = rules  # None: ACLs are off and everything is allowed
        self.default_policy = default_policy
        self.accessor = accessor
        self.management = management
        # Whether the client sent a (non-anonymous) token; controls the filtered header.
        self.supplied = supplied

    @property
    def enabled(self) -> bool:
        return self.rules is not None

    def level(self, resource: str, name: str) -> int:
        if self.rules is None or self.management:
            return LEVELS["write"]
        exact = self.rules.get(resource, {})
        if name in exact:
            return LEVELS[exact[name]]
        prefixes = self.rules.get(f"{resource}_prefix", {})
        best = None
        for prefix in prefixes:
            if name.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is not None:
            return LEVELS[prefixes[best]]
        # The default "allow" authorizer manages nothing: ACL reads and writes need a rule.
        allow = self.default_policy == "allow" and resource != "acl"
        return LEVELS["write"] if allow else LEVELS["deny"]

    def allowed(self, resource: str, name: str, access: str) -> bool:
        return self.level(resource, name) >= LEVELS[access]

    def require(self, resource: str, name: str, access: str) -> None:
        """Raise Consul's 403 if this token lacks `resource:access` on `name` ("" for the
        one-level resources: acl, operator, keyring)."""
        if not self.allowed(resource, name, access):
            raise self.denied(resource, name, access)

    def denied(self, resource: str, name: str, access: str) -> HTTPError:
        """`PermissionDeniedError.Error()`."""
        anonymous = self.accessor == ANONYMOUS_ACCESSOR
        who = "anonymous token" if anonymous else f"token with AccessorID '{self.accessor}'"
        text = f"{who} lacks permission '{resource}:{access}'"
        if name:
            text += f" on {go_quote(name)}"
        if anonymous:
            text += ". The anonymous token is used implicitly when a request does not specify a token."
        return permission_denied(text)


ALLOW_ALL = Authorizer(None, "allow")


class AclRegistry:
    """Policies and tokens. Disabled (everything allowed) unless a management token is given."""

    def __init__(self, master_token: str | None, *, default_policy: str = "deny", clock: Clock = SYSTEM) -> None:
        if default_policy not in ("allow", "deny"):
            raise ValueError("default_policy must be 'allow' or 'deny'")
        self.lock = threading.RLock()
        self.clock = clock
        self.enabled = master_token is not None
        self.default_policy = default_policy if self.enabled else "allow"
        self.index = 0
        self.policies: dict[str, AclPolicy] = {}
        self.tokens: dict[str, Token] = {}  # by accessor ID
        self._by_secret: dict[str, str] = {}
        self.auth_methods: dict[str, AuthMethod] = {}  # by name (acl_login.py)
        self.binding_rules: dict[str, BindingRule] = {}  # by ID
        if master_token is not None:
            self.policies[GLOBAL_MANAGEMENT_ID] = AclPolicy(
                GLOBAL_MANAGEMENT_ID, "global-management", "Builtin Policy that grants unlimited access",
                create_index=self.next_index(), modify_index=self.index)
            self.store_token(Token(master_token, str(uuid.uuid4()), policy_ids=[GLOBAL_MANAGEMENT_ID],
                                   description="Initial Management Token"))
            self.store_token(Token(ANONYMOUS_SECRET, ANONYMOUS_ACCESSOR, description="Anonymous Token"))

    def next_index(self) -> int:
        self.index += 1
        return self.index

    # -- tokens -------------------------------------------------------------------------

    def store_token(self, token: Token) -> Token:
        """Insert or replace `token` (by accessor), stamping its indexes and create time."""
        with self.lock:
            previous = self.tokens.get(token.accessor_id)
            if previous is not None:
                self._by_secret.pop(previous.secret_id, None)
                token.create_index, token.create_time = previous.create_index, previous.create_time
            else:
                token.create_index = self.next_index()
                token.create_time = token.create_time or self.clock.now()
            token.modify_index = self.index if previous is None else self.next_index()
            self.tokens[token.accessor_id] = token
            self._by_secret[token.secret_id] = token.accessor_id
        return token

    def remove_token(self, accessor_id: str) -> Token | None:
        with self.lock:
            token = self.tokens.pop(accessor_id, None)
            if token is not None:
                self._by_secret.pop(token.secret_id, None)
                self.next_index()
            return token

    def token_by_secret(self, secret: str) -> Token | None:
        """The live token with this secret (an expired one counts as gone)."""
        with self.lock:
            accessor = self._by_secret.get(secret)
            token = self.tokens.get(accessor) if accessor else None
        return None if token is None or token.expired(self.clock.now()) else token

    def create_token(
        self,
        policy: Policy | None = None,
        *,
        secret_id: str | None = None,
        accessor_id: str | None = None,
        management: bool = False,
        description: str = "",
    ) -> Token:
        """Test hook: a token with inline rules (use `.secret_id` as the X-Consul-Token)."""
        token = Token(secret_id=secret_id or str(uuid.uuid4()), accessor_id=accessor_id or str(uuid.uuid4()),
                      policy=validate(policy or {}), description=description,
                      policy_ids=[GLOBAL_MANAGEMENT_ID] if management else [])
        return self.store_token(token)

    def set_anonymous_policy(self, policy: Policy) -> None:
        """Test hook: give the anonymous token (used when no token is sent) inline rules."""
        with self.lock:
            anonymous = self.tokens[ANONYMOUS_ACCESSOR]
            anonymous.policy = validate(policy)

    def delete_token(self, secret_id: str) -> None:
        """Test hook: forget the token with this secret."""
        with self.lock:
            accessor = self._by_secret.get(secret_id)
        if accessor is not None:
            self.remove_token(accessor)

    # -- policies -----------------------------------------------------------------------

    def policy_by_name(self, name: str) -> AclPolicy | None:
        with self.lock:
            return next((p for p in self.policies.values() if p.name == name), None)

    def create_policy(self, name: str, rules: str, description: str = "") -> AclPolicy:
        """Test hook: a policy from Consul rule text (raises RulesError)."""
        policy = AclPolicy(str(uuid.uuid4()), name, description, rules, parsed=parse_rules(rules))
        with self.lock:
            policy.create_index = policy.modify_index = self.next_index()
            self.policies[policy.id] = policy
        return policy

    # -- resolution ---------------------------------------------------------------------

    def rules_of(self, token: Token) -> tuple[Rules, bool]:
        """The token's effective rules, and whether it is a management token."""
        with self.lock:
            linked = [self.policies[i] for i in token.policy_ids if i in self.policies]
        management = any(p.id == GLOBAL_MANAGEMENT_ID for p in linked)
        parts: list[Mapping[str, Mapping[str, str]]] = [p.parsed for p in linked]
        parts += [service_identity_rules(s["ServiceName"]) for s in token.service_identities]
        parts += [node_identity_rules(n["NodeName"]) for n in token.node_identities]
        parts.append(token.policy)
        return merge(parts), management

    def resolve(self, secret: str) -> Authorizer:
        """The authorizer for a request's token ("" means anonymous); 403 if unknown."""
        if not self.enabled:
            return ALLOW_ALL
        token = self.token_by_secret(secret or ANONYMOUS_SECRET)
        if token is None:
            raise not_found()
        rules, management = self.rules_of(token)
        return Authorizer(rules, self.default_policy, accessor=token.accessor_id, management=management,
                          supplied=bool(secret) and token.accessor_id != ANONYMOUS_ACCESSOR)
