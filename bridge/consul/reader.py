"""One thread with an asyncio event loop that runs every blocking query of the Consul source.

However many services Consul holds, the source costs this one thread: each query is a
task (`BlockingQuery`) on the loop. Tasks are started and cancelled from the loop itself
(a query's `deliver` starting another) or from any thread (`submit`). `close()` cancels
them all, closes what `on_close` names (the HTTP session) and ends the thread, within a
bound; the thread is a daemon, so a loop wedged past it cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from bridge.threads import Threads

log = logging.getLogger(__name__)

CLOSE_DEADLINE = 1.0


class Reader:
    """The event loop thread; tasks by name."""

    def __init__(self, name: str, threads: Threads, *,
                 on_open: Callable[[], Awaitable[None]] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.name = name
        self._threads = threads
        self._on_open = on_open
        self._on_close = on_close
        self.loop = asyncio.new_event_loop()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self.thread = self._threads.start(self.name, self._run)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            if self._on_open is not None:
                self.loop.run_until_complete(self._on_open())
            if not self._closed:
                self.loop.run_forever()
        except RuntimeError:
            if not self._closed:  # else: stopped by close() while opening
                raise
        finally:
            self.loop.run_until_complete(self._shutdown())
            self.loop.close()

    async def _shutdown(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._on_close is not None:
            await self._on_close()

    # On the loop's thread.

    def run(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        """Runs `coroutine` as task `name` (ending one of that name first); on the loop."""
        self.cancel(name)
        if self._closed:
            coroutine.close()
            return
        task = self.loop.create_task(coroutine, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))

    def cancel(self, name: str) -> None:
        """Ends task `name` if it runs; on the loop."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if not task.cancelled() and task.exception() is not None:
            # A query retries whatever it meets; what still escapes is a bug: logged, and
            # that name is no longer followed (the services query starts it again).
            log.critical("%s: task %s died", self.name, name, exc_info=task.exception())

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._tasks)

    # From any thread.

    def submit(self, fn: Callable[[], None]) -> None:
        """Calls `fn` on the loop's thread, soon."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        """Cancels every task, runs `on_close`, ends the thread; returns within about
        CLOSE_DEADLINE. Safe to call twice, and before `start()`."""
        if self._closed:
            return
        self._closed = True
        if self.thread is None:
            self.loop.close()
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CLOSE_DEADLINE)
        if self.thread.is_alive():
            log.warning("%s: did not end within %.1fs", self.name, CLOSE_DEADLINE)
