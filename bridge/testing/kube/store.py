"""The object store: objects, the global resourceVersion, the change history, and watchers.

Like etcd behind kube-apiserver, every write of any object bumps one global integer revision,
serialized as a string in `metadata.resourceVersion`. Each write is also appended to a bounded
history ring; the ring serves watches that resume from a resourceVersion and lists that must
show a consistent past snapshot (continue tokens, `resourceVersionMatch=Exact`). Compaction,
by `compact()` or by the ring filling up, makes older positions answer 410 Expired.

One re-entrant lock guards everything. A watch subscribes and takes its snapshot under that
lock, and writes fan out to watchers under it too, so no event falls between a list and a
watch. Controllers (`controllers.py`) run synchronously after each outermost write, still
under the lock, so a client that gets a response also sees what the controllers did with it.

Returned objects are deep copies; stored objects are never mutated in place (every write
stores a new dict), which lets history entries and watch events share them safely.
"""

from __future__ import annotations

import base64
import builtins
import json
import random
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from bridge.testing.kube import errors, patch, strategy
from bridge.testing.kube.errors import FieldError, StatusError
from bridge.testing.kube.jsonvalue import clone
from bridge.testing.kube.resources import ALL, NAMESPACES, ResourceType, by_kind, lookup
from bridge.testing.kube.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    object_fields,
    parse_field_selector,
    parse_label_selector,
    supported_fields,
)
from bridge.testing.kube.watchers import ADDED, DELETED, MODIFIED, Change, Watcher

JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects

INITIAL_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
PROTECTED_NAMESPACES = frozenset({"default", "kube-public", "kube-system"})
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's SimpleNameGenerator alphabet

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)


class Admission(Protocol):
    """Mutates or rejects an object before it is stored (e.g. cluster-IP allocation)."""

    def admit(self, store: Store, rt: ResourceType, old: JSON | None, new: JSON) -> list[FieldError]: ...


class Controller(Protocol):
    """Reacts to committed changes by writing through the store (e.g. EndpointSlices)."""

    def handle(self, store: Store, change: Change) -> None: ...


