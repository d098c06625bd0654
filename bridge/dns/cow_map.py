"""A mapping whose versions share their contents, copied on write (`CowMap`).

The DNS indexes and tables change a few keys at a time while readers keep using the
version they hold: the next version must neither copy every key nor change what a reader
sees. The zone index (`zone_index.py`) and the table (`table.py`) are made of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

FOLD_SHARE = 1 / 8
FOLD_MIN = 4096


class _Gone:
    def __repr__(self) -> str:
        return "GONE"


GONE: Any = _Gone()
_MISSING: Any = object()


class CowMap(Generic[K, V]):
    """A dict-like map for copy on write between versions.

    A large `base` dict, shared by the versions derived from one another and never written
    once shared, plus a small `recent` dict of the changes since (`GONE` marks a key removed
    while the base still holds it). `derive()` makes the next version, sharing both dicts;
    its first write copies `recent` only. Once `recent` has grown to a share of the base
    (`FOLD_SHARE`, at least `FOLD_MIN` keys), `derive` merges the two into a new base, which
    the new version may write in place until it is derived from.

    A reader on a hot path may look in the two dicts itself: a value in `recent` wins (`GONE`:
    absent), else `base` answers. That shortcut needs values that are never None.

    A version that was derived from must not be written any more. Iteration order is not
    insertion order.
    """

    __slots__ = ("_fresh", "_owned", "base", "recent")

    def __init__(self, items: Iterable[tuple[K, V]] = ()) -> None:
        self.base: dict[K, V] = dict(items)
        self.recent: dict[K, Any] = {}
        self._fresh = True  # no other version shares `base`: writes go straight there
        self._owned = True  # `recent` is this version's own

    def derive(self) -> CowMap[K, V]:
        """The next version: equal to this one, written independently from now on."""
        self._fresh = self._owned = False  # both dicts are shared from now on
        new: CowMap[K, V] = CowMap.__new__(CowMap)
        if len(self.recent) >= max(FOLD_MIN, len(self.base) * FOLD_SHARE):
            new.base, new.recent, new._fresh, new._owned = self._folded(), {}, True, True
        else:
            new.base, new.recent, new._fresh, new._owned = self.base, self.recent, False, False
        return new

    def _folded(self) -> dict[K, V]:
        base = dict(self.base)
        for key, value in self.recent.items():
            if value is GONE:
                del base[key]  # GONE marks only keys the base holds
            else:
                base[key] = value
        return base

    def _writable(self) -> dict[K, Any]:
        if self._fresh:
            return self.base
        if not self._owned:
            self.recent = dict(self.recent)
            self._owned = True
        return self.recent

    def get(self, key: K, default: Any = None) -> Any:
        value = self.recent.get(key, _MISSING)
        if value is _MISSING:
            return self.base.get(key, default)
        return default if value is GONE else value

    def __getitem__(self, key: K) -> V:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def __setitem__(self, key: K, value: V) -> None:
        self._writable()[key] = value

    def update(self, pairs: Iterable[tuple[K, V]]) -> None:
        self._writable().update(pairs)

    def pop(self, key: K, default: Any = None) -> Any:
        """Remove `key`; its value, or `default` if it had none."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            return default
        if self._fresh:
            del self.base[key]
        elif key in self.base:
            self._writable()[key] = GONE
        else:
            del self._writable()[key]
        return value

    def items(self) -> Iterator[tuple[K, V]]:
        recent = self.recent
        for key, value in self.base.items():
            if key not in recent:
                yield key, value
        for key, value in recent.items():
            if value is not GONE:
                yield key, value

    def __iter__(self) -> Iterator[K]:
        for key, _ in self.items():
            yield key

    def values(self) -> Iterator[V]:
        for _, value in self.items():
            yield value

    def __len__(self) -> int:
        base = self.base
        size = len(base)
        for key, value in self.recent.items():
            if value is GONE:
                size -= 1
            elif key not in base:
                size += 1
        return size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CowMap):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CowMap({dict(self.items())!r})"
