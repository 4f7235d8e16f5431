"""Benchmark start-up on a large chat.db: initialize, ready-to-deliver, peak RSS, owner detection, history.

Owns the start-up benchmark (issue "Measure it", item 3). On a COPY of `--db` (default: the 1M-message
database of `make_big_chatdb.py` at /tmp/big/chat.db), with `--allow` DM contacts of that database
allowlisted in a fresh state dir (`access.json`), it measures, `--runs` times (a fresh process and a
fresh state dir each time: a first start):

- spawn → `initialize` reply: `perf_counter()` before `Popen` (the `initialize` request is written at
  once, so interpreter start-up, imports, opening chat.db, owner detection, the ledger and the
  watermark are all inside) to the reply line arriving on stdout;
- spawn → ready to deliver: right after the reply, the client sends `notifications/initialized` and
  `tools/list`, as Claude Code does, and a self-chat text is committed (`MessagesSimulator.text_self`, typed
  on the Mac: one row); "ready" is the arrival of that text's `notifications/claude/channel`. It is an upper
  bound of the moment the server can deliver: it includes one delivery (commit → event, reported
  separately, ≈ 4 ms) and, by design, the `server.LISTEN_GRACE_S` (300 ms) the server waits after
  `tools/list` before its first event (Claude Code listens only from then on);
- peak RSS: `VmHWM` from `/proc/<pid>/status`, once ready and at the end (after the tool calls);
- `chat_messages` with `limit` 100 and no `chat_guid` (every chat the channel may answer: self-chat
  and the allowlisted DMs), `--calls` times over stdio: request written → response line received,
  median (the first call is also reported: it fills the server's per-chat caches); and the same for
  the self-chat alone;
- owner detection in this process: `ChatDB(path)` then `owner_handles()` on fresh connections
  (`--runs` × 5), median.

Figures are medians over runs. The OS page cache is warm (the copy was just written). Linux only
(`/proc`).

Usage (from the repo root): `uv run python scripts/bench_startup.py [--db /tmp/big/chat.db] [--runs 3]
[--calls 10] [--allow 20] [--contacts 5000] [--json out.json]`. `--contacts N`: the server reads an AddressBook
of N contacts (default 0: lookups off), to compare start-up with and without names.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_owner
from bench_latency import OWNER, Target, peak_rss_mib, prepare_db, spawn_server, use_contacts, write_one

from imessage_channel.devtools.simulator import MessagesSimulator

DEFAULT_DB = Path("/tmp/big/chat.db")
HISTORY_LIMIT = 100
TARGETS = {
    "ready_ms": ("start-up to ready", 1500.0),
    "rss_end_mib": ("peak RSS (MiB)", 80.0),
    "chat_messages_all_ms": ("chat_messages, all chats", 50.0),
}
"""Figure key → (label, target): the issue's targets for this benchmark (upper bounds)."""


