# A sidecar bridge (or any bridge with sync.to_consul: false): it only reads.

# /v1/catalog/services and /v1/health/service/<name>: every service, with its nodes.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}

# /v1/kv/bridge/clusters/?recurse: which clusters' bridges are alive
# (sync.expire_dead_clusters_after).
key_prefix "bridge/clusters/" {
  policy = "read"
}
