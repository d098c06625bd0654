"""The fake kube-apiserver with `tls=True`: HTTPS, bearer tokens, service-account volumes, token rotation.

Driven by real clients: the official `kubernetes` Python client (from the written kubeconfig,
and in-cluster style from the service-account directory), `kubectl`, and raw HTTPS for the
exact Status bodies. The helpers `call` and `run_kubectl` are shared with the RBAC and kinds
tests of the fake.
"""

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

from bridge.testing.kube import KubeAPIServer
from bridge.testing.timers import ManualClock
from tests.conftest import eventually

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


def call(server, method, path, *, token=None, body=None, headers=None):
    """One HTTPS request to a TLS fake, trusting its CA; returns (status, decoded JSON body)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(server.url + path, data=data, headers=sent, method=method)
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            code, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    try:
        return code, json.loads(raw or b"null")
    except ValueError:
        return code, raw.decode()  # /healthz answers plain text


def run_kubectl(kubeconfig, cache_dir, *args, check=True):
    """Run the real kubectl against a kubeconfig; KUBE* variables of the environment are ignored."""
    binary = shutil.which("kubectl")
    assert binary, "these tests need kubectl on PATH"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    command = [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return result


@pytest.fixture
def clock():
    return ManualClock()  # token grace periods are measured on it


@pytest.fixture
def kube(clock):
    server = KubeAPIServer(seed=5, tls=True, clock=clock, token_grace=30)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin_api(kube, tmp_path):
    api_client = config.new_client_from_config(str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    yield api_client
    api_client.close()


@pytest.fixture
def sa_dir(kube, tmp_path):
    return kube.write_service_account(tmp_path / "serviceaccount", "bridge", "bridge")


def in_cluster_client(kube, directory):
    """The official client configured as inside a pod: the service-account token and ca.crt files."""
    configuration = client.Configuration()
    host, port = kube.address
    loader = InClusterConfigLoader(
        token_filename=str(Path(directory) / "token"),
        cert_filename=str(Path(directory) / "ca.crt"),
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port)},
    )
    loader.load_and_set(configuration)
    return client.ApiClient(configuration)


def grant_service_list(kube):
    kube.load_manifests(
        """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: service-reader}
