"""Hostile input on the way out: nothing a sender or a tool call does can blind the channel. Items of the
issue "Nothing a sender, a clock or a crash does can blind the channel":

- 11. Limits: `textChunkLimit` below 1 is ignored (default used, logged), above 10000 clamped; a reply is at
  most `MAX_TEXT_PARTS` texts and `MAX_FILES` files, else refused whole with an error saying so; mention
  patterns run on RE2, so a pathological pattern cannot stall delivery and an invalid one is skipped with a log.

Where an item involves the server, the test drives the real `imessage-channel serve` over stdio
(`tests/harness.py`); pure parts are tested as units.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.access import Access, AccessStore
from imessage_channel.gate import mentioned
from imessage_channel.patterns import PatternError, compile_pattern
from imessage_channel.sender import (
    MAX_CHUNK_LIMIT,
    MAX_FILES,
    MAX_TEXT_PARTS,
    OUTBOX_NAME,
    OsascriptBackend,
    Sender,
    SendError,
    chunk_text,
    text_parts,
)
from imessage_channel.simulator import MessagesSimulator
from tests.harness import FAKES_BIN, ServerProcess

DM = "iMessage;-;+15555550123"
OWNER = "owner@example.com"
FRIEND = "friend@example.com"
ORIGINAL = b"the photo the model meant to send"


# --- fixtures ------------------------------------------------------------------------------------


class Osa:
    """The fake osascript (tests/fakes/bin) for in-process senders: modes, swap settings, recorded calls."""

    def __init__(self, log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log = log
        self._mp = monkeypatch

    def mode(self, *behaviours: str) -> None:
        self._mp.setenv("FAKE_OSASCRIPT_MODE", ",".join(behaviours))

    def swap(self, victim: Path, replacement: Path | str, how: str = "symlink") -> None:
        """On its `swap` call, the fake replaces `victim` by a link to `replacement` (or renames it over)."""
        self._mp.setenv("FAKE_OSASCRIPT_SWAP_PATH", str(victim))
        self._mp.setenv("FAKE_OSASCRIPT_SWAP_TO", str(replacement))
        self._mp.setenv("FAKE_OSASCRIPT_SWAP_HOW", how)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def osa(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Osa:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "osascript"
    shutil.copyfile(FAKES_BIN / "osascript", fake)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "osascript.jsonl"
    monkeypatch.setenv("FAKE_OSASCRIPT_LOG", str(log))
    handle = Osa(log, monkeypatch)
    handle.mode("ok")
    return handle


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    (d / "access.json").write_text('{"allowFrom": ["secret@example.com"]}')
    return d


@pytest.fixture
def sender(osa: Osa, state_dir: Path, tmp_path: Path) -> Sender:
    return Sender(OsascriptBackend(), state_dir=state_dir, messages_dir=tmp_path / "Messages", timeout=10)


# --- item 11: limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "effective"),
    [(None, MAX_CHUNK_LIMIT), (-5, MAX_CHUNK_LIMIT), (0, MAX_CHUNK_LIMIT), (1, 1), (40, 40),
     (MAX_CHUNK_LIMIT, MAX_CHUNK_LIMIT), (50_000, MAX_CHUNK_LIMIT)],
    ids=["absent", "negative: ignored", "zero: ignored", "one", "forty", "maximum", "over the maximum: clamped"],
)  # fmt: skip
def test_text_chunk_limit_is_ignored_below_one_and_clamped_above_the_maximum(
    configured: int | None, effective: int
) -> None:
    assert Access(text_chunk_limit=configured).effective_text_chunk_limit == effective


@pytest.mark.parametrize(
    ("configured", "logged"),
    [(-5, "textChunkLimit -5 is not a positive number"), (50_000, "textChunkLimit 50000 is over the maximum")],
    ids=["negative", "too large"],
)
def test_a_nonsense_text_chunk_limit_is_logged_when_the_file_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, configured: int, logged: str
) -> None:
    (tmp_path / "access.json").write_text(json.dumps({"textChunkLimit": configured}))
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        AccessStore(tmp_path).load()
    assert logged in caplog.text


def test_a_text_that_would_be_more_than_max_parts_is_refused_after_chunking_only_what_it_takes() -> None:
    huge = "word " * 3_000_000  # 15 MB of text, 1 500 000 parts of 10 characters
    assert len(chunk_text(huge, 10, "length", max_parts=MAX_TEXT_PARTS)) == MAX_TEXT_PARTS + 1
    with pytest.raises(SendError, match=f"more than {MAX_TEXT_PARTS} text messages") as err:
        text_parts(huge, 10, "length", None)
    assert "Nothing was sent" in err.value.message and not err.value.transient


def test_exactly_max_parts_is_fine_and_one_more_is_refused() -> None:
    fits = " ".join(["abcd"] * MAX_TEXT_PARTS)
    assert len(text_parts(fits, 4, "length", None)) == MAX_TEXT_PARTS
    with pytest.raises(SendError, match="reply too long"):
        text_parts(fits + " abcd", 4, "length", None)


def test_the_sender_itself_refuses_too_many_parts_or_files_before_sending(sender: Sender, osa: Osa) -> None:
    with pytest.raises(SendError, match=f"at most {MAX_TEXT_PARTS}"):
        sender.send_parts(DM, ["x"] * (MAX_TEXT_PARTS + 1))
    with pytest.raises(SendError, match=f"at most {MAX_FILES}"):
        sender.send_parts(DM, ["x"], ["/nowhere/f.png"] * (MAX_FILES + 1))
    assert osa.calls() == []


# --- item 11: mention patterns -------------------------------------------------------------------


PATTERN_CASES = [
    ("catastrophic backtracking pattern, long text", "a" * 100_000 + "!", ["^(a+)+$"], False),
    ("catastrophic pattern still matches what it should", "a" * 50, ["^(a+)+$"], True),
    ("nested quantifiers on a near-miss", "x" * 30 + "y", ["(x+x+)+z"], False),
    ("case-insensitive", "Hey CLAUDE", ["claude"], True),
    ("anchored word boundary", "claude, look", [r"^claude\b"], True),
    ("invalid pattern skipped, valid one used", "@bot hi", ["(", "(?<=x)y", r"(a)\1", "@bot"], True),
    ("only invalid patterns: no mention", "anything (", ["("], False),
    ("JavaScript \\u escape", "claude", [r"\u0063laude"], True),
    ("JavaScript \\u{…} escape", "claude", [r"\u{63}laude"], True),
    ("escaped backslash before u is literal", r"\u0063", [r"\\u0063"], True),
    ("Python \\Z", "hi claude", [r"claude\Z"], True),
    ("lone surrogate in the text", "\ud800 claude", ["claude"], True),
]


@pytest.mark.parametrize(("case", "text", "patterns", "expected"), PATTERN_CASES, ids=[c[0] for c in PATTERN_CASES])
def test_mention_patterns_run_in_linear_time(case: str, text: str, patterns: list[str], expected: bool) -> None:
    assert mentioned(text, patterns) is expected


@pytest.mark.parametrize(
    "pattern", ["(", "(?<=claude)x", r"(a)\1", "a{1001}", "[z-a]"], ids=["unbalanced", "lookbehind", "backref",
                                                                          "repeat over 1000", "bad range"]
)  # fmt: skip
def test_an_invalid_pattern_is_logged_once_per_file_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pattern: str
) -> None:
    with pytest.raises(PatternError):
        compile_pattern(pattern)
    (tmp_path / "access.json").write_text(json.dumps({"mentionPatterns": [pattern, "ok"]}))
    store = AccessStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        store.load()
        store.load()
    assert caplog.text.count("skipping invalid regex") == 1


# --- against the real server --------------------------------------------------------------------


class World:
    """A sequoia chat.db with the owner's self-chat and a group, and the real server on it."""

    def __init__(self, tmp: Path, access: dict, *, env: dict[str, str] | None = None, osascript_mode: str = "ok"):
        (tmp / "Messages").mkdir()
        self.db = create_chatdb(tmp / "Messages" / "chat.db", "sequoia")
        self.sim = MessagesSimulator(self.db, owner=OWNER)
        self.me = self.sim.self_chat()
        self.sim.send(self.me, "earlier note to self")
        self.group = self.sim.group([FRIEND, "other@example.com"], name="Crew")
        self.server = ServerProcess(self.db, tmp / "home", env=env, osascript_mode=osascript_mode)
        self.server.state.mkdir(parents=True)
        (self.server.state / "access.json").write_text(json.dumps(access))
        self.server.start()
        self.server.initialize()
        self.outbox = self.server.home / "Library" / "Messages" / OUTBOX_NAME

    def reply(self, text: str, files: list[str] | None = None) -> dict:
        args: dict = {"chat_id": self.me.guid, "text": text}
        if files is not None:
            args["files"] = files
        return self.server.call_tool("reply", args)

    def close(self) -> None:
        self.server.stop()
        self.sim.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, {"allowFrom": []}, env={"IMESSAGE_APPEND_SIGNATURE": "false"})
    yield w
    w.close()


