"""`bridge run` against a Consul with default-deny ACLs and exactly the policies deploy/consul/ ships.

The policies and tokens are made through Consul's own endpoints with the management token,
as the README's Consul security section does with the consul CLI. The central bridge syncs
with the central policy, a sidecar answers from Consul with the sidecar policy, and a
central policy that lacks one rule gets Consul's denial logged, and nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from bridge.testing.kube import KubeAPIServer
from tests.conftest import eventually
from tests.e2e.proc import Proc
from tests.integration import conftest_consul
from tests.integration import test_fake_consul_acl_login as setup
from tests.integration.conftest_consul import ConsulTarget

ROOT_DIR = Path(__file__).resolve().parents[2]
DEPLOY = ROOT_DIR / "deploy" / "consul"
DEMO = ROOT_DIR / "bridge" / "demo"
MASTER = "5b7e6c1d-0f3a-4e2b-9a8c-7d6e5f4a3b21"
ROOT = {"X-Consul-Token": MASTER}
PHP_APACHE = "php-apache-svc.default.svc.cluster.local"


@pytest.fixture
def consul() -> Iterator[ConsulTarget]:
    with conftest_consul.fake_consul(acl_master_token=MASTER) as server:
        server.load(DEMO / "consul.yaml")
        yield conftest_consul.fake_target(server)


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    with KubeAPIServer() as kube:
        kube.load_manifests(DEMO / "kubernetes.yaml")
        yield kube.write_kubeconfig(tmp_path / "kubeconfig")


def token_for(consul: ConsulTarget, name: str, rules: str) -> dict:
    policy = consul.http("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules}, headers=ROOT)
    assert policy.status == 200, policy.text
    token = consul.http("PUT", "/v1/acl/token", {"Policies": [{"Name": name}]}, headers=ROOT)
    assert token.status == 200, token.text
    return token.json()


def central_rules(cluster_id: str = "east") -> str:
    return (DEPLOY / "central-policy.hcl").read_text().replace("CLUSTER_ID", cluster_id)


def run_bridge(kubeconfig: Path, consul: ConsulTarget, secret: str, *, reader: bool = False) -> tuple[Proc, int]:
    """`bridge run` as the central bridge of cluster east, or (`reader`) as a bridge of
    cluster west that only reads Consul, with the sidecar's sync settings."""
    assert consul.fake is not None
    # The reader is another cluster's: a bridge never answers back what its own cluster wrote.
    args = ["run", "--consul-addr", consul.fake.url, "--cluster-id", "west" if reader else "east",
            "--dns-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0", "--kubeconfig", str(kubeconfig)]
    env = {"CONSUL_HTTP_TOKEN": secret, "BRIDGE_DNS_WORKERS": "0"}
    if reader:
        env.update(BRIDGE_SYNC_TO_CONSUL="false", BRIDGE_SYNC_TO_K8S="false")
    proc = Proc(*args, env=env)
    port = int(proc.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
    proc.expect("http listening")
    return proc, port


def registered(consul: ConsulTarget) -> set[str]:
    node = consul.http("GET", "/v1/catalog/node/k8s-sync-east", headers=ROOT).json()
    return {s["Service"] for s in (node or {}).get("Services", {}).values()}


def addresses(port: int, name: str) -> set[str]:
    answer = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), "127.0.0.1", port=port, timeout=2)
    return {item.address for rrset in answer.answer for item in rrset}


def test_central_syncs_and_sidecar_reads_with_the_shipped_policies(consul, kubeconfig, tmp_path) -> None:
    central = token_for(consul, "bridge-central-east", central_rules())
    sidecar = token_for(consul, "bridge-sidecar", (DEPLOY / "sidecar-policy.hcl").read_text())
    run, port = run_bridge(kubeconfig, consul, central["SecretID"])
    with run:
        eventually(lambda: "php-apache-svc" in registered(consul), 30, "registered by the central bridge")
        eventually(lambda: addresses(port, "billing.consul.svc.cluster.local") == {"192.0.2.21", "192.0.2.22"}, 30,
                   "the central bridge answering what it read from Consul")
        # The reader's own cluster is empty: what it answers can only come from Consul.
        with KubeAPIServer() as empty:
            reader, reader_port = run_bridge(empty.write_kubeconfig(tmp_path / "empty"), consul,
                                             sidecar["SecretID"], reader=True)
            with reader:
                eventually(lambda: addresses(reader_port, PHP_APACHE) == {"10.28.5.15", "10.28.3.13"}, 30,
                           "the reader answering the central bridge's registrations from Consul")
                assert reader.stop() == 0
        assert run.stop() == 0
    for proc in (run, reader):
        assert "refused" not in proc.stderr and "Permission denied" not in proc.stderr, proc.stderr


def test_a_missing_rule_is_reported_in_consuls_words_and_nothing_is_deleted(consul, kubeconfig) -> None:
    lacking = central_rules().replace('node "k8s-sync-east" {\n  policy = "write"\n}\n', "")
    assert lacking != central_rules(), "the node rule was not found in deploy/consul/central-policy.hcl"
    token = token_for(consul, "bridge-central-east", lacking)
    before = consul.http("GET", "/v1/catalog/services", headers=ROOT).json()
    run, _ = run_bridge(kubeconfig, consul, token["SecretID"])
    with run:
        denial = (f"Permission denied: token with AccessorID '{token['AccessorID']}' lacks permission "
                  f"'node:write' on \"k8s-sync-east\"")
        eventually(lambda: denial in run.stderr, 30, "Consul's denial in the log")
        assert run.stop() == 0
    assert consul.http("GET", "/v1/catalog/services", headers=ROOT).json() == before, "something was deleted"
    assert registered(consul) == set()
    lines = [line for line in run.stderr.splitlines() if "consul refused" in line]
    assert len(lines) == 1, run.stderr



SECOND_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: second-svc, namespace: default}
spec:
  clusterIP: None
  selector: {app: php-apache}
  ports: [{name: http, port: 80, targetPort: 80, protocol: TCP}]
"""


def login_tokens(consul: ConsulTarget) -> list[str]:
    tokens = consul.http("GET", "/v1/acl/tokens?authmethod=bridge-kubernetes", headers=ROOT).json()
    return [t["AccessorID"] for t in tokens]


def test_bridge_logs_in_with_its_service_account_and_replaces_a_deleted_token(consul, tmp_path) -> None:
    with KubeAPIServer(tls=True) as kube:
        kube.load_manifests([DEMO / "kubernetes.yaml", setup.NAMESPACE, DEPLOY / "auth-method-rbac.yaml"])
        bearer = kube.write_service_account(tmp_path / "serviceaccount", "bridge", "bridge") / "token"
        consul.http("PUT", "/v1/acl/policy", {"Name": "bridge-central-east", "Rules": central_rules()}, headers=ROOT)
        assert consul.http("PUT", "/v1/acl/auth-method", setup.auth_method(kube), headers=ROOT).status == 200
        rule = (DEPLOY / "binding-rule-central.json").read_text().replace("CLUSTER_ID", "east")
        assert consul.http("PUT", "/v1/acl/binding-rule", rule, headers=ROOT).status == 200
        assert consul.fake is not None
        run = Proc("run", "--consul-addr", consul.fake.url, "--cluster-id", "east", "--kubeconfig",
                   str(kube.write_kubeconfig(tmp_path / "kubeconfig")), "--dns-listen", "127.0.0.1:0",
                   "--http-listen", "127.0.0.1:0",
                   env={"BRIDGE_CONSUL_AUTH_METHOD": "bridge-kubernetes", "BRIDGE_DNS_WORKERS": "0",
                        "BRIDGE_CONSUL_LOGIN_BEARER_TOKEN_FILE": str(bearer)})
        with run:
            eventually(lambda: "php-apache-svc" in registered(consul), 30, "registered with the login's token")
            [first] = login_tokens(consul)
            assert consul.http("DELETE", f"/v1/acl/token/{first}", headers=ROOT).status == 200
            kube.load_manifests(SECOND_SERVICE)
            eventually(lambda: "second-svc" in registered(consul), 30, "a write after the token was deleted")
            assert login_tokens(consul) not in ([], [first]), "no new login replaced the deleted token"
            assert run.stop() == 0
        assert f"consul no longer knows the login token {first}" in run.stderr, run.stderr
        assert bearer.read_text().strip() not in run.stderr
