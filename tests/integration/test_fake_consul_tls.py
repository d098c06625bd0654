"""The fake agent over HTTPS, with and without `verify_incoming`, as Consul's TLS settings make it.

A client verifies the agent's certificate against the CA the fake made at start; with
`verify_incoming` the agent also requires a client certificate signed by that CA, and
the TLS handshake fails without one, so no HTTP request is ever read.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import consul as pyconsul
import pytest
import requests
import trustme

from bridge.testing.consul import ConsulServer
from tests.integration import conftest_consul


@pytest.fixture
def mtls(tmp_path: Path):
    with conftest_consul.fake_consul(tls=True, verify_incoming=True) as server:
        assert server.tls is not None
        server.tls.write(tmp_path)
        yield server, tmp_path


def _client(server: ConsulServer, files: Path, **kwargs) -> pyconsul.Consul:
    host, port = server.address
    return pyconsul.Consul(host=host, port=port, scheme="https", verify=str(files / "ca.pem"), **kwargs)


def test_written_files_are_the_ca_and_a_client_pair(mtls) -> None:
    server, files = mtls
    assert sorted(p.name for p in files.iterdir()) == ["ca.pem", "client-key.pem", "client.pem"]
    assert (files / "ca.pem").read_bytes() == server.tls.ca_pem
    assert (files / "client-key.pem").stat().st_mode & 0o077 == 0, "the private key is readable by others"
    assert server.url.startswith("https://127.0.0.1:")


def test_py_consul_with_ca_and_client_certificate_registers_and_reads(mtls) -> None:
    server, files = mtls
    client = _client(server, files, cert=(str(files / "client.pem"), str(files / "client-key.pem")))
    assert client.catalog.register("n1", "10.0.0.1", service={"Service": "web", "Port": 80})
    _, nodes = client.catalog.service("web")
    assert [(n["Node"], n["ServicePort"]) for n in nodes] == [("n1", 80)]


def test_requests_with_client_certificate_is_served(mtls) -> None:
    server, files = mtls
    response = requests.get(f"{server.url}/v1/status/leader", verify=str(files / "ca.pem"),
                            cert=(str(files / "client.pem"), str(files / "client-key.pem")), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json().endswith(":8300")


def test_without_client_certificate_the_handshake_fails_and_nothing_is_served(mtls) -> None:
    server, files = mtls
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.url}/v1/status/leader", verify=str(files / "ca.pem"), timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        _client(server, files).catalog.services()
    assert server.requests.records() == [], "a request was read without a client certificate"


def test_a_client_certificate_from_another_ca_is_refused(mtls, tmp_path: Path) -> None:
    server, files = mtls
    stranger = trustme.CA().issue_cert("client.dc1.consul")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "stranger.pem"))
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.url}/v1/status/leader", verify=str(files / "ca.pem"),
                     cert=str(tmp_path / "stranger.pem"), timeout=10)


def test_the_agent_certificate_is_not_trusted_without_the_ca(mtls) -> None:
    server, files = mtls
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(f"{server.url}/v1/status/leader",
                     cert=(str(files / "client.pem"), str(files / "client-key.pem")), timeout=10)


def test_without_verify_incoming_no_client_certificate_is_needed(tmp_path: Path) -> None:
    with conftest_consul.fake_consul(tls=True) as server:
        server.tls.write(tmp_path)
        assert _client(server, tmp_path).status.leader().endswith(":8300")


def test_plain_http_to_the_https_port_gets_no_answer(mtls) -> None:
    server, _ = mtls
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url.replace("https://", "http://") + "/v1/status/leader", timeout=10)


def test_certificate_names_only_what_it_was_given(tmp_path: Path) -> None:
    with conftest_consul.fake_consul(tls=True, tls_names=["server.dc1.consul"]) as server:
        server.tls.write(tmp_path)
        with pytest.raises(requests.exceptions.SSLError, match=r"match|mismatch"):
            requests.get(f"{server.url}/v1/status/leader", verify=str(tmp_path / "ca.pem"), timeout=10)
        # What a client with tls_server_name does: check the name it was told, not the address.
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        host, port = server.address
        with socket.create_connection((host, port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="server.dc1.consul") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_tls_options_need_tls() -> None:
    with pytest.raises(ValueError, match="tls=True"):
        ConsulServer(verify_incoming=True)
