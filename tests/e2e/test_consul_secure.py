"""`bridge fake-consul` and `bridge run` as production runs Consul: TLS with client certificates.

The test servers and the bridge run as subprocesses, as a user would start them.
"""

from __future__ import annotations

import consul as pyconsul
import pytest

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
