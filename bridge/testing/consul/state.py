"""The fake's state store: tables, the raft-like index, atomic write transactions, waking.

Like Consul's memdb + raft pair, every write gets the next index and either commits as a
whole or not at all (a failed apply still consumes its index, as a raft entry would).
Tables keep the named max-index entries Consul uses for blocking queries (`nodes`,
`services`, `service.<name>`, `service_last_extinction`, ...). A single Condition
wakes blocked readers after each commit; readers re-check their own index and go back to
sleep if it did not advance, so a change elsewhere never ends another watcher's query.

Records are plain dicts keyed by Go field names and are never mutated in place once
stored: a write replaces the record. That makes a shallow table copy a cheap snapshot
for transactions, snapshots and restores.

The catalog tables also carry secondary indexes (`KeyIndex`: services by node and by
name, checks by instance and by service name), the fake's stand-in for memdb's
radix-tree indexes, so that a per-instance write or read costs what the instance touches
rather than a scan of the whole catalog. They hold primary keys only (never records), are
written only by catalog.py's write functions, and are copied on write like the tables.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bridge.testing.consul.errors import ApplyError
from bridge.testing.timers import SYSTEM, Clock

Record = dict[str, Any]
NodeKey = str
PairKey = tuple[str, str]
B = TypeVar("B", bound=Hashable)

_NO_KEYS: frozenset[Any] = frozenset()


def index_matches(existing: Record | None, index: int) -> bool:
    """Whether the record exists and was last modified at `index` (the delete-cas test)."""
    return existing is not None and existing["ModifyIndex"] == index


def cas_allows(existing: Record | None, cas: int) -> bool:
    """A check-and-set write's precondition: index 0 means create-only, else ModifyIndex must match."""
    return existing is None if cas == 0 else index_matches(existing, cas)


class KeyIndex(Generic[B]):
    """A secondary index: bucket -> the primary keys filed under it, copy-on-write.

    Each write transaction works on a `fork` of the committed tables, and nothing may
    change what readers of the committed tables see. Copying every bucket per write would
    cost O(catalog) again, so both levels are copied lazily: the bucket dict on the first
    write of a fork, and a bucket on the first write to that bucket. `_owned` names the
    buckets this instance created itself and may therefore mutate; `fork` clears it on
    both sides, so after a fork neither side mutates anything they share. A rolled-back
    transaction simply drops its fork. What `get` hands out is a view: callers must not
    mutate it, and must read it under the store lock.

    A bucket is a dict of keys to None rather than a set: a bucket can hold a whole node's
    instances (the bridge puts every instance on one node), and dict.copy() of 10,000
    keys is several times cheaper than set(...) of the same.
    """

    __slots__ = ("_buckets", "_owned", "_owns_dict")

    def __init__(self) -> None:
        self._buckets: dict[B, dict[Any, None]] = {}
        self._owns_dict = True
        self._owned: set[B] = set()

    def fork(self) -> KeyIndex[B]:
        """A copy for a new write (or a snapshot): both share every container from now on."""
        other: KeyIndex[B] = KeyIndex()
        other._buckets = self._buckets
        other._owns_dict = self._owns_dict = False
        self._owned = set()
        return other

    def get(self, bucket: B) -> Set[Any]:
        """The keys filed under `bucket` (empty if none), unordered."""
        keys = self._buckets.get(bucket)
        return _NO_KEYS if keys is None else keys.keys()

    def buckets(self) -> dict[B, Set[Any]]:
        """Every non-empty bucket (for consistency checks in tests)."""
        return {bucket: keys.keys() for bucket, keys in self._buckets.items()}

    def add(self, bucket: B, key: Any) -> None:
        keys = self._buckets.get(bucket)
        if keys is not None and bucket in self._owned:
            # Ours already (owning a bucket implies owning the dict that holds it).
            keys[key] = None
        else:
            self._writable(bucket)[key] = None

    def discard(self, bucket: B, key: Any) -> None:
        current = self._buckets.get(bucket)
        if current is None or key not in current:
            return
        if len(current) == 1:
            # Empty buckets are removed, so `buckets()` holds exactly what is indexed.
            self._own_dict().pop(bucket)
            self._owned.discard(bucket)
        else:
            del self._writable(bucket)[key]

    def _own_dict(self) -> dict[B, dict[Any, None]]:
        if not self._owns_dict:
            self._buckets = self._buckets.copy()
            self._owns_dict = True
        return self._buckets

    def _writable(self, bucket: B) -> dict[Any, None]:
        buckets = self._own_dict()
        keys = buckets.get(bucket)
        if keys is None or bucket not in self._owned:
            keys = buckets[bucket] = {} if keys is None else keys.copy()
            self._owned.add(bucket)
        return keys


