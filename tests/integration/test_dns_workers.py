"""DNS answered by worker processes (`dns.workers`), over real sockets.

The workers share the parent's sockets, each keeps its own table, and a publish switches
all of them to the new catalog before it returns. A worker that dies is started again.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from types import MappingProxyType

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from bridge.catalog.model import (
    Catalog,
    Instance,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
)
from bridge.config import DnsSettings
from bridge.dns.workers import DnsWorkers
from tests.conftest import PURE_DNS, eventually

K8S = Origin(OriginKind.KUBERNETES, "east")
HTTP = Port("http", 80)
NAME = "web.default.svc.cluster.local."


def catalog(generation: int, addresses: dict[str, list[str]], *, ready: bool = True) -> Catalog:
    services = [Service(ServiceKey("default", name), ServiceType.HEADLESS, ports=(HTTP,),
                        instances=tuple(Instance(a, (HTTP,), K8S) for a in ips))
                for name, ips in addresses.items()]
    return Catalog(MappingProxyType({s.key: s for s in services}), ready=ready,
                   generation=generation)


def ask(workers: DnsWorkers, name: str = NAME, *, tcp: bool = False, timeout: float = 5) -> tuple[int, set[str]]:
    host, port = workers.addresses[0]
    query = dns.message.make_query(name, dns.rdatatype.A)
    if tcp:
        response = dns.query.tcp(query, host, port=port, timeout=timeout)
    else:
        response = dns.query.udp(query, host, port=port, timeout=timeout)
    return response.rcode(), {r.address for rrset in response.answer for r in rrset}


@pytest.fixture
def workers() -> Iterator[DnsWorkers]:
    pool = DnsWorkers(DnsSettings(listen="127.0.0.1:0", resolv_conf="", compiled=not PURE_DNS), 2)
    pool.start()
    yield pool
    pool.stop()


def test_two_workers_answer_over_udp_and_tcp_and_serve_each_publish_at_once(workers):
    assert len(workers.pids) == 2 and os.getpid() not in workers.pids
    assert ask(workers)[0] == dns.rcode.SERVFAIL, "nothing published yet: SERVFAIL"
    workers.publish(catalog(1, {"web": ["10.0.0.1", "10.0.0.2"]}))
    assert ask(workers) == (dns.rcode.NOERROR, {"10.0.0.1", "10.0.0.2"})
    assert ask(workers, tcp=True) == (dns.rcode.NOERROR, {"10.0.0.1", "10.0.0.2"})
    for step in range(2, 12):
        new = f"10.0.1.{step}"
        workers.publish(catalog(step, {"web": [new], "other": ["10.9.9.9"]}))
        # publish() returns once every worker serves it: no query may see the old answer,
        # whichever worker it reaches (fresh sockets: fresh source ports).
        for _ in range(20):
            assert ask(workers) == (dns.rcode.NOERROR, {new}), f"step {step}"
    workers.publish(catalog(20, {"other": ["10.9.9.9"]}))
    assert ask(workers)[0] == dns.rcode.NXDOMAIN


def test_a_killed_worker_is_started_again_with_the_whole_catalog(workers):
    workers.publish(catalog(1, {"web": ["10.0.0.1"], "api": ["10.0.0.7"]}))
    victim = workers.pids[0]
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: not _alive(victim), what="worker killed")
    # The other worker keeps answering meanwhile.
    for _ in range(10):
        assert ask(workers) == (dns.rcode.NOERROR, {"10.0.0.1"})
    workers.publish(catalog(2, {"web": ["10.0.0.3"], "api": ["10.0.0.7"]}))
    assert len(workers.pids) == 2 and victim not in workers.pids
    for _ in range(20):
        assert ask(workers) == (dns.rcode.NOERROR, {"10.0.0.3"})
        # "api" did not change in this publish: the new worker has it from the whole catalog.
        assert ask(workers, "api.default.svc.cluster.local.") == (dns.rcode.NOERROR, {"10.0.0.7"})


def test_a_killed_worker_is_started_again_without_waiting_for_a_publish_and_answers_only_once_it_has_the_catalog():
    # One worker (the default): nothing answers until it is back, and with nothing changing
    # no publish would come to notice it was gone. The catalog is large enough that the new
    # worker takes a moment to build its table: queries meanwhile wait in the socket, they
    # are not answered SERVFAIL from an empty table.
    pool = DnsWorkers(DnsSettings(listen="127.0.0.1:0", resolv_conf=""), 1)
    pool.start()
    try:
        pool.publish(catalog(1, {"web": ["10.0.0.1"], **{f"s{i}": [f"10.1.{i // 250}.{i % 250}"]
                                                         for i in range(2000)}}))
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        seen: list[tuple[int, set[str]] | None] = []

        def answered() -> bool:
            seen.append(_answers(pool))
            return seen[-1] == (dns.rcode.NOERROR, {"10.0.0.1"})

        eventually(answered, 30, "the new worker answers the last published catalog")
        assert victim not in pool.pids
        wrong = [got for got in seen if got is not None and got != (dns.rcode.NOERROR, {"10.0.0.1"})]
        assert not wrong, f"answered before the new worker had the catalog: {wrong[:3]}"
    finally:
        pool.stop()


def _answers(workers: DnsWorkers) -> tuple[int, set[str]] | None:
    try:
        return ask(workers, timeout=0.5)
    except dns.exception.Timeout:
        return None


def test_stop_ends_the_workers_and_frees_the_port():
    pool = DnsWorkers(DnsSettings(listen="127.0.0.1:0", resolv_conf="", compiled=not PURE_DNS), 2)
    pool.start()
    pool.publish(catalog(1, {"web": ["10.0.0.1"]}))
    pids = pool.pids
    host, port = pool.addresses[0]
    pool.stop()
    eventually(lambda: not any(_alive(pid) for pid in pids), 10, "workers gone")
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((host, port))  # raises if any worker still held it


def _alive(pid: int) -> bool:
    """Any thread of `pid` still running. A killed process shows as a zombie as soon as its
    first thread is gone, while another may still take a datagram it will never answer."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            zombie = stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        return not zombie or len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False
