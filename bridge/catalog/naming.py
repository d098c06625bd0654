"""Names across the two worlds: Kubernetes Service -> Consul service, Consul -> DNS labels
and Kubernetes object names.

PURE. Kubernetes -> Consul follows consul-k8s exactly (annotation override, prefix,
`-<namespace>` suffix, `<name>-<sha1(name-address)[:12]>` service IDs) so users can move
from it without relabelling. Consul -> Kubernetes must make a DNS-1123 label from any
Consul name (the DNS name); that mapping is deterministic and its collisions are resolved
the same way every time (the smallest original name keeps the plain label). A Service
*object* name must also start with a letter (a DNS-1035 label): a label that does not
(`1password`) is written as `consul-<label>`, and the names already valid keep theirs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable

from bridge.catalog.model import Service, ServiceKey

SERVICE_NAME_ANNOTATION = "consul.hashicorp.com/service-name"
MAX_LABEL = 63
_INVALID = re.compile(r"[^a-z0-9-]+")


def consul_service_name(service: Service, prefix: str, add_namespace_suffix: bool) -> str:
    """The Consul name of a Kubernetes Service, as consul-k8s computes it."""
    override = (service.annotation(SERVICE_NAME_ANNOTATION) or "").strip()
    if override:
        return override
    name = f"{prefix}{service.key.name}"
    if add_namespace_suffix:
        name = f"{name}-{service.key.namespace}"
    return name


def consul_service_id(service_name: str, address: str) -> str:
    """consul-k8s's deterministic instance ID, so a migration re-registers in place."""
    digest = hashlib.sha1(f"{service_name}-{address}".encode()).hexdigest()[:12]
    return f"{service_name}-{digest}"


def dns_label(name: str) -> str:
    """A DNS-1123 label for any Consul service name: lowercase, invalid runs become '-',
    trimmed to 63 characters with no leading or trailing '-'."""
    label = _INVALID.sub("-", name.lower()).strip("-")
    if len(label) > MAX_LABEL:
        # Keep names distinguishable after truncation: a short digest of the original.
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        label = f"{label[:MAX_LABEL - 9].rstrip('-')}-{digest}"
    return label or "x-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def _unique(names: Iterable[str], derive: Callable[[str], str],
            taken: dict[str, str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """`derive(name)` for each name in sort order, unless taken (`taken`: label -> owner):
    then that label with a digest of the name, rehashed until free. Returns
    ({name: label}, [(loser, winner, label given to the loser)])."""
    result: dict[str, str] = {}
    collisions: list[tuple[str, str, str]] = []
    for name in sorted(set(names)):
        label = derive(name)
        if label in taken:
            winner = taken[label]
            alt, attempt = label, 0
            # A digest label can itself be taken (a name may equal one): rehash until free.
            while alt in taken:
                digest = hashlib.sha1(f"{name}#{attempt}".encode() if attempt
                                      else name.encode()).hexdigest()[:8]
                alt = f"{label[:MAX_LABEL - 9].rstrip('-')}-{digest}"
                attempt += 1
            collisions.append((name, winner, alt))
            label = alt
        taken[label] = name
        result[name] = label
    return result, collisions


def dns_labels(names: Iterable[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Labels for a set of Consul names, and the collisions that had to be resolved.

    Returns ({consul name: label}, [(loser, winner, label given to the loser)]). The
    smallest name in sort order keeps the plain label; each other one gets a digest suffix.
    """
    return _unique(names, dns_label, {})


NAMESPACE_META = "external-k8s-ns"
NAME_META = "external-k8s-name"
# Set by whoever registers a service in Consul, to choose its namespace under cluster.local.
NAMESPACE_OVERRIDE_META = "k8s-namespace"


def consul_service_key(meta: dict[str, str], label: str, default_namespace: str) -> ServiceKey:
    """Where a Consul instance answers under cluster.local: another bridge's registration in
    its original namespace and name (`external-k8s-ns`, `external-k8s-name`), otherwise in
    the namespace its `k8s-namespace` meta names, or `default_namespace`, under `label` (the
    DNS label of its Consul name, `dns_labels`)."""
    override = meta.get(NAMESPACE_OVERRIDE_META)
    namespace = meta.get(NAMESPACE_META) or (dns_label(override) if override else default_namespace)
    name = (meta.get(NAME_META) or label) if NAMESPACE_META in meta else label
    return ServiceKey(namespace, name)


KUBE_NAME_PREFIX = "consul-"
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def is_kube_service_name(name: str) -> bool:
    """A DNS-1035 label: what the API server takes as a Service name."""
    return len(name) <= MAX_LABEL and _DNS1035_LABEL.fullmatch(name) is not None


def kube_service_name(label: str) -> str:
    """The Service object name for a DNS label that is not one (it starts with a digit, or,
    from another bridge's `external-k8s-name`, is no label at all): the label made one,
    behind `consul-`, a longer result cut to 63 characters with a digest of the label."""
    name = KUBE_NAME_PREFIX + dns_label(label)
    if len(name) > MAX_LABEL:
        digest = hashlib.sha1(label.encode()).hexdigest()[:8]
        name = f"{name[:MAX_LABEL - 9].rstrip('-')}-{digest}"
    return name


def kube_service_names(labels: Iterable[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Service object names for the DNS labels of one namespace: each valid one is its own;
    the others `kube_service_name`, a name already taken getting a digest suffix as in
    `dns_labels`. Returns ({label: object name}, collisions as `dns_labels` does)."""
    wanted = set(labels)
    plain = {label: label for label in wanted if is_kube_service_name(label)}
    derived, collisions = _unique(wanted - plain.keys(), kube_service_name, dict(plain))
    return {**plain, **derived}, collisions
