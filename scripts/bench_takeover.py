"""Benchmark the reader lease: how long after the reader is SIGKILLed a survivor reads again (issue item 2:
within 2 s).

Owns the takeover-time figure. It keeps `--sessions` `tests/session_node.py` processes alive on one state
dir (the reference integration of `sessions`, `lease`, `routing`, `handoff`), and `--kills` times: takes
`perf_counter()`, SIGKILLs the reader, and waits for a survivor to announce it took over. The survivor
reports two instants (same system-wide `perf_counter` clock):

- lease: its watcher thread's `flock(LOCK_EX)` returned (the kernel released the dead holder's lock);
- ready: it also loaded the delivery ledger, adopted every live session's pending events
  (`Dispatcher.take_over`), folded the delivered logs, and is about to read chat.db (here: the rows table).

With `--held N`, one extra session that never reads holds N routed events unwritten at each kill, so the
takeover includes adopting them. A fresh session replaces each one killed. Prints min/median/p90/max of both
figures in ms.

Usage (from the repo root): `uv run python scripts/bench_takeover.py [--kills 30] [--sessions 3] [--held 20]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.nodes import Cluster, Rows


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"{name}: min {ordered[0]:.1f} median {statistics.median(ordered):.1f} p90 {p90:.1f} max {ordered[-1]:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=3, help="reader candidates kept alive")
    parser.add_argument("--held", type=int, default=0, help="routed events held unwritten at each kill")
    args = parser.parse_args()
    lease_ms: list[float] = []
    ready_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as tmp:
        root = Path(tmp)
        rows = Rows(root / "rows.db")
        cluster = Cluster(root / "state", rows.path, root / "logs")
        try:
            for _ in range(args.sessions):
                cluster.start("s")
            holder = cluster.start("held", hold=True, lease=False) if args.held else None
            reader = cluster.reader()
            for _ in range(args.kills):
                if holder is not None:
                    before = len(holder.received())
                    for n in range(args.held):
                        rows.add(f"@held {n}")
                    cluster.wait_until(lambda b=before: len(holder.received()) >= b + args.held)
                t_kill = time.perf_counter()
                reader.kill()
                survivors = [n for n in cluster.nodes if not n.closed and n is not holder]
                reader = cluster.reader(survivors)
                took = reader.wait_line(lambda m: m.get("op") == "reader")
                lease_ms.append((took["t_lease"] - t_kill) * 1000)
                ready_ms.append((took["t_ready"] - t_kill) * 1000)
                if holder is not None:
                    assert took["adopted"] >= args.held, took
                    holder.command("go")
                cluster.start("s")
        finally:
            cluster.stop_all()
            rows.close()
    print(f"{args.kills} SIGKILLs of the reader, {args.sessions} candidates, {args.held} events held at each kill")
    print(summary("lease taken", lease_ms))
    print(summary("reading again (ledger, adoption, log fold done)", ready_ms))


if __name__ == "__main__":
    main()
