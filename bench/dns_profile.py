"""In-process profile of the DNS hot paths, without sockets: table build and `respond`.

    .venv/bin/python bench/dns_profile.py --services 10000 [--profile build|respond]
    .venv/bin/python bench/dns_profile.py --report [--sizes 1000,10000] [--memory]

Builds a synthetic catalog shaped like `bench/dns`'s (N headless services, 5 ready
endpoints each, named port http), times `DnsServer.publish` (the table build the
reconciler pays on every change) and the per-query cost of `Table.respond` on the same
query mix as `bench/dns` (what one UDP loop can do at best, before any syscalls). With
`--profile`, prints the cProfile top entries of that part.

`--report` prints, for each size: the full build (publish after an empty table), the
incremental publish after 1 and after 100 services changed (one endpoint address each, as
the bench's changes do; each from the same base), with the number of responses encoded
(work, which does not depend on the machine's load), and the per-query cost of
`Table.respond` by kind of question (best of several rounds). `--memory` adds the
table's memory (tracemalloc, and the process's resident memory).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import pstats
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dns_bench import (
    PORT_NAME,
    TARGET_PORT,
    ZONE,
    dataset,
    make_queries,
    mixed_case,
    query_wire,
    with_id,
)

from bridge.catalog.model import (
    Catalog,
    Instance,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
)
from bridge.config import DnsSettings
from bridge.dns import table as table_module
from bridge.dns.server import DnsServer


def catalog(services: int, endpoints: int) -> Catalog:
    origin = Origin(OriginKind.KUBERNETES, "bench")
    port = Port(PORT_NAME, TARGET_PORT, "TCP")
    built = {}
    for svc in dataset(services, endpoints):
        key = ServiceKey(svc.namespace, svc.name)
        instances = tuple(Instance(ip, (port,), origin, ready=True, target=f"{svc.name}-{j}")
                          for j, ip in enumerate(svc.ips))
        built[key] = Service(key, ServiceType.HEADLESS, ports=(Port(PORT_NAME, 80, "TCP"),),
                             instances=instances)
    return Catalog(built, ready=True, generation=1)


def changed(base: Catalog, count: int, generation: int, salt: int = 0) -> Catalog:
    """`base` with `count` services changed: each one's first endpoint gets a new address."""
    services = dict(base.services)
    keys = sorted(services)
    step = max(1, len(keys) // max(1, count))
    for n, key in enumerate(keys[::step][:count]):
        svc = services[key]
        first = svc.instances[0]
        index = (salt * 100_000 + n) % (1 << 23)
        address = f"10.{128 + ((index >> 16) & 0x7F)}.{(index >> 8) & 0xFF}.{index & 0xFF}"
        instances = (dataclasses.replace(first, address=address), *svc.instances[1:])
        services[key] = dataclasses.replace(svc, instances=instances)
    return Catalog(services, ready=True, generation=generation)


class _Counted:
    """Counts the responses `table.py` encodes (`encode`, `encode_shuffled` calls)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved = (table_module.encode, table_module.encode_shuffled)

    def __enter__(self) -> _Counted:
        encode, shuffled = self._saved

        def counted_encode(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return encode(*args, **kwargs)

        def counted_shuffled(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return shuffled(*args, **kwargs)

        table_module.encode = counted_encode  # type: ignore[assignment]
        table_module.encode_shuffled = counted_shuffled  # type: ignore[assignment]
        return self

    def __exit__(self, *_: object) -> None:
        table_module.encode, table_module.encode_shuffled = self._saved


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _keys(table: object) -> str:
    sizes = [f"{name} {len(getattr(table, name))}" for name in ("entries", "defaults")
             if hasattr(table, name)]
    return ", ".join(sizes)


def report_builds(size: int, endpoints: int, repeats: int) -> None:
    base = catalog(size, endpoints)
    server = DnsServer(DnsSettings(listen="127.0.0.1:0"))
    gc.collect()
    with _Counted() as counted:
        started, cpu = time.perf_counter(), time.thread_time()
        table = server.publish(base)
        elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
    print(f"  full build      {cpu * 1000:9.1f} ms cpu {elapsed * 1000:9.1f} ms wall "
          f"{counted.count:8d} encoded  ({_keys(table)})", flush=True)
    generation = 2
    for count in (1, 100):
        times, cpus, work = [], [], []
        for round_ in range(repeats):
            target = changed(base, count, generation, salt=round_ + 1)
            generation += 1
            gc.collect()
            with _Counted() as counted:
                started, cpu = time.perf_counter(), time.thread_time()
                server.publish(target)
                times.append(time.perf_counter() - started)
                cpus.append(time.thread_time() - cpu)
            work.append(counted.count)
            back = Catalog(base.services, ready=True, generation=generation)
            generation += 1
            server.publish(back)
        times.sort()
        cpus.sort()
        print(f"  {count:3d} changed     {cpus[0] * 1000:9.1f} ms cpu {times[0] * 1000:9.1f} ms wall "
              f"{work[0]:8d} encoded  (best of {repeats}; median {cpus[len(cpus) // 2] * 1000:.1f}"
              f" ms cpu)", flush=True)


def report_memory(size: int, endpoints: int) -> None:
    base = catalog(size, endpoints)
    server = DnsServer(DnsSettings(listen="127.0.0.1:0"))
    gc.collect()
    rss = _rss_mb()
    table = server.publish(base)
    gc.collect()
    grown = _rss_mb() - rss
    del table
    server = DnsServer(DnsSettings(listen="127.0.0.1:0"))
    gc.collect()
    tracemalloc.start()
    table = server.publish(base)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  memory: table + answerer {held / 2**20:.0f} MB (tracemalloc; peak during the "
          f"build {peak / 2**20:.0f} MB); process RSS grew {grown:.0f} MB to {_rss_mb():.0f} MB",
          flush=True)
    del table


def report_respond(size: int, endpoints: int, rounds: int) -> None:
    services = dataset(size, endpoints)
    server = DnsServer(DnsSettings(listen="127.0.0.1:0"))
    table = server.publish(catalog(size, endpoints))
    rng = random.Random(5)
    picked = [services[rng.randrange(len(services))] for _ in range(2000)]
    kinds = {
        "A": [with_id(query_wire(s.fqdn, 1, edns=False)) for s in picked],
        "A edns+case": [with_id(query_wire(mixed_case(s.fqdn, rng), 1, edns=True))
                        for s in picked],
        "SRV": [with_id(query_wire(s.srv_name, 33, edns=False)) for s in picked],
        "AAAA nodata": [with_id(query_wire(s.fqdn, 28, edns=False)) for s in picked],
        "MX nodata": [with_id(query_wire(s.fqdn, 15, edns=False)) for s in picked],
        "PTR": [with_id(query_wire(".".join(reversed(s.ips[0].split("."))) +
                                   ".in-addr.arpa.", 12, edns=False)) for s in picked],
        "NXDOMAIN": [with_id(query_wire(f"www.example.com.{s.namespace}.svc.{ZONE}.", 1,
                                        edns=False)) for s in picked],
        "bench mix": [with_id(q.wire) for q in make_queries(services, 2000, 8)],
    }
    respond = table.respond
    for kind, packets in kinds.items():
        for packet in packets:
            assert isinstance(respond(packet), bytes), kind
        best = float("inf")
        for _ in range(rounds):
            started = time.thread_time()
            for _ in range(10):
                for packet in packets:
                    respond(packet)
            best = min(best, (time.thread_time() - started) / (10 * len(packets)))
        print(f"  respond {kind:12s} {best * 1e9:7.0f} ns/query cpu (best of {rounds})",
              flush=True)


def report(args: argparse.Namespace) -> int:
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"{size} services x {args.endpoints} endpoints:", flush=True)
        report_builds(size, args.endpoints, args.repeats)
        if args.memory:
            report_memory(size, args.endpoints)
        report_respond(size, args.endpoints, args.repeats)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--profile", choices=("build", "respond"))
    parser.add_argument("--memory", action="store_true",
                        help="measure the table's allocations with tracemalloc (slows the build)")
    parser.add_argument("--report", action="store_true",
                        help="full and incremental builds, memory, respond per query kind")
    parser.add_argument("--sizes", default="1000,10000", help="service counts for --report")
    parser.add_argument("--repeats", type=int, default=5, help="rounds for --report")
    args = parser.parse_args()
    if args.report:
        return report(args)

    cat = catalog(args.services, args.endpoints)
    server = DnsServer(DnsSettings(listen="127.0.0.1:0"))
    gc.collect()
    if args.memory:
        tracemalloc.start()
    profiler = cProfile.Profile()
    started = time.perf_counter()
    if args.profile == "build":
        profiler.enable()
    table = server.publish(cat)
    profiler.disable()
    build = time.perf_counter() - started
    memory = ""
    if args.memory:
        size, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        memory = f"; {size / 2**20:.0f} MB allocated (table + answerer, tracemalloc)"
    print(f"table build for {args.services} services x {args.endpoints} endpoints: "
          f"{build:.2f}s{memory}")
    if args.profile == "build":
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)

    services = dataset(args.services, args.endpoints)
    packets = [with_id(q.wire) for q in make_queries(services, 20_000, 8)]
    rounds = max(1, args.queries // len(packets))
    respond = table.respond
    if args.profile == "respond":
        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    for _ in range(rounds):
        for packet in packets:
            respond(packet)
    elapsed = time.perf_counter() - started
    profiler.disable()
    count = rounds * len(packets)
    print(f"Table.respond on the bench mix: {count / elapsed:,.0f} queries/s in one thread "
          f"({elapsed / count * 1e6:.2f} us per query, no sockets)")
    if args.profile == "respond":
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
