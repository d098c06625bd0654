"""Which Consul registrations a Kubernetes snapshot asks for: consul-k8s's rules, per type.

Somewhat over our 600-line mark: the per-type rules, the annotations and Consul's limits on
what they produce decide one registration together, and are read side by side.

PURE. Users must be able to move from consul-k8s catalog sync without relabelling, so the
annotations, names, IDs, tags, meta and per-type address choices follow it:

- `spec.externalIPs` on any type: one instance per external IP, with the Service port;
- LoadBalancer: one per ingress IP (or hostname), or the endpoints with `lb_endpoints`;
- NodePort: one per endpoint, at its node's address (ExternalOnly, InternalOnly,
  ExternalFirst) with the nodePort;
- ClusterIP and headless: one per endpoint address with the endpoint (target) port and a
  readiness check; with `register_cluster_ip`, the ClusterIP itself instead;
- ExternalName: nothing, or with `external_name` the external name as the address;
- with `ingress`, a Service registered by its endpoints (ClusterIP, headless, LoadBalancer
  with `lb_endpoints`) that is the backend of an Ingress path "/" gets one instance instead:
  at the rule's host (with `ingress_lb_ips`, the Ingress's load balancer IP), port 443 when
  a TLS entry of that Ingress lists the host, else 80. Other paths are ignored; a rule with
  no host (or no LB IP) leaves the Service on its endpoints.

Where this module departs from consul-k8s it says so; each departure is a bug of theirs.

Everything derived stays within what Consul accepts (hashicorp/consul
`structs.ValidateServiceMetadata`, `ValidateWeights`, `servicePreApply`), so a Service's
annotations can never make Consul refuse its registrations; what would is left out and
returned as a `Refusal` for the Service (consul-k8s sends it and fails the whole batch):

- a `service-meta-<KEY>` annotation whose key is not `[a-zA-Z0-9_-]+`, is longer than 128
  bytes or starts with `consul-`, or whose value is longer than 512 bytes;
- meta beyond Consul's 64 pairs: the bridge's own keys (and room for the endpoint meta)
  come first, then the Service's ports, then the annotations in key order;
- a `service-weight` that is not an integer from 2 (consul-k8s) to 65535 (Consul, which
  would otherwise store 1 without a word);
- an address Consul refuses for a service (`0.0.0.0`, `::`): that registration.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from bridge.catalog.model import (
    IngressRoute,
    Instance,
    Node,
    Port,
    Service,
    ServiceKey,
    ServiceType,
    Snapshot,
)
from bridge.catalog.naming import SERVICE_NAME_ANNOTATION, consul_service_id, consul_service_name
from bridge.catalog.plan import EXTERNAL_SOURCE, OWNER_META, Registration

SYNC_ANNOTATION = "consul.hashicorp.com/service-sync"
PORT_ANNOTATION = "consul.hashicorp.com/service-port"
TAGS_ANNOTATION = "consul.hashicorp.com/service-tags"
WEIGHT_ANNOTATION = "consul.hashicorp.com/service-weight"
META_ANNOTATION_PREFIX = "consul.hashicorp.com/service-meta-"

NODE_PORT_SYNC_TYPES = ("ExternalOnly", "InternalOnly", "ExternalFirst")

# Consul's limits on what a registration carries (agent/structs/structs.go).
META_MAX_PAIRS = 64
META_KEY_MAX_BYTES = 128
META_VALUE_MAX_BYTES = 512
META_RESERVED_PREFIX = "consul-"
MAX_WEIGHT = 65535
_META_KEY = re.compile(r"[a-zA-Z0-9_-]+")
_ANY_ADDRESSES = frozenset({"0.0.0.0", "::", "[::]"})  # ipaddr.IsAny
# What `_endpoint_meta` may add to a registration: room is kept for all of it.
_ENDPOINT_META = frozenset({"external-k8s-ref-kind", "external-k8s-ref-name", "external-k8s-node-name",
                            "external-k8s-topology-zone", "external-k8s-hostname"})

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True)
class SyncOptions:
    """The settings `desired()` depends on, gathered so the function stays pure."""

    cluster_id: str
    tag: str = "k8s"
    prefix: str = ""
    add_namespace_suffix: bool = False
    default_sync: bool = True
    cluster_ip_services: bool = True
    register_cluster_ip: bool = False
    node_port_sync_type: str = "ExternalOnly"
    lb_endpoints: bool = False
    external_name: bool = False
    not_ready: str = "critical"  # critical: register with a failing check; skip: leave out
    ingress: bool = False
    ingress_lb_ips: bool = False


class Refusal(NamedTuple):
    """Something a Service asks for that Consul would refuse, left out: `reason` is a fixed
    word (a metric label), `message` says what and why."""

    service: ServiceKey
    reason: str  # meta_key, meta_value, meta_count, weight or address
    message: str


class Registrations(NamedTuple):
    """What one Service contributes, why any of it was left out (one line each), and what
    of it Consul would refuse."""

    registrations: tuple[Registration, ...]
    skipped: tuple[str, ...] = ()
    refused: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class Wanted:
    """Every registration this cluster should have, by service ID, a reason for each
    Service or endpoint left out, and what Consul would refuse."""

    registrations: MappingProxyType[str, Registration]
    skipped: tuple[str, ...] = ()
    refused: tuple[Refusal, ...] = ()


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


def parse_weight(value: str | None) -> int | None:
    """consul-k8s's service-weight: an integer greater than 1, and (Consul's DNS weights)
    at most 65535; None when absent or rejected."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    weight = int(text)
    return weight if 1 < weight <= MAX_WEIGHT else None


