"""Send confirmation (issue "Names and receipts", part 2): after AppleScript hands a reply to Messages, the rows
Messages writes into chat.db say whether it was sent, refused, or not seen; rows that turn red later become
`send_failed` events.

Fixture chat.db files are written by the Messages simulator (and, end to end, by the fake `osascript` in its
writing modes). Time is a `ManualClock` moved only by a fake `sleep`: nothing here waits for real.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.chatdb_builder import VERSIONS
from imessage_channel.chatdb import ChatDB
from imessage_channel.clock import ManualClock
from imessage_channel.devtools.simulator import AttachmentSpec, ChatRef, MessagesSimulator, RowRef
from imessage_channel.receipts import (
    CONFIRM_TIMEOUT_S,
    Confirmation,
    Failure,
    Outcome,
    Pending,
    Receipts,
    SentRow,
    chat_guid_forms,
    error_text,
    failed_label,
    match_rows,
    send_errors,
    settle,
)
from imessage_channel.sender import OsascriptBackend, Sender

OWNER = "owner@example.com"
FRIEND = "friend@example.com"
FAKES_BIN = Path(__file__).resolve().parent / "fakes" / "bin"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Sleeper:
    """A `sleep` that moves a ManualClock instead of waiting; `on[k]` runs during the k-th pause (1-based),
    standing for Messages writing while `confirm` waits."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.pauses: list[float] = []
        self.on: dict[int, Callable[[], object]] = {}

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.clock.advance(seconds)
        action = self.on.pop(len(self.pauses), None)
        if action is not None:
            action()


class Rig:
    """A fixture chat.db, its simulator, a reader and a `Receipts` on a manual clock."""

    def __init__(self, path: Path, sim: MessagesSimulator, **options: object) -> None:
        self.path, self.sim = path, sim
        self.clock = ManualClock(T0)
        self.sleep = Sleeper(self.clock)
        self.db = ChatDB(path)
        self.receipts = Receipts(self.db, clock=self.clock, sleep=self.sleep, **options)  # type: ignore[arg-type]

    def expect(self, chat: ChatRef | str, *parts: str, files: tuple[str, ...] = ()) -> Pending:
        guid = chat if isinstance(chat, str) else chat.guid
        return self.receipts.expect(guid, parts, self.db.max_rowid(), files=files)


@pytest.fixture
def rig(chatdb_factory):
    made: list[Rig] = []

    def make(version: str = "ventura", **options: object) -> Rig:
        path, sim = chatdb_factory(version, clock=lambda: T0)
        made.append(Rig(path, sim, **options))
        return made[-1]

    yield make
    for r in made:
        r.db.close()


# --- pure pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("guid", "forms"),
    [
        ("iMessage;-;+15555550123", ("iMessage;-;+15555550123", "any;-;+15555550123", "SMS;-;+15555550123")),
        ("any;-;a@example.com", ("any;-;a@example.com", "iMessage;-;a@example.com", "SMS;-;a@example.com")),
        ("any;+;chat42", ("any;+;chat42", "iMessage;+;chat42", "SMS;+;chat42")),
        ("SMS;-;+15555550123", ("SMS;-;+15555550123", "any;-;+15555550123", "iMessage;-;+15555550123")),
        ("chat42", ("chat42",)),
        ("iMessage;x;y", ("iMessage;x;y",)),
    ],
)
def test_every_guid_form_of_a_chat_is_searched(guid, forms):
    got = chat_guid_forms(guid)
    assert got[0] == guid
    assert set(forms) <= set(got)
    assert len(got) == len(set(got))
    assert all(g.split(";")[1:] == guid.split(";")[1:] for g in got)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (22, "the recipient is not registered with iMessage (Messages error 22, Not Delivered)"),
        (3, "Messages could not reach the iMessage service (a network error) (Messages error 3, Not Delivered)"),
        (7, "Messages reports error 7 (Not Delivered)"),
        (-1, "Messages reports error -1 (Not Delivered)"),
    ],
)
def test_error_codes_become_words_and_keep_their_number(code, words):
    assert error_text(code) == words
    assert failed_label(code) == f"(not delivered: {words})"


