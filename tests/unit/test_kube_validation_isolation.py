"""One object the API server refuses fails alone, is said once, and is not retried in a loop.

The sink reports a refused object as *rejected* (with the server's Status message), the
rest of the plan goes on, `bridge.rejections` logs and counts it once, the planner holds
the same write back until its body changes or the periodic resync, and the reconciler
counts the pass as settled (no backoff retry).
"""

from __future__ import annotations

import json
import logging
import threading
from types import SimpleNamespace
from typing import Any

from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from bridge.catalog.model import Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.sink import ApplyResult
from bridge.errors import Conflict, Rejected, Transient
from bridge.kube.client import map_error
from bridge.kube.materialise import Desired, Held, KubePlan
from bridge.kube.sink import KubeSink
from bridge.reconcile.loop import Lane, Reconciler
from bridge.reconcile.plans import KubePlanner
from bridge.reconcile.trigger import Trigger
from bridge.rejections import Rejections

INVALID = ('Service "1password" is invalid: metadata.name: Invalid value: "1password": a DNS-1035 label '
           "must consist of lower case alphanumeric characters or '-', start with an alphabetic character")


def counted(sink: str, reason: str) -> float:
    return REGISTRY.get_sample_value("bridge_rejected_total", {"sink": sink, "reason": reason}) or 0.0


# --- bridge.rejections ------------------------------------------------------------------------

def test_a_refusal_is_counted_and_logged_once_while_it_lasts(caplog):
    rejections = Rejections()
    before = counted("test-sink", "Invalid")
    with caplog.at_level(logging.WARNING, logger="bridge.rejections"):
        assert rejections.rejected("test-sink", "services a/b", "Invalid", "bad name")
        assert not rejections.rejected("test-sink", "services a/b", "Invalid", "bad name"), "the same refusal again"
    assert counted("test-sink", "Invalid") == before + 1
    assert [r.getMessage() for r in caplog.records] == [
        "test-sink: services a/b refused (Invalid), not retried until it changes: bad name"]


def test_a_new_message_for_the_same_reason_is_logged_not_counted_and_another_reason_is_both(caplog):
    rejections = Rejections()
    invalid, not_found = counted("test-sink", "Invalid"), counted("test-sink", "NotFound")
    with caplog.at_level(logging.WARNING, logger="bridge.rejections"):
        rejections.rejected("test-sink", "x", "Invalid", "bad port")
        assert rejections.rejected("test-sink", "x", "Invalid", "bad port name"), "the item changed, still refused"
        assert rejections.rejected("test-sink", "x", "NotFound", 'namespaces "n" not found')
    assert counted("test-sink", "Invalid") == invalid + 1
    assert counted("test-sink", "NotFound") == not_found + 1
    assert len(caplog.records) == 3


def test_forget_makes_the_next_refusal_news_and_sinks_are_apart():
    rejections = Rejections()
    rejections.rejected("a", "x", "Invalid", "m")
    rejections.rejected("b", "x", "Invalid", "m")
    rejections.forget("x", "a")
    assert rejections.held("a") == {} and rejections.held("b") == {"x": ("Invalid", "m")}
    assert rejections.rejected("a", "x", "Invalid", "m"), "forgotten: news again"
    rejections.forget("x")
    assert rejections.held("a") == {} == rejections.held("b"), "without a sink: every sink's"


# --- the client: a refusal carries the server's Status -------------------------------------

