"""The bridge's Consul client over TLS: the CA, a client certificate, and tls_server_name.

A refused handshake is a `Denied` error whose text names the setting that fixes it,
logged once however often the loops retry, and held in `problems()` for readiness.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge import config
from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.errors import ConfigError, Denied
from tests.integration import conftest_consul


def _settings(url: str, files: Path, *, cert: bool = True, **kwargs) -> ConsulSettings:
    extra = {"client_cert": str(files / "client.pem"), "client_key": str(files / "client-key.pem")} if cert else {}
    return ConsulSettings(address=url, ca_cert=str(files / "ca.pem"), wait=2, **extra, **kwargs)


@pytest.fixture
def mtls(tmp_path: Path):
    with conftest_consul.fake_consul(tls=True, verify_incoming=True) as server:
        server.tls.write(tmp_path)
        yield server, tmp_path


def test_client_with_ca_and_certificate_reads_and_writes(mtls) -> None:
    server, files = mtls
    client = ConsulClient(_settings(server.url, files))
    try:
        client.txn([{"Node": {"Verb": "set", "Node": {"Node": "k8s-sync-east", "Address": "127.0.0.1"}}}])
        assert client.node_services("k8s-sync-east") is not None
        _, services = client.services(None)
        assert "consul" in services
        assert client.problems() == []
    finally:
        client.close()


def test_without_client_certificate_every_call_is_denied_and_logged_once(mtls, caplog) -> None:
    server, files = mtls
    client = ConsulClient(_settings(server.url, files, cert=False))
    caplog.set_level(logging.INFO, logger="bridge.consul")
    try:
        for _ in range(3):
            with pytest.raises(Denied, match=r"sent no client certificate; set consul\.client_cert"):
                client.services(None)
        with pytest.raises(Denied, match="CONSUL_CLIENT_CERT"):
            client.txn([])
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1, refusals
        assert client.problems() == [refusals[0]], "readiness must say why Consul is unreachable"
    finally:
        client.close()
    assert server.requests.records() == []


def test_an_untrusted_server_certificate_names_the_ca_setting(mtls) -> None:
    server, files = mtls
    settings = ConsulSettings(address=server.url, client_cert=str(files / "client.pem"),
                              client_key=str(files / "client-key.pem"))
    client = ConsulClient(settings)
    try:
        with pytest.raises(Denied, match=r"not trusted \(certificate verify failed.*consul.ca_cert \(CONSUL_CACERT\)"):
            client.services(None)
    finally:
        client.close()


def test_tls_server_name_checks_the_certificate_against_that_name(tmp_path: Path) -> None:
    with conftest_consul.fake_consul(tls=True, verify_incoming=True, tls_names=["server.dc1.consul"]) as server:
        server.tls.write(tmp_path)
        plain = ConsulClient(_settings(server.url, tmp_path))
        named = ConsulClient(_settings(server.url, tmp_path, tls_server_name="server.dc1.consul"))
        wrong = ConsulClient(_settings(server.url, tmp_path, tls_server_name="server.dc2.consul"))
        try:
            with pytest.raises(Denied, match=r"does not name the address.*consul\.tls_server_name"):
                plain.services(None)
            _, services = named.services(None)
            assert "consul" in services
            with pytest.raises(Denied, match=r"hostname .server\.dc2\.consul. doesn.t match"):
                wrong.services(None)
        finally:
            for client in (plain, named, wrong):
                client.close()


def test_tls_settings_come_from_the_consul_cli_variables() -> None:
    settings = config.build(environ={"CONSUL_HTTP_ADDR": "consul.example:8501", "CONSUL_HTTP_SSL": "true",
                                     "CONSUL_CACERT": "/ca.pem", "CONSUL_CLIENT_CERT": "/c.pem",
                                     "CONSUL_CLIENT_KEY": "/k.pem", "CONSUL_TLS_SERVER_NAME": "server.dc1.consul"})
    consul = settings.consul
    assert (consul.address, consul.ca_cert, consul.client_cert, consul.client_key, consul.tls_server_name) == (
        "https://consul.example:8501", "/ca.pem", "/c.pem", "/k.pem", "server.dc1.consul")


def test_a_client_key_without_its_certificate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"consul\.client_key.*needs consul\.client_cert"):
        config.build(environ={"CONSUL_CLIENT_KEY": "/k.pem"})
