"""The `kubernetes` auth method's validator: a bearer JWT checked by the cluster's TokenReview API.

As Consul's `kubeauth` validator: the method's config names the API server (`Host`), its CA
(`CACert`, PEM) and a reviewer's token (`ServiceAccountJWT`, which needs RBAC to create
tokenreviews and get serviceaccounts, as `system:auth-delegator` plus a read role grant). A
login's JWT is posted to `/apis/authentication.k8s.io/v1/tokenreviews`; an authenticated
`system:serviceaccount:<ns>:<name>` user then has its ServiceAccount read for the
`consul.hashicorp.com/service-name` annotation, which overrides the name. The identity has
the selectable fields `serviceaccount.namespace`, `.name` and `.uid`. Errors are Consul's texts.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509

SERVICE_NAME_ANNOTATION = "consul.hashicorp.com/service-name"
FIELDS = ("serviceaccount.namespace", "serviceaccount.name", "serviceaccount.uid")
_TIMEOUT = 10.0


class ValidatorError(Exception):
    """A config or a login the validator refuses; the text is Consul's."""


@dataclass(frozen=True)
class Identity:
    """What a login proved: the projected variables (for BindName) and the selectable
    object (for binding rule selectors)."""

    projected: dict[str, str]

    @property
    def selectable(self) -> dict[str, Any]:
        return {"serviceaccount": {key.split(".", 1)[1]: value for key, value in self.projected.items()}}


class KubernetesValidator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host = str(config.get("Host") or "")
        self.ca_cert = str(config.get("CACert") or "")
        self.reviewer_jwt = str(config.get("ServiceAccountJWT") or "")
        if not self.host:
            raise ValidatorError("Config.Host is required")
        if not self.ca_cert:
            raise ValidatorError("Config.CACert is required")
        try:
            x509.load_pem_x509_certificates(self.ca_cert.encode())
        except ValueError as exc:
            raise ValidatorError(f"error parsing kubernetes ca cert: {exc}") from None
        if not self.reviewer_jwt:
            raise ValidatorError("Config.ServiceAccountJWT is required")
        try:
            jwt.get_unverified_header(self.reviewer_jwt)
        except jwt.PyJWTError as exc:
            raise ValidatorError(f"Config.ServiceAccountJWT is not a valid JWT: {exc}") from None
        url = urllib.parse.urlsplit(self.host if "://" in self.host else f"https://{self.host}")
        self._scheme, self._netloc, self._base = url.scheme, url.netloc, url.path.rstrip("/")

    def validate_login(self, token: str) -> Identity:
        try:
            jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise ValidatorError(f"failed to parse and validate JWT: {exc}") from None
        review = self._request("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                "spec": {"token": token}})
        status = review.get("status") or {}
        if status.get("error"):
            raise ValidatorError(f"lookup failed: {status['error']}")
        if not status.get("authenticated"):
            raise ValidatorError("lookup failed: service account jwt not valid")
        user = status.get("user") or {}
        parts = str(user.get("username") or "").split(":")
        if len(parts) != 4:
            raise ValidatorError("lookup failed: unexpected username format")
        if parts[0] != "system" or parts[1] != "serviceaccount":
            raise ValidatorError("lookup failed: username returned is not a service account")
        namespace, name, uid = parts[2], parts[3], str(user.get("uid") or "")
        path = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/serviceaccounts/{urllib.parse.quote(name)}"
        try:
            account = self._request("GET", path)
        except ValidatorError as exc:
            raise ValidatorError(f"annotation lookup failed: {exc}") from None
        annotations = (account.get("metadata") or {}).get("annotations") or {}
        name = annotations.get(SERVICE_NAME_ANNOTATION, name)
        return Identity({"serviceaccount.namespace": namespace, "serviceaccount.name": name,
                         "serviceaccount.uid": uid})

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call with the reviewer's token; a failure's text is the API's Status message."""
        if self._scheme == "https":
            context = ssl.create_default_context(cadata=self.ca_cert)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(self._netloc, timeout=_TIMEOUT,
                                                                           context=context)
        else:
            conn = http.client.HTTPConnection(self._netloc, timeout=_TIMEOUT)
        headers = {"Authorization": f"Bearer {self.reviewer_jwt}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._base + path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ValidatorError(f"{method} {self.host}{path}: {exc}") from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if response.status >= 300:
            message = answer.get("message") if isinstance(answer, dict) else None
            raise ValidatorError(str(message or f"the server responded with status {response.status}"))
        return answer if isinstance(answer, dict) else {}
