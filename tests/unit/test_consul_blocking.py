"""Consul blocking-query rules: index handling, rate limit, and the loop (no sleeping)."""

from __future__ import annotations

import threading
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.consul import blocking
from bridge.consul.blocking import BlockingLoop, TokenBucket, next_index
from bridge.errors import Conflict, Rejected, Transient

# --- next_index ---------------------------------------------------------------------------


@pytest.mark.parametrize(("previous", "returned", "expected"), [
    (0, 5, 5),
    (5, 5, 5),      # equal stays
    (5, 6, 6),
    (5, 4, 0),      # backwards resets
    (100, 1, 0),
    (5, 0, 0),
    (0, 0, 1),      # never below 1
    (1, 1, 1),
])
def test_next_index(previous, returned, expected):
    assert next_index(previous, returned) == expected, f"next_index({previous}, {returned})"


@given(st.integers(0, 2**64), st.integers(0, 2**64))
def test_next_index_property(previous, returned):
    got = next_index(previous, returned)
    if returned < previous:
        assert got == 0
    else:
        assert got >= 1 and got == max(returned, 1)


# --- TokenBucket --------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_calls(bucket: TokenBucket, clock: FakeClock, n: int) -> list[float]:
    """Behave like the loop: ask for the delay, wait it out, call; return call times."""
    times = []
    for _ in range(n):
        clock.now += bucket.delay()
        times.append(round(clock.now, 9))
    return times


def test_token_bucket_burst_then_spaced():
    clock = FakeClock(100.0)
    bucket = TokenBucket(burst=2, interval=0.05, clock=clock)
    times = run_calls(bucket, clock, 6)
    assert times == [100.0, 100.0, 100.05, 100.1, 100.15, 100.2], times


def test_token_bucket_refills_after_idle_but_never_above_burst():
    clock = FakeClock(0.0)
    bucket = TokenBucket(burst=2, interval=0.05, clock=clock)
    run_calls(bucket, clock, 4)
    clock.now += 3600.0
    start = clock.now
    times = run_calls(bucket, clock, 4)
    assert times[:2] == [start, start], "a full burst after a long idle"
    assert times[2] == pytest.approx(start + 0.05), f"only `burst` tokens are kept: {times}"
    assert times[3] == pytest.approx(start + 0.10)


def test_token_bucket_partial_refill():
    clock = FakeClock(0.0)
    bucket = TokenBucket(burst=1, interval=1.0, clock=clock)
    assert bucket.delay() == 0.0
    clock.now += 0.25
    assert bucket.delay() == pytest.approx(0.75), "waits only for the rest of the interval"


@given(st.lists(st.floats(0, 0.2), min_size=1, max_size=30))
def test_token_bucket_rate_never_exceeded(gaps):
    # Whatever the caller does between calls, over any window the calls made are at most
    # burst + window / interval.
    clock = FakeClock(0.0)
    bucket = TokenBucket(burst=2, interval=0.05, clock=clock)
    times = []
    for gap in gaps:
        clock.now += gap
        clock.now += bucket.delay()
        times.append(clock.now)
    for i in range(len(times)):
        for j in range(i, len(times)):
            window = times[j] - times[i]
            assert j - i + 1 <= 2 + window / 0.05 + 1e-6, (times, i, j)


# --- BlockingLoop -------------------------------------------------------------------------


class NoWaitEvent(threading.Event):
    """A stop event whose wait() never sleeps; it records what it was asked to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


class FakeBackoff:
    """A tenacity wait that records what it is asked: the attempt number and the failed
    call's Retry-After; it waits nothing, or the Retry-After when there is one."""

    instances: ClassVar[list[FakeBackoff]] = []

    def __init__(self, *args, **kwargs) -> None:
        self.hints: list[float | None] = []
        self.attempts: list[int] = []
        FakeBackoff.instances.append(self)

    def __call__(self, retry_state) -> float:
        hint = getattr(retry_state.outcome.exception(), "retry_after", None)
        self.hints.append(hint)
        self.attempts.append(retry_state.attempt_number)
        return 0.0 if hint is None else hint


class FreeBucket:
    def __init__(self, *args, **kwargs) -> None:
        self.calls = 0

    def delay(self) -> float:
        self.calls += 1
        return 0.0


@pytest.fixture(autouse=True)
def no_real_waiting(monkeypatch):
    FakeBackoff.instances.clear()
    monkeypatch.setattr(blocking, "Backoff", FakeBackoff)
    monkeypatch.setattr(blocking, "TokenBucket", FreeBucket)


