"""deploy/: the manifests as `kubectl kustomize` renders them, checked against the bridge itself.

The settings each container would run with are built the way the pod builds them: the
image's entrypoint plus the container's args parsed by the CLI's own parser, the settings
file from the ConfigMap, and the container's environment, through `bridge.config.build`.
Probes, ports, Services and RBAC are then checked against those settings. Which API calls
the bridge makes with the central settings is checked by running it:
tests/integration/test_kube_incluster_rbac.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge import cli, config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# What the kubelet sets in every container (client-go's rest.InClusterConfig reads them).
KUBELET_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
# The verbs the bridge's client uses (bridge/kube/client.py: list_page, watch, write; read,
# for the leader election's Lease and namespace kube-system only).
READ_VERBS = {"list", "watch"}
WRITE_VERBS = {"create", "update", "delete"}
LEASES = ("coordination.k8s.io", "leases")


def render(layout: str) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/<layout>` as a list of objects."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/ (README: Tests names the tools)"
    done = subprocess.run([kubectl, "kustomize", str(DEPLOY / layout)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize deploy/{layout} failed: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def bridge_container(spec: dict[str, Any]) -> dict[str, Any]:
    """The container named `bridge`, a regular one or a native sidecar (an init container
    that restarts always)."""
    found = [c for c in spec.get("containers", []) if c["name"] == "bridge"]
    found += [c for c in spec.get("initContainers", [])
              if c["name"] == "bridge" and c.get("restartPolicy") == "Always"]
    assert len(found) == 1, f"expected one container named bridge, found {len(found)}"
    return found[0]


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form) from the Dockerfile."""
    found = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert len(found) == 1, "the Dockerfile must have one exec-form ENTRYPOINT"
    return json.loads(found[0])


@dataclass
class Running:
    """A bridge container as it would start: its argv and the settings it would build."""

    argv: list[str]
    settings: config.Settings
    config_path: str


def running(objects: list[dict[str, Any]], deployment: dict[str, Any], tmp_path: Path,
            command: str = "run", **overrides: Any) -> Running:
    """Parses the container's argv with the CLI's parser and builds its settings from the
    mounted ConfigMap and the literal environment (Secret references carry no value here).
    `deployment`: a Deployment, or a Job whose container runs `bridge <command>`."""
    spec = pod_spec(deployment)
    container = bridge_container(spec)
    argv = [*container.get("command", entrypoint()), *container.get("args", [])]
    assert argv[:2] == ["bridge", command], f"the container must run `bridge {command}`: {argv}"
    try:
        args = cli.parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`bridge run` rejects the container's args {argv[2:]}")
    flags = {key: getattr(args, key.replace(".", "__"), None)
             for key, _ in cli.SETTING_FLAGS.values()}
    flags.update(overrides)
    path = None
    if args.config:
        path = _mounted_file(objects, spec, container, args.config, tmp_path)
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    settings = config.build(config_file=str(path) if path else None,
                            environ={**KUBELET_ENV, **env}, flags=flags)
    return Running(argv, settings, args.config or "")


def _mounted_file(objects: list[dict[str, Any]], spec: dict[str, Any],
                  container: dict[str, Any], wanted: str, tmp_path: Path) -> Path:
    """The ConfigMap key a container sees at `wanted`, written to a temporary file."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not wanted.startswith(prefix):
            continue
        volume = volumes[mount["name"]]
        assert "configMap" in volume, f"{wanted} is mounted from {volume}, not a ConfigMap"
        configmap = one(objects, "ConfigMap", volume["configMap"]["name"])
        key = wanted[len(prefix):]
        assert key in configmap["data"], f"ConfigMap {configmap['metadata']['name']} has no {key}"
        path = tmp_path / key
        path.write_text(configmap["data"][key])
        return path
    raise AssertionError(f"{wanted} is not on any volume mounted in the bridge container")


def port_number(container: dict[str, Any], port: int | str, protocol: str = "TCP") -> int:
    """A probe's or Service's port as the container's port number (names resolved)."""
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in container.get("ports", [])
             if p.get("name") == port and p.get("protocol", "TCP") == protocol]
    assert len(found) == 1, f"container {container['name']} has no {protocol} port named {port}"
    return found[0]


