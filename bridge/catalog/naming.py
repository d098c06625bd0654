"""Names across the two worlds: Kubernetes Service -> Consul service, Consul -> DNS labels.

PURE. Kubernetes -> Consul follows consul-k8s exactly (annotation override, prefix,
`-<namespace>` suffix, `<name>-<sha1(name-address)[:12]>` service IDs) so users can move
from it without relabelling. Consul -> Kubernetes must make a DNS-1123 label from any
Consul name; that mapping is deterministic and its collisions are resolved the same way
every time (the smallest original name keeps the plain label).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from bridge.catalog.model import Service

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


def dns_labels(names: Iterable[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Labels for a set of Consul names, and the collisions that had to be resolved.

    Returns ({consul name: label}, [(loser, winner, label given to the loser)]). The
    smallest name in sort order keeps the plain label; each other one gets a digest suffix.
    """
    result: dict[str, str] = {}
    collisions: list[tuple[str, str, str]] = []
    owners: dict[str, str] = {}
    for name in sorted(set(names)):
        label = dns_label(name)
        if label in owners:
            winner = owners[label]
            alt, attempt = label, 0
            # A digest label can itself be taken (a name may equal one): rehash until free.
            while alt in owners:
                digest = hashlib.sha1(f"{name}#{attempt}".encode() if attempt
                                      else name.encode()).hexdigest()[:8]
                alt = f"{label[:MAX_LABEL - 9].rstrip('-')}-{digest}"
                attempt += 1
            collisions.append((name, winner, alt))
            label = alt
        owners[label] = name
        result[name] = label
    return result, collisions
