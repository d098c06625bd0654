"""Coalescing wake-ups, simulated on a fake clock: nothing here sleeps."""

from __future__ import annotations

import heapq
import itertools
import threading

import pytest

from bridge.reconcile.trigger import Trigger


class Sim:
    """A fake clock plus a Condition stand-in whose wait() advances the clock.

    Pokes are scheduled at fake times; a wait(timeout) runs time forward to the next
    scheduled poke (which notifies) or to the end of the timeout, whichever comes first.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int]] = []
        self._seq = itertools.count()
        self.trigger: Trigger | None = None
        self.waits: list[float] = []

    # the clock
    def __call__(self) -> float:
        return self.now

    # the Condition protocol Trigger uses
    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def notify_all(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "the trigger must never wait without a timeout"
        assert timeout > 0, f"a non-positive wait would spin: {timeout}"
        self.waits.append(timeout)
        if len(self.waits) > 10_000:
            raise AssertionError("trigger.wait() is spinning")
        end = self.now + timeout
        if self._events and self._events[0][0] <= end:
            at, _ = heapq.heappop(self._events)
            self.now = max(self.now, at)
            assert self.trigger is not None
            self.trigger.poke()  # a source thread pokes; wakes the waiter
            return True
        self.now = end
        return False

    def schedule_pokes(self, *times: float) -> None:
        for t in times:
            heapq.heappush(self._events, (t, next(self._seq)))

    def make(self, quiet: float, max_delay: float) -> Trigger:
        trigger = Trigger(quiet, max_delay, clock=self)
        trigger._cond = self  # type: ignore[assignment]
        self.trigger = trigger
        return trigger


def test_timeout_without_a_poke_returns_false():
    sim = Sim()
    trigger = sim.make(quiet=1.0, max_delay=5.0)
    assert trigger.wait(30.0) is None
    assert sim.now == pytest.approx(30.0), "wait(timeout) should return at the timeout"
    assert trigger.pokes == 0


def test_a_poke_before_wait_returns_after_the_quiet_period():
    sim = Sim()
    trigger = sim.make(quiet=1.0, max_delay=5.0)
    trigger.poke()
    assert trigger.wait(30.0) is not None
    assert sim.now == pytest.approx(1.0)


def test_pokes_in_a_burst_are_coalesced_into_one_wake_up():
    sim = Sim()
    trigger = sim.make(quiet=1.0, max_delay=10.0)
    sim.schedule_pokes(0.5, 0.9, 1.7, 2.2)
    first = trigger.wait(30.0)
    assert first == pytest.approx(0.5), "wait() returns when the first change of the burst arrived"
    assert sim.now == pytest.approx(3.2), f"quiet period counts from the last poke, at {sim.now}"
    assert trigger.pokes == 4
    assert trigger.wait(30.0) is None, "the burst was handled by one wake-up"
    assert sim.now == pytest.approx(33.2)


def test_max_delay_bounds_a_continuous_stream_of_pokes():
    sim = Sim()
    trigger = sim.make(quiet=1.0, max_delay=3.0)
    sim.schedule_pokes(*(0.25 + 0.5 * i for i in range(100)))  # never quiet for 1s
    assert trigger.wait(1000.0) is not None
    assert sim.now == pytest.approx(3.25), f"due at first poke + max_delay, woke at {sim.now}"
    assert trigger.wait(1000.0) is not None
    # the next unhandled poke after 3.25 is at 3.75
    assert sim.now == pytest.approx(6.75), f"second wake-up at {sim.now}"


def test_a_poke_arriving_within_the_timeout_wins_over_the_timeout():
    sim = Sim()
    trigger = sim.make(quiet=2.0, max_delay=5.0)
    sim.schedule_pokes(0.9)
    assert trigger.wait(1.0) is not None
    assert sim.now == pytest.approx(2.9)


def test_a_poke_after_the_timeout_is_kept_for_the_next_wait():
    sim = Sim()
    trigger = sim.make(quiet=1.0, max_delay=5.0)
    sim.schedule_pokes(7.0)
    assert trigger.wait(5.0) is None
    assert sim.now == pytest.approx(5.0)
    assert trigger.wait(5.0) is not None
    assert sim.now == pytest.approx(8.0)


def test_max_delay_below_quiet_is_raised_to_quiet():
    sim = Sim()
    trigger = sim.make(quiet=2.0, max_delay=0.5)
    trigger.poke()
    assert trigger.wait(30.0) is not None
    assert sim.now == pytest.approx(2.0)


def test_zero_quiet_wakes_on_the_poke():
    sim = Sim()
    trigger = sim.make(quiet=0.0, max_delay=0.0)
    sim.schedule_pokes(4.0)
    assert trigger.wait(30.0) is not None
    assert sim.now == pytest.approx(4.0)


def test_real_threads_poke_wakes_a_waiter():
    # The real Condition, with tiny values; nothing asserts on timing.
    trigger = Trigger(quiet=0.001, max_delay=0.01)
    poked = threading.Event()

    def poker() -> None:
        trigger.poke()
        poked.set()

    thread = threading.Thread(target=poker)
    thread.start()
    thread.join()
    assert poked.is_set()
    assert trigger.wait(5.0) is not None
    assert trigger.wait(0.001) is None
    assert trigger.pokes == 1
