"""The loop threads of one bridge, and which of them died.

Every long-running loop (reflectors, blocking queries, the publisher, the reconciler) is
started through `Threads.start`. The loops catch what they expect and retry; an exception
that still escapes one ends that thread for good, and the bridge can no longer keep its
promises. Such a death is logged and remembered by thread name, so `/healthz` fails and
the kubelet restarts the pod instead of leaving a half-working bridge in service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Threads:
    """Starts daemon threads (a wedged loop must never keep the process from exiting)
    and records the ones whose target raised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dead: dict[str, str] = {}

    def start(self, name: str, target: Callable[[], object]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # whatever it was, the loop is gone
                with self._lock:
                    self._dead[name] = f"{type(exc).__name__}: {exc}"
                log.critical("thread %s died; the bridge is unhealthy", name, exc_info=exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def dead(self) -> dict[str, str]:
        """Thread name -> the exception that ended it, for every thread that died."""
        with self._lock:
            return dict(self._dead)
