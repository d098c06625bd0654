"""The RBAC authorizer over the stored Roles, ClusterRoles and their bindings.

A port of kube-apiserver's authorization chain as clusters run it:

- `system:masters` may do anything (the privileged-group authorizer that runs first);
- then RBAC (`plugin/pkg/auth/authorizer/rbac/rbac.go`, with the rule resolver of
  `pkg/registry/rbac/validation/rule.go` and the matchers of `pkg/apis/rbac/v1/evaluation_helpers.go`):
  every ClusterRoleBinding whose subjects include the user grants its ClusterRole's rules
  everywhere; every RoleBinding in the request's namespace grants its Role's (or
  ClusterRole's) rules in that namespace. A rule allows a resource request when verb, API
  group, resource (`services/status` for a subresource, `*/status` too) and resourceNames all
  match, `*` matching any; a non-resource request when verb and URL (`/healthz`, `/apis/*`)
  match. A binding that names a missing role contributes a resolution error, which a denial
  carries as its reason ("RBAC: clusterrole.rbac.authorization.k8s.io "x" not found").

Denials become the 403 Status of `responsewriters.Forbidden` (forbiddenMessage in
`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bridge.testing.kube import errors
from bridge.testing.kube.requestinfo import Attributes
from bridge.testing.kube.resources import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, ROLE_BINDINGS, ROLES
from bridge.testing.kube.store import Store
from bridge.testing.kube.users import MASTERS, UserInfo, service_account_username

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""


def verb_matches(rule: JSON, verb: str) -> bool:
    return any(v in ("*", verb) for v in rule.get("verbs") or [])


def group_matches(rule: JSON, group: str) -> bool:
    return any(g in ("*", group) for g in rule.get("apiGroups") or [])


def resource_matches(rule: JSON, combined: str, subresource: str) -> bool:
    for resource in rule.get("resources") or []:
        if resource in ("*", combined):
            return True
        if subresource and resource == f"*/{subresource}":
            return True
    return False


def name_matches(rule: JSON, name: str) -> bool:
    names = rule.get("resourceNames") or []
    return not names or name in names


def url_matches(rule: JSON, path: str) -> bool:
    for url in rule.get("nonResourceURLs") or []:
        if url in ("*", path):
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def rule_allows(attributes: Attributes, rule: JSON) -> bool:
    """rbac.go RuleAllows."""
    if attributes.resource_request:
        combined = attributes.resource
        if attributes.subresource:
            combined = f"{attributes.resource}/{attributes.subresource}"
        return (
            verb_matches(rule, attributes.verb)
            and group_matches(rule, attributes.api_group)
            and resource_matches(rule, combined, attributes.subresource)
            and name_matches(rule, attributes.name)
        )
    return verb_matches(rule, attributes.verb) and url_matches(rule, attributes.path)


def _subject_applies(user: UserInfo, subject: JSON, namespace: str) -> bool:
    """rule.go appliesToUser: a ServiceAccount subject defaults to the binding's namespace."""
    kind = subject.get("kind")
    if kind == "User":
        return user.name == subject.get("name")
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        return bool(sa_namespace) and user.name == service_account_username(sa_namespace, str(subject.get("name")))
    return False


def _describe_subject(subject: JSON, namespace: str) -> str:
    if subject.get("kind") == "ServiceAccount":
        return f'ServiceAccount "{subject.get("name")}/{subject.get("namespace") or namespace}"'
    return f'{subject.get("kind")} "{subject.get("name")}"'


@dataclass(frozen=True, slots=True)
class _Source:
    """Where rules came from, for the "RBAC: allowed by ..." reason."""

    binding: JSON
    subject: JSON

    def __str__(self) -> str:
        meta, ref = self.binding["metadata"], self.binding.get("roleRef") or {}
        namespace = meta.get("namespace", "")
        if self.binding.get("kind") == "RoleBinding":
            where = f'RoleBinding "{meta["name"]}/{namespace}"'
        else:
            where = f'ClusterRoleBinding "{meta["name"]}"'
        return f'{where} of {ref.get("kind")} "{ref.get("name")}" to {_describe_subject(self.subject, namespace)}'


