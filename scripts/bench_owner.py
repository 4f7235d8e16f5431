"""Benchmark the chat.db reader on a large and a small database: start-up and the queries tools run.

Owns the reader benchmark (design §7: "start-up time … on a large synthetic chat.db"). It times, in ms:
- `ChatDB(path)` (open + column probes) and `owner_handles()` (what the channel does at start-up), median
  and min over `--runs` fresh opens, on `--db` (e.g. the 1M-row database of `make_big_chatdb.py`) and on a
  small database (default: a copy of the bundled demo chat.db);
- `last_messages(chat, 100)` for 20 random chats (one call each; median, min, max over the chats);
- `messages_after(max_rowid - 500, 500)` and `chats_of_handle(handle)` for the owner and for a contact
  (median over `--runs`).
Every database is copied to a temporary folder first, so the originals are never touched; the OS page
cache is warm after the copy; the very first open is reported separately ("first open").

Usage (from the repo root): `uv run python scripts/bench_owner.py --db /tmp/big/chat.db --runs 5`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imessage_channel.chatdb import ChatDB

DEMO_DB = Path(__file__).resolve().parents[1] / "imessage_channel" / "data" / "demo.chat.db"
CHATS_SAMPLED = 20


def copy_db(src: Path, folder: Path) -> Path:
    """Copy `src` and its `-wal`/`-shm` files (if any) into `folder`; return the copy's path."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / "chat.db"
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(src) + suffix)
        if part.exists():
            shutil.copyfile(part, str(dst) + suffix)
    return dst


def ms(fn: Callable[[], object]) -> float:
    """Wall time of one call of `fn`, in milliseconds."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def summary(samples: list[float]) -> str:
    """`median / min` of `samples`, in ms."""
    return f"{statistics.median(samples):8.2f} / {min(samples):8.2f}"


def bench_startup(path: Path, runs: int) -> tuple[list[float], list[float], frozenset[str]]:
    """`runs` × (open, owner_handles) on fresh connections; returns open ms, owner ms, owner handles."""
    opens: list[float] = []
    owners: list[float] = []
    found: frozenset[str] = frozenset()
    for _ in range(runs):
        t0 = time.perf_counter()
        db = ChatDB(path)
        t1 = time.perf_counter()
        found = db.owner_handles()
        t2 = time.perf_counter()
        db.close()
        opens.append((t1 - t0) * 1000)
        owners.append((t2 - t1) * 1000)
    return opens, owners, found


def bench_queries(path: Path, runs: int, seed: int) -> dict[str, list[float]]:
    """Times of the tools' queries on one open `ChatDB` (see module docstring); ms lists by name."""
    rng = random.Random(seed)
    out: dict[str, list[float]] = {}
    with ChatDB(path) as db:
        chats = db.chats(limit=100_000)
        sample = rng.sample(chats, min(CHATS_SAMPLED, len(chats)))
        out["last_messages(chat, 100)"] = [ms(lambda c=c: db.last_messages(c.guid, 100)) for c in sample]
        top = db.max_rowid()
        out["messages_after(max-500, 500)"] = [ms(lambda: db.messages_after(top - 500, 500)) for _ in range(runs)]
        owner = sorted(db.owner_handles())
        if owner:
            out[f"chats_of_handle({owner[0]})"] = [ms(lambda: db.chats_of_handle(owner[0])) for _ in range(runs)]
        contact = next((p for c in sample if c.is_dm for p in db.participants(c.guid)), None)
        if contact:
            out["chats_of_handle(contact)"] = [ms(lambda: db.chats_of_handle(contact)) for _ in range(runs)]
    return out


def report(label: str, path: Path, runs: int, seed: int) -> None:
    """Print the start-up and query figures for one database."""
    with ChatDB(path) as db:
        rows = db.max_rowid()
    first_open, first_owner, _ = bench_startup(path, 1)
    opens, owners, found = bench_startup(path, runs)
    totals = [a + b for a, b in zip(opens, owners, strict=True)]
    print(f"\n== {label}: {path} (max ROWID {rows:,}, {path.stat().st_size / 2**20:.0f} MiB) ==")
    print(f"owner handles: {', '.join(sorted(found)) or '(none)'}")
    print(f"{'operation':36} {'median / min (ms)':>20}")
    print(f"{'ChatDB(path) open':36} {summary(opens)}")
    print(f"{'owner_handles()':36} {summary(owners)}")
    print(f"{'open + owner_handles()':36} {summary(totals)}   first open {first_open[0] + first_owner[0]:.2f}")
    for name, samples in bench_queries(path, runs, seed).items():
        extra = f"   max {max(samples):.2f} over {len(samples)} chats" if name.startswith("last_") else ""
        print(f"{name[:36]:36} {summary(samples)}{extra}")


def main() -> int:
    """Parse arguments and print the figures for the large and the small database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="the large chat.db (copied first)")
    parser.add_argument("--small", type=Path, default=DEMO_DB, help="the small chat.db (default: the demo db)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1, help="picks the sampled chats")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-owner-") as tmp:
        big = copy_db(args.db, Path(tmp) / "big")
        small = copy_db(args.small, Path(tmp) / "small")
        print(f"runs: {args.runs}; times in ms")
        report("large", big, args.runs, args.seed)
        report("small", small, args.runs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
