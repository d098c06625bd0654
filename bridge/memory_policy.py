"""Process-wide memory settings for long-running bridge processes (main and DNS workers).

Owns two choices. glibc gives each thread that allocates its own malloc arena (up to eight
per core); the bridge's threads each allocate in bursts (a list page, a transaction body,
a table update), and memory freed in one arena is not reused by the others, so resident
memory grows with the thread count. Two arenas are enough for a process whose threads
mostly wait. And `settle()` keeps the collector's full passes off a heap that was just
loaded (see its docstring).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas for the threads started after this call; False where the
    C library is not glibc (then nothing changes)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False


def settle() -> None:
    """Keep the garbage collector's full passes off what is loaded now: a full collection
    walks every object, and 10,000 Services make millions (a pause of most of a second).
    Reference counting still frees them when they are replaced."""
    gc.collect()
    gc.freeze()
