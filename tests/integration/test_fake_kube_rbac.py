"""RBAC in the TLS fake kube-apiserver, checked against the upstream rules it ports.

Upstream sources the expectations come from:
- `plugin/pkg/auth/authorizer/rbac/rbac.go` (RuleAllows: verb, API group, resource or
  `resource/subresource`, resourceNames; non-resource URLs) and the rule resolver
  `pkg/registry/rbac/validation/rule.go` (ClusterRoleBindings apply everywhere, RoleBindings
  in their namespace; a ServiceAccount subject without a namespace means the binding's; a
  missing role becomes the denial's "RBAC: ..." reason);
- `pkg/apis/rbac/v1/evaluation_helpers.go` (`*` matches any verb, group, resource;
  `*/status` matches any status subresource; `/apis/*` matches by prefix);
- `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`
  (forbiddenMessage: `User %q cannot %s resource %q in API group %q at the cluster scope` /
  `... in the namespace %q`, wrapped by apimachinery's NewForbidden as
  `<resource>[.<group>] ["<name>"] is forbidden: ...`, details {name, group, kind});
- `staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go` (verbs from the URL);
- `staging/src/k8s.io/apiserver/pkg/endpoints/filters/impersonation.go`.
"""

import pytest

from bridge.testing.kube import KubeAPIServer
from bridge.testing.kube.rbac import rule_allows
from bridge.testing.kube.requestinfo import Attributes, request_attributes
from tests.integration.test_fake_kube_auth import call, run_kubectl

SA = "system:serviceaccount:bridge:bridge"


@pytest.fixture
def kube():
    server = KubeAPIServer(seed=6, tls=True)
    server.start()
    server.load_manifests(
        """
apiVersion: v1
kind: Namespace
metadata: {name: bridge}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bridge, namespace: bridge}
"""
    )
    yield server
    server.stop()


@pytest.fixture
def sa_token(kube):
    return kube.service_account_token("bridge", "bridge")


def grant(kube, *manifests):
    kube.load_manifests("\n---\n".join(manifests))


def role(kind, name, rules, namespace=None):
    ns = f", namespace: {namespace}" if namespace else ""
    return f"apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\nrules: {rules}\n"


def binding(kind, name, role_kind, role_name, subjects, namespace=None):
    ns = f", namespace: {namespace}" if namespace else ""
    return (
        f"apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\n"
        f"roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {role_kind}, name: {role_name}}}\n"
        f"subjects: {subjects}\n"
    )


SA_SUBJECT = "[{kind: ServiceAccount, name: bridge, namespace: bridge}]"


# --- the matchers (evaluation_helpers.go) ---------------------------------------------------


def attrs(verb, resource, *, group="", namespace="", subresource="", name=""):
    return Attributes(verb, True, api_group=group, namespace=namespace, resource=resource, subresource=subresource,
                      name=name)  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "request_", "allowed"),
    [
        ({"verbs": ["list"], "apiGroups": [""], "resources": ["services"]}, attrs("list", "services"), True),
        ({"verbs": ["list"], "apiGroups": [""], "resources": ["services"]}, attrs("watch", "services"), False),
        ({"verbs": ["*"], "apiGroups": [""], "resources": ["services"]}, attrs("deletecollection", "services"), True),
        ({"verbs": ["get"], "apiGroups": ["apps"], "resources": ["services"]}, attrs("get", "services"), False),
        ({"verbs": ["get"], "apiGroups": ["*"], "resources": ["leases"]},
         attrs("get", "leases", group="coordination.k8s.io"), True),
        ({"verbs": ["get"], "apiGroups": [""], "resources": ["*"]}, attrs("get", "pods"), True),
        # A subresource needs `resource/subresource` (or `*/subresource`); the resource alone is not enough.
        ({"verbs": ["update"], "apiGroups": [""], "resources": ["services"]},
         attrs("update", "services", subresource="status"), False),
        ({"verbs": ["update"], "apiGroups": [""], "resources": ["services/status"]},
         attrs("update", "services", subresource="status"), True),
        ({"verbs": ["update"], "apiGroups": [""], "resources": ["*/status"]},
         attrs("update", "pods", subresource="status"), True),
        ({"verbs": ["update"], "apiGroups": [""], "resources": ["services/status"]}, attrs("update", "services"),
         False),
        ({"verbs": ["get"], "apiGroups": [""], "resources": ["services"], "resourceNames": ["web"]},
         attrs("get", "services", name="web"), True),
        ({"verbs": ["get"], "apiGroups": [""], "resources": ["services"], "resourceNames": ["web"]},
         attrs("get", "services", name="db"), False),
        ({"verbs": ["list"], "apiGroups": [""], "resources": ["services"], "resourceNames": ["web"]},
         attrs("list", "services"), False),
    ],
)  # fmt: skip
def test_rule_allows_like_the_rbac_authorizer(rule, request_, allowed):
    assert rule_allows(request_, rule) is allowed