def meta_key_problem(key: str) -> str | None:
    """Why Consul refuses `key` as a meta key (`validateMetaPair`'s text), or None."""
    if not _META_KEY.fullmatch(key):
        return "Key contains invalid characters"
    if len(key) > META_KEY_MAX_BYTES:  # ASCII by now: characters are bytes
        return f"Key is too long (limit: {META_KEY_MAX_BYTES} characters)"
    if key.startswith(META_RESERVED_PREFIX):
        return f"Key prefix '{META_RESERVED_PREFIX}' is reserved for internal use"
    return None


def sync_enabled(service: Service, default_sync: bool) -> bool:
    explicit = parse_bool(service.annotation(SYNC_ANNOTATION))
    return default_sync if explicit is None else explicit


def _numbered_port(service: Service) -> int | None:
    wanted = (service.annotation(PORT_ANNOTATION) or "").strip()
    if wanted.isascii() and wanted.isdigit() and 0 < int(wanted) < 65536:
        return int(wanted)
    return None


def _wanted_port_name(service: Service) -> str | None:
    """The port name the registration uses: the annotated one, else the first Service port."""
    wanted = (service.annotation(PORT_ANNOTATION) or "").strip()
    if wanted and not (wanted.isascii() and wanted.isdigit()):
        return wanted
    return service.ports[0].name if service.ports else None


def _pick(ports: tuple[Port, ...], name: str | None) -> Port | None:
    for port in ports:
        if port.name == name:
            return port
    return ports[0] if ports else None


def _service_port(service: Service) -> int:
    """The Service-level port (external IPs, load balancers, the ClusterIP)."""
    number = _numbered_port(service)
    if number is not None:
        return number
    port = _pick(service.ports, _wanted_port_name(service))
    return port.port if port else 0


def _endpoint_port(service: Service, instance: Instance) -> int | None:
    number = _numbered_port(service)
    if number is not None:
        return number
    port = _pick(instance.ports, _wanted_port_name(service))
    return port.port if port else None


