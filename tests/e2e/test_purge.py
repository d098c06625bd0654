"""`bridge purge` as a subprocess against the test servers, after real bridges wrote to them.

Two clusters share one Consul: east (with `sync.to_k8s`, so it also materialises Consul
services in its own Kubernetes) and its neighbour west, whose bridge keeps running. The
purge of east lists east's entries and changes nothing without `--yes`; with it, east's
node, registrations, claim and materialised objects are gone, and everything else (west's
entries, the services others registered, east's own Kubernetes Services) is as it was.
With default-deny ACLs it works with exactly the central policy, and a token that lacks a
rule is refused in one line, with nothing deleted.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.testing.kube import KubeAPIServer
from tests.conftest import eventually
from tests.e2e.proc import BRIDGE, Proc
from tests.e2e.test_consul_secure_acl import MASTER, ROOT, central_rules, token_for
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

DEMO = Path(__file__).resolve().parents[2] / "bridge" / "demo"
MANAGED = ("app.kubernetes.io/managed-by", "bridge")


def purge(consul_url: str, kubeconfig: Path, *args: str, cluster_id: str = "east",
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`bridge purge` of `cluster_id` with sync.to_k8s, as an operator runs it. The timeout
    is a deadline for a hung command only; a purge takes about a second."""
    return subprocess.run(
        [BRIDGE, "purge", "--consul-addr", consul_url, "--cluster-id", cluster_id,
         "--kubeconfig", str(kubeconfig), *args],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "BRIDGE_SYNC_TO_K8S": "true", **(env or {})})


def start_bridge(consul_url: str, kubeconfig: Path, cluster_id: str, *, to_k8s: bool,
                 token: str = "") -> Proc:
    env = {"BRIDGE_DNS_WORKERS": "0", "BRIDGE_SYNC_TO_K8S": "true" if to_k8s else "false"}
    if token:
        env["CONSUL_HTTP_TOKEN"] = token
    proc = Proc("run", "--consul-addr", consul_url, "--cluster-id", cluster_id, "--kubeconfig",
                str(kubeconfig), "--dns-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", env=env)
    proc.expect("http listening")
    return proc


def consul_world(consul: ConsulTarget) -> dict[str, Any]:
    """Everything Consul holds that a purge could touch: each node with its meta and service
    IDs, every KV key, every session."""
    nodes = {}
    for node in consul.http("GET", "/v1/catalog/nodes", headers=ROOT).json():
        view = consul.http("GET", f"/v1/catalog/node/{node['Node']}", headers=ROOT).json()
        nodes[node["Node"]] = (tuple(sorted((node.get("Meta") or {}).items())),
                               frozenset(view["Services"]))
    kv = consul.http("GET", "/v1/kv/?recurse", headers=ROOT)
    keys = {e["Key"]: e.get("Session", "") for e in kv.json()} if kv.status == 200 else {}
    sessions = {s["ID"] for s in consul.http("GET", "/v1/session/list", headers=ROOT).json()}
    return {"nodes": nodes, "keys": keys, "sessions": sessions}


def kube_world(kube: KubeAPIServer) -> set[tuple[str, str, str, bool]]:
    """Every Service and EndpointSlice, and whether the bridge's label is on it."""
    return {(plural, o["metadata"]["namespace"], o["metadata"]["name"],
             MANAGED in (o["metadata"].get("labels") or {}).items())
            for plural in ("services", "endpointslices") for o in kube.store.objects(plural)}


@dataclass
class World:
    consul: ConsulTarget
    url: str
    east_kube: KubeAPIServer
    east_kubeconfig: Path
    west_kubeconfig: Path


def registered(consul: ConsulTarget, node: str) -> set[str]:
    view = consul.http("GET", f"/v1/catalog/node/{node}", headers=ROOT).json()
    return set((view or {}).get("Services") or {})


def claim_free(consul: ConsulTarget, cluster_id: str) -> bool:
    entry = consul.http("GET", f"/v1/kv/bridge/clusters/{cluster_id}", headers=ROOT)
    return entry.status == 200 and not entry.json()[0].get("Session")


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    acl = getattr(request, "param", False)
    with conftest_consul.fake_consul(**({"acl_master_token": MASTER} if acl else {})) as server, \
            KubeAPIServer() as east, KubeAPIServer() as west:
        server.load(DEMO / "consul.yaml")
        east.load_manifests(DEMO / "kubernetes.yaml")
        # The neighbour runs the same workload: the same service names, on its own node.
        west.load_manifests(DEMO / "kubernetes.yaml")
        yield World(conftest_consul.fake_target(server), server.url, east,
                    east.write_kubeconfig(tmp_path / "east"), west.write_kubeconfig(tmp_path / "west"))