@pytest.mark.parametrize(
    ("urls", "path", "allowed"),
    [
        (["/healthz"], "/healthz", True),
        (["/healthz"], "/healthz/etcd", False),
        (["/apis/*"], "/apis/apps/v1", True),
        (["/apis/*"], "/api/v1", False),
        (["*"], "/anything", True),
    ],
)
def test_non_resource_urls_match_exactly_or_by_star_prefix(urls, path, allowed):
    assert rule_allows(Attributes("get", False, path), {"verbs": ["get"], "nonResourceURLs": urls}) is allowed


def test_request_attributes_follow_requestinfo():
    def of(method, path, query=None):
        a = request_attributes(method, path, query or {})
        return (a.verb, a.api_group, a.namespace, a.resource, a.subresource, a.name)

    assert of("GET", "/api/v1/services") == ("list", "", "", "services", "", "")
    assert of("GET", "/api/v1/namespaces/a/services", {"watch": "true"}) == ("watch", "", "a", "services", "", "")
    assert of("GET", "/api/v1/namespaces/a/services", {"fieldSelector": "metadata.name=web"}) == (
        "list", "", "a", "services", "", "web",
    )  # fmt: skip
    assert of("DELETE", "/api/v1/namespaces/a/services") == ("deletecollection", "", "a", "services", "", "")
    assert of("PUT", "/api/v1/namespaces/a/services/web/status") == ("update", "", "a", "services", "status", "web")
    assert of("PATCH", "/apis/coordination.k8s.io/v1/namespaces/a/leases/l") == (
        "patch", "coordination.k8s.io", "a", "leases", "", "l",
    )  # fmt: skip
    # A namespace is an object in itself: RoleBindings inside it apply to it.
    assert of("GET", "/api/v1/namespaces/a") == ("get", "", "a", "namespaces", "", "a")
    assert not request_attributes("GET", "/apis/apps/v1", {}).resource_request
    assert request_attributes("GET", "/version", {}) == Attributes("get", False, "/version")


# --- denials over HTTP -----------------------------------------------------------------------


