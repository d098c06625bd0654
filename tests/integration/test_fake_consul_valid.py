"""What Consul refuses and how it answers where a py-consul call could tell the fake from a
real agent: one table per upstream rule, each case named after it.

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR (the TTL
test then waits real seconds instead of moving the fake's clock).
"""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass
from typing import Any

import consul as pyconsul
import pytest

from tests.conftest import eventually
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

consul = conftest_consul.consul_on_manual_clock()

# --- service meta: structs.ValidateServiceMetadata / validateMetaPair -----------------------
# (agent/structs/structs.go), applied by the state store's ensureServiceTxn on every write
# path and by the agent's service registration up front.

LONG_KEY = "k" * 128


@dataclass(frozen=True)
class MetaCase:
    rule: str
    meta: dict[str, str]
    error: str | None  # validateMetadata's text, None: accepted


META_CASES = [
    MetaCase("metaKeyFormat ^[a-zA-Z0-9_-]+$: a dot", {"a.b": "v"},
             "Couldn't load metadata pair ('a.b', 'v'): Key contains invalid characters"),
    MetaCase("metaKeyFormat: a slash", {"a/b": "v"},
             "Couldn't load metadata pair ('a/b', 'v'): Key contains invalid characters"),
    MetaCase("metaKeyFormat: non-ASCII letters", {"clé": "v"},
             "Couldn't load metadata pair ('clé', 'v'): Key contains invalid characters"),
    MetaCase("key cannot be blank", {"": "v"}, "Couldn't load metadata pair ('', 'v'): Key cannot be blank"),
    MetaCase("metaKeyMaxLength 128", {LONG_KEY + "k": "v"},
             f"Couldn't load metadata pair ('{LONG_KEY}k', 'v'): Key is too long (limit: 128 characters)"),
    MetaCase("metaKeyReservedPrefix consul-", {"consul-version": "1"},
             "Couldn't load metadata pair ('consul-version', '1'): Key prefix 'consul-' is reserved for "
             "internal use"),
    MetaCase("metaValueMaxLength 512", {"k": "v" * 513},
             f"Couldn't load metadata pair ('k', '{'v' * 513}'): Value is too long (limit: 512 characters)"),
    MetaCase("metaValueMaxLength counts bytes (Go len)", {"k": "é" * 257},
             f"Couldn't load metadata pair ('k', '{'é' * 257}'): Value is too long (limit: 512 characters)"),
    MetaCase("metaMaxKeyPairs 64 (the text says Node for services too)", {f"k{i}": "v" for i in range(65)},
             "Node metadata cannot contain more than 64 key/value pairs"),
    MetaCase("at the limits", {LONG_KEY: "v" * 512, **{f"k_{i}-x": "é" * 256 for i in range(63)}}, None),
    MetaCase("the prefix needs its dash", {"consulx": "v", "Consul-X": "v"}, None),
]


def _ids(cases: list[MetaCase]) -> list[str]:
    return [case.rule for case in cases]


@pytest.mark.parametrize("case", META_CASES, ids=_ids(META_CASES))
def test_service_meta_on_catalog_register(consul: ConsulTarget, case: MetaCase) -> None:
    node, name = consul.unique("n"), consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": node}))
    response = consul.http("PUT", "/v1/catalog/register", {
        "Node": node, "Address": "10.0.0.1", "Service": {"ID": "s1", "Service": name, "Meta": case.meta}})
    if case.error is None:
        assert (response.status, response.text) == (200, "true")
        [stored] = consul.http("GET", f"/v1/catalog/service/{name}").json()
        assert stored["ServiceMeta"] == case.meta
        return
    expected = f"failed inserting service: Invalid Service Meta for node {node} and serviceID s1: {case.error}"
    assert (response.status, response.text) == (500, expected)
    assert consul.http("GET", f"/v1/catalog/service/{name}").json() == []


@pytest.mark.parametrize("case", META_CASES, ids=_ids(META_CASES))
def test_service_meta_in_a_txn_fails_its_operation_and_rolls_back_all(consul: ConsulTarget,
                                                                      case: MetaCase) -> None:
    """state/txn.go txnDispatch: each failed op is reported by OpIndex with its error's
    text, 409, and nothing of the transaction is applied (the node set before it neither)."""
    node, name = consul.unique("n"), consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": node}))
    ops = [{"Node": {"Verb": "set", "Node": {"Node": node, "Address": "10.0.0.1"}}},
           {"Service": {"Verb": "set", "Node": node, "Service": {"ID": "ok", "Service": name}}},
           {"Service": {"Verb": "set", "Node": node, "Service": {"ID": "s1", "Service": name, "Meta": case.meta}}}]
    response = consul.http("PUT", "/v1/txn", ops)
    if case.error is None:
        assert response.status == 200, response.text
        return
    assert response.status == 409, response.text
    assert response.json() == {"Results": None, "Errors": [
        {"OpIndex": 2, "What": f"Invalid Service Meta for node {node} and serviceID s1: {case.error}"}]}
    assert node not in {n["Node"] for n in consul.http("GET", "/v1/catalog/nodes").json()}


