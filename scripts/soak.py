"""Soak test: the real server under a steady stream of new messages and random restarts and crashes.

Usage (from the repository root):

    uv run python scripts/soak.py --minutes 5 [--rate 5] [--restart-every 20] [--sessions 1] [--seed 1]

A fixture chat.db gets `--rate` inbound texts per second from allowlisted friends (some in bursts of
up to 50 in one commit, as when Messages catches up): one whose phone clock is right, one whose clock is
a week ahead, one whose clock is 20 minutes slow; and now and then a text written hours earlier on a phone
that was offline. Texts written well before the channel's previous read (the slow clock, the offline
phone) arrive one per commit, as they do from a phone: twenty or more of them in one read are a sync storm
and held back by design (`inbound.is_storm`). Every text must arrive.

Every `--restart-every` seconds on average the server is stopped, either
cleanly (stdin closed) or with SIGKILL, and started again on the same state dir; messages keep arriving
while it is down. At the end the script reports what Claude would have received:
delivered / expected / duplicates / missing, which must be equal, 0 and 0. Exit status 0 when they are.

`--sessions N` runs N servers at once on the same chat.db and state dir (many Claude Code sessions on one
Mac: one reads and routes, `multisession`), named `s1` … `sN`; a tenth of the texts start with `@sK` (so
chats move between sessions), and each restart stops a random session, the reader or not, and starts it
again. What every session received counts together: each text must reach exactly one of them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import MessagesSimulator
from tests.harness import ServerProcess

FRIEND = "friend@example.com"
SENDERS = {  # address -> how far that phone's clock is off
    FRIEND: timedelta(0),
    "ahead@example.com": timedelta(days=7),
    "slow@example.com": -timedelta(minutes=20),
}
LATE_SHARE = 0.03
"""Share of texts written 1 to 5 hours before they arrive (a phone back online)."""


def soak(minutes: float, rate: float, restart_every: float, seed: int, sessions: int = 1) -> int:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="imessage-soak-"))
    (work / "Messages").mkdir()
    db = create_chatdb(work / "Messages" / "chat.db", "sequoia")
    sim = MessagesSimulator(db, owner="owner@example.com")
    me = sim.self_chat()
    sim.send(me, "start")
    chats = {address: sim.dm(address) for address in SENDERS}
    home = work / "home"
    (home / "state").mkdir(parents=True)
    (home / "state" / "access.json").write_text(json.dumps({"allowFrom": list(SENDERS)}))

    def text(label: str, *, in_burst: bool = False) -> str:
        senders = [s for s, skew in SENDERS.items() if skew >= timedelta(0)] if in_burst else list(SENDERS)
        sender = rng.choice(senders)
        written = datetime.now(UTC) + SENDERS[sender]
        if not in_burst and rng.random() < LATE_SHARE:
            written -= timedelta(hours=rng.uniform(1, 5))
        return sim.receive(chats[sender], sender, label, date=written).guid

    env = {"IMESSAGE_LOG_LEVEL": "WARNING", "IMESSAGE_CATCHUP_MAX": "100000"}

    expected: list[str] = []
    received: list[str] = []
    restarts = kills = 0
    names = [f"s{i + 1}" for i in range(sessions)]

    def start(name: str) -> ServerProcess:
        server = ServerProcess(db, home, env={**env, "IMESSAGE_SESSION_NAME": name}).start()
        server.initialize()
        return server

    def collect(server: ServerProcess) -> None:
        received.extend(e["meta"]["message_id"] for e in server.events() if "message_id" in e["meta"])

    def label(n: int, suffix: str = "") -> str:
        address = f"@{rng.choice(names)} " if sessions > 1 and rng.random() < 0.1 else ""
        return f"{address}soak {n}{suffix}"

    servers = {name: start(name) for name in names}
    deadline = time.monotonic() + minutes * 60
    next_restart = time.monotonic() + rng.expovariate(1 / restart_every)
    n = 0
    while time.monotonic() < deadline:
        burst = 1 if rng.random() < 0.9 else rng.randint(2, 50)
        with sim.batch():
            for _ in range(burst):
                expected.append(text(label(n), in_burst=burst > 1))
                n += 1
        time.sleep(rng.expovariate(rate / burst))
        if time.monotonic() >= next_restart:
            name = rng.choice(names)
            server = servers[name]
            if rng.random() < 0.5:
                assert server.proc is not None
                server.proc.kill()
                kills += 1
            else:
                server.close_stdin()
            server.wait_exit(15)
            server.wait_closed()
            collect(server)
            server.stop()
            for _ in range(rng.randint(0, 10)):  # texts that arrive while it is down
                expected.append(text(label(n, " (while down)")))
                n += 1
            servers[name] = start(name)
            restarts += 1
            next_restart = time.monotonic() + rng.expovariate(1 / restart_every)
    # Let the last servers drain (every text in some session's events), then stop them cleanly.
    drain_until = time.monotonic() + 60
    while time.monotonic() < drain_until:
        now_seen = set(received) | {e["meta"].get("message_id") for s in servers.values() for e in s.events()}
        if all(g in now_seen for g in expected):
            break
        time.sleep(0.2)
    for server in servers.values():
        server.close_stdin()
        server.wait_exit(15)
        server.wait_closed()
        collect(server)
        server.stop()
    sim.close()

    counts = Counter(received)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    missing = len(set(expected) - set(counts))
    unexpected = len(set(counts) - set(expected))
    print(f"ran {minutes:g} min, {sessions} session(s): {restarts} restarts ({kills} by SIGKILL), state in {work}")
    print(
        f"expected {len(expected)}  delivered {len(counts)}  duplicates {duplicates}  "
        f"missing {missing}  unexpected {unexpected}"
    )
    ok = duplicates == 0 and missing == 0 and unexpected == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate", type=float, default=5, help="messages per second (average)")
    parser.add_argument("--restart-every", type=float, default=20, help="seconds between restarts (average)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=1, help="servers running at once (one reads and routes)")
    args = parser.parse_args()
    return soak(args.minutes, args.rate, args.restart_every, args.seed, max(1, args.sessions))


if __name__ == "__main__":
    sys.exit(main())