def check_restricted(spec: dict[str, Any], container: dict[str, Any]) -> None:
    """The restricted Pod Security Standard's rules, as the container sees them."""
    pod_sc = spec.get("securityContext", {})
    sc = container.get("securityContext", {})
    name = container["name"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot"
    assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
    assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities drop ALL"
    assert not sc.get("capabilities", {}).get("add"), f"{name}: no capabilities added"
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
    assert seccomp.get("type") == "RuntimeDefault", f"{name}: seccompProfile RuntimeDefault"
    assert not sc.get("privileged"), f"{name}: not privileged"


def check_probes(container: dict[str, Any], settings: config.Settings) -> None:
    _, http_port = config.parse_hostport(settings.http.listen)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet")
        assert get, f"{container['name']} has no HTTP {probe}"
        assert get["path"] == path, f"{probe} asks {get['path']}, the bridge serves {path}"
        assert port_number(container, get["port"]) == http_port, (
            f"{probe} port {get['port']} is not http.listen {settings.http.listen}")
    host, _ = config.parse_hostport(settings.http.listen)
    assert host in ("0.0.0.0", "::"), "the kubelet probes the pod IP: http must listen on all"


def rbac_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for o in objects if o["kind"] in ("ClusterRole", "Role")
            for rule in o.get("rules", [])]


def granted(objects: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) the Roles and ClusterRoles grant."""
    return {(group, resource, verb) for rule in rbac_rules(objects)
            for group in rule.get("apiGroups", []) for resource in rule.get("resources", [])
            for verb in rule.get("verbs", [])}


def measured_memory() -> tuple[int, int]:
    """README, Performance: resident and peak MB at 10,000 Services x 5."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"\| resident memory[^|]*\|[^|]*\| (\d+) MB \(peak (\d+) MB", text)
    assert match, "README's performance table no longer states the resident memory"
    return int(match.group(1)), int(match.group(2))


def mebibytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, f"unexpected quantity {quantity}"
    return float(match.group(1)) * units.get(match.group(2) or "", 1) / 2**20


@pytest.fixture(scope="module")
def central() -> list[dict[str, Any]]:
    return render("central")


@pytest.fixture(scope="module")
def sidecar() -> list[dict[str, Any]]:
    return render("sidecar")


@pytest.fixture
def central_run(central, tmp_path) -> Running:
    return running(central, one(central, "Deployment", "bridge"), tmp_path)


@pytest.fixture
def sidecar_run(sidecar, tmp_path) -> Running:
    return running(sidecar, one(sidecar, "Deployment"), tmp_path)


# --- central ---------------------------------------------------------------------------

def test_central_objects_live_in_the_bridge_namespace(central):
    one(central, "Namespace", "bridge")
    for obj in central:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace") == "bridge", obj["metadata"]


def test_central_settings_validate_and_come_from_the_configmap(central_run):
    s = central_run.settings
    assert central_run.config_path, "the central bridge reads its settings file"
    assert s.kubernetes.enabled and s.kubernetes.in_cluster and not s.kubernetes.kubeconfig
    assert s.kubernetes.service_account_dir == ACCOUNT_DIR
    assert s.consul.address.startswith("http"), s.consul.address


def test_central_runs_as_its_service_account_with_a_token_mounted(central):
    spec = pod_spec(one(central, "Deployment", "bridge"))
    assert spec["serviceAccountName"] == "bridge"
    one(central, "ServiceAccount", "bridge")
    assert spec.get("automountServiceAccountToken", True) is True, "in-cluster auth needs the token"
    binding = one(central, "ClusterRoleBinding", "bridge")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "bridge"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "bridge",
                                    "namespace": "bridge"}]


def test_central_rbac_has_no_wildcard_and_no_secrets(central):
    rules = rbac_rules(central)
    assert rules, "the ClusterRole has rules"
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, [])), f"wildcard in {rule}"
        assert "secrets" not in rule.get("resources", []), f"Secrets granted: {rule}"
        assert not rule.get("nonResourceURLs"), rule


def test_central_rbac_verbs_are_those_the_client_uses(central, central_run):
    grants = granted(central)
    verbs = {verb for _, _, verb in grants}
    used = READ_VERBS | WRITE_VERBS | {"get"}
    assert verbs <= used, f"verbs the bridge never uses: {verbs - used}"
    written = {(g, r) for g, r, v in grants if v in WRITE_VERBS} - {LEASES}
    expected = {("", "services"), ("discovery.k8s.io", "endpointslices")}
    assert written == (expected if central_run.settings.sync.to_k8s else set()), (
        f"writes are for sync.to_k8s's Services and EndpointSlices only: {written}")
    for group, resource in written:
        assert {v for g, r, v in grants if (g, r) == (group, resource)} == READ_VERBS | WRITE_VERBS
    assert {(g, r) for g, r, v in grants if v == "get"} == {LEASES, ("", "namespaces")}, (
        "get is for the leader election only: its Lease and namespace kube-system")


