"""consul-k8s catalog sync's behaviour list, as a table: Service -> Consul registrations.

Each case is one of consul-k8s's `to-consul/resource_test.go` cases (its number a stable
case number, in the order of that file), applied to the Kubernetes API test
server and read back from the Consul test server after the bridge converged. The fixtures
are consul-k8s's: ports http 80->8080 (nodePort 30000) and rpc 8500->2000 (nodePort
30001); endpoints 1.1.1.1 (ready, pod foobar), 2.2.2.2 (ready unset), 3.3.3.3 (not ready);
nodes with ExternalIPs 1.2.3.4 / 2.3.4.5 / 3.4.5.6 and InternalIPs 4.5.6.7 / 5.6.7.8 / 6.7.8.9.

Cases that need other settings run in a bridge of their own; the others share one.
Where we deliberately differ from consul-k8s the case says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import World, converged, endpoint_slice, namespace, service

CLUSTER = "table"
NODE = f"k8s-sync-{CLUSTER}"
PORTS = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
         {"name": "rpc", "port": 8500, "targetPort": 2000, "protocol": "TCP"}]


def node_ports(http: int = 30000) -> list[dict[str, Any]]:
    """consul-k8s's nodePorts (30000/30001); other cases in one cluster need their own."""
    return [dict(PORTS[0], nodePort=http), dict(PORTS[1], nodePort=http + 1)]

PODS = ("1.1.1.1", "2.2.2.2", "3.3.3.3")
SLICE_PORTS = [{"name": "http", "port": 8080, "protocol": "TCP"},
               {"name": "rpc", "port": 2000, "protocol": "TCP"}]


def fixture_endpoints(ns: str) -> list[dict[str, Any]]:
    return [
        {"addresses": ["1.1.1.1"], "conditions": {"ready": True}, "nodeName": "node1",
         "zone": "us-west-2a", "targetRef": {"kind": "Pod", "name": "foobar", "namespace": ns}},
        {"addresses": ["2.2.2.2"], "conditions": {}, "nodeName": "node2", "zone": "us-west-2b"},
        {"addresses": ["3.3.3.3"], "conditions": {"ready": False}, "nodeName": "node3",
         "zone": "us-west-2c"},
    ]


def nodes(external_first: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, (ext, internal) in enumerate([("1.2.3.4", "4.5.6.7"), ("2.3.4.5", "5.6.7.8"),
                                          ("3.4.5.6", "6.7.8.9")], start=1):
        addresses = [{"type": "InternalIP", "address": internal}]
        if not (external_first and i == 1):
            addresses.append({"type": "ExternalIP", "address": ext})
        out.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node{i}"},
                    "status": {"addresses": addresses}})
    return out


def lb_status(*entries: dict[str, str]) -> dict[str, Any]:
    return {"loadBalancer": {"ingress": list(entries)}}


def svc(name: str, ns: str, **kw: Any) -> list[dict[str, Any]]:
    """A selector-less Service with consul-k8s's fixture slice (so readiness can be unset)."""
    status = kw.pop("status", None)
    with_slice = kw.pop("with_slice", True)
    body = service(name, ns, ports=kw.pop("ports", PORTS), **kw)
    if status:
        body["status"] = status
    objs = [body]
    if with_slice:
        objs.append(endpoint_slice(name, ns, fixture_endpoints(ns), SLICE_PORTS))
    return objs


def ingress(name: str, ns: str, service: str, host: str, *, path: str = "/",
            tls_hosts: tuple[str, ...] = (), lb_ip: str = "") -> dict[str, Any]:
    """An Ingress with one rule, host -> path -> service:8080, as consul-k8s's addIngress."""
    body: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"rules": [{"host": host, "http": {"paths": [{
            "path": path, "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": 8080}}}}]}}]},
    }
    if tls_hosts:
        body["spec"]["tls"] = [{"hosts": list(tls_hosts), "secretName": f"{name}-tls"}]
    if lb_ip:
        body["status"] = {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}
    return body


