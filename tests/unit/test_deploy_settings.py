"""The settings a deployment uses: kubernetes.enabled, the in-cluster API server and the
service-account directory, from the file, the environment and their defaults."""

from __future__ import annotations

import pytest

from bridge import config
from bridge.errors import ConfigError

SIDECAR_SYNC = {"sync.to_consul": False, "sync.to_k8s": False}


def test_kubernetes_is_enabled_by_default_and_the_account_dir_is_the_kubelets():
    settings = config.build(environ={})
    assert settings.kubernetes.enabled is True
    assert settings.kubernetes.service_account_dir == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert settings.kubernetes.api_server == ""


def test_the_environment_turns_kubernetes_off():
    settings = config.build(environ={"BRIDGE_KUBERNETES_ENABLED": "false",
                                     "BRIDGE_SYNC_TO_CONSUL": "false"})
    assert settings.kubernetes.enabled is False


def test_a_file_turns_kubernetes_off(tmp_path):
    path = tmp_path / "bridge.yaml"
    path.write_text("kubernetes: {enabled: false}\nsync: {to_consul: false}\n")
    assert config.build(config_file=str(path), environ={}).kubernetes.enabled is False


def test_enabled_must_be_a_boolean():
    with pytest.raises(ConfigError) as info:
        config.build(environ={"BRIDGE_KUBERNETES_ENABLED": "maybe"})
    assert info.value.key == "kubernetes.enabled"
    assert "not a boolean" in info.value.reason


@pytest.mark.parametrize("key", ["sync.to_consul", "sync.to_k8s"])
def test_a_sync_that_needs_kubernetes_is_refused_without_it(key):
    flags = {"kubernetes.enabled": False, **SIDECAR_SYNC, key: True}
    with pytest.raises(ConfigError) as info:
        config.build(environ={}, flags=flags)
    assert info.value.key == "kubernetes.enabled"
    assert f"{key} needs Kubernetes" in info.value.reason


def test_without_kubernetes_consul_must_be_read():
    flags = {"kubernetes.enabled": False, **SIDECAR_SYNC, "sync.from_consul": False}
    with pytest.raises(ConfigError) as info:
        config.build(environ={}, flags=flags)
    assert info.value.key == "kubernetes.enabled"
    assert "sync.from_consul" in info.value.reason, info.value.reason


def test_without_kubernetes_dns_from_consul_alone_is_valid():
    settings = config.build(environ={}, flags={"kubernetes.enabled": False, **SIDECAR_SYNC})
    assert not settings.kubernetes.enabled and settings.sync.from_consul


@pytest.mark.parametrize(("host", "url"), [
    ("10.96.0.1", "https://10.96.0.1:443"),
    ("fd00:10:96::1", "https://[fd00:10:96::1]:443"),
])
def test_the_api_server_comes_from_the_kubelets_variables(host, url):
    settings = config.build(environ={"KUBERNETES_SERVICE_HOST": host,
                                     "KUBERNETES_SERVICE_PORT": "443"})
    assert settings.kubernetes.in_cluster
    assert settings.kubernetes.api_server == url


def test_the_account_dir_comes_from_the_environment():
    settings = config.build(environ={"BRIDGE_KUBERNETES_SERVICE_ACCOUNT_DIR": "/tmp/sa"})
    assert settings.kubernetes.service_account_dir == "/tmp/sa"


def test_an_api_server_that_is_not_a_url_is_refused():
    with pytest.raises(ConfigError) as info:
        config.build(environ={"BRIDGE_KUBERNETES_API_SERVER": "10.96.0.1"})
    assert info.value.key == "kubernetes.api_server"
