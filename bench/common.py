"""What both benchmarks (dns_bench.py, sync_bench.py) share: progress lines, percentiles,
free ports, forked helper processes (one of them the Consul test server), and the Kubernetes
objects they load (headless Services with named ports, and the Pods behind them).

A sibling module, imported as `common`: both benchmarks run with bench/ on sys.path.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PORT_NAME = "http"
SERVICE_PORT = 80
TARGET_PORT = 8080

_START = time.monotonic()


def say(text: str) -> None:
    """A progress line, stamped with the seconds since the bench started."""
    print(f"[{time.monotonic() - _START:7.1f}s] {text}", flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of unsorted values (p in 0..100); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(min(rank, len(ordered))) - 1]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise OSError("no free port")


# --- child processes ---------------------------------------------------------------------

def die_with_parent() -> None:
    """In a child: get SIGTERM when the bench process dies, however it dies (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A forked helper process and the pipe to it. `target(conn, *args)` sends ("ready", info)
    once up, then serves commands until ("stop",); fork it before this process starts threads."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, self._child_end = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(self._child_end, *args), name=name, daemon=True)

    def start(self, timeout: float) -> dict[str, Any]:
        """Fork and wait for its "ready"; returns the info it sent."""
        self.process.start()
        self._child_end.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(0.5):
                message = self.conn.recv()
                if message[0] == "ready":
                    return dict(message[1])
                raise RuntimeError(f"{self.process.name}: unexpected {message!r}")
            if not self.process.is_alive():
                raise RuntimeError(f"{self.process.name} died (exit {self.process.exitcode})")
        self.stop()
        raise TimeoutError(f"{self.process.name} not ready after {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.pid is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.process.join(10)
        for end in (self.process.terminate, self.process.kill):
            if self.process.is_alive():
                end()
                self.process.join(5)


def consul_main(conn: Any) -> None:
    """Child process: the Consul test server, in a process (and GIL) of its own, as real
    Consul is; sends ("ready", {"consul": url})."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    from bridge.testing.consul import ConsulServer

    die_with_parent()
    consul = ConsulServer(host="127.0.0.1", port=0, jitter=False)
    try:
        consul.start()
        conn.send(("ready", {"consul": consul.url}))
        while conn.recv()[0] != "stop":
            pass
    except (KeyboardInterrupt, EOFError):
        pass  # stopped by the parent (SIGTERM, Ctrl-C) or the parent went away
    finally:
        with contextlib.suppress(Exception):
            consul.stop()
        with contextlib.suppress(Exception):
            conn.send(("stopped",))


# --- Kubernetes objects --------------------------------------------------------------------

def pod_status(ip: str, ready: bool) -> dict[str, Any]:
    """A running Pod's status as its kubelet reports it (what a status patch writes)."""
    flag = "True" if ready else "False"
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": flag},
                           {"type": "ContainersReady", "status": flag}]}


def pod(namespace: str, service: str, j: int, ip: str, ready: bool) -> dict[str, Any]:
    """The j-th Pod behind `service` (label app=<service>), on node-<j>, serving PORT_NAME."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{service}-{j}", "namespace": namespace, "labels": {"app": service}},
        "spec": {"nodeName": f"node-{j}", "containers": [{
            "name": "app", "image": "registry.example/app:1",
            "ports": [{"name": PORT_NAME, "containerPort": TARGET_PORT, "protocol": "TCP"}]}]},
        "status": pod_status(ip, ready),
    }


def headless_service(namespace: str, name: str) -> dict[str, Any]:
    """A headless Service selecting app=<name>, port PORT_NAME to the Pods' named port."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": "None", "selector": {"app": name},
                 "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME,
                            "protocol": "TCP"}]},
    }
