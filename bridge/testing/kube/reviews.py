"""The create-only review resources of authorization.k8s.io/v1 and authentication.k8s.io/v1.

Nothing is stored: a POST answers 201 with the review and its `status` filled in, as the
apiserver's review registries do.

- SelfSubjectAccessReview (`kubectl auth can-i`): may the requesting user do this?
- SubjectAccessReview / LocalSubjectAccessReview: may the user named in the spec?
- SelfSubjectRulesReview (`kubectl auth can-i --list`): every rule the requester holds in a namespace.
- SelfSubjectReview (`kubectl auth whoami`): who the requester is.
- TokenReview: who a bearer token stands for (what Consul's Kubernetes auth method asks).
- TokenRequest, the `serviceaccounts/<name>/token` subresource (`kubectl create token`, the
  kubelet): a new service-account token (TLS servers only).

Whether the caller may create the review at all is decided before, by RBAC on the
`create` verb (bootstrap policy grants the self reviews to every authenticated user).
"""

from __future__ import annotations

from typing import Any

from bridge.testing.kube import errors
from bridge.testing.kube.errors import FieldError
from bridge.testing.kube.guard import Guard
from bridge.testing.kube.requestinfo import Attributes
from bridge.testing.kube.resources import SERVICE_ACCOUNTS, ResourceType
from bridge.testing.kube.store import Store
from bridge.testing.kube.strategy import now
from bridge.testing.kube.tokens import API_AUDIENCES, TokenError
from bridge.testing.kube.users import UserInfo

JSON = dict[str, Any]


def create(guard: Guard, rt: ResourceType, namespace: str | None, body: Any, user: UserInfo) -> JSON:
    """The answered review for a POST of `body` to the review resource `rt`."""
    if not isinstance(body, dict):
        raise errors.bad_request(f"the body must be a {rt.kind} object")
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if (kind and kind != rt.kind) or (api_version and api_version != rt.api_version):
        raise errors.bad_request(
            f'{kind} in version "{api_version}" cannot be handled as a {rt.kind}: '
            f"the object sent is not a {rt.api_version} {rt.kind}"
        )
    spec: JSON = body["spec"] if isinstance(body.get("spec"), dict) else {}
    meta = dict(body.get("metadata") or {})
    meta.setdefault("creationTimestamp", None)
    answer: JSON = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}
    if rt.plural == "tokenreviews":
        answer.update(spec=spec, status=_token_review(guard, spec))
    elif rt.plural == "selfsubjectreviews":
        answer["status"] = {"userInfo": user.to_json()}
    elif rt.plural == "selfsubjectrulesreviews":
        answer.update(spec=spec, status=_rules_review(guard, rt, spec, user))
    else:
        subject = user if rt.plural == "selfsubjectaccessreviews" else _subject(rt, spec)
        attributes = _attributes(rt, spec, namespace)
        decision = guard.authorize(subject, attributes)
        status: JSON = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        answer.update(spec=spec, status=status)
    return answer


def _invalid(rt: ResourceType, found: list[FieldError]) -> errors.StatusError:
    listed = str(found[0]) if len(found) == 1 else "[" + ", ".join(map(str, found)) + "]"
    details: JSON = {"group": rt.group, "kind": rt.kind}
    details["causes"] = [{"reason": e.reason, "message": e.body, "field": e.field} for e in found]
    return errors.StatusError(422, "Invalid", f'{rt.kind}.{rt.group} "" is invalid: {listed}', details)


def _attributes(rt: ResourceType, spec: JSON, namespace: str | None) -> Attributes:
    """authorization/util.ResourceAttributesFrom / NonResourceAttributesFrom."""
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if resource is not None and non_resource is not None:
        raise _invalid(
            rt,
            [
                FieldError(
                    "Invalid",
                    "spec.nonResourceAttributes",
                    non_resource,
                    "cannot be specified in combination with resourceAttributes",
                )
            ],
        )
    if resource is None and non_resource is None:
        raise _invalid(
            rt,
            [
                FieldError(
                    "Invalid",
                    "spec.resourceAttributes",
                    None,
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )
            ],
        )
    if non_resource is not None:
        return Attributes(str(non_resource.get("verb", "")), False, str(non_resource.get("path", "")))
    assert resource is not None
    target_namespace = str(resource.get("namespace", ""))
    if rt.plural == "localsubjectaccessreviews" and target_namespace != (namespace or ""):
        raise errors.bad_request(f"spec.resourceAttributes.namespace must match namespace: {namespace}")
    return Attributes(
        str(resource.get("verb", "")),
        True,
        api_group=str(resource.get("group", "")),
        api_version=str(resource.get("version", "")),
        namespace=target_namespace,
        resource=str(resource.get("resource", "")),
        subresource=str(resource.get("subresource", "")),
        name=str(resource.get("name", "")),
    )


