"""bench/chaos runs: two scenarios in quick mode, shrunk further, end to end (the test servers
and `bridge run` as processes, DNS probed, changes written, Consul checked), so the bench
cannot rot unnoticed. Figures are not asserted: only that the scenarios ran and held."""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))  # as when run: the bench's modules import their siblings

import chaos_bench  # noqa: E402


def test_quick_scenarios_run_and_hold(tmp_path, capsys):
    code = chaos_bench.main([
        "--quick", "--scenarios", "kube-watch-cuts,dns-worker-sigkill", "--window", "3",
        "--changes", "12", "--services", "6", "--rate", "100", "--workdir", str(tmp_path), "--keep"])
    out = capsys.readouterr().out
    assert code == 0, f"bench/chaos exited {code}:\n{out}\n" + "\n".join(
        f"--- {log}\n{log.read_text()[-3000:]}" for log in tmp_path.glob("*/bridge.log"))
    rows = [line for line in out.splitlines() if line.startswith("| kube-watch-cuts") or
            line.startswith("| dns-worker-sigkill")]
    assert len(rows) == 2 and all(row.endswith("| yes |") for row in rows), out
    watch_cuts = rows[0].split(" | ")
    assert watch_cuts[2].startswith("100.00% of "), f"DNS during the watch cuts: {watch_cuts[2]}"
    assert watch_cuts[4] == "0 / 0 / 0 / 0", f"Consul after the watch cuts: {watch_cuts[4]}"
    assert "worker restarted" in rows[1], rows[1]
