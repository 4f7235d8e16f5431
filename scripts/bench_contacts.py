"""Benchmark Contacts lookups: the cost of loading a store and of `name_for` on the delivery hot path.

Builds an AddressBook folder in a temporary directory (or `--dir`) with `fixtures/addressbook_builder.py`: an
empty main store and one `Sources/<UUID>/` store holding `--contacts` contacts (default 5 000), each with 1–4
phone numbers in the formats people type (`(415) 555-0132`, `+1 415 555 0132`, `415.555.0132`, `4155550132`,
`+44 20 7946 0958`, …) and 0–3 emails. Then, `--runs` times (default 7) with a fresh `Contacts` each time:

1. load: `refresh(force=True)` on a new `Contacts` (list the folder, stat, read the store, build the index), ms;
2. lookups, cold: `name_for` once for each of `--lookups` handles as chat.db writes them (E.164 numbers and
   emails of stored contacts in another case, plus 20 % unknown), the first lookup of each (memo empty: it
   parses the candidate numbers), p50/p99 in µs;
3. lookups, warm: the same handles again (the memo answers), p50/p99 in µs;
4. check: `refresh(force=True)` when nothing changed (a listing and two stats per store), µs;
5. resolve: `resolve("<first> <last>")` of a contact with a unique name, µs.

Prints the median of the runs for every figure. Percentiles are nearest-rank over one run's samples.
Each lookup is timed alone with `time.perf_counter_ns()`, so the figures include the timer's own cost (~0.1 µs).

Usage (from the repo root): `uv run python scripts/bench_contacts.py [--contacts 5000] [--runs 7]
[--lookups 20000] [--dir /tmp/ab]`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures.addressbook_builder import Card, large_addressbook
from imessage_channel.contacts import Contacts
from imessage_channel.handles import parse_handle


def handles_of(cards: list[Card], count: int, seed: int = 11) -> list[str]:
    """`count` handles as chat.db stores them: 80 % of stored contacts (E.164, emails in another case)."""
    rng = random.Random(seed)
    handles: list[str] = []
    while len(handles) < count:
        if rng.random() < 0.2:
            handles.append(f"+1{rng.randint(2000000000, 9999999999)}")
            continue
        card = rng.choice(cards)
        if card.emails and rng.random() < 0.3:
            handles.append(rng.choice(card.emails).upper())
        else:
            handles.append(parse_handle(rng.choice(card.phones), "US"))
    return handles


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def one_run(root: Path, handles: list[str], query: str) -> dict[str, float]:
    book = Contacts(root, region="US")
    t0 = time.perf_counter_ns()
    book.refresh(force=True)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    figures = {"load_ms": load_ms}
    for phase in ("cold", "warm"):
        samples = []
        for handle in handles:
            t = time.perf_counter_ns()
            book.name_for(handle)
            samples.append((time.perf_counter_ns() - t) / 1e3)
        figures[f"{phase}_p50_us"] = percentile(samples, 50)
        figures[f"{phase}_p99_us"] = percentile(samples, 99)
    t = time.perf_counter_ns()
    book.refresh(force=True)
    figures["check_us"] = (time.perf_counter_ns() - t) / 1e3
    t = time.perf_counter_ns()
    book.resolve(query)
    figures["resolve_us"] = (time.perf_counter_ns() - t) / 1e3
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lookups", type=int, default=20000)
    parser.add_argument("--dir", type=Path, help="build the AddressBook folder here (must not exist)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "AddressBook"
        t0 = time.perf_counter()
        cards = large_addressbook(root, args.contacts)
        built = time.perf_counter() - t0
        phones = sum(len(c.phones) for c in cards)
        emails = sum(len(c.emails) for c in cards)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"store: {len(cards)} contacts, {phones} numbers, {emails} emails, {size / 1e6:.1f} MB ({built:.1f} s)")
        handles = handles_of(cards, args.lookups)
        query = f"{cards[len(cards) // 2].first} {cards[len(cards) // 2].last}"
        runs = [one_run(root, handles, query) for _ in range(args.runs)]
    print(f"median of {args.runs} runs, {args.lookups} lookups each (80 % known handles):")
    for key in runs[0]:
        print(f"  {key:14} {statistics.median(r[key] for r in runs):10.2f}")


if __name__ == "__main__":
    main()
