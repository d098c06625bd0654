"""`bridge purge`: everything one cluster's bridge left in Consul (and, with `sync.to_k8s`, in
Kubernetes), listed, and deleted only when asked to.

What is the cluster's is decided by the rules the bridge writes by: in Consul the marks
`consul/owned.py` reads (owner meta, the synthetic node, the claim and its sessions); in
Kubernetes the `managed-by` label `kube/materialise.py` sets on every Service and
EndpointSlice it creates. Without `yes` nothing is changed: each entry is one "would delete"
line, then a summary. With `yes`, the Consul entries go in `/v1/txn` transactions (as the
sink writes, through the same client, so the same TLS and ACL settings apply), then the
sessions, then the Kubernetes objects, each printed as it is deleted. A bridge of the cluster
still running (a session holds its claim) would register everything again: `yes` refuses
then, before anything is deleted. A refusal by Consul (a missing ACL rule) stops the purge
with Consul's text; deletes that fit one transaction are then all undone by Consul.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bridge.catalog.plan import OWNER_META
from bridge.config import Settings
from bridge.consul.client import ConsulClient, TxnRolledBack
from bridge.consul.owned import Deletion, Owned, batches, deletions, owned, owner_filter
from bridge.errors import BridgeError, Denied
from bridge.ha.claim import claim_key
from bridge.kube.client import ENDPOINT_SLICES, SERVICES, KubeClient, Resource
from bridge.kube.materialise import ObjectKey, is_ours, object_item
from bridge.kube.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from bridge.retry import Backoff, retrying

T = TypeVar("T")

PAGE = 500  # objects per Kubernetes list page


class PurgeRefused(BridgeError):
    """The purge cannot go on: a bridge of the cluster runs, or Consul or Kubernetes said no."""


@dataclass
class Holdings:
    """What the cluster holds: in Consul, and the Kubernetes objects (deleted in this order:
    slices, then the Services they belong to)."""

    consul: Owned
    kubernetes: list[ObjectKey] = field(default_factory=list)

    def lines(self) -> Iterator[str]:
        for deletion in deletions(self.consul):
            yield from deletion.what
        for session_id, name in self.consul.sessions:
            yield session_line(session_id, name)
        for key in self.kubernetes:
            yield f"kubernetes {object_item(key)}"

    @property
    def empty(self) -> bool:
        return self.consul.empty and not self.kubernetes


def session_line(session_id: str, name: str) -> str:
    return f"consul session {session_id} ({name})"


def summary(lines: list[str]) -> str:
    """How many of each kind the lines name: `consul: 2 registrations, 1 node; kubernetes:
    1 endpointslice, 2 services`."""
    counts: dict[str, Counter[str]] = {}
    for line in lines:
        system, kind = line.split()[:2]
        counts.setdefault(system, Counter())[kind.removesuffix("s")] += 1
    return "; ".join(f"{system}: " + ", ".join(f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in kinds.items())
                     for system, kinds in counts.items())


class Purge:
    """One purge run: `find()` reads, `delete()` deletes what was found; `say` prints a line."""

    def __init__(self, settings: Settings, say: Callable[[str], None],
                 consul: ConsulClient | None = None, kube: KubeClient | None = None) -> None:
        self.settings = settings
        self._say = say
        self._consul = consul or ConsulClient(settings.consul)
        self._kube = kube
        if self._kube is None and settings.sync.to_k8s:
            self._kube = KubeClient(settings.kubernetes)
        self._retrying = retrying(threading.Event(), Backoff(base=0.2, cap=2.0), attempts=4)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, a transient failure (a 5xx, a dropped connection) tried again."""
        return self._retrying(fn, *args)

    def find(self) -> Holdings:
        return Holdings(self._find_consul(), self._find_kubernetes())

    def _find_consul(self) -> Owned:
        cluster_id = self.settings.cluster_id
        candidates = {self.settings.node_name}
        candidates.update(str(n.get("Node") or "") for n in
                          self._call(self._consul.nodes_with_meta, OWNER_META, cluster_id))
        candidates.discard("")
        views = {node: self._call(self._consul.node_services, node) for node in sorted(candidates)}
        elsewhere: list[dict[str, Any]] = []
        expr = owner_filter(cluster_id, but_nodes=candidates)
        for name in self._call(self._consul.service_names, expr):
            elsewhere.extend(self._call(self._consul.service_nodes, name, expr))
        claim = self._call(self._consul.kv_get, claim_key(cluster_id))
        sessions = self._call(self._consul.sessions)
        return owned(cluster_id, views, elsewhere, claim, sessions)

    def _find_kubernetes(self) -> list[ObjectKey]:
        if self._kube is None:
            return []
        found: list[ObjectKey] = []
        for resource in (ENDPOINT_SLICES, SERVICES):
            found.extend(sorted(self._ours(resource)))
        return found

    def _ours(self, resource: Resource) -> Iterator[ObjectKey]:
        assert self._kube is not None
        cont: str | None = None
        while True:
            page = self._call(self._list, resource, cont)
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                labels = meta.get("labels") or {}
                # The rule the Kubernetes sink itself goes by, whatever the server selected.
                if isinstance(labels, dict) and is_ours(labels.items()):
                    yield (resource.plural, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            cont = (page.get("metadata") or {}).get("continue") or None
            if not cont:
                return

    def _list(self, resource: Resource, cont: str | None) -> dict[str, Any]:
        assert self._kube is not None
        return self._kube.list_page(resource, limit=PAGE, cont=cont,
                                    label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")

    def delete(self, found: Holdings) -> int:
        """Deletes what `find()` found, printing each entry as it goes; the count deleted."""
        if found.consul.claim_session:
            raise PurgeRefused(
                f"a bridge of cluster {found.consul.cluster_id} is running: session "
                f"{found.consul.claim_session} holds {found.consul.claim}; stop it first "
                f"(it would register everything again), then purge; nothing was deleted")
        done = 0
        for batch in batches(deletions(found.consul), self.settings.sync.batch_size):
            self._txn(batch, done)
            for deletion in batch:
                for line in deletion.what:
                    self._say(f"deleted {line}")
                    done += 1
        for session_id, name in found.consul.sessions:
            self._call(self._consul.session_destroy, session_id)
            self._say(f"deleted {session_line(session_id, name)}")
            done += 1
        for plural, namespace, name in found.kubernetes:
            assert self._kube is not None
            try:
                self._call(self._kube.write, "delete", plural, namespace, name)
            except Denied as exc:
                raise PurgeRefused(f"Kubernetes refused: {exc}; {_so_far(done)}") from None
            self._say(f"deleted kubernetes {object_item((plural, namespace, name))}")
            done += 1
        return done

    def _txn(self, batch: list[Deletion], done: int) -> None:
        try:
            self._call(self._consul.txn, [d.op for d in batch])
        except Denied as exc:
            raise PurgeRefused(f"Consul refused: {exc}; {_so_far(done)}") from None
        except TxnRolledBack as exc:
            raise PurgeRefused(f"Consul rolled the deletion back: {exc}; {_so_far(done)}") from None

    def close(self) -> None:
        if self._consul.login is not None:
            self._consul.login.stop()  # the login's token, deleted rather than left to its TTL
        self._consul.close()
        if self._kube is not None:
            self._kube.close()


def _so_far(done: int) -> str:
    return f"{done} entries were deleted before" if done else "nothing was deleted"


def run(settings: Settings, *, yes: bool, say: Callable[[str], None]) -> int:
    """The command: list (and with `yes`, delete) what cluster `settings.cluster_id` owns."""
    purge = Purge(settings, say)
    try:
        found = purge.find()
        cluster = settings.cluster_id
        for node, why in found.consul.kept_nodes:
            say(f"keeping consul node {node}: {why}")
        if found.empty:
            say(f"nothing to delete for cluster {cluster}")
            return 0
        lines = list(found.lines())
        if not yes:
            for line in lines:
                say(f"would delete {line}")
            if found.consul.claim_session:
                say(f"note: session {found.consul.claim_session} holds {found.consul.claim}: a bridge of "
                    f"cluster {cluster} is running; stop it before purging")
            say(f"cluster {cluster}: would delete {summary(lines)}; nothing was changed "
                "(run again with --yes to delete)")
            return 0
        purge.delete(found)
        say(f"cluster {cluster}: deleted {summary(lines)}")
        return 0
    finally:
        purge.close()
