"""Never lose, never repeat: the real server over stdio under restarts, crashes, sync storms and faults.

Each test injects one fault into a fixture chat.db (written by the Messages simulator), the state dir or
the fake osascript, and checks what Claude receives. "Not delivered" is proven with a sentinel row
written after the fault: events arrive in ROWID order (see tests/harness.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import AttachmentSpec, MessagesSimulator, register_trigger_stubs
from imessage_channel.sender import text_parts
from tests import zygote_client
from tests.harness import ServerProcess, sentinel

OWNER = "owner@example.com"
FRIEND = "friend@example.com"


class Rig:
    """A chat.db with self-chat and an allowlisted friend; servers started on it share one state dir."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        (tmp / "Messages").mkdir()
        self.db = create_chatdb(tmp / "Messages" / "chat.db", "sequoia")
        self.sim = MessagesSimulator(self.db, owner=OWNER, owner_phone="+15555550100")
        self.me = self.sim.self_chat()
        self.sim.send(self.me, "earlier note to self")
        self.friend = self.sim.dm(FRIEND)
        self.home = tmp / "home"
        self.env = env or {}
        (self.home / "state").mkdir(parents=True)
        (self.home / "state" / "access.json").write_text(json.dumps({"allowFrom": [FRIEND]}))
        self.servers: list[ServerProcess] = []
        self.sentinels = 0

    def start(self, **kw: object) -> ServerProcess:
        server = ServerProcess(self.db, self.home, env={**self.env, **kw.pop("env", {})}, **kw).start()  # type: ignore[arg-type]
        self.servers.append(server)
        server.initialize()
        return server

    def sentinel(self, server: ServerProcess) -> None:
        self.sentinels += 1
        sentinel(server, self.sim, self.sentinels)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.sim.close()


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


def contents(server: ServerProcess) -> list[str]:
    return [e["content"] for e in server.events()]


# -- restarts ----------------------------------------------------------------------------------------


def test_first_start_delivers_nothing_old(rig: Rig) -> None:
    server = rig.start()
    rig.sentinel(server)
    assert contents(server) == ["sentinel 1"]


def test_messages_that_arrive_while_stopped_are_delivered_on_restart(rig: Rig) -> None:
    first = rig.start()
    rig.sim.receive(rig.friend, FRIEND, "before the restart")
    first.wait_event(lambda e: e["content"] == "before the restart")
    first.close_stdin()
    assert first.wait_exit() == 0
    rig.sim.receive(rig.friend, FRIEND, "while you were away")
    rig.sim.text_self("also this", typed_on="phone")
    second = rig.start()
    rig.sentinel(second)
    events = second.events()
    assert [e["content"] for e in events] == ["while you were away", "also this", "sentinel 1"]
    assert events[0]["meta"]["catch_up"] == "true" and "catch_up" not in events[2]["meta"]


def test_catch_up_is_bounded_by_age_and_count(tmp_path: Path) -> None:
    rig = Rig(tmp_path, env={"IMESSAGE_CATCHUP_MAX": "3"})
    try:
        first = rig.start()
        rig.sentinel(first)
        first.close_stdin()
        first.wait_exit()
        rig.sim.receive(rig.friend, FRIEND, "two days old", date=datetime.now(UTC) - timedelta(days=2))
        for i in range(5):
            rig.sim.receive(rig.friend, FRIEND, f"recent {i}")
        second = rig.start()
        rig.sentinel(second)
        assert contents(second) == ["recent 2", "recent 3", "recent 4", "sentinel 2"]
    finally:
        rig.close()


def writer_blocked(pid: int) -> bool:
    """Is a thread of process `pid` asleep in a write to a full pipe (the server's stdout writer: the only pipe
    it writes)? Read from /proc on Linux; where that does not tell, True (then the pipe being nearly full must
    do: the pipe crosses "nearly full" a few lines before the writer blocks). A kill between a line's write and
    its `delivered.log` entry would rightly deliver that line twice."""
    waits = []
    for wchan in Path(f"/proc/{pid}/task").glob("*/wchan"):
        with contextlib.suppress(OSError):
            waits.append(wchan.read_text())
    if all(wait in ("", "0") for wait in waits):
        return True  # no /proc, or a kernel that does not name where threads sleep
    return any("pipe_write" in wait for wait in waits)


