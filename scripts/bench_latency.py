"""Benchmark inbound delivery: commit → `notifications/claude/channel` latency, and burst throughput.

Owns the end-to-end latency benchmark (design §7). It starts `python -m imessage_channel serve` as a
subprocess on a COPY of a chat.db (fake `osascript` first on `PATH`, state in a temporary folder), speaks
raw newline-delimited JSON-RPC over its stdio (`initialize` with protocolVersion 2025-11-25, then
`notifications/initialized`), and a reader thread stamps every `notifications/claude/channel` line with
`time.perf_counter()` on arrival. Then:

1. latency: `--messages` self-chat texts, one at a time, each after a random 20–200 ms pause (random
   phases relative to any poll timer), each written by `MessagesSimulator.text_self(..., typed_on="mac")`
   (one `is_from_me = 1` row, one commit). Latency = arrival − `perf_counter()` taken right after the
   commit returned; reported as p50/p90/p99/max in ms (nearest-rank percentiles). The writer checkpoints
   the WAL by SQLite's default policy but after the stamp (see `checkpoint_if_due`);
2. burst: `--burst` self-chat rows in ONE transaction (`with sim.batch():`); reported: commit → first and
   → last event, events/s (`burst / (last − commit)`);
3. exactly-once: every row written must arrive exactly once, matched by `meta.message_id` (the row GUID);
   lost, duplicated and unexpected events are counted after a 2 s settle;
4. idle CPU: utime + stime (`/proc/<pid>/stat`) used over `--idle` seconds (default 60) with no traffic,
   after the burst has settled, as a percentage of one core;
5. process figures: spawn → `initialize` reply, peak RSS (`VmHWM`).

`--baseline` repeats the same measurement against a 1-second ROWID poller (this script with `--poller`:
`SELECT ROWID, guid FROM message WHERE ROWID > ?` every second, one JSON line per new row — what the
official plugin's delivery amounts to, without its decoding) and prints the ratio ours/baseline.
`--runs N` repeats everything N times (a fresh process each time, the same database copy) and reports
the median of each figure. The default database is a fresh small fixture (`create_chatdb` + a
self-chat); `--db` copies yours. Linux only for the process figures (`/proc`); the rest is portable.

`--chart PNG` draws the latency distribution (empirical CDF on a log time axis, every sample of every
run, ours vs the poller) with matplotlib, from this run or, with `--from A.json B.json …`, from the
`--json` files of earlier runs (one curve per target and database) without measuring anything.
`--contacts N` gives the server an AddressBook of N contacts that names every sender (`use_contacts`; the
default 0 turns lookups off): run it with 0 and 5000 to see what contact names cost a delivery.
`--routed` starts a first session that reads chat.db (the reader lease) before the measured one, which is
then the default session: every event is routed to it over the handoff socket (`multisession`); compare
with a run without it to see what routing adds.
matplotlib is in the optional `bench` dependency group: `uv sync --group bench`.

Usage (from the repo root): `uv run python scripts/bench_latency.py [--db /tmp/big/chat.db] [--baseline]
[--runs 3] [--messages 200] [--burst 10000] [--idle 60] [--contacts 5000] [--json out.json]
[--chart docs/latency.png]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.addressbook_builder import Card, large_addressbook
from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import ChatRef, MessagesSimulator

ROOT = Path(__file__).resolve().parents[1]

CHANNEL = "notifications/claude/channel"
PROTOCOL_VERSION = "2025-11-25"
OWNER = "owner@example.com"
SETTLE_S = 2.0
IDLE_WINDOW_S = 60.0
POLL_INTERVAL_S = 1.0
TARGETS_MS = {"p50": 25.0, "p99": 100.0}
"""Inbound latency targets (issue "Measure it"), drawn on the chart."""
TARGETS = {
    "p50_ms": ("latency p50 (ms)", 25.0),
    "p99_ms": ("latency p99 (ms)", 100.0),
    "burst_last_ms": ("burst → last event (ms)", 2000.0),
    "idle_cpu_pct": ("idle CPU (% of a core)", 0.5),
}
"""Figure key → (label, upper bound): the issue's targets checked by this benchmark (ours only)."""