def _node_port(service: Service) -> int | None:
    number = _numbered_port(service)
    if number is not None:
        return number
    name = _wanted_port_name(service)
    chosen = [p for p in service.ports if p.name == name and p.node_port] or \
        [p for p in service.ports if p.node_port]
    return chosen[0].node_port if chosen else None


def _node_address(node: Node | None, sync_type: str) -> str | None:
    if node is None:
        return None
    if sync_type == "InternalOnly":
        return node.internal_ips[0] if node.internal_ips else None
    if node.external_ips:
        return node.external_ips[0]
    if sync_type == "ExternalFirst" and node.internal_ips:
        return node.internal_ips[0]
    return None


def _service_meta(service: Service, cluster_id: str, refused: list[Refusal]) -> dict[str, str]:
    """The meta every registration of `service` carries, within Consul's limits; what does
    not fit is added to `refused`."""
    meta = {
        "external-source": EXTERNAL_SOURCE,
        "external-k8s-ns": service.key.namespace,
        "external-k8s-name": service.key.name,
        OWNER_META: cluster_id,
    }
    # Room for the pairs each instance adds, whether or not this Service's instances do.
    taken = set(meta) | _ENDPOINT_META
    crowded: list[str] = []
    for port in service.ports:
        # An unnamed port (only possible when it is the only one) gives "port-", as in consul-k8s.
        key = f"port-{port.name}"
        if key in taken or len(taken) < META_MAX_PAIRS:
            meta[key] = str(port.port)
            taken.add(key)
        else:
            crowded.append(f"the meta of port {port.name!r}")
    bad_keys: list[str] = []
    long_values: list[str] = []
    annotated: dict[str, str] = {}
    for key, value in service.annotations:
        if not key.startswith(META_ANNOTATION_PREFIX) or len(key) == len(META_ANNOTATION_PREFIX):
            continue
        meta_key = key[len(META_ANNOTATION_PREFIX):]
        problem = meta_key_problem(meta_key)
        if problem is not None:
            bad_keys.append(f"{key} ({problem})")
        elif len(value.encode()) > META_VALUE_MAX_BYTES:
            long_values.append(f"{key} ({len(value.encode())} bytes)")
        else:
            annotated[meta_key] = value
    for key in sorted(annotated):  # overriding a key we set takes no room (as consul-k8s)
        if key in taken or len(taken) < META_MAX_PAIRS:
            meta[key] = annotated[key]
            taken.add(key)
        else:
            crowded.append(META_ANNOTATION_PREFIX + key)
    item = service.key
    if bad_keys:
        refused.append(Refusal(item, "meta_key", "annotations left out, Consul refuses their meta keys: "
                               + ", ".join(bad_keys)))
    if long_values:
        refused.append(Refusal(item, "meta_value", "annotations left out, Consul refuses meta values over "
                               f"{META_VALUE_MAX_BYTES} bytes: " + ", ".join(long_values)))
    if crowded:
        refused.append(Refusal(item, "meta_count", f"left out, Consul takes at most {META_MAX_PAIRS} meta "
                               "pairs (the bridge's own and room for endpoint meta first): " + ", ".join(crowded)))
    return meta


# Endpoint meta keys with few distinct values (not the pod name or hostname).
_SHARED_META = frozenset({"external-k8s-ref-kind", "external-k8s-node-name",
                          "external-k8s-topology-zone"})
_PAIRS: dict[tuple[str, str], tuple[str, str]] = {}


def _pair(key: str, value: str) -> tuple[str, str]:
    """One shared (key, value) tuple per distinct pair; bounded: emptied when full."""
    pair = (key, value)
    found = _PAIRS.get(pair)
    if found is None:
        if len(_PAIRS) >= 1 << 16:
            _PAIRS.clear()  # sharing is lost for a while, nothing else
        found = _PAIRS.setdefault(pair, pair)
    return found