def test_denials_carry_the_real_forbidden_status(kube, sa_token):
    status, body = call(kube, "GET", "/api/v1/services", token=sa_token)
    assert (status, body) == (
        403,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'services is forbidden: User "system:serviceaccount:bridge:bridge" cannot list resource '
            '"services" in API group "" at the cluster scope',
            "reason": "Forbidden",
            "details": {"kind": "services"},
            "code": 403,
        },
    )
    _, body = call(kube, "GET", "/api/v1/namespaces/default/services", token=sa_token)
    assert body["message"].endswith('cannot list resource "services" in API group "" in the namespace "default"')
    _, body = call(kube, "PUT", "/apis/coordination.k8s.io/v1/namespaces/bridge/leases/bridge-one", token=sa_token,
                   body={"metadata": {"name": "bridge-one"}})  # fmt: skip
    assert body["message"] == (
        'leases.coordination.k8s.io "bridge-one" is forbidden: User "system:serviceaccount:bridge:bridge" cannot '
        'update resource "leases" in API group "coordination.k8s.io" in the namespace "bridge"'
    )
    assert body["details"] == {"name": "bridge-one", "group": "coordination.k8s.io", "kind": "leases"}
    _, body = call(kube, "PATCH", "/api/v1/namespaces/bridge/services/web/status", token=sa_token, body={},
                   headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
    assert 'cannot patch resource "services/status" in API group ""' in body["message"]
    status, body = call(kube, "GET", "/metrics", token=sa_token)
    assert (status, body["message"], body["details"]) == (
        403, f'forbidden: User "{SA}" cannot get path "/metrics"', {},
    )  # fmt: skip


def test_every_authenticated_user_gets_discovery_and_self_reviews(kube, sa_token):
    for path in ("/version", "/api", "/apis", "/api/v1", "/apis/apps/v1", "/openapi/v3", "/healthz"):
        assert call(kube, "GET", path, token=sa_token)[0] == 200, path


def test_cluster_role_binding_grants_everywhere_role_binding_in_its_namespace(kube, sa_token):
    grant(
        kube,
        role("ClusterRole", "svc-read", "[{apiGroups: [''], resources: [services], verbs: [get, list, watch]}]"),
        binding("ClusterRoleBinding", "bridge-svc-read", "ClusterRole", "svc-read", SA_SUBJECT),
        role("Role", "lease", "[{apiGroups: [coordination.k8s.io], resources: [leases], verbs: ['*']}]", "bridge"),
        binding("RoleBinding", "lease", "Role", "lease", "[{kind: ServiceAccount, name: bridge}]", "bridge"),
        # A RoleBinding to a ClusterRole grants its rules in the binding's namespace only.
        role("ClusterRole", "cm-read", "[{apiGroups: [''], resources: [configmaps], verbs: [list]}]"),
        binding("RoleBinding", "cm", "ClusterRole", "cm-read", SA_SUBJECT, "apps"),
    )
    assert call(kube, "GET", "/api/v1/services", token=sa_token)[0] == 200
    assert call(kube, "GET", "/api/v1/namespaces/apps/services", token=sa_token)[0] == 200
    lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}}
    path = "/apis/coordination.k8s.io/v1/namespaces/{}/leases"
    assert call(kube, "POST", path.format("bridge"), token=sa_token, body=lease)[0] == 201
    assert call(kube, "POST", path.format("apps"), token=sa_token, body=lease)[0] == 403
    assert call(kube, "GET", "/apis/coordination.k8s.io/v1/leases", token=sa_token)[0] == 403, "not cluster-wide"
    assert call(kube, "GET", "/api/v1/namespaces/apps/configmaps", token=sa_token)[0] == 200
    assert call(kube, "GET", "/api/v1/namespaces/bridge/configmaps", token=sa_token)[0] == 403
    assert call(kube, "GET", "/api/v1/configmaps", token=sa_token)[0] == 403


def test_user_and_group_subjects_and_resource_names(kube):
    alice = kube.issue_token("alice", ["team-a"])
    bob = kube.issue_token("bob")
    grant(
        kube,
        role("ClusterRole", "ns-get", "[{apiGroups: [''], resources: [namespaces], verbs: [get], "
             "resourceNames: [apps]}]"),
        binding("ClusterRoleBinding", "team-a", "ClusterRole", "ns-get",
                "[{kind: Group, name: team-a, apiGroup: rbac.authorization.k8s.io}]"),
        role("ClusterRole", "ns-list", "[{apiGroups: [''], resources: [namespaces], verbs: [list]}]"),
        binding("ClusterRoleBinding", "bob", "ClusterRole", "ns-list", "[{kind: User, name: bob}]"),
    )  # fmt: skip
    assert call(kube, "GET", "/api/v1/namespaces/apps", token=alice)[0] == 200
    assert call(kube, "GET", "/api/v1/namespaces/bridge", token=alice)[0] == 403, "not among resourceNames"
    assert call(kube, "GET", "/api/v1/namespaces", token=alice)[0] == 403, "a list has no name to match"
    assert call(kube, "GET", "/api/v1/namespaces", token=bob)[0] == 200
    assert call(kube, "GET", "/api/v1/namespaces/apps", token=bob)[0] == 403
    # The default User subject apiGroup was filled in by rbac/v1 defaulting.
    assert kube.store.get("clusterrolebindings", None, "bob")["subjects"][0]["apiGroup"] == "rbac.authorization.k8s.io"


