"""The kinds a deploy/ kustomization holds, stored and validated by the fake kube-apiserver.

ConfigMap, Secret, ServiceAccount, Deployment (apps/v1), PodDisruptionBudget (policy/v1),
Role/ClusterRole/RoleBinding/ClusterRoleBinding (rbac.authorization.k8s.io/v1) and Lease
(coordination.k8s.io/v1): discovery lists them, writes are validated with the upstream
messages (`pkg/apis/core/validation`, `pkg/apis/apps/validation`, `pkg/apis/policy/validation`,
`pkg/apis/rbac/validation`, `pkg/apis/coordination/validation`), and `kubectl apply -k`,
`kubectl apply --server-side` and the official client behave as against a cluster.
"""

import base64
import json

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from bridge.testing.kube import KubeAPIServer, StatusError
from tests.integration.test_fake_kube_auth import call, run_kubectl

KINDS = {
    ("", "configmaps"): "ConfigMap",
    ("", "secrets"): "Secret",
    ("", "serviceaccounts"): "ServiceAccount",
    ("apps", "deployments"): "Deployment",
    ("policy", "poddisruptionbudgets"): "PodDisruptionBudget",
    ("rbac.authorization.k8s.io", "roles"): "Role",
    ("rbac.authorization.k8s.io", "clusterroles"): "ClusterRole",
    ("rbac.authorization.k8s.io", "rolebindings"): "RoleBinding",
    ("rbac.authorization.k8s.io", "clusterrolebindings"): "ClusterRoleBinding",
    ("coordination.k8s.io", "leases"): "Lease",
}


@pytest.fixture
def kube():
    server = KubeAPIServer(seed=7, tls=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(kube, tmp_path):
    api_client = config.new_client_from_config(str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    yield api_client
    api_client.close()


def invalid(kube, manifest):
    with pytest.raises(StatusError) as refused:
        kube.load_manifests(manifest)
    assert refused.value.code == 422, refused.value
    return refused.value.message


def test_discovery_lists_the_kinds_with_their_scope(kube):
    token = kube.admin_token
    _, groups = call(kube, "GET", "/apis", token=token)
    names = {g["name"] for g in groups["groups"]}
    assert {"apps", "policy", "rbac.authorization.k8s.io", "coordination.k8s.io", "authorization.k8s.io",
            "authentication.k8s.io"} <= names  # fmt: skip
    for (group, plural), kind in KINDS.items():
        path = "/api/v1" if not group else f"/apis/{group}/v1"
        _, listing = call(kube, "GET", path, token=token)
        entry = next((r for r in listing["resources"] if r["name"] == plural), None)
        assert entry is not None, f"{plural} missing from {path}"
        assert entry["kind"] == kind
        assert entry["namespaced"] is (plural not in ("clusterroles", "clusterrolebindings"))
        assert "create" in entry["verbs"] and "list" in entry["verbs"]
    _, authz = call(kube, "GET", "/apis/authorization.k8s.io/v1", token=token)
    reviews = {r["name"]: r["verbs"] for r in authz["resources"]}
    assert reviews["selfsubjectaccessreviews"] == ["create"], "reviews are create-only"
    assert call(kube, "GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token=token)[0] == 405


def test_kubectl_apply_kustomization(kube, tmp_path):
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: bridge\n"
        "resources: [namespace.yaml, objects.yaml]\n"
        "configMapGenerator:\n- name: bridge-config\n  literals: [cluster_id=one]\n"
        "secretGenerator:\n- name: consul-token\n  literals: [token=s3cret]\n"
    )
    (deploy / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: bridge}\n")
    (deploy / "objects.yaml").write_text(
        """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: bridge}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: bridge-leader}
rules:
- {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bridge-leader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: bridge-leader}
subjects: [{kind: ServiceAccount, name: bridge}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: bridge}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: bridge}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bridge}
spec:
  replicas: 2
  selector: {matchLabels: {app: bridge}}
  template:
    metadata: {labels: {app: bridge}}
    spec:
      serviceAccountName: bridge
      containers:
      - name: bridge
        image: bridge:dev
        env: [{name: CONSUL_HTTP_TOKEN, valueFrom: {secretKeyRef: {name: consul-token, key: token}}}]
"""
    )
    kubeconfig, cache = kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "cache"
    first = run_kubectl(kubeconfig, cache, "apply", "-k", str(deploy)).stdout.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in first] == ["created"] * len(first), first
    assert len(first) == 8
    second = run_kubectl(kubeconfig, cache, "apply", "-k", str(deploy)).stdout.splitlines()
    # A PDB's selector has patchStrategy "replace", so kubectl always sends it and says
    # "configured" (as against a cluster); everything else is unchanged.
    changed = [line for line in second if not line.endswith(" unchanged")]
    assert changed == ["poddisruptionbudget.policy/bridge configured"], second
    deployment = kube.store.get("deployments", "bridge", "bridge")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
    }
    assert deployment["spec"]["template"]["spec"]["restartPolicy"] == "Always"
    assert deployment["metadata"]["generation"] == 1
    secrets = kube.store.objects("secrets", "bridge")
    assert [base64.b64decode(s["data"]["token"]) for s in secrets] == [b"s3cret"]
    listed = run_kubectl(kubeconfig, cache, "get", "deploy,pdb,cm,secret,sa,role,rolebinding", "-n", "bridge", "-o",
                         "name").stdout.split()  # fmt: skip
    assert len(listed) == 7 and "deployment.apps/bridge" in listed
    # The fake empties a namespace synchronously, so the objects kubectl deletes after the
    # namespace are already gone (a cluster's namespace controller would still be at it).
    deleted = run_kubectl(kubeconfig, cache, "delete", "-k", str(deploy), "--ignore-not-found").stdout
    assert 'namespace "bridge" deleted' in deleted
    assert kube.store.find("namespaces", None, "bridge") is None
    assert kube.store.objects("deployments") == [] and kube.store.objects("roles") == []


