"""Running `bridge` commands as subprocesses and reading their output with deadlines."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Self

BRIDGE = str(Path(sys.executable).with_name("bridge"))


class Proc:
    """A `bridge` subprocess whose stdout lines and stderr are collected by reader threads.

    Both pipes are always drained (a child logging to a full pipe would block), and `stop()`
    leaves nothing behind: the process reaped, the readers ended, the pipes closed.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, program: str = BRIDGE,
                 cwd: str | Path | None = None, inherit_env: bool = True) -> None:
        """`env` is added to this process's environment, or with `inherit_env=False` is the
        whole environment (as a container's is)."""
        self.args = [program, *args]
        self.p = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**(os.environ if inherit_env else {}), **(env or {})}, cwd=cwd,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        assert self.p.stdout is not None and self.p.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_lines, args=(self.p.stdout,), name="proc-stdout", daemon=True),
            threading.Thread(target=self._stderr.extend, args=(self.p.stderr,), name="proc-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read_lines(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr so far; complete once it has been stopped."""
        return "".join(self._stderr)

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first stdout line matching `pattern`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; "
                                     f"output so far: {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._readers[1].join(5)
                raise AssertionError(f"process ended before {pattern!r}; stdout {self.lines}; "
                                     f"stderr {self.stderr[-3000:]}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Sends `sig` and returns the exit code; fails if it takes longer than `timeout`.

        `timeout` is a real deadline for a clean shutdown, generous for a loaded machine: the
        commands stop within a second or two. Past it the process is killed.
        """
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            code = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"{self.args} did not exit within {timeout}s of {sig}") from None
        finally:
            self._close()
        return code

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(5)  # EOF comes once the process (and any child holding the pipe) is gone
        for stream in (self.p.stdout, self.p.stderr):
            if stream is not None:
                stream.close()
