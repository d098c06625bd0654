"""How long-running bridge processes (the main one and DNS workers) use memory.

Two choices: how many malloc arenas glibc may make (`limit_arenas`), and keeping the
garbage collector's full passes off what was just loaded and will live long (`settle`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas for the threads started after this call; False where the
    C library is not glibc (then nothing changes).

    glibc gives each thread that allocates an arena of its own, up to a multiple of the
    cores; the bridge's threads each allocate in bursts (a list page, a transaction body, a
    table update), and memory freed in one arena is not reused by the others, so resident
    memory grows with the thread count. Two arenas are enough for a process whose threads
    mostly wait.
    """
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
    walks every object, and a large catalog with its DNS table makes millions of them (a
    pause clients would notice). Reference counting still frees them when they are
    replaced."""
    gc.collect()
    gc.freeze()
