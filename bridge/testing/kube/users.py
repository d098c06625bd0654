"""Who a request acts as: `UserInfo` and the names Kubernetes gives to users and groups. Pure.

Service accounts authenticate as `system:serviceaccount:<namespace>:<name>` in the groups
`system:serviceaccounts` and `system:serviceaccounts:<namespace>` (apiserver's
`authentication/serviceaccount/util.go`); every authenticated user is also in
`system:authenticated`; `system:masters` is the group the apiserver lets do anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
SERVICE_ACCOUNTS = "system:serviceaccounts"
_SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True, slots=True)
class UserInfo:
    """An authenticated identity, as authorizers and reviews see it."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> JSON:
        """authentication/v1 UserInfo (empty fields are omitted, as in the Go type)."""
        body: JSON = {"username": self.name}
        if self.uid:
            body["uid"] = self.uid
        if self.groups:
            body["groups"] = list(self.groups)
        if self.extra:
            body["extra"] = {k: list(v) for k, v in self.extra.items()}
        return body


def service_account_username(namespace: str, name: str) -> str:
    return f"{_SA_PREFIX}{namespace}:{name}"


def service_account_groups(namespace: str) -> tuple[str, ...]:
    return (SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{namespace}")


def split_service_account(username: str) -> tuple[str, str] | None:
    """(namespace, name) of a service-account username, or None for any other user."""
    if not username.startswith(_SA_PREFIX):
        return None
    namespace, sep, name = username[len(_SA_PREFIX) :].partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return namespace, name


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    return UserInfo(service_account_username(namespace, name), (*service_account_groups(namespace), AUTHENTICATED), uid)
