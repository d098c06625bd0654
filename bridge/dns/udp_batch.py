"""UDP queries answered a batch at a time by the compiled fast path, when it is built.

`_udpfast.c` receives every datagram already queued in one system call, answers those the
table's fast path answers (the same dicts, the same bytes: `Responder.respond`), sends the
replies in one system call and counts them in the serving thread's `metrics.Counts`; it
hands the other packets back, and the server answers them one by one in Python. Without
the extension (no C compiler at install) `batcher` gives None, and with `dns.compiled: false`
the server does not ask for one: its Python loop answers everything, the same answers.
"""

from __future__ import annotations

import socket
from types import ModuleType
from typing import TYPE_CHECKING

from bridge.dns import metrics
from bridge.dns.cow_map import GONE
from bridge.dns.encode import Entry, Rotations, Turns

if TYPE_CHECKING:
    from bridge.dns._udpfast import Batcher

BATCH = 64  # datagrams per receive: more only adds latency to the first

_udpfast: ModuleType | None
try:
    from bridge.dns import _udpfast as _built
except ImportError:  # built without a compiler: Python answers everything
    _udpfast = None
else:
    _built.configure(GONE, Entry, Rotations, Turns,
                     (metrics.DROPPED, metrics.TRUNCATED, metrics.NANOS))
    _udpfast = _built


def compiled() -> ModuleType | None:
    """The extension, or None if it was not built."""
    return _udpfast


def batcher(sock: object) -> Batcher | None:
    """A `_udpfast.Batcher` for a blocking IP datagram socket, or None: Python serves it."""
    fast = compiled()
    if fast is None or not isinstance(sock, socket.socket) or sock.gettimeout() is not None \
            or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return fast.Batcher(sock.fileno(), BATCH)
