"""Kubernetes snapshot -> desired Consul registrations, and the diff against Consul."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.catalog.model import (
    IngressRoute,
    Instance,
    Node,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
    Snapshot,
)
from bridge.catalog.plan import OWNER_META, Plan, Registration, diff
from bridge.catalog.to_consul import (
    META_ANNOTATION_PREFIX,
    PORT_ANNOTATION,
    SYNC_ANNOTATION,
    TAGS_ANNOTATION,
    Memo,
    SyncOptions,
    desired,
    ingress_address,
    parse_bool,
    parse_tags,
    registrations_for,
    sync_enabled,
)

CLUSTER = "cluster-a"
ORIGIN = Origin(OriginKind.KUBERNETES, CLUSTER)
POD_PORTS = (Port("http", 8080), Port("https", 8443))


def sid(name: str, address: str) -> str:
    return f"{name}-{hashlib.sha1(f'{name}-{address}'.encode()).hexdigest()[:12]}"


def pod(address: str, name: str, *, ready: bool = True, node: str = "node-1",
        ports: tuple[Port, ...] = POD_PORTS, zone: str = "") -> Instance:
    return Instance(address=address, ports=ports, origin=ORIGIN, ready=ready, node_name=node,
                    target=name, zone=zone)


def service(name: str = "web", namespace: str = "shop", *,
            stype: ServiceType = ServiceType.HEADLESS, annotations: dict | None = None,
            instances: tuple[Instance, ...] | None = None,
            ports: tuple[Port, ...] = (Port("http", 80), Port("https", 443))) -> Service:
    if instances is None:
        instances = (pod("10.0.0.1", f"{name}-0"), pod("10.0.0.2", f"{name}-1", node="node-2"))
    return Service(key=ServiceKey(namespace, name), type=stype, ports=ports,
                   instances=instances, annotations=tuple(sorted((annotations or {}).items())))


def opts(**kw) -> SyncOptions:
    return SyncOptions(cluster_id=CLUSTER, **kw)


def registered(svc: Service, options: SyncOptions, **kw) -> list[Registration]:
    """What `registrations_for` registers, without its skip reasons."""
    return list(registrations_for(svc, options, **kw).registrations)


# --- parse_bool ---------------------------------------------------------------------------

GO_TRUE = ["1", "t", "T", "TRUE", "true", "True"]
GO_FALSE = ["0", "f", "F", "FALSE", "false", "False"]


@pytest.mark.parametrize("value", GO_TRUE)
def test_parse_bool_true_set(value):
    assert parse_bool(value) is True


@pytest.mark.parametrize("value", GO_FALSE)
def test_parse_bool_false_set(value):
    assert parse_bool(value) is False


@pytest.mark.parametrize("value", [None, "", "yes", "no", "on", "off", "tRUE", "FaLsE", "2",
                                   "-1", "y", "n", "truee", "01"])
def test_parse_bool_anything_else_is_invalid(value):
    assert parse_bool(value) is None, f"{value!r} is not accepted by Go strconv.ParseBool"


@pytest.mark.parametrize("value", [" true", "false "])
def test_parse_bool_does_not_trim_like_go(value):
    # consul-k8s calls strconv.ParseBool(raw) on the raw annotation, with no TrimSpace; Go
    # rejects surrounding whitespace, so the default applies. " false" must not disable sync.
    assert parse_bool(value) is None, (
        f"Go's strconv.ParseBool({value!r}) is an error, parse_bool gave {parse_bool(value)!r}")


@given(st.text(max_size=8))
def test_parse_bool_accepts_exactly_the_go_set(value):
    expected = True if value in GO_TRUE else False if value in GO_FALSE else None
    if value.strip() != value:
        return  # whitespace handling has its own test above
    assert parse_bool(value) is expected


# --- parse_tags ---------------------------------------------------------------------------


def test_parse_tags_consul_k8s_example():
    # resource_test.go lbAnnotatedTags; reference §1.2
    value = "one, two,,\\,leadingcomma,trailingcomma\\,,middle\\,comma"
    assert parse_tags(value) == ["one", "two", ",leadingcomma", "trailingcomma,",
                                 "middle,comma"]


@pytest.mark.parametrize(("value", "expected"), [
    ("", []),
    ("a", ["a"]),
    ("  a  ", ["a"]),
    ("a,,b", ["a", "b"]),
    (",a,", ["a"]),
    ("a, ,b", ["a", "b"]),
    ("tag\\,with\\,commas,tag2", ["tag,with,commas", "tag2"]),
    ("a\\b", ["a\\b"]),
    ("a\\", ["a\\"]),
])
def test_parse_tags_cases(value, expected):
    assert parse_tags(value) == expected


def go_parse_tags(value: str) -> list[str]:
    """A line-by-line port of consul-k8s control-plane/helper/parsetags/parsetags.go."""
    tags: list[str] = []
    nxt = ""
    for ch in value:
        if ch != ",":
            nxt += ch
            continue
        if not nxt:
            continue
        if nxt[-1] == "\\":
            nxt = nxt[:-1] + ","
            continue
        tags.append(nxt.strip())
        nxt = ""
    if nxt:
        tags.append(nxt.strip())
    return tags


@given(st.text(alphabet="ab ,\\", max_size=16))
def test_parse_tags_agrees_with_consul_k8s(value):
    # Reference §1.2: empty entries are dropped (Go keeps a whitespace-only one as "").
    expected = [t for t in go_parse_tags(value) if t]
    assert parse_tags(value) == expected, f"{value!r}"


# --- sync_enabled -------------------------------------------------------------------------


@pytest.mark.parametrize(("default", "annotation", "expected"), [
    (True, None, True),
    (False, None, False),
    (True, "true", True),
    (False, "true", True),
    (True, "false", False),
    (False, "false", False),
    (False, "t", True),   # consul-k8s defaultDisableEnable
    (True, "garbage", True),
    (False, "garbage", False),
    (True, "", True),
])
def test_sync_enabled(default, annotation, expected):
    annotations = {} if annotation is None else {SYNC_ANNOTATION: annotation}
    got = sync_enabled(service(annotations=annotations), default)
    assert got is expected, f"default={default} annotation={annotation!r}: got {got}"


def test_sync_disabled_service_contributes_nothing():
    assert registered(service(annotations={SYNC_ANNOTATION: "false"}), opts()) == []
    assert registered(service(), opts(default_sync=False)) == []
    assert len(registered(service(annotations={SYNC_ANNOTATION: "1"}),
                                 opts(default_sync=False))) == 2


# --- registrations_for --------------------------------------------------------------------


def test_headless_service_with_two_ready_pods():
    svc = service(annotations={TAGS_ANNOTATION: "one, two"})
    regs = registered(svc, opts())
    common = {
        "external-source": "kubernetes",
        "external-k8s-ns": "shop",
        "external-k8s-name": "web",
        OWNER_META: CLUSTER,
        "port-http": "80",
        "port-https": "443",
        "external-k8s-ref-kind": "Pod",
    }
    expected = [
        Registration(
            service_id=sid("web", "10.0.0.1"), name="web", address="10.0.0.1", port=8080,
            tags=("k8s", "one", "two"),
            meta=tuple(sorted({**common, "external-k8s-ref-name": "web-0",
                               "external-k8s-node-name": "node-1"}.items())),
            check_status="passing"),
        Registration(
            service_id=sid("web", "10.0.0.2"), name="web", address="10.0.0.2", port=8080,
            tags=("k8s", "one", "two"),
            meta=tuple(sorted({**common, "external-k8s-ref-name": "web-1",
                               "external-k8s-node-name": "node-2"}.items())),
            check_status="passing"),
    ]
    assert regs == expected


def test_registration_check_id_is_namespace_slash_service_id():
    reg = registered(service(), opts())[0]
    assert reg.namespace == "shop"
    assert reg.check_id == f"shop/{sid('web', '10.0.0.1')}"


def test_check_status_follows_readiness():
    svc = service(instances=(pod("10.0.0.1", "web-0", ready=True),
                             pod("10.0.0.2", "web-1", ready=False)))
    status = {r.address: r.check_status for r in registered(svc, opts())}
    assert status == {"10.0.0.1": "passing", "10.0.0.2": "critical"}, (
        "not-ready endpoints are registered, but critical (consul-k8s clusterIP_healthCheck)")


def test_tags_start_with_the_configured_tag():
    regs = registered(service(), opts(tag="k8s-east"))
    assert {r.tags for r in regs} == {("k8s-east",)}


def test_name_options_are_applied():
    regs = registered(service("foo", "namespace"), opts(prefix="prefix", add_namespace_suffix=True))
    assert {r.name for r in regs} == {"prefixfoo-namespace"}
    assert {r.service_id for r in regs} == {sid("prefixfoo-namespace", "10.0.0.1"),
                                            sid("prefixfoo-namespace", "10.0.0.2")}


def test_owner_marker_cannot_be_overridden_or_forged_by_annotation():
    svc = service(annotations={META_ANNOTATION_PREFIX + OWNER_META: "someone-else"})
    for reg in registered(svc, opts()):
        assert dict(reg.meta)[OWNER_META] == CLUSTER, reg.meta


def test_service_meta_annotations_are_added():
    svc = service(annotations={META_ANNOTATION_PREFIX + "team": "blue",
                               META_ANNOTATION_PREFIX + "Version": "v2",
                               "other/annotation": "ignored"})
    meta = dict(registered(svc, opts())[0].meta)
    assert meta["team"] == "blue"
    assert meta["Version"] == "v2"
    assert "other/annotation" not in meta and "annotation" not in meta
    assert "" not in meta, "the bare prefix must not produce an empty meta key"


def test_externalname_service_is_skipped():
    svc = service(stype=ServiceType.EXTERNAL_NAME, ports=())
    assert registered(svc, opts()) == []


@pytest.mark.parametrize(("stype", "extra"), [(ServiceType.CLUSTER_IP, {}), (ServiceType.HEADLESS, {}),
                                             (ServiceType.LOAD_BALANCER, {"lb_endpoints": True})])
def test_endpoint_types_register_their_endpoints(stype, extra):
    regs = registered(service(stype=stype), opts(**extra))
    assert [r.address for r in regs] == ["10.0.0.1", "10.0.0.2"]


def test_default_port_is_the_endpoint_port_of_the_first_service_port():
    # Service ports http, https; a slice lists them the other way round.
    svc = service(instances=(pod("10.0.0.1", "web-0",
                                 ports=(Port("https", 8443), Port("http", 8080))),))
    assert registered(svc, opts())[0].port == 8080


def test_service_port_annotation_by_name():
    svc = service(annotations={PORT_ANNOTATION: "https"})
    assert {r.port for r in registered(svc, opts())} == {8443}


def test_service_port_annotation_by_number():
    svc = service(annotations={PORT_ANNOTATION: "4141"})
    assert {r.port for r in registered(svc, opts())} == {4141}


def test_service_port_annotation_unknown_name_falls_back_to_first_port():
    svc = service(annotations={PORT_ANNOTATION: "nosuchport"})
    assert {r.port for r in registered(svc, opts())} == {8080}


@pytest.mark.parametrize("value", ["²", "٣"])
def test_service_port_annotation_with_non_ascii_digits_is_a_port_name(value):
    # str.isdigit() is True for these, but only ASCII digits make a port number (Go's
    # strconv.ParseInt rejects them, so consul-k8s treats the value as a port name).
    svc = service(annotations={PORT_ANNOTATION: value})
    unknown = registered(service(annotations={PORT_ANNOTATION: "nosuchport"}), opts())
    got = registered(svc, opts())
    assert got == unknown, f"service-port={value!r} should act as an unknown port name"


def test_instance_without_ports_is_skipped_and_reported():
    svc = service(instances=(pod("10.0.0.1", "web-0", ports=()), pod("10.0.0.2", "web-1")))
    found, skipped, _ = registrations_for(svc, opts())
    assert [r.address for r in found] == ["10.0.0.2"]
    assert len(skipped) == 1 and "10.0.0.1" in skipped[0], skipped


def test_unnamed_service_port_meta():
    svc = service(ports=(Port("", 80),), instances=(pod("10.0.0.1", "p", ports=(Port("", 8080),)),))
    reg = registered(svc, opts())[0]
    assert reg.port == 8080
    assert dict(reg.meta)["port-"] == "80", "consul-k8s writes port-<name> with the empty name"


def test_zone_and_no_target_meta():
    inst = dataclasses.replace(pod("10.0.0.1", "", zone="us-west-2a"), target="")
    meta = dict(registered(service(instances=(inst,)), opts())[0].meta)
    assert meta["external-k8s-topology-zone"] == "us-west-2a"
    assert "external-k8s-ref-name" not in meta and "external-k8s-ref-kind" not in meta, (
        "an endpoint without targetRef carries no ref keys (consul-k8s targetRefInMeta)")


# --- desired ------------------------------------------------------------------------------


def test_desired_is_keyed_by_service_id_across_services():
    snap = Snapshot.of([service("web"), service("api", instances=(pod("10.0.1.1", "api-0"),)),
                        service("off", annotations={SYNC_ANNOTATION: "false"},
                                instances=(pod("10.0.2.1", "off-0"),))], synced=True)
    wanted = desired(snap, opts()).registrations
    assert set(wanted) == {sid("web", "10.0.0.1"), sid("web", "10.0.0.2"),
                           sid("api", "10.0.1.1")}
    for key, reg in wanted.items():
        assert reg.service_id == key


def test_desired_reports_duplicate_service_ids():
    # Two Services, one Consul name (annotation), same pod IP: one ID, the second skipped.
    a = service("a", "ns1", annotations={"consul.hashicorp.com/service-name": "shared"},
                instances=(pod("10.0.0.1", "a-0"),))
    b = service("b", "ns2", annotations={"consul.hashicorp.com/service-name": "shared"},
                instances=(pod("10.0.0.1", "b-0"),))
    result = desired(Snapshot.of([b, a], synced=True), opts())
    wanted, skipped = result.registrations, result.skipped
    assert list(wanted) == [sid("shared", "10.0.0.1")]
    assert wanted[sid("shared", "10.0.0.1")].namespace == "ns1", "the first key in order wins"
    assert len(skipped) == 1 and "duplicate" in skipped[0], skipped


def test_desired_of_empty_snapshot_is_empty():
    assert desired(Snapshot(), opts()).registrations == {}


# --- diff ---------------------------------------------------------------------------------


def reg(address: str, **kw) -> Registration:
    base = Registration(service_id=sid("web", address), name="web", address=address, port=80,
                        tags=("k8s",), meta=(("external-k8s-ns", "shop"), (OWNER_META, CLUSTER)))
    return dataclasses.replace(base, **kw)


def by_id(*regs: Registration) -> dict[str, Registration]:
    return {r.service_id: r for r in regs}


def test_diff_unchanged_world_is_an_empty_plan():
    wanted = desired(Snapshot.of([service()], synced=True), opts()).registrations
    plan = diff(wanted, dict(wanted))
    assert plan.empty and len(plan) == 0, plan
    assert plan == Plan()


def test_diff_create_update_delete():
    keep, change, gone, new = reg("10.0.0.1"), reg("10.0.0.2"), reg("10.0.0.3"), reg("10.0.0.4")
    changed = dataclasses.replace(change, check_status="critical")
    plan = diff(by_id(keep, changed, new), by_id(keep, change, gone))
    assert plan.create == (new,)
    assert plan.update == (changed,), "update carries the wanted value"
    assert plan.delete == (gone,), "delete carries the actual value"
    assert len(plan) == 3 and not plan.empty


@pytest.mark.parametrize("field", ["port", "tags", "meta", "check_status", "address", "name"])
def test_diff_any_field_change_is_an_update(field):
    old = reg("10.0.0.1")
    new_value = {"port": 81, "tags": ("k8s", "x"), "meta": (*old.meta, ("z", "1")),
                 "check_status": "critical", "address": "10.0.0.9", "name": "web2"}[field]
    new = dataclasses.replace(old, **{field: new_value})
    plan = diff(by_id(new), by_id(old))
    assert plan.update == (new,) and not plan.create and not plan.delete, plan


def test_diff_only_deletes_what_is_in_actual():
    # A neighbour's registrations never reach `actual` (the sink filters by owner), so diff
    # has nothing of theirs to delete: deletes are exactly actual minus wanted.
    ours = reg("10.0.0.1")
    plan = diff({}, by_id(ours))
    assert plan.delete == (ours,)
    assert diff({}, {}).empty, "nothing in actual, nothing deleted"
    neighbour_like = reg("10.9.9.9", meta=(("external-k8s-ns", "shop"), (OWNER_META, "other")))
    plan = diff(by_id(neighbour_like), {})
    assert plan.delete == () and plan.create == (neighbour_like,)


@given(st.sets(st.integers(1, 6)), st.sets(st.integers(1, 6)), st.sets(st.integers(1, 6)))
def test_diff_applied_to_actual_gives_wanted(want_ids, have_ids, stale_ids):
    wanted = by_id(*(reg(f"10.0.0.{i}") for i in want_ids))
    actual = by_id(*(reg(f"10.0.0.{i}", port=81 if i in stale_ids else 80) for i in have_ids))
    plan = diff(wanted, actual)
    result = dict(actual)
    for r in plan.delete:
        assert r.service_id in actual, "diff deleted something that was not in actual"
        del result[r.service_id]
    for r in itertools.chain(plan.create, plan.update):
        result[r.service_id] = r
    assert result == wanted
    assert len(plan.update) == len(want_ids & have_ids & stale_ids)
    assert diff(wanted, result).empty


def test_endpoint_meta_wins_over_annotation_meta_as_in_consul_k8s():
    svc = service(annotations={"consul.hashicorp.com/service-meta-external-k8s-node-name": "fake",
                               "consul.hashicorp.com/service-meta-team": "payments"})
    metas = [dict(r.meta) for r in registered(svc, opts())]
    assert [m["external-k8s-node-name"] for m in metas] == ["node-1", "node-2"], metas
    assert all(m["team"] == "payments" for m in metas)


# --- Ingress routes (consul-k8s -enable-ingress, -loadBalancer-ips) ----------------------------


def route(host: str = "web.example.com", path: str = "/", *, service: str = "web", tls: bool = False,
          lb_ips: tuple[str, ...] = (), ingress: str = "front", namespace: str = "shop") -> IngressRoute:
    return IngressRoute(namespace, ingress, service, host, path, tls, lb_ips)


@pytest.mark.parametrize(("routes", "lb_ips", "expected"), [
    ([route()], False, ("web.example.com", 80)),
    ([route(tls=True)], False, ("web.example.com", 443)),
    ([route(lb_ips=("203.0.113.7", "203.0.113.8"))], True, ("203.0.113.7", 80)),
    ([route(tls=True, lb_ips=("203.0.113.7",))], True, ("203.0.113.7", 443)),
    ([route(lb_ips=())], True, None),                        # no LB IP yet: endpoints
    ([route(path="/api")], False, None),                     # only "/" counts
    ([route(path="")], False, None),
    ([route(host="")], False, None),                         # a rule without a host
    ([route("a.example.com"), route("b.example.com", ingress="z")], False, ("b.example.com", 80)),
    ([route("a.example.com"), route("")], False, ("a.example.com", 80)),
    ([route("a.example.com"), route("b.example.com", path="/b")], False, ("a.example.com", 80)),
])
def test_ingress_address(routes, lb_ips, expected):
    assert ingress_address(routes, lb_ips) == expected


def test_ingress_registers_one_instance_at_the_host_instead_of_the_endpoints():
    svc = service()
    regs = registered(svc, opts(ingress=True), routes=[route()])
    assert [(r.address, r.port) for r in regs] == [("web.example.com", 80)]
    reg = regs[0]
    assert reg.service_id == sid("web", "web.example.com"), "the ID hashes the Ingress host"
    assert reg.check_status == "passing"
    meta = dict(reg.meta)
    assert meta["external-k8s-ref-name"] == "web-0" and meta["external-k8s-node-name"] == "node-1", (
        "meta of the first endpoint, as consul-k8s")
    assert meta["port-http"] == "80" and meta[OWNER_META] == CLUSTER
    tls = registered(svc, opts(ingress=True), routes=[route(tls=True)])
    assert [(r.address, r.port) for r in tls] == [("web.example.com", 443)]
    lb = registered(svc, opts(ingress=True, ingress_lb_ips=True),
                           routes=[route(lb_ips=("203.0.113.7",))])
    assert [(r.address, r.port) for r in lb] == [("203.0.113.7", 80)]


@pytest.mark.parametrize(("options", "routes"), [
    ({}, [route()]),                                               # ingress disabled
    ({"ingress": True}, [route(path="/foo")]),                     # path is not "/"
    ({"ingress": True}, [route(service="other")]),                 # another Service's route
    ({"ingress": True}, [route(namespace="elsewhere")]),           # same name, other namespace
    ({"ingress": True, "ingress_lb_ips": True}, [route()]),        # no LB IP on the Ingress
])
def test_ingress_that_does_not_apply_leaves_the_endpoints(options, routes):
    regs = registered(service(), opts(**options), routes=routes)
    assert sorted((r.address, r.port) for r in regs) == [("10.0.0.1", 8080), ("10.0.0.2", 8080)]


def test_ingress_needs_endpoints_and_follows_their_readiness():
    assert registered(service(instances=()), opts(ingress=True), routes=[route()]) == []
    mixed = service(instances=(pod("10.0.0.1", "web-0", ready=False), pod("10.0.0.2", "web-1")))
    reg = registered(mixed, opts(ingress=True), routes=[route()])[0]
    assert reg.check_status == "passing", "passing while any endpoint behind the Ingress is ready"
    assert dict(reg.meta)["external-k8s-ref-name"] == "web-1", "meta of the ready endpoint"
    down = service(instances=(pod("10.0.0.1", "web-0", ready=False),))
    assert [r.check_status for r in registered(down, opts(ingress=True), routes=[route()])] == [
        "critical"]
    assert registered(down, opts(ingress=True, not_ready="skip"), routes=[route()]) == []


@pytest.mark.parametrize(("stype", "extra", "via_ingress"), [
    (ServiceType.CLUSTER_IP, {}, True),
    (ServiceType.HEADLESS, {}, True),
    (ServiceType.LOAD_BALANCER, {"lb_endpoints": True}, True),
    (ServiceType.LOAD_BALANCER, {}, False),   # registered at its own LB ingress
    (ServiceType.CLUSTER_IP, {"register_cluster_ip": True}, False),
])
def test_ingress_replaces_only_endpoint_registrations(stype, extra, via_ingress):
    svc = dataclasses.replace(service(stype=stype), cluster_ips=("10.96.0.10",),
                              load_balancer_ingress=("198.51.100.1",))
    addresses = {r.address for r in registered(svc, opts(ingress=True, **extra), routes=[route()])}
    assert (addresses == {"web.example.com"}) is via_ingress, addresses


def test_ingress_external_ips_still_win():
    svc = dataclasses.replace(service(stype=ServiceType.CLUSTER_IP), external_ips=("192.0.2.1",))
    regs = registered(svc, opts(ingress=True), routes=[route()])
    assert [(r.address, r.port) for r in regs] == [("192.0.2.1", 80)]


def test_desired_passes_each_service_its_ingress_routes():
    snap = Snapshot.of([service("web"), service("api", instances=(pod("10.0.1.1", "api-0"),))],
                       synced=True, ingresses=[route("api.example.com", service="api", tls=True)])
    wanted = desired(snap, opts(ingress=True)).registrations
    assert sorted((r.name, r.address, r.port) for r in wanted.values()) == [
        ("api", "api.example.com", 443), ("web", "10.0.0.1", 8080), ("web", "10.0.0.2", 8080)]
    plain = desired(snap, opts()).registrations
    assert ("api", "10.0.1.1", 8080) in {(r.name, r.address, r.port) for r in plain.values()}


# --- desired with a memo ------------------------------------------------------------------


def test_memo_recomputes_only_the_services_that_are_new_objects(monkeypatch):
    from bridge.catalog import to_consul

    calls: list[ServiceKey] = []
    original = to_consul.registrations_for

    def counting(svc, *args, **kw):
        calls.append(svc.key)
        return original(svc, *args, **kw)

    monkeypatch.setattr(to_consul, "registrations_for", counting)
    web, api = service("web"), service("api", instances=(pod("10.0.1.1", "api-0"),))
    memo = Memo()
    first = dict(desired(Snapshot.of([web, api], synced=True), opts(), memo).registrations)  # a view: copy
    assert sorted(calls) == [api.key, web.key]
    calls.clear()
    changed = service("api", instances=(pod("10.0.1.1", "api-0", ready=False),))
    second = desired(Snapshot.of([web, changed], synced=True), opts(), memo).registrations
    assert calls == [changed.key], f"only the changed Service is computed again, got {calls}"
    assert second == desired(Snapshot.of([web, changed], synced=True), opts()).registrations
    assert second != first
    calls.clear()
    desired(Snapshot.of([web, changed], synced=True), opts(tag="other"), memo)
    assert sorted(calls) == [changed.key, web.key], "other options start afresh"


def test_memo_follows_nodes_and_ingress_routes_of_unchanged_services():
    nodeport = service("np", stype=ServiceType.NODE_PORT,
                       ports=(Port("http", 80, node_port=30080),))
    web = service("web")
    memo = Memo()
    options = opts(ingress=True)
    nodes = {"node-1": Node("node-1", external_ips=("203.0.113.1",)),
             "node-2": Node("node-2", external_ips=("203.0.113.2",))}
    for step_nodes, routes in [
        (nodes, []),
        ({**nodes, "node-1": Node("node-1", external_ips=("203.0.113.9",))}, []),
        ({**nodes, "node-1": Node("node-1", external_ips=("203.0.113.9",))},
         [route("web.example.com", service="web")]),
        (nodes, []),
    ]:
        snap = Snapshot.of([nodeport, web], synced=True, nodes=step_nodes, ingresses=routes)
        with_memo = desired(snap, options, memo)
        assert with_memo == desired(snap, options), (step_nodes, routes)


def test_memo_replays_skip_reasons_of_unchanged_services():
    bad = service("bad", stype=ServiceType.NODE_PORT, ports=(Port("http", 80),))
    memo = Memo()
    options = opts()
    first = desired(Snapshot.of([bad], synced=True), options, memo).skipped
    assert first, "a NodePort Service without a nodePort is reported"
    again = desired(Snapshot.of([bad], synced=True), options, memo).skipped
    assert again == first, "an unchanged Service's reasons are given again from the memo"


def _variant(name: str, namespace: str, variant: int) -> Service:
    """Small Services that collide on purpose: variant 2 takes the Consul name "shared",
    and addresses repeat across Services."""
    annotations = {"consul.hashicorp.com/service-name": "shared"} if variant == 2 else {}
    if variant == 3:
        annotations[SYNC_ANNOTATION] = "false"
    return service(name, namespace, annotations=annotations,
                   instances=(pod(f"10.0.0.{variant + 1}", f"{name}-0", ready=variant != 1),
                              pod("10.0.0.9", f"{name}-1")))


@given(steps=st.lists(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                                         st.sampled_from(["ns1", "ns2"]),
                                         st.integers(0, 4)), max_size=5), max_size=12))
def test_desired_with_a_memo_equals_desired_from_scratch(steps):
    memo = Memo()
    current: dict[tuple[str, str], Service] = {}
    for step in steps:
        for name, namespace, variant in step:
            if variant == 4:
                current.pop((namespace, name), None)
            elif variant == 0 and (namespace, name) in current:
                pass  # unchanged: the same object again
            else:
                current[(namespace, name)] = _variant(name, namespace, variant)
        snap = Snapshot.of(list(current.values()), synced=True)
        with_memo, plain = desired(snap, opts(), memo), desired(snap, opts())
        assert dict(with_memo.registrations) == plain.registrations
        assert sorted(with_memo.skipped) == sorted(plain.skipped)


def test_diff_limited_to_the_ids_that_can_differ():
    a, b, c = reg("10.0.0.1"), reg("10.0.0.2"), reg("10.0.0.3")
    moved = dataclasses.replace(b, port=81)
    wanted, actual = by_id(a, moved, c), by_id(a, b)
    full = diff(wanted, actual)
    assert [r.address for r in full.create] == ["10.0.0.3"]
    assert full.update == (moved,)
    only = diff(wanted, actual, only={c.service_id})
    assert only.create == (c,) and not only.update, "IDs outside `only` are taken as equal"
    gone = diff(by_id(a), actual, only={b.service_id})
    assert gone.delete == (b,)
    assert diff(by_id(a), by_id(a, b, c)).delete == (b, c), "deletes found without `only`"
