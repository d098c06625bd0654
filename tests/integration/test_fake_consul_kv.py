"""Consul KV store and sessions (locks, lock-delay, behaviors).

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR.
"""

from __future__ import annotations

import base64

import consul as pyconsul
import pytest

from tests.conftest import eventually
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

consul = conftest_consul.consul


@pytest.fixture
def prefix(consul: ConsulTarget) -> str:
    value = consul.unique("kvtest") + "/"
    consul.cleanups.append(lambda: consul.http("DELETE", f"/v1/kv/{value}?recurse"))
    return value


def test_put_get_roundtrip_with_py_consul(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    assert client.kv.put(f"{prefix}a", "1") is True
    index, entry = client.kv.get(f"{prefix}a")
    assert entry["Value"] == b"1"
    assert entry["Key"] == f"{prefix}a"
    assert entry["LockIndex"] == 0
    assert entry["Flags"] == 0
    assert int(index) == entry["ModifyIndex"]


def test_get_json_shape(consul: ConsulTarget, prefix: str) -> None:
    consul.http("PUT", f"{'/v1/kv/'}{prefix}shape?flags=42", "data")
    [entry] = consul.http("GET", f"/v1/kv/{prefix}shape").json()
    assert list(entry) == ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"]
    assert entry["Flags"] == 42
    assert base64.b64decode(entry["Value"]) == b"data"


def test_missing_key_is_404_with_index_header(consul: ConsulTarget, prefix: str) -> None:
    response = consul.http("GET", f"/v1/kv/{prefix}missing")
    assert response.status == 404
    assert response.body == b""
    assert response.index >= 1
    assert response.header("X-Consul-KnownLeader") == "true"
    assert consul.client().kv.get(f"{prefix}missing")[1] is None


def test_raw_returns_the_bytes(consul: ConsulTarget, prefix: str) -> None:
    consul.http("PUT", f"/v1/kv/{prefix}raw", b"\x00\x01binary")
    response = consul.http("GET", f"/v1/kv/{prefix}raw?raw")
    assert response.body == b"\x00\x01binary"
    assert response.header("Content-Type") == "text/plain"


def test_recurse_and_keys_with_separator(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    for key in ("a", "b/c", "b/d"):
        client.kv.put(f"{prefix}{key}", key)
    _, entries = client.kv.get(prefix, recurse=True)
    assert [e["Key"] for e in entries] == [f"{prefix}a", f"{prefix}b/c", f"{prefix}b/d"]
    _, keys = client.kv.get(prefix, keys=True)
    assert keys == [f"{prefix}a", f"{prefix}b/c", f"{prefix}b/d"]
    _, folders = client.kv.get(prefix, keys=True, separator="/")
    assert folders == [f"{prefix}a", f"{prefix}b/"]


def test_cas(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    key = f"{prefix}cas"
    assert client.kv.put(key, "1", cas=0) is True
    assert client.kv.put(key, "2", cas=0) is False  # 0 means "only if absent"
    index = client.kv.get(key)[1]["ModifyIndex"]
    assert client.kv.put(key, "3", cas=index + 1000) is False
    assert client.kv.put(key, "3", cas=index) is True
    assert client.kv.get(key)[1]["Value"] == b"3"


def test_delete_and_delete_cas_and_recurse(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    client.kv.put(f"{prefix}x", "1")
    index = client.kv.get(f"{prefix}x")[1]["ModifyIndex"]
    assert consul.http("DELETE", f"/v1/kv/{prefix}x?cas={index + 1}").json() is False
    assert consul.http("DELETE", f"/v1/kv/{prefix}x?cas={index}").json() is True
    assert client.kv.get(f"{prefix}x")[1] is None
    client.kv.put(f"{prefix}t/1", "1")
    client.kv.put(f"{prefix}t/2", "2")
    assert client.kv.delete(f"{prefix}t/", recurse=True) is True
    assert client.kv.get(f"{prefix}t/", recurse=True)[1] is None


def test_conflicting_flags_is_400(consul: ConsulTarget, prefix: str) -> None:
    response = consul.http("PUT", f"/v1/kv/{prefix}k?cas=0&acquire=x")
    assert response.status == 400
    assert response.text.startswith("Conflicting flags: ")


def test_missing_key_name_is_400(consul: ConsulTarget) -> None:
    assert consul.http("GET", "/v1/kv/").text == "Missing key name"
    assert consul.http("PUT", "/v1/kv/", "x").text == "Missing key name"


# -- sessions and locks ------------------------------------------------------------------


def test_session_defaults_to_agent_node_with_serf_health(consul: ConsulTarget) -> None:
    client = consul.client()
    sid = client.session.create(name="leader", lock_delay=0)
    consul.cleanups.append(lambda: client.session.destroy(sid))
    _, info = client.session.info(sid)
    assert info["Node"] == consul.agent_node
    assert info["NodeChecks"] == ["serfHealth"]
    assert info["Behavior"] == "release"
    assert info["LockDelay"] == 0
    assert info["Name"] == "leader"
    assert sid in {s["ID"] for s in client.session.list()[1]}


def test_session_on_unknown_node_is_missing_node_registration(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/session/create", {"Node": consul.unique("ghost")})
    assert (response.status, response.text) == (500, "Missing node registration")


def test_session_on_external_node_needs_empty_checks(consul: ConsulTarget) -> None:
    node = consul.unique("ext")
    consul.register({"Node": node, "Address": "10.0.0.1"})
    default_checks = consul.http("PUT", "/v1/session/create", {"Node": node})
    assert (default_checks.status, default_checks.text) == (500, "Missing check 'serfHealth' registration")
    created = consul.http("PUT", "/v1/session/create", {"Node": node, "NodeChecks": [], "LockDelay": "0s"})
    assert created.status == 200, created.text
    assert set(created.json()) == {"ID"}


def test_acquire_release_and_lock_index(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    a = client.session.create(lock_delay=0)
    b = client.session.create(lock_delay=0)
    consul.cleanups.extend([lambda: client.session.destroy(a), lambda: client.session.destroy(b)])
    key = f"{prefix}lock"
    assert client.kv.put(key, "a", acquire=a) is True
    assert client.kv.put(key, "b", acquire=b) is False
    entry = client.kv.get(key)[1]
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (a, 1, b"a")
    assert client.kv.put(key, "a2", acquire=a) is True  # re-acquire by the holder
    assert client.kv.get(key)[1]["LockIndex"] == 1
    assert client.kv.put(key, "x", release=b) is False
    assert client.kv.put(key, "x", release=a) is True
    entry = client.kv.get(key)[1]
    assert "Session" not in entry and entry["LockIndex"] == 1
    assert client.kv.put(key, "b", acquire=b) is True
    assert client.kv.get(key)[1]["LockIndex"] == 2


def test_acquire_with_an_unknown_session_is_500(consul: ConsulTarget, prefix: str) -> None:
    sid = "7f4c3d8e-0000-4000-8000-000000000000"
    response = consul.http("PUT", f"/v1/kv/{prefix}k?acquire={sid}", "v")
    assert (response.status, response.text) == (500, f'invalid session "{sid}"')


def test_destroy_releases_locks_behavior_release(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    sid = client.session.create(lock_delay=0)
    client.kv.put(f"{prefix}r", "v", acquire=sid)
    assert client.session.destroy(sid) is True
    entry = client.kv.get(f"{prefix}r")[1]
    assert entry is not None and "Session" not in entry
    assert client.session.info(sid)[1] is None


def test_destroy_deletes_keys_behavior_delete(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    sid = client.session.create(lock_delay=0, behavior="delete")
    client.kv.put(f"{prefix}d", "v", acquire=sid)
    client.session.destroy(sid)
    assert client.kv.get(f"{prefix}d")[1] is None


def test_lock_delay_blocks_reacquire_until_it_expires(consul: ConsulTarget, prefix: str) -> None:
    client = consul.client()
    holder = client.session.create(lock_delay=1)
    other = client.session.create(lock_delay=0)
    consul.cleanups.append(lambda: client.session.destroy(other))
    key = f"{prefix}delayed"
    assert client.kv.put(key, "v", acquire=holder)
    client.session.destroy(holder)
    assert client.kv.put(key, "v", acquire=other) is False
    eventually(lambda: client.kv.put(key, "v", acquire=other), timeout=5)


def test_renew_returns_the_session_and_unknown_is_404(consul: ConsulTarget) -> None:
    client = consul.client()
    sid = client.session.create(ttl=10, lock_delay=0)
    consul.cleanups.append(lambda: client.session.destroy(sid))
    renewed = client.session.renew(sid)
    assert renewed["ID"] == sid
    assert renewed["TTL"] == "10s"
    missing = "0d6c1a2b-0000-4000-8000-000000000000"
    response = consul.http("PUT", f"/v1/session/renew/{missing}")
    assert (response.status, response.text) == (404, f"Session id '{missing}' not found")
    with pytest.raises(pyconsul.NotFound):
        client.session.renew(missing)


def test_session_ttl_out_of_range_is_rejected(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/session/create", {"TTL": "1s"})
    assert response.status == 500
    assert response.text == "Invalid Session TTL '1000000000', must be between [10s=24h0m0s]"


def test_destroy_of_unknown_session_is_true(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/session/destroy/0d6c1a2b-0000-4000-8000-000000000001")
    assert (response.status, response.json()) == (200, True)
