"""The registrations `to_consul` derives stay within what Consul accepts: what a Service's
annotations or addresses ask for beyond that is left out and returned as a Refusal.

The oracle is the Consul test server's own copy of Consul's rules
(bridge/testing/consul/validation.py), written apart from the bridge's.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.catalog.model import Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.plan import OWNER_META, Registration
from bridge.catalog.to_consul import (
    META_ANNOTATION_PREFIX,
    WEIGHT_ANNOTATION,
    Memo,
    Refusal,
    SyncOptions,
    desired,
    registrations_for,
)
from bridge.testing.consul.validation import is_any_address, service_meta_error, weights_error

CLUSTER = "c1"
ORIGIN = Origin(OriginKind.KUBERNETES, CLUSTER)
KEY = ServiceKey("shop", "web")


def pod(address: str, name: str) -> Instance:
    return Instance(address=address, ports=(Port("http", 8080),), origin=ORIGIN, ready=True,
                    node_name="node-1", target=name, zone="zone-a", hostname=name)


def service(annotations: dict[str, str] | None = None, *, ports: tuple[Port, ...] = (Port("http", 80),),
            stype: ServiceType = ServiceType.HEADLESS, name: str = "web", **fields: object) -> Service:
    instances = fields.pop("instances", (pod("10.0.0.1", "web-0"), pod("10.0.0.2", "web-1")))
    return Service(key=ServiceKey("shop", name), type=stype, ports=ports, instances=instances,  # type: ignore[arg-type]
                   annotations=tuple(sorted((annotations or {}).items())), **fields)  # type: ignore[arg-type]


def meta(name: str) -> str:
    return META_ANNOTATION_PREFIX + name


def derive(svc: Service, **options: object) -> tuple[list[Registration], dict[str, Refusal]]:
    regs, _, refused = registrations_for(svc, SyncOptions(cluster_id=CLUSTER, **options))  # type: ignore[arg-type]
    by_reason = {r.reason: r for r in refused}
    assert len(by_reason) == len(refused), f"one refusal per reason and Service: {refused}"
    assert all(r.service == svc.key for r in refused)
    return list(regs), by_reason


def consul_accepts(reg: Registration) -> None:
    """What Consul checks of a registration the bridge sends, and that it stores it as sent."""
    assert service_meta_error("", dict(reg.meta)) is None, (service_meta_error("", dict(reg.meta)), reg)
    assert not is_any_address(reg.address), reg
    assert weights_error({"Passing": reg.weight, "Warning": 1}) is None, reg


# --- meta keys and values: structs.validateMetaPair ------------------------------------------


def test_meta_annotations_consul_refuses_are_left_out_and_the_rest_kept():
    svc = service({meta("team"): "blue", meta("a.b"): "x", meta("a/b"): "x", meta("consul-x"): "x",
                   meta("k" * 129): "x", meta("k" * 128): "fits", meta("big"): "v" * 513,
                   meta("wide"): "é" * 257, meta("at-limit"): "é" * 256})
    regs, refused = derive(svc)
    assert len(regs) == 2
    for reg in regs:
        consul_accepts(reg)
        pairs = dict(reg.meta)
        assert pairs["team"] == "blue" and pairs["k" * 128] == "fits" and pairs["at-limit"] == "é" * 256
        assert not {"a.b", "a/b", "consul-x", "k" * 129, "big", "wide"} & set(pairs), pairs
    assert set(refused) == {"meta_key", "meta_value"}
    keys = refused["meta_key"].message
    for bad, why in (("a.b", "invalid characters"), ("a/b", "invalid characters"),
                     ("consul-x", "reserved"), ("k" * 129, "too long")):
        assert f"{meta(bad)} (" in keys and why in keys, keys
    assert meta("big") in refused["meta_value"].message and meta("wide") in refused["meta_value"].message
    assert "v" * 20 not in refused["meta_value"].message, "values stay out of the logs"


def test_a_service_without_bad_annotations_has_no_refusal():
    regs, refused = derive(service({meta("team"): "blue"}))
    assert refused == {} and len(regs) == 2


def test_meta_beyond_64_pairs_leaves_the_last_annotations_out_in_key_order():
    annotations = {meta(f"k{i:02d}"): "v" for i in range(70)}
    regs, refused = derive(service(annotations))
    for reg in regs:
        consul_accepts(reg)
        pairs = dict(reg.meta)
        assert len(pairs) <= 64 and pairs[OWNER_META] == CLUSTER
        assert pairs["external-k8s-ref-name"].startswith("web-"), "the endpoint meta has its room"
    # Ours: source, ns, name, owner, port-http and room for 5 endpoint keys: 54 annotations fit.
    kept = {k for k in dict(regs[0].meta) if k.startswith("k")}
    assert kept == {f"k{i:02d}" for i in range(54)}, sorted(kept)
    assert set(refused) == {"meta_count"}
    assert all(meta(f"k{i:02d}") in refused["meta_count"].message for i in range(54, 70))


def test_an_annotation_overriding_our_own_meta_takes_no_room():
    annotations = {meta(f"k{i:02d}"): "v" for i in range(54)} | {meta("external-source"): "mine"}
    regs, refused = derive(service(annotations))
    assert refused == {}, refused
    assert dict(regs[0].meta)["external-source"] == "mine", "as consul-k8s: the annotation wins"


def test_more_ports_than_meta_pairs_leave_port_meta_out():
    ports = tuple(Port(f"p{i}", 1000 + i) for i in range(70))
    regs, refused = derive(service(ports=ports), cluster_ip_services=True)
    assert regs and all(len(dict(r.meta)) <= 64 for r in regs)
    for reg in regs:
        consul_accepts(reg)
    assert "meta_count" in refused and "port 'p69'" in refused["meta_count"].message


# --- weights: structs.ValidateWeights --------------------------------------------------------


def test_weight_consul_would_silently_reset_is_refused_not_sent():
    for text in ("70000", "65536", "1", "0", "-3", "x"):
        regs, refused = derive(service({WEIGHT_ANNOTATION: text}, stype=ServiceType.LOAD_BALANCER,
                                       load_balancer_ingress=("192.0.2.1",)))
        assert [r.weight for r in regs] == [1], text
        assert set(refused) == {"weight"} and "2 to 65535" in refused["weight"].message, (text, refused)
    regs, refused = derive(service({WEIGHT_ANNOTATION: "65535"}, stype=ServiceType.LOAD_BALANCER,
                                   load_balancer_ingress=("192.0.2.1",)))
    assert [r.weight for r in regs] == [65535] and refused == {}


# --- addresses: servicePreApply's ipaddr.IsAny ------------------------------------------------


def test_an_address_consul_refuses_is_not_registered_and_the_rest_is():
    svc = service(stype=ServiceType.CLUSTER_IP, external_ips=("0.0.0.0", "192.0.2.7", "::"))
    regs, refused = derive(svc)
    assert [r.address for r in regs] == ["192.0.2.7"]
    assert set(refused) == {"address"}
    assert "0.0.0.0" in refused["address"].message and "::" in refused["address"].message


def test_external_name_that_is_an_any_address_is_refused():
    svc = service(stype=ServiceType.EXTERNAL_NAME, external_name="0.0.0.0", instances=())
    regs, refused = derive(svc, external_name=True)
    assert regs == [] and set(refused) == {"address"}


# --- desired() and its memo ---------------------------------------------------------------


def test_desired_returns_each_services_refusals_and_the_memo_replays_and_drops_them():
    options = SyncOptions(cluster_id=CLUSTER)
    bad = service({meta("a.b"): "x"}, name="bad")
    good = service({meta("team"): "x"}, name="good")
    memo = Memo()
    first = desired(Snapshot.of([bad, good], synced=True), options, memo)
    assert [(r.service, r.reason) for r in first.refused] == [(ServiceKey("shop", "bad"), "meta_key")]
    again = desired(Snapshot.of([bad, good], synced=True), options, memo)
    assert again.refused == first.refused, "unchanged Services keep their refusals"
    fixed = service({meta("a_b"): "x"}, name="bad")
    assert desired(Snapshot.of([fixed, good], synced=True), options, memo).refused == ()
    assert desired(Snapshot.of([bad, good], synced=True), options, memo).refused == first.refused
    assert desired(Snapshot.of([good], synced=True), options, memo).refused == (), "gone with its Service"
    assert desired(Snapshot.of([bad, good], synced=True), options, Memo()).refused == first.refused


# --- any annotations: what is sent is what Consul stores ------------------------------------

META_KEYS = st.one_of(st.text(alphabet="abcXYZ019_-", min_size=1, max_size=12),
                      st.text(min_size=1, max_size=8),
                      st.sampled_from(["consul-x", "a.b", "k" * 128, "k" * 129, "external-source", OWNER_META]))
META_VALUES = st.one_of(st.text(max_size=20), st.integers(500, 520).map(lambda n: "v" * n),
                        st.integers(250, 260).map(lambda n: "é" * n))
WEIGHTS = st.one_of(st.none(), st.integers(-2, 70000).map(str), st.text(max_size=5))
ADDRESSES = st.sampled_from(["10.0.0.1", "0.0.0.0", "::", "192.0.2.9", "2001:db8::1"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(META_KEYS, META_VALUES, max_size=80), WEIGHTS,
       st.lists(ADDRESSES, min_size=1, max_size=3, unique=True),
       st.integers(1, 70))
def test_any_annotations_give_registrations_consul_accepts(pairs, weight, addresses, ports):
    annotations = {meta(k): v for k, v in pairs.items()}
    if weight is not None:
        annotations[WEIGHT_ANNOTATION] = weight
    svc = service(annotations, stype=ServiceType.LOAD_BALANCER, load_balancer_ingress=tuple(addresses),
                  ports=tuple(Port(f"p{i}", 1000 + i) for i in range(ports)))
    regs, refused = derive(svc)
    for reg in regs:
        consul_accepts(reg)
    assert {r.address for r in regs} == {a for a in addresses if not is_any_address(a)}
    kept = set(dict(regs[0].meta)) if regs else set()
    for key, value in pairs.items():
        fits = service_meta_error("", {key: value}) is None
        if not fits:
            assert key not in kept or key in {"external-source", OWNER_META}, key
            assert {"meta_key", "meta_value"} & set(refused), (key, refused)
        elif regs and key not in kept:
            assert "meta_count" in refused and meta(key) in refused["meta_count"].message, key
