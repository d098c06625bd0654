"""In-process profile of the DNS hot paths, without sockets: table build and `respond`.

    .venv/bin/python bench/dns_profile.py --services 10000 [--profile build|respond]

Builds a synthetic catalog shaped like `bench/dns`'s (N headless services, 5 ready
endpoints each, named port http), times `DnsServer.publish` (the table build the
reconciler pays on every change) and the per-query cost of `Table.respond` on the same
query mix as `bench/dns` (what one UDP loop can do at best, before any syscalls). With
`--profile`, prints the cProfile top entries of that part.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dns_bench import PORT_NAME, TARGET_PORT, dataset, make_queries, with_id

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--profile", choices=("build", "respond"))
    parser.add_argument("--memory", action="store_true",
                        help="measure the table's allocations with tracemalloc (slows the build)")
    args = parser.parse_args()

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
