"""The resource types the fake API server knows: names, kinds, scopes and per-type storage quirks.

Everything that differs between resource types (which group they live in, whether they carry a
status subresource, what DELETE answers) is a field here, so the store and the HTTP layer stay
generic. Discovery documents are generated from this table too, which keeps what `kubectl` is told
and what the server actually serves from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")
CREATE_ONLY = ("create",)


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One REST resource, e.g. `services` in the core group or `leases.coordination.k8s.io`."""

    plural: str
    singular: str
    kind: str
    group: str
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    # The registry for some types answers DELETE with a Status instead of the object.
    returns_deleted_object: bool = True
    allow_create_on_update: bool = False
    has_generation: bool = False
    # What discovery advertises; create-only types (access and token reviews) are never stored.
    verbs: tuple[str, ...] = VERBS

    @property
    def stored(self) -> bool:
        return self.verbs != CREATE_ONLY

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified_name(self) -> str:
        """How error messages name the resource: `services`, `leases.coordination.k8s.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None = None) -> str:
        if self.namespaced and namespace:
            return f"{self.prefix}/namespaces/{namespace}/{self.plural}"
        return f"{self.prefix}/{self.plural}"


NAMESPACES = ResourceType(
    plural="namespaces",
    singular="namespace",
    kind="Namespace",
    group="",
    version="v1",
    namespaced=False,
    short_names=("ns",),
    status_subresource=True,
)
SERVICES = ResourceType(
    plural="services",
    singular="service",
    kind="Service",
    group="",
    version="v1",
    namespaced=True,
    short_names=("svc",),
    categories=("all",),
    status_subresource=True,
    allow_create_on_update=True,
)
ENDPOINTS = ResourceType(
    plural="endpoints",
    singular="endpoints",
    kind="Endpoints",
    group="",
    version="v1",
    namespaced=True,
    short_names=("ep",),
    returns_deleted_object=False,
    allow_create_on_update=True,
)
PODS = ResourceType(
    plural="pods",
    singular="pod",
    kind="Pod",
    group="",
    version="v1",
    namespaced=True,
    short_names=("po",),
    categories=("all",),
    status_subresource=True,
    has_generation=True,
)
NODES = ResourceType(
    plural="nodes",
    singular="node",
    kind="Node",
    group="",
    version="v1",
    namespaced=False,
    short_names=("no",),
    status_subresource=True,
)
ENDPOINT_SLICES = ResourceType(
    plural="endpointslices",
    singular="endpointslice",
    kind="EndpointSlice",
    group="discovery.k8s.io",
    version="v1",
    namespaced=True,
    returns_deleted_object=False,
    has_generation=True,
)
INGRESSES = ResourceType(
    plural="ingresses",
    singular="ingress",
    kind="Ingress",
    group="networking.k8s.io",
    version="v1",
    namespaced=True,
    short_names=("ing",),
    status_subresource=True,
    returns_deleted_object=False,
    has_generation=True,
)
LEASES = ResourceType(
    plural="leases",
    singular="lease",
    kind="Lease",
    group="coordination.k8s.io",
    version="v1",
    namespaced=True,
    returns_deleted_object=False,
    allow_create_on_update=True,
)

CONFIG_MAPS = ResourceType(
    plural="configmaps",
    singular="configmap",
    kind="ConfigMap",
    group="",
    version="v1",
    namespaced=True,
    short_names=("cm",),
    returns_deleted_object=False,
)
SECRETS = ResourceType(
    plural="secrets",
    singular="secret",
    kind="Secret",
    group="",
    version="v1",
    namespaced=True,
    returns_deleted_object=False,
)
SERVICE_ACCOUNTS = ResourceType(
    plural="serviceaccounts",
    singular="serviceaccount",
    kind="ServiceAccount",
    group="",
    version="v1",
    namespaced=True,
    short_names=("sa",),
    returns_deleted_object=False,
)
DEPLOYMENTS = ResourceType(
    plural="deployments",
    singular="deployment",
    kind="Deployment",
    group="apps",
    version="v1",
    namespaced=True,
    short_names=("deploy",),
    categories=("all",),
    status_subresource=True,
    returns_deleted_object=False,
    has_generation=True,
)
POD_DISRUPTION_BUDGETS = ResourceType(
    plural="poddisruptionbudgets",
    singular="poddisruptionbudget",
    kind="PodDisruptionBudget",
    group="policy",
    version="v1",
    namespaced=True,
    short_names=("pdb",),
    status_subresource=True,
    returns_deleted_object=False,
    has_generation=True,
)
_RBAC = "rbac.authorization.k8s.io"
ROLES = ResourceType(
    plural="roles",
    singular="role",
    kind="Role",
    group=_RBAC,
    version="v1",
    namespaced=True,
    returns_deleted_object=False,
)
CLUSTER_ROLES = ResourceType(
    plural="clusterroles",
    singular="clusterrole",
    kind="ClusterRole",
    group=_RBAC,
    version="v1",
    namespaced=False,
    returns_deleted_object=False,
)
ROLE_BINDINGS = ResourceType(
    plural="rolebindings",
    singular="rolebinding",
    kind="RoleBinding",
    group=_RBAC,
    version="v1",
    namespaced=True,
    returns_deleted_object=False,
)
CLUSTER_ROLE_BINDINGS = ResourceType(
    plural="clusterrolebindings",
    singular="clusterrolebinding",
    kind="ClusterRoleBinding",
    group=_RBAC,
    version="v1",
    namespaced=False,
    returns_deleted_object=False,
)
TOKEN_REVIEWS = ResourceType(
    plural="tokenreviews",
    singular="tokenreview",
    kind="TokenReview",
    group="authentication.k8s.io",
    version="v1",
    namespaced=False,
    verbs=CREATE_ONLY,
)
SELF_SUBJECT_REVIEWS = ResourceType(
    plural="selfsubjectreviews",
    singular="selfsubjectreview",
    kind="SelfSubjectReview",
    group="authentication.k8s.io",
    version="v1",
    namespaced=False,
    verbs=CREATE_ONLY,
)
_AUTHZ = "authorization.k8s.io"
SELF_SUBJECT_ACCESS_REVIEWS = ResourceType(
    plural="selfsubjectaccessreviews",
    singular="selfsubjectaccessreview",
    kind="SelfSubjectAccessReview",
    group=_AUTHZ,
    version="v1",
    namespaced=False,
    verbs=CREATE_ONLY,
)
SELF_SUBJECT_RULES_REVIEWS = ResourceType(
    plural="selfsubjectrulesreviews",
    singular="selfsubjectrulesreview",
    kind="SelfSubjectRulesReview",
    group=_AUTHZ,
    version="v1",
    namespaced=False,
    verbs=CREATE_ONLY,
)
SUBJECT_ACCESS_REVIEWS = ResourceType(
    plural="subjectaccessreviews",
    singular="subjectaccessreview",
    kind="SubjectAccessReview",
    group=_AUTHZ,
    version="v1",
    namespaced=False,
    verbs=CREATE_ONLY,
)
LOCAL_SUBJECT_ACCESS_REVIEWS = ResourceType(
    plural="localsubjectaccessreviews",
    singular="localsubjectaccessreview",
    kind="LocalSubjectAccessReview",
    group=_AUTHZ,
    version="v1",
    namespaced=True,
    verbs=CREATE_ONLY,
)

ALL: tuple[ResourceType, ...] = (
    NAMESPACES,
    SERVICES,
    ENDPOINTS,
    PODS,
    NODES,
    CONFIG_MAPS,
    SECRETS,
    SERVICE_ACCOUNTS,
    ENDPOINT_SLICES,
    INGRESSES,
    LEASES,
    DEPLOYMENTS,
    POD_DISRUPTION_BUDGETS,
    ROLES,
    CLUSTER_ROLES,
    ROLE_BINDINGS,
    CLUSTER_ROLE_BINDINGS,
    TOKEN_REVIEWS,
    SELF_SUBJECT_REVIEWS,
    SELF_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_RULES_REVIEWS,
    SUBJECT_ACCESS_REVIEWS,
    LOCAL_SUBJECT_ACCESS_REVIEWS,
)

_BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in ALL}
_BY_KIND = {(rt.api_version, rt.kind): rt for rt in ALL}
_BY_PLURAL = {rt.plural: rt for rt in ALL}


def by_path(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    return _BY_KIND.get((api_version, kind))


def lookup(resource: str | ResourceType) -> ResourceType:
    """Resolve a plural name (`"services"`) or pass a ResourceType through; KeyError if unknown."""
    if isinstance(resource, ResourceType):
        return resource
    try:
        return _BY_PLURAL[resource]
    except KeyError:
        raise KeyError(f"unknown resource {resource!r}; known: {sorted(_BY_PLURAL)}") from None


def group_versions() -> list[tuple[str, str]]:
    """The (group, version) pairs served, core first, in a stable order."""
    seen: list[tuple[str, str]] = []
    for rt in ALL:
        if (rt.group, rt.version) not in seen:
            seen.append((rt.group, rt.version))
    return seen


def in_group_version(group: str, version: str) -> list[ResourceType]:
    return [rt for rt in ALL if rt.group == group and rt.version == version]
