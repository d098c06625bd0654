"""DNS served by worker processes (`dns.workers` > 0), apart from the sync work.

In one process, every thread that computes (watch decoding, the join, table updates,
Consul writes) holds the GIL the UDP loop needs after each `recvfrom`, so under a steady
stream of changes queries wait behind them. A worker has its own interpreter and does
nothing but answer, and several workers use several cores. `DnsWorkers` runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from types import MappingProxyType
from typing import Any

from bridge.catalog.model import Catalog, Service, ServiceKey
from bridge.config import DnsSettings, parse_hostport
from bridge.dns import listeners
from bridge.dns.loop import new_token
from bridge.dns.metrics import Report
from bridge.dns.server import DnsServer
from bridge.dns.table import changed_keys

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # a worker's start: an interpreter, imports, sockets
PREPARE_TIMEOUT = 120.0  # a full table build of a large catalog takes seconds
STOP_TIMEOUT = 3.0
METRICS_TIMEOUT = 2.0  # a worker's counts on scrape; past it, its last counts are reported
WATCH_PERIOD = 1.0  # how often the watcher looks again at which workers to watch (and at stop)

# Messages, parent -> worker: ("init", settings, UDP socket count, log config, loop token,
# probe loops, replacing); ("update", generation, ready, full, changes) where changes is a list of
# (key, Service or None for gone); ("commit", generation); ("stop",).
# Worker -> parent: ("started",); ("prepared", generation); ("committed", generation);
# ("error", text). On a second pipe, for metrics: parent "report?" -> worker `Report`.
Changes = list[tuple[ServiceKey, Service | None]]


class DnsWorkers:
    """The `DnsServer` surface the app uses (`publish`, `start`, `stop`, `addresses`),
    served by `count` worker processes.

    Who owns what:

    - The parent binds the UDP and TCP sockets once (`listeners.bind`) and hands the same
      sockets to every worker: the kernel gives each datagram and each connection to one of
      the processes blocked on it, so one client's queries spread over all workers too.
    - Each worker runs a `DnsServer` on those sockets (its own UDP, TCP and forwarder
      threads) and one thread reading its pipe. It keeps its own copy of the catalog and
      its own `Table`, derived incrementally as in the single-process server.
    - `publish()` (the parent's publisher thread) sends each worker only the services that
      changed since the last catalog it sent (`changed_keys`), in two phases: every worker
      prepares the next table and says so, then every worker is told to serve it, and says
      so. So no worker serves a catalog another cannot, the workers switch within a pipe
      round trip of each other (so a client asking twice in a row does not see a name go back
      from the new answer to the old), and `publish()` returns once all serve it: readiness
      follows the workers.
    - A worker that dies is started again with the whole catalog at once (the watcher thread
      waits on every worker's exit); the others keep serving. Left to the next publish, a
      bridge with nothing changing (or with one worker) would answer nothing until then.
    - Metrics (`metrics()`, on scrape): each worker answers on a pipe of its own, read by a
      thread of its own, so a scrape never waits behind a table update; the counts of a
      worker that died are kept (its last report) and added, so counters never go back.
    - Loop probes (`loop.py`) carry one token every worker knows; the first worker sends them.
    - `stop()` tells each worker to stop, waits briefly, then terminates what is left, and
      closes the sockets. A worker whose parent is gone sees its pipe close and exits.
    """

    def __init__(self, settings: DnsSettings, count: int, *, log_level: str = "info",
                 log_format: str = "text") -> None:
        self.settings = settings
        self.count = max(1, count)
        self._log = (log_level, log_format)
        DnsServer(settings)  # settings a worker would fail on fail here (it binds nothing)
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._workers: list[_Worker | None] = []
        self._services: Mapping[ServiceKey, Service] = MappingProxyType({})  # as last sent
        self._generation = 0
        self._unsure = False  # True while a publish is under way (or ended in an exception)
        self._lock = threading.Lock()  # one publish at a time, and not during stop
        self._loop_token = new_token()
        self._retired = Report()  # the counts of workers that were replaced
        self._metrics_lock = threading.Lock()  # one scrape at a time
        self._catalog: Catalog | None = None  # the last published, for a worker started again
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return listeners.addresses_of(self._udp + self._tcp)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None]

    def start(self) -> None:
        """Bind the sockets, start the workers on them, and wait until each has started."""
        host, port = parse_hostport(self.settings.listen)
        self._udp, self._tcp, port = listeners.bind(host, port)
        # The workers learn the port actually bound (port 0 picks one): the forwarder must
        # recognise this server among the resolvers it reads.
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.settings = dataclasses.replace(self.settings, listen=listen)
        self._workers = [self._spawn(i) for i in range(self.count)]
        for worker in self._workers:
            assert worker is not None
            worker.expect("started", START_TIMEOUT)
        self._watcher = threading.Thread(target=self._watch, name="dns-workers-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Until stop: wait for a worker to exit, then start it again with the last catalog."""
        while not self._stopping.is_set():
            exits = []
            try:
                for worker in list(self._workers):
                    if worker is not None and worker.alive():
                        exits.append(os.pidfd_open(worker.process.pid))
                # A pidfd turns readable when its process exits.
                ready, _, _ = select.select(exits, [], [], WATCH_PERIOD)
                if ready and not self._stopping.is_set():
                    self._revive()
            except Exception:  # the watcher must outlive whatever one restart does
                log.exception("dns workers: restarting a worker failed")
                self._stopping.wait(WATCH_PERIOD)
            finally:
                for fd in exits:
                    os.close(fd)

    def _revive(self) -> None:
        with self._lock:
            catalog = self._catalog
            if catalog is None or self._stopping.is_set():
                return  # nothing published yet: the first publish starts it with the catalog
            for index, worker in enumerate(self._workers):
                if worker is None or worker.alive():
                    continue
                self._restart(index, catalog, self._generation)
                revived = self._workers[index]
                if revived is not None:
                    try:
                        revived.send(("commit", self._generation))
                        revived.expect("committed", PREPARE_TIMEOUT)
                    except _WorkerGone as exc:
                        log.error("dns worker %d: %s", index, exc)

    def _spawn(self, index: int, *, replacing: bool = False) -> _Worker:
        """A new interpreter running `_main` (not a fork of this threaded process, and not
        multiprocessing's spawn, which would import the parent's `__main__` again), given
        the pipe and the sockets as inherited file descriptors."""
        ours, theirs = socket.socketpair()
        metrics_ours, metrics_theirs = socket.socketpair()
        sockets = [*self._udp, *self._tcp]
        fds = [theirs.fileno(), metrics_theirs.fileno(), *(sock.fileno() for sock in sockets)]
        process = subprocess.Popen(
            [sys.executable, "-c", "from bridge.dns.workers import main; main()",
             *map(str, fds)], pass_fds=fds, stdin=subprocess.DEVNULL,
            start_new_session=False)
        theirs.close()
        metrics_theirs.close()
        worker = _Worker(index, process, Connection(ours.detach()),
                         Connection(metrics_ours.detach()))
        worker.send(("init", self.settings, len(self._udp), self._log, self._loop_token,
                     index == 0, replacing))
        return worker

    def metrics(self) -> Report:
        """The counts of every worker, asked now (and of those replaced before)."""
        with self._metrics_lock:
            total = Report().add(self._retired)
            for worker in list(self._workers):
                if worker is not None:
                    total.add(worker.report())
            return total

    def publish(self, catalog: Catalog) -> None:
        """Serve `catalog` in every worker; returns once all do."""
        with self._lock:
            full = self._unsure  # a publish that failed half-way: send everything
            self._unsure = True
            changes: Changes = list(catalog.services.items()) if full else \
                [(key, catalog.services.get(key))
                 for key in changed_keys(self._services, catalog.services)]
            self._generation += 1
            generation = self._generation
            update = pickle.dumps(("update", generation, catalog.ready, full, changes),
                                  pickle.HIGHEST_PROTOCOL)  # once for all workers
            for index, worker in enumerate(self._workers):
                try:
                    if worker is None or not worker.alive():
                        raise _WorkerGone("exited")
                    worker.send_bytes(update)
                except _WorkerGone:
                    self._restart(index, catalog, generation)
            for index, worker in enumerate(self._workers):
                if worker is not None and worker.prepared != generation:
                    if not worker.expect_prepared(generation, PREPARE_TIMEOUT):
                        self._restart(index, catalog, generation)
            committing = [w for w in self._workers if w is not None and w.prepared == generation]
            for worker in committing:
                worker.send(("commit", generation))
            for worker in committing:
                try:
                    worker.expect("committed", PREPARE_TIMEOUT)
                except _WorkerGone as exc:
                    log.error("dns worker %d: %s", worker.index, exc)  # restarted next time
            self._services = catalog.services
            self._catalog = catalog
            self._unsure = False

    def _restart(self, index: int, catalog: Catalog, generation: int) -> None:
        """Start worker `index` afresh and have it prepare `catalog` whole."""
        old = self._workers[index]
        if old is not None:
            log.error("dns worker %d (pid %s) stopped answering; starting it again", index,
                      old.process.pid)
            old.kill()
            with self._metrics_lock:
                self._retired.add(old.last_report)
        worker = self._spawn(index, replacing=True)
        self._workers[index] = worker
        try:
            worker.expect("started", START_TIMEOUT)
            worker.send(("update", generation, catalog.ready, True,
                         list(catalog.services.items())))
            if not worker.expect_prepared(generation, PREPARE_TIMEOUT):
                raise _WorkerGone("no table prepared")
        except _WorkerGone as exc:
            log.error("dns worker %d did not start: %s", index, exc)
            worker.kill()
            self._workers[index] = None

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for worker in self._workers:
                if worker is not None:
                    with contextlib.suppress(_WorkerGone):
                        worker.send(("stop",))
            for worker in self._workers:
                if worker is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        worker.process.wait(STOP_TIMEOUT)
                    worker.kill()
            self._workers = []
            for sock in self._udp + self._tcp:
                sock.close()
            self._udp, self._tcp = [], []
        if self._watcher is not None:
            self._watcher.join(WATCH_PERIOD + STOP_TIMEOUT)


class _WorkerGone(Exception):
    pass


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, index: int, process: subprocess.Popen[bytes], conn: Connection,
                 metrics: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.metrics = metrics
        self.prepared = -1
        self.last_report = Report()

    def report(self) -> Report:
        """The worker's counts now; its last ones if it does not answer in time."""
        try:
            self.metrics.send("report?")
            if self.metrics.poll(METRICS_TIMEOUT):
                got = self.metrics.recv()
                if isinstance(got, Report):
                    self.last_report = got
        except (EOFError, OSError, ValueError):
            pass  # gone: its last counts stand until it is replaced
        return self.last_report

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: tuple[Any, ...]) -> None:
        self.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

    def send_bytes(self, message: bytes) -> None:
        """A message pickled already (what `conn.recv` in the worker unpickles)."""
        try:
            self.conn.send_bytes(message)
        except (OSError, ValueError) as exc:
            raise _WorkerGone(str(exc)) from None

    def expect(self, kind: str, timeout: float) -> tuple[Any, ...]:
        try:
            if not self.conn.poll(timeout):
                raise _WorkerGone(f"no {kind!r} within {timeout:.0f}s")
            message = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise _WorkerGone(f"pipe closed ({exc.__class__.__name__})") from None
        if message[0] == "error":
            raise _WorkerGone(str(message[1]))
        if message[0] != kind:
            raise _WorkerGone(f"expected {kind!r}, got {message[0]!r}")
        return message

    def expect_prepared(self, generation: int, timeout: float) -> bool:
        try:
            while self.prepared != generation:
                self.prepared = self.expect("prepared", timeout)[1]
        except _WorkerGone as exc:
            log.error("dns worker %d: %s", self.index, exc)
            return False
        return True

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.close()
        with contextlib.suppress(OSError, ValueError):
            self.metrics.close()
        for end in (self.process.terminate, self.process.kill):
            if self.process.poll() is None:
                end()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(STOP_TIMEOUT)


def main() -> None:
    """A worker's entry point: `python -c ... PIPE_FD SOCKET_FD...` (see `_spawn`)."""
    fds = [int(arg) for arg in sys.argv[1:]]
    conn = Connection(fds[0])
    kind, settings, udp_count, log_config, loop_token, probe_loops, replacing = conn.recv()
    assert kind == "init"
    sockets = [socket.socket(fileno=fd) for fd in fds[2:]]
    _main(settings, sockets[:udp_count], sockets[udp_count:], conn, Connection(fds[1]),
          log_config, (loop_token, probe_loops), wait_for_table=replacing)


def _answer_metrics(server: DnsServer, conn: Connection) -> None:
    """The worker's metrics thread: one `Report` per request, until the pipe closes."""
    while True:
        try:
            conn.recv()
            conn.send(server.metrics())
        except (EOFError, OSError):
            return


def _main(settings: DnsSettings, udp: list[socket.socket], tcp: list[socket.socket],
          conn: Connection, metrics: Connection, log_config: tuple[str, str],
          loops: tuple[str, bool], *, wait_for_table: bool = False) -> None:
    """A worker: serve the sockets, apply what the pipe says, until told to stop.

    `wait_for_table`: a worker replacing one that died takes no query before its first table
    is in: the sockets' queries would meet an empty table (SERVFAIL) instead of waiting the
    moment it takes, or going to a worker that answers them."""
    from bridge import logs, memory_policy

    # The parent decides when to stop (Ctrl-C reaches the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure(*log_config)
    memory_policy.limit_arenas()
    sys.setswitchinterval(0.001)  # the pipe reader must not hold up the UDP loop long
    for sock in udp:
        sock.setblocking(True)
    for sock in tcp:
        sock.setblocking(False)
    server = DnsServer(settings, loop_token=loops[0], probe_loops=loops[1])
    if not wait_for_table:
        server.start((udp, tcp))
    threading.Thread(target=_answer_metrics, args=(server, metrics), name="dns-metrics",
                     daemon=True).start()
    conn.send(("started",))
    services: dict[ServiceKey, Service] = {}
    pending: tuple[int, Any] | None = None
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            kind = message[0]
            if kind == "update":
                _, generation, ready, full, changes = message
                if full:
                    services = {}
                for key, service in changes:
                    if service is None:
                        services.pop(key, None)
                    else:
                        services[key] = service
                catalog = Catalog(MappingProxyType(dict(services)), ready=ready,
                                  generation=generation)
                # Deltas are against the catalog the worker last prepared; after a missed
                # commit (or a whole catalog) the table finds what differs itself.
                known = None if full or pending is not None else [key for key, _ in changes]
                try:
                    pending = (generation, server.prepare(catalog, known))
                except Exception as exc:  # a bug: say so rather than hang the parent
                    logging.getLogger(__name__).exception("dns worker: table update failed")
                    conn.send(("error", f"table update failed: {exc}"))
                    return
                conn.send(("prepared", generation))
            elif kind == "commit":
                if pending is not None and pending[0] == message[1]:
                    server.swap(pending[1])
                    if not pending[1].incremental:
                        memory_policy.settle()  # a table just built lives long
                    pending = None
                    if wait_for_table:
                        wait_for_table = False
                        server.start((udp, tcp))
                conn.send(("committed", message[1]))
            elif kind == "stop":
                return
    finally:
        server.stop()