def test_purge_lists_without_yes_deletes_with_it_and_leaves_the_neighbour(world: World) -> None:
    consul = world.consul
    west = start_bridge(world.url, world.west_kubeconfig, "west", to_k8s=False)
    with west:
        east = start_bridge(world.url, world.east_kubeconfig, "east", to_k8s=True)
        with east:
            eventually(lambda: len(registered(consul, "k8s-sync-east")) == 2 and
                       len(registered(consul, "k8s-sync-west")) == 2, 30, "both clusters registered")
            eventually(lambda: {("services", "consul", "billing", True)} <= kube_world(world.east_kube), 30,
                       "east materialised billing")
            running = purge(world.url, world.east_kubeconfig, "--yes")
            assert running.returncode == 1, running
            assert running.stderr.count("\n") == 1 and "a bridge of cluster east is running" in running.stderr, \
                running.stderr
            assert len(registered(consul, "k8s-sync-east")) == 2, "a refused purge deleted something"
            assert east.stop() == 0
        eventually(lambda: claim_free(consul, "east"), 30, "east's claim released on stop")
        eventually(lambda: not claim_free(consul, "west"), 30, "west holds its claim")
        consul_before, kube_before = consul_world(consul), kube_world(world.east_kube)
        ours_before = {k for k in kube_before if k[3]}
        assert ours_before, "east materialised nothing"

        dry = purge(world.url, world.east_kubeconfig)
        assert dry.returncode == 0 and not dry.stderr, dry
        assert (consul_world(consul), kube_world(world.east_kube)) == (consul_before, kube_before), \
            "a purge without --yes changed something"
        lines = dry.stdout.splitlines()
        for sid in registered(consul, "k8s-sync-east"):
            listed = "would delete consul registration k8s-sync-east/" + sid
            assert any(line.startswith(listed) for line in lines), (listed, lines)
        for expected in ("would delete consul node k8s-sync-east", "would delete consul key bridge/clusters/east",
                         *(f"would delete kubernetes {p} {ns}/{name}" for p, ns, name, _ in ours_before)):
            assert expected in lines, (expected, lines)
        assert not [line for line in lines if "west" in line], "the neighbour's entries are not east's"
        assert lines[-1].startswith("cluster east: would delete consul: 2 registrations, 1 node, 1 key; "
                                    "kubernetes: "), lines[-1]

        done = purge(world.url, world.east_kubeconfig, "--yes")
        assert done.returncode == 0 and not done.stderr, done
        assert [line.replace("would delete", "deleted") for line in lines[:-1]] == done.stdout.splitlines()[:-1]
        after = consul_world(consul)
        assert after["nodes"] == {n: v for n, v in consul_before["nodes"].items() if n != "k8s-sync-east"}, \
            "east's node is gone, every other node (west's among them) holds what it held"
        assert after["keys"] == {k: v for k, v in consul_before["keys"].items() if k != "bridge/clusters/east"}
        assert after["keys"]["bridge/clusters/west"], "west's claim is still held by its running bridge"
        assert after["sessions"] == consul_before["sessions"]
        assert kube_world(world.east_kube) == kube_before - ours_before, \
            "the materialised objects are gone, east's own Services are not"

        again = purge(world.url, world.east_kubeconfig, "--yes")
        assert (again.returncode, again.stdout, again.stderr) == (0, "nothing to delete for cluster east\n", "")
        assert len(registered(consul, "k8s-sync-west")) == 2
        assert west.stop() == 0


@pytest.mark.parametrize("world", [True], indirect=True, ids=["acl"])
def test_purge_with_default_deny_acls_needs_only_the_central_policy(world: World) -> None:
    consul = world.consul
    token = token_for(consul, "bridge-central-east", central_rules("east"))
    east = start_bridge(world.url, world.east_kubeconfig, "east", to_k8s=True, token=token["SecretID"])
    with east:
        eventually(lambda: len(registered(consul, "k8s-sync-east")) == 2, 30, "east registered")
        assert east.stop() == 0
    eventually(lambda: claim_free(consul, "east"), 30, "east's claim released on stop")
    before = consul_world(consul)

    lacking = central_rules("east").replace('key "bridge/clusters/east" {\n  policy = "write"\n}\n', "")
    assert lacking != central_rules("east"), "the claim's rule was not found in deploy/consul/central-policy.hcl"
    short = token_for(consul, "lacking-the-claim", lacking)
    refused = purge(world.url, world.east_kubeconfig, "--yes", env={"CONSUL_HTTP_TOKEN": short["SecretID"]})
    assert refused.returncode == 1, refused
    assert refused.stderr.count("\n") == 1, f"one line: {refused.stderr!r}"
    assert ("lacks permission 'key:write' on \"bridge/clusters/east\"" in refused.stderr
            and "nothing was deleted" in refused.stderr), refused.stderr
    assert short["SecretID"] not in refused.stdout + refused.stderr and "Traceback" not in refused.stderr
    assert "deleted" not in refused.stdout, refused.stdout
    assert consul_world(consul) == before, "a refused purge deleted something"

    done = purge(world.url, world.east_kubeconfig, "--yes", env={"CONSUL_HTTP_TOKEN": token["SecretID"]})
    assert done.returncode == 0 and not done.stderr, done
    assert "k8s-sync-east" not in consul_world(consul)["nodes"]
    assert "bridge/clusters/east" not in consul_world(consul)["keys"]


def test_purge_without_a_cluster_id_names_the_setting_and_reads_nothing() -> None:
    """Deleting is too much to do for the cluster id a bridge takes by default."""
    done = subprocess.run([BRIDGE, "purge", "--consul-addr", "http://127.0.0.1:1", "--yes"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and not done.stdout, done
    assert done.stderr.count("\n") == 1 and "--cluster-id ID, or cluster_id in --config" in done.stderr, done.stderr