def test_a_binding_to_a_missing_role_is_the_denials_reason(kube, sa_token):
    grant(kube, binding("ClusterRoleBinding", "dangling", "ClusterRole", "nowhere", SA_SUBJECT))
    _, body = call(kube, "GET", "/api/v1/services", token=sa_token)
    assert body["message"] == (
        f'services is forbidden: User "{SA}" cannot list resource "services" in API group "" at the cluster scope: '
        'RBAC: clusterrole.rbac.authorization.k8s.io "nowhere" not found'
    )


def test_self_subject_access_review_explains_what_allowed_it(kube, sa_token):
    grant(
        kube,
        role("ClusterRole", "svc-read", "[{apiGroups: [''], resources: [services], verbs: [list]}]"),
        binding("ClusterRoleBinding", "bridge-svc-read", "ClusterRole", "svc-read", SA_SUBJECT),
    )
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "list", "resource": "services"}},
    }
    url = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    status, body = call(kube, "POST", url, token=sa_token, body=review)
    assert status == 201
    assert body["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by ClusterRoleBinding "bridge-svc-read" of ClusterRole "svc-read" to '
        'ServiceAccount "bridge/bridge"',
    }
    review["spec"]["resourceAttributes"]["verb"] = "delete"
    assert call(kube, "POST", url, token=sa_token, body=review)[1]["status"] == {"allowed": False}
    review["spec"] = {}
    status, body = call(kube, "POST", url, token=sa_token, body=review)
    assert status == 422 and "exactly one of nonResourceAttributes or resourceAttributes" in body["message"]


def test_impersonation_needs_the_impersonate_verb(kube, sa_token):
    alice = kube.issue_token("alice")
    headers = {"Impersonate-User": SA}
    status, body = call(kube, "GET", "/api/v1/namespaces", token=alice, headers=headers)
    assert (status, body["message"]) == (
        403,
        'serviceaccounts "bridge" is forbidden: User "alice" cannot impersonate resource "serviceaccounts" in API '
        'group "" in the namespace "bridge"',
    )
    _, body = call(kube, "GET", "/api/v1/namespaces", token=alice, headers={"Impersonate-User": "carol"})
    assert body["message"].startswith('users "carol" is forbidden: User "alice" cannot impersonate resource "users"')
    # system:masters may impersonate; the impersonated user is then authorized on its own.
    status, body = call(kube, "GET", "/api/v1/namespaces", token=kube.admin_token, headers=headers)
    assert status == 403
    assert body["message"] == (
        f'namespaces is forbidden: User "{SA}" cannot list resource "namespaces" in API group "" at the cluster scope'
    )
    grant(
        kube,
        role("ClusterRole", "impersonator", "[{apiGroups: [''], resources: [users], verbs: [impersonate]}]"),
        binding("ClusterRoleBinding", "alice-imp", "ClusterRole", "impersonator", "[{kind: User, name: alice}]"),
    )  # fmt: skip
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    status, body = call(kube, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", token=alice, body=review,
                        headers={"Impersonate-User": "carol"})  # fmt: skip
    assert status == 201
    assert body["status"]["userInfo"] == {"username": "carol", "groups": ["system:authenticated"]}


# --- kubectl ------------------------------------------------------------------------------------


RBAC_MANIFEST = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: bridge-read
rules:
- apiGroups: [""]
  resources: [services, namespaces]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: bridge-read
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: bridge-read
subjects:
- kind: ServiceAccount
  name: bridge
  namespace: bridge
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: bridge-write
  namespace: bridge
