"""Hostile input on the way out: nothing a sender or a tool call does can blind the channel. Items of the
issue "Nothing a sender, a clock or a crash does can blind the channel":

- 11. Limits: mention patterns run on RE2, so a pathological pattern cannot stall delivery and an invalid
  one is skipped with a log.

Where an item involves the server, the test drives the real `imessage-channel serve` over stdio
(`tests/harness.py`); pure parts are tested as units.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.access import AccessStore
from imessage_channel.gate import mentioned
from imessage_channel.patterns import PatternError, compile_pattern
from imessage_channel.sender import (
    OUTBOX_NAME,
)
from imessage_channel.simulator import MessagesSimulator
from tests.harness import ServerProcess

DM = "iMessage;-;+15555550123"
OWNER = "owner@example.com"
FRIEND = "friend@example.com"
ORIGINAL = b"the photo the model meant to send"


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
