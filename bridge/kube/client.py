"""The official Kubernetes client, configured from settings, with its errors mapped to ours.

This is the only module that imports `kubernetes`. Lists and watches are read as raw JSON
(`_preload_content=False`, `deserialize=False`): the pydantic models would reject objects a
real API server does send (and cost a parse the bridge does not need); `objects.py` checks
the fields the bridge uses instead.

Credentials: a kubeconfig when one is set or when not in a pod; in a pod, the service
account (`serviceaccount.py`): HTTPS to `kubernetes.api_server` verified with its ca.crt,
and a bearer token read again whenever the kubelet rotates it. Requests the server refuses
(401, 403) are logged once and held in `access` until they succeed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from bridge.config import KubernetesSettings
from bridge.errors import ConfigError, Conflict, Denied, Expired, Rejected, Transient, Unavailable
from bridge.kube.access import Access, Request, status_message, status_reason
from bridge.kube.serviceaccount import ServiceAccount
from bridge.outage import Clock, Outage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    """A watchable collection: its name for logs and the client method that lists it."""

    plural: str
    list_method: Callable[[client.ApiClient], Callable[..., Any]]


SERVICES = Resource(
    "services", lambda api: client.CoreV1Api(api).list_service_for_all_namespaces)
NODES = Resource("nodes", lambda api: client.CoreV1Api(api).list_node)
ENDPOINT_SLICES = Resource(
    "endpointslices",
    lambda api: client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces)
INGRESSES = Resource(
    "ingresses", lambda api: client.NetworkingV1Api(api).list_ingress_for_all_namespaces)


READY_PATH = "/readyz"
PROBE_TIMEOUT = 2.0  # seconds


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def map_error(exc: BaseException, what: str) -> Exception:
    """A client-library exception as one of ours, with a message that names the call."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        if status == 410:
            return Expired(f"{what}: {exc.reason}")
        if status >= 500 or status == 0:
            return Unavailable(f"{what}: HTTP {status} {exc.reason}", _retry_after(exc))
        if status == 429:
            return Transient(f"{what}: HTTP {status} {exc.reason}", _retry_after(exc))
        if status in (401, 403):
            return Denied(f"{what}: HTTP {status} {status_message(exc.body, exc.reason)}")
        # The Status says what is wrong (for a 422, every field and why): say it too.
        return Rejected(f"{what}: HTTP {status}: {status_message(exc.body, str(exc.reason))}",
                        status_reason(exc.body) or f"HTTP{status}")
    if isinstance(exc, json.JSONDecodeError):
        return Transient(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return Unavailable(f"{what}: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


class _Watch(watch.Watch):
    """The library's watch with each event left as parsed JSON (the bridge reads raw objects).

    Its own `deserialize=False` mode reads an ERROR event's `raw_object`, which only this
    method sets: every ERROR event (a 410 Gone among them, how an API server says a watch's
    position is too old) became a KeyError, logged as an unexpected error with its traceback.
    """

    def unmarshal_event(self, data: str, return_type: Any) -> dict[str, Any] | None:
        if not data or data.isspace():
            return None
        event: dict[str, Any] = json.loads(data)
        event["raw_object"] = event.get("object")
        return event


class KubeClient:
    """List and watch collections on one API server."""

    def __init__(self, settings: KubernetesSettings, *, clock: Clock | None = None) -> None:
        """`clock`: what the outage (`bridge/outage.py`) reads; the system's by default."""
        self._settings = settings
        self.access = Access()
        # The pod's namespace in a cluster (where a Lease would live), else ''.
        self.namespace = ""
        if settings.kubeconfig or not settings.in_cluster:
            cfg = self._from_kubeconfig(settings)
        else:
            account = ServiceAccount(settings.service_account_dir)
            self.namespace = account.namespace()
            cfg = self._in_cluster(settings, account)
        # Retries are ours (with backoff and Retry-After); urllib3's would hide outages.
        cfg.retries = False
        self.api = client.ApiClient(cfg)
        self._watches: set[watch.Watch] = set()
        # Every call below goes through it: while the API server is down, only the probe is sent.
        self.outage = Outage("kubernetes", self._probe_ready, probe_name=f"GET {READY_PATH}",
                             clock=clock)

    @staticmethod
    def _from_kubeconfig(settings: KubernetesSettings) -> client.Configuration:
        cfg = client.Configuration()
        try:
            config.load_kube_config(
                config_file=settings.kubeconfig or None,
                context=settings.context or None,
                client_configuration=cfg,
                persist_config=False,
            )
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            raise ConfigError("kubernetes.kubeconfig", settings.kubeconfig,
                              f"cannot load Kubernetes credentials: {exc}") from None
        return cfg

    @staticmethod
    def _in_cluster(settings: KubernetesSettings, account: ServiceAccount) -> client.Configuration:
        """What client-go's rest.InClusterConfig does, from settings instead of the
        environment, with the token read at each request (see serviceaccount.py)."""
        if not settings.api_server:
            raise ConfigError("kubernetes.api_server", "", "in a pod, KUBERNETES_SERVICE_HOST "
                              "and KUBERNETES_SERVICE_PORT name the API server; one is unset")
        cfg = client.Configuration()
        cfg.host = settings.api_server
        cfg.verify_ssl = True
        cfg.ssl_ca_cert = str(account.ca_path)
        cfg.api_key_prefix["BearerToken"] = "Bearer"
        cfg.api_key["BearerToken"] = account.token()

        def refresh(cfg: client.Configuration) -> None:
            cfg.api_key["BearerToken"] = account.token()

        # Called by the client before every request it authenticates.
        cfg.refresh_api_key_hook = refresh  # type: ignore[assignment]  # stubbed as None only
        return cfg

    def _probe_ready(self) -> None:
        """The outage's probe: the API server is back when its /readyz answers (any
        answer but a 5xx: a 401 or 403 comes from a server that is up)."""
        try:
            serialized = self.api.param_serialize("GET", READY_PATH, auth_settings=["BearerToken"])
            response = self.api.call_api(*serialized, _request_timeout=PROBE_TIMEOUT)
        except ApiException as exc:
            if (exc.status or 0) >= 500 or not exc.status:
                raise Unavailable(f"{READY_PATH}: HTTP {exc.status} {exc.reason}") from None
            return
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"{READY_PATH}: {type(exc).__name__}") from None
        if response.status >= 500:
            raise Unavailable(f"{READY_PATH}: HTTP {response.status}")

    def _failed(self, exc: BaseException, request: Request, what: str) -> Exception:
        """`exc` as one of ours, reported to the outage; a refusal is also recorded (and
        logged once) in `access`."""
        if isinstance(exc, ApiException) and exc.status in (401, 403):
            self.access.refused(request, exc.status, status_message(exc.body, exc.reason))
        return self._mapped(exc, what)

    def _mapped(self, exc: BaseException, what: str) -> Exception:
        """`exc` as one of ours (`map_error`), reported to the outage."""
        mapped = map_error(exc, what)
        if isinstance(mapped, Unavailable):
            self.outage.failed(mapped)
        elif isinstance(exc, ApiException):
            self.outage.succeeded()  # the server answered
        return mapped

    def _answered(self, request: Request | None = None) -> None:
        self.outage.succeeded()
        if request is not None:
            self.access.allowed(request)

    def list_page(self, resource: Resource, *, limit: int, cont: str | None,
                  label_selector: str = "") -> dict[str, Any]:
        """One page of a list as raw JSON; with `label_selector`, only the objects it selects."""
        what = f"list {resource.plural}"
        kwargs: dict[str, Any] = {"limit": limit, "_preload_content": False,
                                  "_request_timeout": (10, 60)}
        if cont:
            kwargs["_continue"] = cont
        if label_selector:
            kwargs["label_selector"] = label_selector
        request = Request("list", resource.plural)
        self.outage.admit()
        try:
            response = resource.list_method(self.api)(**kwargs)
            page = json.loads(response.data)
        except Exception as exc:
            raise self._failed(exc, request, what) from exc
        self._answered(request)
        return page

    def watch(self, resource: Resource, resource_version: str,
              timeout_seconds: int) -> Iterator[dict[str, Any]]:
        """Raw watch events from `resource_version` until the server ends the stream.

        Raises Expired on a 410 (as an ERROR event or a status), Transient on I/O errors.
        """
        what = f"watch {resource.plural}"
        request = Request("watch", resource.plural)
        self.outage.admit()
        w = _Watch()
        self._watches.add(w)
        try:
            stream = w.stream(
                resource.list_method(self.api),
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                # A read timeout past the server's own timeout notices a dead connection.
                _request_timeout=(10, timeout_seconds + 30),
            )
            opened = False
            for event in stream:
                if event is None:
                    continue  # a blank line
                if not opened:
                    opened = True
                    self._answered(request)
                yield event
            self._answered(request)
        except Exception as exc:
            raise self._failed(exc, request, what) from exc
        finally:
            self._watches.discard(w)

    def _writer(self, plural: str) -> tuple[Any, str]:
        if plural == "services":
            return client.CoreV1Api(self.api), "service"
        if plural == "endpointslices":
            return client.DiscoveryV1Api(self.api), "endpoint_slice"
        if plural == "leases":
            return client.CoordinationV1Api(self.api), "lease"
        raise ValueError(f"the bridge does not write {plural}")

    def read(self, plural: str, namespace: str, name: str, *,
             timeout: float = 30.0) -> dict[str, Any] | None:
        """One object as raw JSON (a namespace when `plural` is "namespaces"), None if it
        does not exist. Raises Rejected or Transient."""
        what = f"get {plural} {namespace}/{name}" if namespace else f"get {plural} {name}"
        request = Request("get", plural, namespace)
        response: Any  # the raw HTTP response (_preload_content=False), not the model
        self.outage.admit()
        try:
            if plural == "namespaces":
                response = client.CoreV1Api(self.api).read_namespace(
                    name, _preload_content=False, _request_timeout=timeout)
            else:
                api, kind = self._writer(plural)
                response = getattr(api, f"read_namespaced_{kind}")(
                    name, namespace, _preload_content=False, _request_timeout=timeout)
            found = json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                self._answered(request)
                return None
            raise self._failed(exc, request, what) from None
        except Exception as exc:
            raise self._mapped(exc, what) from exc
        self._answered(request)
        return found

    def write(self, verb: str, plural: str, namespace: str, name: str,
              body: dict[str, Any] | None = None, *, timeout: float = 30.0) -> dict[str, Any] | None:
        """create, replace or delete one object; a create or replace returns the object as
        stored (with its new resourceVersion). A delete of an object already gone succeeds.
        Raises Conflict on 409 (the object changed or exists), Rejected or Transient."""
        api, kind = self._writer(plural)
        what = f"{verb} {plural} {namespace}/{name}"
        # RBAC calls a replace (PUT) "update".
        request = Request("update" if verb == "replace" else verb, plural, namespace)
        stored = None
        self.outage.admit()
        try:
            if verb == "create":
                response = getattr(api, f"create_namespaced_{kind}")(
                    namespace, body, _preload_content=False, _request_timeout=timeout)
                stored = json.loads(response.data)
            elif verb == "replace":
                response = getattr(api, f"replace_namespaced_{kind}")(
                    name, namespace, body, _preload_content=False, _request_timeout=timeout)
                stored = json.loads(response.data)
            elif verb == "delete":
                getattr(api, f"delete_namespaced_{kind}")(name, namespace, _preload_content=False,
                                                          _request_timeout=timeout)
            else:
                raise ValueError(f"unknown verb {verb}")
        except ApiException as exc:
            if verb == "delete" and exc.status == 404:
                self._answered(request)
                return None
            if exc.status == 409:
                self._answered()
                raise Conflict(f"{what}: {exc.reason}") from None
            raise self._failed(exc, request, what) from None
        except Exception as exc:
            raise self._mapped(exc, what) from exc
        self._answered(request)
        return stored

    def close(self) -> None:
        """Ends open watch streams so their threads return promptly."""
        self.outage.close()
        for w in list(self._watches):
            w.stop()
            resp = getattr(w, "_resp", None)
            if resp is not None:
                try:
                    resp.shutdown()
                except Exception:
                    log.debug("closing a watch stream failed", exc_info=True)
        try:
            self.api.close()
        except Exception:
            log.debug("closing the API client failed", exc_info=True)
