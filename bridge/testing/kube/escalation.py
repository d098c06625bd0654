"""RBAC escalation prevention: nobody grants through RBAC objects what they do not hold themselves.

The admission-time half of RBAC, from `pkg/registry/rbac/{role,clusterrole,rolebinding,
clusterrolebinding}/policybased/storage.go` and `pkg/registry/rbac/validation/policy_comparator.go`:

- writing a Role or ClusterRole is allowed to `system:masters`, to a user allowed the
  `escalate` verb on it, or when every rule it contains is covered by the writer's own rules
  in that namespace (`Covers`: each atomic verb/group/resource/name or URL/verb rule must be
  covered by one rule the writer holds);
- writing a binding is allowed to `system:masters`, to a user allowed the `bind` verb on the
  referenced role, or when the referenced role's rules are covered likewise.

A refusal is the 403 `<resource> "<name>" is forbidden: user "..." (groups=[...]) is attempting
to grant RBAC permissions not currently held:` followed by the missing rules. Writes made by
code in the process (manifests loaded through the Python API, controllers) carry no user and
are not checked, as the apiserver's own writes are not.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from bridge.testing.kube import errors
from bridge.testing.kube.rbac import RBACAuthorizer
from bridge.testing.kube.requestinfo import Attributes
from bridge.testing.kube.resources import CLUSTER_ROLES, ROLES, ResourceType
from bridge.testing.kube.store import Store
from bridge.testing.kube.users import MASTERS, UserInfo

JSON = dict[str, Any]

# Who the request being served on this thread acts as; None for in-process writes.
current_user: ContextVar[UserInfo | None] = ContextVar("fake_kube_user", default=None)

_GROUP = "rbac.authorization.k8s.io"


def _atoms(rule: JSON) -> list[JSON]:
    """BreakdownRule: one rule per group x resource x verb (x name), and per URL x verb."""
    atoms: list[JSON] = []
    names = rule.get("resourceNames") or []
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in rule.get("verbs") or []:
                base = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                atoms += [{**base, "resourceNames": [n]} for n in names] if names else [base]
    for url in rule.get("nonResourceURLs") or []:
        atoms += [{"nonResourceURLs": [url], "verbs": [verb]} for verb in rule.get("verbs") or []]
    return atoms


def _resources_cover(owned: list[str], wanted: list[str]) -> bool:
    if "*" in owned:
        return True
    for resource in wanted:
        if resource in owned:
            continue
        if "/" not in resource or "*/" + resource.split("/", 1)[1] not in owned:
            return False
    return True


def _urls_cover(owned: list[str], wanted: list[str]) -> bool:
    return all(
        any(o in ("*", url) or (o.endswith("*") and url.startswith(o.rstrip("*"))) for o in owned) for url in wanted
    )


def _rule_covers(owner: JSON, sub: JSON) -> bool:
    """policy_comparator.go ruleCovers."""
    verbs, groups = owner.get("verbs") or [], owner.get("apiGroups") or []
    owned_names, wanted_names = owner.get("resourceNames") or [], sub.get("resourceNames") or []
    return (
        ("*" in verbs or all(v in verbs for v in sub.get("verbs") or []))
        and ("*" in groups or all(g in groups for g in sub.get("apiGroups") or []))
        and _resources_cover(owner.get("resources") or [], sub.get("resources") or [])
        and _urls_cover(owner.get("nonResourceURLs") or [], sub.get("nonResourceURLs") or [])
        and (not owned_names or (bool(wanted_names) and all(n in owned_names for n in wanted_names)))
    )


def uncovered(owned: list[JSON], wanted: list[JSON]) -> list[JSON]:
    """The atomic rules of `wanted` that no rule of `owned` covers (Covers' missing rights)."""
    return [atom for rule in wanted for atom in _atoms(rule) if not any(_rule_covers(o, atom) for o in owned)]


def _compact_string(rule: JSON) -> str:
    """rbacv1helpers.CompactString, with Go's %q of a []string."""
    parts = []
    for key, label in (
        ("apiGroups", "APIGroups"),
        ("resources", "Resources"),
        ("nonResourceURLs", "NonResourceURLs"),
        ("resourceNames", "ResourceNames"),
        ("verbs", "Verbs"),
    ):
        if rule.get(key):
            parts.append(f"{label}:{_go_quoted(rule[key])}")
    return "{" + ", ".join(parts) + "}"


def _go_quoted(values: Any) -> str:
    return "[" + " ".join(f'"{v}"' for v in values) + "]"


def _compact(missing: list[JSON]) -> list[JSON]:
    """CompactRules: atomic rules that differ only in their verb become one rule."""
    merged: dict[tuple[Any, ...], JSON] = {}
    for rule in missing:
        key = tuple(tuple(rule.get(k) or ()) for k in ("apiGroups", "resources", "resourceNames", "nonResourceURLs"))
        if key in merged:
            merged[key]["verbs"] = [*merged[key]["verbs"], *rule["verbs"]]
        else:
            merged[key] = {k: list(v) for k, v in rule.items()}
    return list(merged.values())


class EscalationCheck:
    """A store admission hook that refuses RBAC writes granting more than the writer holds."""

    def __init__(self, authorizer: RBACAuthorizer) -> None:
        self._authorizer = authorizer

    def admit(self, store: Store, rt: ResourceType, old: JSON | None, new: JSON) -> list[errors.FieldError]:
        user = current_user.get()
        if user is None or MASTERS in user.groups or rt.group != _GROUP:
            return []
        meta = new["metadata"]
        namespace = meta.get("namespace", "") if rt.namespaced else ""
        if rt in (ROLES, CLUSTER_ROLES):
            # The name comes from the URL, which a create does not have.
            verb_name = meta["name"] if old is not None else ""
            asked = Attributes("escalate", True, api_group=_GROUP, namespace=namespace, resource=rt.plural,
                               name=verb_name)  # fmt: skip
            if self._authorizer.authorize(user, asked).allowed:
                return []
            rules = [r for r in new.get("rules") or [] if isinstance(r, dict)]
        else:
            ref = new.get("roleRef") or {}
            resource = "roles" if ref.get("kind") == "Role" else "clusterroles"
            asked = Attributes("bind", True, api_group=_GROUP, namespace=namespace, resource=resource,
                               name=str(ref.get("name", "")))  # fmt: skip
            if self._authorizer.authorize(user, asked).allowed:
                return []
            rules = self._referenced_rules(store, ref, namespace)
        owned, failures = self._authorizer.rules_for(user, namespace)
        missing = uncovered(owned, rules)
        if missing:
            described = sorted({_compact_string(r) for r in _compact(missing)})
            message = (
                f'user "{user.name}" (groups={_go_quoted(user.groups)}) is attempting to grant RBAC permissions not '
                "currently held:\n" + "\n".join(described)
            )
            if failures:
                message += f"; resolution errors: [{', '.join(failures)}]"
            raise errors.StatusError(
                403,
                "Forbidden",
                f'{rt.qualified_name} "{meta["name"]}" is forbidden: {message}',
                {"name": meta["name"], "group": _GROUP, "kind": rt.plural},
            )
        return []

    @staticmethod
    def _referenced_rules(store: Store, ref: JSON, namespace: str) -> list[JSON]:
        name = str(ref.get("name", ""))
        if ref.get("kind") == "Role":
            role = store.find(ROLES, namespace, name)
            missing = errors.StatusError(404, "NotFound", f'roles.{_GROUP} "{name}" not found',
                                         {"name": name, "group": _GROUP, "kind": "roles"})  # fmt: skip
        else:
            role = store.find(CLUSTER_ROLES, None, name)
            missing = errors.StatusError(404, "NotFound", f'clusterroles.{_GROUP} "{name}" not found',
                                         {"name": name, "group": _GROUP, "kind": "clusterroles"})  # fmt: skip
        if role is None:
            raise missing
        return [r for r in role.get("rules") or [] if isinstance(r, dict)]
