"""An outage of one server the bridge depends on (Consul, the Kubernetes API), shared by
every loop that talks to it.

Without it each loop retried on its own while a server was down: with many loops (one
blocking query per Consul service) and many bridges, a recovering server met a storm of
requests, and every retry logged a warning. Here:

- The client reports each request: `failed()` for a connection-level failure, a timeout
  or a 5xx (what an outage looks like; a 429 or a 4xx is an answer), `succeeded()` for
  anything the server answered.
- For `grace` seconds from the first failure the loops retry on their own, with their
  own quick backoff (`bridge.retry`), so a failure that heals costs what it always did
  (and logs nothing above debug: a blip is not news).
- Past the grace, with no success since, the loops are *parked*: `admit()` (called by
  the client before each request) refuses at once with `Unreachable`, sending nothing,
  and the loops' retry waits (`sleeper()`) last until the server answers. A single
  cheap probe (`probe`: GET /v1/status/leader, GET /readyz) runs on the schedule of an
  exponential backoff with jitter capped at `cap` (1 s), counted from the first
  failure; probes that fall in the grace are not sent. So after the grace the bridge
  sends one request per `cap` to that server, at a random phase (bridges cut off
  together do not probe in step), and notices its recovery within about `cap`.
- The first probe that fails makes it an outage: one WARNING line naming the server and
  the first error (errors carry no secrets: the clients redact them); then a summary
  line once a `summary_every` (a minute) while it lasts.
- A probe that answers releases the loops: every waiting loop wakes at once, and the
  recovery callbacks run (the reconciler and the leader election are woken). The
  outage ends at the next request that succeeds: one INFO line with its duration and
  how many requests failed. A request that fails right after a probe answered (a
  server that answers the probe but not the API) parks the loops again, silently.
  When the probe answers before any outage was declared, the server is up and only
  some of its requests fail (a fault of one path): one WARNING line a minute at most
  says so, and the loops go on retrying on their own.
- `bridge_server_up{server}` and `bridge_outages_total{server}`; `describe()` for
  /readyz.

There is no thread of its own: the probe and the summary are run by whichever caller
(a waiting loop, or a call `admit()` refuses) finds them due, one at a time, so an
outage nobody waits on costs nothing and leaves nothing running. Time is read through
an injected `Clock`, so tests drive it by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter, Gauge
from tenacity import RetryCallState, Retrying

from bridge.errors import Unavailable, Unreachable
from bridge.retry import Backoff

log = logging.getLogger(__name__)

SERVER_UP = Gauge("bridge_server_up", "1 while the server answers, 0 during an outage", ["server"])
OUTAGES = Counter("bridge_outages_total", "Outages of a server the bridge depends on", ["server"])
FAILED = Counter("bridge_server_failed_requests_total",
                 "Requests to the server that failed at the connection or with a 5xx (probes included)",
                 ["server"])

GRACE = 5.0  # seconds the loops retry on their own before only the probe is sent
CAP = 1.0  # the longest wait between probes, and so how late a recovery is noticed
PROBE_BASE = 0.1  # the first wait of the probe's schedule
SUMMARY_EVERY = 60.0
# How often a waiting loop looks at its own stop event, which is not this outage's.
CHECK_INTERRUPT = 0.25


class Clock(Protocol):
    """Monotonic seconds and waits on a condition (`bridge.testing.timers` has a manual one)."""

    def now(self) -> float: ...

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        """Wait on `cond` (held) for a notify or `timeout` seconds; may return early."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        cond.wait(timeout)