def test_kill_9_mid_burst_then_restart_delivers_every_message_exactly_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, env={"IMESSAGE_CATCHUP_MAX": "100000"})
    try:
        first = rig.start()
        first.pause_reading_after(50)
        with rig.sim.batch():
            rows = [rig.sim.receive(rig.friend, FRIEND, f"burst {i}") for i in range(3000)]
        # Our reader stops after 50 lines; until it has, it may still drain the pipe (a reader thread starved
        # on a busy machine did so after the pipe had looked full, and the kill then hit a writer mid-line).
        first.wait_events(50)
        first.wait_stdout_pipe_full()
        assert first.proc is not None
        first.wait_for(lambda: writer_blocked(first.proc.pid), "the server's stdout writer to block")
        # its writer is now blocked mid-stream: kill it there
        first.proc.kill()
        first.proc.wait()
        first.resume_reading()
        first.wait_closed()
        before = [e["meta"]["message_id"] for e in first.events()]
        assert 50 <= len(before) < 3000
        second = rig.start()
        second.wait_events(3000 - len(before), timeout=120)
        rig.sentinel(second)
        after = [e["meta"]["message_id"] for e in second.events()][:-1]
        assert sorted(before + after) == sorted(r.guid for r in rows)
        assert before + after == [r.guid for r in rows]  # and in order
    finally:
        rig.close()


def test_a_crash_before_the_first_commit_resumes_from_the_start_not_from_the_top(rig: Rig) -> None:
    # The starting point is persisted at start: texts that arrive after a first start and before its first
    # delivery batch was committed must not look like history to the next start.
    first = rig.start()
    state = json.loads((rig.home / "state" / "delivery.json").read_text())
    with sqlite3.connect(rig.db) as conn:
        assert state["rowid"] == conn.execute("SELECT MAX(ROWID) FROM message").fetchone()[0]
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait()
    rig.sim.receive(rig.friend, FRIEND, "sent while nothing was committed")
    second = rig.start()
    rig.sentinel(second)
    assert contents(second) == ["sent while nothing was committed", "sentinel 1"]


def test_texts_waiting_at_start_reach_a_client_that_listens_only_after_tools_list(rig: Rig) -> None:
    # Claude Code attaches its channel handler 12-35 ms after it lists the tools and drops anything earlier
    # without a trace. This client ignores every notification that arrives within 35 ms of its tools/list.
    first = rig.start()
    first.stop()
    waiting = [f"waiting {i}" for i in range(3)]
    for text in waiting:
        rig.sim.receive(rig.friend, FRIEND, text)
    second = rig.start(env=zygote_client.constants(real=("LISTEN_GRACE_S",)))  # the real grace after tools/list
    rig.sentinel(second)
    heard = [e["content"] for t, e in second.event_times() if t >= second.listed_at + 0.035]
    assert heard == [*waiting, "sentinel 1"]
    lines = second.raw_lines()
    listed = next(i for i, m in enumerate(lines) if m.get("id") == 2)  # the tools/list answer
    assert all(i > listed for i, m in enumerate(lines) if m.get("method") == "notifications/claude/channel")


def test_sigint_ends_the_server_at_once_with_the_delivery_state_saved(rig: Rig) -> None:
    # Claude Code stops a server with SIGINT and sends SIGTERM about 100 ms later: the first must be enough.
    server = ServerProcess(rig.db, rig.home).start([sys.executable, "-m", "imessage_channel", "serve"])
    rig.servers.append(server)
    server.initialize()
    rig.sentinel(server)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    assert server.wait_exit() == 130  # 128 + SIGINT, quietly
    state = json.loads((rig.home / "state" / "delivery.json").read_text())
    with sqlite3.connect(rig.db) as conn:
        assert state["rowid"] == conn.execute("SELECT MAX(ROWID) FROM message").fetchone()[0]
    assert "received SIGINT; exiting" in server.stderr() and "Traceback" not in server.stderr()


# -- sync storms and duplicates ------------------------------------------------------------------------