def test_kubectl_server_side_apply_creates_then_updates(kube, tmp_path):
    kubeconfig, cache = kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "cache"
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\n"
                        "data: {a: '1'}\n")  # fmt: skip
    assert run_kubectl(kubeconfig, cache, "apply", "--server-side", "-f", str(manifest)).stdout.strip() == (
        "configmap/settings serverside-applied"
    )
    manifest.write_text(manifest.read_text().replace("a: '1'", "a: '2'"))
    run_kubectl(kubeconfig, cache, "apply", "--server-side", "-f", str(manifest))
    assert kube.store.get("configmaps", "default", "settings")["data"] == {"a": "2"}
    patches = [r for r in kube.requests if r.method == "PATCH" and r.path.endswith("/configmaps/settings")]
    assert [r.status for r in patches] == [201, 200], "created, then updated, through apply patches"


def test_config_map_and_secret_validation(kube, api):
    message = invalid(kube, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {'bad key': x}\n")
    assert message.startswith('ConfigMap "c" is invalid: data[bad key]: Invalid value: "bad key": a valid config key')
    core = client.CoreV1Api(api)
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"password": "pw"})
    created = core.create_namespaced_secret("default", secret)
    assert created.type == "Opaque" and created.string_data is None
    assert base64.b64decode(created.data["password"]) == b"pw", "stringData is folded into data"
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_secret("default", {"metadata": {"name": "t"}, "type": "kubernetes.io/tls", "data": {}})
    body = json.loads(refused.value.body)
    assert refused.value.status == 422
    assert [c["field"] for c in body["details"]["causes"]] == ["data[tls.crt]", "data[tls.key]"]
    with pytest.raises(ApiException) as refused:
        core.patch_namespaced_secret("s", "default", {"type": "kubernetes.io/tls"})
    assert refused.value.status == 422 and "type: Invalid value" in json.loads(refused.value.body)["message"]
    kube.load_manifests("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frozen}\nimmutable: true\ndata: {a: b}\n")
    with pytest.raises(ApiException) as refused:
        core.patch_namespaced_config_map("frozen", "default", {"data": {"a": "c"}})
    assert "data: Forbidden: field is immutable when `immutable` is set" in json.loads(refused.value.body)["message"]


def test_deployment_validation(kube):
    base = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n"
        "  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: %s}}\n"
        "    spec: {containers: [{name: c, image: %s}]}\n"
    )
    message = invalid(kube, base % ("other", "nginx"))
    assert "spec.template.metadata.labels: Invalid value" in message
    assert "`selector` does not match template `labels`" in message
    assert "spec.template.spec.containers[0].image: Required value" in invalid(kube, base % ("d", "''"))
    kube.load_manifests(base % ("d", "nginx"))
    with pytest.raises(StatusError) as refused:
        kube.load_manifests((base % ("e", "nginx")).replace("app: d}}", "app: e}}", 1))
    assert "spec.selector: Invalid value" in refused.value.message and "field is immutable" in refused.value.message


def test_pod_disruption_budget_validation(kube):
    message = invalid(
        kube, "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: p}\n"
        "spec: {minAvailable: 1, maxUnavailable: 1}\n",
    )  # fmt: skip
    assert "minAvailable and maxUnavailable cannot be both set" in message
    message = invalid(kube, "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: p}\n"
                            "spec: {minAvailable: '150%'}\n")  # fmt: skip
    assert 'spec.minAvailable: Invalid value: "150%": must not be greater than 100%' in message