def _endpoint_meta(instance: Instance, node: Node | None = None) -> dict[str, str]:
    meta: dict[str, str] = {}
    if instance.target:
        meta["external-k8s-ref-kind"] = "Pod"
        meta["external-k8s-ref-name"] = instance.target
    if instance.node_name:
        meta["external-k8s-node-name"] = instance.node_name
    zone = instance.zone or (node.zone if node else "")
    if zone:
        meta["external-k8s-topology-zone"] = zone
    if instance.hostname:
        meta["external-k8s-hostname"] = instance.hostname
    return meta


def ingress_address(routes: Iterable[IngressRoute], lb_ips: bool = False) -> tuple[str, int] | None:
    """Where an Ingress publishes a Service, as consul-k8s's `-enable-ingress` reads it: a
    path "/" to the Service, at the rule's host (or the Ingress's LB IP with `lb_ips`), on
    443 when a TLS entry lists the rule's host, else 80; None if no route gives an address.

    consul-k8s keeps a map that each Ingress event overwrites, so the last rule seen wins,
    and a later rule without a host (or LB IP) takes an earlier one's place and sends the
    Service back to its endpoints. Departures, all bugs of that map: `routes` are taken in
    (namespace, Ingress, rule, path) order and the last one *with* an address wins, so the
    answer does not depend on event order; a deleted or edited Ingress stops counting at
    once (consul-k8s keeps a stale host until the Service itself next changes); with
    `lb_ips` the first LB entry that has an IP is used (consul-k8s skips the rule when the
    first entry is a hostname, and panics when the Ingress has no LB status yet); when one
    rule sends "/" to two Services both get the host (consul-k8s only the last)."""
    chosen: tuple[str, int] | None = None
    for route in routes:
        if route.path != "/":
            continue
        address = (route.lb_ips[0] if route.lb_ips else "") if lb_ips else route.host
        if address:
            chosen = (address, 443 if route.tls else 80)
    return chosen


def _consul_name(service: Service, options: SyncOptions, skipped: list[str]) -> str | None:
    """The Consul service name, or None (with the reason added to `skipped`) when the
    annotation is bad. As consul-k8s: trimmed, 1 to 255 characters."""
    raw = service.annotation(SERVICE_NAME_ANNOTATION)
    if raw is not None:
        name = raw.strip()
        if not 1 <= len(name) <= 255:
            skipped.append(f"{service.key}: annotation {SERVICE_NAME_ANNOTATION} must be "
                           f"1-255 characters, got {raw!r}")
            return None
    return consul_service_name(service, options.prefix, options.add_namespace_suffix)


def registrations_for(service: Service, options: SyncOptions,
                      nodes: dict[str, Node] | None = None,
                      routes: Iterable[IngressRoute] = ()) -> Registrations:
    """The instances one Service contributes (none if it is not synced), with the reasons
    for what it asks that cannot be registered. `routes` are the Ingress routes of the
    snapshot (those to other Services are ignored)."""
    skipped: list[str] = []
    refused: list[Refusal] = []
    unusable: list[str] = []
    found = _registrations(service, options, nodes or {}, routes, skipped, refused, unusable)
    if unusable:
        refused.append(Refusal(service.key, "address", "not registered, Consul refuses the service address "
                               "(Invalid service address): " + ", ".join(sorted(set(unusable)))))
    return Registrations(tuple(found), tuple(skipped), tuple(refused))


def _synced_name(service: Service, options: SyncOptions, skipped: list[str]) -> str | None:
    """The Consul name `service` is registered under, or None when it is not synced (its
    annotation, its type, or a bad name annotation, whose reason is added to `skipped`)."""
    if not sync_enabled(service, options.default_sync):
        return None
    if service.type in (ServiceType.CLUSTER_IP, ServiceType.HEADLESS) \
            and not options.cluster_ip_services:
        return None
    if service.type is ServiceType.EXTERNAL_NAME and not options.external_name:
        return None
    return _consul_name(service, options, skipped)