# ------------------------------------------------------------------------------------------ the poller
def run_poller(db: Path) -> int:
    """Baseline: print `{"ready": true}`, then every second one JSON line per row past the watermark.
    Exits when stdin reaches EOF, like the channel."""
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    watermark = int(conn.execute("SELECT COALESCE(MAX(ROWID), 0) FROM message").fetchone()[0])
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    while True:
        time.sleep(POLL_INTERVAL_S)
        rows = conn.execute("SELECT ROWID, guid FROM message WHERE ROWID > ? ORDER BY ROWID", (watermark,)).fetchall()
        for rowid, guid in rows:
            out.write(json.dumps({"rowid": rowid, "message_id": guid}) + "\n")
        if rows:
            out.flush()
            watermark = rows[-1][0]


# ------------------------------------------------------------------------------------------ the target
@dataclass
class Target:
    """A process under test and the timestamped events read from its stdout by a reader thread."""

    name: str
    proc: subprocess.Popen[bytes]
    spawned: float
    ready_at: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    responses: dict[int, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)
    next_id: int = 1

    def start_reader(self) -> None:
        threading.Thread(target=self._read, name=f"reader-{self.name}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.perf_counter()
            try:
                obj = json.loads(raw)
            except ValueError:
                print(f"[{self.name}] non-JSON on stdout: {raw[:200]!r}", file=sys.stderr)
                continue
            mid: str | None = None
            if obj.get("method") == CHANNEL:
                mid = obj["params"]["meta"].get("message_id")
            elif "message_id" in obj:
                mid = obj["message_id"]
            with self.cond:
                if obj.get("id") == 1 or obj.get("ready"):
                    self.ready_at = now
                if isinstance(obj.get("id"), int) and ("result" in obj or "error" in obj):
                    self.responses[obj["id"]] = (now, obj)
                if mid is not None:
                    self.events.append((now, mid))
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> tuple[int, float]:
        """Send a JSON-RPC request; return its id and the `perf_counter()` just before the write."""
        with self.cond:
            rid = self.next_id
            self.next_id += 1
        sent = time.perf_counter()
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return rid, sent

    def wait_response(self, rid: int, timeout: float) -> tuple[float, dict[str, Any]]:
        """(arrival time, message) of the response to request `rid`. Raises TimeoutError."""
        with self.cond:
            self.cond.wait_for(lambda: rid in self.responses or self.closed, timeout)
            if rid not in self.responses:
                raise TimeoutError(f"{self.name}: no response to request {rid} (exit code {self.proc.poll()})")
            return self.responses[rid]

    def wait_ready(self, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.ready_at is not None or self.closed, timeout):
                raise TimeoutError(f"{self.name}: not ready after {timeout} s")
            if self.ready_at is None:
                raise RuntimeError(f"{self.name}: exited before it was ready (code {self.proc.poll()})")

    def wait_for(self, guids: set[str], timeout: float) -> set[str]:
        """Wait until every GUID in `guids` has arrived at least once; return the ones still missing."""
        missing = set(guids)
        seen = 0
        deadline = time.monotonic() + timeout
        with self.cond:
            while missing and not self.closed:
                for _, mid in self.events[seen:]:
                    missing.discard(mid)
                seen = len(self.events)
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        return missing

    def first_arrivals(self) -> dict[str, float]:
        with self.cond:
            out: dict[str, float] = {}
            for t, mid in self.events:
                out.setdefault(mid, t)
            return out

    def counts(self) -> dict[str, int]:
        with self.cond:
            out: dict[str, int] = {}
            for _, mid in self.events:
                out[mid] = out.get(mid, 0) + 1
            return out

    def stop(self) -> int | None:
        """Close stdin (the server exits on EOF), wait, terminate if needed; return the exit code."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            return self.proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from `/proc/<pid>/stat`, in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """`VmHWM` (peak resident set) of `pid`, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def use_contacts(work: Path, count: int) -> str:
    """Set the Contacts the servers spawned from now on read: `count` 0 turns lookups off
    (`IMESSAGE_CONTACTS=off`, the channel as it was before names); otherwise a fresh AddressBook folder under
    `work` with `count` random contacts plus a card for the owner, so every self-chat event's lookup finds a
    name (the costlier path). Returns a label for the report."""
    if count == 0:
        os.environ["IMESSAGE_CONTACTS"] = "off"
        return "contacts off"
    root = work / "AddressBook"
    large_addressbook(root, count, extra=[Card("Owen", "Owner", emails=[OWNER])])
    os.environ["IMESSAGE_CONTACTS"] = "on"
    os.environ["IMESSAGE_ADDRESSBOOK_DIR"] = str(root)
    return f"{count} contacts"


def spawn_server(
    db: Path, work: Path, stderr: IO[bytes], state: Path | None = None, name: str | None = None
) -> Target:
    """Spawn the channel on `db` (state dir `state`, default `work/state`; session `name`) and send
    `initialize` at once; the caller waits for the reply (`wait_ready`) and sends `notifications/initialized`."""
    state = state or work / "state"
    state.mkdir(exist_ok=True)
    env = {
        **os.environ,
        **({"IMESSAGE_SESSION_NAME": name} if name else {}),
        "IMESSAGE_DB_PATH": str(db),
        "IMESSAGE_STATE_DIR": str(state),
        "PATH": f"{ROOT / 'tests' / 'fakes' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_OSASCRIPT_LOG": str(work / "osascript.log"),
        "IMESSAGE_APPLESCRIPT_BACKEND": "osascript",
        "IMESSAGE_LOG_LEVEL": "WARNING",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imessage_channel", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        cwd=ROOT,
    )
    target = Target("ours", proc, t0)
    target.start_reader()
    target.send(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "bench-latency", "version": "0"},
            },
        }
    )
    target.next_id = 2
    return target