def sid(name: str, address: str) -> str:
    return f"{name}-{hashlib.sha1(f'{name}-{address}'.encode()).hexdigest()[:12]}"


@dataclass
class Case:
    id: str
    objects: list[dict[str, Any]]
    # Expected registrations: (Consul service name, address, port) plus optional fields.
    expect: list[dict[str, Any]]
    names: tuple[str, ...] = ()  # the Consul names this case may produce (to find extras)
    flags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = tuple(sorted({e["name"] for e in self.expect}))


def reg(name: str, address: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "address": address, "port": port, **extra}


def A(value: str) -> dict[str, str]:
    return {"consul.hashicorp.com/" + value.split("=", 1)[0]: value.split("=", 1)[1]}


def cases() -> list[Case]:
    c: list[Case] = []
    ns = "rt"
    ingress3 = lb_status({"ip": "5.5.5.5"}, {"ip": "6.6.6.6"}, {"ip": "7.7.7.7"})
    c.append(Case("02-weight-ingress", svc("weight-lb", ns, type="LoadBalancer", ports=PORTS,
                                           status=ingress3, annotations=A("service-weight=22")),
                  [reg("weight-lb", ip, 80, weight=22) for ip in ("5.5.5.5", "6.6.6.6", "7.7.7.7")]))
    c.append(Case("03-weight-external-ip",
                  svc("weight-ext", ns, type="LoadBalancer", ports=PORTS, status=ingress3,
                      externalIPs=["3.3.3.3", "4.4.4.4"], annotations=A("service-weight=22")),
                  [reg("weight-ext", ip, 80, weight=22) for ip in ("3.3.3.3", "4.4.4.4")]))
    c.append(Case("05-default-enable", svc("enabled", ns), [
        reg("enabled", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]))
    c.append(Case("06-default-enable-disable", svc("disabled", ns, annotations=A("service-sync=false")),
                  [], names=("disabled",)))
    c.append(Case("07-default-disable", svc("opt-in-missing", "optin"), [], names=("opt-in-missing",),
                  flags={"kubernetes.default_sync": False}))
    c.append(Case("08-default-disable-enable",
                  svc("opt-in", "optin", annotations=A("service-sync=t")),
                  [reg("opt-in", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")],
                  flags={"kubernetes.default_sync": False}))
    c.append(Case("10-namespace-suffix", svc("foo", "suffix"),
                  [reg("foo-suffix", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")],
                  flags={"sync.add_namespace_suffix": True}))
    c.append(Case("11-prefix-then-suffix", svc("foo", "suffixprefix"),
                  [reg("prefixfoo-suffixprefix", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")],
                  flags={"sync.add_namespace_suffix": True, "sync.service_prefix": "prefix"}))
    c.append(Case("13-name-annotation-wins-over-suffix",
                  svc("foo2", "suffix", annotations=A("service-name=bar")),
                  [reg("bar", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")],
                  names=("bar", "bar-suffix", "foo2-suffix"), flags={"sync.add_namespace_suffix": True}))
    c.append(Case("14-external-ip", svc("ext", ns, externalIPs=["10.0.0.1", "10.0.0.2"]),
                  [reg("ext", ip, 80) for ip in ("10.0.0.1", "10.0.0.2")]))
    c.append(Case("14-external-ip-prefix", svc("ext", "prefixed", externalIPs=["10.0.0.3", "10.0.0.4"]),
                  [reg("prefixext", ip, 80) for ip in ("10.0.0.3", "10.0.0.4")],
                  flags={"sync.service_prefix": "prefix"}))
    c.append(Case("15-lb-multi-ingress",
                  svc("lb", ns, type="LoadBalancer", ports=PORTS,
                      status=lb_status({"ip": "8.8.8.1"}, {"ip": "8.8.8.2"})),
                  [reg("lb", "8.8.8.1", 80), reg("lb", "8.8.8.2", 80)]))
    c.append(Case("15-lb-hostname",
                  svc("lbhost", ns, type="LoadBalancer", ports=PORTS,
                      status=lb_status({"hostname": "lb.example.com"})),
                  [reg("lbhost", "lb.example.com", 80)]))
    c.append(Case("16-lb-annotated-name",
                  svc("lbname", ns, type="LoadBalancer", ports=PORTS,
                      status=lb_status({"ip": "8.8.8.3"}), annotations=A("service-name=lbbar")),
                  [reg("lbbar", "8.8.8.3", 80)], names=("lbbar", "lbname")))
    c.append(Case("17-lb-port-meta",
                  svc("lbport", ns, type="LoadBalancer", ports=PORTS, status=lb_status({"ip": "8.8.8.4"})),
                  [reg("lbport", "8.8.8.4", 80, meta={"port-http": "80", "port-rpc": "8500"})]))
    c.append(Case("18-lb-annotated-port",
                  svc("lbrpc", ns, type="LoadBalancer", ports=PORTS, status=lb_status({"ip": "8.8.8.5"}),
                      annotations=A("service-port=rpc")),
                  [reg("lbrpc", "8.8.8.5", 8500)]))
    c.append(Case("19-lb-annotated-tags",
                  svc("lbtags", ns, type="LoadBalancer", ports=PORTS, status=lb_status({"ip": "8.8.8.6"}),
                      annotations=A(r"service-tags=one, two,,\,leadingcomma,trailingcomma\,,middle\,comma")),
                  [reg("lbtags", "8.8.8.6", 80,
                       tags=["k8s", "one", "two", ",leadingcomma", "trailingcomma,", "middle,comma"])]))
    c.append(Case("20-lb-annotated-meta",
                  svc("lbmeta", ns, type="LoadBalancer", ports=PORTS, status=lb_status({"ip": "8.8.8.7"}),
                      annotations=A("service-meta-foo=bar")),
                  [reg("lbmeta", "8.8.8.7", 80, meta={"foo": "bar"})]))
    c.append(Case("21-lb-register-endpoints",
                  svc("lbep", "lbep", type="LoadBalancer", ports=PORTS, status=lb_status({"ip": "8.8.8.8"})),
                  [reg("lbep", "1.1.1.1", 8080, meta={"external-k8s-topology-zone": "us-west-2a"}),
                   reg("lbep", "2.2.2.2", 8080), reg("lbep", "3.3.3.3", 8080)],
                  flags={"sync.lb_endpoints": True}))
    node_ext = [("1.2.3.4", "1.1.1.1", "us-west-2a"), ("2.3.4.5", "2.2.2.2", "us-west-2b"),
                ("3.4.5.6", "3.3.3.3", "us-west-2c")]
    c.append(Case("22-node-port-external-only",
                  svc("np", ns, type="NodePort", ports=node_ports()),
                  [reg("np", node, 30000, id_address=pod,
                       meta={"external-k8s-topology-zone": zone}) for node, pod, zone in node_ext]))
    c.append(Case("23-node-port-prefix", svc("np", "npprefix", type="NodePort", ports=node_ports()),
                  [reg("prefixnp", node, 30000, id_address=pod) for node, pod, _ in node_ext],
                  flags={"sync.service_prefix": "prefix"}))
    single = svc("npsingle", ns, type="NodePort", ports=node_ports(30010), with_slice=False)
    single.append(endpoint_slice("npsingle", ns, fixture_endpoints(ns)[:1], SLICE_PORTS))
    c.append(Case("24-node-port-single-endpoint", single,
                  [reg("npsingle", "1.2.3.4", 30010, id_address="1.1.1.1")]))
    c.append(Case("25-node-port-annotated-port",
                  svc("nprpc", ns, type="NodePort", ports=node_ports(30020), annotations=A("service-port=rpc")),
                  [reg("nprpc", node, 30021, id_address=pod) for node, pod, _ in node_ext]))
    c.append(Case("26-node-port-unnamed-port",
                  svc("npunnamed", ns, type="NodePort", ports=[{"port": 80, "targetPort": 8080,
                                                                   "nodePort": 30002}]),
                  [reg("npunnamed", node, 30002, id_address=pod) for node, pod, _ in node_ext]))
    c.append(Case("27-node-port-internal-only", svc("npint", "npint", type="NodePort", ports=node_ports()),
                  [reg("npint", node, 30000, id_address=pod)
                   for node, pod in zip(("4.5.6.7", "5.6.7.8", "6.7.8.9"), PODS, strict=True)],
                  flags={"sync.node_port_sync_type": "InternalOnly"}))
    c.append(Case("28-node-port-external-first", svc("npfirst", "npfirst", type="NodePort", ports=node_ports()),
                  [reg("npfirst", node, 30000, id_address=pod)
                   for node, pod in zip(("4.5.6.7", "2.3.4.5", "3.4.5.6"), PODS, strict=True)],
                  flags={"sync.node_port_sync_type": "ExternalFirst", "_external_first_nodes": True}))
    c.append(Case("29-cluster-ip-pod-addresses", svc("cip", ns),
                  [reg("cip", ip, 8080, meta={"external-k8s-topology-zone": zone})
                   for ip, zone in (("1.1.1.1", "us-west-2a"), ("2.2.2.2", "us-west-2b"),
                                    ("3.3.3.3", "us-west-2c"))]))
    # 30: consul-k8s marks ready=unset critical; the API defines unset as ready, and so do we.
    c.append(Case("30-cluster-ip-health-check", svc("ciphealth", ns),
                  [reg("ciphealth", "1.1.1.1", 8080, check="passing"),
                   reg("ciphealth", "2.2.2.2", 8080, check="passing"),
                   reg("ciphealth", "3.3.3.3", 8080, check="critical")]))
    c.append(Case("31-cluster-ip-prefix", svc("cip", "cipprefix"),
                  [reg("prefixcip", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")],
                  flags={"sync.service_prefix": "prefix"}))
    c.append(Case("32-cluster-ip-annotated-port-name", svc("ciprpc", ns, annotations=A("service-port=rpc")),
                  [reg("ciprpc", ip, 2000) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]))
    c.append(Case("33-cluster-ip-annotated-port-number", svc("cip4141", ns, annotations=A("service-port=4141")),
                  [reg("cip4141", ip, 4141) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]))
    unnamed = svc("cipunnamed", ns, ports=[{"port": 80, "targetPort": 8080}], with_slice=False)
    unnamed.append(endpoint_slice("cipunnamed", ns, fixture_endpoints(ns), [{"port": 8080, "protocol": "TCP"}]))
    c.append(Case("34-cluster-ip-unnamed-ports", unnamed,
                  [reg("cipunnamed", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]))
    c.append(Case("35-cluster-ip-sync-disabled", svc("cipoff", "cipoff"), [], names=("cipoff",),
                  flags={"sync.cluster_ip_services": False}))
    c.append(Case("36-cluster-ip-all-namespaces", svc("cipother", "test-namespace"),
                  [reg("cipother", ip, 8080, meta={"external-k8s-ns": "test-namespace"})
                   for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]))
    named_target = svc("ciptarget", ns, ports=[dict(PORTS[0], targetPort="http"), dict(PORTS[1], targetPort="rpc")],
                       annotations=A("service-port=rpc"))
    c.append(Case("37-cluster-ip-named-target-port", named_target,
                  [reg("ciptarget", ip, 2000) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]))
    c.append(Case("38-target-ref-in-meta", svc("cipref", ns),
                  [reg("cipref", "1.1.1.1", 8080, meta={"external-k8s-ref-name": "foobar",
                                                        "external-k8s-ref-kind": "Pod",
                                                        "external-k8s-node-name": "node1"}),
                   reg("cipref", "2.2.2.2", 8080, meta={"external-k8s-node-name": "node2"},
                       absent=["external-k8s-ref-name", "external-k8s-ref-kind"]),
                   reg("cipref", "3.3.3.3", 8080)]))
    allow = [("39-allow-empty", [], [], []), ("39-allow-foo", ["nsfoo"], [], ["nsfoo"]),
             ("39-allow-and-deny-foo", ["nsfoo"], ["nsfoo"], []),
             ("39-allow-foo-bar-deny-foo", ["nsfoo", "nsbar"], ["nsfoo"], ["nsbar"]),
             ("39-allow-star", ["*"], [], ["nsfoo", "nsbar"]),
             ("39-allow-star-deny-bar", ["*"], ["nsbar"], ["nsfoo"])]
    for case_id, allowed, denied, synced in allow:
        name = f"ad{case_id.split('-', 1)[1].replace('-', '')}"
        objs = svc(name, "nsfoo") + svc(name, "nsbar", with_slice=False)
        objs.append(endpoint_slice(name, "nsbar", [{"addresses": ["9.9.9.9"], "conditions": {"ready": True}}],
                                   SLICE_PORTS))
        addresses = {"nsfoo": ["1.1.1.1", "2.2.2.2", "3.3.3.3"], "nsbar": ["9.9.9.9"]}
        c.append(Case(case_id, objs, [reg(name, ip, 8080, meta={"external-k8s-ns": n})
                                      for n in synced for ip in addresses[n]], names=(name,),
                      flags={"kubernetes.namespaces": allowed or ["-none-"], "kubernetes.deny_namespaces": denied,
                             "_group": case_id}))
    # 42 addIngress: a Service behind an Ingress path "/" is registered once, at the host (or
    # the Ingress's LB IP) on 80, or 443 when a TLS entry lists the host; the meta and check
    # are those of the first endpoint (1.1.1.1, ready, pod foobar).
    def behind(name: str, ns: str, **kw: Any) -> list[dict[str, Any]]:
        return [*svc(name, ns), ingress(name, ns, name, f"{name}.host.consul", **kw)]

    on = {"sync.ingress": True}
    lb_on = {"sync.ingress": True, "sync.ingress_lb_ips": True}
    at_ingress = {"check": "passing", "meta": {"external-k8s-ref-name": "foobar"}}
    c.append(Case("42-ingress-host-port-80", behind("ing80", "ingress", tls_hosts=("test.other.consul",)),
                  [reg("ing80", "ing80.host.consul", 80, **at_ingress)], flags=on))
    c.append(Case("42-ingress-tls-host-port-443",
                  behind("ing443", "ingress", tls_hosts=("ing443.host.consul",)),
                  [reg("ing443", "ing443.host.consul", 443, **at_ingress)], flags=on))
    c.append(Case("42-ingress-path-not-root", behind("ingfoo", "ingress", path="/foo"),
                  [reg("ingfoo", ip, 8080) for ip in PODS], flags=on))
    c.append(Case("42-ingress-lb-ip-port-80",
                  behind("inglb80", "ingresslb", tls_hosts=("test.other.consul",), lb_ip="1.2.3.4"),
                  [reg("inglb80", "1.2.3.4", 80, **at_ingress)], flags=lb_on))
    c.append(Case("42-ingress-lb-ip-port-443",
                  behind("inglb443", "ingresslb", tls_hosts=("inglb443.host.consul",), lb_ip="1.2.3.4"),
                  [reg("inglb443", "1.2.3.4", 443, **at_ingress)], flags=lb_on))
    c.append(Case("42-ingress-disabled", behind("ingoff", "ingressoff"),
                  [reg("ingoff", ip, 8080) for ip in PODS]))
    c.append(Case("43-name-annotation-trimmed", svc("trim", ns, annotations=A("service-name=  trimmed  ")),
                  [reg("trimmed", ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")],
                  names=("trimmed", "trim")))
    c.append(Case("43-name-annotation-blank-is-invalid", svc("blank", ns, annotations=A("service-name=   ")),
                  [], names=("blank", "")))
    c.append(Case("43-name-annotation-255-ok", svc("long255", ns, annotations=A("service-name=" + "a" * 255)),
                  [reg("a" * 255, ip, 8080) for ip in ("1.1.1.1", "2.2.2.2", "3.3.3.3")]))
    c.append(Case("43-name-annotation-256-invalid",
                  svc("long256", ns, annotations=A("service-name=" + "b" * 256)), [],
                  names=("long256", "b" * 256)))
    return c


CASES = cases()


def _group_key(case: Case) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in case.flags.items()))


def start_world(members: list[Case], tmp_path: Path) -> World:
    """A world holding every object of `members` (cases sharing one settings group), with a
    bridge on their settings, converged."""
    world = World(tmp_path)
    try:
        world.apply(nodes(external_first=bool(members[0].flags.get("_external_first_nodes"))))
        for member in members:
            for obj in member.objects:
                ns = obj["metadata"].get("namespace")
                if ns and ns not in ("default", "kube-system", "kube-public"):
                    world.apply([namespace(ns)])
            world.apply(member.objects)
        flags = {k: v for k, v in members[0].flags.items() if not k.startswith("_")}
        app = world.start_bridge(CLUSTER, **{k.replace(".", "__"): v for k, v in flags.items()})
        converged(app)
    except BaseException:
        world.close()
        raise
    return world


def settings_group(number: int, members: list[Case]) -> type:
    """A test class for one settings group: its class-scoped world lives while its cases run,
    and is stopped before the next group's starts (so one bridge runs at a time)."""

    class Group:
        @pytest.fixture(scope="class")
        def world(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
            world = start_world(members, tmp_path_factory.mktemp("world"))
            yield world
            world.close()

        @pytest.mark.parametrize("case", members, ids=[c.id for c in members])
        def test_consul_k8s_behaviour(self, case: Case, world: World) -> None:
            check_case(case, world)

    Group.__name__ = Group.__qualname__ = f"TestSettings{number:02d}"
    Group.__doc__ = f"Cases run with {members[0].flags or 'the default settings'}."
    return Group


GROUPS: dict[Any, list[Case]] = {}
for _case in CASES:
    GROUPS.setdefault(_group_key(_case), []).append(_case)
for _number, _members in enumerate(GROUPS.values()):
    _group = settings_group(_number, _members)
    globals()[_group.__name__] = _group


def check_case(case: Case, world: World) -> None:
    regs = [r for r in world.registrations(NODE).values() if r["Service"] in case.names]
    got = sorted((r["Service"], r["Address"], r["Port"]) for r in regs)
    want = sorted((e["name"], e["address"], e["port"]) for e in case.expect)
    assert got == want, f"{case.id}: registrations {got}, expected {want}"
    by_address = {(r["Service"], r["Address"]): r for r in regs}
    for e in case.expect:
        r = by_address[(e["name"], e["address"])]
        assert r["Tags"][0] == "k8s", f"{case.id}: the ownership tag comes first: {r['Tags']}"
        assert r["Meta"]["bridge-owner"] == CLUSTER and r["Meta"]["external-source"] == "kubernetes"
        if "weight" in e:
            assert r["Weights"]["Passing"] == e["weight"], f"{case.id}: weights {r['Weights']}"
        if "tags" in e:
            assert r["Tags"] == e["tags"], f"{case.id}: tags {r['Tags']}"
        for key, value in e.get("meta", {}).items():
            assert r["Meta"].get(key) == value, f"{case.id}: meta {key}={r['Meta'].get(key)!r}, want {value!r}"
        for key in e.get("absent", []):
            assert key not in r["Meta"], f"{case.id}: meta {key} should be absent"
        if "check" in e:
            statuses = list(r["_checks"].values())
            assert statuses == [e["check"]], f"{case.id}: checks {r['_checks']}"
        # consul-k8s's ID: <name>-<sha1(name-address)[:12]>, from the pod IP for NodePort.
        expected_id = sid(e["name"], e.get("id_address", e["address"]))
        assert r["ID"] == expected_id, f"{case.id}: service ID {r['ID']}, expected {expected_id}"
