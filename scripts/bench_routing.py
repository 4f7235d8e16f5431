"""Benchmark the handoff: how much latency routing an event to another session adds over a direct push.

Owns the routed-latency figure of "many sessions, one Mac" (issue item 5: p50 ≤ 5 ms added). It starts two
`tests/session_node.py` processes on one state dir (the reference integration of `sessions`, `lease`,
`routing`, `handoff`): `direct`, which holds the reader lease, and `routed`, which never reads. Rows are
written one at a time, addressed `@direct …` or `@routed …` in random order; the reader stamps each event
with `perf_counter()` at the routing decision (`--stamp` → `meta.t0`), and a thread here stamps the line's
arrival on the receiving node's stdout pipe. Both clocks are the same (`perf_counter` is system-wide:
CLOCK_MONOTONIC on Linux, mach_absolute_time on macOS).

- direct: decision → the reader's own stdout writer thread → pipe → here;
- routed: decision → `Dispatcher` link thread → Unix socket → the target's `Inbox` thread → its stdout
  writer thread → pipe → here (the acknowledgement travels back afterwards, off the measured path).

Each run reports p50/p99 of both and the added latency (routed − direct, per percentile); `--runs N`
repeats with fresh processes and prints the median of each figure. The next row is written only after the
previous event arrived, after a random 2–20 ms pause (so events never queue behind each other).

Usage (from the repo root): `uv run python scripts/bench_routing.py [--events 200] [--runs 5] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.nodes import Cluster, Rows


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0–100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def one_run(events: int, seed: int) -> dict[str, float]:
    """One pair of fresh processes; `events` per target. Returns p50/p99 (ms) of both and the added ones."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        root = Path(tmp)
        rows = Rows(root / "rows.db")
        cluster = Cluster(root / "state", rows.path, root / "logs")
        try:
            direct = cluster.start("direct", stamp=True)
            cluster.reader([direct])
            routed = cluster.start("routed", lease=False, stamp=True)
            latencies: dict[str, list[float]] = {"direct": [], "routed": []}
            plan = ["direct", "routed"] * events
            rng.shuffle(plan)
            pause = threading.Event()
            for n, target in enumerate(plan):
                guid = rows.add(f"@{target} event {n}")
                node = direct if target == "direct" else routed
                line = node.wait_line(lambda m, g=guid: m.get("jsonrpc") and m["params"]["meta"]["message_id"] == g)
                latencies[target].append((line["_at"] - float(line["params"]["meta"]["t0"])) * 1000)
                pause.wait(rng.uniform(0.002, 0.02))
        finally:
            cluster.stop_all()
            rows.close()
    out = {}
    for target, values in latencies.items():
        out[f"{target}_p50"] = percentile(values, 50)
        out[f"{target}_p99"] = percentile(values, 99)
    out["added_p50"] = out["routed_p50"] - out["direct_p50"]
    out["added_p99"] = out["routed_p99"] - out["direct_p99"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="events per target per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        result = one_run(args.events, args.seed + i)
        runs.append(result)
        print(
            f"run {i + 1}: direct p50 {result['direct_p50']:.3f} p99 {result['direct_p99']:.3f} | "
            f"routed p50 {result['routed_p50']:.3f} p99 {result['routed_p99']:.3f} | "
            f"added p50 {result['added_p50']:.3f} p99 {result['added_p99']:.3f} ms"
        )
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"median of {args.runs} runs ({args.events} events per target each): "
        f"added latency p50 {medians['added_p50']:.3f} ms, p99 {medians['added_p99']:.3f} ms "
        f"(direct p50 {medians['direct_p50']:.3f} ms, routed p50 {medians['routed_p50']:.3f} ms)"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": medians}, indent=2))


if __name__ == "__main__":
    main()
