"""What one cluster owns in Consul, by the marks the bridge puts on what it writes.

PURE. A bridge registers its cluster's services on a synthetic node (`k8s-sync-<cluster_id>`
or `sync.node_name`), each with the service meta `bridge-owner: <cluster_id>`, and gives the
node the same node meta (`objects.node_operation`). Its leader holds the claim
`bridge/clusters/<cluster_id>` with a session named `bridge <cluster_id> <identity>`
(`ha/claim.py`). `owned()` picks exactly those out of what Consul holds: a neighbour's (another
cluster id sharing the Consul) never carries our marks, and a node of ours that also holds
someone else's registration is kept, only our registrations on it going. `deletions()`
turns the selection into `/v1/txn` deletes: a node of ours as one Node delete (Consul deletes
its services and checks with it), the claim as a KV delete, in as few transactions as the
batch size allows, so that a refusal (a missing ACL rule) leaves everything in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.catalog.plan import OWNER_META
from bridge.ha.claim import claim_key


@dataclass(frozen=True, slots=True, order=True)
class OwnedRegistration:
    node: str
    service_id: str
    name: str


@dataclass(frozen=True)
class Owned:
    """A cluster's entries in Consul; `nodes` go whole, with the registrations on them."""

    cluster_id: str
    registrations: tuple[OwnedRegistration, ...] = ()
    nodes: tuple[str, ...] = ()
    kept_nodes: tuple[tuple[str, str], ...] = ()  # (node, why it stays) for nodes that hold ours
    claim: str = ""  # the claim key, when it exists
    claim_session: str = ""  # the session holding the claim: a bridge of the cluster runs
    sessions: tuple[tuple[str, str], ...] = ()  # (ID, Name) of the cluster's sessions

    @property
    def empty(self) -> bool:
        return not (self.registrations or self.nodes or self.claim or self.sessions)


def owner_filter(cluster_id: str, but_nodes: Iterable[str] = ()) -> str:
    """A bexpr selecting the service nodes marked as `cluster_id`'s, off `but_nodes`.
    Cluster ids are DNS labels and node names are not quoted by Consul: no escaping needed
    beyond what `_quote` does."""
    parts = [f"ServiceMeta[{_quote(OWNER_META)}] == {_quote(cluster_id)}"]
    parts += [f"Node != {_quote(node)}" for node in sorted(set(but_nodes))]
    return " and ".join(parts)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _services(view: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    services = view.get("Services") or {}
    return list(services.values()) if isinstance(services, dict) else list(services)


def _meta(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    meta = raw.get(key) or {}
    return meta if isinstance(meta, dict) else {}


def owned(cluster_id: str, node_views: Mapping[str, Mapping[str, Any] | None],
          elsewhere: Iterable[Mapping[str, Any]], claim: Mapping[str, Any] | None,
          sessions: Iterable[Mapping[str, Any]]) -> Owned:
    """The cluster's entries among: `node_views` (`/v1/catalog/node/<node>` of each node
    that may be ours, None when it does not exist), `elsewhere` (`/v1/catalog/service/<name>`
    entries on other nodes), the claim key's entry (None if absent), and every session."""
    registrations: set[OwnedRegistration] = set()
    nodes: list[str] = []
    kept: list[tuple[str, str]] = []
    for name, view in sorted(node_views.items()):
        if not view:
            continue
        node = view.get("Node") or {}
        node_name = str(node.get("Node") or name) if isinstance(node, dict) else name
        ours = [s for s in _services(view) if _meta(s, "Meta").get(OWNER_META) == cluster_id]
        registrations.update(OwnedRegistration(node_name, str(s.get("ID") or ""), str(s.get("Service") or ""))
                             for s in ours)
        others = len(_services(view)) - len(ours)
        node_ours = isinstance(node, dict) and _meta(node, "Meta").get(OWNER_META) == cluster_id
        if node_ours and not others:
            nodes.append(node_name)
        elif node_ours:
            kept.append((node_name, f"it also holds {others} registration(s) not of cluster {cluster_id}"))
    for entry in elsewhere:
        if _meta(entry, "ServiceMeta").get(OWNER_META) == cluster_id:
            registrations.add(OwnedRegistration(str(entry.get("Node") or ""), str(entry.get("ServiceID") or ""),
                                                str(entry.get("ServiceName") or "")))
    prefix = f"bridge {cluster_id} "
    named = tuple(sorted((str(s.get("ID") or ""), str(s.get("Name") or "")) for s in sessions
                         if str(s.get("Name") or "").startswith(prefix)))
    return Owned(
        cluster_id=cluster_id, registrations=tuple(sorted(registrations)), nodes=tuple(nodes),
        kept_nodes=tuple(kept), claim=claim_key(cluster_id) if claim else "",
        claim_session=str((claim or {}).get("Session") or ""), sessions=named)


@dataclass(frozen=True)
class Deletion:
    """One txn operation and what it deletes, one line each (`consul node k8s-sync-east`)."""

    op: dict[str, Any]
    what: tuple[str, ...]


def registration_line(reg: OwnedRegistration) -> str:
    return f"consul registration {reg.node}/{reg.service_id} ({reg.name})"


def deletions(found: Owned) -> list[Deletion]:
    """The txn deletes of `found`: registrations on nodes that stay, then whole nodes (Consul
    deletes a node's services and checks with it), then the claim."""
    out = [Deletion(
        # Consul vets every service op, a delete too, and refuses an ID without a name.
        {"Service": {"Verb": "delete", "Node": reg.node, "Service": {"ID": reg.service_id, "Service": reg.name}}},
        (registration_line(reg),)) for reg in found.registrations if reg.node not in found.nodes]
    for node in found.nodes:
        on_it = tuple(registration_line(reg) for reg in found.registrations if reg.node == node)
        out.append(Deletion({"Node": {"Verb": "delete", "Node": {"Node": node}}}, (*on_it, f"consul node {node}")))
    if found.claim:
        out.append(Deletion({"KV": {"Verb": "delete", "Key": found.claim}}, (f"consul key {found.claim}",)))
    return out


def batches(items: list[Deletion], batch_size: int) -> list[list[Deletion]]:
    """`items` in transactions of at most `batch_size` operations, in order."""
    size = max(1, batch_size)
    return [items[start:start + size] for start in range(0, len(items), size)]
