# The central bridge of one cluster: exactly what bridge/consul/client.py calls, nothing more.
# Replace CLUSTER_ID with the bridge's cluster_id (README: Consul security).
# `bridge purge` (the uninstall step, deploy/uninstall) needs nothing more: it reads as the
# bridge reads and deletes its node (with the registrations on it) and its claim.

# Its synthetic node: written in /v1/txn (Node set, Service and Check set/delete on it),
# read back through /v1/catalog/node/k8s-sync-CLUSTER_ID and /v1/health/node/k8s-sync-CLUSTER_ID.
node "k8s-sync-CLUSTER_ID" {
  policy = "write"
}

# Every other node, read with the instances on it (/v1/health/service/<name>).
node_prefix "" {
  policy = "read"
}

# The services it registers carry the names of Kubernetes Services, which no rule can list
# in advance: write on every service name, as the consul-k8s catalog sync token has it. Write
# includes read (/v1/catalog/services, /v1/health/service/<name>). With sync.service_prefix
# set, replace "" by that prefix and add service_prefix "" { policy = "read" }.
service_prefix "" {
  policy = "write"
}

# High availability: the leader's session (/v1/session/create, renew, destroy) is made
# through whichever agent answers, on that agent's node, which no rule can name in advance.
session_prefix "" {
  policy = "write"
}

# The leader's claim on this cluster id (/v1/kv/bridge/clusters/CLUSTER_ID?acquire=, ?release=).
key "bridge/clusters/CLUSTER_ID" {
  policy = "write"
}

# The other clusters' claims (/v1/kv/bridge/clusters/?recurse): which clusters are alive.
key_prefix "bridge/clusters/" {
  policy = "read"
}
