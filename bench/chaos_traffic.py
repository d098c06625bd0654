"""The load every chaos scenario runs under: steady DNS queries for the cluster's names, each
answer graded against the history of what the name held; and a stream of Kubernetes changes
written through the API as kubelets write them.

A sibling module of chaos_bench.py, imported with bench/ on sys.path.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from chaos_world import Cluster, Kube, Svc, Unreachable
from dns_bench import a_answer, query_wire

NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
# A query unanswered this long is counted unanswered (a stub resolver's first retry is at 1-5 s).
ANSWER_TIMEOUT = 1.0


@dataclass(frozen=True)
class Observation:
    sent: float
    svc: Svc
    received: float | None = None  # None: no answer within ANSWER_TIMEOUT
    rcode: int = -1
    ips: tuple[str, ...] = ()


@dataclass
class Grade:
    """Answers to the queries sent in a window, by kind."""

    sent: int = 0
    ok: int = 0
    stale: int = 0
    wrong: int = 0
    unanswered: int = 0
    servfail: int = 0
    nxdomain: int = 0
    other: int = 0
    longest_gap: float = 0.0  # the longest time without a right answer
    examples: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.ok / self.sent if self.sent else float("nan")

    @property
    def incorrect(self) -> int:
        """Answers that are not a state the name held lately: never acceptable."""
        return self.stale + self.wrong + self.nxdomain + self.other


class DnsProbe:
    """Sends `rate` A queries a second to the bridge for random names of the cluster (one UDP
    socket, a sender and a receiver thread) and keeps every observation."""

    def __init__(self, port: int, cluster: Cluster, rate: float) -> None:
        self.port = port
        self.cluster = cluster
        self.rate = rate
        self._names = cluster.names
        self._wires = [query_wire(svc.fqdn, 1, edns=False) for svc in self._names]
        self._pending: dict[int, tuple[float, Svc]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.observations: list[Observation] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.connect(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self._threads = [threading.Thread(target=self._send, name="probe-send", daemon=True),
                         threading.Thread(target=self._receive, name="probe-receive", daemon=True)]

    def __enter__(self) -> DnsProbe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._sock.close()
        with self._lock:
            for sent, svc in self._pending.values():
                self.observations.append(Observation(sent, svc))
            self._pending.clear()

    def _send(self) -> None:
        rng = self.cluster.rng.__class__(7)
        interval = 1.0 / self.rate
        qid = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                self._stop.wait(next_at - now)
                continue
            next_at += interval
            qid = (qid + 1) & 0xFFFF
            which = rng.randrange(len(self._names))
            with self._lock:
                expired = self._pending.pop(qid, None)
                if expired is not None:  # never answered: 65,536 queries ago
                    self.observations.append(Observation(expired[0], expired[1]))
                self._pending[qid] = (time.monotonic(), self._names[which])
            try:
                self._sock.send(struct.pack("!H", qid) + self._wires[which][2:])
            except OSError:
                pass  # refused (ICMP port unreachable while nothing listens): stays unanswered
            self._expire(time.monotonic() - ANSWER_TIMEOUT)

    def _expire(self, before: float) -> None:
        with self._lock:
            old = [qid for qid, (sent, _) in self._pending.items() if sent < before]
            for qid in old:
                sent, svc = self._pending.pop(qid)
                self.observations.append(Observation(sent, svc))

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self._sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                continue  # ICMP errors surface here while the server is gone
            received = time.monotonic()
            parsed = a_answer(reply)
            if parsed is None:
                continue
            qid, rcode, ips = parsed
            with self._lock:
                pending = self._pending.pop(qid, None)
                if pending is not None:
                    self.observations.append(Observation(pending[0], pending[1], received, rcode, ips))

    def grade(self, start: float = 0.0, end: float = float("inf"), allowance: float = 2.0,
              servfail_ok: bool = False) -> Grade:
        """The queries sent in [start, end): "ok" answers are a state the name held lately
        (within `allowance` seconds of the query); with `servfail_ok`, SERVFAIL is ok too."""
        with self._lock:
            observations = sorted((o for o in self.observations if start <= o.sent < end), key=lambda o: o.sent)
        grade = Grade(sent=len(observations))
        last_ok = None
        for o in observations:
            kind = self._kind(o, allowance, servfail_ok)
            setattr(grade, kind, getattr(grade, kind) + 1)
            if kind == "ok":
                assert o.received is not None
                if last_ok is not None:
                    grade.longest_gap = max(grade.longest_gap, o.received - last_ok)
                last_ok = o.received
            elif len(grade.examples) < 5 and kind not in ("unanswered", "servfail"):
                grade.examples.append(f"{o.svc.fqdn} {kind}: rcode {o.rcode} {list(o.ips)}, "
                                      f"held {[list(s.ips) for s in o.svc.history[-3:]]}")
        return grade

    @staticmethod
    def _kind(o: Observation, allowance: float, servfail_ok: bool) -> str:
        if o.received is None:
            return "unanswered"
        if o.rcode == SERVFAIL:
            return "ok" if servfail_ok else "servfail"
        if o.rcode == NXDOMAIN:
            return "nxdomain"
        if o.rcode != NOERROR:
            return "other"
        return o.svc.grade(o.ips, o.sent, o.received, allowance)


class Changes:
    """Writes `count` changes through the Kubernetes API, evenly over `seconds` (0: as fast as
    the API takes them). A refused write leaves the cluster as it was (a kubelet would write the
    next state later); one without an answer may have been applied, so the Pod is read back."""

    def __init__(self, cluster: Cluster, kube: Kube, count: int, seconds: float) -> None:
        self.cluster = cluster
        self.kube = kube
        self.count = count
        self.seconds = seconds
        self.applied = 0
        self.refused = 0
        self.unknown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="changes", daemon=True)

    def start(self) -> Changes:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        started = time.monotonic()
        for i in range(self.count):
            at = started + (self.seconds * i / self.count if self.count else 0)
            if self._stop.wait(max(0.0, at - time.monotonic())):
                return
            self.one()

    def one(self) -> bool:
        change = self.cluster.pick_change()
        began = time.monotonic()
        try:
            status = self.kube.write(change)
        except Unreachable as exc:
            if exc.ambiguous:
                self.unknown += 1
                self.cluster.dirty[(self.cluster.services.index(change.svc), change.pod)] = began
            else:
                self.refused += 1
            return False
        if status == 200:
            self.applied += 1
            self.cluster.applied(change, began, time.monotonic())
            return True
        self.refused += 1
        return False


def settle_unknown(cluster: Cluster, kube: Kube) -> int:
    """Read back every Pod whose write had no answer and take what the API holds; how many
    differed from the bench's view."""
    differed = 0
    for (i, j), began in sorted(cluster.dirty.items()):
        svc = cluster.services[i]
        held = kube.read_pod(svc, j)
        if held is None:
            continue
        now = time.monotonic()
        with cluster.lock:
            if (svc.ips[j], svc.ready[j]) != held:
                differed += 1
                svc.ips[j], svc.ready[j] = held
                svc.record(began, now)  # it may have shown since the write was sent
        del cluster.dirty[(i, j)]
    return differed