def start_server(
    db: Path, work: Path, stderr: IO[bytes], state: Path | None = None, name: str | None = None
) -> Target:
    """Spawn the channel on `db` and complete the MCP handshake."""
    target = spawn_server(db, work, stderr, state, name)
    target.wait_ready(60)
    target.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return target


def start_poller(db: Path, stderr: IO[bytes]) -> Target:
    """Spawn the baseline 1-second poller on `db`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--poller", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    target = Target("baseline", proc, t0)
    target.start_reader()
    target.wait_ready(60)
    return target


# ------------------------------------------------------------------------------------------ measuring
def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile `q` (0–100) of an ascending list."""
    if not sorted_ms:
        return float("nan")
    return sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)]


def write_one(sim: MessagesSimulator, chat: ChatRef, text: str) -> str:
    """One self-chat text typed on the Mac: exactly one row, one commit. Returns its GUID."""
    rows = sim.text_self(text, chat, typed_on="mac")
    if len(rows) != 1:
        raise RuntimeError(f"text_self wrote {len(rows)} rows, expected 1")
    return rows[0].guid


def checkpoint_if_due(sim: MessagesSimulator) -> None:
    """SQLite's default auto-checkpoint policy (WAL ≥ 1000 pages → PASSIVE checkpoint), run by hand.

    The benchmark's writer turns auto-checkpointing off and calls this *after* stamping a commit: an
    auto-checkpoint runs inside COMMIT, after the rows became visible, and on a 1 GB database it can hold
    the COMMIT call for hundreds of ms, which would make a "commit returned" stamp late (even later than
    the notification)."""
    wal = sim.path.with_name(sim.path.name + "-wal")
    page = int(sim.conn.execute("PRAGMA page_size").fetchone()[0])
    if wal.exists() and wal.stat().st_size >= 1000 * page:
        sim.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


