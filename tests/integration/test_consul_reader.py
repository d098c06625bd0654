"""The Consul source's reads over HTTP (reads.py) against the Consul test server.

Hundreds of services followed by the source's one reader thread; a change to one of them
reaching the snapshot; a token Consul refuses reported for readiness; a login token Consul
lost replaced by a new login, the read made again; the token never in a URL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.consul.reads import ConsulReads
from bridge.consul.source import ConsulSource
from bridge.errors import Denied
from bridge.testing.consul import ConsulServer
from tests.conftest import eventually
from tests.integration import test_fake_consul_acl_login as setup
from tests.integration.conftest_consul import ConsulTarget

kube = setup.kube
clock = setup.clock
consul = setup.consul
method = setup.method


def registration(name: str, address: str) -> dict:
    return {"Node": f"vm-{name}", "Address": address,
            "Service": {"ID": f"{name}-1", "Service": name, "Address": address, "Port": 80}}


def ours(thread: threading.Thread) -> bool:
    """Not one of the test server's per-connection threads."""
    return thread.name != "consul-fake-conn"


@pytest.fixture
def server():
    # One connection per blocking query: the limit raised, as the README tells operators to.
    with ConsulServer(jitter=False, http_max_conns_per_client=400) as consul_server:
        yield consul_server


def test_hundreds_of_services_over_http_take_one_thread_and_changes_arrive(server):
    n = 300
    server.load([registration(f"svc-{i}", f"10.7.{i // 200}.{i % 200 + 1}") for i in range(n)])
    client = ConsulClient(ConsulSettings(address=server.url, wait=30))
    stop = threading.Event()
    source = ConsulSource(client, our_node="k8s-sync-test", cluster_id="test", default_namespace="consul",
                          on_change=lambda: None, stop=stop)
    before = {t for t in threading.enumerate() if ours(t)}
    source.start()
    try:
        eventually(lambda: source.synced, timeout=30, what=f"{n} services read once")
        added = sorted(t.name for t in threading.enumerate() if ours(t) and t not in before)
        assert added == ["consul-reader"], f"the source's threads for {n} services: {added}"
        server.load([registration("svc-7", "10.7.9.9")])
        eventually(lambda: {i.address for s in source.snapshot().services.values() if s.key.name == "svc-7"
                            for i in s.instances} == {"10.7.9.9"}, what="the change reaches the snapshot")
        assert all("stale" in r.query for r in server.requests.records() if r.path.startswith("/v1/health")), \
            "consul.stale (the default) is sent"
    finally:
        stop.set()
        source.close()
        client.close()


def test_connections_over_consuls_limit_are_reported_once_and_retried_slowly(caplog):
    # Consul answers a connection over limits.http_max_conns_per_client with a 429 and
    # closes it (go-connlimit); the default, 200, is below one connection per service here.
    caplog.set_level(logging.DEBUG)
    n, limit = 60, 40
    with ConsulServer(jitter=False, http_max_conns_per_client=limit) as consul_server:
        consul_server.load([registration(f"svc-{i}", f"10.8.0.{i + 1}") for i in range(n)])
        client = ConsulClient(ConsulSettings(address=consul_server.url, wait=30))
        stop = threading.Event()
        source = ConsulSource(client, our_node="k8s-sync-test", cluster_id="test", default_namespace="consul",
                              on_change=lambda: None, stop=stop)
        source.start()
        try:
            eventually(lambda: "raise limits.http_max_conns_per_client" in caplog.text,
                       what="the refusal named with its fix")
            eventually(lambda: len(source.snapshot().services) >= limit - 5,
                       what="the services whose queries got a connection are followed")
            refused = consul_server.refused_connections
            assert refused <= n - limit + 5, (
                f"{refused} connections refused for {n - limit} queries over the limit: a refused "
                "query must not ask again within the 30 s it is told to wait")
        finally:
            stop.set()
            source.close()
            client.close()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1, f"one line for the refusal, not one per query: {[r.getMessage() for r in errors]}"


def read(settings: ConsulSettings, client: ConsulClient | None = None) -> tuple[int, dict]:
    """One non-blocking read of the service list through ConsulReads, on a loop of its own."""
    reads = ConsulReads(client or ConsulClient(settings))

    async def once() -> tuple[int, dict]:
        await reads.open()
        try:
            return await reads.services(None)
        finally:
            await reads.close()

    return asyncio.run(once())


def test_a_token_consul_refuses_is_denied_and_held_for_readiness(consul: ConsulTarget):
    assert consul.fake is not None
    client = ConsulClient(ConsulSettings(address=consul.fake.url, token="9e0e2b2c-0000-4000-8000-00000000dead"))
    try:
        with pytest.raises(Denied, match="catalog services: ACL not found"):
            read(client.settings, client)
        assert client.problems() == ["consul refused catalog services: ACL not found"], client.problems()
        assert not any("dead" in r.query for r in consul.fake.requests.records()), "the token went into a URL"
    finally:
        client.close()


def test_a_lost_login_token_is_replaced_and_the_read_made_again(consul: ConsulTarget, method, kube,
                                                                tmp_path: Path):
    assert consul.fake is not None
    bearer = kube.write_service_account(tmp_path / "serviceaccount", "bridge", "bridge") / "token"
    client = ConsulClient(ConsulSettings(address=consul.fake.url, auth_method="bridge-kubernetes",
                                         login_bearer_token_file=str(bearer)))
    assert client.login is not None
    try:
        client.login.start()
        [first] = consul.http("GET", "/v1/acl/tokens?authmethod=bridge-kubernetes", headers=setup.ROOT).json()
        deleted = consul.http("DELETE", f"/v1/acl/token/{first['AccessorID']}", headers=setup.ROOT)
        assert deleted.status == 200, deleted.text
        index, _ = read(client.settings, client)  # ACL not found: a new login, then the read
        assert index >= 1
        [second] = consul.http("GET", "/v1/acl/tokens?authmethod=bridge-kubernetes", headers=setup.ROOT).json()
        assert second["AccessorID"] != first["AccessorID"], "no new login after the token was lost"
        assert client.problems() == [], client.problems()
    finally:
        client.login.stop()
        client.close()
