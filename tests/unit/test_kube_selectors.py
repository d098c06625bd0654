"""Label and field selector grammar of the fake kube-apiserver (pure, no sockets)."""

import pytest

from bridge.testing.kube.selectors import (
    SelectorError,
    object_fields,
    parse_field_selector,
    parse_label_selector,
    selector_from_map,
    supported_fields,
)

LABELS = {"app": "web", "tier": "front", "kubernetes.io/service-name": "web", "rank": "7", "empty": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("missing!=x", True),  # != matches objects without the label
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app in (web,db)", True),
        ("app in (db)", False),
        ("app notin (db,cache)", True),
        ("missing notin (db)", True),
        ("app notin (web)", False),
        ("app=web,tier=front", True),
        ("app=web,tier=back", False),
        ("kubernetes.io/service-name=web", True),
        ("  app = web ,  tier in ( front , back )  ", True),
        ("empty=", True),
        ("empty in (a,)", True),  # a trailing comma in a set stands for the empty value
        ("rank>5", True),
        ("rank<5", False),
        ("app>5", False),  # a non-integer label never satisfies gt/lt
    ],
)
def test_label_selector_matches_like_apimachinery(text, expected):
    selector = parse_label_selector(text)
    assert selector.matches(LABELS) is expected, f"{text!r} should {'' if expected else 'not '}match"


@pytest.mark.parametrize(
    "text",
    [
        "app=",
        "app in ()",
        "=web",
        "app in web",
        "app=web,",
        "!app=web",
        "app=(x)",
        "bad key=x",
        "-bad=x",
        "app=" + "v" * 64,
        "rank>x",
        "app in (a b)",
    ],
)
def test_label_selector_rejects_malformed_text(text):
    if text == "app=":
        # An empty value is legal; keep it here as the contrast case.
        assert parse_label_selector(text).matches({"app": ""})
        return
    with pytest.raises(SelectorError):
        parse_label_selector(text)


def test_label_selector_on_object_without_labels():
    assert parse_label_selector("app!=web").matches(None)
    assert not parse_label_selector("app=web").matches(None)


def test_selector_from_service_map_requires_every_pair():
    selector = selector_from_map({"app": "web", "tier": "front"})
    assert selector.matches(LABELS)
    assert not selector.matches({"app": "web"})


@pytest.mark.parametrize(
    ("text", "fields", "expected"),
    [
        ("metadata.name=web", {"metadata.name": "web"}, True),
        ("metadata.name==web", {"metadata.name": "web"}, True),
        ("metadata.name!=web", {"metadata.name": "web"}, False),
        (
            "metadata.name=web,metadata.namespace=default",
            {"metadata.name": "web", "metadata.namespace": "default"},
            True,
        ),
        (
            "metadata.name=web,metadata.namespace=other",
            {"metadata.name": "web", "metadata.namespace": "default"},
            False,
        ),
        (r"metadata.name=a\,b", {"metadata.name": "a,b"}, True),
        ("", {"metadata.name": "x"}, True),
    ],
)
def test_field_selector(text, fields, expected):
    assert parse_field_selector(text, supported_fields("services")).matches(fields) is expected


def test_field_selector_rejects_unsupported_fields_per_resource():
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.nodeName"):
        parse_field_selector("spec.nodeName=n1", supported_fields("services"))
    assert parse_field_selector("spec.nodeName=n1", supported_fields("pods")).terms


def test_field_selector_rejects_terms_without_operator():
    with pytest.raises(SelectorError):
        parse_field_selector("metadata.name", supported_fields("pods"))


def test_object_fields_for_pods_include_node_and_phase():
    pod = {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }
    fields = object_fields("pods", pod)
    assert fields["spec.nodeName"] == "n1"
    assert fields["status.phase"] == "Running"
    assert fields["metadata.namespace"] == "ns"
