"""Running `bridge` commands as subprocesses and reading their output with deadlines."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BRIDGE = str(Path(sys.executable).with_name("bridge"))


class Proc:
    """A `bridge` subprocess whose stdout lines are collected by a reader thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, program: str = BRIDGE,
                 cwd: str | Path | None = None, inherit_env: bool = True,
                 stderr_file: Path | None = None) -> None:
        """`env` is added to this process's environment, or with `inherit_env=False` is the
        whole environment (as a container's is). `stderr_file`: stderr (the log) goes there,
        to be read while the process runs (`log()`), instead of to a pipe."""
        self.args = [program, *args]
        self.stderr_file = stderr_file
        with open(stderr_file, "w") if stderr_file else contextlib.nullcontext() as err:
            self.p = subprocess.Popen(
                self.args, stdout=subprocess.PIPE,
                stderr=err if err is not None else subprocess.PIPE, text=True,
                env={**(os.environ if inherit_env else {}), **(env or {})}, cwd=cwd,
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

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
                err = self.log()
                raise AssertionError(f"process ended before {pattern!r}; stdout {self.lines}; "
                                     f"stderr {err[-3000:]}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def log(self) -> str:
        """What the process wrote to stderr: so far, with `stderr_file`; from the pipe,
        all of it (this waits for the process to close it)."""
        if self.stderr_file is not None:
            return self.stderr_file.read_text()
        return self.p.stderr.read() if self.p.stderr else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5) -> int:
        """Sends `sig` and returns the exit code; fails if it takes longer than `timeout`."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"{self.args} did not exit within {timeout}s of {sig}") from None