def probe_delay(attempt: int, base: float = PROBE_BASE, cap: float = CAP) -> float:
    """The wait after the `attempt`-th probe of the schedule: `bridge.retry.Backoff`'s
    exponential with equal jitter, truncated at `cap` (so never longer: the recovery is
    noticed within `cap`; and once there, exactly `cap`: never more than one a `cap`)."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = attempt
    return min(cap, Backoff(base, 2 * cap)(state))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


class Outage:
    """The state of one server as the bridge's requests find it. Thread-safe."""

    def __init__(self, server: str, probe: Callable[[], None], *, probe_name: str,
                 clock: Clock | None = None, grace: float = GRACE, cap: float = CAP,
                 probe_base: float = PROBE_BASE, summary_every: float = SUMMARY_EVERY) -> None:
        """`probe`: one cheap request; returns when the server answers, raises when not.
        `probe_name` says what it is, for the log."""
        self.server = server
        self._probe = probe
        self._probe_name = probe_name
        self._clock = clock or SystemClock()
        self._grace, self._cap, self._base = grace, cap, probe_base
        self._summary_every = summary_every
        self._cond = threading.Condition()
        self._callbacks: list[Callable[[], None]] = []
        self._closed = False
        # From a request's failure to the next success: `failing`. Once the probe failed
        # too, past the grace, it is an outage (`declared`, logged); a probe that answers
        # then `released` the loops to try again.
        self._failing = False
        self._declared = False
        self._released = False
        self._since = 0.0
        self._failures = 0
        self._first_error = self._last_error = ""
        self._probe_attempt = 0  # of the probe schedule, counted from the first failure
        self._probe_at = 0.0
        self._probing = False
        self._summary_at = 0.0
        self._partial_at = float("-inf")  # when a server that answers its probe was last logged
        self._wakes = 0  # bumped whenever the loops may try again: what waiting loops wait for
        SERVER_UP.labels(server).set(1)

    # --- what callers read ----------------------------------------------------------

    @property
    def down(self) -> bool:
        """In an outage: the probe failed too, and no request has succeeded since."""
        return self._declared

    @property
    def failing(self) -> bool:
        """A request failed and none has succeeded since (an outage or, in the grace, maybe
        one): what its loops meet is this outage's to log."""
        return self._failing

    def parked(self) -> bool:
        """Requests are not sent now: they failed for the grace, and no probe has answered."""
        with self._cond:
            return self._parked(self._clock.now())

    def _parked(self, now: float) -> bool:
        return self._failing and not self._released and now >= self._since + self._grace

    def describe(self) -> str:
        """One line for /readyz during an outage ("" otherwise)."""
        with self._cond:
            if not self._declared:
                return ""
            lasted = _duration(self._clock.now() - self._since)
            return (f"{self.server} unreachable for {lasted} ({self._failures} requests failed, "
                    f"last: {self._last_error}); waiting for it")

    def on_recovery(self, callback: Callable[[], None]) -> None:
        """Call `callback` (cheap, non-blocking) when a probe finds the server answering."""
        with self._cond:
            self._callbacks.append(callback)

    def close(self) -> None:
        """The client is closing: wake every waiting loop, and report nothing more (the
        requests a close cuts are not an outage)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- what the client reports ------------------------------------------------------

    def admit(self) -> None:
        """Before each request: raises `Unreachable` (nothing is sent) while parked. Runs
        the probe or the summary when either is due."""
        if not self._failing:
            return  # the common case: no lock
        self._tick()
        with self._cond:
            if self._parked(self._clock.now()):
                raise Unreachable(f"{self.server} unreachable: not sent, waiting for it "
                                  f"({self._probe_name} until it answers)")

    def failed(self, exc: BaseException) -> None:
        """A request failed at the connection or with a 5xx."""
        with self._cond:
            if self._closed:
                return
            FAILED.labels(self.server).inc()
            now = self._clock.now()
            self._last_error = str(exc)
            self._failures += 1
            if self._failing:
                if self._released:  # the probe answered, the API did not: still the outage
                    self._released = False
                    self._probe_at = now
                    self._schedule_probe(now + 1e-9)
                return
            self._failing, self._declared, self._released = True, False, False
            self._since, self._failures, self._first_error = now, 1, str(exc)
            self._probe_attempt = 0
            self._probe_at = now
            self._schedule_probe(now)
        log.debug("%s: %s; the loops retry for %gs before it counts as an outage",
                  self.server, exc, self._grace)

    def succeeded(self) -> None:
        """The server answered a request (whatever the answer)."""
        if not self._failing:
            return  # the common case: no lock
        with self._cond:
            if not self._failing:
                return
            lasted, failures, declared = self._clock.now() - self._since, self._failures, self._declared
            self._failing = self._declared = self._released = False
            self._wakes += 1
            self._cond.notify_all()
            SERVER_UP.labels(self.server).set(1)
        log.log(logging.INFO if declared else logging.DEBUG, "%s reachable again after %s "
                "(%d requests failed)", self.server, _duration(lasted), failures)

    # --- what the loops wait with -----------------------------------------------------

    def sleeper(self, interrupt: threading.Event | None = None) -> Callable[[float], None]:
        """A `sleep` for `bridge.retry.retrying`: see `pause`."""
        return lambda seconds: self.pause(seconds, interrupt)

    def pause(self, seconds: float, interrupt: threading.Event | None = None) -> None:
        """Wait `seconds`, and longer while the server is parked (an attempt would send
        nothing); return early when the loops may try again, the client closes, or
        `interrupt` is set. The probe runs here when due."""
        with self._cond:
            wakes = self._wakes
            until = self._clock.now() + seconds
        while True:
            self._tick()
            with self._cond:
                now = self._clock.now()
                if self._closed or self._wakes != wakes or (interrupt is not None and interrupt.is_set()):
                    return
                parked = self._parked(now)
                if now >= until and not parked:
                    return
                due = [] if parked else [until]
                if self._failing:
                    if self._declared:
                        due.append(self._summary_at)
                    if now < self._since + self._grace:
                        due.append(self._since + self._grace)
                    if parked and not self._probing:
                        due.append(self._probe_at)
                wait = min(due) - now if due else None
                if interrupt is not None:
                    wait = CHECK_INTERRUPT if wait is None else min(wait, CHECK_INTERRUPT)
                if wait is None or wait > 0:
                    self._clock.wait(self._cond, wait)

    # --- the probe and the summary ----------------------------------------------------

    def _schedule_probe(self, now: float) -> None:
        """Advance the probe schedule past `now` (probes in the grace are skipped)."""
        not_before = max(now, self._since + self._grace)
        while self._probe_at < not_before:
            self._probe_attempt += 1
            self._probe_at += probe_delay(self._probe_attempt, self._base, self._cap)

    def _tick(self) -> None:
        """Run the summary and the probe, if due and no other thread is running them."""
        with self._cond:
            now = self._clock.now()
            if not self._failing or self._closed:
                return
            if self._declared and now >= self._summary_at:
                self._summary_at = now + self._summary_every
                log.warning("%s still unreachable after %s: %d requests failed, last: %s",
                            self.server, _duration(now - self._since), self._failures,
                            self._last_error)
            if self._probing or not self._parked(now) or now < self._probe_at:
                return
            self._probing = True
        try:
            self._probe()
        except Exception as exc:  # whatever the probe met, the server is not back
            self._probe_failed(exc)
            return
        self._probe_answered()

    def _probe_failed(self, exc: Exception) -> None:
        error = str(exc) if isinstance(exc, Unavailable) else f"{self._probe_name}: {type(exc).__name__}"
        with self._cond:
            self._probing = False
            if not self._failing or self._closed:
                return
            FAILED.labels(self.server).inc()
            self._failures += 1
            self._last_error = error
            now = self._clock.now()
            self._probe_at = now  # the next one a whole wait after this one ended
            self._schedule_probe(now + 1e-9)
            self._cond.notify_all()  # the loops waiting meanwhile: the next probe is theirs
            declare = not self._declared
            if declare:
                self._declared = True
                self._summary_at = now + self._summary_every
                SERVER_UP.labels(self.server).set(0)
                OUTAGES.labels(self.server).inc()
                lasted, failures, first = _duration(now - self._since), self._failures, self._first_error
        if declare:
            log.warning("%s unreachable: %s (for %s, %d requests failed); the bridge waits for "
                        "it, sending only %s, at most once every %gs", self.server, first, lasted,
                        failures, self._probe_name, self._cap)
        else:
            log.debug("%s: %s failed: %s", self.server, self._probe_name, error)

    def _probe_answered(self) -> None:
        with self._cond:
            self._probing = False
            if not self._failing or self._closed:
                return
            now = self._clock.now()
            partial = not self._declared
            if partial:
                # Its API failed us for the whole grace, yet it answers: not an outage (a
                # fault of some paths, a Lease's say). The loops go on retrying on their own.
                lasted, failures, last = _duration(now - self._since), self._failures, self._last_error
                self._failing = False
                quiet = now - self._partial_at < self._summary_every
                if not quiet:
                    self._partial_at = now
            else:
                self._released = True
            self._wakes += 1
            self._cond.notify_all()
            callbacks = list(self._callbacks)
        if partial:
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "%s answers %s, but its requests failed for %s (%d failed, last: %s); "
                    "retrying them", self.server, self._probe_name, lasted, failures, last)
        else:
            log.debug("%s: %s answered; the loops try again", self.server, self._probe_name)
        for callback in callbacks:
            callback()
