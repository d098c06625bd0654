"""Raw Consul JSON <-> the bridge's values, and plans as /v1/txn operations."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from bridge.catalog.model import (
    Instance,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
    Snapshot,
)
from bridge.catalog.plan import CHECK_NAME, CHECK_TYPE, OWNER_META, Plan, Registration, diff
from bridge.catalog.to_consul import SyncOptions, desired
from bridge.consul.objects import (
    NODE_ADDRESS,
    BadEntry,
    instance_from_health,
    is_ours,
    node_operation,
    plan_operations,
    registrations_on_node,
)

CLUSTER = "cluster-a"
NODE = "k8s-sync-cluster-a"


def health_entry(*, service_address: str = "", node_address: str = "192.168.1.10",
                 port: Any = 5432, meta: dict | None = None,
                 statuses: tuple[str, ...] = ("passing", "passing")) -> dict:
    return {
        "Node": {"ID": "abc", "Node": "vm-1", "Address": node_address, "Datacenter": "dc1",
                 "Meta": {"consul-network-segment": ""}},
        "Service": {"ID": "db-1", "Service": "db", "Tags": ["primary", "v1"],
                    "Address": service_address, "Port": port,
                    "Meta": {"version": "1"} if meta is None else meta,
                    "Weights": {"Passing": 1, "Warning": 1}},
        "Checks": [{"Node": "vm-1", "CheckID": f"check-{i}", "Status": s}
                   for i, s in enumerate(statuses)],
    }


# --- instance_from_health -----------------------------------------------------------------


def test_empty_service_address_means_the_node_address():
    inst = instance_from_health(health_entry())
    assert inst == Instance(
        address="192.168.1.10", ports=(Port("", 5432),), origin=Origin(OriginKind.CONSUL, "vm-1"),
        ready=True, node_name="vm-1", consul_id="db-1", tags=("primary", "v1"),
        meta=(("version", "1"),))


def test_service_address_wins_over_the_node_address():
    inst = instance_from_health(health_entry(service_address="10.1.2.3"))
    assert inst.address == "10.1.2.3"


def test_ipv6_address_is_normalised():
    inst = instance_from_health(health_entry(service_address="FD00:0::1"))
    assert inst.address == "fd00::1"


@pytest.mark.parametrize(("statuses", "passing_only", "ready"), [
    ((), True, True),
    (("passing",), True, True),
    (("passing", "warning"), True, False),
    (("passing", "warning"), False, True),
    (("passing", "critical"), True, False),
    (("passing", "critical"), False, False),
    (("warning", "warning"), False, True),
    (("maintenance",), False, False),
])
def test_check_statuses_decide_readiness(statuses, passing_only, ready):
    inst = instance_from_health(health_entry(statuses=statuses), passing_only=passing_only)
    assert inst.ready is ready, f"checks={statuses} passing_only={passing_only}"


def test_port_meta_becomes_named_ports():
    meta = {"port-http": "80", "port-https": "443", "external-k8s-ns": "shop"}
    inst = instance_from_health(health_entry(port=8080, meta=meta))
    assert inst.ports == (Port("http", 80), Port("https", 443)), inst.ports
    assert dict(inst.meta) == meta


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", "", "8 0"])
def test_unusable_port_meta_is_ignored(value):
    inst = instance_from_health(health_entry(port=8080, meta={"port-http": value}))
    assert inst.ports == (Port("", 8080),), f"port-http={value!r}: {inst.ports}"


@pytest.mark.parametrize("value", ["²", "١٢"])
def test_port_meta_with_non_ascii_digits_is_ignored_not_a_crash(value):
    # Anyone can write service meta to Consul; "²".isdigit() is True but int("²") raises a
    # plain ValueError that the source (which catches BadEntry) does not expect.
    inst = instance_from_health(health_entry(port=8080, meta={"port-http": value}))
    assert inst.ports == (Port("", 8080),), f"port-http={value!r}: {inst.ports}"


def test_port_zero_gives_no_ports():
    assert instance_from_health(health_entry(port=0)).ports == ()
    assert instance_from_health(health_entry(port=None)).ports == ()


@pytest.mark.parametrize("port", [-1, 65536, "5432", True, 54.0])
def test_bad_port_raises_bad_entry(port):
    with pytest.raises(BadEntry, match="port"):
        instance_from_health(health_entry(port=port))


@pytest.mark.parametrize("address", ["db.example.com", "10.0.0.256", "::g"])
def test_non_ip_address_raises_bad_entry(address):
    with pytest.raises(BadEntry, match="address"):
        instance_from_health(health_entry(service_address=address))


def test_no_address_at_all_raises_bad_entry():
    with pytest.raises(BadEntry, match="no address"):
        instance_from_health(health_entry(node_address=""))


@pytest.mark.parametrize("field", ["Node", "Service"])
def test_node_or_service_not_an_object(field):
    entry = health_entry()
    entry[field] = "oops"
    with pytest.raises(BadEntry):
        instance_from_health(entry)


def test_lowercase_keys_are_tolerated():
    entry = {
        "node": {"node": "vm-1", "address": "192.168.1.10"},
        "service": {"id": "db-1", "service": "db", "address": "", "port": 5432,
                    "tags": ["primary", "v1"], "meta": {"version": "1"}},
        "checks": [{"status": "passing"}, {"status": "warning"}],
    }
    inst = instance_from_health(entry, passing_only=False)
    assert inst == dataclasses.replace(instance_from_health(health_entry()), ready=True)
    assert instance_from_health(entry, passing_only=True).ready is False


def test_instance_from_health_does_not_modify_its_input():
    entry = health_entry(meta={"port-http": "80"})
    before = copy.deepcopy(entry)
    instance_from_health(entry)
    assert entry == before


def test_is_ours():
    assert is_ours({"Meta": {}}, NODE, NODE, CLUSTER), "anything on our node is ours"
    assert is_ours({"Meta": {OWNER_META: CLUSTER}}, "other", NODE, CLUSTER)
    assert not is_ours({"Meta": {OWNER_META: "cluster-b"}}, "other", NODE, CLUSTER)
    assert not is_ours({}, "other", NODE, CLUSTER)


# --- registrations_on_node ----------------------------------------------------------------


def stored_service(sid: str, owner: str | None = CLUSTER, ns: str = "shop") -> dict:
    meta = {"external-source": "kubernetes", "external-k8s-ns": ns}
    if owner is not None:
        meta[OWNER_META] = owner
    return {"ID": sid, "Service": "web", "Address": "10.0.0.1", "Port": 8080,
            "Tags": ["k8s"], "Meta": meta, "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False, "CreateIndex": 10, "ModifyIndex": 10}


def test_only_registrations_with_our_marker_are_ours():
    view = {"Node": {"Node": NODE, "Address": NODE_ADDRESS},
            "Services": [stored_service("ours"), stored_service("theirs", owner="cluster-b"),
                         stored_service("unmarked", owner=None)]}
    checks = [{"CheckID": "shop/ours", "Status": "critical"},
              {"CheckID": "shop/theirs", "Status": "passing"}]
    regs = registrations_on_node(view, checks, CLUSTER)
    assert list(regs) == ["ours"], f"only our marker counts: {sorted(regs)}"
    assert regs["ours"] == Registration(
        service_id="ours", name="web", address="10.0.0.1", port=8080, tags=("k8s",),
        meta=(("bridge-owner", CLUSTER), ("external-k8s-ns", "shop"),
              ("external-source", "kubernetes")),
        check_status="critical")


def test_services_as_a_map_by_id_are_accepted():
    # /v1/catalog/node/<node> gives Services as {id: service}
    view = {"Node": {"Node": NODE}, "Services": {"ours": stored_service("ours")}}
    regs = registrations_on_node(view, [{"CheckID": "shop/ours", "Status": "passing"}], CLUSTER)
    assert set(regs) == {"ours"} and regs["ours"].check_status == "passing"


def test_check_status_is_picked_by_namespace_slash_service_id():
    view = {"Services": [stored_service("a", ns="shop"), stored_service("b", ns="blog")]}
    checks = [{"CheckID": "blog/a", "Status": "critical"},   # wrong namespace for a
              {"CheckID": "shop/a", "Status": "passing"},
              {"CheckID": "service:b", "Status": "critical"},  # not our check ID for b
              {"CheckID": "blog/b", "Status": "warning"}]
    regs = registrations_on_node(view, checks, CLUSTER)
    assert regs["a"].check_status == "passing"
    assert regs["b"].check_status == "warning"


def test_missing_check_gives_empty_status_so_diff_rewrites_it():
    view = {"Services": [stored_service("a")]}
    regs = registrations_on_node(view, [], CLUSTER)
    assert regs["a"].check_status == ""
    wanted = {"a": dataclasses.replace(regs["a"], check_status="passing")}
    plan = diff(wanted, regs)
    assert plan.update == (wanted["a"],), "a lost check must be written again"


@pytest.mark.parametrize("view", [None, {}, {"Node": {"Node": NODE}}, {"Services": None}])
def test_no_node_or_no_services_is_nothing(view):
    assert registrations_on_node(view, [], CLUSTER) == {}


def test_lowercase_keys_on_node_view():
    view = {"services": [{"id": "a", "service": "web", "address": "10.0.0.1", "port": 8080,
                          "tags": ["k8s"], "meta": {OWNER_META: CLUSTER,
                                                     "external-k8s-ns": "shop"}}]}
    regs = registrations_on_node(view, [{"checkid": "shop/a", "status": "passing"}], CLUSTER)
    assert regs["a"].name == "web" and regs["a"].port == 8080
    assert regs["a"].check_status == "passing"


# --- plan_operations ----------------------------------------------------------------------


def reg(address: str, status: str = "passing") -> Registration:
    return Registration(service_id=f"web-{address}", name="web", address=address, port=8080,
                        tags=("k8s", "blue"),
                        meta=(("external-k8s-ns", "shop"), (OWNER_META, CLUSTER)),
                        check_status=status)


def test_plan_operations_group_service_and_check_and_delete_alone():
    create, update, delete = reg("10.0.0.1"), reg("10.0.0.2", "critical"), reg("10.0.0.3")
    groups = plan_operations(Plan(create=(create,), update=(update,), delete=(delete,)), NODE)
    assert len(groups) == 3, groups
    for group, r in ((groups[0], create), (groups[1], update)):
        assert len(group) == 2, group
        service_op, check_op = group[0]["Service"], group[1]["Check"]
        assert service_op == {"Verb": "set", "Node": NODE, "Service": {
            "ID": r.service_id, "Service": "web", "Address": r.address, "Port": 8080,
            "Tags": ["k8s", "blue"], "Meta": {"external-k8s-ns": "shop", OWNER_META: CLUSTER},
            "Weights": {"Passing": 1, "Warning": 1}}}
        assert check_op["Verb"] == "set"
        check = check_op["Check"]
        assert check["Node"] == NODE
        assert check["CheckID"] == f"shop/{r.service_id}"
        assert check["ServiceID"] == r.service_id, "the check must belong to its service"
        assert check["Name"] == CHECK_NAME and check["Type"] == CHECK_TYPE
        assert check["Status"] == r.check_status
    assert groups[0][1]["Check"]["Check"]["Output"] == "Kubernetes health checks passing"
    assert groups[1][1]["Check"]["Check"]["Output"] == "Kubernetes health checks failing"
    assert groups[2] == [{"Service": {"Verb": "delete", "Node": NODE,
                                      "Service": {"ID": delete.service_id, "Service": "web"}}}], \
        "Consul refuses a service op with an ID but no name, a delete too"


def test_empty_plan_has_no_operations():
    assert plan_operations(Plan(), NODE) == []


def test_node_operation():
    op = node_operation(NODE, CLUSTER)
    assert op == {"Node": {"Verb": "set", "Node": {
        "Node": NODE, "Address": NODE_ADDRESS,
        "Meta": {"external-source": "kubernetes", OWNER_META: CLUSTER}}}}


# --- round trip: desired -> txn -> what Consul stores -> registrations_on_node --------------


class FakeCatalog:
    """What Consul keeps for a node after applying txn Service/Check operations."""

    def __init__(self) -> None:
        self.services: dict[str, dict] = {}
        self.checks: dict[str, dict] = {}

    def apply(self, groups: list[list[dict]]) -> None:
        for group in groups:
            for op in group:
                if "Service" in op:
                    body = op["Service"]
                    assert body["Node"] == NODE
                    sid = body["Service"]["ID"]
                    if body["Verb"] == "delete":
                        self.services.pop(sid, None)
                        self.checks = {k: c for k, c in self.checks.items()
                                       if c["ServiceID"] != sid}
                    else:
                        assert body["Verb"] == "set", body
                        # Consul answers with more fields than were written.
                        self.services[sid] = {
                            **copy.deepcopy(body["Service"]), "TaggedAddresses": {},
                            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
                            "CreateIndex": 5, "ModifyIndex": 5}
                elif "Check" in op:
                    body = op["Check"]
                    assert body["Verb"] == "set", body
                    check = copy.deepcopy(body["Check"])
                    assert check["ServiceID"] in self.services, "check before its service"
                    self.checks[check["CheckID"]] = {**check, "ServiceName": "x",
                                                     "Definition": {}}
                else:
                    raise AssertionError(f"unexpected op {op}")

    def node_view(self) -> dict:
        return {"Node": {"Node": NODE, "Address": NODE_ADDRESS},
                "Services": list(self.services.values())}


def world(ready: dict[str, bool]) -> Snapshot:
    origin = Origin(OriginKind.KUBERNETES, CLUSTER)
    pods = tuple(Instance(address=a, ports=(Port("http", 8080), Port("https", 8443)),
                          origin=origin, ready=r, node_name="n1", target=f"pod-{a}")
                 for a, r in sorted(ready.items()))
    web = Service(key=ServiceKey("shop", "web"), type=ServiceType.HEADLESS,
                  ports=(Port("http", 80), Port("https", 443)), instances=pods,
                  annotations=(("consul.hashicorp.com/service-meta-team", "blue"),
                               ("consul.hashicorp.com/service-tags", "a, b\\,c")))
    api = Service(key=ServiceKey("blog", "api"), type=ServiceType.CLUSTER_IP,
                  ports=(Port("", 80),), cluster_ips=("10.96.0.1",),
                  instances=(Instance(address="fd00::5", ports=(Port("", 9000),),
                                      origin=origin),))
    return Snapshot.of([web, api], synced=True)


def read_back(store: FakeCatalog) -> dict[str, Registration]:
    return registrations_on_node(store.node_view(), list(store.checks.values()), CLUSTER)


def test_round_trip_gives_back_equal_registrations_so_a_restart_writes_nothing():
    options = SyncOptions(cluster_id=CLUSTER)
    wanted = desired(world({"10.0.0.1": True, "10.0.0.2": False}), options).registrations
    assert len(wanted) == 3
    store = FakeCatalog()
    store.apply(plan_operations(diff(wanted, {}), NODE))
    actual = read_back(store)
    assert actual == wanted, "what Consul stores must read back as the same registrations"
    # A restart: same world, computed afresh, against what Consul holds.
    again = desired(world({"10.0.0.1": True, "10.0.0.2": False}), SyncOptions(cluster_id=CLUSTER)).registrations
    plan = diff(again, actual)
    assert plan.empty, f"an unchanged world must write nothing: {plan}"


def test_round_trip_through_updates_and_deletes():
    store = FakeCatalog()
    first = desired(world({"10.0.0.1": True, "10.0.0.2": True}), SyncOptions(cluster_id=CLUSTER)).registrations
    store.apply(plan_operations(diff(first, read_back(store)), NODE))
    second = desired(world({"10.0.0.1": False, "10.0.0.3": True}),
                     SyncOptions(cluster_id=CLUSTER)).registrations
    plan = diff(second, read_back(store))
    assert [r.address for r in plan.create] == ["10.0.0.3"]
    assert [(r.address, r.check_status) for r in plan.update] == [("10.0.0.1", "critical")]
    assert [r.address for r in plan.delete] == ["10.0.0.2"]
    store.apply(plan_operations(plan, NODE))
    assert read_back(store) == second
    assert not any(c["ServiceID"].endswith("10.0.0.2") for c in store.checks.values())
    assert diff(second, read_back(store)).empty


def test_neighbours_on_the_same_consul_are_never_deleted():
    store = FakeCatalog()
    wanted = desired(world({"10.0.0.1": True}), SyncOptions(cluster_id=CLUSTER)).registrations
    store.apply(plan_operations(diff(wanted, {}), NODE))
    neighbour = dict(store.services[next(iter(wanted))])
    neighbour = {**neighbour, "ID": "web-neighbour",
                 "Meta": {**neighbour["Meta"], OWNER_META: "cluster-b"}}
    store.services["web-neighbour"] = neighbour
    plan = diff({}, read_back(store))  # our world is now empty
    assert {r.service_id for r in plan.delete} == set(wanted)
    assert "web-neighbour" not in {r.service_id for r in plan.delete}


def test_a_readiness_flip_is_one_check_write_and_round_trips():
    store = FakeCatalog()
    first = desired(world({"10.0.0.1": True, "10.0.0.2": True}), SyncOptions(cluster_id=CLUSTER)).registrations
    store.apply(plan_operations(diff(first, read_back(store)), NODE))
    flipped = desired(world({"10.0.0.1": False, "10.0.0.2": True}),
                      SyncOptions(cluster_id=CLUSTER)).registrations
    plan = diff(flipped, read_back(store))
    groups = plan_operations(plan, NODE)
    assert groups == [[{"Check": {"Verb": "set", "Check": groups[0][0]["Check"]["Check"]}}]], \
        f"a readiness flip must be the check alone, got {groups}"
    assert groups[0][0]["Check"]["Check"]["Status"] == "critical"
    store.apply(groups)
    assert read_back(store) == flipped
    assert diff(flipped, read_back(store)).empty


def test_an_update_without_what_consul_held_still_sets_service_and_check():
    reg = next(iter(desired(world({"10.0.0.1": True}), SyncOptions(cluster_id=CLUSTER)).registrations.values()))
    ops = plan_operations(Plan(update=(reg,)), NODE)[0]
    assert [next(iter(op)) for op in ops] == ["Service", "Check"]


def test_a_check_under_another_id_is_removed_with_the_update():
    reg = next(iter(desired(world({"10.0.0.1": True}), SyncOptions(cluster_id=CLUSTER)).registrations.values()))
    moved_meta = tuple((k, "other" if k == "external-k8s-ns" else v) for k, v in reg.meta)
    held = dataclasses.replace(reg, meta=moved_meta)
    assert held.check_id != reg.check_id
    ops = plan_operations(diff({reg.service_id: reg}, {reg.service_id: held}), NODE)[0]
    deleted = [op["Check"]["Check"]["CheckID"] for op in ops
               if "Check" in op and op["Check"]["Verb"] == "delete"]
    assert deleted == [held.check_id], ops


def test_no_check_before_or_after_writes_no_check_op():
    reg = dataclasses.replace(
        next(iter(desired(world({"10.0.0.1": True}), SyncOptions(cluster_id=CLUSTER)).registrations.values())),
        check_status="")
    held = dataclasses.replace(reg, port=reg.port + 1)
    ops = plan_operations(diff({reg.service_id: reg}, {reg.service_id: held}), NODE)[0]
    assert [next(iter(op)) for op in ops] == ["Service"], ops