def test_central_deployment_runs_two_replicas_on_different_nodes(central):
    deployment = one(central, "Deployment", "bridge")
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = [c for c in spec.get("topologySpreadConstraints", [])
              if c["topologyKey"] == "kubernetes.io/hostname"
              and c["whenUnsatisfiable"] == "DoNotSchedule" and c["maxSkew"] == 1]
    anti = spec.get("affinity", {}).get("podAntiAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", [])
    assert spread or anti, "the two replicas must be kept on different nodes"
    for constraint in spread:
        selector = constraint["labelSelector"]["matchLabels"]
        assert selector.items() <= labels.items(), "the spread must select the bridge's pods"


def test_central_probes_match_the_http_listener(central, central_run):
    check_probes(bridge_container(pod_spec(one(central, "Deployment", "bridge"))),
                 central_run.settings)


def test_central_security_context_is_restricted(central):
    spec = pod_spec(one(central, "Deployment", "bridge"))
    for container in spec["containers"]:
        check_restricted(spec, container)


def test_central_dns_service_maps_53_to_the_dns_listener(central, central_run):
    container = bridge_container(pod_spec(one(central, "Deployment", "bridge")))
    _, dns_port = config.parse_hostport(central_run.settings.dns.listen)
    service = one(central, "Service", "bridge-dns")
    protocols = set()
    for port in service["spec"]["ports"]:
        assert port["port"] == 53, port
        assert port_number(container, port["targetPort"], port["protocol"]) == dns_port, port
        protocols.add(port["protocol"])
    assert protocols == {"UDP", "TCP"}
    template_labels = one(central, "Deployment", "bridge")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()


def test_central_metrics_service_reaches_the_http_listener(central, central_run):
    container = bridge_container(pod_spec(one(central, "Deployment", "bridge")))
    _, http_port = config.parse_hostport(central_run.settings.http.listen)
    service = one(central, "Service", "bridge-metrics")
    assert [port_number(container, p["targetPort"]) for p in service["spec"]["ports"]] == [http_port]


def test_the_images_exposed_ports_are_the_central_ports(central):
    container = bridge_container(pod_spec(one(central, "Deployment", "bridge")))
    exposed = set(re.findall(r"(\d+)/(udp|tcp)", " ".join(
        re.findall(r"^EXPOSE (.*)$", (ROOT / "Dockerfile").read_text(), re.M))))
    ports = {(str(p["containerPort"]), p.get("protocol", "TCP").lower())
             for p in container["ports"]}
    assert ports == exposed, f"container ports {ports}, Dockerfile EXPOSE {exposed}"


def test_central_consul_token_comes_from_a_secret(central):
    env = {e["name"]: e for e in bridge_container(
        pod_spec(one(central, "Deployment", "bridge")))["env"]}
    assert "value" not in env.get("CONSUL_HTTP_TOKEN", {}), "no literal token in a manifest"
    by_env = env.get("CONSUL_HTTP_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
    by_file = "CONSUL_HTTP_TOKEN_FILE" in env
    assert by_env or by_file, "the Consul token must come from a Secret"
    assert "CONSUL_HTTP_ADDR" in env


def test_central_memory_fits_the_measured_footprint(central):
    resident, peak = measured_memory()
    resources = bridge_container(pod_spec(one(central, "Deployment", "bridge")))["resources"]
    request = mebibytes(resources["requests"]["memory"]) * 2**20 / 1e6
    limit = mebibytes(resources["limits"]["memory"]) * 2**20 / 1e6
    assert request >= resident, f"memory request {request:.0f} MB < measured {resident} MB"
    # A relist after a 410 holds two copies of a collection: at least 1.5x the peak.
    assert limit >= 1.5 * peak, f"memory limit {limit:.0f} MB leaves too little over {peak} MB"
    assert "cpu" in resources["requests"]


def test_central_disruption_budget_keeps_one_replica(central):
    pdb = one(central, "PodDisruptionBudget")
    deployment = one(central, "Deployment", "bridge")
    assert pdb["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_central_replicas_may_elect_a_writer_with_a_lease_in_their_namespace(central, central_run):
    settings = central_run.settings
    assert settings.ha.enabled and settings.ha.lease_namespace == "", \
        "the Lease lives in the pod's own namespace, where the Role grants it"
    deployment = one(central, "Deployment", "bridge")
    namespace = deployment["metadata"]["namespace"]
    role = one(central, "Role", "bridge-leader-election")
    assert role["metadata"]["namespace"] == namespace
    assert granted([role]) == {(*LEASES, verb) for verb in ("get", "create", "update")}, (
        "get to follow it, create for the first replica, update to take, renew and release it")
    binding = one(central, "RoleBinding", "bridge-leader-election")
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "bridge-leader-election"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod_spec(deployment)["serviceAccountName"],
                                    "namespace": namespace}]
    [kube_system] = [rule for rule in one(central, "ClusterRole", "bridge")["rules"]
                     if "namespaces" in rule["resources"]]
    assert kube_system == {"apiGroups": [""], "resources": ["namespaces"],
                           "resourceNames": ["kube-system"], "verbs": ["get"]}, \
        "the cluster's uid is read from namespace kube-system, and nothing else of namespaces"


