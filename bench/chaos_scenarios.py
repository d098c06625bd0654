"""The chaos scenarios: each starts a world (the test servers and `bridge run`), runs steady DNS
queries and Kubernetes changes, breaks something, and measures what survived into a `Row`.

A sibling module of chaos_bench.py, imported with bench/ on sys.path. `SCENARIOS` names them
in the order they run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chaos_abuse
from chaos_traffic import Changes, DnsProbe, Grade, settle_unknown
from chaos_world import Cluster, Unreachable, Verdict, World, request, verify_consul
from common import say

# Seconds the bridge may take to converge after a recovery before the scenario gives up on it.
CONVERGE_LIMIT = 90.0
# Seconds Consul must be exact within after a recovery (the target; a figure, not a failure).
CONVERGE_TARGET = 2.0


@dataclass
class Row:
    """One scenario's figures; `failures` says why it does not hold (empty: it holds)."""

    name: str
    fault: str
    dns: Grade | None = None  # the queries sent while the fault lasted
    converge: float | None = None  # seconds from the recovery until Consul was exact
    verdict: Verdict | None = None  # Consul at the end
    spurious_deletes: int | None = None
    changes: str = ""
    requests: str = ""  # what the bridge sent Consul while it struggled
    log_lines: int | None = None  # warnings and errors the bridge logged while the fault lasted
    crashes: int = 0
    other: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    workdir: str = ""


# ========================================================================================
# What every scenario shares
# ========================================================================================