def _subject(rt: ResourceType, spec: JSON) -> UserInfo:
    name, groups = str(spec.get("user") or ""), tuple(spec.get("groups") or ())
    if not name and not groups:
        raise _invalid(rt, [FieldError("Invalid", "spec.user", "", "at least one of user or group must be specified")])
    extra = {str(k): tuple(v) for k, v in (spec.get("extra") or {}).items()}
    return UserInfo(name, groups, str(spec.get("uid") or ""), extra)


def _rules_review(guard: Guard, rt: ResourceType, spec: JSON, user: UserInfo) -> JSON:
    namespace = str(spec.get("namespace") or "")
    if not namespace:
        raise errors.bad_request("no namespace on request")
    if guard.authorizer is None:
        rules = [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, {"verbs": ["*"], "nonResourceURLs": ["*"]}]
        failures: list[str] = []
    else:
        rules, failures = guard.authorizer.rules_for(user, namespace)
    status: JSON = {
        "resourceRules": [
            {k: list(r[k]) for k in ("verbs", "apiGroups", "resources", "resourceNames") if r.get(k)}
            for r in rules
            if r.get("resources")
        ],
        "nonResourceRules": [
            {k: list(r[k]) for k in ("verbs", "nonResourceURLs") if r.get(k)} for r in rules if r.get("nonResourceURLs")
        ],
        "incomplete": bool(failures),
    }
    if failures:
        status["evaluationError"] = failures[0] if len(failures) == 1 else "[" + ", ".join(failures) + "]"
    return status


def _token_review(guard: Guard, spec: JSON) -> JSON:
    token = spec.get("token")
    if not isinstance(token, str) or not token:
        raise errors.bad_request("token is required for TokenReview in authentication")
    if guard.authority is None:
        return {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
    try:
        user, audiences = guard.authority.authenticate(token, spec.get("audiences") or ())
    except TokenError as exc:
        return {"user": {}, "error": str(exc)}
    return {"authenticated": True, "user": user.to_json(), "audiences": list(audiences)}


_TOKEN_REQUEST = "authentication.k8s.io/v1"
_MIN_EXPIRATION, _MAX_EXPIRATION, _DEFAULT_EXPIRATION = 600, 1 << 32, 3600


def token_request(guard: Guard, store: Store, namespace: str, name: str, body: Any) -> JSON:
    """A TokenRequest for the ServiceAccount `namespace/name`, answered with a new token."""
    if guard.authority is None:
        raise errors.path_not_found()  # no service-account token signer without TLS
    if not isinstance(body, dict) or (body.get("kind") or "TokenRequest") != "TokenRequest":
        raise errors.bad_request("the body must be a TokenRequest object")
    spec = dict(body.get("spec") or {})
    seconds = spec.get("expirationSeconds") or _DEFAULT_EXPIRATION
    found: list[FieldError] = []
    if not isinstance(seconds, int) or seconds < _MIN_EXPIRATION:
        found.append(FieldError("Invalid", "spec.expirationSeconds", seconds,
                                "may not specify a duration less than 10 minutes"))  # fmt: skip
    elif seconds > _MAX_EXPIRATION:
        found.append(FieldError("Invalid", "spec.expirationSeconds", seconds,
                                "may not specify a duration larger than 2^32 seconds"))  # fmt: skip
    if found:
        raise errors.StatusError(
            422,
            "Invalid",
            f'TokenRequest.authentication.k8s.io "{name}" is invalid: {found[0]}',
            {"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest",
             "causes": [{"reason": e.reason, "message": e.body, "field": e.field} for e in found]},
        )  # fmt: skip
    store.get(SERVICE_ACCOUNTS, namespace, name)  # 404 for an account that does not exist
    audiences = tuple(spec.get("audiences") or API_AUDIENCES)
    token, expires = guard.authority.issue_service_account_token(
        namespace, name, audiences=audiences, expiration_seconds=seconds
    )
    spec.update(audiences=list(audiences), expirationSeconds=seconds)
    spec.setdefault("boundObjectRef", None)
    return {
        "kind": "TokenRequest",
        "apiVersion": _TOKEN_REQUEST,
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }
