"""The sidecar of deploy/sidecar against a Consul with default-deny ACLs, with a token made from
exactly deploy/consul/sidecar-policy.hcl.

The policies and tokens are made through Consul's ACL endpoints with the management token. A
central bridge of the sidecar's cluster (its cluster id, its node) registers its Services with
the central policy's token; the sidecar then runs as its container would (args, environment,
ConfigMap settings; the token from the Secret the manifest names), with no Kubernetes access,
and answers those Services and Consul's own from what that token may read.
"""

from __future__ import annotations

from pathlib import Path

from bridge.testing.kube import KubeAPIServer
from tests.conftest import eventually
from tests.e2e import container
from tests.e2e.test_consul_secure_acl import DEMO, DEPLOY, MASTER, ROOT, central_rules, token_for
from tests.e2e.test_purge import start_bridge
from tests.e2e.test_sidecar import dig, readyz
from tests.integration import conftest_consul
from tests.integration.dns_upstream import UpstreamServer
from tests.unit.test_deploy_manifests import one, render, running

PHP_APACHE_PODS = {"10.28.5.15", "10.28.3.13"}
BILLING_VMS = {"192.0.2.21", "192.0.2.22"}


def test_the_sidecar_reads_and_answers_with_exactly_the_sidecar_policy(tmp_path: Path) -> None:
    sidecar_objects = render("sidecar")
    deployment = one(sidecar_objects, "Deployment")
    cluster_id = running(sidecar_objects, deployment, tmp_path).settings.cluster_id
    [token_ref] = [e["valueFrom"]["secretKeyRef"] for e in container.bridge_container(
        container.pod_spec(deployment))["env"] if e["name"] == "CONSUL_HTTP_TOKEN"]
    with conftest_consul.fake_consul(acl_master_token=MASTER) as server, KubeAPIServer() as kube:
        server.load(DEMO / "consul.yaml")
        kube.load_manifests(DEMO / "kubernetes.yaml")
        consul = conftest_consul.fake_target(server)
        central = token_for(consul, f"bridge-central-{cluster_id}", central_rules(cluster_id))
        sidecar_token = token_for(consul, "bridge-sidecar", (DEPLOY / "sidecar-policy.hcl").read_text())

        writer = start_bridge(server.url, kube.write_kubeconfig(tmp_path / "kubeconfig"), cluster_id,
                              to_k8s=False, token=central["SecretID"])
        with writer:
            def registered() -> bool:
                view = consul.http("GET", f"/v1/catalog/node/k8s-sync-{cluster_id}", headers=ROOT).json()
                return bool(view) and {s["Service"] for s in view["Services"].values()} == {"php-apache-svc"}

            eventually(registered, 30, "the central bridge registered php-apache-svc")
            assert writer.stop() == 0, writer.stderr[-3000:]

        with UpstreamServer() as upstream:
            proc = container.start(
                sidecar_objects, deployment, tmp_path / "sidecar",
                settings={"dns.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0",
                          "dns.upstreams": [upstream.address]},
                env={"CONSUL_HTTP_ADDR": server.url},
                secrets={(token_ref["name"], token_ref["key"]): sidecar_token["SecretID"]})
            with proc:
                port = int(proc.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
                url = "http://" + proc.expect(r"http listening on (\S+) ").group(1)
                eventually(lambda: readyz(url) == (200, "ready\n"), 30, "the sidecar ready")
                eventually(lambda: set(dig(port, "php-apache-svc.default.svc.cluster.local", "A")) == PHP_APACHE_PODS,
                           30, "the central bridge's registrations answered under their cluster.local name")
                assert set(dig(port, "billing.consul.svc.cluster.local", "A")) == BILLING_VMS
                assert set(dig(port, "billing.service.consul", "A")) == BILLING_VMS
                assert proc.stop() == 0
    log = proc.stderr
    assert "refused" not in log and "Permission denied" not in log, log[-3000:]
    assert sidecar_token["SecretID"] not in log
