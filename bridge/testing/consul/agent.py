"""The local agent: its own node in the catalog, its local services/checks, anti-entropy.

A real agent registers its node with a `serfHealth` check (and, being a server, the
`consul` service), keeps services registered through /v1/agent in local state, and
anti-entropy pushes that state into the catalog - deleting anything on its node that it
does not know. The fake syncs each agent write immediately (a real agent does it
asynchronously, usually within milliseconds) and runs a full anti-entropy pass only
when asked, so tests can show what happens to catalog entries placed on an agent's node.

TTL checks run as Consul's `CheckTTL` does: a timer armed when the check is added and
re-armed by every status update; when it fires the check turns critical with the output
"TTL expired" (followed by the last output given, if any), in the agent and the catalog.
The timers run on the server's clock.
"""

from __future__ import annotations

from bridge.testing.consul.catalog import HEALTH_CRITICAL, HEALTH_PASSING, Catalog
from bridge.testing.consul.config import AgentConfig
from bridge.testing.consul.deadlines import Deadlines
from bridge.testing.consul.sessions import SERF_CHECK_ID
from bridge.testing.consul.state import Record, Store, WriteTxn
from bridge.testing.timers import SYSTEM, Clock

TTL_EXPIRED = "TTL expired"

CONSUL_SERVICE_ID = "consul"