def synced_services(snapshot: Snapshot, options: SyncOptions,
                    namespaces: Collection[str] | None = None) -> frozenset[tuple[str, str]]:
    """(Consul name, namespace) of every Service the sync registers (of `namespaces`;
    None: all), whether or not it has an instance now: what consul-k8s's registrations
    are matched against on adoption."""
    found: set[tuple[str, str]] = set()
    for key, service in snapshot.services.items():
        if namespaces is not None and key.namespace not in namespaces:
            continue
        name = _synced_name(service, options, [])
        if name is not None:
            found.add((name, key.namespace))
    return frozenset(found)


def _registrations(service: Service, options: SyncOptions, nodes: dict[str, Node],
                   routes: Iterable[IngressRoute], skipped: list[str],
                   refused: list[Refusal], unusable: list[str]) -> list[Registration]:
    name = _synced_name(service, options, skipped)
    if name is None:
        return []
    tags = (options.tag, *parse_tags(service.annotation(TAGS_ANNOTATION) or ""))
    base = _service_meta(service, options.cluster_id, refused)
    weight_text = service.annotation(WEIGHT_ANNOTATION)
    weight = parse_weight(weight_text)
    if weight_text is not None and weight is None:
        refused.append(Refusal(service.key, "weight", f"annotation {WEIGHT_ANNOTATION} must be an "
                               f"integer from 2 to {MAX_WEIGHT}, got {weight_text[:40]!r}; weight not applied"))
    out: list[Registration] = []

    # The meta as pairs, the Service's shared by all its instances (and repeated values
    # shared across Services): 50,000 registrations hold some 450,000 pairs otherwise.
    base_pairs = {key: _pair(key, value) for key, value in base.items() if key != OWNER_META}
    owner = _pair(OWNER_META, options.cluster_id)

    def add(address: str, port: int, meta: dict[str, str], *, id_address: str | None = None,
            check: str = "", weighted: bool = False) -> None:
        if address in _ANY_ADDRESSES:
            unusable.append(address)
            return
        pairs = base_pairs.copy()
        for key, value in meta.items():
            pairs[key] = _pair(key, value) if key in _SHARED_META else (key, value)
        pairs[OWNER_META] = owner
        out.append(Registration(
            service_id=consul_service_id(name, id_address or address), name=name, address=address,
            port=port, tags=tags, meta=tuple(sorted(pairs.values())), check_status=check,
            weight=weight if weighted and weight else 1))

    if service.external_ips:
        for ip in service.external_ips:
            add(ip, _service_port(service), {}, weighted=True)
        return out
    if service.type is ServiceType.EXTERNAL_NAME:
        add(service.external_name, _service_port(service), {})
        return out
    if service.type is ServiceType.LOAD_BALANCER and not options.lb_endpoints:
        for address in service.load_balancer_ingress:
            add(address, _service_port(service), {}, weighted=True)
        return out
    if service.type is ServiceType.CLUSTER_IP and options.register_cluster_ip:
        for ip in service.cluster_ips:
            add(ip, _service_port(service), {})
        return out
    if service.type is ServiceType.NODE_PORT:
        node_port = _node_port(service)
        if node_port is None:
            skipped.append(f"{service.key}: no nodePort allocated yet")
            return out
        for instance in service.instances:
            node = nodes.get(instance.node_name)
            at = _node_address(node, options.node_port_sync_type)
            if at is None:
                if instance.node_name:
                    skipped.append(f"{service.key} {instance.address}: node "
                                   f"{instance.node_name!r} has no "
                                   f"{options.node_port_sync_type} address")
                continue
            add(at, node_port, _endpoint_meta(instance, node), id_address=instance.address)
        return out
    published = ingress_address((r for r in routes if r.service_key == service.key),
                                options.ingress_lb_ips) if options.ingress else None
    if published is not None:
        # consul-k8s replaces every endpoint's address with the Ingress's and de-duplicates,
        # so one instance remains, with the first endpoint's meta and readiness, and only
        # while the Service has endpoints. Departure: the check passes while any endpoint
        # is ready (theirs follows whichever endpoint its map iteration met first).
        candidates = [i for i in service.instances if i.ready or options.not_ready != "skip"]
        if candidates:
            ready = [i for i in candidates if i.ready]
            address, port = published
            add(address, port, _endpoint_meta((ready or candidates)[0]),
                check="passing" if ready else "critical")
        return out
    for instance in service.instances:
        if not instance.ready and options.not_ready == "skip":
            continue
        target_port = _endpoint_port(service, instance)
        if target_port is None:
            skipped.append(f"{service.key} {instance.address}: no port")
            continue
        add(instance.address, target_port, _endpoint_meta(instance),
            check="passing" if instance.ready else "critical")
    return out


