"""Reproduce a missed wake-up: a lone message delivered only by the 5 s safety poll.

Owns this one reproduction (found by `bench_latency.py`; see docs/performance.md). The waker fires on the
first `-wal` write of a commit and the reader polls `DEBOUNCE_S` (3 ms) later; SQLite makes the commit
visible only after its WAL fsync and the wal-index update in `-shm`, which is written through mmap and
raises no file-system event. When that fsync takes longer than the debounce, the poll finds nothing, no
further event comes, and the message waits for the next write or the safety poll (`SAFETY_POLL_S`).

The script starts the channel like `bench_latency.py`, optionally keeps the disk busy with an fsync-heavy
writer (`--io-load`, which makes fsync slow as Spotlight, Time Machine or iCloud sync can on a Mac), then
writes `--messages` self-chat texts one at a time and waits for each to arrive before writing the next, so
a missed wake-up shows as a ~5 s latency instead of being rescued by the next write. Exit code 1 when any
message took more than 1 s.

Usage (from the repo root): `uv run python scripts/repro_missed_wake.py --io-load --messages 50`.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import OWNER, percentile, prepare_db, start_server, write_one

from imessage_channel.devtools.simulator import MessagesSimulator

BALLAST = """
import os, sys
buf = b"\\0" * (1 << 20)
while True:
    with open(sys.argv[1], "wb") as fh:
        for _ in range(64):
            fh.write(buf)
            os.fsync(fh.fileno())
"""
"""The disk-load helper: rewrites a 64 MiB file forever, fsyncing every MiB."""


def main() -> int:
    """Run the reproduction; print each slow message and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--io-load", action="store_true", help="keep the disk busy with fsyncs meanwhile")
    parser.add_argument("--db", type=Path, help="chat.db to copy (default: a fresh small fixture)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="missed-wake-") as tmp:
        work = Path(tmp)
        db = prepare_db(args.db, work)
        load = subprocess.Popen([sys.executable, "-c", BALLAST, str(work / "ballast")]) if args.io_load else None
        try:
            with (work / "ours.stderr").open("wb") as err:
                target = start_server(db, work, err)
                latencies: list[float] = []
                with MessagesSimulator(db, owner=OWNER) as sim:
                    chat = sim.self_chat()
                    if target.wait_for({write_one(sim, chat, "warm-up")}, 30):
                        raise RuntimeError("warm-up message never arrived")
                    for i in range(args.messages):
                        time.sleep(random.uniform(0.02, 0.2))
                        t0 = time.perf_counter()
                        guid = write_one(sim, chat, f"solo {i}")
                        stamp = time.perf_counter()
                        if target.wait_for({guid}, 15):
                            print(f"message {i}: not delivered within 15 s")
                            latencies.append(float("inf"))
                            continue
                        ms = (target.first_arrivals()[guid] - stamp) * 1000
                        latencies.append(ms)
                        if ms > 1000:
                            print(f"message {i}: {ms:.0f} ms (its commit took {(stamp - t0) * 1000:.1f} ms)")
                target.stop()
        finally:
            if load is not None:
                load.terminate()
                load.wait()
    latencies.sort()
    slow = sum(1 for v in latencies if v > 1000)
    print(
        f"{len(latencies)} messages{' under I/O load' if args.io_load else ''}: p50 {percentile(latencies, 50):.1f} ms,"
        f" p90 {percentile(latencies, 90):.1f} ms, max {latencies[-1]:.0f} ms; {slow} took > 1 s"
    )
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
