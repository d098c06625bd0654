"""Create/update rules for Roles, ClusterRoles, RoleBindings and ClusterRoleBindings. Pure.

The counterparts of `pkg/apis/rbac/validation` (`ValidatePolicyRule`, `ValidateRoleBinding`,
`ValidateRoleBindingSubject`, `ValidateRoleBindingUpdate`) and of the rbac/v1 defaults
(`SetDefaults_Subject`, `SetDefaults_RoleBinding`). RBAC object names follow
`path.IsValidPathSegmentName` (see `strategy.name_errors`), so `system:discovery` is valid.
Who may create which RBAC objects is decided by the authorizer (`rbac.py`), not here.
"""

from __future__ import annotations

from typing import Any

from bridge.testing.kube.errors import FieldError
from bridge.testing.kube.resources import SERVICE_ACCOUNTS
from bridge.testing.kube.strategy import name_errors, path_segment_errors

JSON = dict[str, Any]

GROUP = "rbac.authorization.k8s.io"


def _rule_errors(rule: Any, namespaced: bool, at: str) -> list[FieldError]:
    if not isinstance(rule, dict):
        return [FieldError("Invalid", at, rule, "must be an object")]
    found: list[FieldError] = []
    if not rule.get("verbs"):
        found.append(FieldError("Required", f"{at}.verbs", None, "verbs must contain at least one value"))
    urls = rule.get("nonResourceURLs") or []
    if urls:
        if namespaced:
            found.append(
                FieldError(
                    "Invalid", f"{at}.nonResourceURLs", urls, "namespaced rules cannot apply to non-resource URLs"
                )
            )
        if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            found.append(
                FieldError(
                    "Invalid",
                    f"{at}.nonResourceURLs",
                    urls,
                    "rules cannot apply to both regular resources and non-resource URLs",
                )
            )
        return found
    if not rule.get("apiGroups"):
        found.append(
            FieldError("Required", f"{at}.apiGroups", None, "resource rules must supply at least one api group")
        )
    if not rule.get("resources"):
        found.append(
            FieldError("Required", f"{at}.resources", None, "resource rules must supply at least one resource")
        )
    return found


def validate_role(obj: JSON, old: JSON | None) -> list[FieldError]:
    found: list[FieldError] = []
    for i, rule in enumerate(obj.get("rules") or []):
        found += _rule_errors(rule, True, f"rules[{i}]")
    return found


def validate_cluster_role(obj: JSON, old: JSON | None) -> list[FieldError]:
    found: list[FieldError] = []
    for i, rule in enumerate(obj.get("rules") or []):
        found += _rule_errors(rule, False, f"rules[{i}]")
    aggregation = obj.get("aggregationRule")
    if aggregation is not None and not (aggregation or {}).get("clusterRoleSelectors"):
        found.append(
            FieldError(
                "Required",
                "aggregationRule.clusterRoleSelectors",
                None,
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            )
        )
    return found


def default_binding(obj: JSON) -> None:
    role_ref = obj.get("roleRef")
    if isinstance(role_ref, dict) and not role_ref.get("apiGroup"):
        role_ref["apiGroup"] = GROUP
    for subject in obj.get("subjects") or []:
        if isinstance(subject, dict) and not subject.get("apiGroup") and subject.get("kind") in ("User", "Group"):
            subject["apiGroup"] = GROUP


def _subject_errors(subject: Any, namespaced: bool, at: str) -> list[FieldError]:
    if not isinstance(subject, dict):
        return [FieldError("Invalid", at, subject, "must be an object")]
    found: list[FieldError] = []
    name, kind, group = subject.get("name") or "", subject.get("kind"), subject.get("apiGroup") or ""
    if not name:
        found.append(FieldError("Required", f"{at}.name"))
    if kind == "ServiceAccount":
        if name:
            found += name_errors(SERVICE_ACCOUNTS, name, f"{at}.name")
        if group:
            found.append(FieldError("NotSupported", f"{at}.apiGroup", group, 'supported values: ""'))
        if not namespaced and not subject.get("namespace"):
            found.append(FieldError("Required", f"{at}.namespace"))
    elif kind in ("User", "Group"):
        if group != GROUP:
            found.append(FieldError("NotSupported", f"{at}.apiGroup", group, f'supported values: "{GROUP}"'))
    else:
        found.append(
            FieldError("NotSupported", f"{at}.kind", kind, 'supported values: "ServiceAccount", "User", "Group"')
        )
    return found


def _binding_errors(obj: JSON, old: JSON | None, namespaced: bool) -> list[FieldError]:
    found: list[FieldError] = []
    role_ref = obj.get("roleRef")
    if not isinstance(role_ref, dict):
        found.append(FieldError("Required", "roleRef"))
        role_ref = {}
    else:
        if role_ref.get("apiGroup") != GROUP:
            found.append(
                FieldError("NotSupported", "roleRef.apiGroup", role_ref.get("apiGroup"), f'supported values: "{GROUP}"')
            )
        kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
        if role_ref.get("kind") not in kinds:
            supported = ", ".join(f'"{k}"' for k in kinds)
            found.append(
                FieldError("NotSupported", "roleRef.kind", role_ref.get("kind"), f"supported values: {supported}")
            )
        ref_name = role_ref.get("name") or ""
        if not ref_name:
            found.append(FieldError("Required", "roleRef.name"))
        else:
            found += [FieldError("Invalid", "roleRef.name", ref_name, m) for m in path_segment_errors(ref_name)]
    for i, subject in enumerate(obj.get("subjects") or []):
        found += _subject_errors(subject, namespaced, f"subjects[{i}]")
    if old is not None and old.get("roleRef") != obj.get("roleRef"):
        found.append(FieldError("Invalid", "roleRef", obj.get("roleRef"), "cannot change roleRef"))
    return found


def validate_role_binding(obj: JSON, old: JSON | None) -> list[FieldError]:
    return _binding_errors(obj, old, True)


def validate_cluster_role_binding(obj: JSON, old: JSON | None) -> list[FieldError]:
    return _binding_errors(obj, old, False)