def test_central_replicas_are_named_in_the_lease_by_their_pod(central):
    container = bridge_container(pod_spec(one(central, "Deployment", "bridge")))
    [pod_name] = [e for e in container.get("env", []) if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert config.build(environ={"POD_NAME": "bridge-7d9f-x2"}).ha.identity == "bridge-7d9f-x2"


# --- uninstall -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninstall() -> list[dict[str, Any]]:
    return render("uninstall")


def test_uninstall_stops_the_writers_and_keeps_what_the_purge_needs(central, uninstall):
    assert one(uninstall, "Deployment", "bridge")["spec"]["replicas"] == 0, \
        "no bridge may write (and hold the claim) while the purge runs"
    kept = {(o["kind"], o["metadata"]["name"]) for o in uninstall} - {("Job", "bridge-purge")}
    assert kept == {(o["kind"], o["metadata"]["name"]) for o in central}, \
        "applying the uninstall step changes nothing of the central bridge but its replicas"


def test_uninstall_job_purges_with_the_central_bridges_settings_and_credentials(central, uninstall,
                                                                                 central_run, tmp_path):
    job = one(uninstall, "Job", "bridge-purge")
    purge = running(uninstall, job, tmp_path, command="purge")
    assert "--yes" in purge.argv, purge.argv
    assert purge.settings == central_run.settings, "the purge must see the bridge's own settings"
    args = cli.parser().parse_args(purge.argv[1:])
    assert args.cluster_id is None and purge.config_path, \
        "the cluster id comes from the settings file, where the bridge's own comes from"
    spec, deployed = pod_spec(job), pod_spec(one(central, "Deployment", "bridge"))
    for field in ("serviceAccountName", "securityContext", "volumes"):
        assert spec.get(field) == deployed.get(field), f"the Job's {field} differs from the Deployment's"
    container, bridge = bridge_container(spec), bridge_container(deployed)
    for field in ("image", "env", "securityContext", "volumeMounts"):
        assert container.get(field) == bridge.get(field), f"the Job's container {field} differs"
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 3, \
        "a purge refused while the last bridge stops must be tried again"
    check_restricted(spec, container)
    grants = granted(uninstall)
    if purge.settings.sync.to_k8s:
        for resource in (("", "services"), ("discovery.k8s.io", "endpointslices")):
            assert {(*resource, "list"), (*resource, "delete")} <= grants, f"purge lists and deletes {resource}"


# --- sidecar ---------------------------------------------------------------------------

def test_sidecar_pod_resolves_through_the_bridge_with_the_cluster_search_list(sidecar, sidecar_run):
    deployment = one(sidecar, "Deployment")
    spec = pod_spec(deployment)
    namespace = deployment["metadata"].get("namespace", "default")
    zone = sidecar_run.settings.dns.zone
    assert spec["dnsPolicy"] == "None"
    dns_config = spec["dnsConfig"]
    assert dns_config["nameservers"] == ["127.0.0.1"]
    assert dns_config["searches"] == [f"{namespace}.svc.{zone}", f"svc.{zone}", zone]
    assert {"name": "ndots", "value": "5"} in dns_config["options"]
    host, port = config.parse_hostport(sidecar_run.settings.dns.listen)
    assert (host, port) == ("127.0.0.1", 53), "resolv.conf can only name port 53"


def test_sidecar_binds_53_unprivileged(sidecar, sidecar_run):
    spec = pod_spec(one(sidecar, "Deployment"))
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"].get("sysctls", [])}
    start = int(sysctls["net.ipv4.ip_unprivileged_port_start"])
    _, port = config.parse_hostport(sidecar_run.settings.dns.listen)
    assert start <= port, f"port {port} needs ip_unprivileged_port_start <= {port}, not {start}"
    container = bridge_container(spec)
    assert not container.get("securityContext", {}).get("capabilities", {}).get("add")


def test_sidecar_holds_no_kubernetes_credentials(sidecar, sidecar_run):
    spec = pod_spec(one(sidecar, "Deployment"))
    assert spec["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in bridge_container(spec)["env"]}
    assert env["BRIDGE_KUBERNETES_ENABLED"] == "false"
    s = sidecar_run.settings
    assert not s.kubernetes.enabled and not s.sync.to_consul and not s.sync.to_k8s
    assert not [o for o in sidecar if o["kind"] in ("ClusterRole", "Role", "ServiceAccount")]


def test_sidecar_forwards_other_names_to_an_explicit_upstream(sidecar_run):
    upstreams = sidecar_run.settings.dns.upstreams
    assert upstreams, "resolv.conf names only the bridge itself: the cluster DNS must be set"
    for upstream in upstreams:
        host, _ = config.parse_hostport(upstream if ":" in upstream else upstream + ":53")
        assert host not in ("127.0.0.1", "::1"), "forwarding to itself would loop"


def test_sidecar_probes_and_security(sidecar, sidecar_run):
    spec = pod_spec(one(sidecar, "Deployment"))
    container = bridge_container(spec)
    check_probes(container, sidecar_run.settings)
    for c in [*spec["containers"], *spec.get("initContainers", [])]:
        check_restricted(spec, c)


def test_sidecar_fits_the_measured_cost_of_1000_consul_names(sidecar):
    """README, Performance (bench/sidecar): the manifest is sized for 1,000 Consul names."""
    match = re.search(r"^\| 1,000 \u00d7 5 \| ([\d.]+) s \| ([\d,]+) MB", (ROOT / "README.md").read_text(), re.M)
    assert match, "README's sidecar table no longer states the cost at 1,000 names"
    ready_s, resident = float(match.group(1)), int(match.group(2).replace(",", ""))
    container = bridge_container(pod_spec(one(sidecar, "Deployment")))
    resources = container["resources"]
    request = mebibytes(resources["requests"]["memory"]) * 2**20 / 1e6
    limit = mebibytes(resources["limits"]["memory"]) * 2**20 / 1e6
    assert request >= resident, f"memory request {request:.0f} MB < measured {resident} MB"
    # A relist of the Consul catalog (after an index reset) holds old and new answers.
    assert limit >= 1.5 * resident, f"memory limit {limit:.0f} MB leaves too little over {resident} MB"
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    # The machine the bench ran on was shared; a slower node must still get there.
    assert budget >= 5 * ready_s, f"startupProbe allows {budget}s; ready took {ready_s}s measured"


# --- CoreDNS ---------------------------------------------------------------------------

def server_blocks(corefile: str) -> Iterator[tuple[str, str]]:
    """(zones, body) of each top-level server block, comments dropped."""
    text = re.sub(r"#[^\n]*", "", corefile)
    for match in re.finditer(r"^([^\s{][^{]*)\{(.*?)^\}", text, re.M | re.S):
        yield match.group(1).strip(), match.group(2)


def test_coredns_forwards_the_consul_domain_to_the_central_bridge(central_run):
    objects = render("coredns")
    configmap = one(objects, "ConfigMap", "coredns-custom")
    assert configmap["metadata"]["namespace"] == "kube-system"
    blocks = [b for key, text in configmap["data"].items() if key.endswith(".server")
              for b in server_blocks(text)]
    assert len(blocks) == 1, blocks
    zones, body = blocks[0]
    assert zones == f"{central_run.settings.dns.consul_domain}:53", zones
    assert re.search(r"^\s*forward \. BRIDGE_DNS_IP\s*$", body, re.M), body
    assert (DEPLOY / "coredns" / "consul.server").read_text() == next(iter(configmap["data"].values()))
