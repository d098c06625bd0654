"""Names across the two worlds: consul-k8s service names and IDs, DNS-1123 labels."""

from __future__ import annotations

import hashlib
import itertools
import re

from hypothesis import given
from hypothesis import strategies as st

from bridge.catalog.model import Service, ServiceKey, ServiceType
from bridge.catalog.naming import (
    SERVICE_NAME_ANNOTATION,
    consul_service_id,
    consul_service_name,
    dns_label,
    dns_labels,
)

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def svc(name: str = "web", namespace: str = "shop", annotations: dict | None = None) -> Service:
    return Service(key=ServiceKey(namespace, name), type=ServiceType.HEADLESS,
                   annotations=tuple(sorted((annotations or {}).items())))


def sha12(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# --- consul_service_name ------------------------------------------------------------------


def test_service_name_is_the_kubernetes_name_by_default():
    assert consul_service_name(svc("web", "shop"), "", False) == "web"


def test_service_name_prefix_then_namespace_suffix():
    # consul-k8s addK8SNamespaceWithPrefix: prefix first, then -<namespace>
    assert consul_service_name(svc("foo", "namespace"), "prefix", True) == "prefixfoo-namespace"
    assert consul_service_name(svc("foo", "namespace"), "", True) == "foo-namespace"
    assert consul_service_name(svc("foo", "namespace"), "k8s-", False) == "k8s-foo"


def test_service_name_annotation_is_trimmed_and_ignores_prefix_and_suffix():
    service = svc("foo", "namespace", {SERVICE_NAME_ANNOTATION: "  bar \t"})
    for prefix, suffix in itertools.product(("", "pre-"), (False, True)):
        got = consul_service_name(service, prefix, suffix)
        assert got == "bar", f"prefix={prefix!r} suffix={suffix}: annotation must win, got {got!r}"


def test_unrelated_annotations_do_not_change_the_name():
    service = svc("foo", "ns", {"consul.hashicorp.com/service-tags": "bar"})
    assert consul_service_name(service, "p-", True) == "p-foo-ns"


# --- consul_service_id --------------------------------------------------------------------


def test_service_id_matches_consul_k8s_format():
    for name, address in [("web", "10.0.0.1"), ("prefixfoo-namespace", "fd00::1"),
                          ("a", ""), ("ünï", "1.2.3.4")]:
        expected = f"{name}-{sha12(f'{name}-{address}')}"
        got = consul_service_id(name, address)
        assert got == expected, f"{name!r}/{address!r}: {got!r} != {expected!r}"


def test_service_id_known_value():
    # Pinned literal so a change of hashing (encoding, separator, length) is caught even if the
    # independent computation above were to drift the same way.
    assert consul_service_id("web", "10.0.0.1") == "web-" + hashlib.sha1(
        b"web-10.0.0.1").hexdigest()[:12]
    assert len(consul_service_id("web", "10.0.0.1")) == len("web-") + 12


def test_service_ids_differ_by_address_and_by_name():
    ids = {consul_service_id(n, a) for n in ("web", "api") for a in ("10.0.0.1", "10.0.0.2")}
    assert len(ids) == 4, f"IDs must be distinct per (name, address): {ids}"


# --- dns_label ----------------------------------------------------------------------------


def test_dns_label_lowercases_and_replaces_invalid_runs():
    assert dns_label("Web") == "web"
    assert dns_label("my_service.v2") == "my-service-v2"
    assert dns_label("a__..__b") == "a-b", "a run of invalid characters becomes one '-'"
    assert dns_label("a--b") == "a--b", "valid '-' runs are kept as they are"


def test_dns_label_has_no_leading_or_trailing_dash():
    assert dns_label("_web_") == "web"
    assert dns_label("--web--") == "web"
    assert dns_label(".web.") == "web"


def test_dns_label_of_nothing_valid_is_still_a_label():
    for name in ("", "---", "___", "ü", "☃"):
        label = dns_label(name)
        assert DNS1123_LABEL.match(label), f"{name!r} -> {label!r} is not a DNS-1123 label"
    assert dns_label("___") != dns_label("...."), "different empty-ish names must not collide"


def test_dns_label_truncates_to_63_and_keeps_long_names_apart():
    a, b = "x" * 100 + "a", "x" * 100 + "b"
    la, lb = dns_label(a), dns_label(b)
    assert len(la) <= 63 and len(lb) <= 63, (la, lb)
    assert DNS1123_LABEL.match(la) and DNS1123_LABEL.match(lb)
    assert la != lb, "names that only differ after 63 characters must stay distinct"
    assert dns_label("y" * 63) == "y" * 63, "a 63-character label is left alone"


def test_dns_label_truncation_never_ends_in_dash():
    name = "a" * 53 + "_" * 20 + "b" * 20
    label = dns_label(name)
    assert DNS1123_LABEL.match(label), label
    assert "--" not in label[50:], f"no dangling dash before the digest: {label!r}"


def test_dns_label_is_deterministic():
    for name in ("Web.Shop", "x" * 80, "", "☃"):
        assert dns_label(name) == dns_label(name)


@given(st.text(max_size=200))
def test_every_dns_label_is_a_dns1123_label(name):
    label = dns_label(name)
    assert DNS1123_LABEL.match(label), f"{name!r} -> {label!r}"
    assert len(label) <= 63, f"{name!r} -> {label!r} ({len(label)} chars)"


@given(st.from_regex(DNS1123_LABEL, fullmatch=True).filter(lambda s: len(s) <= 63))
def test_a_valid_label_maps_to_itself(name):
    assert dns_label(name) == name


# --- dns_labels ---------------------------------------------------------------------------


def test_dns_labels_without_collisions_reports_none():
    labels, collisions = dns_labels(["web", "api", "Cache_1"])
    assert labels == {"web": "web", "api": "api", "Cache_1": "cache-1"}
    assert collisions == []


def test_dns_labels_collision_is_resolved_the_same_whatever_the_order():
    names = ["web", "Web", "WEB", "w.e.b", "w_e_b"]
    results = set()
    for perm in itertools.permutations(names):
        labels, collisions = dns_labels(perm)
        results.add((tuple(sorted(labels.items())), tuple(collisions)))
    assert len(results) == 1, f"input order changed the result: {results}"


def test_dns_labels_smallest_name_keeps_the_plain_label_and_collisions_are_reported():
    labels, collisions = dns_labels(["web", "Web"])
    # "Web" < "web" in sort order: it keeps the plain label.
    assert labels["Web"] == "web"
    assert labels["web"] != "web"
    assert DNS1123_LABEL.match(labels["web"]) and len(labels["web"]) <= 63
    assert collisions == [("web", "Web", labels["web"])], collisions


def test_dns_labels_duplicates_in_input_are_not_collisions():
    labels, collisions = dns_labels(["web", "web"])
    assert labels == {"web": "web"}
    assert collisions == []


def test_dns_labels_are_unique_even_when_a_name_equals_a_digest_label():
    # "b" collides with "B" and is given "b-" + sha1("b")[:8]. A third service whose own
    # label already is that string must not end up sharing it with "b".
    digest = hashlib.sha1(b"b").hexdigest()[:8]
    names = ["B", "b", f"B-{digest.upper()}"]
    labels, _ = dns_labels(names)
    assert len(set(labels.values())) == len(names), (
        f"two Consul services share one DNS label: {labels}")


@given(st.lists(st.text(alphabet="aAbB-_.", max_size=6), max_size=12))
def test_dns_labels_are_unique_and_valid(names):
    labels, collisions = dns_labels(names)
    assert set(labels) == set(names)
    assert len(set(labels.values())) == len(labels), f"labels not unique: {labels}"
    for name, label in labels.items():
        assert DNS1123_LABEL.match(label) and len(label) <= 63, f"{name!r} -> {label!r}"
    assert len(collisions) == len(labels) - len({dns_label(n) for n in labels}), collisions


@given(st.lists(st.text(alphabet="aAbB-_.", max_size=6), max_size=8), st.randoms())
def test_dns_labels_do_not_depend_on_input_order(names, rnd):
    shuffled = list(names)
    rnd.shuffle(shuffled)
    assert dns_labels(names) == dns_labels(shuffled)
