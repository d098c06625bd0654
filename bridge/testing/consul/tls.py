"""HTTPS for the fake agent: a CA made at start (trustme), the agent's certificate, one client certificate.

What `consul tls ca create` / `consul tls cert create -server|-client` give a real cluster:
the server certificate names `server.<dc>.consul`, `localhost` and the loopback addresses
(plus a specific listen address), the client certificate `client.<dc>.consul`, both signed
by one CA. With `verify_incoming` the agent requires a client certificate signed by that
CA, as Consul's `tls.defaults.verify_incoming`: without one the TLS handshake fails and no
HTTP request is read. `write(dir)` leaves `ca.pem`, `client.pem` and `client-key.pem`
where a client (`CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`) picks them up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

import trustme

# A client that connects and never speaks must not hold a connection thread for ever.
_HANDSHAKE_TIMEOUT = 10.0


def default_names(host: str, datacenter: str) -> list[str]:
    """The names `consul tls cert create -server` puts in an agent's certificate."""
    names = [f"server.{datacenter}.consul", "localhost", "127.0.0.1", "::1"]
    if host and host not in names and _is_specific(host):
        names.append(host)
    return names


class ConsulTLS:
    """The CA, the agent's serving certificate, and a client certificate, all in memory."""

    def __init__(self, names: Sequence[str], *, datacenter: str = "dc1", verify_incoming: bool = False) -> None:
        if not names:
            raise ValueError("the server certificate needs at least one name")
        self.names = tuple(names)
        self.verify_incoming = verify_incoming
        self._ca = trustme.CA(organization_name="fake-consul")
        self._server = self._ca.issue_cert(*self.names, common_name=f"server.{datacenter}.consul")
        self._client = self._ca.issue_cert(f"client.{datacenter}.consul", common_name=f"client.{datacenter}.consul")

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # Consul's default tls_min_version
        context.set_alpn_protocols(["http/1.1"])
        self._server.configure_cert(context)
        if self.verify_incoming:
            context.verify_mode = ssl.CERT_REQUIRED
            self._ca.configure_trust(context)
        return context

    def write(self, directory: str | Path) -> Path:
        """Write `ca.pem`, `client.pem` and `client-key.pem` (mode 0600) into `directory`."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        (target / "ca.pem").write_bytes(self.ca_pem)
        (target / "client.pem").write_bytes(b"".join(blob.bytes() for blob in self._client.cert_chain_pems))
        key = target / "client-key.pem"
        key.touch(mode=0o600)
        key.write_bytes(self._client.private_key_pem.bytes())
        return target


def handshake(context: ssl.SSLContext, raw: socket.socket) -> ssl.SSLSocket:
    """The server side of the TLS handshake on an accepted socket; raises OSError if it fails."""
    wrapped = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    wrapped.settimeout(_HANDSHAKE_TIMEOUT)
    try:
        wrapped.do_handshake()
    except OSError:
        with contextlib.suppress(OSError):
            wrapped.close()
        raise
    wrapped.settimeout(None)
    return wrapped


def _is_specific(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return True  # a host name