def api_exception(status: int, body: dict[str, Any] | None, reason: str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps(body).encode() if body is not None else None
    return exc


def test_a_422_becomes_a_rejection_with_the_status_message_and_reason():
    status = {"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422, "message": INVALID}
    error = map_error(api_exception(422, status, "Unprocessable Entity"), "create services consul/1password")
    assert isinstance(error, Rejected) and error.reason == "Invalid"
    assert str(error) == f"create services consul/1password: HTTP 422: {INVALID}"


def test_a_404_namespace_and_a_bodyless_refusal_are_rejections_too():
    missing = {"kind": "Status", "reason": "NotFound", "code": 404, "message": 'namespaces "team-a" not found'}
    error = map_error(api_exception(404, missing, "Not Found"), "create services team-a/web")
    assert isinstance(error, Rejected) and error.reason == "NotFound"
    assert str(error).endswith('namespaces "team-a" not found')
    bare = map_error(api_exception(400, None, "Bad Request"), "create services a/b")
    assert isinstance(bare, Rejected) and bare.reason == "HTTP400" and str(bare).endswith("HTTP 400: Bad Request")


# --- the sink -------------------------------------------------------------------------------

class FakeKube:
    """Answers each write by object name: an exception to raise (every time), else success."""

    def __init__(self, refuse: dict[str, Exception] | None = None) -> None:
        self.refuse = refuse or {}
        self.writes: list[tuple[str, str, str]] = []

    def write(self, verb: str, plural: str, namespace: str, name: str, body: Any = None) -> None:
        self.writes.append((verb, plural, name))
        if name in self.refuse:
            raise self.refuse[name]


def desired(name: str, plural: str = "services") -> Desired:
    return Desired(plural, "consul", name, ())


def rejected_422(name: str) -> Rejected:
    return Rejected(f"create services consul/{name}: HTTP 422: {INVALID}", "Invalid")


def sink_for(client: FakeKube, rejections: Rejections) -> KubeSink:
    return KubeSink(client, lambda: ({}, {}), threading.Event(), rejections)  # type: ignore[arg-type]


def test_a_rejected_object_fails_alone_and_the_rest_lands(caplog):
    rejections = Rejections()
    client = FakeKube({"1password": rejected_422("1password")})
    plan = KubePlan(create=(desired("billing"), desired("1password"), desired("ledger")))
    with caplog.at_level(logging.WARNING):
        result = sink_for(client, rejections).apply(plan)
    assert result.written == [desired("billing").key, desired("ledger").key]
    assert result.failed == {}, "a refusal is not a failure to retry soon"
    assert list(result.rejected) == [desired("1password").key]
    assert INVALID in result.rejected[desired("1password").key]
    assert rejections.held("kubernetes") == {
        "services consul/1password": ("Invalid", f"create services consul/1password: HTTP 422: {INVALID}")}
    lines = [r.getMessage() for r in caplog.records if "1password" in r.getMessage()]
    assert lines == [f"kubernetes: services consul/1password refused (Invalid), not retried until it changes: "
                     f"create services consul/1password: HTTP 422: {INVALID}"]


def test_a_refusal_is_not_retried_by_the_sink_but_a_transient_failure_is():
    client = FakeKube({"1password": rejected_422("1password")})
    sink_for(client, Rejections()).apply(KubePlan(create=(desired("1password"),)))
    assert client.writes == [("create", "services", "1password")], "a rejected write is sent once"


def test_conflicts_and_transient_failures_stay_failures():
    client = FakeKube({"a": Conflict("create services consul/a: Conflict"), "b": Transient("HTTP 503")})
    result = sink_for(client, Rejections()).apply(KubePlan(create=(desired("a"), desired("b"))))
    assert set(result.failed) == {desired("a").key, desired("b").key} and result.rejected == {}
    assert len([w for w in client.writes if w[2] == "b"]) == 3, "a transient failure is retried (three attempts)"


def test_a_written_object_is_forgotten_so_a_later_refusal_is_news():
    rejections = Rejections()
    rejections.rejected("kubernetes", "services consul/billing", "Invalid", "old")
    sink_for(FakeKube(), rejections).apply(KubePlan(create=(desired("billing"),)))
    assert rejections.held("kubernetes") == {}


# --- the planner --------------------------------------------------------------------------------

ORIGIN = Origin(OriginKind.CONSUL, "vm-1")


def consul(**services: str) -> Snapshot:
    """Consul services by name, each with one instance at the given address."""
    return Snapshot.of([Service(key=ServiceKey("consul", name), type=ServiceType.HEADLESS,
                                instances=(Instance(address=address, ports=(Port("", 8080),), origin=ORIGIN),))
                        for name, address in services.items()], synced=True)


class HeldNothing:
    def actual(self) -> Held:
        return Held({}, frozenset())

    def apply(self, plan: KubePlan) -> Any:
        raise AssertionError("the planner never writes")


def planned(planner: KubePlanner, snapshot: Snapshot, *, reread: bool = False) -> set[str]:
    return {d.name for _, d in planner.plan(Snapshot(synced=True), snapshot, reread=reread).plan.writes()}


def reject(planner: KubePlanner, snapshot: Snapshot, name: str) -> None:
    """Plans, then reports every write but the Service `name` written, that one rejected."""
    plan = planner.plan(Snapshot(synced=True), snapshot, reread=False).plan
    key = ("services", "consul", name)
    planner.applied(plan, ApplyResult(written=[d.key for _, d in plan.writes() if d.key != key],
                                      rejected={key: "refused"}))


def test_the_planner_holds_back_a_rejected_write_while_it_is_the_same():
    planner = KubePlanner(HeldNothing(), Rejections())
    reject(planner, consul(billing="192.0.2.1"), "billing")
    again = planned(planner, consul(billing="192.0.2.1", ledger="192.0.2.2"))
    assert "billing" not in again, "the same refused write is not sent on the next pass"
    assert "ledger" in again, "everything else is planned as ever"


def test_the_planner_sends_it_again_at_the_periodic_resync():
    planner = KubePlanner(HeldNothing(), Rejections())
    reject(planner, consul(billing="192.0.2.1"), "billing")
    assert "billing" in planned(planner, consul(billing="192.0.2.1"), reread=True)


def test_the_planner_sends_it_again_once_it_changes():
    planner = KubePlanner(HeldNothing(), Rejections())
    reject(planner, consul(billing="192.0.2.1"), "billing")
    # The Service body carries the ports: a new port is a new write.
    changed = Snapshot.of([Service(key=ServiceKey("consul", "billing"), type=ServiceType.HEADLESS, instances=(
        Instance(address="192.0.2.1", ports=(Port("http", 80),), origin=ORIGIN),))], synced=True)
    assert "billing" in planned(planner, changed)


def test_the_planner_forgets_a_refusal_once_the_object_is_no_longer_wanted():
    rejections = Rejections()
    planner = KubePlanner(HeldNothing(), rejections)
    rejections.rejected("kubernetes", "services consul/billing", "Invalid", "m")
    reject(planner, consul(billing="192.0.2.1"), "billing")
    planned(planner, consul(ledger="192.0.2.2"))
    assert rejections.held("kubernetes") == {}, "gone from Consul: a later refusal is news"
    assert "billing" in planned(planner, consul(billing="192.0.2.1")), "and it is sent when wanted again"


# --- the reconciler -------------------------------------------------------------------------------

class RefusingSink:
    """Rejects the Service `bad`; holds everything else it is asked to write."""

    def __init__(self) -> None:
        self.applies = 0
        self.held: dict[Any, Desired] = {}

    def actual(self) -> Held:
        return Held(dict(self.held), frozenset())

    def apply(self, plan: KubePlan) -> ApplyResult[Any]:
        self.applies += 1
        result: ApplyResult[Any] = ApplyResult()
        for _, d in plan.writes():
            if d.name == "bad":
                result.rejected[d.key] = "refused"
            else:
                self.held[d.key] = d
                result.written.append(d.key)
        return result


def fixed(snapshot: Snapshot) -> Any:
    """A source that has listed and always sees `snapshot`."""
    return SimpleNamespace(synced=True, snapshot=lambda: snapshot)


def test_a_pass_whose_only_trouble_is_a_rejection_is_settled():
    sink = RefusingSink()
    lane = Lane("kubernetes", KubePlanner(sink, Rejections()), sink)
    reconciler = Reconciler(kube=fixed(Snapshot(synced=True)), consul=fixed(consul(bad="192.0.2.1", ok="192.0.2.2")),
                            lanes=[lane], trigger=Trigger(0.01, 0.1), stop=threading.Event(), resync_period=300)
    assert reconciler.step() is True, "nothing to retry with backoff"
    assert reconciler.in_sync and sink.applies == 1
    assert reconciler.step() is True and sink.applies == 1, "the held-back write alone makes no apply"
    assert reconciler.step(resync=True) is True and sink.applies == 2, "the resync tries it again"

