"""The CLI's contract: clean config errors, masked secrets, server commands on port 0."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.conftest import eventually
from tests.e2e.proc import BRIDGE, Proc


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BRIDGE, *args], capture_output=True, text=True, timeout=30,
                          env=env)


@pytest.mark.parametrize(
    ("content", "key", "value"),
    [("dns:\n  ttl: lots\n", "dns.ttl", "lots"),
     ("dns:\n  listen: nowhere\n", "dns.listen", "nowhere"),
     ("consul:\n  adress: http://x:1\n", "consul.adress", "http://x:1")],
)
def test_bad_config_exits_nonzero_with_one_line(tmp_path, content, key, value):
    path = tmp_path / "bridge.yaml"
    path.write_text(content)
    for command in ("run", "check-config"):
        result = _run(command, "--config", str(path))
        assert result.returncode == 2, (command, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line, got: {result.stderr!r}"
        assert key in lines[0] and value in lines[0], lines[0]
        assert "Traceback" not in result.stderr


def test_bad_flag_value_is_named():
    result = _run("run", "--dns-listen", "localhost")
    assert result.returncode == 2
    assert "dns.listen" in result.stderr and "localhost" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_masks_the_token():
    result = _run("check-config", "--cluster-id", "east",
                  env={"PATH": "/usr/bin:/bin", "CONSUL_HTTP_TOKEN": "tok-123456789"})
    assert result.returncode == 0, result.stderr
    assert "tok-123456789" not in result.stdout + result.stderr
    assert "cluster_id: east" in result.stdout
    assert "token: '********'" in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("command", ["fake-k8s", "fake-consul"])
def test_server_commands_print_bound_address_and_exit_zero(command, sig, tmp_path):
    args = [command, "--listen", "127.0.0.1:0"]
    if command == "fake-k8s":
        args += ["--write-kubeconfig", str(tmp_path / "kubeconfig")]
    proc = Proc(*args)
    match = proc.expect(rf"{command} listening on http://127\.0\.0\.1:(\d+)")
    assert int(match.group(1)) > 0
    assert proc.stop(sig) == 0


def test_run_prints_bound_addresses_and_exits_zero(tmp_path):
    fake = Proc("fake-k8s", "--listen", "127.0.0.1:0", "--write-kubeconfig",
                str(tmp_path / "kubeconfig"))
    consul = Proc("fake-consul", "--listen", "127.0.0.1:0")
    try:
        fake.expect("kubeconfig written")
        fake.expect("fake-k8s listening")
        consul_url = consul.expect(r"fake-consul listening on (\S+)").group(1)
        run = Proc("run", "--kubeconfig", str(tmp_path / "kubeconfig"), "--consul-addr",
                   consul_url, "--dns-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
        run.expect(r"dns listening on 127\.0\.0\.1:\d+")
        run.expect(r"http listening on 127\.0\.0\.1:\d+")
        assert run.stop() == 0
    finally:
        fake.stop()
        consul.stop()


def test_json_logs_and_no_token_in_them_while_apis_are_down(tmp_path):
    """With both APIs unreachable the bridge keeps retrying, logs JSON lines, never the token."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:9\n"
        "users:\n- name: u\n  user:\n    token: kube-secret-token\ncontexts:\n- name: x\n  context:\n"
        "    cluster: c\n    user: u\ncurrent-context: x\n")
    run = Proc("run", "--kubeconfig", str(kubeconfig), "--consul-addr", "http://127.0.0.1:9",
               "--dns-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log-format", "json",
               env={"CONSUL_HTTP_TOKEN": "consul-secret-token"})
    port = int(run.expect(r"http listening on 127\.0\.0\.1:(\d+)").group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert err.value.code == 503
    reason = err.value.read().decode()
    assert "kubernetes list" in reason and "consul list" in reason, reason
    eventually(lambda: run.stderr.strip(), what="a retry warning while the APIs are down")
    assert run.stop() == 0
    stderr = run.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "expected retry warnings while the APIs are down"
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    assert "consul-secret-token" not in stderr and "kube-secret-token" not in stderr