def _row(rowid: int, text: str, *, error: int = 0, sent: bool = True) -> SentRow:
    return SentRow(rowid, f"GUID-{rowid}", "iMessage;-;x", text, error, sent, sent, 0, 0)


def _pending(*texts: str, files: tuple[str, ...] = ()) -> Pending:
    return Pending(1, "iMessage;-;x", ("iMessage;-;x",), texts, files, 0, 1, 0.0)


@pytest.mark.parametrize(
    ("rows", "outcome", "description"),
    [
        ([_row(1, "a")], Outcome.SENT, "sent"),
        ([_row(1, "a"), _row(2, "b")], Outcome.SENT, "sent 2 parts"),
        ([_row(1, "a"), None], Outcome.NOT_SEEN, "handed to Messages, not yet seen in chat.db (1 of 2 parts seen)"),
        ([None], Outcome.NOT_SEEN, "handed to Messages, not yet seen in chat.db"),
        ([_row(1, "a", sent=False)], Outcome.PENDING, "handed to Messages, not sent yet"),
        (
            [_row(1, "a"), _row(2, "b", error=22), None],
            Outcome.FAILED,
            "part 2 of 3 not delivered: " + error_text(22),
        ),
        ([_row(1, "a", error=9, sent=False)], Outcome.FAILED, "not delivered: " + error_text(9)),
    ],
)
def test_settle_decides_the_outcome_and_its_words(rows, outcome, description):
    result = settle(rows)
    assert result.outcome is outcome
    assert result.description == description


def test_outcomes_carry_their_own_words():
    assert Outcome.SENT.description == "sent"
    assert Outcome.NOT_SEEN.description == "handed to Messages, not yet seen in chat.db"
    assert {o.key for o in Outcome} == {"sent", "failed", "pending", "not_seen"}


def test_matching_is_by_normalised_text_one_row_per_part():
    rows = [_row(5, "ok"), _row(6, "Done:\n3  files"), _row(7, "ok")]
    got = match_rows(_pending("ok", "Done: 3 files", "ok", "ok"), rows)
    assert [r.rowid if r else None for r in got] == [5, 6, 7, None]
    # parts found by an earlier look keep their rows; the rest match among the others
    again = match_rows(_pending("ok", "ok"), rows, claimed={5}, found=[True, False])
    assert [r.rowid if r else None for r in again] == [None, 7]


# --- confirm -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_one_part_is_sent_when_its_row_is_there_without_error(rig, version):
    r = rig(version)
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "On it.")
    row = r.sim.send(chat, "On it.")
    result = r.receipts.confirm(pending)
    assert (result.outcome, result.description) == (Outcome.SENT, "sent")
    assert result.rows[0] is not None and (result.rows[0].rowid, result.rows[0].guid) == (row.rowid, row.guid)
    assert r.sleep.pauses == []  # found on the first look: no waiting


def test_a_reply_in_several_parts_needs_every_parts_row(rig):
    r = rig()
    chat = r.sim.self_chat()
    parts = ("First part of a long answer", "second part", "last part\nSent by Claude")
    pending = r.expect(chat, *parts)
    r.sim.text_self(parts[0], chat)
    r.sleep.on[1] = lambda: r.sim.text_self(parts[1], chat)
    r.sleep.on[2] = lambda: r.sim.text_self(parts[2], chat)
    result = r.receipts.confirm(pending)
    assert (result.outcome, result.description) == (Outcome.SENT, "sent 3 parts")
    assert len(r.sleep.pauses) == 2
    assert [row.text for row in result.rows if row] == list(parts)


