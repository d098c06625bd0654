"""bridge.outage: while a server is down, one probe a second instead of every loop's retries,
and three kinds of log line (start, a summary a minute, end). Time is a ManualClock."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from itertools import pairwise

import pytest

from bridge.consul.blocking import BlockingLoop
from bridge.errors import Unavailable, Unreachable
from bridge.outage import CAP, GRACE, PROBE_BASE, Outage, probe_delay
from bridge.testing.timers import ManualClock
from tests.conftest import eventually

STEP = 0.01  # how finely the single-threaded tests move the clock


class Server:
    """A server that is up or down, and the requests (probes apart) it was sent."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.up = False
        self.probes: list[float] = []
        self.requests: list[float] = []
        self.lock = threading.Lock()

    def probe(self) -> None:
        with self.lock:
            self.probes.append(self.clock.now())
        if not self.up:
            raise Unavailable("GET /probe: ConnectionRefusedError")

    def request(self, outage: Outage) -> None:
        """What a client does for one request: ask the outage, send, report."""
        outage.admit()
        with self.lock:
            self.requests.append(self.clock.now())
        if not self.up:
            exc = Unavailable("catalog services: ConnectionError")
            outage.failed(exc)
            raise exc
        outage.succeeded()


def consul(server: Server, clock: ManualClock) -> Outage:
    return Outage("consul", server.probe, probe_name="GET /v1/status/leader", clock=clock)


def drive(outage: Outage, clock: ManualClock, seconds: float, step: float = STEP) -> int:
    """Move the clock `seconds` in `step`s, calling `admit()` (as a refused call would) at
    each; returns how many were refused."""
    refused = 0
    for _ in range(round(seconds / step)):
        clock.advance(step)
        try:
            outage.admit()
        except Unreachable:
            refused += 1
    return refused


def test_the_probe_waits_out_the_grace_then_comes_once_a_second():
    clock = ManualClock()
    server = Server(clock)
    outage = consul(server, clock)
    start = clock.now()
    with pytest.raises(Unavailable):
        server.request(outage)
    refused = drive(outage, clock, 65.0)
    probes = [t - start for t in server.probes]
    assert probes and probes[0] >= GRACE, f"no probe in the grace, the loops retry then: {probes[:3]}"
    assert probes[0] < GRACE + CAP + STEP, f"the first probe comes within a second of the grace: {probes[0]}"
    gaps = [b - a for a, b in pairwise(probes)]
    assert min(gaps) >= CAP - 1e-9, f"never more than one probe a second: {min(gaps)}"
    assert max(gaps) <= CAP + STEP + 1e-9, f"never more than a second without one: {max(gaps)}"
    assert len(probes) <= 60 + 1, f"{len(probes)} probes in the 60 s after the grace"
    assert refused >= (65.0 - GRACE - CAP) / STEP - 1, "every call after the grace is refused unsent"
    assert server.requests == [start], "nothing but probes is sent while parked"


def test_bridges_cut_off_together_probe_at_different_moments():
    phases = set()
    for _ in range(20):
        clock = ManualClock()
        server = Server(clock)
        outage = consul(server, clock)
        start = clock.now()
        with pytest.raises(Unavailable):
            server.request(outage)
        drive(outage, clock, GRACE + 1.5)
        phases.add(round(server.probes[0] - start, 2))
    assert len(phases) > 1, f"the first probe of 20 bridges came at one moment: {phases}"


def test_the_probe_schedule_is_an_exponential_backoff_with_jitter_capped_at_a_second():
    for attempt in range(1, 12):
        low = min(CAP, PROBE_BASE / 2 * 2 ** (attempt - 1))
        delays = {probe_delay(attempt) for _ in range(200)}
        assert all(low <= d <= min(CAP, 2 * low) for d in delays), \
            f"probe {attempt}: {sorted(delays)[:3]}..{sorted(delays)[-3:]} outside [{low}, {min(CAP, 2 * low)}]"
        if 2 * low <= CAP:
            assert len(delays) > 1, f"probe {attempt}: no jitter below the cap"
    assert probe_delay(20) == CAP, "at the cap: exactly the cap"