@pytest.mark.parametrize("case", META_CASES, ids=_ids(META_CASES))
def test_service_meta_on_agent_register(consul: ConsulTarget, case: MetaCase) -> None:
    """agent_endpoint.go AgentRegisterService: 400 "Invalid Service Meta: ..."."""
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}"))
    response = consul.http("PUT", "/v1/agent/service/register", {"Name": name, "Meta": case.meta})
    if case.error is None:
        assert response.status == 200, response.text
        assert consul.client().agent.services()[name]["Meta"] == case.meta
        return
    assert (response.status, response.text) == (400, f"Invalid Service Meta: {case.error}")
    assert name not in consul.client().agent.services()


def test_mesh_gateway_may_carry_the_wan_federation_key(consul: ConsulTarget) -> None:
    """ValidateServiceMetadata: allowedConsulMetaKeysForMeshGateway, for that kind alone."""
    node = consul.unique("n")
    meta = {"consul-wan-federation": "1"}
    consul.register({"Node": node, "Address": "10.0.0.1", "Service": {
        "ID": "gw", "Service": consul.unique("gw"), "Kind": "mesh-gateway", "Port": 443, "Meta": meta}})
    typical = consul.http("PUT", "/v1/catalog/register", {
        "Node": node, "Address": "10.0.0.1", "Service": {"ID": "web", "Service": "web", "Meta": meta}})
    assert typical.status == 500 and "Key prefix 'consul-' is reserved" in typical.text, typical.text


@pytest.mark.parametrize(("rule", "meta"), [
    ("metaKeyFormat", {"a.b": "v"}),
    ("metaKeyReservedPrefix", {"consul-x": "v"}),
    ("metaMaxKeyPairs", {f"k{i}": "v" for i in range(65)}),
])
def test_node_meta_is_not_vetted_by_the_catalog(consul: ConsulTarget, rule: str, meta: dict[str, str]) -> None:
    """ValidateNodeMetadata runs on an agent's own node_meta configuration only
    (agent/config/builder.go); nodePreApply and ensureNodeTxn store any node meta."""
    node = consul.unique("n")
    consul.register({"Node": node, "Address": "10.0.0.1", "NodeMeta": meta})
    assert consul.http("GET", f"/v1/catalog/node/{node}").json()["Node"]["Meta"] == meta


def test_names_tags_and_check_status_are_stored_as_given_by_the_catalog(consul: ConsulTarget) -> None:
    """Catalog.Register and the txn endpoint vet neither service names nor tags (the agent
    only warns that DNS cannot serve them: agent.go validateService), nor a check's status
    (structs.ValidStatus is the agent endpoints' rule; ensureCheckTxn only defaults "")."""
    node = consul.unique("n")
    name = consul.unique("a b.c/ü")
    tags = ["", "a,b", "ü", "x" * 300]
    consul.register({"Node": node, "Address": "10.0.0.1",
                     "Service": {"ID": "s1", "Service": name, "Tags": tags},
                     "Check": {"CheckID": "c1", "Name": "c1", "ServiceID": "s1", "Status": "bogus"}})
    stored = consul.http("GET", f"/v1/catalog/node/{node}").json()["Services"]["s1"]
    assert (stored["Service"], stored["Tags"]) == (name, tags)
    [check] = [c for c in consul.http("GET", f"/v1/health/node/{node}").json() if c["CheckID"] == "c1"]
    assert check["Status"] == "bogus"


def test_invalid_weights_are_replaced_not_refused_by_the_catalog(consul: ConsulTarget) -> None:
    """NodeService.ToServiceNode: weights ValidateWeights refuses become {1, 1}, silently."""
    node, name = consul.unique("n"), consul.unique("web")
    consul.register({"Node": node, "Address": "10.0.0.1",
                     "Service": {"Service": name, "Weights": {"Passing": 70000, "Warning": 1}}})
    [stored] = consul.http("GET", f"/v1/catalog/service/{name}").json()
    assert stored["ServiceWeights"] == {"Passing": 1, "Warning": 1}


