"""Shared state between sessions: the sent-texts log (echo filter across processes) and the
permission-request registry (a `yes abcde` finds the session that asked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from imessage_channel.clock import ManualClock
from imessage_channel.echo import EchoFilter
from imessage_channel.permission_registry import LIMIT, PermissionRegistry
from imessage_channel.sentlog import SentLog, feed

ROOT = Path(__file__).resolve().parents[1]
CHAT = "iMessage;-;+15555550100"
START = datetime(2030, 1, 1, tzinfo=UTC)  # any instant: only differences matter


# -- sent-texts log --------------------------------------------------------------------------------------
def test_the_reader_learns_the_other_sessions_sends(tmp_path):
    clock = ManualClock(START)
    work, reader = SentLog(tmp_path, "aaaa0001", clock), SentLog(tmp_path, "bbbb0002", clock)
    work.append(CHAT, "Done: 3 files changed", self_chat=False)
    reader.append(CHAT, "the reader's own send", self_chat=False)
    got = reader.poll()
    assert [(s.chat, s.text, s.self_chat, s.session) for s in got] == [
        (CHAT, "Done: 3 files changed", False, "aaaa0001")
    ]
    assert reader.poll() == []  # only what is new
    work.append("iMessage;-;me@example.com", "line one\nline two ✓", self_chat=True)
    assert [s.text for s in reader.poll()] == ["line one\nline two ✓"]
    echo = EchoFilter(clock=clock.monotonic)
    feed(echo, got)
    assert echo.is_echo(CHAT, "Done:  3 files changed", self_chat=False)


def test_a_new_reader_takes_only_recent_sends_from_the_file(tmp_path):
    clock = ManualClock(START)
    sender = SentLog(tmp_path, "aaaa0001", clock, window=60)
    sender.append(CHAT, "old", self_chat=False)
    clock.advance(61)
    sender.append(CHAT, "recent", self_chat=False)
    assert [s.text for s in SentLog(tmp_path, "bbbb0002", clock, window=60).poll()] == ["recent"]


def test_a_partial_line_waits_for_its_end(tmp_path):
    clock = ManualClock(START)
    reader = SentLog(tmp_path, "bbbb0002", clock)
    record = json.dumps({"id": "aaaa0001:1", "t": clock.wall(), "chat": CHAT, "self": False, "text": "hi"}) + "\n"
    path = tmp_path / "sessions" / "sent.log"
    path.parent.mkdir(parents=True)
    path.write_text("#00112233\n" + record[:20])
    assert reader.poll() == []
    with path.open("a") as fh:
        fh.write(record[20:] + "garbage\n")
    assert [s.text for s in reader.poll()] == ["hi"]


def test_the_log_stays_bounded_and_a_follower_sees_each_send_once(tmp_path):
    clock = ManualClock(START)
    sender = SentLog(tmp_path, "aaaa0001", clock, window=60, max_bytes=2000)
    follower = SentLog(tmp_path, "bbbb0002", clock, window=60)
    seen: list[str] = []
    for n in range(200):
        sender.append(CHAT, f"reply number {n}", self_chat=False)
        if n % 7 == 0:
            seen += [s.text for s in follower.poll()]
        clock.advance(5)
    seen += [s.text for s in follower.poll()]
    assert seen == [f"reply number {n}" for n in range(200)]  # across many rotations: none lost, none twice
    # Bounded by max_bytes plus the records of the last 2 × window (24 here), not by the 200 appended.
    kept = (tmp_path / "sessions" / "sent.log").read_bytes().splitlines()[1:]
    assert len(kept) <= 2000 // 100 + 24


APPENDER = """
import sys
from pathlib import Path
from imessage_channel.sentlog import SentLog
log = SentLog(Path(sys.argv[1]), sys.argv[2], max_bytes=int(sys.argv[3]))
for n in range(int(sys.argv[4])):
    log.append("iMessage;-;+15555550100", f"{sys.argv[2]} {n} " + "x" * 3000, self_chat=False)
"""


def test_concurrent_appends_from_processes_never_interleave(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sids = ["aaaa0001", "aaaa0002", "aaaa0003", "aaaa0004"]
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(tmp_path), sid, str(10**9), "150"], env=env)
        for sid in sids
    ]
    follower = SentLog(tmp_path, "bbbb0002", window=3600)
    seen: list[str] = []
    while any(p.poll() is None for p in procs):
        seen += [s.text[: s.text.index(" x")] for s in follower.poll()]
    assert [p.wait() for p in procs] == [0] * 4
    seen += [s.text[: s.text.index(" x")] for s in follower.poll()]
    assert sorted(seen) == sorted(f"{sid} {n}" for sid in sids for n in range(150))
    lines = (tmp_path / "sessions" / "sent.log").read_bytes().splitlines()[1:]  # after the header
    assert len(lines) == 600 and all(json.loads(line)["text"].endswith("x" * 3000) for line in lines)


# -- permission requests ---------------------------------------------------------------------------------
def test_a_verdict_finds_the_session_that_asked(tmp_path):
    clock = ManualClock(START)
    work, family = PermissionRegistry(tmp_path, "aaaa0001", clock), PermissionRegistry(tmp_path, "bbbb0002", clock)
    reader = PermissionRegistry(tmp_path, "cccc0003", clock)
    work.add("abcde")
    family.add("FGHIJ")
    assert reader.owner("abcde") == "aaaa0001"
    assert reader.take("ABCDE")  # the pipeline matched `yes ABCDE`
    assert reader.taken_by("abcde") == "aaaa0001"
    assert reader.taken_by("abcde") is None  # handed out once
    assert not reader.take("abcde")  # answered once
    assert reader.claim("fghij") == "bbbb0002"
    assert reader.claim("fghij") is None
    assert not reader.take("zzzzz")


def test_malformed_request_ids_are_ignored(tmp_path):
    registry = PermissionRegistry(tmp_path, "aaaa0001")
    for rid in ("abcdl", "abcd", "../..", "abcdef"):
        registry.add(rid)
        assert not registry.take(rid)
    assert not (tmp_path / "sessions" / "permissions").exists() or not os.listdir(tmp_path / "sessions" / "permissions")


def test_old_and_excess_requests_are_dropped(tmp_path):
    clock = ManualClock(START)
    registry = PermissionRegistry(tmp_path, "aaaa0001", clock, ttl=3600)
    registry.add("aaaaa")
    clock.advance(3601)
    registry.add("bbbbb")
    assert registry.owner("aaaaa") is None and registry.owner("bbbbb") == "aaaa0001"
    letters = "abcdefghijkmnopqrstuvwxyz"
    for n in range(LIMIT + 5):
        clock.advance(1)
        registry.add("".join(letters[(n // 25**k) % 25] for k in range(5)))
    assert len(os.listdir(tmp_path / "sessions" / "permissions")) == LIMIT


def test_two_readers_never_both_take_a_request(tmp_path):
    asker = PermissionRegistry(tmp_path, "aaaa0001")
    ids = [f"{c}bcde" for c in "abcdefghijkmnopqrstuvwxyz"]
    for rid in ids:
        asker.add(rid)
    wins: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def race(slot: int) -> None:
        registry = PermissionRegistry(tmp_path, f"bbbb000{slot}")
        barrier.wait()
        wins[slot] = [rid for rid in ids if registry.take(rid)]

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins[0] + wins[1]) == sorted(ids)
