"""Problems told inside the session: a chat.db the channel cannot read, and Automation denied.

Claude Code hides a server's stderr and shows a server that exits at start only as "✘ Failed to connect", so
the channel stays up, answers `initialize` as a channel, says once — as a `kind="status"` event — what is
missing and the exact fix, answers both tools with the same words as `isError`, looks again every few
seconds, and starts delivering (announced by one more status event) as soon as it can read, with no restart.
The same once-only status event tells of Automation being denied (-1743) on the first reply.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.devtools.simulator import MessagesSimulator
from tests.harness import ServerProcess

OWNER = "owner@example.com"


def statuses(server: ServerProcess) -> list[str]:
    return [e["content"] for e in server.events() if e["meta"].get("kind") == "status"]


def test_without_a_readable_chat_db_the_channel_says_why_and_starts_as_soon_as_it_can(tmp_path: Path) -> None:
    missing = tmp_path / "Messages" / "chat.db"
    server = ServerProcess(missing, tmp_path / "home").start()
    try:
        init = server.initialize()
        assert "claude/channel" in init["capabilities"]["experimental"]
        first = server.wait_event(lambda e: e["meta"].get("kind") == "status")
        assert f"IMESSAGE_DB_PATH points to {missing}, which does not exist" in first["content"]
        assert "no restart needed" in first["content"]
        assert set(first["meta"]) == {"kind", "ts"}  # a status is about the channel, not a chat
        for tool, args in (("reply", {"chat_id": "iMessage;-;x", "text": "hi"}), ("chat_messages", {})):
            result = server.call_tool(tool, args)
            assert result["isError"] is True
            assert "which does not exist" in result["content"][0]["text"], tool

        (tmp_path / "build").mkdir()
        built = create_chatdb(tmp_path / "build" / "chat.db", "sequoia")  # the database appears, whole
        with MessagesSimulator(built, owner=OWNER) as sim:
            sim.send(sim.self_chat(), "history from before")  # so the owner's address is known
        missing.parent.mkdir()
        shutil.move(built, missing)
        server.wait_event(lambda e: "can read the Messages database now" in e["content"], timeout=30)
        with MessagesSimulator(missing, owner=OWNER) as sim:
            sim.send(sim.self_chat(), "the first text after access was granted")
        server.wait_event(lambda e: e["content"] == "the first text after access was granted")
        assert len(statuses(server)) == 2  # told once, not at every look
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_a_denied_automation_permission_is_told_once_with_the_fix(tmp_path: Path) -> None:
    db = create_chatdb(tmp_path / "chat.db", "sequoia")
    with MessagesSimulator(db, owner=OWNER) as sim:
        me = sim.self_chat()
        sim.send(me, "hello")
    server = ServerProcess(
        db, tmp_path / "home", env={"TERM_PROGRAM": "iTerm.app"}, osascript_mode="fail-1743,fail-1743"
    ).start()
    try:
        server.initialize()
        first = server.call_tool("reply", {"chat_id": me.guid, "text": "one"})
        second = server.call_tool("reply", {"chat_id": me.guid, "text": "two"})
        for result in (first, second):
            assert result["isError"] is True
            assert "Automation → iTerm → turn on Messages" in result["content"][0]["text"]
        told = server.wait_event(lambda e: e["meta"].get("kind") == "status")
        assert "cannot make Messages send" in told["content"] and "iTerm" in told["content"]
        server.request("ping")  # everything before it has been written
        assert len(statuses(server)) == 1
    finally:
        server.stop()
