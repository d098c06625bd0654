"""`bridge fake-consul` and `bridge run` as production runs Consul: TLS with client certificates.

The test servers and the bridge run as subprocesses, as a user would start them.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import consul as pyconsul
import pytest

from tests.conftest import eventually
from tests.e2e.proc import Proc


def _consul_with_tls(tmp_path, *extra: str) -> tuple[Proc, str]:
    proc = Proc("fake-consul", "--listen", "127.0.0.1:0", "--tls", "--verify-incoming",
                "--write-tls", str(tmp_path / "tls"), *extra)
    proc.expect("client-key.pem written to")
    url = proc.expect(r"fake-consul listening on (https://\S+)").group(1)
    return proc, url


def test_fake_consul_writes_a_ca_and_client_pair_that_py_consul_uses(tmp_path):
    proc, url = _consul_with_tls(tmp_path)
    with proc:
        tls = tmp_path / "tls"
        host, port = url.removeprefix("https://").rsplit(":", 1)
        client = pyconsul.Consul(host=host, port=int(port), scheme="https", verify=str(tls / "ca.pem"),
                                 cert=(str(tls / "client.pem"), str(tls / "client-key.pem")))
        assert client.catalog.register("vm-1", "192.0.2.1", service={"Service": "billing"})
        assert "billing" in client.catalog.services()[1]
    assert proc.stop() == 0


@pytest.mark.parametrize("flag", [["--verify-incoming"], ["--write-tls", "x"], ["--tls-name", "a"]])
def test_tls_flags_without_tls_exit_2_naming_the_flag(flag):
    with Proc("fake-consul", "--listen", "127.0.0.1:0", *flag) as proc:
        code = proc.p.wait(timeout=30)
    assert code == 2
    assert f"invalid setting {flag[0]}=" in proc.stderr and "needs --tls" in proc.stderr


DEMO_SERVICES = Path(__file__).resolve().parents[2] / "bridge" / "demo" / "kubernetes.yaml"


@pytest.fixture
def kube(tmp_path):
    proc = Proc("fake-k8s", "--listen", "127.0.0.1:0", "--load", str(DEMO_SERVICES),
                "--write-kubeconfig", str(tmp_path / "kubeconfig"))
    proc.expect("fake-k8s listening")
    try:
        yield tmp_path / "kubeconfig"
    finally:
        proc.stop()


def _consul_client(url: str, tls: Path) -> pyconsul.Consul:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return pyconsul.Consul(host=host, port=int(port), scheme="https", verify=str(tls / "ca.pem"),
                           cert=(str(tls / "client.pem"), str(tls / "client-key.pem")))


def _run_bridge(kubeconfig: Path, consul_url: str, env: dict[str, str]) -> tuple[Proc, int]:
    run = Proc("run", "--kubeconfig", str(kubeconfig), "--consul-addr", consul_url, "--cluster-id", "east",
               "--dns-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", env=env)
    port = int(run.expect(r"http listening on 127\.0\.0\.1:(\d+)").group(1))
    return run, port


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_bridge_syncs_over_mutual_tls(tmp_path, kube):
    consul, url = _consul_with_tls(tmp_path)
    tls = tmp_path / "tls"
    env = {"CONSUL_CACERT": str(tls / "ca.pem"), "CONSUL_CLIENT_CERT": str(tls / "client.pem"),
           "CONSUL_CLIENT_KEY": str(tls / "client-key.pem")}
    with consul:
        run, port = _run_bridge(kube, url, env)
        with run:
            client = _consul_client(url, tls)
            eventually(lambda: "php-apache-svc" in client.catalog.services()[1], 30,
                       "php-apache-svc registered in Consul over mutual TLS")
            eventually(lambda: _readyz(port)[0] == 200, 30, "/readyz 200")
            assert run.stop() == 0
        assert "Traceback" not in run.stderr, run.stderr


def test_bridge_without_client_certificate_says_so_once_and_is_not_ready(tmp_path, kube):
    consul, url = _consul_with_tls(tmp_path)
    tls = tmp_path / "tls"
    with consul:
        run, port = _run_bridge(kube, url, {"CONSUL_CACERT": str(tls / "ca.pem")})
        with run:
            eventually(lambda: "sent no client certificate" in run.stderr, 30, "the TLS refusal logged")
            # Stopped only once the Kubernetes side has listed: a reflector still connecting
            # when the process exits can abort the interpreter (a daemon thread in connect()).
            eventually(lambda: "kubernetes list" not in _readyz(port)[1], 30, "the Kubernetes side listed")
            status, body = _readyz(port)
            assert status == 503, body
            assert "consul list" in body, body
            assert run.stop() == 0, run.stderr[-5000:]
        # The loops retried all along (a certificate may be mounted); the reason was logged once.
        lines = [line for line in run.stderr.splitlines() if "client certificate" in line]
        assert len(lines) == 1, run.stderr
        assert "CONSUL_CLIENT_CERT" in lines[0] and "consul.client_key" in lines[0], lines[0]
        assert "Traceback" not in run.stderr