def test_one_line_when_it_starts_one_a_minute_while_it_lasts_one_when_it_ends(caplog):
    caplog.set_level(logging.INFO, logger="bridge.outage")
    clock = ManualClock()
    server = Server(clock)
    outage = consul(server, clock)
    for _ in range(10):  # the loops' own retries in the grace: the same outage
        with pytest.raises(Unavailable):
            server.request(outage)
        clock.advance(0.3)
    drive(outage, clock, 150.0, step=0.05)
    server.up = True
    drive(outage, clock, 1.5, step=0.05)  # the probe finds it back
    server.request(outage)  # and the loops' first request ends the outage
    server.request(outage)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 4, "\n".join(m for _, m in lines)
    (level0, started), (level1, summary1), (level2, summary2), (level3, ended) = lines
    # Declared by the first probe, which comes within a second of the grace.
    assert level0 == "WARNING", started
    assert started.startswith("consul unreachable: catalog services: ConnectionError (for 5."), started
    assert "sending only GET /v1/status/leader, at most once every 1s" in started, started
    assert (level1, level2) == ("WARNING", "WARNING"), lines
    assert re.match(r"consul still unreachable after 1m0[56]s: \d+ requests failed, last: GET /probe",
                    summary1), summary1
    assert re.match(r"consul still unreachable after 2m0[56]s", summary2), summary2
    assert level3 == "INFO" and ended.startswith("consul reachable again after 2m3"), ended
    failed = 10 + len(server.probes) - 1  # the probe that succeeded did not fail
    assert f"({failed} requests failed)" in ended, (ended, failed)


def test_a_failure_that_heals_within_the_grace_costs_no_line_and_no_wait(caplog):
    caplog.set_level(logging.INFO, logger="bridge.outage")
    clock = ManualClock()
    server = Server(clock)
    outage = consul(server, clock)
    with pytest.raises(Unavailable):
        server.request(outage)
    server.up = True
    clock.advance(0.1)
    server.request(outage)  # admitted at once: the grace
    assert not outage.down and not server.probes
    assert outage.describe() == ""
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_server_that_answers_the_probe_but_not_the_api_is_still_one_outage(caplog):
    caplog.set_level(logging.INFO, logger="bridge.outage")
    clock = ManualClock()
    server = Server(clock)
    outage = consul(server, clock)
    with pytest.raises(Unavailable):
        server.request(outage)
    drive(outage, clock, GRACE + 1.0)
    assert outage.down
    server.up = True
    drive(outage, clock, CAP + 0.1)  # the next probe answers: the loops are released
    assert not outage.parked()
    server.up = False
    with pytest.raises(Unavailable):
        server.request(outage)  # the API does not: parked again, at once
    assert outage.parked(), "a failure right after the probe answered parks the loops again"
    drive(outage, clock, 3.0)
    assert [r.getMessage()[:20] for r in caplog.records] == ["consul unreachable: "]


class PathFault(Server):
    """A server that answers its probe while one path of its API fails."""

    def probe(self) -> None:
        with self.lock:
            self.probes.append(self.clock.now())


def test_a_fault_of_some_paths_is_no_outage_and_is_said_once_a_minute(caplog):
    caplog.set_level(logging.INFO, logger="bridge.outage")
    clock = ManualClock()
    server = PathFault(clock)
    outage = consul(server, clock)
    for _ in range(30):  # a Lease renewal failing every 2 s for a minute
        with pytest.raises(Unavailable):
            server.request(outage)
        drive(outage, clock, 2.0)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert re.match(r"consul answers GET /v1/status/leader, but its requests failed for [56]\.\ds "
                    r"\(3 failed, last: catalog services: ConnectionError\); retrying them", lines[0]), lines[0]
    assert not outage.down and outage.describe() == ""
    assert len(server.probes) <= 60 / GRACE + 1, f"one probe a grace at most: {len(server.probes)}"