def test_rbac_object_validation(kube):
    message = invalid(kube, "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\n"
                            "rules: [{apiGroups: [''], resources: [pods]}]\n")  # fmt: skip
    # (A cluster names the kind with its group, `Role.rbac.authorization.k8s.io "r"`; the fake's
    # shared errors.invalid leaves the group out for every grouped kind, so only the cause is pinned.)
    assert message.endswith('"r" is invalid: rules[0].verbs: Required value: verbs must contain at least one value')
    message = invalid(kube, "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\n"
                            "rules: [{nonResourceURLs: [/healthz], verbs: [get]}]\n")  # fmt: skip
    assert "namespaced rules cannot apply to non-resource URLs" in message
    message = invalid(
        kube,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n"
        "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\n"
        "subjects: [{kind: ServiceAccount, name: sa}]\n",
    )
    assert 'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"' in message
    assert "subjects[0].namespace: Required value" in message
    binding = (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: b}\n"
        "roleRef: {kind: Role, name: %s}\nsubjects: [{kind: User, name: 'system:masters-like:name'}]\n"
    )
    kube.load_manifests(binding % "r")
    with pytest.raises(StatusError) as refused:
        kube.load_manifests(binding % "other")
    assert "roleRef: Invalid value" in refused.value.message and "cannot change roleRef" in refused.value.message
    # RBAC names are path segments, not DNS names: colons are fine, slashes are not.
    kube.load_manifests("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: 'a:b'}\n")
    assert "may not contain '/'" in invalid(
        kube, "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: 'a/b'}\n"
    )


def test_lease_writes_conflict_on_a_stale_resource_version(kube, api):
    coordination = client.CoordinationV1Api(api)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="bridge-one"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
    )
    created = coordination.create_namespaced_lease("default", lease)
    with pytest.raises(ApiException) as exists:
        coordination.create_namespaced_lease("default", lease)
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"
    created.spec.holder_identity = "b"
    renewed = coordination.replace_namespaced_lease("bridge-one", "default", created)
    created.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as stale:
        coordination.replace_namespaced_lease("bridge-one", "default", created)
    body = json.loads(stale.value.body)
    assert (stale.value.status, body["reason"]) == (409, "Conflict")
    assert body["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "bridge-one": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert coordination.read_namespaced_lease("bridge-one", "default").spec.holder_identity == "b"
    renewed.spec.lease_transitions = -1
    with pytest.raises(ApiException) as negative:
        coordination.replace_namespaced_lease("bridge-one", "default", renewed)
    assert "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0" in negative.value.body


def test_kubectl_create_generators_post_protobuf_that_the_fake_decodes(kube, tmp_path):
    kubeconfig, cache = kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "cache"
    commands = [
        ("configmap", "settings", "--from-literal=cluster_id=one"),
        ("secret", "generic", "token", "--from-literal=token=s3cret"),
        ("serviceaccount", "bridge"),
        ("role", "leader", "--verb=get,update", "--resource=leases.coordination.k8s.io,services/status"),
        ("rolebinding", "leader", "--role=leader", "--serviceaccount=default:bridge", "--group=ops"),
        ("clusterrole", "reader", "--verb=list,watch", "--resource=services"),
        ("clusterrolebinding", "reader", "--clusterrole=reader", "--user=bob"),
        ("deployment", "web", "--image=nginx:1.27", "--replicas=0", "--port=8080"),
    ]
    for command in commands:
        run_kubectl(kubeconfig, cache, "create", *command)
    assert kube.store.get("configmaps", "default", "settings")["data"] == {"cluster_id": "one"}
    assert base64.b64decode(kube.store.get("secrets", "default", "token")["data"]["token"]) == b"s3cret"
    assert kube.store.get("roles", "default", "leader")["rules"] == [
        {"verbs": ["get", "update"], "apiGroups": [""], "resources": ["services/status"]},
        {"verbs": ["get", "update"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"]},
    ]
    rolebinding = kube.store.get("rolebindings", "default", "leader")
    assert rolebinding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader"}
    assert {(s["kind"], s["name"]) for s in rolebinding["subjects"]} == {("ServiceAccount", "bridge"), ("Group", "ops")}
    assert kube.store.get("clusterrolebindings", None, "reader")["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}
    ]
    deployment = kube.store.get("deployments", "default", "web")
    assert deployment["spec"]["replicas"] == 0, "a pointer field keeps its zero"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["ports"]) == ("nginx:1.27", [{"containerPort": 8080, "protocol": "TCP"}])
    can_i = run_kubectl(kubeconfig, cache, "auth", "can-i", "update", "services", "--subresource=status", "--as",
                        "system:serviceaccount:default:bridge", check=False)  # fmt: skip
    assert can_i.stdout.strip() == "yes"
