"""Settings of high availability: defaults, environment, and the timings client-go refuses."""

from __future__ import annotations

import pytest

from bridge import config
from bridge.errors import ConfigError


def test_defaults_are_client_gos():
    ha = config.Settings().ha
    assert (ha.enabled, ha.lease_duration, ha.renew_deadline, ha.retry_period) == (True, 15, 10.0, 2.0)
    assert (ha.lease_namespace, ha.identity) == ("", "")
    assert (ha.session_ttl, ha.lock_delay) == (15, 15)
    assert config.Settings().sync.expire_dead_clusters_after == 0


def test_every_ha_setting_comes_from_its_bridge_variable():
    s = config.build(environ={
        "BRIDGE_HA_ENABLED": "false", "BRIDGE_HA_LEASE_NAMESPACE": "leases",
        "BRIDGE_HA_LEASE_DURATION": "30", "BRIDGE_HA_RENEW_DEADLINE": "20",
        "BRIDGE_HA_RETRY_PERIOD": "4", "BRIDGE_HA_IDENTITY": "me", "BRIDGE_HA_SESSION_TTL": "20",
        "BRIDGE_HA_LOCK_DELAY": "0", "BRIDGE_SYNC_EXPIRE_DEAD_CLUSTERS_AFTER": "3600"})
    assert s.ha == config.HaSettings(enabled=False, lease_namespace="leases", lease_duration=30,
                                     renew_deadline=20.0, retry_period=4.0, identity="me",
                                     session_ttl=20, lock_delay=0)
    assert s.sync.expire_dead_clusters_after == 3600.0


def test_the_pods_name_is_the_identity_unless_one_is_set():
    assert config.build(environ={"POD_NAME": "bridge-7f9-abc"}).ha.identity == "bridge-7f9-abc"
    both = {"POD_NAME": "bridge-7f9-abc", "BRIDGE_HA_IDENTITY": "chosen"}
    assert config.build(environ=both).ha.identity == "chosen"


@pytest.mark.parametrize(("env", "key"), [
    ({"BRIDGE_HA_RENEW_DEADLINE": "15"}, "ha.renew_deadline"),  # not below lease_duration 15
    ({"BRIDGE_HA_RETRY_PERIOD": "9"}, "ha.retry_period"),  # 9 * 1.2 > renew_deadline 10
    ({"BRIDGE_HA_SESSION_TTL": "5"}, "ha.session_ttl"),
    ({"BRIDGE_HA_LEASE_DURATION": "0"}, "ha.lease_duration"),
    ({"BRIDGE_HA_LEASE_NAMESPACE": "Not_A_Label"}, "ha.lease_namespace"),
    ({"BRIDGE_SYNC_EXPIRE_DEAD_CLUSTERS_AFTER": "-1"}, "sync.expire_dead_clusters_after"),
])
def test_bad_timings_are_refused_naming_the_setting(env, key):
    with pytest.raises(ConfigError) as caught:
        config.build(environ=env)
    assert caught.value.key == key, str(caught.value)
