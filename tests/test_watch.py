"""`imessage-channel watch`: every new row with the channel's decision and the reason in words.

A fixture stream written by the Messages simulator covers each way a text can be delivered or
dropped; `--once` replays it, the live mode follows new rows and ends cleanly on Ctrl-C. Watching
never writes access.json (a pairing-policy stranger is not issued a code by being watched).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imessage_channel.access import AccessStore, allow
from imessage_channel.chatdb import Kind, Message
from imessage_channel.cli import main
from imessage_channel.cli.watch import decision_words, format_line
from imessage_channel.inbound import RowDecision
from imessage_channel.reasons import DELIVERED, HOLDS, Reason, Verdict

PROJECT = Path(__file__).resolve().parents[1]
FRIEND = "friend@example.com"
STRANGER = "+15550001111"
OWNER = "owner@example.com"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("IMESSAGE_STATE_DIR", str(folder))
    for name in ("IMESSAGE_ACCESS_MODE", "IMESSAGE_ALLOW_SMS"):
        monkeypatch.delenv(name, raising=False)
    return folder


def write_access(state: Path, **fields: object) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "access.json").write_text(json.dumps(fields), encoding="utf-8")


def decisions(out: str) -> dict[int, str]:
    """`#ROWID` → the text after the arrow, for every line of watch output."""
    found = {}
    for line in out.splitlines():
        head, _, decision = line.partition("  → ")
        rowid = int(head.split("  ")[1].lstrip("#"))
        found[rowid] = decision
    return found


@pytest.fixture
def stream(chatdb_factory, state):
    """One row per outcome; returns (db path, {name: ROWID}, group GUIDs)."""
    path, sim = chatdb_factory("sonoma", owner=OWNER)
    rows: dict[str, int] = {}
    sent, received = sim.text_self("Hi Claude")
    rows["self"], rows["self_copy"] = sent.rowid, received.rowid
    dm = sim.dm(FRIEND)
    hello = sim.receive(dm, FRIEND, "Dinner at 8?")
    rows["friend"] = hello.rowid
    rows["stranger"] = sim.receive(sim.dm(STRANGER), STRANGER, "who is this").rowid
    rows["sms"] = sim.sms("+15550002222", "Your code is 1234").rowid
    closed = sim.group(["a@example.com", "b@example.com"], name="Closed")
    rows["group_off"] = sim.receive(closed, "a@example.com", "claude, you there?").rowid
    mention = sim.group(["a@example.com", "c@example.com"], name="Mention")
    rows["no_mention"] = sim.receive(mention, "a@example.com", "lunch?").rowid
    rows["mentioned"] = sim.receive(mention, "c@example.com", "Claude: summarise this").rowid
    rows["not_member"] = sim.receive(mention, "b@example.com", "claude do it").rowid
    open_group = sim.group(["d@example.com"], name="Open")
    rows["group_open"] = sim.receive(open_group, "d@example.com", "anything goes").rowid
    rows["tapback"] = sim.tapback(dm, FRIEND, hello.guid, "love").rowid
    rows["receipt"] = sim.receipt(dm, FRIEND).rowid
    write_access(
        state,
        allowFrom=[FRIEND],
        mentionPatterns=["^claude\\b"],
        groups={
            mention.guid: {"requireMention": True, "allowFrom": ["a@example.com", "c@example.com"]},
            open_group.guid: {"requireMention": False, "allowFrom": []},
        },
    )
    return path, rows, closed.guid


def watch_once(capsys, path: Path, *args: str) -> tuple[int, str, str]:
    code = main(["watch", "--db", str(path), "--once", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_once_replays_the_stream_with_each_decision_in_words(stream, capsys):
    path, rows, closed_guid = stream
    code, out, _ = watch_once(capsys, path, "--from-rowid", "0")
    assert code == 0
    got = decisions(out)
    assert got[rows["self"]] == "delivered (self-chat)"
    assert got[rows["self_copy"]] == "dropped: second copy of a self-chat text"
    assert got[rows["friend"]] == "delivered (allowlisted sender)"
    assert got[rows["stranger"]] == (f"dropped: not allowlisted (allow them: imessage-channel access allow {STRANGER})")
    assert got[rows["sms"]] == "dropped: SMS/RCS sender, spoofable (IMESSAGE_ALLOW_SMS=true lets SMS in)"
    assert got[rows["group_off"]] == f"dropped: group not enabled (imessage-channel access group add '{closed_guid}')"
    assert got[rows["no_mention"]].startswith("dropped: no mention (no mentionPatterns regex matched")
    assert got[rows["mentioned"]] == "delivered (a mention pattern matched)"
    assert got[rows["not_member"]] == "dropped: sender not in this group's allowFrom"
    assert got[rows["group_open"]] == "delivered (group open to every message)"
    assert got[rows["tapback"]] == "delivered (allowlisted sender)"
    assert got[rows["receipt"]] == "dropped: receipt, no text"
    assert len(got) == len(rows)


def test_a_line_shows_time_rowid_chat_sender_kind_and_a_preview(stream, capsys):
    path, rows, _ = stream
    _, out, _ = watch_once(capsys, path, "--from-rowid", "0")
    lines = {int(line.split("  ")[1][1:]): line for line in out.splitlines()}
    fields = lines[rows["friend"]].split("  ")
    assert fields[2:6] == [f"iMessage;-;{FRIEND}", FRIEND, "text", '"Dinner at 8?"']
    assert lines[rows["self"]].split("  ")[3] == "me"
    assert '"❤️ loved "Dinner at 8?""' in lines[rows["tapback"]]


def test_last_n_shows_only_the_newest_rows(stream, capsys):
    path, rows, _ = stream
    _, out, _ = watch_once(capsys, path, "--last", "2")
    assert sorted(decisions(out)) == [rows["tapback"], rows["receipt"]]


def test_from_rowid_starts_after_that_row(stream, capsys):
    path, rows, _ = stream
    _, out, _ = watch_once(capsys, path, "--from-rowid", str(rows["receipt"] - 1))
    assert list(decisions(out)) == [rows["receipt"]]


def test_last_and_from_rowid_are_exclusive(stream, capsys):
    path, _, _ = stream
    with pytest.raises(SystemExit) as exc:
        main(["watch", "--db", str(path), "--once", "--last", "1", "--from-rowid", "0"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_an_allowed_stranger_is_delivered_on_the_next_watch(stream, state, capsys):
    path, rows, _ = stream
    AccessStore(state).update(lambda a: allow(a, STRANGER))
    _, out, _ = watch_once(capsys, path, "--from-rowid", str(rows["stranger"] - 1))
    assert decisions(out)[rows["stranger"]] == "delivered (allowlisted sender)"


def test_pairing_policy_is_shown_but_watching_issues_no_code(stream, state, capsys):
    path, rows, _ = stream
    write_access(state, dmPolicy="pairing")
    before = (state / "access.json").read_bytes()
    _, out, _ = watch_once(capsys, path, "--from-rowid", "0")
    assert decisions(out)[rows["stranger"]].startswith("pairing: the channel texts them a code")
    assert (state / "access.json").read_bytes() == before


def test_sms_is_delivered_when_allowed_by_the_environment(stream, state, capsys, monkeypatch):
    path, rows, _ = stream
    monkeypatch.setenv("IMESSAGE_ALLOW_SMS", "true")
    _, out, _ = watch_once(capsys, path, "--from-rowid", "0")
    assert (
        decisions(out)[rows["sms"]]
        == "dropped: not allowlisted (allow them: imessage-channel access allow +15550002222)"
    )


def test_old_rows_replay_with_the_gates_decision_not_as_backfill(chatdb_factory, state, capsys):
    path, sim = chatdb_factory("ventura", owner=OWNER)
    three_hours_ago = datetime.now(UTC) - timedelta(hours=3)
    row = sim.receive(sim.dm(STRANGER), STRANGER, "from this morning", date=three_hours_ago)
    _, out, _ = watch_once(capsys, path, "--last", "1")
    assert decisions(out)[row.rowid].startswith("dropped: not allowlisted")


def test_a_row_waiting_for_its_chat_is_shown_as_waiting(chatdb_factory, state, capsys):
    path, sim = chatdb_factory("ventura", owner=OWNER)
    dm = sim.dm(FRIEND)
    row = sim.receive(dm, FRIEND, "late join", join=False)
    _, out, _ = watch_once(capsys, path, "--from-rowid", "0")
    assert out.splitlines() == [out.splitlines()[0]]
    assert "(no chat yet)" in out
    assert decisions(out)[row.rowid] == "waiting: Messages has not joined it to a chat yet"


def test_a_missing_database_is_one_paragraph_and_exit_2(tmp_path, state, capsys):
    code = main(["watch", "--db", str(tmp_path / "nope.db"), "--once"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Full Disk Access" in err and "Traceback" not in err


def _message(text: str, **fields: object) -> Message:
    base: dict[str, object] = {
        "rowid": 7,
        "guid": "G",
        "chat_guid": "iMessage;-;+15551234567",
        "chat_style": 45,
        "handle": "+15551234567",
        "sender": "+15551234567",
        "service": "iMessage",
        "is_from_me": False,
        "date": datetime(2026, 3, 1, 9, 5, 7, tzinfo=UTC),
        "text": text,
        "kind": Kind.TEXT,
    }
    base.update(fields)
    return Message(**base)  # type: ignore[arg-type]


def test_format_line_is_one_line_whatever_the_text_contains():
    d = RowDecision(_message("first\nsecond\r\n\u202eevil"), Verdict.DROP, Reason.NOT_ALLOWLISTED)
    line = format_line(d, UTC)
    assert "\n" not in line and "\r" not in line and "\u202e" not in line
    assert line.startswith('09:05:07  #7  iMessage;-;+15551234567  +15551234567  text  "first ⏎ second ⏎ \\u202eevil"')


def test_long_texts_are_cut_to_a_preview():
    line = format_line(RowDecision(_message("word " * 100), Verdict.DELIVER, Reason.ALLOWLISTED), UTC)
    preview = line.split("  ")[5]
    assert preview.endswith('…"') and len(preview) <= 52


@pytest.mark.parametrize("reason", list(Reason), ids=[r.value for r in Reason])
def test_every_reason_is_said_in_words_with_its_fix_filled_in(reason: Reason):
    verdict = Verdict.DELIVER if reason in DELIVERED else Verdict.HOLD if reason in HOLDS else Verdict.DROP
    words = decision_words(RowDecision(_message("x"), verdict, reason))
    assert reason.words in words and "{" not in words
    if reason.fix and verdict is Verdict.DROP:
        assert reason.fix_for("+15551234567", "iMessage;-;+15551234567") in words


# --- live mode -------------------------------------------------------------------------------


def _lines(stream, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def _wait_for(q: queue.Queue[str | None], needle: str, seen: list[str], timeout: float = 20) -> str:
    while True:
        line = q.get(timeout=timeout)
        assert line is not None, f"stream ended before {needle!r}; saw {seen}"
        seen.append(line)
        if needle in line:
            return line


def test_live_mode_prints_new_rows_as_they_arrive_and_ends_cleanly_on_ctrl_c(chatdb_factory, state, tmp_path):
    path, sim = chatdb_factory("sequoia", owner=OWNER)
    sim.text_self("before the watch started")
    write_access(state, allowFrom=[FRIEND])
    env = {**os.environ, "IMESSAGE_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imessage_channel", "watch", "--db", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT,
    )
    out_q: queue.Queue[str | None] = queue.Queue()
    err_q: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out_q), daemon=True).start()
    threading.Thread(target=_lines, args=(proc.stderr, err_q), daemon=True).start()
    try:
        _wait_for(err_q, "Watching", [])
        sim.receive(sim.dm(FRIEND), FRIEND, "are you watching?")
        sim.receive(sim.dm(STRANGER), STRANGER, "let me in")
        sim.receive(sim.dm(FRIEND), FRIEND, "an old one, synced again", date=datetime.now(UTC) - timedelta(days=2))
        seen: list[str] = []
        friend = _wait_for(out_q, "are you watching?", seen)
        stranger = _wait_for(out_q, "let me in", seen)
        backfill = _wait_for(out_q, "an old one, synced again", seen)
        assert friend.rstrip().endswith("→ delivered (allowlisted sender)")
        assert "→ dropped: not allowlisted" in stranger
        assert "→ dropped: dated before the catch-up window" in backfill  # 2 days old: history, not news
        assert not any("before the watch started" in line for line in seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = []
    while (line := err_q.get(timeout=10)) is not None:
        rest.append(line)
    assert "Traceback" not in "".join(rest)
