"""Session and KV state operations, as Consul's state store performs them inside a write.

Kept apart from the catalog because sessions are invalidated *by* catalog changes (a node
deregistered, a check gone critical) while KV locks are released *by* session
invalidation; the catalog calls into here, never the reverse.
"""

from __future__ import annotations

import functools

from bridge.testing.consul.errors import ApplyError
from bridge.testing.consul.state import Record, Tables, WriteTxn, cas_allows, index_matches
from bridge.testing.consul.wire import SECOND

MAX_LOCK_DELAY_NS = 60 * SECOND
SERF_CHECK_ID = "serfHealth"


def session_check_ids(session: Record) -> list[str]:
    """`Session.CheckIDs`: deprecated Checks, then NodeChecks, then ServiceChecks IDs."""
    ids = list(session.get("Checks") or [])
    ids.extend(session.get("NodeChecks") or [])
    ids.extend(check.get("ID", "") for check in session.get("ServiceChecks") or [])
    return ids


def sessions_for_check(tables: Tables, node: str, check_id: str) -> list[str]:
    node_key, check_key = node.lower(), check_id.lower()
    return [
        sid
        for sid, session in tables.sessions.items()
        if session["Node"].lower() == node_key and any(c.lower() == check_key for c in session_check_ids(session))
    ]


def sessions_for_node(tables: Tables, node: str) -> list[str]:
    node_key = node.lower()
    return [sid for sid, session in tables.sessions.items() if session["Node"].lower() == node_key]


def insert_kv(tables: Tables, idx: int, entry: Record) -> None:
    tables.kvs[entry["Key"]] = entry
    tables.bump("kvs", idx)


def kv_set(txn: WriteTxn, entry: Record, *, update_session: bool) -> Record:
    """`kvsSetTxn`: upsert, keep CreateIndex, keep Session unless told to replace it.

    An identical write is skipped (no index bump), which Consul does to avoid
    waking watchers for no-op writes.
    """
    tables = txn.tables
    existing = tables.kvs.get(entry["Key"])
    entry = dict(entry)
    entry["CreateIndex"] = existing["CreateIndex"] if existing else txn.idx
    if not update_session:
        entry["Session"] = existing["Session"] if existing else ""
    if existing is not None and _same_kv(existing, entry):
        return existing
    entry["ModifyIndex"] = txn.idx
    insert_kv(tables, txn.idx, entry)
    return entry


def _same_kv(a: Record, b: Record) -> bool:
    keys = ("LockIndex", "Key", "Flags", "Value", "Session")
    return all(a.get(key) == b.get(key) for key in keys)


def kv_cas(txn: WriteTxn, entry: Record, cas_index: int) -> bool:
    """`kvsSetCASTxn`: index 0 means create-only; otherwise ModifyIndex must match."""
    if not cas_allows(txn.tables.kvs.get(entry["Key"]), cas_index):
        return False
    kv_set(txn, entry, update_session=False)
    return True


def kv_delete_cas(txn: WriteTxn, key: str, cas_index: int) -> bool:
    """`kvsDeleteCASTxn`: a missing key counts as success, a stale index does not."""
    existing = txn.tables.kvs.get(key)
    if not index_matches(existing, cas_index):
        return existing is None
    return kv_delete(txn, key)


def kv_delete(txn: WriteTxn, key: str) -> bool:
    tables = txn.tables
    if key not in tables.kvs:
        return False
    del tables.kvs[key]
    tables.tombstones[key] = txn.idx
    tables.bump("tombstones", txn.idx)
    tables.bump("kvs", txn.idx)
    return True


def kv_delete_tree(txn: WriteTxn, prefix: str) -> None:
    tables = txn.tables
    doomed = [key for key in tables.kvs if key.startswith(prefix)]
    if not doomed:
        return
    for key in doomed:
        del tables.kvs[key]
    # Consul leaves a single tombstone for the prefix, not one per key.
    tables.tombstones[prefix] = txn.idx
    tables.bump("tombstones", txn.idx)
    tables.bump("kvs", txn.idx)


def kv_lock(txn: WriteTxn, entry: Record) -> bool:
    """`kvsLockTxn`: acquire (or re-acquire) a key for a session."""
    tables = txn.tables
    session_id = entry.get("Session", "")
    if not session_id:
        raise ApplyError("missing session")
    if session_id.lower() not in tables.sessions:
        raise ApplyError(f'invalid session "{session_id}"')
    existing = tables.kvs.get(entry["Key"])
    entry = dict(entry)
    if existing is not None:
        if existing["Session"] == session_id:
            entry["CreateIndex"] = existing["CreateIndex"]
            entry["LockIndex"] = existing["LockIndex"]
        elif existing["Session"]:
            return False
        else:
            entry["CreateIndex"] = existing["CreateIndex"]
            entry["LockIndex"] = existing["LockIndex"] + 1
    else:
        entry["CreateIndex"] = txn.idx
        entry["LockIndex"] = 1
    entry["ModifyIndex"] = txn.idx
    kv_set(txn, entry, update_session=True)
    return True


def kv_unlock(txn: WriteTxn, entry: Record) -> bool:
    """`kvsUnlockTxn`: release a key held by the given session."""
    tables = txn.tables
    session_id = entry.get("Session", "")
    if not session_id:
        raise ApplyError("missing session")
    existing = tables.kvs.get(entry["Key"])
    if existing is None or existing["Session"] != session_id:
        return False
    entry = {
        **entry,
        "Session": "",
        "LockIndex": existing["LockIndex"],
        "CreateIndex": existing["CreateIndex"],
        "ModifyIndex": txn.idx,
    }
    kv_set(txn, entry, update_session=True)
    return True


def delete_session(txn: WriteTxn, session_id: str, lock_delays: dict[str, float]) -> bool:
    """`deleteSessionTxn`: remove a session and apply its behavior to the keys it holds.

    Lock-delay stamps are recorded after commit (they are wall-clock state outside the
    tables), so a rolled-back transaction leaves none behind.
    """
    tables = txn.tables
    session = tables.sessions.pop(session_id.lower(), None)
    if session is None:
        return False
    tables.bump("sessions", txn.idx)
    delay_s = min(session["LockDelay"], MAX_LOCK_DELAY_NS) / SECOND
    held = [key for key, entry in tables.kvs.items() if entry["Session"] == session["ID"]]
    for key in held:
        if session["Behavior"] == "delete":
            kv_delete(txn, key)
        else:
            kv_set(txn, {**tables.kvs[key], "Session": ""}, update_session=True)
        if delay_s > 0:
            expiry = txn.now + delay_s
            txn.after_commit.append(functools.partial(lock_delays.__setitem__, key, expiry))
    return True
