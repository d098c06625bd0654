"""Fixtures and helpers shared by the fake kube-apiserver tests (tests/integration/test_fake_kube_*.py).

A test module binds the fixtures it uses to their names, e.g.::

    kube = kube_fixtures.server(seed=11)
    core = kube_fixtures.core

(importing a fixture by name instead would make every test argument of that name a
redefinition of the import, which ruff reports as F811).
"""

import pytest
from kubernetes import client, config

from bridge.testing.kube import KubeAPIServer
from bridge.testing.timers import ManualClock


def server(seed):
    """A `kube` fixture: a started KubeAPIServer whose random choices follow `seed`, stopped afterwards."""

    @pytest.fixture
    def kube():
        started = KubeAPIServer(seed=seed)
        started.start()
        yield started
        started.stop()

    return kube


@pytest.fixture
def api(kube, tmp_path):
    """An official-client ApiClient configured from the kubeconfig the server writes."""
    api_client = config.new_client_from_config(str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    yield api_client
    api_client.close()


@pytest.fixture
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def timed_kube(clock, tmp_path):
    """A server on `clock` (its latency and watch timeouts end only when the test moves it), and
    an official-client CoreV1Api for it: `(server, core)`."""
    with KubeAPIServer(clock=clock) as server:
        api_client = config.new_client_from_config(str(server.write_kubeconfig(tmp_path / "timed-kubeconfig")))
        yield server, client.CoreV1Api(api_client)
        api_client.close()