rules:
- apiGroups: [""]
  resources: [services, services/status]
  verbs: [create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bridge-write
  namespace: bridge
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: bridge-write
subjects:
- kind: ServiceAccount
  name: bridge
"""


def test_kubectl_applies_rbac_and_auth_can_i_answers(kube, tmp_path):
    kubeconfig, cache = kube.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path / "cache"
    manifest = tmp_path / "rbac.yaml"
    manifest.write_text(RBAC_MANIFEST)

    def can_i(*args):
        result = run_kubectl(kubeconfig, cache, "auth", "can-i", *args, "--as", SA, check=False)
        assert result.returncode in (0, 1), result.stderr
        return (result.stdout.strip(), result.returncode)

    assert can_i("list", "services") == ("no", 1)
    applied = run_kubectl(kubeconfig, cache, "apply", "-f", str(manifest)).stdout.splitlines()
    assert applied == [
        "clusterrole.rbac.authorization.k8s.io/bridge-read created",
        "clusterrolebinding.rbac.authorization.k8s.io/bridge-read created",
        "role.rbac.authorization.k8s.io/bridge-write created",
        "rolebinding.rbac.authorization.k8s.io/bridge-write created",
    ]
    assert can_i("list", "services") == ("yes", 0)
    assert can_i("watch", "endpointslices.discovery.k8s.io") == ("yes", 0)
    assert can_i("patch", "services", "--subresource=status", "-n", "bridge") == ("yes", 0)
    assert can_i("patch", "services", "--subresource=status", "-n", "default") == ("no", 1)
    assert can_i("patch", "services", "--subresource=scale", "-n", "bridge") == ("no", 1)
    assert can_i("delete", "namespaces") == ("no", 1)
    assert run_kubectl(kubeconfig, cache, "auth", "can-i", "delete", "namespaces").stdout.strip() == "yes"
    again = run_kubectl(kubeconfig, cache, "apply", "-f", str(manifest)).stdout
    assert again.count("unchanged") == 4, again


def test_kubectl_prints_the_denial_as_with_a_cluster(kube, tmp_path):
    token = kube.service_account_token("bridge", "bridge")
    kubeconfig = kube.write_kubeconfig(tmp_path / "sa-kubeconfig", token=token, namespace="bridge")
    result = run_kubectl(kubeconfig, tmp_path / "cache", "get", "services", "-A", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f'Error from server (Forbidden): services is forbidden: User "{SA}" cannot list resource "services" in API '
        'group "" at the cluster scope'
    )
    result = run_kubectl(kubeconfig, tmp_path / "cache", "create", "configmap", "x", check=False)
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: failed to create configmap: configmaps is forbidden: User "{SA}" cannot create resource '
        '"configmaps" in API group "" in the namespace "bridge"'
    )


# --- escalation prevention (pkg/registry/rbac/*/policybased/storage.go) ----------------------------


def test_nobody_grants_through_rbac_objects_what_they_do_not_hold(kube, sa_token):
    grant(
        kube,
        role("Role", "rbac-writer", "[{apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], "
             "verbs: [create]}, {apiGroups: [''], resources: [services], verbs: [get, list]}]", "bridge"),
        binding("RoleBinding", "rbac-writer", "Role", "rbac-writer", SA_SUBJECT, "bridge"),
    )  # fmt: skip
    roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/bridge/roles"
    wider = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "wider"},
        "rules": [{"apiGroups": [""], "resources": ["services", "secrets"], "verbs": ["get", "delete"]}],
    }
    status, body = call(kube, "POST", roles, token=sa_token, body=wider)
    assert status == 403
    assert body["message"] == (
        'roles.rbac.authorization.k8s.io "wider" is forbidden: user "system:serviceaccount:bridge:bridge" '
        '(groups=["system:serviceaccounts" "system:serviceaccounts:bridge" "system:authenticated"]) is attempting '
        "to grant RBAC permissions not currently held:\n"
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "delete"]}\n'
        '{APIGroups:[""], Resources:["services"], Verbs:["delete"]}'
    )
    held = dict(
        wider, metadata={"name": "held"}, rules=[{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]
    )
    assert call(kube, "POST", roles, token=sa_token, body=held)[0] == 201, "a subset of one's own rules is fine"
    bindings = "/apis/rbac.authorization.k8s.io/v1/namespaces/bridge/rolebindings"
    to_admin = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "to-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "bridge"}],
    }
    status, body = call(kube, "POST", bindings, token=sa_token, body=to_admin)
    assert status == 403 and "is attempting to grant RBAC permissions not currently held" in body["message"]
    # The `bind` verb on the role lets one bind it without holding its rules.
    grant(
        kube,
        role("Role", "binder", "[{apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind], "
             "resourceNames: [cluster-admin]}]", "bridge"),
        binding("RoleBinding", "binder", "Role", "binder", "[{kind: ServiceAccount, name: bridge}]", "bridge"),
    )  # fmt: skip
    assert call(kube, "POST", bindings, token=sa_token, body=to_admin)[0] == 201
    assert call(kube, "GET", "/api/v1/namespaces/bridge/secrets", token=sa_token)[0] == 200, "now bridge-wide admin"
