"""One cluster id, one cluster: the leader's claim on `bridge/clusters/<cluster_id>` in Consul.

Two clusters configured with the same cluster id would write to the same synthetic node
and delete each other's registrations as stale. So the leader holds a Consul session (TTL
only, no node checks; behavior "release") and with it the KV key naming this cluster: the
`kube-system` namespace's uid (the standard cluster identity), the Lease that elects the
leader, and the leader's identity. What the key holds decides:

- free: acquire it (`?acquire=<session>`); then writes are allowed (HELD).
- held by our session: HELD.
- held by another session naming this cluster and Lease: a previous leader of ours, which
  the Lease has already fenced, so writes are allowed (TAKEOVER); its session is destroyed
  and the key acquired once Consul's lock-delay is over.
- held by another session naming any other cluster, or a value we cannot read: CONFLICT.
  Nothing is written, one error is logged, `bridge_cluster_id_conflict` is 1, and `problem`
  says why (for /readyz); DNS goes on answering.
- free but in lock-delay after another cluster's session lapsed: WAITING (no writes).

Writes are allowed until `may_write_until()`: a session TTL after the last check that
Consul confirmed (and, while HELD, after the last renewal), so a leader cut off from Consul
stops writing before its session can have lapsed. On stepping down or stopping, the key is
released first (no lock-delay follows a release), then the session destroyed.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from prometheus_client import Gauge

from bridge.errors import BridgeError
from bridge.ha.clock import Clock
from bridge.ha.episode import Episode

log = logging.getLogger(__name__)

KEY_PREFIX = "bridge/clusters/"

CONFLICT = Gauge("bridge_cluster_id_conflict",
                 "1 while another cluster holds this cluster id's claim in Consul (nothing is written)")


def claim_key(cluster_id: str) -> str:
    return KEY_PREFIX + cluster_id


@dataclass(frozen=True, slots=True)
class ClaimValue:
    """What the claim key holds, as JSON."""

    cluster_id: str
    cluster_uid: str  # the kube-system namespace's metadata.uid
    lease: str  # namespace/name of the Lease that elects this cluster's writer
    holder: str  # the leader's identity in that Lease

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @staticmethod
    def decode(raw: object) -> ClaimValue | None:
        """The value of a claim key; None when it is not one (malformed, absent)."""
        if isinstance(raw, bytes | str):
            try:
                data = json.loads(raw)
            except ValueError:
                return None
            if isinstance(data, dict) and all(isinstance(data.get(k), str) and data.get(k)
                                              for k in ("cluster_id", "cluster_uid", "lease")):
                return ClaimValue(data["cluster_id"], data["cluster_uid"], data["lease"],
                                  str(data.get("holder") or ""))
        return None

    def same_deployment(self, other: ClaimValue) -> bool:
        """Written by a replica of the same bridge: the same cluster and the same Lease."""
        return (self.cluster_uid, self.lease) == (other.cluster_uid, other.lease)

    def describe(self) -> str:
        return f"cluster uid {self.cluster_uid}, lease {self.lease}, holder {self.holder or '-'}"


class ClaimState(enum.StrEnum):
    IDLE = "idle"  # not leading: holds nothing
    UNKNOWN = "unknown"  # leading, but Consul or Kubernetes has not answered yet
    HELD = "held"
    TAKEOVER = "takeover"
    WAITING = "waiting"
    CONFLICT = "conflict"


WRITABLE = frozenset({ClaimState.HELD, ClaimState.TAKEOVER})


class ClaimStore(Protocol):
    """The Consul calls the claim makes (`ConsulClient` has them)."""

    def session_create(self, *, name: str, ttl: int, lock_delay: int) -> str: ...
    def session_renew(self, session_id: str) -> bool: ...
    def session_destroy(self, session_id: str) -> None: ...
    def kv_get(self, key: str) -> dict[str, Any] | None: ...
    def kv_acquire(self, key: str, value: bytes, session_id: str) -> bool: ...
    def kv_release(self, key: str, value: bytes, session_id: str) -> bool: ...


class ClusterClaim:
    """The claim of one bridge deployment. One thread calls `step()` and `release()`; any
    thread may read `state`, `problem` and `may_write_until()`."""

    def __init__(self, store: ClaimStore, *, cluster_id: str, lease: str, identity: str,
                 cluster_uid: Callable[[], str], session_ttl: int, lock_delay: int,
                 clock: Clock) -> None:
        self._store = store
        self.key = claim_key(cluster_id)
        self._cluster_id = cluster_id
        self.lease = lease
        self._identity = identity
        self._read_uid = cluster_uid
        self._ttl = session_ttl
        self._lock_delay = lock_delay
        self._clock = clock
        self._episode = Episode(log, f"cluster claim {self.key}")
        self._value: ClaimValue | None = None
        self._session: str | None = None
        self._session_at = float("-inf")  # send time of the last create or renew
        self._until = float("-inf")
        self._destroyed: set[str] = set()
        self.state = ClaimState.IDLE
        self.problem = ""

    def may_write_until(self) -> float:
        return self._until

    def step(self, leading: bool) -> None:
        """Brings the claim in line with leadership: hold it while leading, not otherwise."""
        if not leading:
            if self._session is not None or self.state is not ClaimState.IDLE:
                self.release()
            return
        started = self._clock.monotonic()
        try:
            self._step(started)
        except BridgeError as exc:
            self._episode.failed(exc)
            if self.state is ClaimState.IDLE:
                self._set(ClaimState.UNKNOWN, self.problem)
        else:
            self._episode.recovered()

    def release(self) -> None:
        """Stops writing, then releases the key and destroys the session (best effort:
        what fails here lapses with the session's TTL)."""
        self._until = float("-inf")
        session, self._session = self._session, None
        if session is not None:
            try:
                if self.state is ClaimState.HELD and self._value is not None:
                    self._store.kv_release(self.key, self._value.encode(), session)
                self._store.session_destroy(session)
            except BridgeError as exc:
                log.warning("cluster claim %s: could not give it up (it lapses with the session): %s",
                            self.key, exc)
            else:
                log.info("cluster claim %s: released", self.key)
        self._set(ClaimState.IDLE)

    def _step(self, started: float) -> None:
        if self._value is None:
            try:
                uid = self._read_uid()
            except BridgeError as exc:
                self._set(ClaimState.UNKNOWN, f"cannot tell which cluster this is (the bridge needs get "
                                              f"on namespace kube-system): {exc}")
                raise
            self._value = ClaimValue(self._cluster_id, uid, self.lease, self._identity)
            self.problem = ""
        if self._session is not None and started - self._session_at >= self._ttl / 3:
            if self._store.session_renew(self._session):
                self._session_at = started
            else:
                log.warning("cluster claim %s: Consul no longer knows our session; starting a new one",
                            self.key)
                self._session = None
                self._set(ClaimState.UNKNOWN)
        if self._session is None:
            self._session = self._store.session_create(
                name=f"bridge {self._cluster_id} {self._identity}", ttl=self._ttl,
                lock_delay=self._lock_delay)
            self._session_at = started
        entry = self._store.kv_get(self.key)
        holder = str((entry or {}).get("Session") or "")
        found = ClaimValue.decode((entry or {}).get("Value"))
        if holder == self._session:
            if found != self._value:
                self._store.kv_acquire(self.key, self._value.encode(), self._session)
            self._held(ClaimState.HELD, started)
        elif holder:
            self._held_by_other(holder, found, started)
        elif self._store.kv_acquire(self.key, self._value.encode(), self._session):
            self._held(ClaimState.HELD, started)
        elif found is not None and found.same_deployment(self._value):
            # In lock-delay after a session of ours lapsed or was destroyed.
            self._held(ClaimState.TAKEOVER, started)
        elif entry is None:
            self._set(ClaimState.UNKNOWN)  # someone created it since we read: look again
        else:
            self._set(ClaimState.WAITING, "free, in Consul's lock-delay after "
                      + (found.describe() if found else "an unreadable claim") + " lapsed")

    def _held_by_other(self, session: str, found: ClaimValue | None, started: float) -> None:
        assert self._value is not None
        if found is not None and found.same_deployment(self._value):
            if session not in self._destroyed:
                log.info("cluster claim %s: taking it over from a previous leader (%s)", self.key,
                         found.describe())
                self._destroyed.add(session)
                self._store.session_destroy(session)
            self._held(ClaimState.TAKEOVER, started)
            return
        theirs = found.describe() if found else "a value that is not a bridge's claim"
        self._set(ClaimState.CONFLICT,
                  f"cluster id {self._cluster_id!r} is claimed in Consul by another cluster "
                  f"({theirs}); this cluster is {self._value.describe()}; nothing is written until "
                  f"that claim lapses: give each cluster its own cluster_id")

    def _held(self, state: ClaimState, started: float) -> None:
        until = started + self._ttl
        if state is ClaimState.HELD:
            until = min(until, self._session_at + self._ttl)
        self._until = until
        self._set(state)

    def _set(self, state: ClaimState, problem: str = "") -> None:
        if state not in WRITABLE:
            self._until = float("-inf")
        if state is ClaimState.CONFLICT and self.state is not ClaimState.CONFLICT:
            log.error("cluster claim %s: %s", self.key, problem)
        elif self.state is ClaimState.CONFLICT and state is not ClaimState.CONFLICT:
            log.info("cluster claim %s: the conflict is over (%s)", self.key, state)
        elif state is ClaimState.WAITING and self.state is not ClaimState.WAITING:
            log.info("cluster claim %s: %s", self.key, problem)
        elif state is ClaimState.HELD and self.state is not ClaimState.HELD:
            log.info("cluster claim %s: held", self.key)
        CONFLICT.set(1 if state is ClaimState.CONFLICT else 0)
        self.state = state
        self.problem = problem