def measure(target: Target, db: Path, n: int, burst: int, idle: float, rng: random.Random) -> dict[str, Any]:
    """Run the latency, burst and exactly-once measurements against a started target."""
    tag = f"{target.name}-{rng.getrandbits(32):08x}"
    with MessagesSimulator(db, owner=OWNER) as sim:
        sim.conn.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint_if_due
        chat = sim.self_chat()
        warm = write_one(sim, chat, f"warm-up {tag}")
        if target.wait_for({warm}, 30):
            raise RuntimeError(f"{target.name}: warm-up message never arrived")
        written: list[str] = [warm]

        commits: dict[str, float] = {}
        for i in range(n):
            time.sleep(rng.uniform(0.020, 0.200))
            g = write_one(sim, chat, f"latency {i} {tag}")
            commits[g] = time.perf_counter()
            checkpoint_if_due(sim)
        written += commits
        missing = target.wait_for(set(commits), 30)
        arrivals = target.first_arrivals()
        lat = sorted((arrivals[g] - t) * 1000 for g, t in commits.items() if g in arrivals)
        t_first = min(commits.values())
        samples = [
            [(t - t_first) * 1000, (arrivals[g] - t) * 1000 if g in arrivals else None] for g, t in commits.items()
        ]

        burst_guids: list[str] = []
        t_write = time.perf_counter()
        with sim.batch():
            for i in range(burst):
                burst_guids.append(write_one(sim, chat, f"burst {i} {tag}"))
        t_commit = time.perf_counter()
        checkpoint_if_due(sim)
        written += burst_guids
        burst_missing = target.wait_for(set(burst_guids), max(60.0, burst / 50))
        arrivals = target.first_arrivals()
        got = [arrivals[g] for g in burst_guids if g in arrivals]

    time.sleep(SETTLE_S)  # duplicates would come with a later read: give one a chance to happen
    counts = target.counts()
    mine = set(written)
    result: dict[str, Any] = {
        "messages": n,
        "latencies_ms": lat,
        "samples": samples,  # [commit time since the first commit, latency], ms, in write order
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
        "mean_ms": sum(lat) / len(lat) if lat else float("nan"),
        "latency_missing": len(missing),
        "burst": burst,
        "burst_write_ms": (t_commit - t_write) * 1000,
        "burst_first_ms": (min(got) - t_commit) * 1000 if got else float("nan"),
        "burst_last_ms": (max(got) - t_commit) * 1000 if got else float("nan"),
        "burst_events_per_s": len(got) / (max(got) - t_commit) if got else 0.0,
        "burst_missing": len(burst_missing),
        "lost": sum(1 for g in written if counts.get(g, 0) == 0),
        "duplicated": sum(1 for g in written if counts.get(g, 0) > 1),
        "unexpected": sum(c for g, c in counts.items() if g not in mine),
        "events_total": sum(counts.values()),
        "startup_ms": ((target.ready_at or 0) - target.spawned) * 1000,
    }
    try:
        before = cpu_seconds(target.proc.pid)
        time.sleep(idle)
        result["idle_cpu_pct"] = (cpu_seconds(target.proc.pid) - before) / idle * 100
        result["idle_window_s"] = idle
        result["peak_rss_mib"] = peak_rss_mib(target.proc.pid)
    except OSError:  # not Linux, or the process is gone
        result["idle_cpu_pct"] = result["peak_rss_mib"] = float("nan")
    return result


def run_target(kind: str, db: Path, work: Path, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """Start `kind` ("ours" or "baseline") on `db`, measure it, stop it; report crashes with stderr."""
    err_path = work / f"{kind}.stderr"
    with err_path.open("wb") as err:
        # a fresh state dir: a first start (a restart would rightly catch up on the other target's rows)
        state = Path(tempfile.mkdtemp(prefix="state-", dir=work))
        reader = None
        if kind == "ours" and args.routed:  # a first session reads and routes; the measured one is the default
            reader = start_server(db, work, err, state, name="reader")
        target = start_server(db, work, err, state, name="measured") if kind == "ours" else start_poller(db, err)
        try:
            result = measure(target, db, args.messages, args.burst, args.idle, rng)
            alive = target.proc.poll() is None
        finally:
            code = target.stop()
            if reader is not None:
                reader.stop()
    result["alive_after_burst"] = alive
    result["exit_code"] = code
    stderr = err_path.read_text(errors="replace")
    result["stderr_tail"] = stderr[-2000:]
    if kind == "ours" and (not alive or code not in (0, None)):
        print(f"!! server exited (alive={alive}, code={code}); stderr tail:\n{stderr[-2000:]}", file=sys.stderr)
    return result


def prepare_db(src: Path | None, work: Path) -> Path:
    """A writable copy of `src` (with -wal/-shm), or a fresh small sequoia fixture with a self-chat."""
    folder = work / "db"
    folder.mkdir()
    dst = folder / "chat.db"
    if src is None:
        create_chatdb(dst, "sequoia")
        with MessagesSimulator(dst, owner=OWNER) as sim:
            sim.self_chat()
        return dst
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(src) + suffix)
        if part.exists():
            shutil.copyfile(part, str(dst) + suffix)
    return dst


