"""Settings: every knob of the bridge, its default, and the one place they are read.

Longer than our other modules on purpose: it is the one schema (each setting, its default,
its check and its line in `config/bridge.yaml`), and a setting split from its neighbours
would be a setting two files must agree on.

Layers, lowest to highest: the defaults below, a YAML file (`--config`), environment
variables, command-line flags. The result is one frozen `Settings` built at start-up and
passed down; no other module reads the environment. Each field's `why` is the text
`config/bridge.yaml` repeats, and a test keeps the two in step.

Environment: the ecosystem's own variables (`KUBECONFIG`, `CONSUL_HTTP_ADDR`,
`CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
`CONSUL_CLIENT_KEY`, `CONSUL_HTTP_SSL`, `CONSUL_HTTP_SSL_VERIFY`, `CONSUL_TLS_SERVER_NAME`, and the kubelet's
`KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` in a pod, `POD_NAME` from the downward
API) plus `BRIDGE_<SECTION>_<KEY>` for every setting
(`BRIDGE_DNS_TTL=10`, `BRIDGE_CLUSTER_ID=east`). Bridge variables win over ecosystem ones.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from bridge.errors import ConfigError

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _setting(default: Any, why: str, *, secret: bool = False,
             check: Callable[[Any], str | None] | None = None) -> Any:
    """A settings field: default, the one-line reason, and an optional extra check."""
    meta = {"why": why, "secret": secret, "check": check}
    if isinstance(default, list | tuple):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata=meta)
    if isinstance(default, dict):
        # A plain dict (read only by convention): settings are pickled to DNS workers.
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"
    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


def _listen(value: Any) -> str | None:
    try:
        parse_hostport(value)
    except ValueError as exc:
        return str(exc)
    return None


def _dns_label(value: Any) -> str | None:
    return None if _DNS_LABEL.match(value) else "must be a DNS-1123 label (a-z, 0-9, '-')"


def _zone(value: Any) -> str | None:
    labels = value.rstrip(".").split(".")
    if value and all(_DNS_LABEL.match(label) for label in labels):
        return None
    return "must be a DNS name of DNS-1123 labels"


def _networks(value: Any) -> str | None:
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"{text!r} is not an address or network (CIDR)"
    return None


def _forward_zones(value: Any) -> str | None:
    for zone, upstreams in value.items():
        if zone != "." and _zone(zone):
            return f"{zone!r}: {_zone(zone)}"
        if not upstreams:
            return f"{zone!r}: no upstream"
        for upstream in upstreams:
            problem = _upstream(upstream)
            if problem:
                return f"{zone!r}: {problem}"
    return None


def _upstreams(value: Any) -> str | None:
    return next(filter(None, map(_upstream, value)), None)


def _upstream(text: str) -> str | None:
    from bridge.dns.upstream import parse_upstream  # the one reader of HOST[:PORT]

    try:
        parse_upstream(text)
    except ValueError as exc:
        return str(exc)
    return None


def _url(value: Any) -> str | None:
    return None if re.match(r"^https?://[^/\s]+$", value) else "must be http(s)://HOST:PORT"


def parse_hostport(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (all addresses). Port 0 means pick a free one."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", value or "")
    if not match:
        raise ValueError("must be HOST:PORT, [IPv6]:PORT or :PORT")
    host = match.group(1) or match.group(3) or "0.0.0.0"
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0-65535")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError("not an IPv6 address") from exc
    return host, port


@dataclass(frozen=True)
class LogSettings:
    level: str = _setting("info", "how much to log; debug shows every watch event and write",
                          check=_one_of("debug", "info", "warning", "error"))
    format: str = _setting("text", "text for people, json for log collectors",
                           check=_one_of("text", "json"))


@dataclass(frozen=True)
class KubernetesSettings:
    enabled: bool = _setting(True, "watch Kubernetes at all; false for a sidecar that answers "
                                   "from Consul alone and holds no Kubernetes credentials")
    kubeconfig: str = _setting("", "kubeconfig file; empty means in-cluster when running in a "
                                   "pod, else ~/.kube/config (KUBECONFIG is honoured)")
    context: str = _setting("", "kubeconfig context to use; empty means its current-context")
    namespaces: tuple[str, ...] = _setting(["*"], "namespaces synced to Consul, '*' for all "
                                                   "(DNS answers by dns.namespaces)")
    deny_namespaces: tuple[str, ...] = _setting(
        ["kube-system", "kube-public"], "namespaces never synced to Consul; deny wins over "
                                        "allow (DNS still answers them: dns.deny_namespaces)")
    default_sync: bool = _setting(True, "sync every Service unless annotated "
                                        "consul.hashicorp.com/service-sync: 'false'")
    watch_timeout: int = _setting(300, "seconds a watch stays open before it is renewed, so a "
                                       "silently dead connection is noticed", check=_positive)
    in_cluster: bool = _setting(False, "set from KUBERNETES_SERVICE_HOST: use the pod's "
                                       "service account when no kubeconfig is given")
    api_server: str = _setting("", "API server the service account talks to; set from "
                                   "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in a pod",
                               check=lambda v: None if v == "" else _url(v))
    service_account_dir: str = _setting(
        "/var/run/secrets/kubernetes.io/serviceaccount", "where the kubelet mounts the pod's "
        "token, ca.crt and namespace; the token is reread when the kubelet rotates it")


@dataclass(frozen=True)
class ConsulSettings:
    address: str = _setting("http://127.0.0.1:8500", "Consul HTTP API (CONSUL_HTTP_ADDR)",
                            check=_url)
    token: str = _setting("", "ACL token (CONSUL_HTTP_TOKEN); never logged", secret=True)
    token_file: str = _setting("", "file holding the ACL token (CONSUL_HTTP_TOKEN_FILE)")
    ca_cert: str = _setting("", "CA bundle for https (CONSUL_CACERT)")
    client_cert: str = _setting("", "client certificate for mTLS (CONSUL_CLIENT_CERT)")
    client_key: str = _setting("", "client key for mTLS (CONSUL_CLIENT_KEY)", secret=True)
    ssl_verify: bool = _setting(True, "verify the server certificate (CONSUL_HTTP_SSL_VERIFY)")
    tls_server_name: str = _setting("", "name to expect in Consul's certificate (and send as SNI) when "
                                        "the address is not in it, e.g. server.dc1.consul "
                                        "(CONSUL_TLS_SERVER_NAME)")
    auth_method: str = _setting("", "log in through this Consul auth method (type kubernetes) with "
                                    "the service-account token, instead of a fixed token")
    login_bearer_token_file: str = _setting("/var/run/secrets/kubernetes.io/serviceaccount/token",
                                            "the JWT auth_method logs in with, read at each login "
                                            "(the kubelet rotates it)")
    datacenter: str = _setting("", "datacenter to read and write; empty means the agent's")
    wait: int = _setting(300, "seconds a blocking query waits for a change (Consul caps at "
                              "600)", check=_positive)
    stale: bool = _setting(True, "the Consul source's blocking reads may be answered by any server, "
                                 "not the leader alone (?stale): they spread over the servers, and an "
                                 "answer may lag the leader by a few milliseconds")
    cached: bool = _setting(False, "the Consul source's blocking reads go through the agent's cache "
                                   "(?cached): readers on one agent share one query to the servers")


@dataclass(frozen=True)
class SyncSettings:
    to_consul: bool = _setting(True, "mirror Kubernetes Services into the Consul catalog")
    from_consul: bool = _setting(True, "merge services registered in Consul by others into "
                                       "the catalog DNS answers from")
    node_name: str = _setting("", "synthetic Consul node our registrations live on; empty "
                                  "means k8s-sync-<cluster_id>")
    adopt_node: str = _setting("", "consul-k8s catalog sync's node (its -consul-node-name, e.g. "
                                   "k8s-sync): its registrations of the Services we sync are "
                                   "removed once ours are in place; empty: off")
    tag: str = _setting("k8s", "tag on every registration we write (consul-k8s: -consul-k8s-tag)")
    service_prefix: str = _setting("", "prefix for Consul service names (consul-k8s: "
                                       "-k8s-service-prefix)")
    add_namespace_suffix: bool = _setting(False, "append -<namespace> to Consul service names "
                                                 "(consul-k8s: -add-k8s-namespace-suffix)")
    cluster_ip_services: bool = _setting(True, "sync ClusterIP and headless Services (consul-k8s: "
                                               "-sync-clusterip-services)")
    register_cluster_ip: bool = _setting(False, "register a ClusterIP Service's cluster IP instead of "
                                                "its endpoints")
    node_port_sync_type: str = _setting("ExternalOnly", "node address NodePort Services are registered "
                                                        "at (consul-k8s: -node-port-sync-type)",
                                        check=_one_of("ExternalOnly", "InternalOnly", "ExternalFirst"))
    lb_endpoints: bool = _setting(False, "register a LoadBalancer Service's endpoints instead of its "
                                         "ingress (consul-k8s: -sync-lb-services-endpoints)")
    external_name: bool = _setting(False, "register an ExternalName Service with the external name as "
                                          "its address")
    not_ready: str = _setting("critical", "not-ready endpoints: critical registers them with a failing "
                                          "check (as consul-k8s), skip leaves them out",
                              check=_one_of("critical", "skip"))
    ingress: bool = _setting(False, "register Services behind an Ingress at the Ingress host, port 80 "
                                    "or 443 (consul-k8s: -enable-ingress)")
    ingress_lb_ips: bool = _setting(False, "with ingress: use the Ingress load balancer IP instead of "
                                           "the host (consul-k8s: -loadBalancer-ips)")
    upsert_only: bool = _setting(False, "never deregister anything from Consul")
    dry_run: bool = _setting(False, "log the Consul writes that would be made, make none")
    to_k8s: bool = _setting(False, "materialise Consul services in Kubernetes as headless Services "
                                   "with EndpointSlices, so any cluster DNS resolves them")
    admit_warning: bool = _setting(False, "Consul instances whose checks warn still count as healthy "
                                          "(default: passing only)")
    local_wins: bool = _setting(False, "a local Service with endpoints hides Consul instances of the "
                                       "same namespace and name (default: both are answered)")
    consul_namespace: str = _setting("consul", "namespace that Consul services without a "
                                               "Kubernetes origin appear in", check=_dns_label)
    quiet_period: float = _setting(0.02, "seconds without change before a burst is applied",
                                   check=_not_negative)
    max_delay: float = _setting(0.1, "seconds a continuous burst may delay a write at most",
                                check=_positive)
    resync_period: int = _setting(300, "seconds between full resyncs that repair drift",
                                  check=_positive)
    batch_size: int = _setting(64, "operations per Consul transaction; 64 is accepted by every "
                                   "Consul release", check=_positive)
    expire_dead_clusters_after: float = _setting(
        0.0, "seconds after another cluster's bridge lost its claim in Consul that its instances "
             "stop being answered (never more than half of a name's); 0: never",
        check=_not_negative)


@dataclass(frozen=True)
class DnsSettings:
    listen: str = _setting("0.0.0.0:53", "UDP and TCP address DNS is served on", check=_listen)
    zone: str = _setting("cluster.local", "cluster domain answered from the catalog",
                         check=_zone)
    ttl: int = _setting(30, "TTL of positive answers, as in the Kubernetes DNS example",
                        check=_not_negative)
    pods: str = _setting("disabled", "pod records a-b-c-d.<ns>.pod.<zone>: disabled, insecure "
                                     "(answered for any address, as kube-dns did) or verified "
                                     "(only addresses of pods behind Service endpoints)",
                         check=_one_of("disabled", "insecure", "verified"))
    ignore_empty_service: bool = _setting(False, "a ClusterIP Service with no ready endpoint is "
                                                 "NXDOMAIN (CoreDNS ignore empty_service)")
    consul_ttl: int = _setting(0, "TTL of answers in the Consul domain (Consul's service_ttl)",
                               check=_not_negative)
    consul_datacenter: str = _setting("dc1", "datacenter named in Consul-domain SRV targets",
                                      check=_dns_label)
    consul_a_record_limit: int = _setting(0, "at most this many A/AAAA records per Consul answer, "
                                             "picked at random; 0: no limit", check=_not_negative)
    consul_domain: str = _setting("", "also answer <svc>.service.<domain> from Consul's side of "
                                      "the catalog (e.g. consul); empty turns it off",
                                  check=lambda v: None if v == "" else _zone(v))
    namespaces: tuple[str, ...] = _setting(["*"], "namespaces whose Services DNS answers, '*' for "
                                                   "all (what is synced: kubernetes.namespaces)")
    deny_namespaces: tuple[str, ...] = _setting([], "namespaces DNS never answers; deny wins over "
                                                    "allow (kube-system is answered unless listed)")
    upstreams: tuple[str, ...] = _setting([], "resolvers for names outside our zones, HOST[:PORT]; "
                                              "empty means those in resolv_conf, minus ourselves",
                                          check=_upstreams)
    resolv_conf: str = _setting("/etc/resolv.conf", "where the system's resolvers are read from when "
                                                    "no upstreams are set")
    upstream_timeout: float = _setting(2.0, "seconds to wait for an upstream before SERVFAIL",
                                       check=_positive)
    forward_zones: Mapping[str, tuple[str, ...]] = _setting(
        {}, "upstreams per zone, ZONE: [HOST[:PORT], ...]; the most specific zone wins, and "
            "'.' (every other name) is upstreams, else resolv_conf", check=_forward_zones)
    forward_policy: str = _setting("sequential", "order a zone's upstreams are tried in: "
                                                 "sequential (first healthy one first) or random",
                                   check=_one_of("sequential", "random"))
    allow_recursion: tuple[str, ...] = _setting(
        ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
         "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"],
        "client networks whose names outside our zones are forwarded (others get REFUSED "
        "for them); loopback and non-public ranges, so never an open resolver", check=_networks)
    cache_size: int = _setting(10000, "answers from upstreams cached by their TTL, positive "
                                      "and negative; 0 turns the cache off",
                               check=_not_negative)
    serve_stale: int = _setting(3600, "seconds past its TTL a cached answer is still given "
                                      "(TTL 30) when every upstream fails (RFC 8767); 0: never",
                                check=_not_negative)
    rotate: bool = _setting(True, "A/AAAA and SRV records of a headless Service come in a "
                                  "rotating order per query (CoreDNS loadbalance)")
    autopath: bool = _setting(False, "answer a search-path expansion with a CNAME to the name "
                                     "that exists (CoreDNS autopath); needs autopath_namespace "
                                     "or pods: verified")
    autopath_namespace: str = _setting("", "the namespace every client is in (a sidecar: its "
                                           "pod's); empty: the client's pod, by address",
                                       check=lambda v: None if v == "" else _dns_label(v))
    udp_payload: int = _setting(1232, "EDNS0 UDP payload we advertise and cap answers at (the DNS "
                                      "flag day 2020 value)", check=lambda v: None
                                if 512 <= v <= 65535 else "must be 512-65535")
    tcp_idle_timeout: float = _setting(10.0, "seconds an idle TCP connection is kept open",
                                       check=_positive)
    max_tcp_connections: int = _setting(512, "TCP connections served at once; more are refused",
                                        check=_positive)
    ns_addresses: tuple[str, ...] = _setting([], "addresses published for ns.dns.<zone> and the apex "
                                                 "NS glue; empty means the listen address if specific")
    workers: int = _setting(1, "processes that answer DNS, apart from the sync work (each holds "
                               "its own copy of the answers); 0 answers in the main process",
                            check=_not_negative)
    compiled: bool = _setting(True, "answer UDP with the compiled fast path when it was built at "
                                    "install (the same answers, a batch of queries per system "
                                    "call); false: Python alone")


@dataclass(frozen=True)
class HttpSettings:
    listen: str = _setting("0.0.0.0:8080", "address of /healthz, /readyz, /metrics and the operator's /status",
                           check=_listen)


def _session_ttl(value: Any) -> str | None:
    # Consul's session_ttl_min default and its documented upper bound.
    return None if 10 <= value <= 86400 else "must be 10-86400 (Consul's session TTL bounds)"


@dataclass(frozen=True)
class HaSettings:
    enabled: bool = _setting(True, "elect one writer among the replicas with a Lease; every replica "
                                   "answers DNS either way; false: this replica always writes")
    lease_namespace: str = _setting("", "namespace of the Lease bridge-<cluster_id>; empty means the "
                                        "pod's own (service account), else default",
                                    check=lambda v: None if v == "" else _dns_label(v))
    lease_duration: int = _setting(15, "seconds a replica waits without seeing the Lease renewed before "
                                       "it takes the Lease over (client-go's default)", check=_positive)
    renew_deadline: float = _setting(10.0, "seconds the leader may go without a renewal before it stops "
                                           "writing and steps down; below lease_duration (client-go's)",
                                     check=_positive)
    retry_period: float = _setting(2.0, "seconds between attempts to acquire or renew the Lease "
                                        "(client-go's default)", check=_positive)
    identity: str = _setting("", "this replica's name in the Lease; empty means POD_NAME, else "
                                 "<host name>_<pid>")
    session_ttl: int = _setting(15, "TTL of the leader's Consul session, which holds the key "
                                    "bridge/clusters/<cluster_id> naming this cluster",
                                check=_session_ttl)
    lock_delay: int = _setting(15, "seconds Consul keeps that key from a new holder after a session "
                                   "holding it lapsed (Consul's default)", check=_not_negative)


@dataclass(frozen=True)
class Settings:
    cluster_id: str = _setting("default", "this cluster's id: marks what this bridge owns in a "
                                          "Consul shared by several clusters", check=_dns_label)
    log: LogSettings = field(default_factory=LogSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    consul: ConsulSettings = field(default_factory=ConsulSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    ha: HaSettings = field(default_factory=HaSettings)

    @property
    def node_name(self) -> str:
        return self.sync.node_name or f"k8s-sync-{self.cluster_id}"


# Ecosystem variables, lowest priority among the environment.
_ECOSYSTEM_ENV: dict[str, str] = {
    "KUBECONFIG": "kubernetes.kubeconfig",
    "CONSUL_HTTP_ADDR": "consul.address",
    "CONSUL_HTTP_TOKEN": "consul.token",
    "CONSUL_HTTP_TOKEN_FILE": "consul.token_file",
    "CONSUL_CACERT": "consul.ca_cert",
    "CONSUL_CLIENT_CERT": "consul.client_cert",
    "CONSUL_CLIENT_KEY": "consul.client_key",
    "CONSUL_HTTP_SSL_VERIFY": "consul.ssl_verify",
    "CONSUL_TLS_SERVER_NAME": "consul.tls_server_name",
    # The pod's name, from the downward API (client-go's leader-election examples use it too).
    "POD_NAME": "ha.identity",
}

_SECTIONS = {f.name: f for f in fields(Settings) if dataclasses.is_dataclass(f.default_factory)}


def iter_settings(obj: Any = None, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """Every leaf setting as (dotted key, field, value), in declaration order."""
    obj = obj if obj is not None else Settings()
    out: list[tuple[str, dataclasses.Field, Any]] = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(iter_settings(value, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", f, value))
    return out


def _leaf_types() -> dict[str, tuple[type, dataclasses.Field]]:
    types: dict[str, tuple[type, dataclasses.Field]] = {}
    top = get_type_hints(Settings)
    for key, f, _ in iter_settings():
        if "." in key:
            section, name = key.split(".", 1)
            types[key] = (get_type_hints(top[section])[name], f)
        else:
            types[key] = (top[key], f)
    return types


def _coerce(key: str, kind: type, raw: Any, origin: str) -> Any:
    where = f" ({origin})" if origin else ""

    def bad(reason: str) -> ConfigError:
        return ConfigError(key, raw, reason + where)

    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(raw, str) and raw.strip().lower() in {"0", "false", "no", "off"}:
            return False
        raise bad("not a boolean (true/false)")
    if kind is int:
        if isinstance(raw, bool):
            raise bad("not an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
            return int(raw)
        raise bad("not an integer")
    if kind is float:
        if isinstance(raw, bool):
            raise bad("not a number")
        if isinstance(raw, int | float):
            return float(raw)
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise bad("not a number") from None
    if kind == Mapping[str, tuple[str, ...]]:
        return _coerce_mapping(key, raw, origin)
    if kind == tuple[str, ...]:
        if isinstance(raw, str):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if isinstance(raw, list | tuple) and all(isinstance(i, str) for i in raw):
            return tuple(raw)
        raise bad("not a list of strings")
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    raise bad("not a string")


def _coerce_mapping(key: str, raw: Any, origin: str) -> Mapping[str, tuple[str, ...]]:
    """`{zone: [a, b]}` (YAML) or `zone=a,b;zone2=c` (environment, flags)."""
    where = f" ({origin})" if origin else ""
    if isinstance(raw, str):
        pairs: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in raw.split(";"))):
            zone_text, sep, upstreams = part.partition("=")
            if not sep:
                raise ConfigError(key, raw, f"not ZONE=HOST[:PORT],...;ZONE=...{where}")
            pairs[zone_text.strip()] = upstreams
        raw = pairs
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, f"not a mapping of zone to a list of upstreams{where}")
    out: dict[str, tuple[str, ...]] = {}
    for name, listed in raw.items():
        values: Any = listed
        if isinstance(listed, str):
            values = [v for v in (v.strip() for v in listed.split(",")) if v]
        if not isinstance(name, str) or not isinstance(values, list | tuple) \
                or not all(isinstance(v, str) for v in values):
            raise ConfigError(key, raw, f"not a mapping of zone to a list of upstreams{where}")
        zone = name.strip().lower()
        out["." if zone == "." else zone.rstrip(".")] = tuple(values)
    return out


def _plain(value: Any) -> Any:
    """A setting's value as YAML writes it: lists for tuples, dicts for mappings."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flatten_yaml(data: Any, origin: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("<file>", type(data).__name__, f"top level must be a mapping ({origin})")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(str(key), value, f"must be a mapping of settings ({origin})")
            for sub, subval in value.items():
                flat[f"{key}.{sub}"] = subval
        else:
            flat[str(key)] = value
    return flat


