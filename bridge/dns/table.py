"""The precomputed answers of one catalog (`Table`), built whole or derived from the last.

A `Table` holds the answer to every question about every existing name as wire bytes
(`encode.py`) and serves them itself (`respond.py`). `Table.update` makes the table of the
next catalog from the current one, encoding again only the names whose answers changed;
the server swaps it in with one reference assignment.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from bridge.catalog.model import Catalog, Service, ServiceKey
from bridge.dns.answer import PODS_DISABLED, Answerer, Change
from bridge.dns.consul_domain import ConsulAnswerer, ConsulOptions
from bridge.dns.cow_map import CowMap
from bridge.dns.encode import Entry, Shuffled, encode, encode_shuffled, opt_record, wire, wire_length
from bridge.dns.packet import CLASS_IN, DEFAULT_UDP_PAYLOAD, MIN_UDP_PAYLOAD, labels_at, walk_name
from bridge.dns.query import Name, lower, parse, upper
from bridge.dns.records import (
    NOT_OURS,
    REFUSED,
    SERVFAIL,
    TRANSFERS,
    Answers,
    NotOurs,
    QType,
    Response,
    shuffled,
)
from bridge.dns.respond import Found, Responder, Zone

# `update` builds afresh when more than this share of the services changed (and more than
# FULL_BUILD_MIN): copying the dicts and forgetting old names then costs more than it saves.
FULL_BUILD_SHARE = 1 / 3
FULL_BUILD_MIN = 64
MAX_COMPUTED = 4096  # pod names answered on demand and kept: the cache is emptied when full

# qtype -> its bytes + class IN: the key suffixes a name may have in `entries`. Any other
# qtype is added when first stored (`_suffix`), so `_forget` knows every key a name can have.
_IN = CLASS_IN.to_bytes(2, "big")
_SUFFIXES: dict[int, bytes] = {int(q): int(q).to_bytes(2, "big") + _IN
                               for q in (QType.A, QType.AAAA, *TRANSFERS)}


def _suffix(qtype: int) -> bytes:
    found = _SUFFIXES.get(qtype)
    if found is None:
        found = _SUFFIXES.setdefault(qtype, qtype.to_bytes(2, "big") + _IN)
    return found


def _filler(length: int) -> Name:
    """Labels of '-' that occupy exactly `length` wire bytes (length >= 2)."""
    out: list[str] = []
    while length > 0:
        size = min(length - 1, 63)
        if length - (size + 1) == 1:
            size -= 1  # never leave one byte: a label needs two
        out.append("-" * size)
        length -= size + 1
    return tuple(out)


def changed_keys(old: Mapping[ServiceKey, Service], new: Mapping[ServiceKey, Service]
                  ) -> list[ServiceKey]:
    """The keys whose service differs between two catalogs (added, removed or changed).

    Catalogs of consecutive passes list their services in the same order and keep the
    unchanged ones as the same objects: both are walked side by side (identity checks)
    while their keys agree, and only the rest is compared by key look-ups.
    """
    changed: list[ServiceKey] = []
    news, olds = iter(new.items()), iter(old.items())
    rest_new: list[tuple[ServiceKey, Service]] = []
    rest_old: list[tuple[ServiceKey, Service]] = []
    for key, service in news:
        pair = next(olds, None)
        if pair is None:
            rest_new.append((key, service))
            break
        before_key, before = pair
        if before is service and before_key is key:
            continue
        if before_key is key or before_key == key:
            if before != service:
                changed.append(key)
            continue
        rest_new.append((key, service))
        rest_old.append(pair)
        break
    rest_new += news
    rest_old += olds
    get = old.get
    for key, service in rest_new:  # none of these keys is in the walked part of `old`
        found = get(key)
        if found is not service and found != service:
            changed.append(key)
    changed += [key for key, _ in rest_old if key not in new]
    return changed


def _copy_of(attribute: str, doc: str) -> property:
    """A read-only property: a dict copy of one of the table's `CowMap`s."""
    return property(lambda table: dict(getattr(table, attribute).items()), doc=doc)


class Settings(NamedTuple):
    """What a table is built with besides the catalog: `update` builds the next one alike."""

    zone: str
    ttl: int
    ns_addresses: tuple[str, ...]
    udp_payload: int
    pods: str
    ignore_empty_service: bool
    consul: ConsulOptions | None
    forwarding: bool
    rotate: bool


