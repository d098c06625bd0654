"""What Consul should hold for this cluster, and the difference from what it holds.

PURE. `desired()` turns the Kubernetes snapshot into registrations the way consul-k8s
does (same names, IDs, tags and meta, so users can migrate); `diff()` compares them with
what the Consul sink reports as ours and yields only the writes needed. An unchanged
world gives an empty plan, which is what makes restarts and periodic resyncs write nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.catalog.model import Instance, Service, ServiceType, Snapshot, frozen_map
from bridge.catalog.naming import consul_service_id, consul_service_name

SYNC_ANNOTATION = "consul.hashicorp.com/service-sync"
PORT_ANNOTATION = "consul.hashicorp.com/service-port"
TAGS_ANNOTATION = "consul.hashicorp.com/service-tags"
META_ANNOTATION_PREFIX = "consul.hashicorp.com/service-meta-"

OWNER_META = "bridge-owner"
EXTERNAL_SOURCE = "kubernetes"
CHECK_NAME = "Kubernetes Readiness Check"
CHECK_TYPE = "kubernetes-readiness"

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True, slots=True, order=True)
class Registration:
    """One service instance on our synthetic node, with its readiness check."""

    service_id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    check_status: str = "passing"  # passing | critical

    @property
    def namespace(self) -> str:
        return dict(self.meta).get("external-k8s-ns", "")

    @property
    def check_id(self) -> str:
        return f"{self.namespace}/{self.service_id}"


@dataclass(frozen=True)
class Plan:
    create: tuple[Registration, ...] = ()
    update: tuple[Registration, ...] = ()
    delete: tuple[Registration, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)

    def __len__(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)


@dataclass(frozen=True)
class SyncOptions:
    """The settings `desired()` depends on, gathered so the function stays pure."""

    cluster_id: str
    tag: str = "k8s"
    prefix: str = ""
    add_namespace_suffix: bool = False
    default_sync: bool = True
    skipped: list[str] = field(default_factory=list, compare=False)


def parse_bool(value: str | None) -> bool | None:
    """Go's strconv.ParseBool, which consul-k8s uses for its annotations; None if invalid."""
    if value is None:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def parse_tags(value: str) -> list[str]:
    """consul-k8s's service-tags: comma separated, `\\,` escapes a comma, blanks dropped."""
    tags: list[str] = []
    current = ""
    i = 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] == ",":
            current += ","
            i += 2
            continue
        if value[i] == ",":
            tags.append(current.strip())
            current = ""
        else:
            current += value[i]
        i += 1
    tags.append(current.strip())
    return [t for t in tags if t]


def sync_enabled(service: Service, default_sync: bool) -> bool:
    explicit = parse_bool(service.annotation(SYNC_ANNOTATION))
    return default_sync if explicit is None else explicit


def _instance_port(service: Service, instance: Instance) -> int | None:
    """The endpoint (target) port to register: the annotated port, else the first one."""
    wanted = (service.annotation(PORT_ANNOTATION) or "").strip()
    if wanted.isascii() and wanted.isdigit():
        return int(wanted)
    names = [wanted] if wanted else [p.name for p in service.ports[:1]]
    for name in names:
        for port in instance.ports:
            if port.name == name:
                return port.port
    return instance.ports[0].port if instance.ports else None


def _service_meta(service: Service, cluster_id: str) -> dict[str, str]:
    meta = {
        "external-source": EXTERNAL_SOURCE,
        "external-k8s-ns": service.key.namespace,
        "external-k8s-name": service.key.name,
        OWNER_META: cluster_id,
    }
    for port in service.ports:
        # An unnamed port (only possible when it is the only one) gives "port-", as in consul-k8s.
        meta[f"port-{port.name}"] = str(port.port)
    return meta


def _annotation_meta(service: Service) -> dict[str, str]:
    return {key[len(META_ANNOTATION_PREFIX):]: value for key, value in service.annotations
            if key.startswith(META_ANNOTATION_PREFIX) and len(key) > len(META_ANNOTATION_PREFIX)}


def registrations_for(service: Service, options: SyncOptions) -> list[Registration]:
    """The instances one Service contributes (none if it is not synced)."""
    if not sync_enabled(service, options.default_sync):
        return []
    if service.type is ServiceType.EXTERNAL_NAME:
        return []
    name = consul_service_name(service, options.prefix, options.add_namespace_suffix)
    tags = (options.tag, *parse_tags(service.annotation(TAGS_ANNOTATION) or ""))
    base_meta = _service_meta(service, options.cluster_id)
    user_meta = _annotation_meta(service)
    out: list[Registration] = []
    for instance in service.instances:
        port = _instance_port(service, instance)
        if port is None:
            options.skipped.append(f"{service.key} {instance.address}: no port")
            continue
        # consul-k8s order: built-in meta, then annotations, then the endpoint's own keys.
        meta = {**base_meta, **user_meta}
        if instance.target:
            meta["external-k8s-ref-kind"] = "Pod"
            meta["external-k8s-ref-name"] = instance.target
        if instance.node_name:
            meta["external-k8s-node-name"] = instance.node_name
        if instance.zone:
            meta["external-k8s-topology-zone"] = instance.zone
        # The owner marker is ours alone: no annotation may forge or drop it.
        meta[OWNER_META] = options.cluster_id
        out.append(Registration(
            service_id=consul_service_id(name, instance.address),
            name=name,
            address=instance.address,
            port=port,
            tags=tags,
            meta=frozen_map(meta),
            check_status="passing" if instance.ready else "critical",
        ))
    return out


def desired(snapshot: Snapshot, options: SyncOptions) -> dict[str, Registration]:
    """Every registration this cluster should have, by service ID."""
    wanted: dict[str, Registration] = {}
    for key in sorted(snapshot.services):
        for registration in registrations_for(snapshot.services[key], options):
            if registration.service_id in wanted:
                options.skipped.append(f"{key}: duplicate service ID {registration.service_id}")
                continue
            wanted[registration.service_id] = registration
    return wanted


def diff(wanted: Mapping[str, Registration], actual: Mapping[str, Registration]) -> Plan:
    """Only the writes that make `actual` equal `wanted`."""
    create = [r for sid, r in wanted.items() if sid not in actual]
    update = [r for sid, r in wanted.items() if sid in actual and actual[sid] != r]
    delete = [r for sid, r in actual.items() if sid not in wanted]
    return Plan(tuple(sorted(create)), tuple(sorted(update)), tuple(sorted(delete)))


def names(registrations: Iterable[Registration]) -> set[str]:
    return {r.name for r in registrations}