def test_fifty_backfilled_old_rows_mixed_with_three_new_only_the_new_arrive(rig: Rig) -> None:
    server = rig.start()
    old = datetime.now(UTC) - timedelta(days=30)
    with rig.sim.batch():
        for i in range(50):
            rig.sim.receive(rig.friend, FRIEND, f"old {i}", date=old + timedelta(minutes=i))
            if i in (10, 25, 40):
                rig.sim.receive(rig.friend, FRIEND, f"new {i}")
    rig.sentinel(server)
    assert contents(server) == ["new 10", "new 25", "new 40", "sentinel 1"]
    log = server.wait_log("sync storm over: 50 old messages")
    assert log.count("old messages are arriving as new rows") == 1


def test_icloud_writing_one_message_twice_under_two_guids_delivers_it_once(rig: Rig) -> None:
    server = rig.start()
    now = datetime.now(UTC)
    rig.sim.receive(rig.friend, FRIEND, "dinner at 8?", date=now)
    rig.sim.receive(rig.friend, FRIEND, "dinner at 8?", date=now + timedelta(seconds=1))
    rig.sentinel(server)
    assert contents(server) == ["dinner at 8?", "sentinel 1"]


# -- rows in pieces ---------------------------------------------------------------------------------------


def test_a_message_whose_join_row_lands_300_ms_later_is_delivered(rig: Rig) -> None:
    server = rig.start()
    row = rig.sim.receive(rig.friend, FRIEND, "slow join", join=False)
    rig.sim.receive(rig.friend, FRIEND, "right behind")
    time.sleep(0.3)  # ok-sleep: the fault is the 300 ms gap itself
    rig.sim.join_chat(row.rowid, rig.friend)
    server.wait_events(2)
    assert contents(server) == ["slow join", "right behind"]


def test_attachment_joins_that_land_late_are_waited_for(rig: Rig) -> None:
    server = rig.start()
    photo = AttachmentSpec("IMG_9.jpg", "image/jpeg", "public.jpeg", b"\xff\xd8")
    row = rig.sim.receive(rig.friend, FRIEND, "photo", attachments=[photo], attachment_joins=False)
    time.sleep(0.3)  # ok-sleep: the fault is the 300 ms gap itself
    rig.sim.join_attachments(row)
    meta = server.wait_event(lambda e: e["content"] == "photo")["meta"]
    assert Path(meta["image_path"]).name == "IMG_9.jpg"


# -- database faults ------------------------------------------------------------------------------------------


