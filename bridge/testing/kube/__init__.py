"""An in-process, real-HTTP fake of kube-apiserver, good enough to fool kubectl and the client.

`KubeAPIServer` serves namespaces, services, endpoints, pods, nodes, configmaps, secrets,
serviceaccounts (core/v1), endpointslices (discovery.k8s.io/v1), ingresses (networking.k8s.io/v1),
leases (coordination.k8s.io/v1), deployments (apps/v1), poddisruptionbudgets (policy/v1) and
the RBAC objects (rbac.authorization.k8s.io/v1) with the list/watch contract of a real server
(one global resourceVersion, history replay, 410 Expired, bookmarks, selectors, pagination,
patch flavours) and runs the controllers that matter for service discovery (cluster-IP/node-port
allocation, EndpointSlices and Endpoints from Pods) synchronously. With `tls=True` it
authenticates bearer tokens and authorizes with RBAC as a secured cluster does, and answers
access and token reviews.

Modules: `resources` (type table), `errors` (Status bodies), `selectors` and `patch` (pure),
`strategy` with `configkinds`, `appkinds` and `rbackinds` (defaults/validation), `allocation`
and `controllers`, `watchers` and `store` (state), `tables`, `discovery` and `openapi`
(kubectl), `handler` (HTTP), `faults`, `server`; for TLS: `certs`, `users`, `tokens`,
`projection` (service-account volumes), `requestinfo`, `rbac`, `bootstrap`, `escalation`,
`guard` (the request filters) and `reviews`.
"""

from bridge.testing.kube.errors import StatusError
from bridge.testing.kube.faults import RequestRecord
from bridge.testing.kube.server import KubeAPIServer
from bridge.testing.kube.store import Store

__all__ = ["KubeAPIServer", "RequestRecord", "StatusError", "Store"]