_Entry = tuple[Service, object, tuple[Registration, ...], tuple[str, ...], tuple[Refusal, ...]]


class Memo:
    """What `desired()` computed last time, kept to do only what changed the next time.

    Per Service: the registrations, skip reasons and refusals computed for it, reused while it is
    the same object with the same context (the sources keep an unchanged Service as the
    same object between snapshots). And the result itself (service ID -> registration,
    with the Service owning each ID), patched for the Services that changed: a pass over
    10,000 Services and 50,000 registrations then costs a look-up per Service. Bound to
    one `SyncOptions`: other options start afresh.
    """

    def __init__(self) -> None:
        self.options: SyncOptions | None = None
        self.entries: dict[ServiceKey, _Entry] = {}
        self.wanted: dict[str, Registration] = {}
        self.owner: dict[str, ServiceKey] = {}
        self.reasons: dict[ServiceKey, tuple[str, ...]] = {}  # only Services with some
        self.refused: dict[ServiceKey, tuple[Refusal, ...]] = {}  # only Services with some
        self.clean = False  # `wanted` is whole and has no duplicate ID: patch it
        # Service IDs whose registration the last call added, changed or removed; None
        # when it rebuilt everything.
        self.touched: set[str] | None = None


def _context(service: Service, nodes: dict[str, Node],
             routes: Sequence[IngressRoute]) -> object:
    """What besides the Service its registrations depend on: its nodes for NodePort
    Services, the Ingress routes to it."""
    if service.type is ServiceType.NODE_PORT:
        return tuple(nodes.get(i.node_name) for i in service.instances), tuple(routes)
    return tuple(routes)


def desired(snapshot: Snapshot, options: SyncOptions, memo: Memo | None = None) -> Wanted:
    """Every registration this cluster should have, by service ID, with the reasons for
    what was left out and what Consul would refuse. Where two Services ask for one ID, the
    first key in sort order wins and the other is reported skipped.

    With a `memo`, only the Services changed since its last use are computed again, and
    the registrations are a read-only view of the memo's own map, valid until its next use.
    """
    if memo is None:
        memo = Memo()
    if memo.options != options:
        memo.options, memo.entries, memo.clean = options, {}, False
    nodes = dict(snapshot.nodes)
    routes: dict[ServiceKey, list[IngressRoute]] = {}
    if options.ingress:
        for route in snapshot.ingresses:
            routes.setdefault(route.service_key, []).append(route)
    services = snapshot.services
    entries = memo.entries
    stale: list[tuple[ServiceKey, object]] = []
    for key, service in services.items():
        known = entries.get(key)
        # Without ingress routes, only NodePort Services depend on more than themselves.
        context = _context(service, nodes, routes.get(key, ())) \
            if routes or service.type is ServiceType.NODE_PORT else ()
        if known is None or known[0] is not service or known[1] != context:
            stale.append((key, context))
    gone = [key for key in entries if key not in services]
    touched: set[str] = set()
    memo.touched = touched
    if not (memo.clean and _patch(memo, touched, services, stale, gone, options, nodes, routes)):
        memo.touched = None
        _rebuild(memo, services, stale, gone, options, nodes, routes)
    reasons, refusals = memo.reasons, memo.refused
    skipped = tuple(reason for key in sorted(reasons) for reason in reasons[key])
    refused = tuple(refusal for key in sorted(refusals) for refusal in refusals[key])
    return Wanted(MappingProxyType(memo.wanted), skipped, refused)


