"""The Kubernetes API test server refuses what a real API server refuses, with its words.

One table per rule the bridge's writes meet: each row is a Service, EndpointSlice or Lease
the server must refuse (or accept), and names the upstream function it mirrors
(kubernetes/kubernetes pkg/apis/core/validation, pkg/apis/discovery/validation,
pkg/apis/coordination/validation, apimachinery util/validation and api/validation). A
refusal is checked as the Status a client reads: 422 Invalid, the cause's field path and
message, and the message line kubectl prints after `The <Kind> "<name>" is invalid:`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, NamedTuple

import pytest

from bridge.testing.kube import KubeAPIServer
from bridge.testing.kube.errors import StatusError
from bridge.testing.kube.store import Store

DNS1123_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_LABEL = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
DNS1123_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
LABEL_KEY_NAME = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)


def service(name: str = "web", *, ports: Any = None, meta: dict[str, Any] | None = None,
            **spec: Any) -> dict[str, Any]:
    body = {"clusterIP": "None", "ports": [{"name": "http", "port": 80}] if ports is None else ports, **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, **(meta or {})}, "spec": body}


def endpoint_slice(name: str = "web-abc", *, address_type: str = "IPv4", addresses: Any = ("10.0.0.1",),
                   endpoints: Any = None, ports: Any = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, **(meta or {})},
        "addressType": address_type,
        "endpoints": endpoints if endpoints is not None else [{"addresses": list(addresses)}],
        "ports": ports if ports is not None else [{"name": "http", "port": 80}],
    }


def lease(name: str = "bridge", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
            "spec": {"holderIdentity": "a", **spec}}


class Refused(NamedTuple):
    upstream: str  # the function whose rule this row exercises
    plural: str
    body: dict[str, Any]
    field: str  # the cause's field path
    message: str  # the cause's message


class Accepted(NamedTuple):
    upstream: str
    plural: str
    body: dict[str, Any]


@pytest.fixture
def store() -> Store:
    return Store(seed=1)


def refusal(store: Store, plural: str, body: dict[str, Any]) -> StatusError:
    with pytest.raises(StatusError) as info:
        store.create(plural, "default", body)
    return info.value


def check_refused(store: Store, row: Refused) -> None:
    err = refusal(store, row.plural, row.body)
    assert (err.code, err.reason) == (422, "Invalid"), f"{row.upstream}: {err!r}"
    causes = [(c["field"], c["message"]) for c in err.details["causes"]]
    assert (row.field, row.message) in causes, \
        f"{row.upstream}: expected cause {row.field}: {row.message}; got {causes}"
    assert f"{row.field}: {row.message}" in err.message, f"{row.upstream}: not in the Status message: {err.message}"


def check_accepted(store: Store, row: Accepted) -> None:
    try:
        store.create(row.plural, "default", row.body)
    except StatusError as exc:
        pytest.fail(f"{row.upstream}: a real API server accepts this; the test server said {exc.message}")


# --- object names ---------------------------------------------------------------------------

NAMES_REFUSED = [
    Refused("NameIsDNS1035Label (ValidateServiceName)", "services", service("1password"),
            "metadata.name", f'Invalid value: "1password": {DNS1035_LABEL}'),
    Refused("NameIsDNS1035Label (ValidateServiceName)", "services", service("web.api"),
            "metadata.name", f'Invalid value: "web.api": {DNS1035_LABEL}'),
    Refused("NameIsDNS1035Label: IsDNS1035Label's MaxLenError", "services", service("a" * 64),
            "metadata.name", f'Invalid value: "{"a" * 64}": must be no more than 63 characters'),
    Refused("NameIsDNSSubdomain (ValidateEndpointSliceName)", "endpointslices", endpoint_slice("Web_1"),
            "metadata.name", f'Invalid value: "Web_1": {DNS1123_SUBDOMAIN}'),
    Refused("NameIsDNSSubdomain: IsDNS1123Subdomain's MaxLenError", "endpointslices",
            endpoint_slice("a" * 254), "metadata.name",
            f'Invalid value: "{"a" * 254}": must be no more than 253 characters'),
    Refused("NameIsDNSSubdomain (ValidateLease)", "leases", lease("-bridge"),
            "metadata.name", f'Invalid value: "-bridge": {DNS1123_SUBDOMAIN}'),
    Refused("NameIsDNSSubdomain: regexps anchor at the very end", "leases", lease("bridge\n"),
            "metadata.name", f'Invalid value: "bridge\\n": {DNS1123_SUBDOMAIN}'),
]
NAMES_ACCEPTED = [
    Accepted("NameIsDNSSubdomain: a leading digit and dots are fine for a slice", "endpointslices",
             endpoint_slice("1password.ipv4-abc")),
    Accepted("NameIsDNS1035Label: 63 characters", "services", service("a" * 63)),
    Accepted("NameIsDNSSubdomain (ValidateLease)", "leases", lease("bridge.consul-k8s")),
]




# --- labels and annotations -------------------------------------------------------------------

METADATA_REFUSED = [
    Refused("ValidateLabels: IsValidLabelValue's regex", "services",
            service(meta={"labels": {"app": "-web"}}), "metadata.labels", f'Invalid value: "-web": {LABEL_VALUE}'),
    Refused("ValidateLabels: IsValidLabelValue's MaxLenError", "endpointslices",
            endpoint_slice(meta={"labels": {"kubernetes.io/service-name": "s" * 64}}), "metadata.labels",
            f'Invalid value: "{"s" * 64}": must be no more than 63 characters'),
    Refused("ValidateLabelName: IsQualifiedName's name part", "services",
            service(meta={"labels": {"example.com/bad key": "x"}}), "metadata.labels",
            f'Invalid value: "example.com/bad key": {LABEL_KEY_NAME}'),
    Refused("ValidateLabelName: IsQualifiedName's prefix part", "services",
            service(meta={"labels": {"Example.com/key": "x"}}), "metadata.labels",
            f'Invalid value: "Example.com/key": prefix part {DNS1123_SUBDOMAIN}'),
    Refused("ValidateLabelName: IsQualifiedName with more than one '/'", "leases",
            {**lease(), "metadata": {"name": "l", "labels": {"a/b/c": "x"}}}, "metadata.labels",
            "Invalid value: \"a/b/c\": a valid label key must consist of alphanumeric characters, '-', '_' or "
            "'.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
            "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an "
            "optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
    Refused("ValidateAnnotations: keys are qualified names", "services",
            service(meta={"annotations": {"bridge/consul service": "x"}}), "metadata.annotations",
            f'Invalid value: "bridge/consul service": {LABEL_KEY_NAME}'),
    Refused("ValidateAnnotations: TotalAnnotationSizeLimitB", "services",
            service(meta={"annotations": {"a": "x" * (256 * 1024)}}), "metadata.annotations",
            "Too long: must have at most 262144 bytes"),
]
METADATA_ACCEPTED = [
    Accepted("ValidateAnnotations: keys in any case, values anything", "services",
             service(meta={"annotations": {"Bridge/Consul-Service": "Billing API / v2 ✓"}})),
    Accepted("ValidateAnnotations: 256 KiB in all", "services",
             service(meta={"annotations": {"a": "x" * (256 * 1024 - 1)}})),
    Accepted("ValidateLabels: an empty value", "services", service(meta={"labels": {"app": ""}})),
]




# --- Service ports and headless Services ------------------------------------------------------

SERVICE_REFUSED = [
    Refused("validateServicePort: ValidateDNS1123Label(name)", "services",
            service(ports=[{"name": "Http_Admin", "port": 80}]), "spec.ports[0].name",
            f'Invalid value: "Http_Admin": {DNS1123_LABEL}'),
    Refused("validateServicePort: IsDNS1123Label rejects dots", "services",
            service(ports=[{"name": "http.v2", "port": 80}]), "spec.ports[0].name",
            'Invalid value: "http.v2": must not contain dots'),
    Refused("validateServicePort: IsDNS1123Label's MaxLenError", "services",
            service(ports=[{"name": "p" * 64, "port": 80}]), "spec.ports[0].name",
            f'Invalid value: "{"p" * 64}": must be no more than 63 characters'),
    Refused("validateServicePort: requireName with more than one port", "services",
            service(ports=[{"name": "http", "port": 80}, {"port": 81}]), "spec.ports[1].name", "Required value"),
    Refused("validateServicePort: allNames", "services",
            service(ports=[{"name": "http", "port": 80}, {"name": "http", "port": 81}]), "spec.ports[1].name",
            'Duplicate value: "http"'),
    Refused("ValidateService: one (protocol, port) pair once", "services",
            service(ports=[{"name": "http", "port": 80}, {"name": "web", "port": 80}]), "spec.ports[1]",
            'Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, '
            'TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}'),
    Refused("validateServicePort: IsValidPortNum(port)", "services",
            service(ports=[{"port": 70000}]), "spec.ports[0].port",
            "Invalid value: 70000: must be between 1 and 65535, inclusive"),
    Refused("validateServicePort: supportedPortProtocols", "services",
            service(ports=[{"port": 80, "protocol": "HTTP"}]), "spec.ports[0].protocol",
            'Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"'),
    Refused("ValidatePortNumOrName: IsValidPortName, at most 15 characters", "services",
            service(ports=[{"port": 80, "targetPort": "administration-ui"}]), "spec.ports[0].targetPort",
            'Invalid value: "administration-ui": must be no more than 15 characters'),
    Refused("ValidatePortNumOrName: IsValidPortName, at least one letter", "services",
            service(ports=[{"port": 80, "targetPort": "8080"}]), "spec.ports[0].targetPort",
            'Invalid value: "8080": must contain at least one letter (a-z)'),
    Refused("ValidatePortNumOrName: IsValidPortName, no '--'", "services",
            service(ports=[{"port": 80, "targetPort": "web--ui"}]), "spec.ports[0].targetPort",
            'Invalid value: "web--ui": must not contain consecutive hyphens'),
    Refused("ValidateService: ports required unless headless", "services",
            service(ports=[], clusterIP=""), "spec.ports", "Required value"),
    Refused("ValidateService: clusterIP None not for NodePort", "services",
            service(type="NodePort"), "spec.clusterIP",
            "Invalid value: \"None\": may not be set to 'None' for NodePort services"),
]
SERVICE_ACCEPTED = [
    Accepted("ValidateService: a headless Service needs no ports", "services", service(ports=[])),
    Accepted("validateServicePort: one port needs no name", "services", service(ports=[{"port": 80}])),
    Accepted("ValidateService: one number under two protocols", "services",
             service(ports=[{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}])),
    Accepted("validateServicePort: a name is a DNS-1123 label, digits first and 63 long are fine", "services",
             service(ports=[{"name": "8080-" + "x" * 58, "port": 80}, {"name": "grpc", "port": 90}])),
]




# --- EndpointSlice addresses ------------------------------------------------------------------

ADDRESS_REFUSED = [
    Refused("ValidateEndpointIP: loopback", "endpointslices", endpoint_slice(addresses=["127.0.0.1"]),
            "endpoints[0].addresses[0]",
            'Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)'),
    Refused("ValidateEndpointIP: loopback, IPv6", "endpointslices",
            endpoint_slice(address_type="IPv6", addresses=["::1"]), "endpoints[0].addresses[0]",
            'Invalid value: "::1": may not be in the loopback range (127.0.0.0/8, ::1/128)'),
    Refused("ValidateEndpointIP: link-local", "endpointslices", endpoint_slice(addresses=["169.254.169.254"]),
            "endpoints[0].addresses[0]",
            'Invalid value: "169.254.169.254": may not be in the link-local range (169.254.0.0/16, fe80::/10)'),
    Refused("ValidateEndpointIP: link-local, IPv6", "endpointslices",
            endpoint_slice(address_type="IPv6", addresses=["fe80::1"]), "endpoints[0].addresses[0]",
            'Invalid value: "fe80::1": may not be in the link-local range (169.254.0.0/16, fe80::/10)'),
    Refused("ValidateEndpointIP: link-local multicast", "endpointslices",
            endpoint_slice(addresses=["224.0.0.251"]), "endpoints[0].addresses[0]",
            'Invalid value: "224.0.0.251": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)'),
    Refused("ValidateEndpointIP: link-local multicast, IPv6 (Go's ff?2::)", "endpointslices",
            endpoint_slice(address_type="IPv6", addresses=["ff12::fb"]), "endpoints[0].addresses[0]",
            'Invalid value: "ff12::fb": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)'),
    Refused("ValidateEndpointIP: unspecified", "endpointslices", endpoint_slice(addresses=["0.0.0.0"]),
            "endpoints[0].addresses[0]", 'Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)'),
    Refused("IsValidIPv4Address: the slice's family", "endpointslices",
            endpoint_slice(addresses=["2001:db8::1"]), "endpoints[0].addresses[0]",
            'Invalid value: "2001:db8::1": must be an IPv4 address'),
    Refused("IsValidIPv6Address: the slice's family", "endpointslices",
            endpoint_slice(address_type="IPv6", addresses=["10.0.0.1"]), "endpoints[0].addresses[0]",
            'Invalid value: "10.0.0.1": must be an IPv6 address'),
    Refused("isValidIPInternal: IPv4-mapped IPv6", "endpointslices",
            endpoint_slice(address_type="IPv6", addresses=["::ffff:10.0.0.1"]), "endpoints[0].addresses[0]",
            'Invalid value: "::ffff:10.0.0.1": IPv4-mapped IPv6 address is not allowed'),
    Refused("isValidIPInternal: leading zeros", "endpointslices", endpoint_slice(addresses=["010.0.0.1"]),
            "endpoints[0].addresses[0]", 'Invalid value: "010.0.0.1": IP address cannot have leading 0s'),
    Refused("isValidIPInternal: zone", "endpointslices",
            endpoint_slice(address_type="IPv6", addresses=["2001:db8::1%eth0"]), "endpoints[0].addresses[0]",
            'Invalid value: "2001:db8::1%eth0": IP address with zone specifier is not allowed'),
    Refused("isValidIPInternal: not an address", "endpointslices", endpoint_slice(addresses=["web-1"]),
            "endpoints[0].addresses[0]",
            'Invalid value: "web-1": must be a valid IP address (e.g. 10.9.8.7 or 2001:db8::ffff)'),
    Refused("IsFullyQualifiedDomainName: two labels at least", "endpointslices",
            endpoint_slice(address_type="FQDN", addresses=["web"]), "endpoints[0].addresses[0]",
            'Invalid value: "web": should be a domain with at least two segments separated by dots'),
    Refused("validateAddressType: supportedAddressTypes", "endpointslices", endpoint_slice(address_type="IP"),
            "addressType", 'Unsupported value: "IP": supported values: "FQDN", "IPv4", "IPv6"'),
]
ADDRESS_ACCEPTED = [
    Accepted("ValidateEndpointIP: private and documentation ranges", "endpointslices",
             endpoint_slice(addresses=["10.0.0.1", "192.0.2.7"])),
    Accepted("ValidateEndpointIP: global multicast is let through (an upstream quirk)", "endpointslices",
             endpoint_slice(addresses=["239.1.1.1"])),
    Accepted("IsValidIPv6Address: unique local and global IPv6", "endpointslices",
             endpoint_slice(address_type="IPv6", addresses=["fd00::1", "2001:db8::1"])),
    Accepted("IsFullyQualifiedDomainName: a trailing dot", "endpointslices",
             endpoint_slice(address_type="FQDN", addresses=["web.example.com."])),
]




# --- EndpointSlice endpoints, ports and limits ---------------------------------------------------

SLICE_REFUSED = [
    Refused("validateEndpoints: at least one address", "endpointslices", endpoint_slice(addresses=[]),
            "endpoints[0].addresses", "Required value: must contain at least 1 address"),
    Refused("validateEndpoints: maxAddresses", "endpointslices",
            endpoint_slice(addresses=[f"10.0.{i // 250}.{i % 250 + 1}" for i in range(101)]),
            "endpoints[0].addresses", "Too many: 101: must have at most 100 items"),
    Refused("validateEndpoints: maxEndpoints", "endpointslices",
            endpoint_slice(endpoints=[{"addresses": [f"10.1.{i // 250}.{i % 250 + 1}"]} for i in range(1001)]),
            "endpoints", "Too many: 1001: must have at most 1000 items"),
    Refused("validateEndpoints: ValidateDNS1123Label(hostname)", "endpointslices",
            endpoint_slice(endpoints=[{"addresses": ["10.0.0.1"], "hostname": "Web_1"}]),
            "endpoints[0].hostname", f'Invalid value: "Web_1": {DNS1123_LABEL}'),
    Refused("validateEndpoints: ValidateNodeName", "endpointslices",
            endpoint_slice(endpoints=[{"addresses": ["10.0.0.1"], "nodeName": "Node_1"}]),
            "endpoints[0].nodeName", f'Invalid value: "Node_1": {DNS1123_SUBDOMAIN}'),
    Refused("validatePorts: ValidateDNS1123Label(name)", "endpointslices",
            endpoint_slice(ports=[{"name": "Http", "port": 80}]), "ports[0].name",
            f'Invalid value: "Http": {DNS1123_LABEL}'),
    Refused("validatePorts: unique names, the empty one too", "endpointslices",
            endpoint_slice(ports=[{"port": 80}, {"port": 81}]), "ports[1].name", 'Duplicate value: ""'),
    Refused("validatePorts: supportedPortProtocols", "endpointslices",
            endpoint_slice(ports=[{"name": "dns", "port": 53, "protocol": "ICMP"}]), "ports[0].protocol",
            'Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'),
    Refused("validatePorts: maxPorts", "endpointslices",
            endpoint_slice(ports=[{"name": f"p{i}", "port": 1} for i in range(20001)]), "ports",
            "Too many: 20001: must have at most 20000 items"),
]
SLICE_ACCEPTED = [
    Accepted("validatePorts: one unnamed port, and no range check on the number", "endpointslices",
             endpoint_slice(ports=[{"port": 0}])),
    Accepted("validatePorts: names are DNS-1123 labels, not IANA service names", "endpointslices",
             endpoint_slice(ports=[{"name": "8080", "port": 8080}, {"name": "a" * 63, "port": 1}])),
    Accepted("validateEndpoints: 100 addresses and 1000 endpoints", "endpointslices",
             endpoint_slice(endpoints=[{"addresses": [f"10.2.{i // 250}.{i % 250 + 1}"] * (100 if i == 0 else 1),
                                        "conditions": {"ready": i % 2 == 0}} for i in range(1000)])),
]




REFUSED = [*NAMES_REFUSED, *METADATA_REFUSED, *SERVICE_REFUSED, *ADDRESS_REFUSED, *SLICE_REFUSED]
ACCEPTED = [*NAMES_ACCEPTED, *METADATA_ACCEPTED, *SERVICE_ACCEPTED, *ADDRESS_ACCEPTED, *SLICE_ACCEPTED]


@pytest.mark.parametrize("row", REFUSED, ids=lambda r: r.upstream)
def test_refused_with_the_cause_a_real_server_gives(store, row):
    check_refused(store, row)


@pytest.mark.parametrize("row", ACCEPTED, ids=lambda r: r.upstream)
def test_accepted_as_a_real_server_accepts_it(store, row):
    check_accepted(store, row)


def test_endpoint_slice_port_outside_int32_is_a_decode_error(store):
    # validatePorts has no range check: the int32 field itself refuses, as a 400 from decoding.
    err = refusal(store, "endpointslices", endpoint_slice(ports=[{"port": 2**31}]))
    assert (err.code, err.reason) == (400, "BadRequest"), err
    assert "cannot unmarshal number 2147483648 into Go struct field EndpointPort.ports.port of type int32" \
        in err.message


def test_endpoint_slice_address_type_is_immutable(store):
    created = store.create("endpointslices", "default", endpoint_slice())
    changed = {**created, "addressType": "IPv6", "endpoints": [{"addresses": ["fd00::1"]}]}
    with pytest.raises(StatusError) as info:
        store.replace("endpointslices", "default", "web-abc", changed)
    causes = [(c["field"], c["message"]) for c in info.value.details["causes"]]
    assert ("addressType", 'Invalid value: "IPv6": field is immutable') in causes, causes


# --- Lease ----------------------------------------------------------------------------------

LEASE_REFUSED = [
    Refused("ValidateLeaseSpec: leaseDurationSeconds", "leases", lease(leaseDurationSeconds=0),
            "spec.leaseDurationSeconds", "Invalid value: 0: must be greater than 0"),
    Refused("ValidateLeaseSpec: leaseTransitions", "leases", lease(leaseTransitions=-1),
            "spec.leaseTransitions", "Invalid value: -1: must be greater than or equal to 0"),
    Refused("ValidateLeaseSpec: preferredHolder needs a strategy", "leases", lease(preferredHolder="b"),
            "spec.preferredHolder", "Forbidden: may only be specified if `strategy` is defined"),
    Refused("ValidateCoordinatedLeaseStrategy (its path names the field twice)", "leases",
            lease(strategy="Newest"), "spec.strategy.strategy",
            'Unsupported value: "Newest": supported values: "OldestEmulationVersion"'),
]



@pytest.mark.parametrize("row", LEASE_REFUSED, ids=lambda r: r.upstream)
def test_leases_refused(store, row):
    check_refused(store, row)


def test_lease_as_the_elector_writes_it_is_accepted(store):
    check_accepted(store, Accepted("ValidateLease", "leases", lease(
        "bridge-leader", leaseDurationSeconds=15, leaseTransitions=0,
        acquireTime="2024-01-01T00:00:00.000000Z", renewTime="2024-01-01T00:00:05.000000Z")))


# --- the Status body -------------------------------------------------------------------------

def test_status_body_over_http_lists_every_cause_with_its_field_path():
    """apierrors.NewInvalid: one cause per error; the message joins them in brackets after the
    group-qualified kind, each message once (the aggregate drops repeats)."""
    body = endpoint_slice("web-1", addresses=["127.0.0.1", "127.0.0.1"], ports=[{"name": "Http", "port": 80}])
    with KubeAPIServer(host="127.0.0.1", port=0) as server:
        request = urllib.request.Request(
            f"{server.url}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        status = json.loads(info.value.read())
    loopback = "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    assert info.value.code == 422
    assert (status["kind"], status["status"], status["reason"], status["code"]) == ("Status", "Failure", "Invalid", 422)
    assert status["details"]["name"] == "web-1"
    assert (status["details"]["group"], status["details"]["kind"]) == ("discovery.k8s.io", "EndpointSlice")
    assert status["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": f'Invalid value: "127.0.0.1": {loopback}',
         "field": "endpoints[0].addresses[0]"},
        {"reason": "FieldValueInvalid", "message": f'Invalid value: "127.0.0.1": {loopback}',
         "field": "endpoints[0].addresses[1]"},
        {"reason": "FieldValueInvalid", "message": f'Invalid value: "Http": {DNS1123_LABEL}', "field": "ports[0].name"},
    ]
    assert status["message"] == (
        'EndpointSlice.discovery.k8s.io "web-1" is invalid: ['
        f'endpoints[0].addresses[0]: Invalid value: "127.0.0.1": {loopback}, '
        f'endpoints[0].addresses[1]: Invalid value: "127.0.0.1": {loopback}, '
        f'ports[0].name: Invalid value: "Http": {DNS1123_LABEL}]'
    )


def test_status_message_names_each_repeated_error_once(store):
    err = refusal(store, "services", service("web", meta={"labels": {"a": "-x", "b": "-x"}}))
    assert err.message == f'Service "web" is invalid: metadata.labels: Invalid value: "-x": {LABEL_VALUE}'
    assert len(err.details["causes"]) == 2, "every error stays a cause"