def test_a_part_that_never_shows_up_leaves_the_reply_not_seen(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "one", "two", "three")
    r.sim.send(chat, "one")
    r.sim.send(chat, "three")
    result = r.receipts.confirm(pending)
    assert result.outcome is Outcome.NOT_SEEN
    assert result.description == "handed to Messages, not yet seen in chat.db (2 of 3 parts seen)"


@pytest.mark.parametrize(
    ("addressed", "written"),
    [
        ("any;-;+15555550123", "iMessage;-;+15555550123"),
        ("iMessage;-;+15555550123", "any;-;+15555550123"),
        ("iMessage;-;+15555550123", "SMS;-;+15555550123"),
        ("any;-;+15555550123", "any;-;+15555550123"),
    ],
)
def test_the_row_counts_under_any_guid_form_of_the_chat(rig, addressed, written):
    r = rig("tahoe")
    service, _, ident = written.split(";", 2)
    chat = r.sim.dm(ident, "iMessage" if service == "any" else service, any_guid=service == "any")
    assert chat.guid == written
    pending = r.expect(addressed, "Sure")
    r.sim.send(chat, "Sure")
    assert r.receipts.confirm(pending).outcome is Outcome.SENT


@pytest.mark.parametrize(("code", "words"), [(22, "not registered with iMessage"), (5, "reports error 5")])
def test_a_row_with_an_error_is_a_failure_with_its_code(rig, code, words):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "hello", "world")
    r.sim.send(chat, "hello")
    r.sim.send_result(chat, "world", error=code, sent=False, delivered=False)
    result = r.receipts.confirm(pending)
    assert (result.outcome, result.error, result.failed_part) == (Outcome.FAILED, code, 2)
    assert result.description.startswith("part 2 of 2 not delivered: ") and words in result.description
    assert r.sleep.pauses == []  # a failure ends the wait at once


def test_no_row_at_all_is_not_seen_after_the_timeout(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "anyone there?")
    result = r.receipts.confirm(pending)
    assert (result.outcome, result.description) == (Outcome.NOT_SEEN, "handed to Messages, not yet seen in chat.db")
    assert sum(r.sleep.pauses) == pytest.approx(CONFIRM_TIMEOUT_S)
    assert r.clock.monotonic() == pytest.approx(CONFIRM_TIMEOUT_S)
    assert len(r.sleep.pauses) <= 15  # a bounded number of looks
    assert r.receipts.confirm(r.expect(chat, "again"), timeout=0.0).outcome is Outcome.NOT_SEEN