TABLE_ROWS = (
    ("latency p50 (ms)", "p50_ms", ".1f"),
    ("latency p90 (ms)", "p90_ms", ".1f"),
    ("latency p99 (ms)", "p99_ms", ".1f"),
    ("latency max (ms)", "max_ms", ".1f"),
    ("latency mean (ms)", "mean_ms", ".1f"),
    ("burst: writer time (ms)", "burst_write_ms", ".0f"),
    ("burst: commit→first (ms)", "burst_first_ms", ".1f"),
    ("burst: commit→last (ms)", "burst_last_ms", ".0f"),
    ("burst: events/s", "burst_events_per_s", ",.0f"),
    ("lost", "lost", "d"),
    ("duplicated", "duplicated", "d"),
    ("unexpected", "unexpected", "d"),
    ("spawn → initialize reply (ms)", "startup_ms", ".0f"),
    ("peak RSS (MiB)", "peak_rss_mib", ".1f"),
    ("idle CPU (% of a core)", "idle_cpu_pct", ".3f"),
)
"""(label, result key, format) of each printed figure."""


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over runs (counts of lost/duplicated/unexpected events are summed)."""
    out: dict[str, Any] = {}
    for _, key, _ in TABLE_ROWS:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if key in ("lost", "duplicated", "unexpected"):
            out[key] = sum(values)
        else:
            out[key] = statistics.median(values) if values else float("nan")
    return out


def print_table(results: dict[str, dict[str, Any]], runs: int) -> None:
    """Print the figures, one column per target, plus ours/baseline when both ran."""
    names = list(results)
    both = "ours" in results and "baseline" in results
    print(f"medians of {runs} run(s); lost/duplicated/unexpected are totals")
    head = f"{'':26}" + "".join(f"{n:>12}" for n in names) + (f"{'ratio':>10}" if both else "")
    print(head)
    for label, key, fmt in TABLE_ROWS:
        line = f"{label:26}" + "".join(f"{format(results[n][key], fmt):>12}" for n in names)
        if both and isinstance(results["baseline"][key], float) and results["baseline"][key]:
            line += f"{results['ours'][key] / results['baseline'][key]:>10.3f}"
        print(line)


def pyplot() -> Any:
    """`matplotlib.pyplot` with the file-only Agg backend. Raises SystemExit with an explanation when
    matplotlib is missing: it is an optional dependency (the `bench` group)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "charts need matplotlib, which is in the optional `bench` dependency group:\n"
            "    uv sync --group bench      (or: uv run --group bench python scripts/bench_latency.py …)"
        ) from None
    return plt


def draw_chart(path: Path, series: list[tuple[str, str, list[float]]]) -> None:
    """Write the latency CDF chart: `series` = (target, database label, latencies in ms)."""
    plt = pyplot()
    colours = {"ours": "#1f77b4", "baseline": "#d62728"}
    names = {"ours": "imessage-channel (file events)", "baseline": "1 s ROWID poller (official design)"}
    dbs = sorted({db for _, db, _ in series}, key=lambda d: (d != "1M db", d))
    styles = dict(zip(dbs, ("-", "--", ":", "-."), strict=False))
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=100)
    for target, db, latencies in series:
        xs = sorted(latencies)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        p50 = percentile(xs, 50)
        ax.step(
            xs,
            ys,
            where="post",
            color=colours.get(target, "black"),
            linestyle=styles.get(db, "-"),
            linewidth=1.8,
            label=f"{names.get(target, target)}, {db}: p50 {p50:.1f} ms, n={len(xs)}",
        )
    for label, ms in TARGETS_MS.items():
        ax.axvline(ms, color="grey", linestyle=":", linewidth=1)
        ax.text(ms * 1.05, 0.03, f"{label} target {ms:.0f} ms", color="grey", fontsize=8, rotation=90, va="bottom")
    ax.set_xscale("log")
    ax.set_xlim(0.5, 2000)
    ax.set_ylim(0, 1.005)
    ax.set_xlabel("commit → notifications/claude/channel received (ms, log scale)")
    ax.set_ylabel("fraction of messages delivered")
    ax.set_title("Inbound latency: single self-chat texts at random phases")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"chart written to {path} ({path.stat().st_size / 1024:.0f} KiB)")


