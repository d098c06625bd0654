"""bridge.retry: one backoff for every retry, and no attempt once the bridge stops."""

from __future__ import annotations

import threading

import pytest

from bridge.errors import Rejected, Transient
from bridge.retry import Backoff, Stopped, retrying


class Failing:
    """A call that raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_delays_grow_exponentially_within_their_jitter_band_and_stop_at_the_cap():
    sleeps: list[float] = []
    call = Failing(*[Transient("down")] * 7)
    result = retrying(threading.Event(), Backoff(base=1.0, cap=8.0), sleep=sleeps.append)(call)
    assert result == "ok" and call.calls == 8
    for n, delay in enumerate(sleeps, start=1):
        top = min(8.0, 2.0 ** (n - 1))
        # Equal jitter: the lower half of each delay is fixed, so no retry comes at 0 s.
        assert top / 2 <= delay <= top, f"retry {n}: {delay}s outside [{top / 2}, {top}]"
    assert sleeps[0] >= 0.5, "the first retry must never come at once"


def test_retry_after_is_a_floor():
    sleeps: list[float] = []
    call = Failing(Transient("429", retry_after=7.0))
    retrying(threading.Event(), Backoff(base=0.1, cap=1.0), sleep=sleeps.append)(call)
    assert sleeps == [7.0], f"Retry-After must be waited out, got {sleeps}"


def test_jitter_spreads_the_retries():
    delays = set()
    for _ in range(20):
        sleeps: list[float] = []
        retrying(threading.Event(), Backoff(base=1.0, cap=8.0), sleep=sleeps.append)(
            Failing(Transient("down")))
        delays.add(sleeps[0])
    assert len(delays) > 1, "every bridge retrying at the same instant defeats the backoff"


def test_only_transient_errors_are_retried_by_default():
    call = Failing(Rejected("403"))
    with pytest.raises(Rejected):
        retrying(threading.Event(), Backoff(0.1, 1.0), sleep=lambda s: None)(call)
    assert call.calls == 1, "a refusal retried unchanged only earns the same refusal"


def test_attempts_run_out_with_the_last_error():
    call = Failing(Transient("one"), Transient("two"), Transient("three"))
    with pytest.raises(Transient, match="three"):
        retrying(threading.Event(), Backoff(0.1, 1.0), attempts=3, sleep=lambda s: None)(call)
    assert call.calls == 3


def test_nothing_is_attempted_once_stopped():
    stop = threading.Event()
    stop.set()
    call = Failing()
    with pytest.raises(Stopped):
        retrying(stop, Backoff(0.1, 1.0))(call)
    assert call.calls == 0, "a stopping bridge must not start a call (a write would be begun)"


def test_a_stop_during_the_wait_ends_the_retries_without_another_attempt():
    stop = threading.Event()
    call = Failing(Transient("down"), Transient("down"))
    with pytest.raises(Stopped):
        retrying(stop, Backoff(0.1, 1.0), sleep=lambda seconds: stop.set())(call)
    assert call.calls == 1


def test_the_default_wait_is_on_the_stop_event():
    class Stopping(threading.Event):
        """Records each wait, and is set during it: the bridge stops meanwhile."""

        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float | None] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout)
            self.set()
            return True

    stop = Stopping()
    call = Failing(Transient("down"), Transient("down"))
    with pytest.raises(Stopped):
        retrying(stop, Backoff(60.0, 60.0))(call)
    assert len(stop.waits) == 1 and (stop.waits[0] or 0) >= 30.0, stop.waits
    assert call.calls == 1, "no attempt after the stop ended the wait"
