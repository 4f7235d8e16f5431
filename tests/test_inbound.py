"""The inbound pipeline, row by row: what each kind of chat.db row becomes (without the MCP layer)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.access import AccessStore
from imessage_channel.chatdb import ChatDB
from imessage_channel.clock import ManualClock
from imessage_channel.devtools.simulator import MessagesSimulator
from imessage_channel.echo import EchoFilter
from imessage_channel.inbound import (
    JOIN_GRACE_S,
    Approvals,
    Cursor,
    Deliver,
    InboundPipeline,
    PermissionVerdict,
    Send,
    iso_utc,
)

OWNER = "owner@example.com"
FRIEND = "friend@example.com"
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class Rig:
    def __init__(
        self, tmp: Path, access: dict | None = None, version: str = "sequoia", start: datetime | None = None
    ) -> None:
        self.db_path = create_chatdb(tmp / "chat.db", version)
        self.clock = ManualClock(start)
        self.sim = MessagesSimulator(self.db_path, owner=OWNER, owner_phone="+15555550100", clock=self.clock.now)
        self.me = self.sim.self_chat()
        self.sim.send(self.me, "first")
        self.friend = self.sim.dm(FRIEND)
        self.state = tmp / "state"
        self.state.mkdir()
        (self.state / "access.json").write_text(json.dumps(access or {"allowFrom": [FRIEND]}))
        self.db = ChatDB(self.db_path)
        self.pipe = InboundPipeline(
            db=self.db,
            store=AccessStore(self.state),
            owner=self.db.owner_handles(),
            cursor=Cursor(self.db.max_rowid()),
            echo=EchoFilter(clock=self.clock.monotonic),
            clock=self.clock,
        )

    def poll(self) -> tuple[list, list[tuple[str, str]]]:
        actions, decisions = self.pipe.poll()
        return actions, [(d.verdict, d.reason) for d in decisions]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_iso_utc_matches_javascript_to_iso_string() -> None:
    assert iso_utc(datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"


def test_each_kind_of_row_gets_its_decision(rig: Rig) -> None:
    hello = rig.sim.receive(rig.friend, FRIEND, "hello")
    rig.sim.tapback(rig.friend, FRIEND, hello.guid, "laugh")
    rig.sim.receipt(rig.friend, FRIEND)
    group = rig.sim.group([FRIEND, "x@example.com"])
    rig.sim.group_event(group, FRIEND)
    rig.sim.sms("+15555550177", "sms")
    rig.sim.send(rig.friend, "my own text to a friend")
    rig.sim.text_self("note", typed_on="phone")
    actions, decisions = rig.poll()
    assert decisions == [
        ("deliver", "allowlisted"),
        ("deliver", "allowlisted"),
        ("drop", "receipt"),
        ("drop", "group_event"),
        ("drop", "sms"),
        ("drop", "own-message"),
        ("deliver", "self-chat"),
        ("drop", "self-chat-copy"),
    ]
    assert [a.content for a in actions] == ["hello", '😂 laughed at their own message "hello"', "note"]
    assert rig.pipe.watermark == rig.db.max_rowid()


def test_a_row_without_its_chat_join_holds_the_watermark_then_moves_on(rig: Rig) -> None:
    start = rig.pipe.watermark
    lonely = rig.sim.receive(rig.friend, FRIEND, "no join yet", join=False)
    rig.sim.receive(rig.friend, FRIEND, "behind it")
    assert rig.poll() == ([], [("hold", "waiting-for-chat-join")])
    assert rig.pipe.watermark == start
    rig.clock.advance(JOIN_GRACE_S)  # the join never came
    actions, decisions = rig.poll()
    assert decisions == [("drop", "no-chat"), ("deliver", "allowlisted")]
    assert [a.content for a in actions] == ["behind it"]
    assert rig.pipe.watermark > lonely.rowid


def test_a_late_join_within_the_grace_period_delivers_in_order(rig: Rig) -> None:
    lonely = rig.sim.receive(rig.friend, FRIEND, "joined late", join=False)
    rig.sim.receive(rig.friend, FRIEND, "second")
    rig.poll()
    rig.sim.join_chat(lonely.rowid, rig.friend)
    actions, _ = rig.poll()
    assert [a.content for a in actions] == ["joined late", "second"]


def test_echo_of_a_recorded_send_is_dropped(rig: Rig) -> None:
    rig.pipe.echo.record(rig.me.guid, "Done.", self_chat=True)
    rig.sim.text_self("Done.", typed_on="phone")
    rig.sim.text_self("Done.", typed_on="mac")  # a third row: the owner repeating it, not an echo
    actions, decisions = rig.poll()
    assert decisions == [("drop", "echo"), ("drop", "echo"), ("deliver", "self-chat")]
    assert len(actions) == 1


def test_permission_reply_only_for_pending_requests_and_only_in_self_chat(rig: Rig) -> None:
    rig.pipe.permissions.add("abcde")
    rig.sim.receive(rig.friend, FRIEND, "yes abcde")
    rig.sim.text_self("n ABCDE", typed_on="mac")
    rig.sim.text_self("yes abcde", typed_on="mac")  # already answered: an ordinary message now
    actions, decisions = rig.poll()
    assert decisions == [("deliver", "allowlisted"), ("verdict", "permission-reply"), ("deliver", "self-chat")]
    assert actions[1] == PermissionVerdict("abcde", "deny")
    assert isinstance(actions[2], Send) and actions[2].chat_guid == rig.me.guid and "Denied" in actions[2].text
    assert isinstance(actions[3], Deliver) and actions[3].content == "yes abcde"


@pytest.mark.parametrize("text", ["yes abcdl", "yes abcd", "yes abcdef", "yes  abcde please", "yep abcde"])
def test_text_that_is_not_exactly_a_verdict_is_delivered_as_a_message(rig: Rig, text: str) -> None:
    for rid in ("abcdl", "abcde", "abcdef"):
        rig.pipe.permissions.add(rid)
    rig.sim.text_self(text, typed_on="mac")
    _actions, decisions = rig.poll()
    assert decisions == [("deliver", "self-chat")]


def test_pairing_codes_expire_after_an_hour_and_a_new_one_is_issued(tmp_path: Path) -> None:
    """Everything reads one clock: the pipeline, the simulator writing the rows and the pairing expiry
    (the test once froze only the rows' time and broke when its fixed date fell into the past)."""
    rig = Rig(tmp_path, access={"dmPolicy": "pairing"}, start=T0)
    stranger = rig.sim.dm("stranger@example.com")
    rig.sim.receive(stranger, "stranger@example.com", "hi")
    first, _ = rig.poll()
    code = json.loads((rig.state / "access.json").read_text())["pending"]
    assert len(first) == 1 and isinstance(first[0], Send) and next(iter(code)) in first[0].text
    rig.clock.advance(timedelta(hours=1, seconds=1))
    rig.sim.receive(stranger, "stranger@example.com", "hello again")
    second, _ = rig.poll()
    new = json.loads((rig.state / "access.json").read_text())["pending"]
    assert list(new) != list(code) and next(iter(new)) in second[0].text


def test_approved_files_become_confirmations_and_are_consumed(rig: Rig) -> None:
    # As `access pair` leaves things: the sender is in allowFrom, the file names their one-to-one chat.
    approved = rig.state / "approved"
    approved.mkdir()
    (approved / FRIEND).write_text(rig.friend.guid)
    approvals = Approvals(rig.pipe.store, rig.db)
    assert approvals.confirmations() == [Send(rig.friend.guid, "Paired! Say hi to Claude.")]
    assert approvals.confirmations() == []


def test_edited_row_is_delivered_with_edited_meta_and_unsent_row_is_not(rig: Rig) -> None:
    edited = rig.sim.receive(rig.friend, FRIEND, "draft")
    rig.sim.edit(edited, "final")
    gone = rig.sim.receive(rig.friend, FRIEND, "oops")
    rig.sim.unsend(gone)
    actions, decisions = rig.poll()
    assert decisions == [("deliver", "allowlisted"), ("drop", "unsend")]
    assert actions[0].content == "final" and actions[0].meta["edited"] == "true"
