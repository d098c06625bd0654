"""Decoding kubectl's protobuf request bodies (Namespace and Service only; pure)."""

import pytest

from bridge.testing.kube.protobuf import MAGIC, ProtobufError, decode


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def envelope(kind: str, raw: bytes) -> bytes:
    type_meta = field(1, "v1") + field(2, kind)
    return MAGIC + field(1, type_meta) + field(2, raw)


def test_decodes_a_nodeport_service_like_kubectl_create_sends_it():
    meta = field(1, "np") + field(2, "") + field(11, field(1, "app") + field(2, "np"))
    port = (
        field(1, "80-8080")
        + field(2, "TCP")
        + field(3, 80)
        + field(4, field(1, 0) + field(2, 8080) + field(3, ""))
        + field(5, 30123)
    )
    named = field(1, "web") + field(3, 443) + field(4, field(1, 1) + field(2, 0) + field(3, "https"))
    spec = (
        field(1, port)
        + field(1, named)
        + field(2, field(1, "app") + field(2, "np"))
        + field(3, "")
        + field(4, "NodePort")
        + field(13, 0)
        + field(20, 0)
    )
    assert decode(envelope("Service", field(1, meta) + field(2, spec) + field(3, b""))) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "np", "labels": {"app": "np"}},
        "spec": {
            "ports": [
                {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30123},
                {"name": "web", "port": 443, "targetPort": "https"},
            ],
            "selector": {"app": "np"},
            "type": "NodePort",
            "allocateLoadBalancerNodePorts": False,  # a Go pointer: false is meaningful
        },
    }


def test_decodes_a_namespace():
    raw = field(1, field(1, "team")) + field(2, b"") + field(3, b"")
    # Empty nested messages read as absent, like other zero values; the server defaults them.
    assert decode(envelope("Namespace", raw)) == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}


@pytest.mark.parametrize(
    "body",
    [b"{}", MAGIC + field(1, field(1, "v1") + field(2, "Pod")) + field(2, b""), MAGIC + b"\x0a\xff"],
    ids=["json", "unsupported-kind", "truncated"],
)
def test_refuses_what_it_cannot_decode(body):
    with pytest.raises(ProtobufError):
        decode(body)
