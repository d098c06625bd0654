"""A Deployment's bridge container run as a subprocess, as the kubelet would start it.

The argv is the image's entrypoint plus the container's args, the environment is the
container's (literal values; the pod's name and namespace from the downward API; a Secret
reference marked optional is left out, as the kubelet does when the Secret is absent) plus
what the test adds for the kubelet, and the
settings file is the ConfigMap key mounted at the path `--config` names, written to a
temporary file. Only addresses and paths may be rewritten (listen ports, the Consul
address, the DNS upstreams, the service-account directory, `--config` itself), so what runs
is what deploy/ would run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.proc import Proc
from tests.unit.test_deploy_manifests import _mounted_file, bridge_container, entrypoint, pod_spec

# Settings and variables that only say where things are.
ADDRESS_SETTINGS = {"consul.address", "dns.listen", "http.listen", "dns.upstreams",
                    "kubernetes.service_account_dir"}
ADDRESS_ENV = {"CONSUL_HTTP_ADDR"}
# Timings a test may shorten, so that what takes minutes at the defaults takes seconds.
TIMING_ENV = {"BRIDGE_CONSUL_WAIT"}


def start(objects: list[dict[str, Any]], deployment: dict[str, Any], tmp_path: Path, *,
          settings: Mapping[str, Any], env: Mapping[str, str] | None = None,
          kubelet_env: Mapping[str, str] | None = None,
          timing_env: Mapping[str, str] | None = None,
          secrets: Mapping[tuple[str, str], str] | None = None) -> Proc:
    """Starts the container's command. `settings` (dotted keys) and `env` rewrite addresses
    and paths only; `kubelet_env` is what the kubelet adds (KUBERNETES_SERVICE_HOST...);
    `timing_env` shortens a timing (TIMING_ENV); `secrets` holds the value of each Secret
    key, by (Secret name, key), that the test creates (others are absent).
    HOME is `tmp_path`, so no kubeconfig of this machine's user is found."""
    assert set(settings) <= ADDRESS_SETTINGS, f"not an address: {set(settings) - ADDRESS_SETTINGS}"
    assert set(env or {}) <= ADDRESS_ENV, f"not an address: {set(env or {}) - ADDRESS_ENV}"
    assert set(timing_env or {}) <= TIMING_ENV, f"not a timing: {set(timing_env or {}) - TIMING_ENV}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = pod_spec(deployment)
    container = bridge_container(spec)
    argv = [*container.get("command", entrypoint()), *container.get("args", [])]
    assert argv[:2] == ["bridge", "run"], f"the container must run `bridge run`: {argv}"
    args = argv[1:]
    assert "--config" in args, f"the container names no settings file: {argv}"
    at = args.index("--config") + 1
    path = _mounted_file(objects, spec, container, args[at], tmp_path)
    path.write_text(yaml.safe_dump(_rewritten(yaml.safe_load(path.read_text()) or {}, settings)))
    args[at] = str(path)

    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            environ[var["name"]] = str(var["value"])
        elif "fieldRef" in source:
            environ[var["name"]] = _pod_field(deployment, source["fieldRef"]["fieldPath"])
        else:
            ref = source.get("secretKeyRef", {})
            if (ref.get("name"), ref.get("key")) in (secrets or {}):
                environ[var["name"]] = (secrets or {})[(ref["name"], ref["key"])]
                continue
            assert ref.get("optional") is True, f"{var['name']} needs an object the test lacks: {var}"
    for name, value in (env or {}).items():
        assert name in environ, f"the container does not set {name}"
        environ[name] = value
    environ.update(kubelet_env or {})
    environ.update(timing_env or {})
    return Proc(*args, env=environ, inherit_env=False)


def _rewritten(data: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in settings.items():
        target = data
        *sections, leaf = key.split(".")
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return data


def _pod_field(deployment: dict[str, Any], path: str) -> str:
    """What the downward API gives the one pod of `deployment` the test runs."""
    fields = {"metadata.name": f"{deployment['metadata']['name']}-0",
              "metadata.namespace": deployment["metadata"].get("namespace", "default")}
    assert path in fields, f"the test does not provide the downward API's {path}"
    return fields[path]
