"""Fakes for the high-availability tests: a hand-driven clock, one Lease on a pretend API
server, a pretend Consul with sessions, locks and lock-delay, all on that clock, and
catalog entries owned by clusters.

They keep the rules the real servers keep where the code under test depends on them:
a replace must carry the current resourceVersion (else 409), a create of an existing Lease
is a 409 (client-go's Create/Update on resourcelock.LeaseLock); a KV acquire fails while
another session holds the key or while the key is in lock-delay, which follows a session's
invalidation (destroy or TTL) but not a release (Consul's sessions documentation).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from bridge.catalog.model import Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType
from bridge.catalog.plan import OWNER_META
from bridge.errors import Conflict, Transient

KEY = ServiceKey("default", "web")


class FakeClock:
    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = monotonic
        self.wall_now = wall

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


class LeaseServer:
    """One Lease object, as the API server keeps it."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self._versions = itertools.count(100)
        self.writes: list[tuple[str, str]] = []  # (verb, store name)
        self.gets = 0
        self._views: dict[str, LeaseStoreView] = {}
        # Called before a write is applied, e.g. to let another replica win a race.
        self.before_write: Callable[[], None] | None = None

    def store(self, name: str = "replica") -> LeaseStoreView:
        """Replica `name`'s connection (the same one each time it is asked for)."""
        return self._views.setdefault(name, LeaseStoreView(self, name))

    def put(self, spec: dict[str, Any], version: str | None = None) -> None:
        """Sets the Lease directly (what another client wrote)."""
        self.lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": "bridge-test", "namespace": "bridge",
                                   "resourceVersion": version or str(next(self._versions))},
                      "spec": copy.deepcopy(spec)}

    @property
    def spec(self) -> dict[str, Any]:
        assert self.lease is not None, "no Lease was written"
        return self.lease["spec"]


class LeaseStoreView:
    """A replica's connection to the Lease server; `down` cuts it off alone."""

    def __init__(self, server: LeaseServer, name: str) -> None:
        self.server = server
        self.name = name
        self.down = False

    def describe(self) -> str:
        return "lease bridge/bridge-test"

    def _reach(self) -> None:
        if self.down:
            raise Transient("get leases bridge/bridge-test: connection refused")

    def get(self) -> dict[str, Any] | None:
        self._reach()
        self.server.gets += 1
        return copy.deepcopy(self.server.lease)

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        self._reach()
        if self.server.before_write:
            hook, self.server.before_write = self.server.before_write, None
            hook()
        if self.server.lease is not None:
            raise Conflict("create leases bridge/bridge-test: AlreadyExists")
        self.server.put(spec)
        self.server.writes.append(("create", self.name))
        return copy.deepcopy(self.server.lease)

    def replace(self, lease: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        self._reach()
        if self.server.before_write:
            hook, self.server.before_write = self.server.before_write, None
            hook()
        current = self.server.lease
        if current is None or current["metadata"]["resourceVersion"] != lease["metadata"]["resourceVersion"]:
            raise Conflict("replace leases bridge/bridge-test: the object has been modified")
        self.server.put(spec)
        self.server.writes.append(("replace", self.name))
        return copy.deepcopy(self.server.lease)


class FakeConsul:
    """Sessions with a TTL and lock-delay, and KV locks, on a FakeClock. A session lapses
    once its TTL has passed since its last renewal (Consul may wait up to twice as long:
    the bridge must not count on the extra)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sessions: dict[str, dict[str, Any]] = {}
        self.kv: dict[str, dict[str, Any]] = {}
        self.lock_delay_until: dict[str, float] = {}
        self.calls: list[str] = []
        self.down = False
        self.down_error: type[Transient] = Transient  # what a call meets while `down`
        self._ids = itertools.count(1)

    def _reach(self, call: str) -> None:
        if self.down:
            raise self.down_error(f"{call}: ConnectionError")
        self.expire()
        self.calls.append(call)

    def expire(self) -> None:
        for sid, session in list(self.sessions.items()):
            if self.clock.now >= session["renewed"] + session["ttl"]:
                self._invalidate(sid)

    def _invalidate(self, sid: str) -> None:
        session = self.sessions.pop(sid)
        for key, entry in self.kv.items():
            if entry["Session"] == sid:
                entry["Session"] = ""
                if session["lock_delay"]:
                    self.lock_delay_until[key] = self.clock.now + session["lock_delay"]

    # --- what other clusters' bridges do --------------------------------------------------

    def hold(self, key: str, value: bytes, *, ttl: int = 15, lock_delay: int = 15) -> str:
        """Another bridge's session holding `key`."""
        sid = self.session_create(name="other", ttl=ttl, lock_delay=lock_delay)
        self.calls.pop()
        entry = self.kv.setdefault(key, {"Key": key, "LockIndex": 0})
        entry.update(Value=value, Session=sid, LockIndex=entry["LockIndex"] + 1)
        return sid

    # --- ClaimStore ------------------------------------------------------------------------

    def session_create(self, *, name: str, ttl: int, lock_delay: int) -> str:
        self._reach("session_create")
        sid = f"session-{next(self._ids)}"
        self.sessions[sid] = {"name": name, "ttl": ttl, "lock_delay": lock_delay, "renewed": self.clock.now}
        return sid

    def session_renew(self, session_id: str) -> bool:
        self._reach("session_renew")
        if session_id not in self.sessions:
            return False
        self.sessions[session_id]["renewed"] = self.clock.now
        return True

    def session_destroy(self, session_id: str) -> None:
        self._reach("session_destroy")
        if session_id in self.sessions:
            self._invalidate(session_id)

    def kv_get(self, key: str) -> dict[str, Any] | None:
        self._reach("kv_get")
        entry = self.kv.get(key)
        return dict(entry) if entry else None

    def kv_acquire(self, key: str, value: bytes, session_id: str) -> bool:
        self._reach("kv_acquire")
        if session_id not in self.sessions:
            raise Transient(f"kv acquire {key}: 500 invalid session")
        entry = self.kv.get(key)
        if entry and entry["Session"] and entry["Session"] != session_id:
            return False
        if self.clock.now < self.lock_delay_until.get(key, float("-inf")):
            return False
        entry = self.kv.setdefault(key, {"Key": key, "LockIndex": 0, "Session": ""})
        if entry["Session"] != session_id:
            entry["LockIndex"] += 1
        entry.update(Value=value, Session=session_id)
        return True

    def kv_release(self, key: str, value: bytes, session_id: str) -> bool:
        self._reach("kv_release")
        entry = self.kv.get(key)
        if not entry or entry["Session"] != session_id:
            return False
        entry.update(Value=value, Session="")
        return True


def consul_instance(n: int, owner: str) -> Instance:
    meta = ((OWNER_META, owner),) if owner else ()
    return Instance(f"10.0.{n // 250}.{n % 250 + 1}", (Port("http", 80),),
                    Origin(OriginKind.CONSUL, f"k8s-sync-{owner or 'vm'}"), meta=meta)


def local_instance(n: int) -> Instance:
    return Instance(f"10.9.0.{n + 1}", (Port("http", 80),), Origin(OriginKind.KUBERNETES, "here"))


def web(*instances: Instance) -> dict[ServiceKey, Service]:
    return {KEY: Service(KEY, ServiceType.HEADLESS, instances=instances)}
