"""The sidecar of deploy/sidecar against a Consul with default-deny ACLs, with a token made from
exactly deploy/consul/sidecar-policy.hcl.

The policies and tokens are made through Consul's ACL endpoints with the management token. A
central bridge of the sidecar's cluster (its cluster id, its node) registers its Services with
the central policy's token; the sidecar then runs as its container would (args, environment,
ConfigMap settings; the token from the Secret the manifest names), with no Kubernetes access,
and answers those Services and Consul's own from what that token may read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


SIDECAR_POLICY = (DEPLOY / "sidecar-policy.hcl").read_text()


@contextlib.contextmanager
def sidecar_after_central(tmp_path: Path, sidecar_rules: str) -> Iterator[tuple[Any, int, str, str]]:
    """A central bridge of the sidecar's cluster registers the demo's Services (central
    policy), then the sidecar of deploy/sidecar runs with a token of `sidecar_rules`:
    yields (its process, DNS port, HTTP URL, its token)."""
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
        sidecar_token = token_for(consul, "bridge-sidecar", sidecar_rules)

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
                yield proc, port, url, sidecar_token["SecretID"]
                assert proc.stop() == 0


def test_the_sidecar_reads_and_answers_with_exactly_the_sidecar_policy(tmp_path: Path) -> None:
    with sidecar_after_central(tmp_path, SIDECAR_POLICY) as (proc, port, url, secret):
        eventually(lambda: readyz(url) == (200, "ready\n"), 30, "the sidecar ready")
        eventually(lambda: set(dig(port, "php-apache-svc.default.svc.cluster.local", "A")) == PHP_APACHE_PODS,
                   30, "the central bridge's registrations answered under their cluster.local name")
        assert set(dig(port, "billing.consul.svc.cluster.local", "A")) == BILLING_VMS
        assert set(dig(port, "billing.service.consul", "A")) == BILLING_VMS
    log = proc.stderr
    assert "refused" not in log and "Permission denied" not in log, log[-3000:]
    assert secret not in log


def without_block(rules: str, opening: str) -> str:
    """`rules` without the block that starts with `opening` (through its closing brace)."""
    start = rules.index(opening)
    end = rules.index("}", start) + 1
    return rules[:start] + rules[end:]


@pytest.mark.parametrize("missing", ['service_prefix ""', 'node_prefix ""'])
def test_a_sidecar_token_missing_a_read_rule_is_reported_not_silently_empty(tmp_path: Path, missing: str) -> None:
    # Consul does not refuse reads a token may only partly see: it filters the results and
    # sets X-Consul-Results-Filtered-By-ACLs (agent/http.go setResultsFilteredByACLs). The
    # sidecar must not pass for ready while answering nothing.
    rules = without_block(SIDECAR_POLICY, missing)
    assert missing not in rules
    with sidecar_after_central(tmp_path, rules) as (proc, _port, url, secret):
        def reported() -> bool:
            status, body = readyz(url)
            return status == 503 and "results hidden by ACLs" in body

        eventually(reported, 30, f"/readyz 503 naming the ACL-filtered reads (rule {missing} missing)")
        _, body = readyz(url)
        assert 'service_prefix "" read and node_prefix "" read' in body, body
    lines = [line for line in proc.stderr.splitlines() if "results hidden by ACLs" in line]
    assert len(lines) == 1, f"one log line for the filtered reads, got {len(lines)}: {lines}"
    assert secret not in proc.stderr