def test_a_txn_body_over_txn_max_req_len_is_413(consul: ConsulTarget) -> None:
    """agent/txn_endpoint.go convertOps: the body's size (txn_max_req_len, or kv_max_value_size
    when larger; both 512 KiB by default) before anything is decoded; nothing is applied."""
    key = consul.unique("big")
    value = base64.b64encode(b"x" * (400 * 1024)).decode()  # under kv_max_value_size alone
    response = consul.http("PUT", "/v1/txn", [{"KV": {"Verb": "set", "Key": key, "Value": value}}])
    assert (response.status, response.text) == (413, "Request body too large, max size: 524288 bytes")
    assert consul.http("GET", f"/v1/kv/{key}").status == 404


# --- agent TTL checks: agent/checks/check.go CheckTTL ----------------------------------------


def _let_pass(consul: ConsulTarget, seconds: float) -> None:
    """Let `seconds` of the server's time pass: the fake's manual clock, or real time."""
    if consul.clock is not None:
        consul.clock.advance(seconds)


def _agent_check(consul: ConsulTarget, check_id: str) -> dict[str, Any]:
    return consul.client().agent.checks()[check_id]


@dataclass(frozen=True)
class TtlCase:
    rule: str
    updates: tuple[tuple[str, str], ...]  # (status, output) sent before the TTL runs out
    output: str  # what the check says once it expired


TTL_CASES = [
    TtlCase("CheckTTL.run: critical once the TTL passes with no update", (), "TTL expired"),
    TtlCase("getExpiredOutput: the last output follows", (("passing", "all good"),),
            "TTL expired (last output before timeout follows): all good"),
    TtlCase("SetStatus re-arms the timer, last update wins", (("passing", "one"), ("warning", "two")),
            "TTL expired (last output before timeout follows): two"),
]


@pytest.mark.parametrize("case", TTL_CASES, ids=[c.rule for c in TTL_CASES])
def test_ttl_check_turns_critical_once_its_ttl_passes(consul: ConsulTarget, case: TtlCase) -> None:
    client = consul.client()
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}"))
    client.agent.service.register(name, check=pyconsul.Check.ttl("2s"))
    check_id = f"service:{name}"
    for status, output in case.updates:
        _let_pass(consul, 1.5)  # each update starts the 2 s over
        response = consul.http("PUT", f"/v1/agent/check/update/{check_id}", {"Status": status, "Output": output})
        assert response.status == 200, response.text
        assert _agent_check(consul, check_id)["Status"] == status, "an update within the TTL holds"
    _let_pass(consul, 2)

    def expired() -> bool:
        return _agent_check(consul, check_id)["Status"] == "critical" and \
            _agent_check(consul, check_id)["Output"] == case.output
    eventually(expired, 10, f"{check_id} critical with {case.output!r} (now {_agent_check(consul, check_id)})")
    [entry] = client.health.service(name)[1]
    [check] = [c for c in entry["Checks"] if c["CheckID"] == check_id]
    assert (check["Status"], check["Output"]) == ("critical", case.output), "the catalog follows the agent"


def test_ttl_check_stays_as_updated_within_its_ttl(consul: ConsulTarget) -> None:
    if consul.clock is None:
        pytest.skip("needs the fake's clock: a real agent's TTL runs in real time")
    client = consul.client()
    name = consul.unique("web")
    client.agent.service.register(name, check=pyconsul.Check.ttl("2s"))
    check_id = f"service:{name}"
    assert client.agent.check.ttl_pass(check_id)
    consul.clock.advance(1.9)
    # The timer has looked at the clock since it moved: it waits for the 0.1 s left.
    eventually(lambda: any(abs(left - 0.1) < 1e-6 for left in consul.clock.waiting()), 5,
               f"the TTL timer waiting for its last 0.1 s ({consul.clock.waiting()})")
    assert _agent_check(consul, check_id)["Status"] == "passing"
    client.agent.service.deregister(name)
    consul.clock.advance(5)
    assert check_id not in client.agent.checks(), "a deregistered check's timer fires into nothing"


def test_only_a_ttl_check_takes_status_updates(consul: ConsulTarget) -> None:
    """agent.go updateTTLCheck: "CheckID ... does not have associated TTL", a plain 500."""
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}"))
    registered = consul.http("PUT", "/v1/agent/service/register", {
        "Name": name, "Check": {"TCP": "127.0.0.1:9", "Interval": "1h"}})
    assert registered.status == 200, registered.text
    response = consul.http("PUT", f"/v1/agent/check/pass/service:{name}")
    assert (response.status, response.text) == (500, f'CheckID "service:{name}" does not have associated TTL')


# --- empty listings: each endpoint's "Use empty list instead of nil" ---------------------------

