"""When sources last heard from their servers and last changed, and why a Consul instance is
not healthy: what /status and `bridge explain` show, kept where the data flows."""

from __future__ import annotations

from prometheus_client import REGISTRY

from bridge.consul.objects import failing_checks
from bridge.freshness import Freshness


def gauge(name: str, source: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"source": source})


def test_an_event_moves_only_last_event_and_a_change_moves_both():
    now = iter([100.0, 200.0, 300.0])
    fresh = Freshness("test/one", clock=lambda: next(now))
    assert (fresh.last_event, fresh.last_change) == (0.0, 0.0), "never heard from: zero"
    fresh.event()
    assert (fresh.last_event, fresh.last_change) == (100.0, 0.0)
    fresh.change()
    assert (fresh.last_event, fresh.last_change) == (200.0, 200.0)
    fresh.event()
    assert (fresh.last_event, fresh.last_change) == (300.0, 200.0)
    assert gauge("bridge_source_last_event_timestamp_seconds", "test/one") == 300.0
    assert gauge("bridge_source_last_change_timestamp_seconds", "test/one") == 200.0


def test_failing_checks_name_each_check_not_passing():
    entry = {"Node": {"Node": "vm-1"}, "Service": {"ID": "pay-1"},
             "Checks": [{"Name": "serfHealth", "Status": "passing"},
                        {"Name": "pay alive", "Status": "critical"},
                        {"CheckID": "disk", "Status": "warning"}]}
    assert failing_checks(entry) == "pay alive (critical), disk (warning)"
    assert failing_checks(entry, passing_only=False) == "pay alive (critical)", "warning admitted"