def test_a_database_locked_by_another_connection_for_2_s_is_waited_out(rig: Rig) -> None:
    # WAL readers are almost never blocked, so take the database to rollback-journal mode (as the
    # reference chat.db is) where an exclusive writer makes every reader see SQLITE_BUSY.
    rig.sim.conn.execute("PRAGMA journal_mode = DELETE")
    server = rig.start()
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(rig.db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("UPDATE chat SET display_name = 'locked' WHERE ROWID = ?", (rig.friend.rowid,))
        locked.set()
        release.wait(2)  # the fault: the lock is held for 2 s
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(10)
    probe = sqlite3.connect(f"file:{rig.db}?mode=ro", uri=True, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        probe.execute("SELECT COUNT(*) FROM message").fetchone()  # the fault is real
    probe.close()
    result = server.call_tool("chat_messages", {"chat_guid": rig.me.guid})  # waits the lock out
    holder.join()
    assert result.get("isError") is not True and "earlier note to self" in result["content"][0]["text"]
    rig.sim.receive(rig.friend, FRIEND, "after the lock")
    server.wait_event(lambda e: e["content"] == "after the lock")
    assert server.proc is not None and server.proc.poll() is None


def test_chat_db_replaced_by_a_new_file_is_reopened(rig: Rig) -> None:
    server = rig.start()
    rig.sentinel(server)
    rig.sim.close()
    replacement = rig.db.with_name("chat.db.rebuilt")
    src = sqlite3.connect(rig.db)
    dst = sqlite3.connect(replacement)
    src.backup(dst)
    src.close()
    dst.close()
    os.replace(replacement, rig.db)  # new inode, as a Messages rebuild or restore leaves it
    for suffix in ("-wal", "-shm"):
        Path(f"{rig.db}{suffix}").unlink(missing_ok=True)
    rig.sim = MessagesSimulator(rig.db, owner=OWNER, owner_phone="+15555550100")
    rig.sim.receive(rig.friend, FRIEND, "after the rebuild")
    server.wait_event(lambda e: e["content"] == "after the rebuild")
    assert "chat.db was replaced" in server.stderr()


def test_renumbered_rowids_are_reanchored_by_date_without_loss_or_repeat(rig: Rig) -> None:
    first = rig.start()
    rig.sim.receive(rig.friend, FRIEND, "delivered before the rebuild")
    first.wait_event(lambda e: e["content"] == "delivered before the rebuild")
    first.close_stdin()
    first.wait_exit()
    # Rebuild: the first message is gone and the rest renumbered from 1, so MAX(ROWID) falls below
    # the watermark, and the next row Messages writes gets a ROWID the old watermark already covers.
    rig.sim.close()
    conn = sqlite3.connect(rig.db)
    register_trigger_stubs(conn)
    conn.execute("DELETE FROM message WHERE ROWID = (SELECT MIN(ROWID) FROM message)")
    old_ids = [r[0] for r in conn.execute("SELECT ROWID FROM message ORDER BY ROWID")]
    for new, old in enumerate(old_ids, start=1):
        conn.execute("UPDATE message SET ROWID = ? WHERE ROWID = ?", (new, old))
        conn.execute("UPDATE chat_message_join SET message_id = ? WHERE message_id = ?", (new, old))
    conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'message'", (len(old_ids),))
    conn.commit()
    conn.close()
    rig.sim = MessagesSimulator(rig.db, owner=OWNER, owner_phone="+15555550100")
    second = rig.start()
    rig.sim.receive(rig.friend, FRIEND, "after the rebuild")
    second.wait_event(lambda e: e["content"] == "after the rebuild")
    assert "renumbered" in second.stderr()
    assert "delivered before the rebuild" not in contents(second)


def test_chat_db_unreadable_for_a_while_keeps_tools_answering_and_recovers(rig: Rig) -> None:
    server = rig.start()
    rig.sim.close()
    saved = rig.db.with_name("saved.db")
    os.replace(rig.db, saved)
    rig.db.write_bytes(b"this is not a database, as if access were revoked" * 100)
    server.call_tool("chat_messages", {})  # touches the database: must answer, not crash
    result = server.call_tool("chat_messages", {"chat_guid": rig.me.guid})
    assert result["isError"] is True
    os.replace(saved, rig.db)
    rig.sim = MessagesSimulator(rig.db, owner=OWNER, owner_phone="+15555550100")
    rig.sim.receive(rig.friend, FRIEND, "readable again")
    server.wait_event(lambda e: e["content"] == "readable again", timeout=30)
    assert server.stderr().count("Reading ") <= 3  # logged once per outage, not per retry


# -- state faults ---------------------------------------------------------------------------------------------


def test_corrupt_delivery_file_catches_up_on_the_last_day(rig: Rig) -> None:
    (rig.home / "state" / "delivery.json").write_text("{not json")
    rig.sim.receive(rig.friend, FRIEND, "three days ago", date=datetime.now(UTC) - timedelta(days=3))
    rig.sim.receive(rig.friend, FRIEND, "an hour ago", date=datetime.now(UTC) - timedelta(hours=1))
    server = rig.start()
    rig.sentinel(server)
    # Treated as a restart with the catch-up window: the last day's texts arrive, older ones do not.
    assert contents(server) == ["earlier note to self", "an hour ago", "sentinel 1"]
    [aside] = (rig.home / "state").glob("delivery.json.corrupt-*")  # a unique name: never replaces an older one
    assert aside.read_text() == "{not json"


def test_corrupt_access_json_is_moved_aside_and_defaults_apply(rig: Rig) -> None:
    (rig.home / "state" / "access.json").write_text('{"allowFrom": [')
    stale = time.time() - 60  # broken for a minute: nobody is writing it (a fresh one may be mid-write)
    os.utime(rig.home / "state" / "access.json", (stale, stale))
    server = rig.start()
    rig.sim.receive(rig.friend, FRIEND, "friend no longer allowed (defaults)")
    rig.sentinel(server)
    assert contents(server) == ["sentinel 1"]
    assert [p.name for p in (rig.home / "state").glob("access.json.corrupt-*")]


def test_an_unwritable_state_dir_is_reported_and_delivery_continues(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a file where the state dir should be")
        server = rig.start(env={"IMESSAGE_STATE_DIR": str(blocker / "state")})
        rig.sentinel(server)
        rig.sentinel(server)
        assert contents(server) == ["sentinel 1", "sentinel 2"]
        assert "cannot write delivery state" in server.stderr()
    finally:
        rig.close()


# -- sender faults and the outbox ------------------------------------------------------------------------------


def test_a_send_that_fails_twice_then_succeeds_is_delivered_from_the_outbox(rig: Rig) -> None:
    retries = zygote_client.constants(more={"imessage_channel.outbox.BACKOFF_S": [0.1, 0.2]})  # not 1 s, 2 s
    server = rig.start(osascript_mode="fail-600,fail-600,ok", env=retries)
    result = server.call_tool("reply", {"chat_id": rig.me.guid, "text": "build finished"})
    assert result.get("isError") is not True
    assert "queued" in result["content"][0]["text"] and "Do not resend" in result["content"][0]["text"]
    calls = server.wait_osascript(3, timeout=30)
    assert [c["argv"][1] for c in calls] == ["build finished\nSent by Claude"] * 3
    rig.sentinel(server)
    assert not [e for e in server.events() if e["meta"].get("kind") == "send_failed"]
    outbox = rig.home / "state" / "outbox.json"  # rewritten once the send returns, after osascript logged it
    server.wait_for(lambda: json.loads(outbox.read_text())["entries"] == [], "an empty outbox")


def test_queued_parts_survive_a_restart_and_sent_parts_are_never_sent_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path, env={"IMESSAGE_APPEND_SIGNATURE": "false"})
    try:
        (rig.home / "state" / "access.json").write_text(json.dumps({"allowFrom": [FRIEND], "textChunkLimit": 12}))
        text = "part one is here. part two follows."
        parts = text_parts(text, 12, "length", None)
        assert len(parts) >= 3
        first = rig.start(osascript_mode="ok,fail-600")  # part 1 sent, then Messages "quits"
        result = first.call_tool("reply", {"chat_id": rig.me.guid, "text": text})
        assert f"sent 1 of {len(parts)} parts" in result["content"][0]["text"]
        first.close_stdin()
        first.wait_exit()
        tried_before_restart = len(first.osascript_calls())
        second = rig.start(osascript_mode="ok")  # Messages is back
        calls = second.wait_osascript(tried_before_restart + len(parts) - 1, timeout=30)
        sent = [calls[0]["argv"][1]] + [c["argv"][1] for c in calls[tried_before_restart:]]
        assert sent == parts
    finally:
        rig.close()


def test_a_reply_given_up_is_reported_to_claude_as_a_channel_event(rig: Rig, tmp_path: Path) -> None:
    doc = tmp_path / "report.pdf"
    doc.write_bytes(b"%PDF")
    server = rig.start(osascript_mode="fail-600,ok")
    server.call_tool("reply", {"chat_id": rig.me.guid, "text": "Here is the report", "files": [str(doc)]})
    doc.unlink()  # the file vanishes before the retry: a permanent failure
    event = server.wait_event(lambda e: e["meta"].get("kind") == "send_failed", timeout=30)
    assert event["meta"]["chat_id"] == rig.me.guid
    assert '"Here is the report"' in event["content"] and "file not found" in event["content"]


# -- lifecycle -----------------------------------------------------------------------------------------------------


def test_exit_on_stdin_close_releases_chat_db(rig: Rig) -> None:
    server = rig.start()
    rig.sentinel(server)
    server.close_stdin()
    assert server.wait_exit(10) == 0
    conn = sqlite3.connect(rig.db)
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    conn.close()


def test_copy_of_state_dir_is_all_that_a_restart_needs(rig: Rig, tmp_path: Path) -> None:
    first = rig.start()
    rig.sim.receive(rig.friend, FRIEND, "once")
    first.wait_event(lambda e: e["content"] == "once")
    first.close_stdin()
    first.wait_exit()
    shutil.copytree(rig.home / "state", tmp_path / "state-copy")
    second = rig.start(env={"IMESSAGE_STATE_DIR": str(tmp_path / "state-copy")})
    rig.sentinel(second)
    assert contents(second) == ["sentinel 1"]