class RBACAuthorizer:
    """Decides requests from the RBAC objects in a store (read under the store's lock)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def authorize(self, user: UserInfo, attributes: Attributes) -> Decision:
        if MASTERS in user.groups:
            return Decision(True)
        failures: list[str] = []
        for source, rules, error in self._visit(user, attributes.namespace):
            if error:
                failures.append(error)
                continue
            if any(rule_allows(attributes, rule) for rule in rules):
                return Decision(True, f"RBAC: allowed by {source}")
        if not failures:
            return Decision(False)
        listed = failures[0] if len(failures) == 1 else "[" + ", ".join(failures) + "]"
        return Decision(False, f"RBAC: {listed}")

    def rules_for(self, user: UserInfo, namespace: str) -> tuple[list[JSON], list[str]]:
        """Every rule that applies to `user` in `namespace` and the resolution errors (for SelfSubjectRulesReview)."""
        if MASTERS in user.groups:
            return [
                {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
                {"verbs": ["*"], "nonResourceURLs": ["*"]},
            ], []
        rules: list[JSON] = []
        failures: list[str] = []
        for _, found, error in self._visit(user, namespace):
            if error:
                failures.append(error)
            rules.extend(found)
        return rules, failures

    def _visit(self, user: UserInfo, namespace: str) -> Iterator[tuple[_Source | None, list[JSON], str]]:
        """rule.go VisitRulesFor: cluster role bindings first, then role bindings in `namespace`."""
        store = self._store
        with store.lock:
            bindings = [(b, "") for b in store.objects(CLUSTER_ROLE_BINDINGS)]
            if namespace:
                bindings += [(b, namespace) for b in store.objects(ROLE_BINDINGS, namespace)]
            resolved = []
            for binding, where in bindings:
                subject = next((s for s in binding.get("subjects") or [] if _subject_applies(user, s, where)), None)
                if subject is None:
                    continue
                rules, error = self._role_rules(binding.get("roleRef") or {}, where)
                resolved.append((_Source(binding, subject), rules, error))
        yield from resolved

    def _role_rules(self, ref: JSON, namespace: str) -> tuple[list[JSON], str]:
        name = str(ref.get("name", ""))
        if ref.get("kind") == "Role":
            role = self._store.find(ROLES, namespace, name)
            if role is None:
                return [], f'role.rbac.authorization.k8s.io "{name}" not found'
        elif ref.get("kind") == "ClusterRole":
            role = self._store.find(CLUSTER_ROLES, None, name)
            if role is None:
                return [], f'clusterrole.rbac.authorization.k8s.io "{name}" not found'
        else:
            return [], f'unsupported role reference kind: "{ref.get("kind")}"'
        return [r for r in role.get("rules") or [] if isinstance(r, dict)], ""


def forbidden_message(user: UserInfo, attributes: Attributes) -> str:
    """responsewriters.forbiddenMessage."""
    if not attributes.resource_request:
        return f'User "{user.name}" cannot {attributes.verb} path "{attributes.path}"'
    resource = attributes.resource
    if attributes.subresource:
        resource = f"{resource}/{attributes.subresource}"
    if attributes.namespace:
        return (
            f'User "{user.name}" cannot {attributes.verb} resource "{resource}" in API group '
            f'"{attributes.api_group}" in the namespace "{attributes.namespace}"'
        )
    return (
        f'User "{user.name}" cannot {attributes.verb} resource "{resource}" in API group '
        f'"{attributes.api_group}" at the cluster scope'
    )


def forbidden(user: UserInfo, attributes: Attributes, reason: str = "") -> errors.StatusError:
    """The 403 Status of responsewriters.Forbidden: apimachinery's NewForbidden around forbiddenMessage."""
    message = forbidden_message(user, attributes)
    if reason:
        message = f"{message}: {reason}"
    details: JSON = {}
    if attributes.name:
        details["name"] = attributes.name
    if attributes.api_group:
        details["group"] = attributes.api_group
    if attributes.resource:
        details["kind"] = attributes.resource
    qualified = attributes.resource
    if qualified and attributes.api_group:
        qualified = f"{qualified}.{attributes.api_group}"
    if not qualified:
        text = f"forbidden: {message}"
    elif attributes.name:
        text = f'{qualified} "{attributes.name}" is forbidden: {message}'
    else:
        text = f"{qualified} is forbidden: {message}"
    return errors.StatusError(403, "Forbidden", text, details)