def agent_node_record(config: AgentConfig) -> Record:
    address = config.node_address
    return {
        "ID": config.node_id,
        "Node": config.node_name,
        "Address": address,
        "Datacenter": config.datacenter,
        "TaggedAddresses": {"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address},
        "Meta": {"consul-network-segment": "", "consul-version": config.version},
    }


def serf_check(config: AgentConfig) -> Record:
    return {
        "Node": config.node_name,
        "CheckID": SERF_CHECK_ID,
        "Name": "Serf Health Status",
        "Status": HEALTH_PASSING,
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": None,
        "Type": "",
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
    }


def consul_service(config: AgentConfig) -> Record:
    """The `consul` service every server registers for itself (port 8300)."""
    return {
        "ServiceKind": "",
        "ServiceID": CONSUL_SERVICE_ID,
        "ServiceName": CONSUL_SERVICE_ID,
        "ServiceTags": [],
        "ServiceAddress": "",
        "ServiceTaggedAddresses": None,
        "ServiceWeights": {"Passing": 1, "Warning": 1},
        "ServiceMeta": {
            "non_voter": "false",
            "raft_version": "3",
            "read_replica": "false",
            "serf_protocol_current": "2",
            "serf_protocol_max": "5",
            "serf_protocol_min": "1",
            "version": config.version,
        },
        "ServicePort": 8300,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": False,
        "ServiceProxy": {},
        "ServiceConnect": {},
        "ServiceLocality": None,
    }


class Agent:
    """Local agent state and its (immediate) sync into the catalog."""

    def __init__(self, config: AgentConfig, store: Store, catalog: Catalog, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        # TTL checks: their TTL in seconds and the output of their last update (changed
        # under the store's lock, like the agent tables).
        self._ttls: dict[str, float] = {}
        self._last_output: dict[str, str] = {}
        self._timers: Deadlines[str] = Deadlines(self._expire, clock, name="consul-fake-check-ttl")

    def stop(self) -> None:
        self._timers.stop()

    def has_ttl(self, check_id: str) -> bool:
        return check_id in self._ttls

    def bootstrap(self) -> None:
        """What the leader does on startup: the agent node, serfHealth, the consul service."""
        with self.store.write() as txn:
            self._ensure_self(txn)

    def _ensure_self(self, txn: WriteTxn) -> None:
        node = agent_node_record(self.config)
        self.catalog.ensure_node(txn, node)
        self.catalog.ensure_check(txn, serf_check(self.config))
        self.catalog.ensure_service(txn, self.config.node_name, consul_service(self.config))

    def add_service(self, txn: WriteTxn, service: Record, checks: list[Record], *, replace_checks: bool) -> None:
        tables = txn.tables
        # Anti-entropy syncs node info first, so a deleted agent node comes back.
        self.catalog.ensure_node(txn, agent_node_record(self.config))
        sid = service["ServiceID"]
        tables.agent_services[sid] = service
        new_ids = {c["CheckID"] for c in checks}
        if replace_checks:
            for check_id, check in list(tables.agent_checks.items()):
                if check["ServiceID"] == sid and check_id not in new_ids:
                    del tables.agent_checks[check_id]
                    self.catalog.delete_check(txn, self.config.node_name, check_id)
                    self._forget_ttl(txn, check_id)
        for check in checks:
            previous = tables.agent_checks.get(check["CheckID"])
            if previous is not None and previous["ServiceID"] == sid and not check.get("_explicit_status"):
                # Re-registering keeps a running check's status, as the agent does.
                check = {**check, "Status": previous["Status"], "Output": previous["Output"]}
            ttl = check.get("_ttl", 0.0)
            check = {k: v for k, v in check.items() if not k.startswith("_")}
            tables.agent_checks[check["CheckID"]] = check
            # A check added again is a new CheckTTL: a fresh timer, no last output.
            self._forget_ttl(txn, check["CheckID"])
            if ttl > 0:
                self._start_ttl(txn, check["CheckID"], ttl)
        self._sync_service(txn, sid)

    def remove_service(self, txn: WriteTxn, service_id: str) -> None:
        tables = txn.tables
        tables.agent_services.pop(service_id, None)
        for check_id, check in list(tables.agent_checks.items()):
            if check["ServiceID"] == service_id:
                del tables.agent_checks[check_id]
                self._forget_ttl(txn, check_id)
        self.catalog.delete_service(txn, self.config.node_name, service_id)

    def update_check(self, txn: WriteTxn, check_id: str, status: str, output: str) -> None:
        """A TTL check's update (`CheckTTL.SetStatus`): the status, and the TTL starts over."""
        check = {**txn.tables.agent_checks[check_id], "Status": status, "Output": output}
        txn.tables.agent_checks[check_id] = check
        self.catalog.ensure_check(txn, check)
        if check_id in self._ttls:
            self._start_ttl(txn, check_id, self._ttls[check_id], output)

    # The TTL bookkeeping changes once the write commits (still under the store's lock).

    def _start_ttl(self, txn: WriteTxn, check_id: str, ttl: float, last_output: str = "") -> None:
        def start() -> None:
            self._ttls[check_id] = ttl
            self._last_output[check_id] = last_output
            self._timers.arm(check_id, ttl)

        txn.after_commit.append(start)

    def _forget_ttl(self, txn: WriteTxn, check_id: str) -> None:
        def forget() -> None:
            if self._ttls.pop(check_id, None) is not None:
                self._last_output.pop(check_id, None)
                self._timers.cancel(check_id)

        txn.after_commit.append(forget)

    def _expire(self, check_id: str) -> None:
        """`CheckTTL.run`: the TTL ran out without an update."""
        if self.store.closing:
            return
        with self.store.write() as txn:
            check = txn.tables.agent_checks.get(check_id)
            if check is None or check_id not in self._ttls:
                return  # removed while the timer fired
            last = self._last_output.get(check_id, "")
            output = f"{TTL_EXPIRED} (last output before timeout follows): {last}" if last else TTL_EXPIRED
            check = {**check, "Status": HEALTH_CRITICAL, "Output": output}
            txn.tables.agent_checks[check_id] = check
            self.catalog.ensure_check(txn, check)

    def _sync_service(self, txn: WriteTxn, service_id: str) -> None:
        tables = txn.tables
        self.catalog.ensure_service(txn, self.config.node_name, tables.agent_services[service_id])
        for check in tables.agent_checks.values():
            if check["ServiceID"] == service_id:
                self.catalog.ensure_check(txn, check)

    def anti_entropy(self) -> None:
        """A full sync: push local state, delete unknown services/checks on this node."""
        node_key = self.config.node_name.lower()
        with self.store.write() as txn:
            tables = txn.tables
            self._ensure_self(txn)
            for sid in list(tables.agent_services):
                self._sync_service(txn, sid)
            for check in list(tables.agent_checks.values()):
                if not check["ServiceID"]:
                    self.catalog.ensure_check(txn, check)
            for key, service in list(tables.services.items()):
                sid = service["ServiceID"]
                if key[0] == node_key and sid != CONSUL_SERVICE_ID and sid not in tables.agent_services:
                    self.catalog.delete_service(txn, self.config.node_name, sid)
            for key, check in list(tables.checks.items()):
                cid = check["CheckID"]
                if key[0] == node_key and cid != SERF_CHECK_ID and cid not in tables.agent_checks:
                    self.catalog.delete_check(txn, self.config.node_name, cid)