class Table(Responder):
    """The precomputed answers for one catalog plus the packet handler serving them.

    `pods`, `ignore_empty_service`: see `answer.Answerer`. `consul`: also serve the Consul
    domain (`consul_domain.py`). `forwarding`: the server forwards names that are not ours,
    so replies say RA and ExternalName targets outside our zones are chased (`CHASE`).
    `rotate`: answers of several A, AAAA or SRV records rotate per query (`encode.Turns`).
    `serial`: the SOA serial, by default the catalog's generation. `update` derives the
    table of a next catalog. A table never changes once built except for bounded caches of
    answers encoded on first use (plain dict writes, atomic under the GIL), so readers
    share it without locks.

    Storage: `defaults` maps each existing name (lower-cased, wire form) to its answer for any
    qtype its answers do not name (NODATA, mostly: one shared entry); `entries` maps
    (name + qtype + class) only where that qtype's answer is not the default (A, SRV, PTR...):
    HTTPS or MX on a name with no such record cost one more look-up instead of a stored key
    per (name, qtype). A and AAAA are the exception: stub resolvers ask both, so a name with
    addresses of one family has a key for the other family's NODATA as well. Zone transfers
    (AXFR, IXFR) of existing names are REFUSED without a key of their own. Names with answers
    in random order (Consul) or chased upstream have dicts of their own, off the fast path.
    All are `CowMap`s, shared with the tables derived from this one.

    Updates (`Table.update`): the next catalog's table is derived from the previous one. The
    answerer is derived for the services that changed (`Answerer.derive`), and only the names
    those services had or have are encoded again: the service, endpoint, `_proto` and
    `_port._proto` names, the reverse names of the addresses whose PTR changed, the names of
    namespaces that appeared or went, ExternalName services pointing into the zone (their
    answers follow their targets), and, when a changed service carries Consul instances, the
    Consul names whose instances changed (the Consul answerer is made again then). A full
    build is done instead when readiness changes, when the zones are nested, when keys are
    not lower case, or when more than a third of the services changed (`FULL_BUILD_SHARE`).
    The caller swaps the new table in with one reference assignment; a reply is always built
    from one table, so it never mixes states.

    SOA serial: negative answers (NXDOMAIN, NODATA) carry the zone's SOA, whose serial is the
    catalog generation *of the last full build* (`Table.serial`): incremental updates keep it,
    so the shared negative entries stay valid and an update never has to touch every name. A
    resolver only reads the serial to decide on zone transfers, which are refused here; the
    negative-caching TTL comes from the SOA's TTL and minimum, which do not change.

    Answers computed on first use: a name in a zone that is not in the table gets the zone's
    negative answers, which depend only on where the zone starts in the question (the SOA
    owner is a pointer there) and on the qtype (`Answerer.names` documents this contract):
    they are encoded once per offset, so no query can make the table grow beyond 254 such sets.
    The same holds for negative answers of existing names. Pod records (`pods="insecure"`):
    any address may be asked, so `<x>.<ns>.pod.<zone>` is answered on its first question and
    kept in a bounded cache.
    """

    # Slots: the fast path reads attributes on every query, and a slot is the quickest
    # attribute (an instance dict of more than 30 keys loses CPython's fast path). The
    # `__dict__` slot lets tests replace a method on one table.
    __slots__ = ("__dict__", "_by_id", "_chases", "_computed", "_defaults", "_defaults_base",
                 "_defaults_recent", "_entries", "_entries_base", "_entries_recent",
                 "_negatives", "_nested", "_opt", "_refused", "_servfail", "_shared",
                 "_shuffled", "_skipped", "_slow_defaults", "_special", "_zones", "answerer",
                 "catalog", "consul", "encoded", "forwarding", "generation", "incremental",
                 "serial", "settings", "udp_payload")

    def __init__(self, catalog: Catalog, zone: str, ttl: int, *,
                 ns_addresses: Sequence[str] = (),
                 udp_payload: int = DEFAULT_UDP_PAYLOAD,
                 pods: str = PODS_DISABLED,
                 ignore_empty_service: bool = False,
                 consul: ConsulOptions | None = None,
                 forwarding: bool = False,
                 rotate: bool = False,
                 serial: int | None = None) -> None:
        self.settings = Settings(zone, ttl, tuple(ns_addresses), udp_payload, pods,
                                  ignore_empty_service, consul, forwarding, rotate)
        self.catalog = catalog
        self.generation = catalog.generation
        self.serial = (catalog.generation if serial is None else serial) & 0xFFFFFFFF
        answerer = Answerer(catalog, zone, ttl, ns_addresses=ns_addresses, pods=pods,
                            ignore_empty_service=ignore_empty_service, serial=self.serial)
        consul_answerer: ConsulAnswerer | None = None
        if consul is not None and consul.domain:
            consul_answerer = ConsulAnswerer(catalog, consul, ns_addresses=ns_addresses,
                                             serial=self.serial)
            if consul_answerer.zone == answerer.zone:
                raise ValueError("the Consul domain must differ from the cluster zone")
        self.forwarding = forwarding
        self.udp_payload = max(MIN_UDP_PAYLOAD, udp_payload)
        self._opt = (opt_record(self.udp_payload, False), opt_record(self.udp_payload, True))
        self._use(answerer, consul_answerer)
        # The lookup dicts: `update` shares them with the next table (`CowMap`).
        # lower-case wire name + qtype + class -> the answer, where not the name's default
        self._entries: CowMap[bytes, Entry] = CowMap()
        # lower-case wire name -> the answer for any qtype without an entry of its own
        self._defaults: CowMap[bytes, Entry] = CowMap()
        # The same for names with shuffled or chased answers: never used by the fast path.
        self._slow_defaults: CowMap[bytes, Entry] = CowMap()
        self._shuffled: CowMap[bytes, Shuffled] = CowMap()  # random order
        self._chases: CowMap[bytes, None] = CowMap()  # ExternalNames to chase
        self._special = False  # True once a name has gone to the three dicts above
        self._bind()
        self._skipped: dict[Name, str] = {}  # names that could not be encoded (not fatal)
        self._refused = encode((), REFUSED, ra=forwarding)
        self._servfail = encode((), SERVFAIL, ra=forwarding)
        # Encoded responses shared between names: (zone offset or -1, response) -> entry,
        # and the same by the response's identity (answerers hand out one object each).
        self._shared: dict[tuple[int, Response], Entry] = {(-1, REFUSED): self._refused}
        self._by_id: dict[tuple[int, int], tuple[Response, Entry]] = {}
        # Absent names, by zone and by the byte offset of the zone in the name: at most 254
        # shapes per zone.
        self._negatives: dict[tuple[int, int], Found] = {}
        self._computed: dict[bytes, Found] = {}  # pod names
        self.incremental = False  # True when `update` derived this table from another
        self.encoded = 0  # names encoded to make this table
        for index in reversed(range(len(self._zones))):  # the more specific zone wins a name
            self._add_zone(index)

    def _use(self, answerer: Answerer, consul: ConsulAnswerer | None) -> None:
        self.answerer = answerer
        self.consul = consul
        zones = [self._zone(answerer, answerer.dynamic_pods)]
        if consul is not None:
            zones.append(self._zone(consul, False))
        self._zones = tuple(sorted(zones, key=lambda z: -len(z.labels)))  # most specific first
        # Zones inside zones (consul_domain under the cluster zone, or the reverse) may list
        # the same name twice: then the more specific zone's entries replace the other's.
        self._nested = any(inner.labels[len(inner.labels) - len(outer.labels):] == outer.labels
                           for inner in self._zones for outer in self._zones if inner is not outer)

    @staticmethod
    def _zone(answerer: Answerer | ConsulAnswerer, pods: bool) -> Zone:
        return Zone(answerer, answerer.zone, wire(answerer.zone),
                     tuple(upper(label) for label in answerer.zone), pods)

    def _bind(self) -> None:
        # What the fast path reads, one attribute each.
        self._entries_recent, self._entries_base = self._entries.recent, self._entries.base
        self._defaults_recent = self._defaults.recent
        self._defaults_base = self._defaults.base

    # Plain copies of the lookup dicts, for tests and diagnostics (not for serving).
    entries = _copy_of("_entries", "lower-case wire name + qtype + class -> the answer, "
                                   "where not the default")
    defaults = _copy_of("_defaults", "lower-case wire name -> the answer for any qtype "
                                     "without an entry")
    slow_defaults = _copy_of("_slow_defaults", "`defaults` of names with shuffled or chased "
                                               "answers: not for the fast path")
    shuffled = _copy_of("_shuffled", "like `entries`: answers served in random order (Consul)")

    @property
    def chases(self) -> set[bytes]:
        """Like `entries`: keys of ExternalName targets to chase through the upstream."""
        return set(self._chases)

    @property
    def skipped(self) -> list[str]:
        """Names that could not be encoded, with the reason (reported, not fatal)."""
        return list(self._skipped.values())

    def _add_zone(self, index: int) -> None:
        zone = self._zones[index]
        answerer = zone.answerer
        if isinstance(answerer, Answerer):
            self._add_listed(answerer.listed(upper, zone.upper))
        else:
            for name in answerer.names():
                self._add_name(index, name)

    # --- the next catalog ---------------------------------------------------------------

    def update(self, catalog: Catalog, changed: Sequence[ServiceKey] | None = None) -> Table:
        """The table for `catalog`, derived from this one: only what changed is encoded
        again (see the module's docstring). This table does not change; the caller swaps
        the new one in. Builds afresh when deriving does not pay or does not apply.
        `changed`: the keys whose service differs from this table's catalog, when the
        caller knows them (else they are found by comparing the two catalogs).
        """
        previous = self.catalog
        if catalog is previous:
            return self
        if self._nested or catalog.ready != previous.ready \
                or (not previous.ready and not previous.services):
            # The start-up placeholder: deriving from it saves nothing, and the first real
            # catalog should carry its own generation as the serial.
            return self.rebuilt(catalog)
        old, new = previous.services, catalog.services
        if changed is None:
            changed = changed_keys(old, new)
        if len(changed) > max(FULL_BUILD_MIN, len(new) * FULL_BUILD_SHARE):
            return self.rebuilt(catalog)
        derived = self.answerer.derive(catalog, previous, changed)
        if derived is None:
            return self.rebuilt(catalog)
        answerer, change = derived
        consul = self.consul
        if consul is not None and any(ConsulAnswerer.serves(old.get(key)) or
                                      ConsulAnswerer.serves(new.get(key)) for key in changed):
            assert self.settings.consul is not None
            consul = ConsulAnswerer(catalog, self.settings.consul,
                                    ns_addresses=self.settings.ns_addresses, serial=self.serial)
        table = self._successor(catalog, answerer, consul)
        table._apply(self, change)
        table._bind()
        return table

    def rebuilt(self, catalog: Catalog) -> Table:
        """A table built afresh for `catalog` with this one's settings (a new serial)."""
        return Table(catalog, **self.settings._asdict())

    def _successor(self, catalog: Catalog, answerer: Answerer, consul: ConsulAnswerer | None
                   ) -> Table:
        table = copy.copy(self)  # settings, OPT records, shared caches of entries...
        table.catalog = catalog
        table.generation = catalog.generation
        table._use(answerer, consul)
        table._entries = self._entries.derive()  # shared until written
        table._defaults = self._defaults.derive()
        table._slow_defaults = self._slow_defaults.derive()
        table._shuffled = self._shuffled.derive()
        table._chases = self._chases.derive()
        table._bind()
        table._skipped = dict(self._skipped)
        table._shared = dict(self._shared)
        table._by_id = {}
        # Absent names answer the same (same zones, serial and readiness); pod names are
        # answered from the catalog, so those are asked again.
        table._negatives = dict(self._negatives)
        table._computed = {}
        table.incremental = True
        table.encoded = 0
        return table

    def _apply(self, previous: Table, change: Change) -> None:
        """Forget and encode again the names `change` touches, and the Consul names."""
        old, new = previous.answerer, self.answerer
        zone = next(z for z in self._zones if z.answerer is new)
        for key in change.services:
            self._forget_all(old.service_names(key))
            self._add_listed(new.service_listed(key, upper, zone.upper))
        for namespace in change.namespaces:
            self._forget_all(old.namespace_names(namespace))
            self._add_listed(new.namespace_listed(namespace, upper, zone.upper))
        self._forget_all(old.reverse_names(change.addresses))
        self._add_listed(new.reverse_listed(change.addresses, upper))
        if self.consul is not None and self.consul is not previous.consul:
            assert previous.consul is not None
            index = next(i for i, z in enumerate(self._zones) if z.answerer is self.consul)
            for name, exists in self.consul.changed_names(previous.consul):
                self._forget_all((name,))
                if exists:
                    self._add_name(index, name)

    def _forget_all(self, names: Iterable[Name]) -> None:
        for name in names:
            self._skipped.pop(name, None)
            try:
                lname = wire(name)
            except ValueError:
                continue  # never stored
            self._forget(lname)

    def _forget(self, lname: bytes) -> None:
        """Remove every key of name `lname`, if it is stored."""
        if self._defaults.pop(lname) is None and self._slow_defaults.pop(lname) is None:
            return  # not stored (skipped, or gone already): no key to remove
        entries, shuffled, chases = self._entries, self._shuffled, self._chases
        special = self._special  # else `shuffled` and `chases` are empty
        for suffix in tuple(_SUFFIXES.values()):
            key = lname + suffix
            entries.pop(key)
            if special:
                shuffled.pop(key)
                chases.pop(key)

    # --- encoding names -----------------------------------------------------------------

    def _answers(self, zone: Zone, spelled: Name) -> tuple[Answers | NotOurs, Name]:
        """The answers for a name of `zone`, and the zone as the name spells it."""
        answerer = zone.answerer
        if isinstance(answerer, Answerer):
            query = parse(spelled, answerer.zone)
            return answerer.answers_query(query), query.zone
        return answerer.answers(spelled), spelled[len(spelled) - len(zone.labels):]

    def answer(self, qname: str | Sequence[str | bytes], qtype: int) -> Response | NotOurs:
        """`answer.py`'s response for a question, from the zone that holds the name."""
        for zone in self._zones:
            response = zone.answerer.answer(qname, qtype)
            if not isinstance(response, NotOurs):
                return response
        return NOT_OURS

    def _add_name(self, index: int, name: Name) -> None:
        """Encode and store one listed name, asking its zone's answerer."""
        spelled = tuple(upper(label) for label in name)
        try:
            answers, zone = self._answers(self._zones[index], spelled)
        except (ValueError, struct.error) as exc:
            self._skipped[name] = f"{'.'.join(name)}: {exc}"
            return
        if isinstance(answers, NotOurs):
            self._skipped[name] = f"{'.'.join(name)}: listed name is not ours"
            return
        self._add(spelled, zone, answers)

    def _add_listed(self, listed: Iterable[tuple[Name, Name, Answers]]) -> None:
        add = self._add
        for spelled, zone, answers in listed:
            add(spelled, zone, answers)

    def _add(self, spelled: Name, zone: Name, answers: Answers) -> None:
        """Encode and store one name: `spelled` in upper case, its zone as spelled there."""
        self.encoded += 1
        try:
            question = wire(spelled)
            default, by_type, special = self._encode_answers(spelled, question, zone, answers)
        except (ValueError, struct.error) as exc:
            name = tuple(map(lower, spelled))  # as the answerer lists it
            self._skipped[name] = f"{'.'.join(name)}: {exc}"
            return
        lname = question.lower()
        if lname in self._defaults or lname in self._slow_defaults:
            self._forget(lname)  # listed again (nested zones): the last one wins
        refused = self._refused
        if not special:  # the common case, kept lean: the build is paid on every change
            stored: list[tuple[bytes, Any]] = [
                (lname + (_SUFFIXES.get(qtype) or _suffix(qtype)), entry)
                for qtype, entry in by_type.items()
                if entry is not default and (entry is not refused or qtype not in TRANSFERS)]
            if default is not refused:  # transfers not named: the default, not REFUSED
                stored += [(lname + _SUFFIXES[qtype], default)
                           for qtype in TRANSFERS if qtype not in by_type]
            # Stub resolvers ask A and AAAA together: a name with addresses of one family
            # gets a key for the other too (NODATA), to answer both on the first look-up.
            a, aaaa = by_type.get(QType.A), by_type.get(QType.AAAA)
            if a is not None and aaaa is not None and (a is default) != (aaaa is default):
                stored.append((lname + _SUFFIXES[QType.AAAA if a is not default else QType.A],
                               default))
            self._defaults[lname] = default
            self._entries.update(stored)
            return
        entries = self._entries
        self._special = True  # `_miss` looks in the slow dicts from now on
        self._slow_defaults[lname] = default
        for qtype in [*by_type, *(t for t in TRANSFERS if t not in by_type)]:
            encoded = by_type.get(qtype, default)
            full = lname + _suffix(qtype)
            if isinstance(encoded, Shuffled):
                self._shuffled[full] = encoded
            elif self.forwarding and answers.get(qtype).chase is not None:
                self._chases[full] = None
            elif qtype in TRANSFERS:
                if encoded is not refused:
                    entries[full] = encoded
            elif encoded is not default:
                entries[full] = encoded

    def _encode_answers(self, spelled: Name, question: bytes, zone: Name, answers: Answers
                        ) -> tuple[Entry, dict[int, Entry | Shuffled], bool]:
        """(default, entries by qtype, special): special when an answer is served in random
        order, or (forwarding) is an ExternalName chased through the upstream."""
        prefix = len(question) - wire_length(zone)
        forwarding = self.forwarding
        special = False
        # Keyed by identity: the responses stay alive in `answers` for the whole loop.
        done: dict[int, Entry | Shuffled] = {}
        by_type: dict[int, Entry | Shuffled] = {}
        for qtype, response in answers.by_type.items():
            entry = done.get(id(response))
            if entry is None:
                if response.shuffle:
                    special = True
                    entry = encode_shuffled(spelled, response, question, ra=forwarding)
                else:
                    entry = self._encode_for(spelled, question, prefix, zone, response)
                done[id(response)] = entry
            if forwarding and response.chase is not None:
                special = True
            by_type[qtype] = entry
        default = done.get(id(answers.default))
        if default is None or type(default) is Shuffled:
            default = self._encode_for(spelled, question, prefix, zone,
                                       shuffled(answers.default))
        assert type(default) is Entry
        return default, by_type, special

    def _encode_for(self, spelled: Name, question: bytes, prefix: int, zone: Name,
                    response: Response) -> Entry:
        """Encode, sharing pure negatives (NODATA, NXDOMAIN) and empty responses between
        names.

        A response whose only record is the zone SOA encodes the same for every question
        whose zone starts `prefix` bytes in: its names are the zone (a pointer there) and
        `ns.dns`/`hostmaster` + zone, whose lower-case labels never match the upper-case
        question exactly, so nothing else from the question is referenced. A response with
        no record at all (REFUSED) encodes the same for every question.
        """
        known = self._by_id.get((prefix, id(response)))
        if known is not None and known[0] is response:
            return known[1]
        if response.answer or response.additional:
            return encode(spelled, response, question, ra=self.forwarding,
                          rotate=self.settings.rotate)
        authority = response.authority
        if not authority:
            key = (-1, response)
        elif len(authority) == 1 and authority[0].name == zone:
            key = (prefix, response)
        else:
            return encode(spelled, response, question, ra=self.forwarding)
        entry = self._shared.get(key)
        if entry is None:
            entry = self._shared[key] = encode(spelled, response, question, ra=self.forwarding)
        if len(self._by_id) >= 4096:
            self._by_id.clear()
        self._by_id[(prefix, id(response))] = (response, entry)
        return entry

    # --- answers computed on first use ------------------------------------------------------

    def _pod(self, lname: bytes) -> Found:
        """Answers for `<x>.<ns>.pod.<zone>`, computed on first use and cached (bounded)."""
        found = self._computed.get(lname)
        if found is None:
            walked = walk_name(lname, 0)
            assert walked is not None  # a name the fast path read
            spelled = tuple(upper(label) for label in labels_at(lname, walked[1]))
            query = parse(spelled, self.answerer.zone)
            answers = self.answerer.answers_query(query)
            assert isinstance(answers, Answers)
            default, by_type, _ = self._encode_answers(spelled, lname, query.zone, answers)
            if len(self._computed) >= MAX_COMPUTED:
                self._computed.clear()
            found = self._computed[lname] = (by_type, default)
        return found

    def _negative(self, index: int, prefix: int) -> Found:
        """Answers for an absent name of zone `index` whose zone starts `prefix` bytes in.

        The answerers promise they depend on nothing else, so a stand-in name of that shape
        is asked once and its encoding serves every absent name of the shape.
        """
        found = self._negatives.get((index, prefix))
        if found is None:
            zone = self._zones[index]
            question = _filler(prefix) + zone.upper
            answers, spelled_zone = self._answers(zone, question)
            assert isinstance(answers, Answers)
            default, by_type, _ = self._encode_answers(question, wire(question), spelled_zone,
                                                       answers)
            found = self._negatives[(index, prefix)] = (by_type, default)
        return found