def read_file(path: str | Path) -> dict[str, Any]:
    """A YAML settings file as dotted key -> raw value; errors name the file."""
    origin = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("--config", origin, exc.strerror or str(exc)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("--config", origin, f"not valid YAML{where}") from None
    return _flatten_yaml(data, origin)


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from environment variables as dotted key -> raw string."""
    found: dict[str, Any] = {}
    for var, key in _ECOSYSTEM_ENV.items():
        if environ.get(var, "") != "":
            found[key] = environ[var]
    if "consul.address" in found:
        found["consul.address"] = _consul_url(found["consul.address"],
                                              environ.get("CONSUL_HTTP_SSL", ""))
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    if host:
        found["kubernetes.in_cluster"] = "true"
        port = environ.get("KUBERNETES_SERVICE_PORT", "")
        if port:
            # What client-go's rest.InClusterConfig builds: https://net.JoinHostPort(host, port).
            found["kubernetes.api_server"] = f"https://[{host}]:{port}" if ":" in host \
                else f"https://{host}:{port}"
    for key, _, _ in iter_settings():
        var = "BRIDGE_" + key.replace(".", "_").upper()
        if var in environ:
            found[key] = environ[var]
    return found


def _consul_url(address: str, ssl: str) -> str:
    """CONSUL_HTTP_ADDR may omit the scheme; CONSUL_HTTP_SSL then chooses https."""
    if "://" in address:
        return address
    scheme = "https" if ssl.strip().lower() in {"1", "true", "yes"} else "http"
    return f"{scheme}://{address}"


def build(*, config_file: str | None = None, environ: Mapping[str, str] | None = None,
          flags: Mapping[str, Any] | None = None) -> Settings:
    """Defaults <- file <- environment <- flags, validated. Raises ConfigError."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file:
        layers.append((config_file, read_file(config_file)))
    layers.append(("environment", read_env(os.environ if environ is None else environ)))
    layers.append(("flag", {k: v for k, v in (flags or {}).items() if v is not None}))
    types = _leaf_types()
    values: dict[str, Any] = {}
    for origin, layer in layers:
        for key, raw in layer.items():
            if key not in types:
                raise ConfigError(key, raw, f"unknown setting ({origin})")
            kind, f = types[key]
            value = _coerce(key, kind, raw, origin)
            check = f.metadata.get("check")
            problem = check(value) if check else None
            if problem:
                raise ConfigError(key, raw, f"{problem} ({origin})")
            values[key] = value
    settings = _assemble(values)
    _check_combination(settings)
    return settings


def _check_combination(settings: Settings) -> None:
    """Settings that are valid alone but not together."""
    dns = settings.dns
    if dns.upstreams and "." in dns.forward_zones:
        raise ConfigError("dns.forward_zones", ".", "'.' and dns.upstreams both name the "
                          "upstreams of every other name: set one")
    if dns.autopath and not dns.autopath_namespace and dns.pods != "verified":
        raise ConfigError("dns.autopath", True, "needs the client's namespace: set "
                          "dns.autopath_namespace (a sidecar) or dns.pods: verified")
    if not settings.kubernetes.enabled:
        # With no Kubernetes view, the sync would see this cluster as empty and deregister
        # everything it owns in Consul; materialising needs the Kubernetes API.
        for key, on in (("sync.to_consul", settings.sync.to_consul),
                        ("sync.to_k8s", settings.sync.to_k8s)):
            if on:
                raise ConfigError("kubernetes.enabled", False,
                                  f"{key} needs Kubernetes: set {key}: false as well")
        if not settings.sync.from_consul:
            raise ConfigError("kubernetes.enabled", False, "with sync.from_consul: false as "
                              "well there is nothing to answer from")
    sync = settings.sync
    if sync.adopt_node and sync.adopt_node == settings.node_name:
        raise ConfigError("sync.adopt_node", sync.adopt_node, "is the bridge's own node "
                          "(sync.node_name): name consul-k8s's node")
    if sync.adopt_node and sync.upsert_only:
        # Adoption deletes consul-k8s's registrations; upsert-only promises no delete.
        raise ConfigError("sync.adopt_node", sync.adopt_node, "removes consul-k8s's registrations: "
                          "it cannot be combined with sync.upsert_only")
    consul = settings.consul
    if consul.auth_method and (consul.token or consul.token_file):
        # A login gives the token; a fixed one as well would leave which one is used to chance.
        raise ConfigError("consul.auth_method", consul.auth_method,
                          "logs in for a token: leave consul.token and consul.token_file empty")
    if consul.client_key and not consul.client_cert:
        raise ConfigError("consul.client_key", consul.client_key,
                          "needs consul.client_cert (CONSUL_CLIENT_CERT) as well")
    ha = settings.ha
    # client-go's NewLeaderElector rules: the leader must give up before anyone else may
    # take over, and must get more than one try (with jitter) before it gives up.
    if not ha.renew_deadline < ha.lease_duration:
        raise ConfigError("ha.renew_deadline", ha.renew_deadline,
                          f"must be below ha.lease_duration ({ha.lease_duration})")
    if not ha.renew_deadline > 1.2 * ha.retry_period:
        raise ConfigError("ha.retry_period", ha.retry_period,
                          f"must be below ha.renew_deadline / 1.2 ({ha.renew_deadline / 1.2:g})")


def _assemble(values: Mapping[str, Any]) -> Settings:
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    top: dict[str, Any] = {}
    for key, value in values.items():
        if "." in key:
            section, name = key.split(".", 1)
            sections[section][name] = value
        else:
            top[key] = value
    built = {name: f.default_factory(**sections[name])  # type: ignore[operator]
             for name, f in _SECTIONS.items()}
    return Settings(**top, **built)


def token(settings: ConsulSettings) -> str:
    """The Consul token: the setting, else the token file's first line."""
    if settings.token:
        return settings.token
    if settings.token_file:
        try:
            return Path(settings.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError("consul.token_file", settings.token_file,
                              exc.strerror or str(exc)) from None
    return ""


def describe(settings: Settings) -> str:
    """The effective settings as YAML, secrets masked."""
    out: dict[str, Any] = {}
    for key, f, value in iter_settings(settings):
        if f.metadata.get("secret") and value:
            value = "********"
        value = _plain(value)
        target = out
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return yaml.safe_dump(out, sort_keys=False)


def render_reference() -> str:
    """`config/bridge.yaml`: every setting at its default, each with its reason above it."""
    lines = ["# bridge settings: every key at its default, with the reason for it.",
             "# Precedence: these defaults < this file (--config) < environment < flags.",
             "# Environment: BRIDGE_<SECTION>_<KEY> (e.g. BRIDGE_DNS_TTL), plus KUBECONFIG and",
             "# the CONSUL_HTTP_* variables the Consul CLI uses.", ""]
    section = None
    for key, f, value in iter_settings():
        parent, _, leaf = key.rpartition(".")
        if parent != section:
            if parent:
                lines.append(f"{parent}:")
            section = parent
        indent = "  " if parent else ""
        lines.append(f"{indent}# {f.metadata['why']}")
        rendered = yaml.safe_dump({leaf: _plain(value)},
                                  default_flow_style=True, width=1000).strip()
        lines.append(f"{indent}{rendered[1:-1]}")
    return "\n".join(lines) + "\n"
