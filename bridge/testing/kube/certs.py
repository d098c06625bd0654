"""The serving certificate of a TLS fake: a CA made at start (trustme) and a leaf for the API server.

The leaf names what a cluster's apiserver certificate names (`kubernetes`,
`kubernetes.default.svc.cluster.local`, ...) plus the loopback names clients here dial,
so kubectl, the official client and kubelet-style `ca.crt` consumers verify it as they would
a real one. ALPN offers only HTTP/1.1: the server speaks nothing else, and Go clients
(kubectl) would otherwise try HTTP/2.
"""

from __future__ import annotations

import ipaddress
import ssl

import trustme

_NAMES = (
    "127.0.0.1",
    "::1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


class ServingCA:
    """A throwaway CA and the API server's certificate signed by it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._ca = trustme.CA(organization_name="fake-kube")
        names = list(_NAMES)
        if host and host not in names and _is_specific_address(host):
            names.append(host)
        self._leaf = self._ca.issue_cert(*names, common_name="kube-apiserver")

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate in PEM, what kubeconfigs and `ca.crt` carry."""
        return self._ca.cert_pem.bytes()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        self._leaf.configure_cert(context)
        return context


def _is_specific_address(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return True  # a host name
