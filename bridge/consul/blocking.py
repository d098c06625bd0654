"""Consul blocking-query rules, and a loop that follows them.

The rules (Consul's "blocking queries" documentation): an index that goes backwards
resets to 0 (a snapshot restore or a KV list delete); an index is never below 1; the loop
is rate-limited so a server that answers at once cannot spin it; errors back off with
jitter (`bridge.retry`). No client library does this, so every watcher here goes through
`BlockingLoop` (a thread of its own) or `BlockingQuery` (a task on an event loop, for the
Consul source's many queries on one thread): both follow the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from bridge.errors import BridgeError, Denied, Throttled, Unavailable
from bridge.outage import Outage
from bridge.retry import Backoff, Stopped, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")


def next_index(previous: int, returned: int) -> int:
    """The index for the next request: reset on a backwards step, never below 1."""
    if returned < previous:
        return 0
    return max(returned, 1)


class TokenBucket:
    """At most `burst` immediate calls, then one per `interval` seconds."""

    def __init__(self, burst: int = 2, interval: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.interval, self._clock = burst, interval, clock
        self.tokens = float(burst)
        self._last = clock()

    def delay(self) -> float:
        """Seconds to wait before the next call (and take its token)."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) / self.interval)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        wait = (1 - self.tokens) * self.interval
        self.tokens = 0.0
        self._last = now + wait
        return wait


class BlockingLoop(Generic[T]):
    """Calls `fetch(index) -> (index, value)` forever, handing each value to `deliver`.

    `deliver` gets every answer, changed or not; it decides what a change is. The loop ends
    when `stop` is set or `deliver` returns False. With `outage` (Consul's), its retries
    wait through an outage and wake when Consul is back (`bridge/outage.py`).
    """

    def __init__(self, name: str, fetch: Callable[[int | None], tuple[int, T]],
                 deliver: Callable[[T], bool], stop: threading.Event,
                 on_error: Callable[[BaseException], None] | None = None,
                 outage: Outage | None = None) -> None:
        self.name = name
        self._fetch = fetch
        self._deliver = deliver
        self._stop = stop
        self._on_error = on_error
        self.index = 0
        self._bucket = TokenBucket()
        # Capped low: after an outage, changes made meanwhile must show within seconds of
        # recovery, and a refused connection costs the server nothing. Any error is
        # retried: a bug or a surprise from the server must not end the watch for good.
        self._retrying = retrying(stop, Backoff(base=0.05, cap=1.0),
                                  retry=retry_if_exception_type(Exception),
                                  sleep=outage.sleeper(stop) if outage is not None else None,
                                  before_sleep=self._failed)

    def run(self) -> None:
        """Until `stop` is set or `deliver` says no more."""
        while not self._stop.is_set():
            pause = self._bucket.delay()
            if pause and self._stop.wait(pause):
                return
            try:
                returned, value = self._retrying(self._fetch, self.index or None)
            except Stopped:
                return
            new = next_index(self.index, returned)
            if new == 0:
                log.info("%s: index went backwards (%d -> %d); starting over", self.name,
                         self.index, returned)
            self.index = new
            if self._stop.is_set() or not self._deliver(value):
                return

    def _failed(self, state: RetryCallState) -> None:
        _log_failure(self.name, state, self._on_error, stopping=self._stop.is_set())


def _log_failure(name: str, state: RetryCallState, on_error: Callable[[BaseException], None] | None,
                 *, stopping: bool) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    if exc is None:
        return
    if on_error:
        on_error(exc)
    if stopping:
        log.debug("%s: ended by the stop: %s", name, exc)  # its client was closed
    elif isinstance(exc, Denied | Throttled | Unavailable):  # logged once already (the client, the outage)
        log.debug("%s: %s; retrying in %.2fs", name, exc, state.upcoming_sleep)
    elif isinstance(exc, BridgeError):
        log.warning("%s: %s; retrying in %.2fs", name, exc, state.upcoming_sleep)
    else:
        log.error("%s: unexpected error; retrying in %.2fs", name, state.upcoming_sleep, exc_info=exc)


class BlockingQuery(Generic[T]):
    """`BlockingLoop` as a coroutine: awaits `fetch(index) -> (index, value)` forever and hands
    each value to `deliver`, with the same index rules, rate limit and backoff.

    `run()` ends when `deliver` returns False; cancelling its task ends it at once (an
    answer in flight is dropped). `sleep` and `clock` are injectable, so tests keep time.
    """

    def __init__(self, name: str, fetch: Callable[[int | None], Awaitable[tuple[int, T]]],
                 deliver: Callable[[T], bool], *,
                 on_error: Callable[[BaseException], None] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._fetch = fetch
        self._deliver = deliver
        self._on_error = on_error
        self._sleep = sleep
        self.index = 0
        self._bucket = TokenBucket(clock=clock)

    async def run(self) -> None:
        """Until `deliver` says no more (or the task is cancelled)."""
        while True:
            pause = self._bucket.delay()
            if pause:
                await self._sleep(pause)
            returned, value = await self._answer(self.index or None)
            new = next_index(self.index, returned)
            if new == 0:
                log.info("%s: index went backwards (%d -> %d); starting over", self.name,
                         self.index, returned)
            self.index = new
            more = self._deliver(value)
            del value  # not held while the next query blocks: thousands of them block at once
            if not more:
                return

    async def _answer(self, index: int | None) -> tuple[int, T]:
        try:
            return await self._fetch(index)
        except Exception as exc:
            failed: list[Exception] = [exc]
        # Only a failure pays for tenacity's state; its first attempt is the one that failed.
        # As BlockingLoop's: capped low, and any error is retried.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception), wait=Backoff(base=0.05, cap=1.0),
            sleep=self._sleep, before_sleep=self._failed, reraise=True)

        async def attempt(index: int | None) -> tuple[int, T]:
            if failed:
                raise failed.pop()
            return await self._fetch(index)

        answer: tuple[int, T] = await retrying(attempt, index)
        return answer

    def _failed(self, state: RetryCallState) -> None:
        _log_failure(self.name, state, self._on_error, stopping=False)
