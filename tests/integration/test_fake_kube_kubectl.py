"""The fake kube-apiserver driven by the real `kubectl` binary through a written kubeconfig."""

import os
import queue
import shutil
import subprocess
import threading

import pytest
import yaml

from tests.conftest import eventually
from tests.integration import kube_fixtures

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: demo
  labels: {app: web}
spec:
  containers:
  - name: app
    image: nginx:1.27
    ports:
    - name: http
      containerPort: 8080
status:
  podIP: 10.244.0.5
  conditions:
  - type: Ready
    status: "True"
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: leader
  namespace: demo
spec:
  holderIdentity: replica-1
  leaseDurationSeconds: 15
"""


kube = kube_fixtures.server(seed=9)


@pytest.fixture
def kubectl(kube, tmp_path):
    binary = shutil.which("kubectl")
    assert binary, "these tests need kubectl on PATH"
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    base = [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}

    def run(*args, check=True, timeout=30):
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        return result

    run.base = base
    run.env = env
    return run


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    return path


def test_create_from_file_makes_objects_and_controllers_react(kube, kubectl, manifest):
    result = kubectl("create", "-f", str(manifest))
    assert result.stdout.splitlines() == [
        "namespace/demo created",
        "service/web created",
        "pod/web-0 created",
        "lease.coordination.k8s.io/leader created",
    ]
    slices = kube.store.objects("endpointslices", "demo")
    assert [e["addresses"] for s in slices for e in s["endpoints"] or []] == [["10.244.0.5"]]
    again = kubectl("create", "-f", str(manifest), check=False)
    assert again.returncode != 0
    assert "Error from server (AlreadyExists): error when creating" in again.stderr


def test_apply_twice_then_change(kube, kubectl, manifest):
    first = kubectl("apply", "-f", str(manifest))
    assert first.stdout.splitlines() == [
        "namespace/demo created",
        "service/web created",
        "pod/web-0 created",
        "lease.coordination.k8s.io/leader created",
    ]
    rv = kube.store.resource_version
    second = kubectl("apply", "-f", str(manifest))
    assert second.stdout.splitlines() == [
        "namespace/demo unchanged",
        "service/web unchanged",
        "pod/web-0 unchanged",
        "lease.coordination.k8s.io/leader unchanged",
    ]
    assert kube.store.resource_version == rv, "an unchanged apply writes nothing"
    cluster_ip = kube.store.get("services", "demo", "web")["spec"]["clusterIP"]

    manifest.write_text(MANIFEST.replace("port: 80\n", "port: 8080\n").replace("replica-1", "replica-2"))
    third = kubectl("apply", "-f", str(manifest))
    assert "service/web configured" in third.stdout
    assert "lease.coordination.k8s.io/leader configured" in third.stdout
    svc = kube.store.get("services", "demo", "web")
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080], "strategic merge replaced the port"
    assert svc["spec"]["clusterIP"] == cluster_ip
    assert "kubectl.kubernetes.io/last-applied-configuration" in svc["metadata"]["annotations"]
    assert kube.store.get("leases", "demo", "leader")["spec"]["holderIdentity"] == "replica-2"
    patches = [r for r in kube.requests if r.method == "PATCH"]
    assert {r.path for r in patches} == {
        "/api/v1/namespaces/demo/services/web",
        "/apis/coordination.k8s.io/v1/namespaces/demo/leases/leader",
    }


def test_get_yaml_matches_the_stored_object(kube, kubectl, manifest):
    kubectl("apply", "-f", str(manifest))
    svc = yaml.safe_load(kubectl("get", "service", "web", "-n", "demo", "-o", "yaml").stdout)
    stored = kube.store.get("services", "demo", "web")
    assert svc == stored
    listed = yaml.safe_load(kubectl("get", "endpointslices", "-n", "demo", "-o", "yaml").stdout)
    assert listed["kind"] == "List"
    assert [i["kind"] for i in listed["items"]] == ["EndpointSlice"]
    assert listed["items"][0]["metadata"]["labels"]["kubernetes.io/service-name"] == "web"


def test_get_tables(kube, kubectl, manifest):
    kubectl("apply", "-f", str(manifest))
    pods = kubectl("get", "pods", "-A", "-o", "wide").stdout.splitlines()
    assert pods[0].split() == [
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED",
        "NODE",
        "READINESS",
        "GATES",
    ]
    assert pods[1].split()[:4] == ["demo", "web-0", "1/1", "Running"]
    services = kubectl("get", "svc", "-n", "demo").stdout.splitlines()
    cluster_ip = kube.store.get("services", "demo", "web")["spec"]["clusterIP"]
    assert services[1].split()[:5] == ["web", "ClusterIP", cluster_ip, "<none>", "80/TCP"]
    slices = kubectl("get", "endpointslices", "-n", "demo").stdout.splitlines()
    assert slices[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert slices[1].split()[1:4] == ["IPv4", "8080", "10.244.0.5"]
    leases = kubectl("get", "leases", "-n", "demo").stdout.splitlines()
    assert leases[1].split()[:2] == ["leader", "replica-1"]
    missing = kubectl("get", "svc", "nope", "-n", "demo", check=False)
    assert missing.returncode == 1
    assert 'Error from server (NotFound): services "nope" not found' in missing.stderr


def test_get_watch_streams_new_rows(kube, kubectl, manifest):
    kubectl("apply", "-f", str(manifest))
    process = subprocess.Popen(
        [*kubectl.base, "get", "pods", "-n", "demo", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kubectl.env,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()

    def next_line(timeout=10.0):
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"kubectl -w printed nothing within {timeout}s") from None

    try:
        assert next_line().split()[:3] == ["NAME", "READY", "STATUS"]
        assert next_line().split()[0] == "web-0"
        eventually(lambda: any(r.watch for r in kube.requests), 10, "kubectl to start watching")
        pod = yaml.safe_load(MANIFEST.split("---")[2])
        pod["metadata"]["name"] = "web-1"
        pod["status"]["conditions"][0]["status"] = "False"
        kube.apply(pod)
        assert next_line().split()[:3] == ["web-1", "0/1", "Running"]
    finally:
        process.kill()
        process.communicate(timeout=10)


def test_delete(kube, kubectl, manifest):
    kubectl("apply", "-f", str(manifest))
    result = kubectl("delete", "pod", "web-0", "-n", "demo")
    assert result.stdout.strip() == 'pod "web-0" deleted'
    assert kube.store.find("pods", "demo", "web-0") is None
    assert [s["endpoints"] for s in kube.store.objects("endpointslices", "demo")] == [None]
    result = kubectl("delete", "-f", str(manifest), "--ignore-not-found")
    assert 'namespace "demo" deleted' in result.stdout
    assert kube.store.find("namespaces", None, "demo") is None
    assert kube.store.objects("services", "demo") == []


def test_invalid_objects_are_refused_with_the_servers_message(kubectl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\nspec: {ports: [{port: 80}]}\n")
    result = kubectl("apply", "-f", str(bad), check=False)
    assert result.returncode == 1
    assert 'The Service "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' in result.stderr


def test_imperative_create_commands_send_protobuf_and_work(kube, kubectl):
    assert kubectl("create", "namespace", "team").stdout.strip() == "namespace/team created"
    kubectl("create", "service", "nodeport", "np", "--tcp=80:8080", "--node-port=30123", "-n", "team")
    kubectl("create", "service", "clusterip", "db", "--clusterip=None", "--tcp=5432:5432", "-n", "team")
    node_port = kube.store.get("services", "team", "np")
    assert node_port["spec"]["type"] == "NodePort"
    assert node_port["spec"]["ports"] == [
        {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30123}
    ]
    assert node_port["spec"]["selector"] == {"app": "np"}
    assert kube.store.get("services", "team", "db")["spec"]["clusterIP"] == "None"
    posts = [r for r in kube.requests if r.method == "POST"]
    assert len(posts) == 3
