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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bridge.testing.consul.errors import ApplyError

Record = dict[str, Any]
NodeKey = str
PairKey = tuple[str, str]


def index_matches(existing: Record | None, index: int) -> bool:
    """Whether the record exists and was last modified at `index` (the delete-cas test)."""
    return existing is not None and existing["ModifyIndex"] == index


def cas_allows(existing: Record | None, cas: int) -> bool:
    """A check-and-set write's precondition: index 0 means create-only, else ModifyIndex must match."""
    return existing is None if cas == 0 else index_matches(existing, cas)


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

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
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
            txn = WriteTxn(idx=self._index + 1, tables=self._tables.copy(), now=self.clock())
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
        the future", which is what makes clients detect a backwards index.
        """
        if to < 0:
            raise ValueError("index must be >= 0")
        with self.cond:
            tables = self._tables.copy()
            for table in (tables.nodes, tables.services, tables.checks, tables.kvs, tables.sessions):
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