EMPTY_LISTINGS = [
    ("health_endpoint.go HealthChecksInState", "/v1/health/state/warning?filter=CheckID%20%3D%3D%20%22{u}%22"),
    ("health_endpoint.go HealthChecksInState, a state nothing has", "/v1/health/state/{u}"),
    ("health_endpoint.go HealthServiceChecks", "/v1/health/checks/{u}"),
    ("health_endpoint.go HealthNodeChecks", "/v1/health/node/{u}"),
    ("health_endpoint.go HealthServiceNodes", "/v1/health/service/{u}"),
    ("catalog_endpoint.go CatalogServiceNodes", "/v1/catalog/service/{u}"),
    ("catalog_endpoint.go CatalogNodes", "/v1/catalog/nodes?filter=Node%20%3D%3D%20%22{u}%22"),
    ("session_endpoint.go SessionsForNode", "/v1/session/node/{u}"),
]


@pytest.mark.parametrize(("rule", "path"), EMPTY_LISTINGS, ids=[rule for rule, _ in EMPTY_LISTINGS])
def test_a_listing_that_matches_nothing_is_an_empty_list(consul: ConsulTarget, rule: str, path: str) -> None:
    response = consul.http("GET", path.format(u=consul.unique("none")))
    assert (response.status, response.text) == (200, "[]"), f"{rule}: {response.status} {response.text}"


# --- ?filter= on every endpoint Consul documents it for (api-docs, "filter" parameter) ----------


def _filter(expression: str) -> str:
    return "filter=" + urllib.parse.quote(expression)


def test_filter_is_applied_wherever_consul_takes_one(consul: ConsulTarget) -> None:
    node, name = consul.unique("n"), consul.unique("web")
    consul.register({"Node": node, "Address": "10.0.0.1", "NodeMeta": {"role": "probe"},
                     "Service": {"ID": "s1", "Service": name, "Tags": ["a"], "Meta": {"m": "1"}},
                     "Checks": [{"CheckID": "c-pass", "Name": "c", "ServiceID": "s1", "Status": "passing"},
                                {"CheckID": "c-warn", "Name": "c", "ServiceID": "s1", "Status": "warning"}]})
    agent_name = consul.unique("local")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{agent_name}"))
    consul.client().agent.service.register(agent_name, check=pyconsul.Check.ttl("1h"))

    def get(path: str) -> Any:
        response = consul.http("GET", path)
        assert response.status == 200, f"{path}: {response.status} {response.text}"
        return response.json()

    on_node = _filter(f'Node == "{node}"')
    assert list(get(f"/v1/catalog/services?{on_node}")) == [name], "catalog/services (Consul 1.14+)"
    assert [n["Node"] for n in get(f"/v1/catalog/nodes?{_filter('Meta.role == probe')}")] == [node]
    assert get(f"/v1/catalog/service/{name}?{_filter('ServiceMeta.m == 2')}") == []
    tagged_a, tagged_b = _filter('"a" in Tags'), _filter('"b" in Tags')
    assert list(get(f"/v1/catalog/node/{node}?{tagged_a}")["Services"]) == ["s1"]
    assert get(f"/v1/catalog/node-services/{node}?{tagged_b}")["Services"] is None
    assert get(f"/v1/health/service/{name}?{_filter('Service.ID == s2')}") == []
    warned = _filter("Status == warning")
    assert [c["CheckID"] for c in get(f"/v1/health/checks/{name}?{warned}")] == ["c-warn"]
    assert [c["CheckID"] for c in get(f"/v1/health/node/{node}?{warned}")] == ["c-warn"]
    passing_here = _filter(f'Node == "{node}" and Status == passing')
    assert [c["CheckID"] for c in get(f"/v1/health/state/any?{passing_here}")] == ["c-pass"]
    assert list(get(f"/v1/agent/services?{_filter(f'Service == {agent_name}')}")) == [agent_name]
    assert list(get(f"/v1/agent/checks?{_filter(f'ServiceName == {agent_name}')}")) == [f"service:{agent_name}"]


# --- /v1/agent/self: Agent.Stats -----------------------------------------------------------------


def test_agent_self_carries_stats_sections_of_strings(consul: ConsulTarget) -> None:
    """agent_endpoint.go AgentSelf: Stats is Agent.Stats(), map[string]map[string]string."""
    me = consul.client().agent.self()
    stats = me["Stats"]
    assert {"agent", "build", "consul", "runtime"} <= set(stats), sorted(stats)
    assert all(isinstance(v, str) for section in stats.values() for v in section.values()), stats
    assert stats["build"]["version"] == me["Config"]["Version"]
    assert stats["consul"]["server"] == "true" and stats["consul"]["leader"] == "true"
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}"))
    consul.client().agent.service.register(name)
    after = consul.client().agent.self()["Stats"]["agent"]
    assert int(after["services"]) == int(stats["agent"]["services"]) + 1, (stats["agent"], after)
