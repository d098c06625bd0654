"""Retries, one style for the whole bridge: tenacity, ending when the bridge stops.

Every call the bridge repeats after a failure (a watch, a blocking query, a write, a
reconcile pass) goes through `retrying()`. The delays are `Backoff`: exponential with
equal jitter (half of each delay fixed, half random), so bridges restarted together do
not retry in step and no retry comes at 0 s; capped; a server's Retry-After is a floor.
The waits are on the bridge's stop event, and no attempt starts once it is set: the
call raises `Stopped` instead, so a write is either sent or not, never begun on the way
out. Loops that run forever make a fresh attempt count per call they repeat (a success
starts the next failure's backoff from the bottom). Shared by the Kubernetes and Consul
sides, which must not import each other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_base,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from bridge.errors import BridgeError, Transient

log = logging.getLogger(__name__)


class Stopped(BridgeError):
    """The bridge is stopping: the call was not attempted (again)."""


class Backoff(wait_base):
    """A tenacity wait: `base` * 2^(n-1) for the n-th retry, at most `cap`; the upper half
    of each delay is random. A Retry-After the failed call carried is the floor."""

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self._fixed = wait_exponential(multiplier=base / 2, max=cap / 2)
        self._random = wait_random_exponential(multiplier=base / 2, max=cap / 2)

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self._fixed(retry_state) + self._random(retry_state)
        outcome = retry_state.outcome
        hint = getattr(outcome.exception(), "retry_after", None) \
            if outcome is not None and outcome.failed else None
        # Coming back before a server's Retry-After only earns another 429.
        return max(delay, hint or 0.0)


def retrying(stop: threading.Event, backoff: Backoff, *,
             retry: retry_base | None = None, attempts: int | None = None,
             sleep: Callable[[float], object] | None = None,
             before_sleep: Callable[[RetryCallState], None] | None = None) -> Retrying:
    """A tenacity `Retrying`: retries what `retry` says (default: `Transient` errors),
    at most `attempts` times in all (None: until it succeeds), then raises the last error.
    Waits with `sleep` (default: on `stop`, which a stop cuts short); raises `Stopped`
    before any attempt once `stop` is set."""

    def not_stopped(state: RetryCallState) -> None:
        if stop.is_set():
            raise Stopped("the bridge is stopping")

    def pause(seconds: float) -> None:
        (sleep or stop.wait)(seconds)

    return Retrying(
        retry=retry or retry_if_exception_type(Transient),
        stop=stop_after_attempt(attempts) if attempts else stop_never,
        wait=backoff,
        before=not_stopped,
        sleep=pause,
        before_sleep=before_sleep,
        reraise=True,
    )