def chart_series(reports: list[dict[str, Any]]) -> list[tuple[str, str, list[float]]]:
    """(target, database label, every latency sample of every run) from `--json` reports."""
    out: list[tuple[str, str, list[float]]] = []
    for report in reports:
        label = report.get("db_label", "db")
        for target in ("ours", "baseline"):
            samples = [ms for run in report["runs"] if target in run for ms in run[target]["latencies_ms"]]
            if samples:
                out.append((target, label, samples))
    return out


def db_label(path: Path | None) -> str:
    """ "small db" for the fresh fixture, else "1M db"-style from the row count of `path`."""
    if path is None:
        return "small db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = int(conn.execute("SELECT COALESCE(MAX(ROWID), 0) FROM message").fetchone()[0])
    finally:
        conn.close()
    return f"{rows / 1e6:.0f}M db" if rows >= 1e6 else f"{rows:,} rows db"


def main() -> int:
    """Parse arguments, run the measurements, print the table, optionally write the raw figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="chat.db to copy (default: a fresh small fixture)")
    parser.add_argument("--messages", type=int, default=200, help="single messages for the latency figures")
    parser.add_argument("--burst", type=int, default=10_000, help="rows written in one transaction")
    parser.add_argument("--idle", type=float, default=IDLE_WINDOW_S, help="seconds of idle CPU measurement")
    parser.add_argument("--runs", type=int, default=1, help="repeat everything; medians are reported")
    parser.add_argument("--baseline", action="store_true", help="also measure a 1-second ROWID poller")
    parser.add_argument("--seed", type=int, default=1, help="seeds the random pauses")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--chart", type=Path, help="write a PNG of the latency distribution here")
    parser.add_argument(
        "--from", dest="sources", type=Path, nargs="+", help="with --chart: draw from these --json files"
    )
    parser.add_argument(
        "--contacts", type=int, default=0, help="contacts in the AddressBook the server reads (0: lookups off)"
    )
    parser.add_argument(
        "--routed",
        action="store_true",
        help="two sessions: a first one reads and routes, the measured one (the default) gets every event",
    )
    parser.add_argument("--poller", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poller:
        return run_poller(args.poller)
    if args.sources:
        if not args.chart:
            parser.error("--from needs --chart")
        draw_chart(args.chart, chart_series([json.loads(p.read_text()) for p in args.sources]))
        return 0
    if args.messages < 1 or args.burst < 1 or args.runs < 1 or args.idle <= 0:
        parser.error("--messages, --burst and --runs must be at least 1, --idle positive")
    if args.chart:
        pyplot()  # fail now if matplotlib is missing, not after minutes of measuring
    rng = random.Random(args.seed)
    kinds = ("ours", "baseline") if args.baseline else ("ours",)
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        db = prepare_db(args.db, work)
        label = f"{db_label(args.db)}, {use_contacts(work, args.contacts)}"
        label += ", routed through a reader session" if args.routed else ""
        print(f"database: {args.db or 'fresh sequoia fixture'} → {db} (prepared in {time.perf_counter() - t0:.1f} s)")
        for i in range(args.runs):
            run: dict[str, dict[str, Any]] = {}
            for kind in kinds:
                run[kind] = r = run_target(kind, db, work, args, rng)
                print(
                    f"run {i + 1}/{args.runs} {kind}: {r['events_total']} events; lost {r['lost']}, duplicated "
                    f"{r['duplicated']}, unexpected {r['unexpected']}; p50 {r['p50_ms']:.1f} ms, p99 "
                    f"{r['p99_ms']:.1f} ms; burst last {r['burst_last_ms']:.0f} ms; idle CPU {r['idle_cpu_pct']:.3f} %"
                )
            runs.append(run)
    summary = {kind: medians([run[kind] for run in runs]) for kind in kinds}
    print(f"\n{label}: {args.messages} single messages, burst {args.burst} in one transaction; nproc {os.cpu_count()}")
    print_table(summary, args.runs)
    print("\ntargets (ours):")
    for key, (name, limit) in TARGETS.items():
        value = summary["ours"][key]
        print(f"  {name:32} {value:9.3f} ≤ {limit:g}  {'pass' if value <= limit else 'MISS'}")
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "db_label": label,
        "nproc": os.cpu_count(),
        "median": summary,
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.chart:
        draw_chart(args.chart, chart_series([report]))
    bad = any(r["lost"] or r["duplicated"] or r["unexpected"] for r in summary.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