class Script:
    """fetch() answers from a script (an (index, value) pair or an exception per call)."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.asked: list[int | None] = []

    def __call__(self, index: int | None):
        self.asked.append(index)
        if not self.answers:
            raise AssertionError("fetch called after the script ran out")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def collector(stop: threading.Event, n: int):
    got: list = []

    def deliver(value) -> bool:
        got.append(value)
        if len(got) >= n:
            stop.set()
        return True

    return got, deliver


def test_first_request_has_no_index_then_follows_the_returned_index():
    stop = NoWaitEvent()
    fetch = Script([(10, "a"), (10, "a"), (12, "b")])
    got, deliver = collector(stop, 3)
    loop = BlockingLoop("t", fetch, deliver, stop)
    loop.run()
    assert fetch.asked == [None, 10, 10], fetch.asked
    assert got == ["a", "a", "b"], "deliver gets every answer, changed or not"
    assert loop.index == 12


def test_index_going_backwards_resets_to_no_index():
    stop = NoWaitEvent()
    fetch = Script([(10, "a"), (3, "b"), (4, "c"), (9, "d")])
    got, deliver = collector(stop, 4)
    BlockingLoop("t", fetch, deliver, stop).run()
    assert fetch.asked == [None, 10, None, 4], f"a backwards index must restart: {fetch.asked}"
    assert got == ["a", "b", "c", "d"]


def test_index_zero_is_sent_as_one():
    stop = NoWaitEvent()
    fetch = Script([(0, "a"), (0, "b")])
    got, deliver = collector(stop, 2)
    BlockingLoop("t", fetch, deliver, stop).run()
    assert fetch.asked == [None, 1], fetch.asked
    assert got == ["a", "b"]


def test_transient_errors_back_off_and_keep_the_index():
    stop = NoWaitEvent()
    errors: list = []
    fetch = Script([(7, "a"), Transient("500 No cluster leader"),
                    Transient("429", retry_after=2.5), (8, "b")])
    got, deliver = collector(stop, 2)
    loop = BlockingLoop("t", fetch, deliver, stop, on_error=errors.append)
    loop.run()
    assert fetch.asked == [None, 7, 7, 7], "an error must not reset or skip the index"
    assert [str(e) for e in errors] == ["500 No cluster leader", "429"]
    backoff = FakeBackoff.instances[-1]
    assert backoff.hints == [None, 2.5], "Retry-After is passed to the backoff"
    assert stop.waits == [0.0, 2.5], f"the loop must wait the backoff delay: {stop.waits}"
    assert backoff.attempts == [1, 2], "the attempts of one fetch are counted together"
    assert got == ["a", "b"]


def test_a_success_starts_the_next_backoff_from_the_first_attempt():
    stop = NoWaitEvent()
    fetch = Script([Transient("a"), Transient("b"), (5, "x"), Transient("c"), (6, "y")])
    got, deliver = collector(stop, 2)
    BlockingLoop("t", fetch, deliver, stop).run()
    assert FakeBackoff.instances[-1].attempts == [1, 2, 1], "an answer resets the backoff"
    assert got == ["x", "y"]


def test_rejected_also_backs_off():
    stop = NoWaitEvent()
    errors: list = []
    fetch = Script([Rejected("403"), (3, "a")])
    got, deliver = collector(stop, 1)
    BlockingLoop("t", fetch, deliver, stop, on_error=errors.append).run()
    assert len(errors) == 1 and isinstance(errors[0], Rejected)
    assert FakeBackoff.instances[-1].hints == [None]
    assert got == ["a"]


def test_stop_during_backoff_ends_the_loop():
    stop = NoWaitEvent()
    fetch = Script([Transient("down")])
    BlockingLoop("t", fetch, lambda v: True, stop, on_error=lambda e: stop.set()).run()
    assert fetch.asked == [None], "no fetch after stop was set during the backoff"


def test_unexpected_errors_back_off_and_the_loop_goes_on():
    stop = NoWaitEvent()
    fetch = Script([Conflict("cas"), ValueError("garbled"), (4, "ok")])
    got, deliver = collector(stop, 1)
    BlockingLoop("t", fetch, deliver, stop).run()
    assert got == ["ok"], "the loop must survive errors it does not know"
    assert fetch.asked == [None, None, None]


def test_stop_set_by_deliver_after_n_calls_ends_the_loop():
    stop = NoWaitEvent()
    fetch = Script([(i, i) for i in range(1, 6)])
    got, deliver = collector(stop, 3)
    BlockingLoop("t", fetch, deliver, stop).run()
    assert got == [1, 2, 3]
    assert len(fetch.asked) == 3


def test_deliver_returning_false_ends_the_loop():
    stop = NoWaitEvent()
    fetch = Script([(1, "a"), (2, "b")])
    seen: list = []
    BlockingLoop("t", fetch, lambda v: seen.append(v) and False, stop).run()
    assert seen == ["a"] and fetch.asked == [None]
    assert not stop.is_set()


def test_stop_already_set_means_no_fetch():
    stop = NoWaitEvent()
    stop.set()
    fetch = Script([])
    BlockingLoop("t", fetch, lambda v: True, stop).run()
    assert fetch.asked == []


def test_answer_arriving_after_stop_is_not_delivered():
    stop = NoWaitEvent()
    seen: list = []

    def fetch(index):
        stop.set()  # stopped while the request was in flight
        return 5, "late"

    BlockingLoop("t", fetch, lambda v: seen.append(v) or True, stop).run()
    assert seen == []


class FixedBucket:
    def __init__(self, pauses: list[float]) -> None:
        self.pauses = list(pauses)

    def delay(self) -> float:
        return self.pauses.pop(0) if self.pauses else 0.0


def test_rate_limit_pause_is_waited_on_the_stop_event():
    stop = NoWaitEvent()
    fetch = Script([(1, "a"), (2, "b")])
    got, deliver = collector(stop, 2)
    loop = BlockingLoop("t", fetch, deliver, stop)
    loop._bucket = FixedBucket([0.0, 0.05])
    loop.run()
    assert stop.waits == [0.05], f"the pause must be waited on stop, not slept: {stop.waits}"
    assert got == ["a", "b"]


def test_stop_during_rate_limit_pause_ends_the_loop():
    stop = NoWaitEvent()
    fetch = Script([(1, "a"), (2, "b")])

    class StoppingBucket:
        calls = 0

        def delay(self) -> float:
            self.calls += 1
            if self.calls == 2:
                stop.set()  # stopped while the loop waits out its pause
                return 0.05
            return 0.0

    loop = BlockingLoop("t", fetch, lambda v: True, stop)
    loop._bucket = StoppingBucket()
    loop.run()
    assert fetch.asked == [None], "no fetch once stop is set during the pause"
    assert stop.waits == [0.05]
