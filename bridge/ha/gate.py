"""The write gate: what a sink asks before each write batch, and how long the batch may take.

`Leadership` (leadership.py) is the gate of a running bridge; a sink given no gate always
writes. A batch is sent only while the gate is open, and its request may take no longer
than the gate stays open, so a replica that stops being the writer does not go on waiting
for, or sending, writes the next writer may already be making.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from bridge.errors import BridgeError


class WriteGate(Protocol):
    """What a sink asks before each write batch."""

    def may_write(self) -> bool: ...

    def may_write_until(self) -> float:
        """Monotonic time at which writing stops being allowed."""
        ...


class NotWriter(BridgeError):
    """This replica may not write now: another is the writer, or its claim to be is lapsing.
    Not retried by the sink: the next pass, on whichever replica writes then, does it."""


NOT_WRITER = "not sent: this replica is not the writer"


def write_timeout(gate: WriteGate | None, limit: float,
                  now: Callable[[], float] = time.monotonic) -> float:
    """The request timeout of a batch sent now: `limit`, or less when the gate closes
    sooner. Raises NotWriter when the gate is closed."""
    if gate is None:
        return limit
    left = gate.may_write_until() - now()
    if left <= 0:
        raise NotWriter(NOT_WRITER)
    return min(limit, left)