def test_rows_written_before_the_send_never_confirm_it(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    other = r.sim.dm("other@example.com")
    r.sim.send(chat, "Done.")  # the same text, sent earlier
    pending = r.expect(chat, "Done.")
    r.sim.receive(chat, FRIEND, "Done.")  # after the send, but not the owner's
    r.sim.send(other, "Done.")  # the owner's, but another chat
    assert r.receipts.confirm(pending).outcome is Outcome.NOT_SEEN
    r.sim.send(chat, "Done.")
    assert r.receipts.confirm(pending).outcome is Outcome.SENT


def test_a_row_not_marked_sent_yet_is_pending(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "queued")
    r.sim.send_result(chat, "queued", sent=False, delivered=False)
    result = r.receipts.confirm(pending)
    assert (result.outcome, result.description) == (Outcome.PENDING, "handed to Messages, not sent yet")
    assert sum(r.sleep.pauses) == pytest.approx(CONFIRM_TIMEOUT_S)  # it waited for is_sent to the end


def test_a_row_joined_to_its_chat_late_is_found_once_joined(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "late join")
    row = r.sim._message(chat, text="late join", handle=FRIEND, is_from_me=True, join=False)
    r.sleep.on[2] = lambda: r.sim.join_chat(row.rowid, chat)
    assert r.receipts.confirm(pending).outcome is Outcome.SENT
    assert len(r.sleep.pauses) == 2


def test_a_file_part_is_found_by_its_attachments_name(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "the photo:", files=("/tmp/outbox/abc/IMG_1.jpg",))
    r.sim.send(chat, "the photo:")
    r.sim.send(chat, "", attachments=[AttachmentSpec("other.jpg", "image/jpeg", "public.jpeg", data=None)])
    assert r.receipts.confirm(pending, timeout=1).outcome is Outcome.NOT_SEEN
    photo = r.sim.send(chat, "", attachments=[AttachmentSpec("IMG_1.jpg", "image/jpeg", "public.jpeg", data=None)])
    assert r.receipts.confirm(pending).description == "sent 2 parts"
    r.sim.fail_send(photo, 22)
    (failure,) = r.receipts.watch_failures()  # once, though the send was confirmed twice
    assert (failure.rowid, failure.words) == (photo.rowid, "[file IMG_1.jpg]")


def test_expect_needs_something_to_confirm(rig):
    r = rig()
    with pytest.raises(ValueError):
        r.receipts.expect("iMessage;-;x", [], 0)
    assert r.receipts.expect("iMessage;-;x", ["hi"]).before_rowid == r.db.max_rowid()


# --- watch_failures ------------------------------------------------------------------------------


def test_a_send_that_fails_later_is_reported_once(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    assert r.receipts.watch_failures() == []  # nothing watched: nothing read
    pending = r.expect(chat, "See you at 6, I booked the table by the window")
    row = r.sim.send(chat, "See you at 6, I booked the table by the window")
    assert r.receipts.confirm(pending).outcome is Outcome.SENT
    assert r.receipts.watch_failures() == []
    r.sim.fail_send(row, 22)
    r.clock.advance(30)
    (failure,) = r.receipts.watch_failures()
    assert (failure.chat_guid, failure.rowid, failure.guid, failure.error) == (chat.guid, row.rowid, row.guid, 22)
    assert failure.content == (
        f'Your reply to {chat.guid} starting "See you at 6, I booked the table by the…" was not delivered: '
        + error_text(22)
    )
    assert failure.meta() == {"chat_id": chat.guid, "kind": "send_failed", "message_id": row.guid, "error": "22"}
    assert r.receipts.watch_failures() == []
    assert r.receipts.watched() == (0, 0)


def test_a_failure_reported_by_confirm_is_not_reported_again(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "nope")
    r.sim.send_result(chat, "nope", error=22, sent=False, delivered=False)
    assert r.receipts.confirm(pending).outcome is Outcome.FAILED
    assert r.receipts.watch_failures() == []


def test_parts_not_seen_in_time_are_still_looked_for(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "first", "second", "third")
    r.sim.send(chat, "first")
    assert r.receipts.confirm(pending).outcome is Outcome.NOT_SEEN
    assert r.receipts.watched() == (1, 1)
    second = r.sim.send(chat, "second")
    assert r.receipts.watch_failures() == []
    assert r.receipts.watched() == (2, 1)
    third = r.sim.send_result(chat, "third", error=22, sent=False, delivered=False)
    (failure,) = r.receipts.watch_failures()
    assert (failure.rowid, failure.words) == (third.rowid, "third")
    assert r.receipts.watched() == (2, 0)  # every part found: the send is no longer looked for
    r.sim.fail_send(second, 3)
    assert [f.rowid for f in r.receipts.watch_failures()] == [second.rowid]


def test_the_watch_ends_after_its_window(rig):
    r = rig(watch_window=120.0)
    chat = r.sim.dm(FRIEND)
    rows = []
    for text in ("a", "b"):
        pending = r.expect(chat, text)
        rows.append(r.sim.send(chat, text))
        r.receipts.confirm(pending)
        r.clock.advance(60)
    for row in rows:
        r.sim.fail_send(row)
    r.clock.advance(1)  # 121 s after the first send, 61 s after the second
    assert [f.rowid for f in r.receipts.watch_failures()] == [rows[1].rowid]
    unseen = r.expect(chat, "never")
    r.receipts.confirm(unseen, timeout=0)
    assert r.receipts.watched() == (0, 1)
    r.clock.advance(120.5)
    assert r.receipts.watch_failures() == []
    assert r.receipts.watched() == (0, 0)


def test_at_most_max_watched_entries_the_oldest_dropped_first(rig):
    r = rig(max_watched=3)
    chat = r.sim.dm(FRIEND)
    rows: list[RowRef] = []
    for k in range(5):
        pending = r.expect(chat, f"part {k}")
        rows.append(r.sim.send(chat, f"part {k}"))
        r.receipts.confirm(pending)
        r.clock.advance(1)
    assert r.receipts.watched() == (3, 0)
    for row in rows:
        r.sim.fail_send(row)
    assert sorted(f.rowid for f in r.receipts.watch_failures()) == [row.rowid for row in rows[2:]]


def test_a_reopened_chat_db_drops_the_watch(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    pending = r.expect(chat, "x")
    row = r.sim.send(chat, "x")
    r.receipts.confirm(pending)
    r.sim.close()
    copy = r.path.with_name("copy.db")
    shutil.copyfile(r.path, copy)
    os.replace(copy, r.path)  # a new inode: Messages rebuilt or restored the file
    assert r.db.refresh()
    r.sim = MessagesSimulator(r.path)
    r.sim.fail_send(row)
    assert r.receipts.watch_failures() == []
    assert r.receipts.watched() == (0, 0)
    r.sim.close()


# --- chat_messages marks ---------------------------------------------------------------------------


def test_send_errors_marks_the_owners_failed_messages(rig):
    r = rig()
    chat = r.sim.dm(FRIEND)
    ok = r.sim.send(chat, "fine")
    bad = r.sim.send_result(chat, "lost", error=22, sent=False, delivered=False)
    r.sim.receive(chat, FRIEND, "hi")
    later = r.sim.send(chat, "lost later")
    r.sim.fail_send(later, 4)
    msgs = r.db.last_messages(chat.guid, 10)
    assert send_errors(r.db, msgs) == {bad.rowid: 22, later.rowid: 4}
    assert ok.rowid not in send_errors(r.db, msgs)
    assert send_errors(r.db, []) == {}


def test_sent_rows_reads_text_from_the_body_and_skips_others(rig):
    r = rig("tahoe")
    chat = r.sim.dm(FRIEND)
    before = r.db.max_rowid()
    r.sim.receive(chat, FRIEND, "theirs")
    mine = r.sim.send(chat, "body only\ufffc")
    (row,) = r.db.sent_rows([chat.guid, "any;-;nobody"], before)
    assert row[:4] == (mine.rowid, mine.guid, chat.guid, "body only")
    assert row[4:7] == (0, True, True)
    assert r.db.sent_rows([chat.guid], mine.rowid) == []
    assert r.db.sent_rows([], before) == []
    assert r.db.send_states([mine.rowid, 999_999]) == {mine.rowid: (0, True, True, row[7])}
    r.sim.conn.execute(
        "UPDATE message SET error = NULL, is_sent = NULL, date_delivered = NULL WHERE ROWID = ?", (mine.rowid,)
    )
    assert r.db.send_states([mine.rowid]) == {mine.rowid: (0, False, True, 0)}  # NULL reads as 0


def test_the_simulator_finds_its_chats_by_guid(rig):
    r = rig("tahoe")
    for chat in (r.sim.dm(FRIEND), r.sim.dm("+15555550123", any_guid=True), r.sim.group([FRIEND, "b@example.com"])):
        assert r.sim.chat_ref(chat.guid) == chat
    assert r.sim.chat_ref("iMessage;-;nobody@example.com") is None


# --- end to end: the fake osascript writes what Messages writes --------------------------------------


@pytest.fixture
def fake_messages(tmp_path, monkeypatch, chatdb_factory):
    """The real fake `osascript` on PATH, writing into a fixture chat.db; a Sender that runs it."""
    path, sim = chatdb_factory("sequoia", owner=OWNER)
    log = tmp_path / "osascript.jsonl"
    monkeypatch.setenv("PATH", f"{FAKES_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OSASCRIPT_LOG", str(log))
    monkeypatch.setenv("FAKE_OSASCRIPT_DB", str(path))
    monkeypatch.setenv("FAKE_OSASCRIPT_OWNER", OWNER)
    for name in ("FAKE_OSASCRIPT_CHAT", "FAKE_OSASCRIPT_ERROR", "FAKE_OSASCRIPT_FAIL_AFTER"):
        monkeypatch.delenv(name, raising=False)
    state, messages = tmp_path / "state", tmp_path / "Messages"
    state.mkdir()
    messages.mkdir()
    sender = Sender(OsascriptBackend(), state_dir=state, messages_dir=messages, timeout=30)
    return path, sim, sender, log


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [("write", Outcome.SENT), ("write-error", Outcome.FAILED), ("no-row", Outcome.NOT_SEEN)],
)
def test_end_to_end_the_fake_osascript_writes_and_confirm_reads(fake_messages, monkeypatch, mode, outcome):
    path, sim, sender, log = fake_messages
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", mode)
    chat = sim.self_chat()
    r = Rig(path, sim)
    pending = r.expect(chat, "Tests pass.", "Sent by Claude")
    result = sender.send_parts(chat.guid, ["Tests pass.", "Sent by Claude"])
    assert result.parts_total == 2
    confirmation = r.receipts.confirm(pending)
    r.db.close()
    assert confirmation.outcome is outcome
    if mode == "write":
        copies = [m for m in ChatDB(path).recent(10) if not m.is_from_me]
        assert [m.text for m in copies] == ["Tests pass.", "Sent by Claude"]  # self-chat: the received copies
    if mode == "write-error":
        assert (confirmation.error, confirmation.failed_part) == (22, 1)
    rows_log = log.with_name(log.name + ".rows")
    written = rows_log.read_text().splitlines() if rows_log.exists() else []
    assert len(written) == (0 if mode == "no-row" else 2)


def test_end_to_end_a_file_and_a_late_failure(fake_messages, monkeypatch, tmp_path):
    path, sim, sender, log = fake_messages
    chat = sim.dm(FRIEND, any_guid=True)
    monkeypatch.setenv("FAKE_OSASCRIPT_CHAT", "iMessage;-;" + FRIEND)  # Messages files it under another form
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", "write-fail-later,write")
    monkeypatch.setenv("FAKE_OSASCRIPT_FAIL_AFTER", "2")  # the file part is the next call, then "another"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    r = Rig(path, sim)
    pending = r.expect(chat, "here it is", files=(str(photo),))
    sender.send_parts(chat.guid, ["here it is"], [str(photo)])
    confirmation = r.receipts.confirm(pending)
    assert (confirmation.outcome, confirmation.description) == (Outcome.SENT, "sent 2 parts")
    assert r.receipts.watch_failures() == []
    # the write-fail-later row turns red at the start of the next osascript call
    sender.send_parts(chat.guid, ["another"])
    (failure,) = r.receipts.watch_failures()
    first = json.loads(log.with_name(log.name + ".rows").read_text().splitlines()[0])
    assert (failure.rowid, failure.error, failure.chat_guid, failure.words) == (
        first["rowid"],
        22,
        chat.guid,
        "here it is",
    )
    r.db.close()


def test_failure_and_confirmation_are_plain_values():
    f = Failure("iMessage;-;x", 1, "not a plain id <>", 3, "")
    assert f.meta() == {"chat_id": "iMessage;-;x", "kind": "send_failed", "error": "3"}
    assert f.content == "Your reply to iMessage;-;x was not delivered: " + error_text(3)
    assert Confirmation(Outcome.SENT, (None,)).seen == 0