@pytest.mark.parametrize(
    ("text", "files", "complaint"),
    [
        ("x" * 1_000_000, None, f"a reply may be at most {MAX_TEXT_PARTS}"),
        ("two hundred files", [f"/tmp/f{i}.png" for i in range(200)], f"at most {MAX_FILES}"),
        ("eleven files", [f"/tmp/f{i}.png" for i in range(MAX_FILES + 1)], f"at most {MAX_FILES}"),
    ],
    ids=["1 MB of text", "200 files", "one file too many"],
)
def test_server_refuses_an_oversized_reply_whole_and_sends_nothing(
    world: World, text: str, files: list[str] | None, complaint: str
) -> None:
    result = world.reply(text, files)
    message = result["content"][0]["text"]
    assert result["isError"] is True and complaint in message and "Nothing was sent" in message
    assert world.server.osascript_calls() == []
    assert world.reply("still serving").get("isError") is not True
    assert len(world.server.wait_osascript(1)) == 1


def test_server_ignores_a_negative_text_chunk_limit(tmp_path: Path) -> None:
    w = World(tmp_path, {"textChunkLimit": -5}, env={"IMESSAGE_APPEND_SIGNATURE": "false"})
    try:
        text = "forty characters of text, give or take!!"
        assert w.reply(text)["content"][0]["text"] == "sent"
        assert [c["argv"][1] for c in w.server.wait_osascript(1)] == [text]
        assert "textChunkLimit -5 is not a positive number" in w.server.stderr()
    finally:
        w.close()


def test_server_delivery_is_not_stalled_by_a_pathological_mention_pattern(tmp_path: Path) -> None:
    w = World(tmp_path, {"allowFrom": []})
    try:
        guid = w.group.guid
        access = {
            "groups": {guid: {"requireMention": True, "allowFrom": []}},
            "mentionPatterns": ["^(a+)+$", "(?<=x)claude", r"\bclaude\b"],
        }
        (w.server.state / "access.json").write_text(json.dumps(access))
        w.sim.receive(w.group, FRIEND, "a" * 5000 + "!")  # ~2^5000 steps for a backtracking engine
        w.sim.receive(w.group, FRIEND, "claude, are you there?")
        event = w.server.wait_event(lambda e: e["meta"].get("chat_id") == guid)
        assert event["content"] == "claude, are you there?"
        assert "skipping invalid regex '(?<=x)claude'" in w.server.stderr()
    finally:
        w.close()