rules:
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bridge-service-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: service-reader}
subjects:
- {kind: ServiceAccount, name: bridge, namespace: bridge}
"""
    )


# --- authentication ------------------------------------------------------------------------


def test_requests_without_a_valid_bearer_token_get_the_real_401_status(kube):
    # The authentication filter answers apimachinery's NewUnauthorized("Unauthorized"); with
    # anonymous auth off that covers /version and discovery too.
    expected = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    for path in ("/api/v1/namespaces", "/version", "/apis"):
        assert call(kube, "GET", path) == (401, expected), path
    assert call(kube, "GET", "/api/v1/namespaces", token="not-a-token") == (401, expected)
    assert call(kube, "GET", "/api/v1/namespaces", headers={"Authorization": "Basic YTpi"}) == (401, expected)
    status, _ = call(kube, "GET", "/api/v1/namespaces", token=kube.admin_token)
    assert status == 200
    assert [r.status for r in kube.requests][-1] == 200 and kube.requests[-1].user == "kubernetes-admin"


def test_plain_http_is_not_served_on_a_tls_port(kube):
    plain = "http://" + kube.url.removeprefix("https://")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(plain + "/version", timeout=5)


def test_official_client_from_the_admin_kubeconfig(kube, admin_api, tmp_path):
    written = yaml.safe_load((tmp_path / "kubeconfig").read_text())
    cluster = written["clusters"][0]["cluster"]
    assert cluster["server"].startswith("https://127.0.0.1:")
    assert base64.b64decode(cluster["certificate-authority-data"]) == kube.ca_pem
    core = client.CoreV1Api(admin_api)
    assert "default" in [ns.metadata.name for ns in core.list_namespace().items]
    review = client.AuthenticationV1Api(admin_api).create_self_subject_review(
        client.V1SelfSubjectReview(metadata=client.V1ObjectMeta())
    )
    assert review.status.user_info.username == "kubernetes-admin"
    assert review.status.user_info.groups == ["system:masters", "system:authenticated"]


def test_service_account_volume_is_laid_out_like_the_kubelets(kube, sa_dir):
    assert sorted(p.name for p in sa_dir.iterdir() if not p.name.startswith("..")) == ["ca.crt", "namespace", "token"]
    for name in ("ca.crt", "namespace", "token"):
        assert os.readlink(sa_dir / name) == f"..data/{name}", "visible files are symlinks through ..data"
    assert (sa_dir / "..data").is_symlink() and os.readlink(sa_dir / "..data").startswith("..")
    assert (sa_dir / "namespace").read_text() == "bridge"
    assert (sa_dir / "ca.crt").read_bytes() == kube.ca_pem
    account = kube.store.get("serviceaccounts", "bridge", "bridge")
    claims = jwt.decode((sa_dir / "token").read_text(), options={"verify_signature": False})
    assert claims["sub"] == "system:serviceaccount:bridge:bridge"
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "bridge", "uid": account["metadata"]["uid"]}
    assert claims["iss"] == claims["aud"][0] == "https://kubernetes.default.svc.cluster.local"
    assert jwt.get_unverified_header((sa_dir / "token").read_text())["alg"] == "RS256"


def test_official_in_cluster_client_authenticates_as_the_service_account(kube, sa_dir):
    grant_service_list(kube)
    with in_cluster_client(kube, sa_dir) as api_client:
        core = client.CoreV1Api(api_client)
        assert [s.metadata.name for s in core.list_service_for_all_namespaces().items] == []
        with pytest.raises(ApiException) as denied:
            core.list_namespace()
        assert denied.value.status == 403
        body = json.loads(denied.value.body)
        assert body["message"] == (
            'namespaces is forbidden: User "system:serviceaccount:bridge:bridge" cannot list resource '
            '"namespaces" in API group "" at the cluster scope'
        )
        review = client.AuthenticationV1Api(api_client).create_self_subject_review(
            client.V1SelfSubjectReview(metadata=client.V1ObjectMeta())
        )
    assert review.status.user_info.groups == [
        "system:serviceaccounts",
        "system:serviceaccounts:bridge",
        "system:authenticated",
    ]


def test_service_account_token_stops_working_when_its_account_is_deleted(kube, sa_dir):
    token = (sa_dir / "token").read_text()
    assert call(kube, "GET", "/version", token=token)[0] == 200
    kube.store.delete("serviceaccounts", "bridge", "bridge")
    assert call(kube, "GET", "/version", token=token)[0] == 401
    # A new account of the same name has a new UID: the old token names the old one.
    kube.store.create("serviceaccounts", "bridge", {"metadata": {"name": "bridge"}})
    assert call(kube, "GET", "/version", token=token)[0] == 401


# --- rotation ------------------------------------------------------------------------------


def test_rotation_rewrites_the_token_and_retires_the_old_one_after_the_grace_period(kube, clock, sa_dir):
    old = (sa_dir / "token").read_text()
    old_version = os.readlink(sa_dir / "..data")
    assert kube.rotate_service_account_tokens() == 1
    new = (sa_dir / "token").read_text()
    assert new != old
    assert os.readlink(sa_dir / "..data") != old_version, "a new version directory, swapped in by rename"
    assert not (sa_dir / old_version).exists(), "the previous version is cleaned up"
    assert call(kube, "GET", "/version", token=new)[0] == 200
    clock.advance(29)
    assert call(kube, "GET", "/version", token=old)[0] == 200, "inside the 30 s grace period"
    clock.advance(1)
    assert call(kube, "GET", "/version", token=old)[0] == 401
    assert call(kube, "GET", "/version", token=new)[0] == 200


def test_in_cluster_client_follows_a_rotation_with_zero_grace(kube, sa_dir):
    # The official client re-reads the token file when its cached token expires (once a minute);
    # a new ApiClient reads it at once, which is what this exercises.
    grant_service_list(kube)
    with in_cluster_client(kube, sa_dir) as before:
        client.CoreV1Api(before).list_service_for_all_namespaces()
        kube.rotate_service_account_tokens(sa_dir, grace_seconds=0)
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(before).list_service_for_all_namespaces()
        assert refused.value.status == 401
    with in_cluster_client(kube, sa_dir) as after:
        assert client.CoreV1Api(after).list_service_for_all_namespaces().items == []


def test_rotation_through_the_admin_endpoint(kube, sa_dir):
    old = (sa_dir / "token").read_text()
    status, body = call(kube, "POST", "/_admin/rotate-token", body={"directory": str(sa_dir), "graceSeconds": 0})
    assert (status, body) == (200, {"rotated": 1})
    assert call(kube, "GET", "/version", token=old)[0] == 401
    assert call(kube, "GET", "/version", token=(sa_dir / "token").read_text())[0] == 200
    status, body = call(kube, "POST", "/_admin/rotate-token", body={"directory": "/nonexistent"})
    assert status == 400 and "no service-account volume" in body["message"]


# --- TokenReview ---------------------------------------------------------------------------


def test_token_review_validates_service_account_jwts(kube, sa_dir):
    token = (sa_dir / "token").read_text()
    account = kube.store.get("serviceaccounts", "bridge", "bridge")
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    status, body = call(kube, "POST", TOKEN_REVIEWS, token=kube.admin_token, body=review)
    assert status == 201
    assert body["status"] == {
        "authenticated": True,
        "user": {
            "username": "system:serviceaccount:bridge:bridge",
            "uid": account["metadata"]["uid"],
            "groups": ["system:serviceaccounts", "system:serviceaccounts:bridge", "system:authenticated"],
        },
        "audiences": ["https://kubernetes.default.svc.cluster.local"],
    }
    review["spec"] = {"token": "garbage"}
    status, body = call(kube, "POST", TOKEN_REVIEWS, token=kube.admin_token, body=review)
    assert status == 201 and "authenticated" not in body["status"] and body["status"]["user"] == {}
    assert body["status"]["error"].startswith("[invalid bearer token")
    review["spec"] = {"token": token, "audiences": ["consul"]}
    _, body = call(kube, "POST", TOKEN_REVIEWS, token=kube.admin_token, body=review)
    assert "authenticated" not in body["status"] and "audiences" in body["status"]["error"]


def test_token_review_needs_rbac_create_on_tokenreviews(kube, sa_dir):
    token = (sa_dir / "token").read_text()
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    status, body = call(kube, "POST", TOKEN_REVIEWS, token=token, body=review)
    assert status == 403
    assert body["message"] == (
        'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:bridge:bridge" cannot '
        'create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope'
    )
    # What the Consul auth method's reviewer account is given (system:auth-delegator's rule).
    kube.load_manifests(
        """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: token-reviewer}