def _rv_of(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _parse_rv(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        raise errors.bad_request(f'Invalid value: "{value}": resourceVersion must be an integer') from None
    if rv < 0:
        raise errors.bad_request(f'Invalid value: "{value}": resourceVersion must be non-negative')
    return rv


class Store:
    """All objects of the fake cluster. Thread-safe; see the module docstring for the model."""

    def __init__(
        self,
        *,
        history_size: int = 10_000,
        watch_capacity: int = 10_000,
        seed: int | None = None,
        controllers: bool = True,
        max_endpoints_per_slice: int = 100,
    ) -> None:
        self._lock = threading.RLock()
        self._rv = 0
        self._objects: dict[str, dict[Key, JSON]] = {rt.plural: {} for rt in ALL}
        # The same keys filed by namespace: the controllers read one namespace's Services, Pods
        # and slices on every Pod write, which must not cost a sort of the whole table.
        self._by_namespace: dict[str, dict[str, dict[Key, None]]] = {rt.plural: {} for rt in ALL}
        self._history: deque[Change] = deque()
        self._history_size = history_size
        self._compacted = 0  # changes with rv <= this are no longer in the history
        self._watch_capacity = watch_capacity
        self._watchers: set[Watcher] = set()
        self._pending: deque[Change] = deque()
        self._depth = 0
        self._dispatching = False
        self.random = random.Random(seed)
        self.admission: list[Admission] = []
        self.controllers: list[Controller] = []
        if controllers:
            # Imported here: controllers.py needs Store for type hints only, but keep it one-way.
            from bridge.testing.kube.controllers import install

            install(self, max_endpoints_per_slice=max_endpoints_per_slice)
        for name in INITIAL_NAMESPACES:
            self.create(NAMESPACES, None, {"metadata": {"name": name}})

    # --- reads ---------------------------------------------------------------------------

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @property
    def resource_version(self) -> str:
        """The current global revision (the resourceVersion of the latest write)."""
        with self._lock:
            return str(self._rv)

    @property
    def compacted_resource_version(self) -> int:
        with self._lock:
            return self._compacted

    def get(self, resource: str | ResourceType, namespace: str | None, name: str) -> JSON:
        rt = lookup(resource)
        with self._lock:
            obj = self.peek(rt, namespace, name)
            if obj is None:
                raise errors.not_found(rt, name)
            return clone(obj)

    def find(self, resource: str | ResourceType, namespace: str | None, name: str) -> JSON | None:
        with self._lock:
            obj = self.peek(resource, namespace, name)
            return clone(obj) if obj is not None else None

    def objects(self, resource: str | ResourceType, namespace: str | None = None) -> list[JSON]:
        """Deep copies of all objects of a resource, sorted by (namespace, name)."""
        with self._lock:
            return [clone(o) for o in self.live(resource, namespace)]

    def peek(self, resource: str | ResourceType, namespace: str | None, name: str) -> JSON | None:
        """The stored object itself, not a copy: for controllers, which must not mutate it."""
        rt = lookup(resource)
        return self._objects[rt.plural].get((namespace or "" if rt.namespaced else "", name))

    def live(self, resource: str | ResourceType, namespace: str | None = None) -> Iterator[JSON]:
        """Stored objects (not copies) sorted by key; callers must hold `lock`."""
        rt = lookup(resource)
        table = self._objects[rt.plural]
        for key in self._keys(rt, namespace):
            yield table[key]

    def _keys(self, rt: ResourceType, namespace: str | None) -> list[Key]:
        """The current keys of `rt` in `namespace` (all of them for None or a cluster-scoped
        resource), sorted."""
        if namespace is None or not rt.namespaced:
            return sorted(self._objects[rt.plural])
        return sorted(self._by_namespace[rt.plural].get(namespace, ()))

    def list(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> JSON:
        """A `<Kind>List` body; pages share one resourceVersion (a consistent snapshot)."""
        rt = lookup(resource)
        labels, fields = self._selectors(rt, label_selector, field_selector)
        start_after: Key | None = None
        keys: list[Key] | None = None
        with self._lock:
            current = self._rv
            if continue_token:
                list_rv, start_after = self._decode_continue(continue_token)
                if list_rv < self._compacted:
                    raise errors.expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter, or use "
                        "the continue token in this response to retrieve the remainder of the "
                        "results. Continuing with the provided token results in an inconsistent "
                        "list - objects that were created, modified, or deleted between the time "
                        "the first chunk was returned and now may show up in the list.",
                        self._encode_continue(current, start_after),
                    )
                table = self._state_at(rt, list_rv)
            elif resource_version_match == "Exact":
                if not resource_version:
                    raise errors.bad_request("resourceVersionMatch=Exact requires resourceVersion")
                list_rv = _parse_rv(resource_version)
                if list_rv > current:
                    raise errors.too_large_resource_version(list_rv, current)
                if list_rv < self._compacted:
                    raise errors.too_old_resource_version(list_rv, self._compacted)
                table = self._state_at(rt, list_rv)
            else:
                if resource_version_match not in (None, "", "NotOlderThan"):
                    raise errors.bad_request(
                        f'resourceVersionMatch: Unsupported value: "{resource_version_match}": '
                        'supported values: "Exact", "NotOlderThan"'
                    )
                if resource_version not in (None, "", "0") and _parse_rv(resource_version) > current:
                    raise errors.too_large_resource_version(_parse_rv(resource_version), current)
                list_rv, table = current, dict(self._objects[rt.plural])
                keys = self._keys(rt, namespace)
            if keys is None:  # an older state, which the namespace index does not file
                keys = sorted(k for k in table if namespace is None or not rt.namespaced or k[0] == namespace)
            if start_after is not None:
                keys = [k for k in keys if k > start_after]
            items: list[JSON] = []
            last_key: Key | None = None
            remaining = 0
            for index, key in enumerate(keys):
                if limit and len(items) >= limit:
                    # Like etcd, more keys in range means a continue token, even if none of
                    # them turns out to match the selectors.
                    remaining = len(keys) - index
                    break
                obj = table[key]
                meta = obj.get("metadata") or {}
                if not labels.empty and not labels.matches(meta.get("labels")):
                    continue
                if not fields.empty and not fields.matches(object_fields(rt.plural, obj)):
                    continue
                items.append(obj)
                last_key = key
            # Real list items carry no kind/apiVersion; the list itself does.
            body_items = [{k: clone(v) for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        list_meta: JSON = {"resourceVersion": str(list_rv)}
        if remaining and last_key is not None:
            list_meta["continue"] = self._encode_continue(list_rv, last_key)
            if labels.empty and fields.empty:
                list_meta["remainingItemCount"] = remaining
        return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": list_meta, "items": body_items}

    def _selectors(
        self, rt: ResourceType, label_selector: str | None, field_selector: str | None
    ) -> tuple[LabelSelector, FieldSelector]:
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector, supported_fields(rt.plural))
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from None
        return labels, fields

    def _state_at(self, rt: ResourceType, rv: int) -> dict[Key, JSON]:
        """The objects of one resource as they were at revision `rv`, by undoing later changes."""
        table = dict(self._objects[rt.plural])
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            if change.resource != rt.plural:
                continue
            key = (change.namespace, change.name)
            if change.type == ADDED:
                table.pop(key, None)
            elif change.prev is not None:
                table[key] = change.prev
        return table

    @staticmethod
    def _encode_continue(rv: int, after: Key) -> str:
        start = f"{after[0]}/{after[1]}" if after[0] else after[1]
        raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, Key]:
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            start = str(raw["start"]).rstrip("\x00")
            rv = int(raw["rv"])
        except (ValueError, KeyError, TypeError):
            raise errors.bad_request(f"continue key is not valid: {token!r}") from None
        namespace, _, name = start.rpartition("/")
        return rv, (namespace, name)

    # --- writes ----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            if self._depth == 0 and not self._dispatching:
                self._run_controllers()

    def _run_controllers(self) -> None:
        # Controller writes land back here through nested transactions; the flag keeps one
        # draining loop so changes are handled in commit order.
        self._dispatching = True
        try:
            while self._pending:
                change = self._pending.popleft()
                for controller in self.controllers:
                    controller.handle(self, change)
        finally:
            self._dispatching = False
            self._pending.clear()

    def _commit(self, rt: ResourceType, kind: str, obj: JSON, prev: JSON | None) -> JSON:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        namespace = meta.get("namespace", "") if rt.namespaced else ""
        key = (namespace, meta["name"])
        spaces = self._by_namespace[rt.plural]
        if kind == DELETED:
            self._objects[rt.plural].pop(key, None)
            keys = spaces.get(namespace)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del spaces[namespace]
        else:
            self._objects[rt.plural][key] = obj
            spaces.setdefault(namespace, {})[key] = None
        change = Change(self._rv, kind, rt.plural, namespace, meta["name"], obj, prev)
        self._history.append(change)
        while len(self._history) > self._history_size:
            self._compacted = self._history.popleft().rv
        for watcher in list(self._watchers):
            watcher.offer(change)
        self._pending.append(change)
        return obj

    def _resolve_namespace(self, rt: ResourceType, namespace: str | None, body: JSON) -> str:
        meta: JSON = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
        given = meta.get("namespace") if meta else None
        if not rt.namespaced:
            return ""
        if namespace and given and given != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        return namespace or given or "default"

    def _check_kind(self, rt: ResourceType, body: Any) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request(f"the body must be a {rt.kind} object")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if (kind and kind != rt.kind) or (api_version and api_version != rt.api_version):
            raise errors.bad_request(
                f'{kind or rt.kind} in version "{api_version or rt.api_version}" cannot be handled '
                f"as a {rt.kind}: the object sent is not a {rt.api_version} {rt.kind}"
            )

    def _admit(self, rt: ResourceType, old: JSON | None, new: JSON, found: builtins.list[FieldError]) -> None:
        if not found:
            for hook in self.admission:
                found = found + hook.admit(self, rt, old, new)
        if found:
            raise errors.invalid(rt, new["metadata"].get("name", ""), found)

    def _generate_name(self, rt: ResourceType, namespace: str, base: str) -> str:
        base = base[:58]  # generated names must still fit 63 characters
        for _ in range(16):
            name = base + "".join(self.random.choice(_NAME_CHARS) for _ in range(5))
            if (namespace, name) not in self._objects[rt.plural]:
                return name
        raise errors.already_exists(rt, base)

    def create(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        body: JSON,
        *,
        dry_run: bool = False,
        detach: bool = True,
    ) -> JSON:
        """Create an object (POST). A `status` is kept for Pods and Services: see strategy.py.

        `detach=False` returns the stored object itself (read-only!) to save a copy; for
        controllers, which only need its resourceVersion.
        """
        rt = lookup(resource)
        self._check_kind(rt, body)
        ns = self._resolve_namespace(rt, namespace, body)
        with self._transaction():
            if rt.namespaced:
                owner = self.peek(NAMESPACES, None, ns)
                if owner is None:
                    raise errors.not_found(NAMESPACES, ns)
                if owner["metadata"].get("deletionTimestamp"):
                    raise errors.forbidden(
                        rt,
                        body.get("metadata", {}).get("name", ""),
                        f"unable to create new content in namespace {ns} because it is being terminated",
                    )
            obj = strategy.prepare_create(rt, body, keep_status=True)
            meta = obj["metadata"]
            if rt.namespaced:
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            if not meta.get("name"):
                if meta.get("generateName"):
                    meta["name"] = self._generate_name(rt, ns, str(meta["generateName"]))
                else:
                    raise errors.invalid(
                        rt, "", [FieldError("Required", "metadata.name", None, "name or generateName is required")]
                    )
            if rt.plural == "namespaces":
                strategy.apply_defaults(rt, obj)  # the name label needs the final name
            found = strategy.validate(rt, obj)
            if not found and (ns, meta["name"]) in self._objects[rt.plural]:
                raise errors.already_exists(rt, meta["name"])
            self._admit(rt, None, obj, found)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = strategy.now()
            if dry_run:
                return obj
            committed = self._commit(rt, ADDED, obj, None)
            return clone(committed) if detach else committed

    def put(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        body: JSON,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        detach: bool = True,
    ) -> tuple[JSON, bool]:
        """Replace (PUT); returns (object, created) since some types create on update."""
        rt = lookup(resource)
        self._check_kind(rt, body)
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else None
        if meta is None:
            raise errors.bad_request("metadata must be set")
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        ns = self._resolve_namespace(rt, namespace, body)
        with self._transaction():
            old = self.peek(rt, ns, name)
            if old is None:
                if subresource or not rt.allow_create_on_update:
                    raise errors.not_found(rt, name)
                fresh = clone(body)
                fresh["metadata"]["name"] = name
                return self.create(rt, ns or None, fresh, dry_run=dry_run, detach=detach), True
            return self._update(rt, old, body, _rv_of(body), subresource, dry_run, detach), False

    def replace(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        body: JSON,
        *,
        subresource: str | None = None,
    ) -> JSON:
        return self.put(resource, namespace, name, body, subresource=subresource)[0]

    def patch(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JSON:
        """Apply a JSON, merge or strategic merge patch (`patch_type` is the content type)."""
        rt = lookup(resource)
        with self._transaction():
            old = self.peek(rt, namespace or "", name)
            if old is None:
                raise errors.not_found(rt, name)
            try:
                if patch_type == MERGE_PATCH:
                    patched = patch.merge_patch(old, body)
                elif patch_type == STRATEGIC_MERGE_PATCH:
                    patched = patch.strategic_merge_patch(old, body, patch.schema_for(rt.kind))
                elif patch_type == JSON_PATCH:
                    patched = patch.json_patch(old, body)
                else:
                    raise errors.unsupported_media_type(patch_type, list(PATCH_TYPES))
            except patch.PatchError as exc:
                raise StatusError(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {exc}", {}
                ) from None
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise errors.bad_request("the patched object is not a valid object")
            self._check_kind(rt, patched)
            patched_meta = patched["metadata"]
            if patched_meta.get("name") != name:
                raise errors.bad_request(
                    f"the name of the object ({patched_meta.get('name')}) does not match the name on the URL ({name})"
                )
            if rt.namespaced and patched_meta.get("namespace") != old["metadata"].get("namespace"):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            return self._update(rt, old, patched, _rv_of(patched), subresource, dry_run, True)

    def server_side_apply(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> tuple[JSON, bool]:
        """An `application/apply-patch+yaml` PATCH; returns (object, created).

        Simplified: the applied configuration creates the object or is merged onto it like a
        strategic merge patch. There are no managedFields, so fields a manager stops applying
        stay, and no conflicts between managers are reported (as if every apply were forced).
        """
        rt = lookup(resource)
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            raise errors.bad_request("error decoding YAML: the applied configuration needs apiVersion and kind")
        self._check_kind(rt, body)
        meta: JSON = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        ns = self._resolve_namespace(rt, namespace, body)
        with self._transaction():
            old = self.peek(rt, ns, name)
            if old is None:
                if subresource:
                    raise errors.not_found(rt, name)
                fresh = clone(body)
                fresh.setdefault("metadata", {})["name"] = name
                return self.create(rt, ns or None, fresh, dry_run=dry_run), True
            applied = clone(body)
            applied.get("metadata", {}).pop("resourceVersion", None)
            merged = patch.strategic_merge_patch(old, applied, patch.schema_for(rt.kind))
            requested_rv = _rv_of(body)
            return self._update(rt, old, merged, requested_rv, subresource, dry_run, True), False

    def _update(
        self,
        rt: ResourceType,
        old: JSON,
        body: JSON,
        requested_rv: str,
        subresource: str | None,
        dry_run: bool,
        detach: bool,
    ) -> JSON:
        name = old["metadata"]["name"]
        if requested_rv and requested_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        new = strategy.prepare_update(rt, old, body, subresource=subresource)
        new["metadata"]["name"] = name
        if rt.namespaced:
            new["metadata"]["namespace"] = old["metadata"]["namespace"]
        else:
            new["metadata"].pop("namespace", None)
        self._admit(rt, old, new, strategy.validate(rt, new, old))
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old or dry_run:
            # The apiserver skips the storage write when nothing changed: no new revision.
            return new
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            # Removing the last finalizer of an object being deleted completes the deletion.
            committed = self._commit(rt, DELETED, new, old)
        else:
            committed = self._commit(rt, MODIFIED, new, old)
        return clone(committed) if detach else committed

    def delete(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        name: str,
        *,
        preconditions: JSON | None = None,
        dry_run: bool = False,
        detach: bool = True,
    ) -> tuple[JSON, bool]:
        """Delete an object; returns (object, finished). Finalizers postpone the removal."""
        rt = lookup(resource)
        with self._transaction():
            old = self.peek(rt, namespace or "", name)
            if old is None:
                raise errors.not_found(rt, name)
            meta = old["metadata"]
            for field, value in (preconditions or {}).items():
                have = meta.get("uid" if field == "uid" else "resourceVersion")
                if value and value != have:
                    label = "UID" if field == "uid" else "ResourceVersion"
                    raise errors.conflict(
                        rt,
                        name,
                        f"Precondition failed: {label} in precondition: {value}, {label} in object meta: {have}",
                    )
            if rt.plural == "namespaces" and name in PROTECTED_NAMESPACES:
                raise errors.forbidden(rt, name, "this namespace may not be deleted")
            if dry_run:
                return clone(old), True
            if rt.plural == "namespaces":
                return self._delete_namespace(old)
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return clone(old), False
                marked = clone(old)
                marked["metadata"]["deletionTimestamp"] = strategy.now()
                marked["metadata"]["deletionGracePeriodSeconds"] = 0
                return clone(self._commit(rt, MODIFIED, marked, old)), False
            final = self._commit(rt, DELETED, clone(old), old)
            return (clone(final) if detach else final), True

    def _delete_namespace(self, old: JSON) -> tuple[JSON, bool]:
        # The namespace controller's job, done inline: mark Terminating, delete the contents,
        # and remove the namespace once nothing (e.g. an object with finalizers) is left.
        name = old["metadata"]["name"]
        terminating = old
        if not old["metadata"].get("deletionTimestamp"):
            marked = clone(old)
            marked["metadata"]["deletionTimestamp"] = strategy.now()
            marked["status"] = {**(marked.get("status") or {}), "phase": "Terminating"}
            terminating = self._commit(NAMESPACES, MODIFIED, marked, old)
        for rt in ALL:
            if rt.namespaced:
                for obj in list(self.live(rt, name)):
                    if not obj["metadata"].get("deletionTimestamp"):
                        self.delete(rt, name, obj["metadata"]["name"])
        finished = self.finalize_namespace(name)
        return clone(terminating), finished

    def finalize_namespace(self, name: str) -> bool:
        """Remove a Terminating namespace if it is empty; True if it is gone."""
        with self._transaction():
            ns = self.peek(NAMESPACES, None, name)
            if ns is None:
                return True
            if not ns["metadata"].get("deletionTimestamp"):
                return False
            if any(next(self.live(rt, name), None) is not None for rt in ALL if rt.namespaced):
                return False
            final = clone(ns)
            final["spec"] = {**(final.get("spec") or {}), "finalizers": []}
            self._commit(NAMESPACES, DELETED, final, ns)
            return True

    def delete_collection(
        self,
        resource: str | ResourceType,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        rt = lookup(resource)
        with self._transaction():
            listed = self.list(rt, namespace, label_selector=label_selector, field_selector=field_selector)
            deleted = []
            for item in listed["items"]:
                meta = item["metadata"]
                obj, _ = self.delete(rt, meta.get("namespace"), meta["name"])
                deleted.append({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
            listed["items"] = deleted
            listed["metadata"] = {"resourceVersion": str(self._rv)}
            return listed

    def apply(self, obj: JSON) -> JSON:
        """Create or replace one object as a user would; a given Pod/Service status is applied too."""
        rt = by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rt is None:
            raise errors.bad_request(f'no matches for kind "{obj.get("kind")}" in version "{obj.get("apiVersion")}"')
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        ns = (meta.get("namespace") or "default") if rt.namespaced else None
        with self._transaction():
            if not name or self.peek(rt, ns, name) is None:
                return self.create(rt, ns, obj)
            body = clone(obj)
            body["metadata"].pop("resourceVersion", None)
            result, _ = self.put(rt, ns, name, body)
            if rt.plural in strategy.KEEPS_STATUS and "status" in obj:
                status_body = {"metadata": {"name": name}, "status": clone(obj["status"])}
                result, _ = self.put(rt, ns, name, status_body, subresource="status")
            return result

    # --- watches -----------------------------------------------------------------------

    def watch(
        self,
        resource: str | ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        allow_bookmarks: bool = False,
        send_initial_events: bool | None = None,
    ) -> Watcher:
        """Subscribe; the initial ADDED events or the history replay are queued atomically."""
        rt = lookup(resource)
        labels, fields = self._selectors(rt, label_selector, field_selector)
        from_rv = None if resource_version in (None, "", "0") else _parse_rv(str(resource_version))
        watcher = Watcher(
            rt,
            namespace if rt.namespaced else None,
            labels,
            fields,
            allow_bookmarks=allow_bookmarks,
            capacity=self._watch_capacity,
        )
        with self._lock:
            if from_rv is None or send_initial_events:
                for obj in self.live(rt, namespace):
                    if watcher.matches(obj):
                        watcher.push_added(obj)
                if send_initial_events:
                    watcher.bookmark(self._rv, {"k8s.io/initial-events-end": "true"})
            elif from_rv < self._compacted:
                watcher.fail(errors.too_old_resource_version(from_rv, self._compacted))
                return watcher
            else:
                watcher.min_rv = from_rv
                for change in self._history:
                    if change.rv > from_rv:
                        watcher.offer(change)
            self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)
        watcher.close()

    def watcher_count(self) -> int:
        with self._lock:
            return len(self._watchers)

    def compact(self, upto: int | str | None = None) -> int:
        """Forget history up to `upto` (default: everything); older positions then get 410."""
        with self._lock:
            target = self._rv if upto is None else min(int(upto), self._rv)
            while self._history and self._history[0].rv <= target:
                self._history.popleft()
            self._compacted = max(self._compacted, target)
            return self._compacted

    def emit_bookmark(self) -> int:
        """Send a BOOKMARK at the current revision to every watcher that allows bookmarks."""
        with self._lock:
            targets = [w for w in self._watchers if w.allow_bookmarks]
            for watcher in targets:
                watcher.bookmark(self._rv)
            return len(targets)

    def bookmark(self, watcher: Watcher) -> None:
        """Queue a bookmark for one watcher at the current revision (used before timeouts)."""
        with self._lock:
            if watcher.allow_bookmarks:
                watcher.bookmark(self._rv)

    def drop_watches(self, *, abrupt: bool = False) -> int:
        """End every open watch: cleanly (the client re-watches) or by cutting the connection."""
        with self._lock:
            targets = list(self._watchers)
            self._watchers.clear()
        for watcher in targets:
            watcher.close(abrupt=abrupt)
        return len(targets)
