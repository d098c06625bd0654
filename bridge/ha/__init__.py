"""High availability: every replica answers DNS, exactly one writes.

- `elector.py`: leader election on the Lease `bridge-<cluster_id>` with client-go's
  semantics, and the fencing deadline a leader's writes must respect.
- `claim.py`: the leader's Consul session and its claim on `bridge/clusters/<cluster_id>`,
  so two clusters given the same cluster id never both write.
- `clusters.py`: every replica's view of the other clusters' claims (alive or dead).
- `leadership.py`: runs the elector and the claim on one thread; the write gate sinks ask.

Wiring (what the composition root does) is written down in `leadership.py`.
"""
