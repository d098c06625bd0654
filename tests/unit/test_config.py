"""Settings: defaults, layering, the ecosystem's variables, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import config
from bridge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_reference_file_loads_to_exactly_the_defaults():
    loaded = config.build(config_file=str(ROOT / "config" / "bridge.yaml"), environ={})
    assert loaded == config.Settings(), "config/bridge.yaml must hold the defaults, nothing else"


def test_reference_file_lists_every_setting_with_its_reason():
    text = (ROOT / "config" / "bridge.yaml").read_text()
    assert text == config.render_reference(), (
        "config/bridge.yaml is out of date: regenerate it with "
        "python -c 'from bridge import config; print(config.render_reference(), end=\"\")'")
    for key, f, _ in config.iter_settings():
        assert f.metadata.get("why"), f"setting {key} has no one-line reason"


def test_layers_apply_in_order_file_then_env_then_flags(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("cluster_id: from-file\ndns:\n  ttl: 5\n  zone: example.local\n")
    env = {"BRIDGE_DNS_TTL": "7", "BRIDGE_CLUSTER_ID": "from-env"}
    s = config.build(config_file=str(path), environ=env, flags={"cluster_id": "from-flag"})
    assert s.cluster_id == "from-flag"
    assert s.dns.ttl == 7, "environment must override the file"
    assert s.dns.zone == "example.local", "file must override the default"


def test_consul_ecosystem_variables_are_honoured():
    env = {
        "CONSUL_HTTP_ADDR": "consul.example:8501",
        "CONSUL_HTTP_SSL": "true",
        "CONSUL_HTTP_TOKEN": "s3cr3t",
        "CONSUL_HTTP_TOKEN_FILE": "/run/token",
        "CONSUL_CACERT": "/ca.pem",
        "CONSUL_CLIENT_CERT": "/c.pem",
        "CONSUL_CLIENT_KEY": "/k.pem",
        "CONSUL_HTTP_SSL_VERIFY": "false",
        "KUBECONFIG": "/kube/config",
    }
    s = config.build(environ=env)
    assert s.consul.address == "https://consul.example:8501"
    assert s.consul.token == "s3cr3t"
    assert s.consul.token_file == "/run/token"
    assert (s.consul.ca_cert, s.consul.client_cert, s.consul.client_key) == (
        "/ca.pem", "/c.pem", "/k.pem")
    assert s.consul.ssl_verify is False
    assert s.kubernetes.kubeconfig == "/kube/config"


def test_in_cluster_detected_from_service_host():
    assert config.build(environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"}).kubernetes.in_cluster
    assert not config.build(environ={}).kubernetes.in_cluster


def test_token_file_is_read_when_no_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    s = config.build(environ={"CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    assert config.token(s.consul) == "from-file"


def test_describe_masks_secrets():
    s = config.build(environ={"CONSUL_HTTP_TOKEN": "very-secret-token"})
    text = config.describe(s)
    assert "very-secret-token" not in text
    assert "token: '********'" in text


@pytest.mark.parametrize(
    ("env", "key", "value"),
    [
        ({"BRIDGE_DNS_TTL": "abc"}, "dns.ttl", "abc"),
        ({"BRIDGE_DNS_LISTEN": "nowhere"}, "dns.listen", "nowhere"),
        ({"BRIDGE_DNS_LISTEN": "127.0.0.1:99999"}, "dns.listen", "127.0.0.1:99999"),
        ({"BRIDGE_LOG_FORMAT": "xml"}, "log.format", "xml"),
        ({"BRIDGE_CLUSTER_ID": "Not_A_Label"}, "cluster_id", "Not_A_Label"),
        ({"BRIDGE_CONSUL_SSL_VERIFY": "maybe"}, "consul.ssl_verify", "maybe"),
        ({"CONSUL_HTTP_ADDR": "http://a b"}, "consul.address", "http://a b"),
    ],
)
def test_bad_values_name_key_and_value(env, key, value):
    with pytest.raises(ConfigError) as err:
        config.build(environ=env)
    message = str(err.value)
    assert key in message and repr(value) in message, message
    assert "\n" not in message, "the error must be one line"


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("dns:\n  tll: 30\n")
    with pytest.raises(ConfigError, match=r"dns\.tll.*unknown setting"):
        config.build(config_file=str(path), environ={})


def test_malformed_yaml_and_missing_file_are_named(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("dns: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.build(config_file=str(path), environ={})
    with pytest.raises(ConfigError, match="No such file"):
        config.build(config_file=str(tmp_path / "absent.yaml"), environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:53", ("127.0.0.1", 53)), (":5353", ("0.0.0.0", 5353)),
     ("[::1]:0", ("::1", 0)), ("localhost:8080", ("localhost", 8080))],
)
def test_parse_hostport(text, expected):
    assert config.parse_hostport(text) == expected