def pick_contacts(db: Path, count: int, seed: int) -> list[str]:
    """`count` handles of iMessage DMs with at least `HISTORY_LIMIT` messages, chosen with `seed`."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT h.id FROM chat c JOIN chat_handle_join j ON j.chat_id = c.ROWID"
            " JOIN handle h ON h.ROWID = j.handle_id"
            " WHERE c.style = 45 AND c.service_name = 'iMessage' AND h.id != ?"
            " AND (SELECT COUNT(*) FROM chat_message_join m WHERE m.chat_id = c.ROWID) >= ? ORDER BY h.id",
            (OWNER, HISTORY_LIMIT),
        ).fetchall()
    finally:
        conn.close()
    handles = [r[0] for r in rows]
    if len(handles) < count:
        raise SystemExit(f"{db} has only {len(handles)} DMs with ≥ {HISTORY_LIMIT} messages; need {count}")
    return random.Random(seed).sample(handles, count)


def owner_detection(db: Path, runs: int) -> dict[str, Any]:
    """Median ms of `ChatDB(path)` and of `owner_handles()` over `runs` fresh connections
    (`bench_owner.bench_startup` does the timing)."""
    opens, owners, found = bench_owner.bench_startup(db, runs)
    return {"open_ms": statistics.median(opens), "owner_ms": statistics.median(owners), "owner": sorted(found)}


def call_chat_messages(target: Target, arguments: dict[str, Any], calls: int) -> dict[str, Any]:
    """`calls` × `tools/call chat_messages(arguments)`: ms of each, the size of the last answer."""
    times: list[float] = []
    text = ""
    for _ in range(calls):
        rid, sent = target.request("tools/call", {"name": "chat_messages", "arguments": arguments})
        arrived, response = target.wait_response(rid, 60)
        times.append((arrived - sent) * 1000)
        result = response.get("result") or {}
        if "error" in response or result.get("isError"):
            raise RuntimeError(f"chat_messages({arguments}) failed: {json.dumps(response)[:500]}")
        text = result["content"][0]["text"]
    lines = text.splitlines()
    return {
        "first_ms": times[0],
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "chats": sum(1 for line in lines if line.startswith("== ") or line.startswith("# ")),
        "lines": len(lines),
        "chars": len(text),
    }


def one_run(db: Path, work: Path, contacts: list[str], calls: int, index: int) -> dict[str, Any]:
    """Start the server once on `db` with `contacts` allowlisted and take every per-process figure."""
    state = work / f"state-{index}"
    state.mkdir()
    (state / "access.json").write_text(json.dumps({"dmPolicy": "allowlist", "allowFrom": contacts}))
    with MessagesSimulator(db, owner=OWNER) as sim, (work / f"server-{index}.stderr").open("wb") as err:
        chat = sim.self_chat()
        target = spawn_server(db, work, err, state)
        try:
            target.wait_ready(60)
            assert target.ready_at is not None
            target.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            target.wait_response(target.request("tools/list", {})[0], 30)
            guid = write_one(sim, chat, f"ready? {index}")
            committed = time.perf_counter()
            if target.wait_for({guid}, 30):
                raise RuntimeError("the first message after initialize never arrived")
            arrived = target.first_arrivals()[guid]
            out: dict[str, Any] = {
                "initialize_ms": (target.ready_at - target.spawned) * 1000,
                "ready_ms": (arrived - target.spawned) * 1000,
                "first_event_latency_ms": (arrived - committed) * 1000,
                "rss_ready_mib": peak_rss_mib(target.proc.pid),
            }
            out["all"] = call_chat_messages(target, {"limit": HISTORY_LIMIT}, calls)
            out["self"] = call_chat_messages(target, {"chat_guid": chat.guid, "limit": HISTORY_LIMIT}, calls)
            out["chat_messages_all_ms"] = out["all"]["median_ms"]
            out["chat_messages_self_ms"] = out["self"]["median_ms"]
            out["rss_end_mib"] = peak_rss_mib(target.proc.pid)
        finally:
            code = target.stop()
    if code not in (0, None):
        raise RuntimeError(f"server exited with {code}: {(work / f'server-{index}.stderr').read_text()[-2000:]}")
    return out


def main() -> int:
    """Parse arguments, run the measurements, print the table, optionally write the raw figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"chat.db to copy (default {DEFAULT_DB})")
    parser.add_argument("--runs", type=int, default=3, help="server starts (medians are reported)")
    parser.add_argument("--calls", type=int, default=10, help="chat_messages calls per start")
    parser.add_argument("--allow", type=int, default=20, help="DM contacts to allowlist")
    parser.add_argument("--seed", type=int, default=1, help="picks the allowlisted contacts")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument(
        "--contacts", type=int, default=0, help="contacts in the AddressBook the server reads (0: lookups off)"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.calls < 1 or args.allow < 0:
        parser.error("--runs and --calls must be at least 1, --allow at least 0")
    if not args.db.exists():
        parser.error(f"{args.db} does not exist; build it with scripts/make_big_chatdb.py --out {args.db}")
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        db = prepare_db(args.db, work)
        size = db.stat().st_size / 2**20
        print(f"database: {args.db} → {db} ({size:.0f} MiB, copied in {time.perf_counter() - t0:.1f} s)")
        print(f"Contacts: {use_contacts(work, args.contacts)}")
        contacts = pick_contacts(db, args.allow, args.seed)
        owner = owner_detection(db, args.runs * 5)
        runs = []
        for i in range(args.runs):
            run = one_run(db, work, contacts, args.calls, i)
            runs.append(run)
            print(
                f"run {i + 1}/{args.runs}: initialize {run['initialize_ms']:.0f} ms, ready {run['ready_ms']:.0f} ms, "
                f"chat_messages all {run['chat_messages_all_ms']:.1f} ms ({run['all']['chats']} chats, "
                f"{run['all']['lines']} lines), self {run['chat_messages_self_ms']:.1f} ms, "
                f"peak RSS {run['rss_end_mib']:.1f} MiB"
            )
    keys = [
        ("spawn → initialize reply (ms)", "initialize_ms", ".0f"),
        ("spawn → ready (first event) (ms)", "ready_ms", ".0f"),
        ("  of which commit → event (ms)", "first_event_latency_ms", ".1f"),
        ("peak RSS when ready (MiB)", "rss_ready_mib", ".1f"),
        ("peak RSS at the end (MiB)", "rss_end_mib", ".1f"),
        ("chat_messages all chats (ms)", "chat_messages_all_ms", ".1f"),
        ("chat_messages self-chat (ms)", "chat_messages_self_ms", ".1f"),
    ]
    median = {key: statistics.median(r[key] for r in runs) for _, key, _ in keys}
    median["chat_messages_all_first_ms"] = statistics.median(r["all"]["first_ms"] for r in runs)
    print(f"\nmedians of {args.runs} run(s); {len(contacts)} contacts allowlisted; nproc {os.cpu_count()}")
    for label, key, fmt in keys:
        print(f"{label:36} {format(median[key], fmt):>10}")
    print(f"{'  chat_messages all, first call (ms)':36} {median['chat_messages_all_first_ms']:>10.1f}")
    print(f"{'ChatDB(path) open (ms)':36} {owner['open_ms']:>10.2f}")
    print(f"{'owner_handles() (ms)':36} {owner['owner_ms']:>10.2f}   → {', '.join(owner['owner'])}")
    print("\ntargets:")
    for key, (label, limit) in TARGETS.items():
        verdict = "pass" if median[key] <= limit else "MISS"
        print(f"  {label:28} {median[key]:8.1f} ≤ {limit:g}  {verdict}")
    if args.json:
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "contacts": contacts, "owner": owner}
        args.json.write_text(json.dumps({**report, "median": median, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