rules:
- {apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bridge-token-reviewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: token-reviewer}
subjects: [{kind: ServiceAccount, name: bridge, namespace: bridge}]
"""
    )
    status, body = call(kube, "POST", TOKEN_REVIEWS, token=token, body=review)
    assert status == 201 and body["status"]["authenticated"] is True


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_server(tmp_path):
    """`bridge fake-k8s --tls` in its own process, with a kubeconfig and a service-account volume."""
    command = [
        sys.executable, "-m", "bridge.cli", "fake-k8s", "--tls",
        "--write-kubeconfig", str(tmp_path / "kubeconfig"),
        "--write-serviceaccount", str(tmp_path / "sa"), "--serviceaccount", "bridge/bridge",
        "--token-grace", "0",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "listening on" in line:
            break
    assert any("listening on https://127.0.0.1:" in line for line in lines), "".join(lines)
    url = lines[-1].split("listening on ", 1)[1].strip()
    yield url, tmp_path
    process.terminate()
    code = process.wait(timeout=10)
    process.stdout.close()
    assert code == 0


def test_cli_serves_tls_writes_kubeconfig_and_service_account_and_rotates(cli_server):
    url, tmp_path = cli_server
    kubeconfig, cache = tmp_path / "kubeconfig", tmp_path / "cache"
    assert "kube-system" in run_kubectl(kubeconfig, cache, "get", "namespaces", "-o", "name").stdout
    whoami = run_kubectl(kubeconfig, cache, "auth", "whoami", "-o", "json").stdout
    assert json.loads(whoami)["status"]["userInfo"]["groups"] == ["system:masters", "system:authenticated"]
    old = (tmp_path / "sa" / "token").read_text()
    context = ssl.create_default_context(cafile=str(tmp_path / "sa" / "ca.crt"))
    request = urllib.request.Request(url + "/version", headers={"Authorization": f"Bearer {old}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert response.status == 200
    rotate = urllib.request.Request(url + "/_admin/rotate-token", data=b"{}", method="POST")
    with urllib.request.urlopen(rotate, context=context, timeout=10) as response:
        assert json.loads(response.read()) == {"rotated": 1}
    eventually(lambda: (tmp_path / "sa" / "token").read_text() != old, what="token rewritten")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=10)
    refused.value.close()
    assert refused.value.code == 401, "--token-grace 0 refuses the old token at once"


def test_cli_refuses_a_service_account_volume_without_tls(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "fake-k8s", "--write-serviceaccount", str(tmp_path), "--serviceaccount",
         "bridge/bridge"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "invalid setting --write-serviceaccount=" in result.stderr and "needs --tls" in result.stderr


def test_watch_over_tls_streams_and_ends_when_the_client_goes(kube, admin_api):
    core = client.CoreV1Api(admin_api)
    stream = watch.Watch()
    events = stream.stream(core.list_namespaced_config_map, "default", timeout_seconds=30)
    kube.store.create("configmaps", "default", {"metadata": {"name": "first"}})
    event = next(events)
    assert (event["type"], event["object"].metadata.name) == ("ADDED", "first")
    assert kube.store.watcher_count() == 1
    stream.stop()
    events.close()  # closes the HTTPS response, and with it the connection
    eventually(lambda: kube.store.watcher_count() == 0, what="the server noticed the TLS client left")


def test_kubectl_create_token_issues_an_expiring_service_account_token(kube, clock, sa_dir, tmp_path):
    kubeconfig, cache = kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "cache"
    token = run_kubectl(kubeconfig, cache, "create", "token", "bridge", "-n", "bridge", "--duration=15m").stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900
    status, body = call(kube, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", token=token,
                        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})  # fmt: skip
    assert (status, body["status"]["userInfo"]["username"]) == (201, "system:serviceaccount:bridge:bridge")
    clock.advance(900)
    assert call(kube, "GET", "/version", token=token)[0] == 401, "refused once expired"
    short = run_kubectl(kubeconfig, cache, "create", "token", "bridge", "-n", "bridge", "--duration=1m", check=False)
    assert short.stderr.strip() == (
        'error: failed to create token: TokenRequest.authentication.k8s.io "bridge" is invalid: '
        "spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
    )
    # Creating tokens is its own permission: `create` on serviceaccounts/token.
    sa_token = (sa_dir / "token").read_text()
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    status, body = call(kube, "POST", "/api/v1/namespaces/bridge/serviceaccounts/bridge/token", token=sa_token,
                        body=request)  # fmt: skip
    assert status == 403
    assert 'cannot create resource "serviceaccounts/token" in API group "" in the namespace "bridge"' in body["message"]