def test_readiness_text_names_the_server_and_the_error():
    clock = ManualClock()
    server = Server(clock)
    outage = consul(server, clock)
    with pytest.raises(Unavailable):
        server.request(outage)
    drive(outage, clock, 12.0, step=0.1)
    text = outage.describe()
    assert text.startswith("consul unreachable for 12.0s ("), text
    assert "last: GET /probe: ConnectionRefusedError" in text, text


def test_requests_cut_by_a_close_start_no_outage(caplog):
    clock = ManualClock()
    server = Server(clock)
    outage = consul(server, clock)
    outage.close()
    with pytest.raises(Unavailable):
        server.request(outage)
    assert not outage.down and not caplog.records


# --- loops waiting on it ----------------------------------------------------------------

LOOPS = 6


class Loops:
    """`LOOPS` blocking loops, each with its own backoff, against one `Server`: a request
    that succeeds blocks (as a blocking query does) until the loop stops."""

    def __init__(self, server: Server, outage: Outage) -> None:
        self.stop = threading.Event()
        self.answered = 0
        self.lock = threading.Lock()

        def fetch(index: int | None) -> tuple[int, str]:
            server.request(outage)
            with self.lock:
                self.answered += 1
            self.stop.wait()
            return 1, "x"

        self.threads = [threading.Thread(
            target=BlockingLoop(f"loop {n}", fetch, lambda value: True, self.stop, outage=outage).run,
            name=f"loop-{n}", daemon=True) for n in range(LOOPS)]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)  # a hang bound: each notices its stop within CHECK_INTERRUPT


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Server:
    return Server(clock)


@pytest.fixture
def loops(server: Server, clock: ManualClock) -> Iterator[tuple[Loops, Outage]]:
    outage = consul(server, clock)
    running = Loops(server, outage)
    yield running, outage
    running.close()


def step(clock: ManualClock, seconds: float, running: Loops) -> None:
    """Advance the clock once every loop not yet answered waits on it, each for a time
    still to come (so none has yet to notice the last advance)."""

    def settled() -> bool:
        left = clock.waiting()
        return running.answered == LOOPS or (len(left) >= LOOPS - running.answered and min(left) > 0)

    eventually(settled, what="the loops waiting on the clock")
    clock.advance(seconds)


def test_loops_send_nothing_after_the_grace_and_all_wake_when_the_probe_finds_the_server(
        loops, server, clock, caplog):
    caplog.set_level(logging.INFO, logger="bridge.outage")
    running, outage = loops
    start = clock.now()
    eventually(lambda: len(server.requests) >= LOOPS, what="every loop's first request")
    while clock.now() < start + GRACE + 20.0:
        step(clock, 0.05, running)
    after_grace = [t for t in server.requests if t >= start + GRACE]
    assert after_grace == [], f"{len(after_grace)} loop requests after the grace"
    assert len(server.requests) > LOOPS, "the loops retried on their own in the grace"
    assert len(server.probes) <= 20 + 1, f"{len(server.probes)} probes in 20 s"
    server.up = True
    back = clock.now()
    while running.answered < LOOPS:
        assert clock.now() - back <= CAP + 0.1, \
            f"only {running.answered} of {LOOPS} loops back {clock.now() - back:.2f}s after the server"
        step(clock, 0.05, running)
    # The loops started, and met the server down, in the fixture's setup.
    warnings = [r.getMessage() for r in caplog.get_records("setup") + caplog.records
                if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("consul unreachable"), warnings
    assert eventually(lambda: [r.getMessage() for r in caplog.records
                               if r.getMessage().startswith("consul reachable again")])
    assert not outage.down