@dataclass
class Tables:
    """Everything that a snapshot restore would replace."""

    nodes: dict[NodeKey, Record] = field(default_factory=dict)
    services: dict[PairKey, Record] = field(default_factory=dict)
    checks: dict[PairKey, Record] = field(default_factory=dict)
    kvs: dict[str, Record] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, Record] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)
    # The agent's local state (what anti-entropy pushes into the catalog).
    agent_services: dict[str, Record] = field(default_factory=dict)
    agent_checks: dict[str, Record] = field(default_factory=dict)
    # Secondary indexes of `services` and `checks` (see KeyIndex; maintained by catalog.py).
    # Service keys by node key and by lower-cased ServiceName.
    services_by_node: KeyIndex[NodeKey] = field(default_factory=KeyIndex)
    services_by_name: KeyIndex[str] = field(default_factory=KeyIndex)
    # Check keys by (node key, lower-cased ServiceID; "" for node checks) and by the check's
    # own lower-cased ServiceName. A node's checks need no index of their own: they are its
    # node checks plus its instances' (see catalog.check_keys_on_node).
    checks_by_instance: KeyIndex[PairKey] = field(default_factory=KeyIndex)
    checks_by_service_name: KeyIndex[str] = field(default_factory=KeyIndex)

    def copy(self) -> Tables:
        return Tables(
            nodes=dict(self.nodes),
            services=dict(self.services),
            checks=dict(self.checks),
            kvs=dict(self.kvs),
            tombstones=dict(self.tombstones),
            sessions=dict(self.sessions),
            index=dict(self.index),
            agent_services=dict(self.agent_services),
            agent_checks=dict(self.agent_checks),
            services_by_node=self.services_by_node.fork(),
            services_by_name=self.services_by_name.fork(),
            checks_by_instance=self.checks_by_instance.fork(),
            checks_by_service_name=self.checks_by_service_name.fork(),
        )

    # -- index table helpers -------------------------------------------------

    def bump(self, name: str, idx: int) -> None:
        """`indexUpdateMaxTxn`: an index entry only ever moves forward within a store."""
        if idx > self.index.get(name, 0):
            self.index[name] = idx

    def max_index(self, *names: str) -> int:
        return max((self.index.get(name, 0) for name in names), default=0)


@dataclass
class WriteTxn:
    """One write: the index it will commit at, a working copy, and wall-clock now."""

    idx: int
    tables: Tables
    now: float
    # Side effects that only make sense after commit (timers, lock-delay stamps).
    after_commit: list[Callable[[], None]] = field(default_factory=list)


class Store:
    """Holds the committed tables and serialises writes; the only owner of the Condition."""

    def __init__(self, *, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._tables = Tables()
        self._index = 0
        # Bumped on restore/reset so blocked readers notice the world was replaced.
        self.generation = 0
        # Lock-delay expiries live outside the tables, as in Consul (wall-clock, leader-only).
        self.lock_delays: dict[str, float] = {}
        self.closing = False

    # -- reading ---------------------------------------------------------------

    @property
    def index(self) -> int:
        """The last raft index handed out (the global counter, not any table index)."""
        with self.lock:
            return self._index

    @property
    def tables(self) -> Tables:
        """The committed tables. Callers must hold `lock` while reading them."""
        return self._tables

    # -- writing ---------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        """Run one atomic write. ApplyError rolls back but still consumes the index."""
        with self.cond:
            txn = WriteTxn(idx=self._index + 1, tables=self._tables.copy(), now=self.clock.now())
            try:
                yield txn
            except ApplyError:
                self._index = txn.idx
                raise
            self._tables = txn.tables
            self._index = txn.idx
            for action in txn.after_commit:
                action()
            self.cond.notify_all()

    def notify(self) -> None:
        """Wake every blocked reader so it re-checks (faults, shutdown, restores)."""
        with self.cond:
            self.cond.notify_all()

    # -- snapshots and index resets (test hooks) --------------------------------

    def snapshot(self) -> Snapshot:
        """Capture the state as a snapshot that `restore` can bring back later."""
        with self.lock:
            return Snapshot(index=self._index, tables=self._tables.copy())

    def restore(self, snap: Snapshot) -> None:
        """Replace the state with `snap`, as `consul snapshot restore` does: indexes go back."""
        with self.cond:
            self._tables = snap.tables.copy()
            self._index = snap.index
            self.generation += 1
            self.cond.notify_all()

    def reset_index(self, to: int) -> None:
        """Move the raft index back to `to`, clamping every stored index to it.

        This emulates restoring a snapshot taken at index `to` whose contents equal the
        current ones: data stays, but every index a client has seen may now be "from
        the future", which is what makes clients detect a backwards index. Records are
        replaced under the same keys with the same names, so the secondary indexes (which
        hold keys only) stay valid as they are.
        """
        if to < 0:
            raise ValueError("index must be >= 0")
        with self.cond:
            tables = self._tables.copy()
            every: list[dict[Any, Record]] = [tables.nodes, tables.services, tables.checks, tables.kvs, tables.sessions]
            for table in every:
                for key, record in list(table.items()):
                    table[key] = {
                        **record,
                        "CreateIndex": min(record.get("CreateIndex", 0), to),
                        "ModifyIndex": min(record.get("ModifyIndex", 0), to),
                    }
            tables.tombstones = {key: min(value, to) for key, value in tables.tombstones.items()}
            tables.index = {key: min(value, to) for key, value in tables.index.items()}
            self._tables = tables
            self._index = to
            self.generation += 1
            self.cond.notify_all()


@dataclass(frozen=True)
class Snapshot:
    """A point-in-time copy of the store (see Store.snapshot / Store.restore)."""

    index: int
    tables: Tables