class Run:
    """One scenario's world, load and measurements."""

    def __init__(self, opts: argparse.Namespace, row: Row, services: int, settings: str = "") -> None:
        self.opts = opts
        self.row = row
        self.workdir = Path(opts.workdir) / row.name
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        row.workdir = str(self.workdir)
        self.cluster = Cluster(services, seed=opts.seed)
        self.world = World(self.workdir, self.cluster, settings)
        self.requests: list[dict[str, Any]] = []  # the bridge's Consul requests since it was ready
        self.probe: DnsProbe | None = None

    @property
    def bridge(self) -> Any:
        assert self.world.bridge is not None
        return self.world.bridge

    def start(self, *, wait_ready: bool = True) -> None:
        self.world.start_servers()
        self.world.make_bridge().start()
        self.bridge.wait_listening()
        if wait_ready:
            self.wait_ready()
            self.converged("the first sync")
            self.take_requests()

    def wait_ready(self, limit: float = 120.0) -> float:
        started = time.monotonic()
        while not self.bridge.ready():
            if not self.bridge.alive():
                raise RuntimeError(f"bridge exited ({self.bridge.exit_code()}); see {self.bridge.log}")
            if time.monotonic() - started > limit:
                raise RuntimeError(f"bridge not ready after {limit:.0f}s: {self.bridge.get('/readyz')[1]}")
            time.sleep(0.05)
        return time.monotonic() - started

    def converged(self, what: str, limit: float = CONVERGE_LIMIT) -> float | None:
        """Seconds until Consul holds exactly what it must (None past `limit`: a failure)."""
        settle_unknown(self.cluster, self.world.kube)
        started = time.monotonic()
        verdict = verify_consul(self.world.consul, self.cluster)
        while not verdict.exact:
            if time.monotonic() - started > limit:
                self.row.failures.append(f"Consul not exact {limit:.0f}s after {what}: "
                                         f"{'; '.join(verdict.problems[:3])}")
                self.row.verdict = verdict
                return None
            time.sleep(0.05)
            verdict = verify_consul(self.world.consul, self.cluster)
        self.row.verdict = verdict
        return time.monotonic() - started

    def take_requests(self) -> list[dict[str, Any]]:
        with contextlib.suppress(Unreachable, RuntimeError):
            fresh = self.world.consul.requests()
            self.requests += fresh
            return fresh
        return []

    def dns(self, rate: float | None = None) -> DnsProbe:
        self.probe = DnsProbe(self.bridge.dns_port, self.cluster, rate or self.opts.rate)
        return self.probe

    def pause(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def finish(self) -> None:
        """Checks every scenario ends with: no crash, Consul exact, nothing deleted that must stay."""
        row = self.row
        self.take_requests()
        bridge = self.bridge
        dead = 0 if bridge.alive() else 1
        crashes = len(bridge.crash_lines())
        if bridge.alive() and bridge.get("/healthz")[0] != 200:
            row.failures.append(f"/healthz: {bridge.get('/healthz')}")
            crashes += 1
        row.crashes = crashes + dead
        if row.crashes:
            row.failures.append(f"crashed: exited {bridge.exit_code()}; {bridge.crash_lines()[:2]}")
        if row.verdict is None or not row.verdict.exact:
            row.verdict = verify_consul(self.world.consul, self.cluster)
        verdict = row.verdict
        if not verdict.exact:
            row.failures.append(f"Consul: {verdict.missing} missing, {verdict.extra} extra, "
                                f"{verdict.wrong} wrong, {verdict.duplicates} duplicated "
                                f"({'; '.join(verdict.problems[:3])})")
        row.spurious_deletes = spurious_deletes(self.requests, self.cluster)
        if row.spurious_deletes:
            row.failures.append(f"{row.spurious_deletes} deletes of instances that must stay")

    def grade_fault(self, start: float, end: float, *, allowance: float | None = None,
                    servfail_ok: bool = False, require_answers: bool = True) -> Grade:
        assert self.probe is not None
        grade = self.probe.grade(start, end, self.opts.allowance if allowance is None else allowance,
                                 servfail_ok=servfail_ok)
        self.row.dns = grade
        if grade.incorrect:
            self.row.failures.append(f"{grade.incorrect} incorrect DNS answers ({'; '.join(grade.examples[:2])})")
        if require_answers and (grade.unanswered or grade.servfail):
            self.row.failures.append(f"{grade.unanswered} unanswered, {grade.servfail} SERVFAIL DNS queries")
        return grade

    def stop(self) -> None:
        if self.probe is not None:
            self.probe.stop()
        self.world.stop()


def txn_ops(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for rec in records:
        if rec["method"] == "PUT" and rec["path"] == "/v1/txn" and rec["status"] == 200:
            with contextlib.suppress(ValueError):
                body = json.loads(rec["body"])
                ops += [op for op in body if isinstance(op, dict)] if isinstance(body, list) else []
    return ops


def catalog_writes(records: list[dict[str, Any]]) -> int:
    """Catalog operations in transactions, plus catalog register/deregister calls."""
    ops = sum(1 for op in txn_ops(records) if {"Node", "Service", "Check"} & set(op))
    return ops + sum(1 for r in records if r["method"] == "PUT"
                     and r["path"] in ("/v1/catalog/register", "/v1/catalog/deregister"))


def spurious_deletes(records: list[dict[str, Any]], cluster: Cluster) -> int:
    """Deletes of instances Consul must still hold (an address never comes back once gone, so
    a delete of an instance that must be there now was never right)."""
    keep = set(cluster.expected_consul())
    count = 0
    for op in txn_ops(records):
        service = op.get("Service")
        if isinstance(service, dict) and service.get("Verb") in ("delete", "delete-cas"):
            if (service.get("Service") or {}).get("ID") in keep:
                count += 1
    return count


def request_rate(records: list[dict[str, Any]], start_wall: float, end_wall: float) -> str:
    """The bridge's Consul requests answered in the window: how many, and per second after its
    first 5 s (the backoff target: at most one a second)."""
    inside = [r for r in records if start_wall <= r["at"] <= end_wall]
    later = [r for r in inside if r["at"] >= start_wall + 5]
    span = end_wall - start_wall - 5
    rate = f", {len(later) / span:.1f}/s after 5 s" if span >= 1 else ""
    return f"{len(inside)} requests{rate}"


def wall(monotonic: float) -> float:
    return time.time() - (time.monotonic() - monotonic)


# ========================================================================================
# Consul and Kubernetes faults: the same shape for each
# ========================================================================================

Action = Callable[[Run], None]


def fault_scenario(opts: argparse.Namespace, name: str, fault: str, inject: Action, clear: Action, *,
                   seconds: float, kube_fault: bool = False, allowance: float | None = None,
                   during: Action | None = None, period: float = 0.0) -> Row:
    """Steady DNS and `opts.changes` Kubernetes changes spread over `seconds` of a fault:
    `inject`, then (every `period` s, if given) `during`, then `clear`; then time until Consul is
    exact, and check nothing was lost, duplicated or wrongly deleted."""
    row = Row(name, fault)
    run = Run(opts, row, opts.services)
    try:
        run.start()
        with run.dns():
            run.pause(opts.warmup)
            run.take_requests()
            log_mark = run.bridge.log_lines()
            started = time.monotonic()
            inject(run)
            changes = Changes(run.cluster, run.world.kube, opts.changes, seconds).start()
            while time.monotonic() - started < seconds:
                if during is not None:
                    during(run)
                run.pause(period if period else seconds - (time.monotonic() - started))
            clear(run)
            ended = time.monotonic()
            changes.stop()
            row.changes = f"{changes.applied} applied" + (f", {changes.refused} refused" if changes.refused else "")
            row.log_lines = len(run.bridge.warnings_since(log_mark))
            row.converge = run.converged("the recovery")
            fault_requests = run.take_requests()
            if not kube_fault:
                row.requests = request_rate(fault_requests, wall(started), wall(ended))
            run.pause(opts.settle)
        run.grade_fault(started, ended, allowance=allowance)
        run.finish()
    except Exception as exc:  # a scenario that cannot run is a failure of its own, not the bench's
        row.failures.append(f"scenario error: {type(exc).__name__}: {exc}")
    finally:
        run.stop()
    return row


def consul_outage(opts: argparse.Namespace) -> Row:
    seconds = opts.outage_seconds
    return fault_scenario(
        opts, "consul-unreachable", f"Consul listener closed {seconds:g} s",
        lambda run: run.world.consul.fault("outage", {"seconds": seconds}),
        lambda run: wait_listening(run.world.consul.url + "/v1/status/leader"),
        seconds=seconds)


def consul_error(status: str) -> Callable[[argparse.Namespace], Row]:
    def scenario(opts: argparse.Namespace) -> Row:
        seconds = opts.outage_seconds
        if status == "500":
            what, knob, body = "500 No cluster leader", "no-leader", {}
        elif status == "429":
            what, knob, body = "429, Retry-After: 1", "rate-limit", {"retry_after": 1}
        else:
            what, knob, body = "5 s per request", "slow", {"seconds": 5}
        return fault_scenario(
            opts, f"consul-{knob}", f"Consul {what}, {seconds:g} s",
            lambda run: run.world.consul.fault(knob, body),
            lambda run: run.world.consul.fault("clear"),
            seconds=seconds)
    return scenario


def consul_index_reset(opts: argparse.Namespace) -> Row:
    seconds = opts.window

    def inject(run: Run) -> None:
        # A snapshot restore moves every index back; then no blocking read gets an answer.
        run.world.consul.admin("PUT", "state/reset-index", {"index": 1})
        run.world.consul.fault("drop-blocking", {"after": 0.2})

    return fault_scenario(
        opts, "consul-index-reset", f"Consul index reset to 1, every blocking read cut, {seconds:g} s",
        inject,
        lambda run: run.world.consul.fault("drop-blocking", {"after": None}),
        seconds=seconds)


def kube_outage(opts: argparse.Namespace) -> Row:
    seconds = opts.outage_seconds
    return fault_scenario(
        opts, "kube-unreachable", f"Kubernetes API listener closed {seconds:g} s",
        lambda run: run.world.kube.admin("outage", {"seconds": seconds}),
        lambda run: wait_listening(run.world.kube.url + "/version"),
        seconds=seconds, kube_fault=True)


def kube_watch_cuts(opts: argparse.Namespace) -> Row:
    seconds = opts.window
    return fault_scenario(
        opts, "kube-watch-cuts", f"every watch cut every 2 s, {seconds:g} s",
        lambda run: None, lambda run: None,
        seconds=seconds, kube_fault=True, period=2.0,
        during=lambda run: run.world.kube.admin("drop-watches", {"abrupt": True}))


def kube_gone_storm(opts: argparse.Namespace) -> Row:
    seconds = opts.window

    def storm(run: Run) -> None:
        # History forgotten up to now and every watch ended: each resumes from a version
        # the server no longer has, and is answered 410 Gone.
        run.world.kube.admin("compact")
        run.world.kube.admin("drop-watches")

    return fault_scenario(
        opts, "kube-410-storm", f"history compacted and watches ended every 1 s (410 Gone), {seconds:g} s",
        storm, lambda run: None,
        seconds=seconds, kube_fault=True, period=1.0, during=storm)


def kube_slow(opts: argparse.Namespace) -> Row:
    seconds = opts.window
    return fault_scenario(
        opts, "kube-slow", f"Kubernetes API 2 s per request, {seconds:g} s",
        lambda run: run.world.kube.admin("latency", {"seconds": 2}),
        lambda run: run.world.kube.admin("latency", {"seconds": 0}),
        # A change shows once its own 2 s write and the watch carrying it are through.
        seconds=seconds, kube_fault=True, allowance=opts.allowance + 4)


def wait_listening(url: str, limit: float = 60.0) -> None:
    """Until the server answers `url` again (a timed outage reopens by itself)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(Unreachable):
            request("GET", url, timeout=1)
            return
        time.sleep(0.02)
    raise RuntimeError(f"{url} not back after {limit:.0f}s")


# ========================================================================================
# Kills
# ========================================================================================

def bridge_kill(opts: argparse.Namespace) -> Row:
    row = Row("bridge-sigkill", f"SIGKILL of the bridge mid-burst of {opts.changes} changes, restart")
    run = Run(opts, row, opts.services)
    try:
        run.start()
        with run.dns():
            run.pause(opts.warmup)
            changes = Changes(run.cluster, run.world.kube, opts.changes, opts.burst_seconds).start()
            run.pause(opts.burst_seconds / 2)
            killed = run.bridge.pid
            run.bridge.signal(signal.SIGKILL)
            run.bridge.p.wait(10)
            changes.join(opts.burst_seconds * 4 + 30)
            row.changes = f"{changes.applied} applied"
            restarted = time.monotonic()
            run.bridge.start()
            run.bridge.wait_listening()
            ready = run.wait_ready()
            answering = time.monotonic()
            if run.converged("the restart") is not None:
                row.converge = time.monotonic() - restarted
            row.other.append(f"ready {ready:.1f} s after the restart")
            run.take_requests()
            run.pause(opts.rest)
            writes = catalog_writes(run.take_requests())
            row.other.append(f"{writes} catalog writes in {opts.rest:g} s at rest")
            if writes:
                row.failures.append(f"{writes} catalog writes at rest after the restart")
            run.pause(opts.settle)
            if any(pid == killed for pid in run.bridge.workers()):
                row.failures.append("the killed bridge's process is still there")
        run.grade_fault(answering, time.monotonic())
        run.finish()
    except Exception as exc:
        row.failures.append(f"scenario error: {type(exc).__name__}: {exc}")
    finally:
        run.stop()
    return row


def dns_worker_kill(opts: argparse.Namespace) -> Row:
    row = Row("dns-worker-sigkill", "SIGKILL of the DNS worker process")
    run = Run(opts, row, opts.services)
    try:
        run.start()
        with run.dns():
            run.pause(opts.warmup)
            workers = run.bridge.workers()
            if not workers:
                raise RuntimeError("no DNS worker process under the bridge")
            started = time.monotonic()
            os.kill(workers[0], signal.SIGKILL)
            deadline = started + 60
            while not (set(run.bridge.workers()) - set(workers)) and time.monotonic() < deadline:
                time.sleep(0.02)
            replaced = set(run.bridge.workers()) - set(workers)
            row.other.append("worker restarted" if replaced else "worker NOT restarted in 60 s")
            if not replaced:
                row.failures.append("the DNS worker was not started again")
            changes = Changes(run.cluster, run.world.kube, opts.changes // 4, opts.settle).start()
            run.pause(opts.settle)
            changes.stop()
            row.changes = f"{changes.applied} applied"
            ended = time.monotonic()
            row.converge = run.converged("the kill")
        grade = run.grade_fault(started - opts.warmup, ended, require_answers=False)
        row.other.append(f"longest gap in answers {grade.longest_gap:.2f} s")
        # The worker's death may lose the queries it held; after its restart, none may be lost.
        after = run.probe.grade(started + grade.longest_gap + 1, ended, opts.allowance) if run.probe else grade
        if after.unanswered or after.servfail:
            row.failures.append(f"{after.unanswered} unanswered after the worker came back")
        run.finish()
    except Exception as exc:
        row.failures.append(f"scenario error: {type(exc).__name__}: {exc}")
    finally:
        run.stop()
    return row


# ========================================================================================
# Both APIs down at the start
# ========================================================================================

def cold_start(opts: argparse.Namespace) -> Row:
    seconds = opts.outage_seconds
    row = Row("both-down-at-start", f"Kubernetes API and Consul unreachable {seconds:g} s from the start")
    run = Run(opts, row, opts.services)
    try:
        run.world.start_servers()
        run.world.kube.admin("outage", {"seconds": seconds})
        run.world.consul.fault("outage", {"seconds": seconds})
        down = time.monotonic()
        run.world.make_bridge().start()
        run.bridge.wait_listening()
        row.other.append(f"listening {time.monotonic() - down:.1f} s after start")
        with run.dns():
            run.pause(min(2.0, seconds / 2))
            status, text = run.bridge.get("/readyz")
            waits = " ".join(line.strip("- ") for line in text.splitlines()[1:])
            row.other.append(f"/readyz {status}: {waits}")
            if status != 503 or "kubernetes" not in text or "consul" not in text:
                row.failures.append(f"/readyz during the outage: {status} {text!r}")
            run.pause(max(0.0, seconds - (time.monotonic() - down)))
            wait_listening(run.world.kube.url + "/version")
            back = time.monotonic()
            ready = run.wait_ready()
            row.other.append(f"ready {ready:.1f} s after the APIs returned")
            row.converge = run.converged("the APIs returned")
            run.take_requests()
            run.pause(opts.settle)
        grade = run.grade_fault(down, back, servfail_ok=True, require_answers=False)
        row.other.append(f"while down: {grade.ok} SERVFAIL or right, {grade.nxdomain} NXDOMAIN")
        after = run.probe.grade(back + ready + 1, time.monotonic(), opts.allowance) if run.probe else grade
        if after.incorrect or after.unanswered or after.servfail:
            row.failures.append(f"after ready: {after.incorrect} incorrect, {after.unanswered} unanswered, "
                                f"{after.servfail} SERVFAIL")
        run.finish()
    except Exception as exc:
        row.failures.append(f"scenario error: {type(exc).__name__}: {exc}")
    finally:
        run.stop()
    return row


# ========================================================================================
# DNS abuse and soak
# ========================================================================================

ABUSE_MAX_TCP = 64


def dns_abuse(opts: argparse.Namespace) -> Row:
    row = Row("dns-abuse", f"{opts.fuzz:,} fuzzed packets, {ABUSE_MAX_TCP * 3} TCP connections "
                           f"(max {ABUSE_MAX_TCP}), slow TCP clients, EDNS 65535")
    run = Run(opts, row, opts.services, settings=f"dns:\n  max_tcp_connections: {ABUSE_MAX_TCP}\n")
    try:
        run.start()
        big = chaos_abuse.add_big_service(run.world.kube, run.cluster)
        pids = [run.bridge.pid, *run.bridge.workers()]
        with run.dns():
            run.pause(opts.warmup)
            started = time.monotonic()
            result = chaos_abuse.abuse(run.bridge.dns_port, [s.fqdn for s in run.cluster.services], big,
                                       fuzz_count=opts.fuzz, seconds=opts.abuse_seconds, max_tcp=ABUSE_MAX_TCP)
            ended = time.monotonic()
            run.pause(opts.settle)
        row.other += result.figures()
        row.failures += result.failures()
        if [run.bridge.pid, *run.bridge.workers()] != pids:
            row.failures.append(f"processes changed: {pids} -> {[run.bridge.pid, *run.bridge.workers()]}")
            row.crashes += 1
        # A flood fills the socket's queue: some probe queries are dropped with the noise (a
        # figure); an answer that is wrong is a failure.
        run.grade_fault(started, ended, require_answers=False)
        row.converge = run.converged("the abuse")
        run.finish()
    except Exception as exc:
        row.failures.append(f"scenario error: {type(exc).__name__}: {exc}")
    finally:
        run.stop()
    return row


def soak(opts: argparse.Namespace) -> Row:
    seconds = opts.soak * 60
    row = Row("soak", f"{seconds / 60:g} min of churn over {opts.soak_services:,} Services "
                      f"({opts.soak_rate:g} changes/s)")
    run = Run(opts, row, opts.soak_services)
    try:
        run.start()
        with run.dns():
            run.pause(opts.warmup)
            start = run.bridge.resources()
            peak = dict(start)
            started = time.monotonic()
            changes = Changes(run.cluster, run.world.kube, int(seconds * opts.soak_rate), seconds).start()
            while not changes.done:
                run.pause(min(5.0, seconds))
                now = run.bridge.resources()
                peak = {k: max(v, now.get(k, 0)) for k, v in peak.items()}
                if not run.bridge.alive():
                    break
            ended = time.monotonic()
            row.changes = f"{changes.applied} applied"
            row.converge = run.converged("the churn")
            run.pause(opts.settle)
            end = run.bridge.resources()
        row.other.append(f"RSS {start['rss_kb'] / 1024:.0f} -> {end['rss_kb'] / 1024:.0f} MB "
                         f"(peak {peak['rss_kb'] / 1024:.0f})")
        row.other.append(f"files {start['files']} -> {end['files']}, threads {start['threads']} -> "
                         f"{end['threads']}, processes {start['processes']} -> {end['processes']}")
        if end["threads"] > start["threads"] or end["files"] > start["files"] + 2 \
                or end["processes"] != start["processes"]:
            row.failures.append("threads, files or processes grew")
        if end["rss_kb"] > start["rss_kb"] * 1.10 + 16 * 1024:
            row.failures.append("resident memory grew by more than 10% + 16 MB")
        run.grade_fault(started, ended)
        run.finish()
    except Exception as exc:
        row.failures.append(f"scenario error: {type(exc).__name__}: {exc}")
    finally:
        run.stop()
    return row


SCENARIOS: dict[str, Callable[[argparse.Namespace], Row]] = {
    "consul-unreachable": consul_outage,
    "consul-no-leader": consul_error("500"),
    "consul-rate-limit": consul_error("429"),
    "consul-slow": consul_error("slow"),
    "consul-index-reset": consul_index_reset,
    "kube-unreachable": kube_outage,
    "kube-watch-cuts": kube_watch_cuts,
    "kube-410-storm": kube_gone_storm,
    "kube-slow": kube_slow,
    "bridge-sigkill": bridge_kill,
    "dns-worker-sigkill": dns_worker_kill,
    "both-down-at-start": cold_start,
    "dns-abuse": dns_abuse,
    "soak": soak,
}


def run_scenario(name: str, opts: argparse.Namespace) -> Row:
    say(f"{name}: starting")
    started = time.monotonic()
    row = SCENARIOS[name](opts)
    say(f"{name}: {'holds' if not row.failures else 'FAILS: ' + '; '.join(row.failures)} "
        f"({time.monotonic() - started:.0f} s)")
    if not row.failures and not opts.keep:
        shutil.rmtree(row.workdir, ignore_errors=True)
    return row
