"""Shutdown time: how long `imessage-channel serve` takes to exit after SIGINT, the way Claude Code stops it.

Claude Code sends SIGINT and, about 100 ms later, SIGTERM (design §8); a server still running then is
killed mid-way. Each run starts the real command (a fresh interpreter, as Claude Code starts it), delivers
one text, sends SIGINT and times the exit. Reports each run, the median and the exit codes.

    uv run python scripts/bench_shutdown.py [--runs 10]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import MessagesSimulator
from tests.harness import ServerProcess, sentinel


def run(runs: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="imessage-shutdown-"))
    db = create_chatdb(work / "chat.db", "sequoia")
    sim = MessagesSimulator(db, owner="owner@example.com")
    sim.send(sim.self_chat(), "start")
    times: list[float] = []
    codes: list[int] = []
    for n in range(1, runs + 1):
        server = ServerProcess(db, work / "home", env={"IMESSAGE_LOG_LEVEL": "WARNING"})
        server.start([sys.executable, "-m", "imessage_channel", "serve"])
        server.initialize()
        sentinel(server, sim, n)
        started = time.perf_counter()
        server.proc.send_signal(signal.SIGINT)
        codes.append(server.wait_exit(10))
        times.append((time.perf_counter() - started) * 1000)
        server.stop()
    sim.close()
    print("SIGINT → exit (ms):", " ".join(f"{t:.0f}" for t in times))
    median, worst = statistics.median(times), max(times)
    print(f"median {median:.1f} ms, max {worst:.1f} ms over {runs} runs; exit codes {set(codes)}")
    return 0 if set(codes) == {0} else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    return run(parser.parse_args().runs)


if __name__ == "__main__":
    sys.exit(main())