def _compute(memo: Memo, key: ServiceKey, service: Service, context: object,
             options: SyncOptions, nodes: dict[str, Node],
             routes: dict[ServiceKey, list[IngressRoute]]) -> tuple[Registration, ...]:
    """`service`'s registrations, recorded in the memo with its skip reasons and refusals."""
    registrations, reasons, refused = registrations_for(service, options, nodes, routes.get(key, ()))
    memo.entries[key] = (service, context, registrations, reasons, refused)
    if reasons:
        memo.reasons[key] = reasons
    else:
        memo.reasons.pop(key, None)
    if refused:
        memo.refused[key] = refused
    else:
        memo.refused.pop(key, None)
    return registrations


def _patch(memo: Memo, touched: set[str], services: Mapping[ServiceKey, Service],
           stale: list[tuple[ServiceKey, object]], gone: list[ServiceKey],
           options: SyncOptions, nodes: dict[str, Node],
           routes: dict[ServiceKey, list[IngressRoute]]) -> bool:
    """Bring the memo's result up to date for the Services that changed; False (and the
    memo no longer clean) when a new ID is someone else's: then only a rebuild in key
    order says who wins. `touched` gets every service ID added, changed or removed."""
    wanted, owner = memo.wanted, memo.owner
    for key in gone:
        _drop(memo, key)
        memo.reasons.pop(key, None)
        memo.refused.pop(key, None)
    for key, context in stale:
        _drop(memo, key)
        for registration in _compute(memo, key, services[key], context, options, nodes, routes):
            sid = registration.service_id
            if sid in wanted:
                memo.clean = False
                return False
            wanted[sid] = registration
            owner[sid] = key
            touched.add(sid)
    return True


def _drop(memo: Memo, key: ServiceKey) -> None:
    known = memo.entries.pop(key, None)
    if known is not None:
        for registration in known[2]:
            if memo.owner.get(registration.service_id) == key:
                del memo.owner[registration.service_id]
                del memo.wanted[registration.service_id]
                if memo.touched is not None:
                    memo.touched.add(registration.service_id)


def _rebuild(memo: Memo, services: Mapping[ServiceKey, Service],
             stale: list[tuple[ServiceKey, object]], gone: list[ServiceKey],
             options: SyncOptions, nodes: dict[str, Node],
             routes: dict[ServiceKey, list[IngressRoute]]) -> None:
    """The whole result in key order, reusing what the memo has for unchanged Services."""
    contexts = dict(stale)
    for key in gone:
        memo.entries.pop(key, None)  # `_patch` may have dropped it already
    wanted: dict[str, Registration] = {}
    owner: dict[str, ServiceKey] = {}
    duplicates: dict[ServiceKey, list[str]] = {}
    for key in sorted(services):
        if key in contexts:
            _compute(memo, key, services[key], contexts[key], options, nodes, routes)
        for registration in memo.entries[key][2]:
            sid = registration.service_id
            if sid in wanted:
                duplicates.setdefault(key, []).append(f"{key}: duplicate service ID {sid}")
                continue
            wanted[sid] = registration
            owner[sid] = key
    memo.reasons = {key: entry[3] for key, entry in memo.entries.items() if entry[3]}
    memo.refused = {key: entry[4] for key, entry in memo.entries.items() if entry[4]}
    for key, reasons in duplicates.items():
        memo.reasons[key] = memo.entries[key][3] + tuple(reasons)
    memo.wanted, memo.owner, memo.clean = wanted, owner, not duplicates
