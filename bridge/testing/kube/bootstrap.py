"""The part of kube-apiserver's bootstrap RBAC policy that every cluster starts with. Pure.

From `plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`: `cluster-admin` for
`system:masters`, and the roles every authenticated user holds: `system:discovery` (the
discovery documents and OpenAPI), `system:basic-user` (self access/rules/subject reviews, so
`kubectl auth can-i` and `kubectl auth whoami` work for anyone) and
`system:public-info-viewer` (`/healthz`, `/version`, ...). The aggregated `admin`/`edit`/`view`
roles and the controllers' roles are left out.
"""

from __future__ import annotations

from typing import Any

from bridge.testing.kube.users import AUTHENTICATED, MASTERS, UNAUTHENTICATED

JSON = dict[str, Any]

_RBAC_V1 = "rbac.authorization.k8s.io/v1"
_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
_AUTOUPDATE = {"rbac.authorization.kubernetes.io/autoupdate": "true"}


def _cluster_role(name: str, rules: list[JSON]) -> JSON:
    return {
        "apiVersion": _RBAC_V1,
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": dict(_LABELS), "annotations": dict(_AUTOUPDATE)},
        "rules": rules,
    }


def _binding(name: str, role: str, groups: list[str]) -> JSON:
    return {
        "apiVersion": _RBAC_V1,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": dict(_LABELS), "annotations": dict(_AUTOUPDATE)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g} for g in groups],
    }


def policy() -> list[JSON]:
    """ClusterRoles, then the ClusterRoleBindings that grant them."""
    return [
        _cluster_role(
            "cluster-admin",
            [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
        ),
        _cluster_role(
            "system:discovery",
            [
                {
                    "nonResourceURLs": [
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/healthz",
                        "/livez",
                        "/openapi",
                        "/openapi/*",
                        "/readyz",
                        "/version",
                        "/version/",
                    ],
                    "verbs": ["get"],
                }
            ],
        ),
        _cluster_role(
            "system:basic-user",
            [
                {
                    "apiGroups": ["authorization.k8s.io"],
                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    "verbs": ["create"],
                },
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ],
        ),
        _cluster_role(
            "system:public-info-viewer",
            [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}],
        ),
        _binding("cluster-admin", "cluster-admin", [MASTERS]),
        _binding("system:discovery", "system:discovery", [AUTHENTICATED]),
        _binding("system:basic-user", "system:basic-user", [AUTHENTICATED]),
        _binding("system:public-info-viewer", "system:public-info-viewer", [AUTHENTICATED, UNAUTHENTICATED]),
    ]
