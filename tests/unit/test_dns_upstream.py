"""Which upstream resolvers the sidecar forwards to (bridge.dns.upstream), without sockets.

The forwarder itself is exercised over real sockets in
tests/integration/test_dns_forwarding.py.
"""

from __future__ import annotations

import pytest

from bridge.dns.packet import question_end
from bridge.dns.upstream import (
    is_self,
    nameservers,
    parse_upstream,
    read_resolv_conf,
    upstreams_from,
)

RESOLV_CONF = """\
# generated
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 127.0.0.1
nameserver 10.96.0.10   # kube-dns
; nameserver 10.0.0.99
nameserver ::1
nameserver fd00::10
nameserver not-an-address
options ndots:5
"""


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1", ("10.0.0.1", 53)),
    ("10.0.0.1:5353", ("10.0.0.1", 5353)),
    ("[fd00::1]:5353", ("fd00::1", 5353)),
    ("[fd00::1]", ("fd00::1", 53)),
    ("fd00::1", ("fd00::1", 53)),
    (" 192.0.2.1 ", ("192.0.2.1", 53)),
])
def test_upstream_forms(text, expected):
    assert parse_upstream(text) == expected


@pytest.mark.parametrize("text", ["dns.google", "dns.google:53", "10.0.0.1:0", "10.0.0.1:70000",
                                  "", "[nope]:53"])
def test_bad_upstreams_are_refused_with_a_reason(text):
    with pytest.raises(ValueError, match="upstream"):
        parse_upstream(text)


def test_nameserver_lines_in_order_comments_and_junk_skipped():
    assert nameservers(RESOLV_CONF) == ["127.0.0.1", "10.96.0.10", "::1", "fd00::10"]


def test_configured_upstreams_win_over_resolv_conf():
    assert upstreams_from(["10.0.0.2:5300"], RESOLV_CONF, "0.0.0.0", 53) == (("10.0.0.2", 5300),)


def test_resolv_conf_minus_ourselves_on_a_wildcard_listener():
    assert upstreams_from([], RESOLV_CONF, "0.0.0.0", 53) == (("10.96.0.10", 53),
                                                              ("fd00::10", 53))
    assert upstreams_from([], RESOLV_CONF, "::", 53) == (("10.96.0.10", 53), ("fd00::10", 53))


def test_resolv_conf_kept_whole_when_we_are_on_another_port():
    assert upstreams_from([], RESOLV_CONF, "0.0.0.0", 5353) == (
        ("127.0.0.1", 53), ("10.96.0.10", 53), ("::1", 53), ("fd00::10", 53))


def test_specific_listen_address_excludes_itself_only():
    assert upstreams_from([], "nameserver 10.96.0.10\nnameserver 10.0.0.5\n", "10.0.0.5", 53) \
        == (("10.96.0.10", 53),)
    # A loopback listener: any loopback resolver at our port would be us (127.0.0.x).
    assert upstreams_from([], "nameserver 127.0.0.53\nnameserver 10.96.0.10\n", "127.0.0.1", 53) \
        == (("10.96.0.10", 53),)
    # A specific non-loopback listener cannot be reached on 127.0.0.53.
    assert upstreams_from([], "nameserver 127.0.0.53\n", "10.0.0.5", 53) == (("127.0.0.53", 53),)


def test_no_resolv_conf_means_no_upstream():
    assert upstreams_from([], None, "0.0.0.0", 53) == ()
    assert upstreams_from([], "", "0.0.0.0", 53) == ()
    assert upstreams_from([], "nameserver 127.0.0.1\n", "0.0.0.0", 53) == ()


def test_is_self():
    assert is_self("127.0.0.1", 53, "", 53)
    assert is_self("0.0.0.0", 53, "0.0.0.0", 53)
    assert not is_self("10.0.0.1", 53, "0.0.0.0", 53)
    assert is_self("10.0.0.1", 53, "10.0.0.1", 53)
    assert not is_self("10.0.0.1", 53, "10.0.0.1", 5353)


def test_read_resolv_conf_missing_file_is_none(tmp_path):
    assert read_resolv_conf(str(tmp_path / "absent")) is None
    assert read_resolv_conf("") is None
    path = tmp_path / "resolv.conf"
    path.write_text(RESOLV_CONF)
    assert read_resolv_conf(str(path)) == RESOLV_CONF


def test_question_end():
    packet = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x03www\x00" + b"\x00\x01\x00\x01"
    assert question_end(packet) == len(packet)
    assert question_end(packet[:-1]) == 0, "cut short"
    assert question_end(packet[:12] + b"\xc0\x0c\x00\x01\x00\x01") == 0, "compressed"


def test_a_wildcard_listener_is_every_address_of_the_host():
    local = {"10.1.2.3"}.__contains__  # this host's interface address, as a probe says
    text = "nameserver 10.1.2.3\nnameserver 10.96.0.10\n"
    assert upstreams_from([], text, "0.0.0.0", 53, local) == (("10.96.0.10", 53),)
    assert upstreams_from([], text, "10.9.9.9", 53, local) == (("10.1.2.3", 53),
                                                               ("10.96.0.10", 53)), \
        "a specific listen address is only itself"
