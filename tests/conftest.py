"""What every test shares: `eventually()`, the one way a test waits for something, and a guard
that fails a test which leaves threads or child processes running after it.

Tests import the helper (`from tests.conftest import eventually`); the guard is autouse.
With BRIDGE_DNS_COMPILED=false in the environment, DNS servers answer without the compiled
fast path (`PURE_DNS`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import psutil
import pytest

# How long a test's threads and child processes get to end once the test and its fixtures
# have finished: a stopped server's connection threads and a killed child need a moment
# (a reader thread ends when its pipe closes, a child when it has handled its signal).
# `./dev test` runs the DNS tests again with BRIDGE_DNS_COMPILED=false: a `bridge run` reads
# it as `dns.compiled`; servers the tests build in process answer as if nothing was compiled.
PURE_DNS = os.environ.get("BRIDGE_DNS_COMPILED") == "false"
if PURE_DNS:
    from bridge.dns import udp_batch

    udp_batch._udpfast = None

LEFTOVER_GRACE = 5.0
# How long a call must stay unanswered before a test calls it "blocked" (a bound, not a sleep).
STILL_PENDING = 0.3


def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "", *, interval: float = 0.02) -> Any:
    """Polls `check` until it returns a truthy value and returns that value.

    An AssertionError from `check` counts as "not yet"; after `timeout` seconds the test fails
    with `what` and the last assertion's message or the last value.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = f"last value: {value!r}"
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            subject = f": {what}" if what else ""
            raise AssertionError(f"not within {timeout}s{subject} ({last})")
        time.sleep(interval)


def assert_pending(future: Future[Any], what: str = "the call") -> None:
    """`future` is still unanswered after STILL_PENDING seconds of real time.

    A lower bound only: it can miss an answer that would come later, never fail a correct
    server because the machine is slow.
    """
    with pytest.raises(FutureTimeout):
        future.result(timeout=STILL_PENDING)
        pytest.fail(f"{what} was answered while it should still be waiting")


def _children() -> dict[int, str]:
    """This process's running descendants (zombies have ended: only their exit status is left)."""
    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out[child.pid] = " ".join(child.cmdline()[:4]) or child.name()
        except psutil.NoSuchProcess:
            pass
    return out


def _describe(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    where = getattr(target, "__qualname__", None) or type(thread).__name__
    return f"{thread.name} ({where})"


@pytest.fixture(autouse=True)
def no_leftover_threads_or_processes() -> Iterator[None]:
    """Fails the test if threads or child processes it started outlive it and its fixtures.

    Only function-scoped fixtures are torn down before the comparison; what a module- or
    session-scoped fixture started (a shared server and its threads) was already running
    when the snapshot was taken, or belongs to such a fixture's server (its per-connection
    threads, which end with the connection within the grace period).
    """
    threads_before = set(threading.enumerate())
    children_before = set(_children())
    yield

    def leftovers() -> tuple[list[str], list[str]]:
        threads = [_describe(t) for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        children = [f"pid {pid}: {cmd}" for pid, cmd in _children().items() if pid not in children_before]
        return threads, children

    deadline = time.monotonic() + LEFTOVER_GRACE
    threads, children = leftovers()
    while (threads or children) and time.monotonic() < deadline:
        time.sleep(0.02)
        threads, children = leftovers()
    if threads or children:
        pytest.fail(
            f"still running {LEFTOVER_GRACE}s after the test: threads {threads}, child processes {children}",
            pytrace=False,
        )
