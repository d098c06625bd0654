"""Faults and soak: what the bridge survives. Run it as `bench/chaos` (see `--help`).

Every scenario starts its own world on 127.0.0.1: `bridge fake-k8s` loaded with headless
Services (3 Pods each, names unique across namespaces of 50), `bridge fake-consul` holding two
services registered by others (virtual machines), and `bridge run` with its default settings
(the addresses and cluster id aside; `POD_NAME` set, as a Deployment sets it), each a process
of its own. Once the bridge is ready and Consul exact, a probe sends steady A queries (`--rate`
a second) for random names, and each answer is graded against the history of what that name
held in the Kubernetes test server (`chaos_traffic.py`); changes are written through the
Kubernetes API as kubelets write them (Pod status merge patches: a readiness flip or a new
IP). Then the fault, its recovery, and the checks (`chaos_scenarios.py`):

- DNS right: answers that are a state the name held at most `--allowance` seconds before the
  query was sent (stale, never-held, NXDOMAIN answers are incorrect; no answer within 1 s
  is unanswered).
- Consul exact: every instance our node must hold (a Pod, its address, its check passing or
  critical by readiness), nothing else, no (service, address, port) twice; "after recovery" is
  the time from the fault's end until a read of Consul shows that.
- Spurious deletes: deletes in the bridge's transactions of instances Consul must still hold.
- Crashes: the bridge exited, logged a traceback or a dead thread, or /healthz failed.

Exit status 1 when any scenario does not hold, 0 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from chaos_scenarios import CONVERGE_TARGET, SCENARIOS, Row, run_scenario
from common import say

QUICK = {  # every duration shrunk, so the whole run takes about 3 minutes
    "outage_seconds": 5.0, "window": 6.0, "changes": 40, "burst_seconds": 2.0, "soak": 0.5,
    "soak_services": 300, "fuzz": 20_000, "abuse_seconds": 4.0, "rest": 3.0, "settle": 1.0,
    "warmup": 1.0,
}
FULL = {
    "outage_seconds": 30.0, "window": 60.0, "changes": 100, "burst_seconds": 5.0, "soak": 10.0,
    "soak_services": 2000, "fuzz": 100_000, "abuse_seconds": 15.0, "rest": 15.0, "settle": 3.0,
    "warmup": 3.0,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="all",
                        help=f"comma-separated, from: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="shrink every duration and size (about 3 minutes for all): checks the bench, "
                             "not figures to publish")
    parser.add_argument("--outage-seconds", type=float, help="length of each outage and error fault (30)")
    parser.add_argument("--window", type=float, help="seconds of the index-reset and watch faults (60)")
    parser.add_argument("--changes", type=int, help="Kubernetes changes during each fault (100)")
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="soak length (10)")
    parser.add_argument("--soak-services", type=int, help="Services churned in the soak (2,000)")
    parser.add_argument("--soak-rate", type=float, default=10.0, help="changes a second in the soak (10)")
    parser.add_argument("--fuzz", type=int, help="fuzzed DNS packets (100,000)")
    parser.add_argument("--services", type=int, default=50, help="Services in every other scenario (50)")
    parser.add_argument("--rate", type=float, default=200.0, help="DNS queries a second from the probe (200)")
    parser.add_argument("--allowance", type=float, default=2.0,
                        help="seconds an answer may lag a change and still be right (2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="where each scenario's logs go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the logs of scenarios that hold too")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    names = list(SCENARIOS) if args.scenarios == "all" else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        parser.error(f"unknown scenario {', '.join(unknown) or '(none)'}; known: {', '.join(SCENARIOS)}")
    args.names = names
    if args.outage_seconds <= 0 or args.window <= 0 or args.soak <= 0 or args.changes < 0:
        parser.error("durations must be positive, --changes not negative")
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix="bridge-chaos-")
    return args


# ========================================================================================
# The table
# ========================================================================================

COLUMNS = ("scenario", "fault", "DNS right during the fault", "Consul exact after recovery",
           "missing / extra / wrong / twice", "spurious deletes", "changes",
           "bridge → Consul while it failed", "warnings logged", "crashes", "other figures", "holds")


def cells(row: Row) -> list[str]:
    dns = row.dns
    if dns is None:
        right = "-"
    else:
        right = f"{100 * dns.share:.2f}% of {dns.sent:,}"
        extra = [f"{n} {what}" for n, what in ((dns.unanswered, "unanswered"), (dns.servfail, "SERVFAIL"),
                                               (dns.stale, "stale"), (dns.wrong, "wrong"),
                                               (dns.nxdomain, "NXDOMAIN")) if n]
        if extra:
            right += f" ({', '.join(extra)})"
    if row.converge is None:
        converge = "never" if row.verdict is not None else "-"
    else:
        converge = f"{row.converge:.2f} s" + ("" if row.converge <= CONVERGE_TARGET else " (over 2 s)")
    v = row.verdict
    counts = "-" if v is None else f"{v.missing} / {v.extra} / {v.wrong} / {v.duplicates}"
    return [row.name, row.fault, right, converge, counts,
            "-" if row.spurious_deletes is None else str(row.spurious_deletes), row.changes or "-",
            row.requests or "-", "-" if row.log_lines is None else str(row.log_lines), str(row.crashes),
            "; ".join(row.other) or "-", "yes" if not row.failures else "NO"]


def table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    say(f"bench/chaos{' --quick' if args.quick else ''}: {', '.join(args.names)}; logs in {args.workdir}")
    started = time.monotonic()
    rows: list[Row] = []
    try:
        for name in args.names:
            rows.append(run_scenario(name, args))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    print()
    print(table(rows))
    print()
    failed = [row for row in rows if row.failures]
    for row in failed:
        print(f"{row.name} does not hold (logs: {row.workdir}):")
        for failure in row.failures:
            print(f"  - {failure}")
    say(f"{len(rows) - len(failed)} of {len(rows)} scenarios hold ({time.monotonic() - started:.0f} s)")
    if not failed and not args.keep:
        Path(args.workdir).rmdir() if not any(Path(args.workdir).iterdir()) else None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
