"""KubeClient.watch against the Kubernetes API test server: what a watch whose position is too
old gets (a 410 Gone as an ERROR event on a 200) reaches the watch loop as Expired, so it
relists quietly, not as an unexpected error with a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import config
from bridge.errors import Expired
from bridge.kube.client import SERVICES, KubeClient
from bridge.testing.kube import KubeAPIServer


@pytest.fixture
def kube() -> Iterator[KubeAPIServer]:
    server = KubeAPIServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(kube: KubeAPIServer, tmp_path: Path) -> Iterator[KubeClient]:
    settings = config.build(environ={}, flags={
        "kubernetes.kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}).kubernetes
    made = KubeClient(settings)
    yield made
    made.close()


def _service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}


def test_a_watch_from_a_compacted_position_raises_expired(kube, client):
    old = client.list_page(SERVICES, limit=500, cont=None)["metadata"]["resourceVersion"]
    kube.apply(_service("a"))
    kube.compact()
    with pytest.raises(Expired, match=r"too old resource version"):
        for _ in client.watch(SERVICES, old, 5):
            pass


def test_watch_events_are_raw_json_objects(kube, client):
    start = client.list_page(SERVICES, limit=500, cont=None)["metadata"]["resourceVersion"]
    kube.apply(_service("b"))
    events = client.watch(SERVICES, start, 1)
    event = next(events)
    events.close()
    assert event["type"] == "ADDED"
    assert isinstance(event["object"], dict) and event["object"]["metadata"]["name"] == "b"
