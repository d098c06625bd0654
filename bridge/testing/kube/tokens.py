"""Bearer tokens: issuing them, recognising them, and retiring them after a rotation.

Two kinds, as a cluster has them:

- user tokens (like kube-apiserver's `--token-auth-file`): opaque strings mapped to a fixed
  `UserInfo`, e.g. the admin kubeconfig's user in `system:masters`;
- service-account tokens: RS256-signed JWTs with the claims of a kubelet-projected token
  (`iss`, `sub`, `aud`, `kubernetes.io.namespace`, `kubernetes.io.serviceaccount`, ...), so a
  consumer that parses them before a TokenReview (Consul's Kubernetes auth method) accepts
  them. Like the apiserver's service-account authenticator, a token is only good while its
  ServiceAccount exists with the UID the token names.

A rotation retires the old token: it keeps working for a grace period on the injected clock
and is refused after, like a projected token past its expiry. Tokens never appear in logs
or error messages.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.testing.kube import errors
from bridge.testing.kube.resources import SERVICE_ACCOUNTS
from bridge.testing.kube.store import Store
from bridge.testing.kube.users import AUTHENTICATED, UserInfo, service_account_user, service_account_username

ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (ISSUER,)
_JWT_LIFETIME = 365 * 24 * 3600  # the `exp` claim; validity itself ends only by rotation


class TokenError(Exception):
    """The token does not authenticate; the message is what a TokenReview reports."""


@dataclass(slots=True)
class _Grant:
    user: UserInfo | None  # fixed identity of a user token
    service_account: tuple[str, str, str] | None  # (namespace, name, uid) of a service-account token
    audiences: tuple[str, ...]
    not_after: float | None = None  # clock reading after which a retired token is refused


class TokenAuthority:
    """Issues bearer tokens and maps presented ones back to who they stand for. Thread-safe."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key_id = uuid.uuid4().hex

    def issue_user_token(self, user: UserInfo) -> str:
        """A static token for `user`; `system:authenticated` is added as the apiserver does."""
        groups = user.groups if AUTHENTICATED in user.groups else (*user.groups, AUTHENTICATED)
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._grants[token] = _Grant(UserInfo(user.name, groups, user.uid, user.extra), None, API_AUDIENCES)
        return token

    def issue_service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        audiences: Iterable[str] = API_AUDIENCES,
        expiration_seconds: int | None = None,
    ) -> tuple[str, str]:
        """(signed JWT, RFC 3339 expiry) for an existing ServiceAccount (404 Status if there is none).

        Without `expiration_seconds` the token lives until a rotation retires it (as a
        kubelet-refreshed projected token does); with it, it is refused that many seconds on.
        """
        account = self._store.get(SERVICE_ACCOUNTS, namespace, name)
        uid = account["metadata"]["uid"]
        audience = tuple(audiences)
        now = int(time.time())
        lifetime = expiration_seconds or _JWT_LIFETIME
        claims = {
            "aud": list(audience),
            "exp": now + lifetime,
            "iat": now,
            "iss": ISSUER,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
            "nbf": now,
            "sub": service_account_username(namespace, name),
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._key_id})
        not_after = self._clock() + expiration_seconds if expiration_seconds else None
        with self._lock:
            self._grants[token] = _Grant(None, (namespace, name, uid), audience, not_after)
        expires = datetime.fromtimestamp(now + lifetime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return token, expires

    def retire(self, token: str, grace_seconds: float) -> None:
        """Refuse `token` once `grace_seconds` have passed on the clock (0: from now on)."""
        with self._lock:
            grant = self._grants.get(token)
            if grant is not None:
                grant.not_after = self._clock() + max(0.0, grace_seconds)

    def authenticate(self, token: str, audiences: Iterable[str] = ()) -> tuple[UserInfo, tuple[str, ...]]:
        """(user, audiences the token is good for) or TokenError.

        `audiences` empty means the API server's own audience, as for a request's bearer token.
        """
        wanted = tuple(audiences) or API_AUDIENCES
        with self._lock:
            grant = self._grants.get(token)
            if grant is not None and grant.not_after is not None and self._clock() >= grant.not_after:
                raise TokenError("[invalid bearer token, service account token has expired]")
        if grant is None:
            raise TokenError("[invalid bearer token, token lookup failed]")
        matched = tuple(a for a in wanted if a in grant.audiences)
        if not matched:
            raise TokenError(
                "[invalid bearer token, token audiences "
                f"{_go_strings(grant.audiences)} is invalid for the target audiences {_go_strings(wanted)}]"
            )
        if grant.user is not None:
            return grant.user, matched
        assert grant.service_account is not None
        namespace, name, uid = grant.service_account
        account = self._store.find(SERVICE_ACCOUNTS, namespace, name)
        if account is None:
            raise TokenError(f'[invalid bearer token, serviceaccounts "{name}" not found]')
        if account["metadata"]["uid"] != uid:
            raise TokenError(
                "[invalid bearer token, service account UID "
                f"({account['metadata']['uid']}) does not match claim ({uid})]"
            )
        return service_account_user(namespace, name, uid), matched


def _go_strings(values: Iterable[str]) -> str:
    return "[" + " ".join(f'"{v}"' for v in values) + "]"


def unauthorized() -> errors.StatusError:
    """The 401 the authentication filter writes (apimachinery `NewUnauthorized("Unauthorized")`)."""
    return errors.StatusError(401, "Unauthorized", "Unauthorized")
