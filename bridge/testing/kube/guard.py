"""The filters every API request passes before it is served: authentication, impersonation, authorization.

In the order of kube-apiserver's handler chain:

1. authentication: `Authorization: Bearer <token>` must name a token the `TokenAuthority`
   knows (anonymous requests are off, as with `--anonymous-auth=false`); anything else is the
   401 Status `Unauthorized`;
2. impersonation (`endpoints/filters/impersonation.go`): `Impersonate-User`,
   `Impersonate-Group`, `Impersonate-Uid` and `Impersonate-Extra-*` switch the identity once
   the real user is allowed the `impersonate` verb on `users`, `serviceaccounts` (in the
   account's namespace), `groups`, `uids` and `userextras/<key>`. A service-account username
   without groups gets the service-account groups; `system:authenticated` is added unless
   given;
3. authorization by `RBACAuthorizer`; a denial is the 403 of `rbac.forbidden`.

An open guard (no TLS) lets everything through as a `system:masters` user, which is how the
server behaved before it learnt to authenticate.
"""

from __future__ import annotations

from email.message import Message

from bridge.testing.kube import errors
from bridge.testing.kube.rbac import Decision, RBACAuthorizer, forbidden
from bridge.testing.kube.requestinfo import Attributes, request_attributes
from bridge.testing.kube.tokens import TokenAuthority, TokenError, unauthorized
from bridge.testing.kube.users import (
    ANONYMOUS,
    AUTHENTICATED,
    MASTERS,
    UNAUTHENTICATED,
    UserInfo,
    service_account_groups,
    split_service_account,
)

OPEN_USER = UserInfo("system:admin", (MASTERS, AUTHENTICATED))
_EXTRA_PREFIX = "impersonate-extra-"


class Guard:
    """Authenticates and authorizes requests; `None` authority means an open server."""

    def __init__(self, authority: TokenAuthority | None, authorizer: RBACAuthorizer | None) -> None:
        self.authority = authority
        self.authorizer = authorizer

    @property
    def open(self) -> bool:
        return self.authority is None

    def authorize(self, user: UserInfo, attributes: Attributes) -> Decision:
        if self.authorizer is None:
            return Decision(True)
        return self.authorizer.authorize(user, attributes)

    def admit(self, method: str, path: str, query: dict[str, str], headers: Message) -> UserInfo:
        """The user the request acts as, or the StatusError (401/403/500) to answer with."""
        if self.authority is None:
            return OPEN_USER
        user = self._authenticate(headers)
        user = self._impersonate(user, headers)
        attributes = request_attributes(method, path, query)
        decision = self.authorize(user, attributes)
        if not decision.allowed:
            raise forbidden(user, attributes, decision.reason)
        return user

    def _authenticate(self, headers: Message) -> UserInfo:
        assert self.authority is not None
        scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
        try:
            user, _ = self.authority.authenticate(token)
        except TokenError:
            raise unauthorized() from None
        return user

    def _impersonate(self, requester: UserInfo, headers: Message) -> UserInfo:
        username = headers.get("Impersonate-User") or ""
        groups = [g for g in headers.get_all("Impersonate-Group") or [] if g]
        uid = headers.get("Impersonate-Uid") or ""
        extra: dict[str, list[str]] = {}
        for key, value in headers.items():
            if key.lower().startswith(_EXTRA_PREFIX):
                extra.setdefault(key[len(_EXTRA_PREFIX) :].lower(), []).append(value)
        if not username:
            if groups or extra or uid:
                raise errors.StatusError(
                    500,
                    "InternalError",
                    "Internal error occurred: requested impersonation of groups, uid or extra "
                    "without impersonating a user",
                    {},
                )
            return requester
        checks: list[Attributes] = []
        account = split_service_account(username)
        if account is not None:
            checks.append(
                Attributes(
                    "impersonate",
                    True,
                    api_version="v1",
                    namespace=account[0],
                    resource="serviceaccounts",
                    name=account[1],
                )
            )
            if not groups:
                groups = list(service_account_groups(account[0]))
        else:
            checks.append(Attributes("impersonate", True, resource="users", name=username))
        checks += [
            Attributes("impersonate", True, resource="groups", name=g)
            for g in headers.get_all("Impersonate-Group") or []
            if g
        ]
        checks += [
            Attributes(
                "impersonate",
                True,
                api_group="authentication.k8s.io",
                resource="userextras",
                subresource=key,
                name=value,
            )
            for key, values in extra.items()
            for value in values
        ]
        if uid:
            checks.append(Attributes("impersonate", True, api_group="authentication.k8s.io", resource="uids", name=uid))
        for check in checks:
            decision = self.authorize(requester, check)
            if not decision.allowed:
                raise forbidden(requester, check, decision.reason)
        if username != ANONYMOUS and not any(g in (AUTHENTICATED, UNAUTHENTICATED) for g in groups):
            groups.append(AUTHENTICATED)
        return UserInfo(username, tuple(groups), uid, {k: tuple(v) for k, v in extra.items()})
