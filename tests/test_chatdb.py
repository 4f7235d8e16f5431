"""The chat.db reader reads every macOS release's rows faithfully (issue "Read chat.db faithfully").

Fixture databases come from `fixtures.chatdb_builder` (Apple's schema per release) and are written by the
Messages simulator, or by raw SQL where a row shape must be exact. The real Ventura database in
`fixtures/reference` is checked too.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fixtures.chatdb_builder import VERSIONS, create_chatdb, message_columns
from imessage_channel.appletime import APPLE_EPOCH, NS_THRESHOLD, from_apple, to_apple_ns
from imessage_channel.chatdb import (
    OWNER_SCAN_ROWS,
    Chat,
    ChatDB,
    ChatDBError,
    Kind,
    Message,
    is_self_chat,
    parse_associated_guid,
)
from imessage_channel.devtools.simulator import AttachmentSpec, MessagesSimulator

OWNER = "owner@example.com"
FRIEND = "friend@example.com"
PHONE = "+15555550123"
T0 = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)
EDIT_VERSIONS = [v for v in VERSIONS if "date_edited" in message_columns(v)]
FDA_PATH = "System Settings → Privacy & Security → Full Disk Access"


def insert_message(sim: MessagesSimulator, **columns: object) -> int:
    """Insert one raw `message` row (committed at once) and return its ROWID."""
    values: dict[str, object] = {"guid": str(uuid.uuid4()).upper(), "service": "iMessage", **columns}
    sql = f"INSERT INTO message ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
    return int(sim.conn.execute(sql, list(values.values())).lastrowid or 0)


def by_rowid(db: ChatDB) -> dict[int, Message]:
    return {m.rowid: m for m in db.iter_all()}


# --------------------------------------------------------------------------------------------------
# Schema versions: columns probed, missing ones read as NULL


@pytest.mark.parametrize("version", VERSIONS)
def test_columns_are_probed_per_version(chatdb_factory, version):
    path, sim = chatdb_factory(version)
    sim.receive(sim.dm(FRIEND), FRIEND, "hello")
    with ChatDB(path) as db:
        assert db.message_columns == message_columns(version)
        (msg,) = db.recent()
    assert msg.text == "hello"
    assert msg.kind is Kind.TEXT
    assert msg.date_edited is None


@pytest.mark.parametrize("version", VERSIONS)
def test_custom_emoji_tapback_reads_the_emoji_column_only_where_it_exists(chatdb_factory, version):
    path, sim = chatdb_factory(version)
    dm = sim.dm(FRIEND)
    target = sim.send(dm, "Dinner at 8?")
    sim.tapback(dm, FRIEND, target.guid, "emoji", emoji="🔥")
    with ChatDB(path) as db:
        tapback = db.recent()[-1].tapback
    assert tapback is not None
    assert tapback.reaction == "emoji"
    # associated_message_emoji arrived with Sequoia; before that the column is absent and read as NULL.
    assert tapback.emoji == ("🔥" if "associated_message_emoji" in message_columns(version) else "")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_kind_of_row(chatdb_factory, version):
    path, sim = chatdb_factory(version)
    dm = sim.dm(FRIEND)
    group = sim.group([FRIEND, PHONE], name="Trip")
    hello = sim.receive(dm, FRIEND, "Hello there")
    love = sim.tapback(dm, FRIEND, hello.guid, "love")
    like_part = sim.tapback(dm, None, hello.guid, "like", part=1)
    unlike = sim.tapback(dm, None, hello.guid, "like", removed=True)
    reply = sim.receive(dm, FRIEND, "Sounds good", reply_to=hello.guid)
    renamed = sim.group_event(group, FRIEND, item_type=2, title="Trip 2025")
    added = sim.group_event(group, FRIEND, item_type=1, action=0)
    receipt = sim.receipt(dm, FRIEND)
    with ChatDB(path) as db:
        got = by_rowid(db)

    assert got[hello.rowid].kind is Kind.TEXT
    assert got[hello.rowid].text == "Hello there"

    m = got[love.rowid]
    assert m.kind is Kind.TAPBACK
    assert m.tapback is not None
    assert (m.tapback.reaction, m.tapback.emoji, m.tapback.target_guid, m.tapback.target_part) == (
        "love",
        "❤️",
        hello.guid,
        0,
    )
    assert not m.tapback.removed

    m = got[like_part.rowid]
    assert m.tapback is not None
    assert (m.tapback.reaction, m.tapback.target_part, m.is_from_me) == ("like", 1, True)

    m = got[unlike.rowid]
    assert m.kind is Kind.TAPBACK_REMOVAL
    assert m.tapback is not None
    assert m.tapback.removed
    assert m.tapback.target_guid == hello.guid

    m = got[reply.rowid]
    assert m.kind is Kind.REPLY
    assert m.reply_to == hello.guid
    assert m.text == "Sounds good"

    m = got[renamed.rowid]
    assert m.kind is Kind.GROUP_EVENT
    assert (m.item_type, m.group_title, m.chat_guid) == (2, "Trip 2025", group.guid)
    assert got[added.rowid].kind is Kind.GROUP_EVENT
    assert got[added.rowid].group_action_type == 0

    assert got[receipt.rowid].kind is Kind.RECEIPT
    assert got[receipt.rowid].text == ""


@pytest.mark.parametrize("version", EDIT_VERSIONS)
def test_edit_and_unsend(chatdb_factory, version):
    path, sim = chatdb_factory(version)
    dm = sim.dm(FRIEND)
    edited = sim.receive(dm, FRIEND, "See you at 7")
    sim.edit(edited, "See you at 8", date=T0)
    gone = sim.receive(dm, FRIEND, "oops wrong chat", reply_to=edited.guid)
    sim.unsend(gone, date=T0)
    with ChatDB(path) as db:
        got = by_rowid(db)
    m = got[edited.rowid]
    assert m.kind is Kind.EDIT
    assert m.text == "See you at 8"
    assert m.date_edited == T0
    m = got[gone.rowid]
    assert m.kind is Kind.UNSEND  # even though it was a reply: an unsend wins
    assert m.text == ""


def test_monterey_has_no_edits_a_row_is_its_current_text(chatdb_factory):
    path, sim = chatdb_factory("monterey")
    row = sim.receive(sim.dm(FRIEND), FRIEND, "first")
    sim.edit(row, "second")
    with ChatDB(path) as db:
        m = db.message_by_guid(row.guid)
    assert m is not None
    assert (m.kind, m.text, m.date_edited) == (Kind.TEXT, "second", None)


@pytest.mark.parametrize("version", ["tahoe", "ventura"])
def test_null_edit_and_retract_dates_mean_never(chatdb_factory, version):
    path, sim = chatdb_factory(version)
    rowid = insert_message(sim, text="plain", date=to_apple_ns(T0), date_edited=None, date_retracted=None)
    with ChatDB(path) as db:
        m = by_rowid(db)[rowid]
    assert (m.kind, m.date_edited, m.date) == (Kind.TEXT, None, T0)


# --------------------------------------------------------------------------------------------------
# Text: `text` column vs attributedBody only, placeholders, attachments


@pytest.mark.parametrize("version", VERSIONS)
def test_text_from_text_column_and_from_attributed_body_only(chatdb_factory, version):
    path, sim = chatdb_factory(version)
    dm = sim.dm(FRIEND)
    both = sim.receive(dm, FRIEND, "in both columns", body_only=False)
    body = sim.receive(dm, FRIEND, "only in attributedBody")
    text_only = insert_message(sim, text="only in text", handle_id=0)
    stored = dict(sim.conn.execute("SELECT ROWID, text FROM message"))
    assert stored[body.rowid] is None  # the Ventura+ shape: text NULL, content in the typedstream
    with ChatDB(path) as db:
        got = by_rowid(db)
    assert got[both.rowid].text == "in both columns"
    assert got[body.rowid].text == "only in attributedBody"
    assert got[text_only].text == "only in text"


def test_text_column_wins_over_attributed_body(chatdb_factory):
    path, sim = chatdb_factory()
    row = sim.receive(sim.dm(FRIEND), FRIEND, "from the body")
    sim.conn.execute("UPDATE message SET text = 'from the column' WHERE ROWID = ?", (row.rowid,))
    with ChatDB(path) as db:
        assert db.message_by_guid(row.guid).text == "from the column"  # type: ignore[union-attr]


@pytest.mark.parametrize("version", VERSIONS)
def test_attachments_and_placeholders(chatdb_factory, version, tmp_path):
    path, sim = chatdb_factory(version, attachments_dir=tmp_path / "att")
    dm = sim.dm(FRIEND)
    photo = AttachmentSpec("IMG_0001.heic", "image/heic", "public.heic", b"heic bytes")
    pdf = AttachmentSpec("menu.pdf", "application/pdf", "com.adobe.pdf", None, transfer_state=3)
    both = sim.receive(dm, FRIEND, "Look", attachments=[photo, pdf], body_only=False)
    only = sim.receive(dm, FRIEND, "", attachments=[photo])
    with ChatDB(path) as db:
        got = by_rowid(db)
    m = got[both.rowid]
    assert m.text == "Look"  # both U+FFFC placeholders removed
    assert [(a.name, a.mime_type, a.uti, a.transfer_state) for a in m.attachments] == [
        ("IMG_0001.heic", "image/heic", "public.heic", 5),
        ("menu.pdf", "application/pdf", "com.adobe.pdf", 3),
    ]
    assert m.attachments[0].is_image
    assert not m.attachments[1].is_image
    assert m.attachments[0].path is not None
    assert Path(m.attachments[0].path).read_bytes() == b"heic bytes"
    assert m.attachments[0].total_bytes == len(b"heic bytes")
    m = got[only.rowid]
    assert (m.text, m.kind, len(m.attachments)) == ("", Kind.TEXT, 1)  # an attachment alone is no receipt


def test_attachment_path_with_tilde_is_expanded(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    row = sim.receive(dm, FRIEND, "pic")
    stored = "~/Library/Messages/Attachments/4f/15/D7CE/IMG_4911.heic"
    att = sim.conn.execute(
        "INSERT INTO attachment (guid, original_guid, filename, mime_type, uti, transfer_name, transfer_state)"
        " VALUES ('D7CE', 'D7CE', ?, 'image/heic', 'public.heic', 'IMG_4911.heic', 5)",
        (stored,),
    ).lastrowid
    sim.conn.execute("INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)", (row.rowid, att))
    with ChatDB(path) as db:
        (a,) = db.message_by_guid(row.guid).attachments  # type: ignore[union-attr]
    assert a.path == os.path.expanduser(stored)
    assert not a.path.startswith("~")
    assert (a.mime_type, a.transfer_name, a.name) == ("image/heic", "IMG_4911.heic", "IMG_4911.heic")


# --------------------------------------------------------------------------------------------------
# Services, senders, GUID forms, late joins


@pytest.mark.parametrize("service", ["SMS", "RCS"])
def test_sms_and_rcs_rows(chatdb_factory, service):
    path, sim = chatdb_factory()
    row = sim.sms(PHONE, "Your code is 123456", service=service)
    with ChatDB(path) as db:
        m = db.message_by_guid(row.guid)
    assert m is not None
    assert (m.service, m.chat_guid, m.handle, m.sender, m.text) == (
        service,
        f"{service};-;{PHONE}",
        PHONE,
        PHONE,
        "Your code is 123456",
    )


@pytest.mark.parametrize(
    ("account", "sender"),
    [
        ("E:Owner@Example.com", "owner@example.com"),
        ("e:owner@example.com", "owner@example.com"),
        ("p:+15555550100", "+15555550100"),
        ("P:+1 (555) 555-0100", "+15555550100"),
        (None, None),
    ],
)
def test_sent_rows_take_their_sender_from_account(chatdb_factory, account, sender):
    path, sim = chatdb_factory()
    rowid = insert_message(
        sim, text="sent", is_from_me=1, handle_id=0, account=account, destination_caller_id="owner-alt@example.com"
    )
    with ChatDB(path) as db:
        m = by_rowid(db)[rowid]
    assert m.is_from_me
    assert m.handle is None  # handle_id 0
    assert m.sender == sender


def test_inbound_sender_is_the_handle(chatdb_factory):
    path, sim = chatdb_factory()
    row = sim.receive(sim.dm(FRIEND), FRIEND, "hi")
    with ChatDB(path) as db:
        m = db.message_by_guid(row.guid)
    assert m is not None
    assert (m.is_from_me, m.handle, m.sender) == (False, FRIEND, FRIEND)


def test_any_guids_of_macos_26(chatdb_factory):
    path, sim = chatdb_factory("tahoe")
    dm = sim.dm(FRIEND, any_guid=True)
    group = sim.group([FRIEND, PHONE], any_guid=True)
    a = sim.receive(dm, FRIEND, "dm")
    b = sim.receive(group, FRIEND, "group")
    with ChatDB(path) as db:
        got = by_rowid(db)
        assert [m.text for m in db.last_messages(f"any;-;{FRIEND}")] == ["dm"]
    assert (got[a.rowid].chat_guid, got[a.rowid].is_dm) == (f"any;-;{FRIEND}", True)
    assert got[b.rowid].chat_guid.startswith("any;+;chat")  # type: ignore[union-attr]
    assert got[b.rowid].is_group


def test_chat_guid_is_none_until_the_join_row_exists(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    row = sim.receive(dm, FRIEND, "early", join=False)
    with ChatDB(path) as db:
        m = db.message_by_guid(row.guid)
        assert m is not None
        assert (m.chat_guid, m.chat_style, m.text) == (None, None, "early")
        sim.join_chat(row.rowid, dm)
        m = db.message_by_guid(row.guid)
    assert m is not None
    assert (m.chat_guid, m.chat_style) == (dm.guid, 45)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("p:0/ABC", ("ABC", 0)),
        ("p:2/ABC", ("ABC", 2)),
        ("bp:ABC", ("ABC", None)),
        ("ABC", ("ABC", None)),
        ("p:x/ABC", ("ABC", None)),
        (None, None),
        ("", None),
    ],
)
def test_associated_guid_forms(value, expected):
    assert parse_associated_guid(value) == expected


# --------------------------------------------------------------------------------------------------
# Dates


@pytest.mark.parametrize("version", VERSIONS)
def test_dates_in_nanoseconds_and_legacy_seconds(chatdb_factory, version):
    path, sim = chatdb_factory(version)
    seconds = insert_message(sim, text="s", date=700_000_000)
    nanos = insert_message(sim, text="ns", date=700_000_000 * 10**9)
    zero = insert_message(sim, text="zero", date=0)
    null = insert_message(sim, text="null", date=None)
    with ChatDB(path) as db:
        got = by_rowid(db)
    instant = APPLE_EPOCH + timedelta(seconds=700_000_000)
    assert got[seconds].date == got[nanos].date == instant
    assert got[zero].date is None
    assert got[null].date is None


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_appletime_round_trip(when):
    ns = to_apple_ns(when)
    assume(abs(ns) >= NS_THRESHOLD)  # within 11.6 days of 2001-01-01, nanoseconds read as legacy seconds
    assert from_apple(ns) == when


@given(st.integers(min_value=10**6, max_value=5 * 10**9))
def test_legacy_seconds_and_nanoseconds_agree(seconds):
    assert from_apple(seconds) == from_apple(seconds * 10**9) == APPLE_EPOCH + timedelta(seconds=seconds)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="aware"):
        to_apple_ns(datetime(2024, 1, 1))


# --------------------------------------------------------------------------------------------------
# Queries


def test_max_rowid_of_an_empty_database_is_zero(chatdb_factory):
    path, _sim = chatdb_factory()
    with ChatDB(path) as db:
        assert db.max_rowid() == 0
        assert db.messages_after(0) == []
        assert db.recent() == []


def test_messages_after_is_bounded_and_ordered(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    with sim.batch():
        rows = [sim.receive(dm, FRIEND, f"m{i}") for i in range(10)]
    with ChatDB(path) as db:
        page = db.messages_after(rows[2].rowid, 4)
        assert [m.rowid for m in page] == [r.rowid for r in rows[3:7]]
        assert [m.text for m in page] == ["m3", "m4", "m5", "m6"]
        assert db.messages_after(rows[-1].rowid) == []
        assert db.max_rowid() == rows[-1].rowid
        assert [m.text for m in db.recent(3)] == ["m7", "m8", "m9"]  # newest 3, oldest first


def test_last_messages_returns_the_newest_n_oldest_first(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    other = sim.dm(PHONE)
    sim.receive(dm, FRIEND, "t3", date=T0 + timedelta(minutes=3))
    sim.receive(dm, FRIEND, "t1", date=T0 + timedelta(minutes=1))  # backfilled: higher ROWID, older date
    sim.receive(other, PHONE, "elsewhere", date=T0 + timedelta(minutes=9))
    sim.receive(dm, FRIEND, "t4", date=T0 + timedelta(minutes=4))
    sim.receive(dm, FRIEND, "t2", date=T0 + timedelta(minutes=2))
    with ChatDB(path) as db:
        assert [m.text for m in db.last_messages(dm.guid, 3)] == ["t2", "t3", "t4"]
        assert [m.text for m in db.last_messages(dm.guid, 50)] == ["t1", "t2", "t3", "t4"]
        assert db.last_messages(dm.guid, 0) == []
        assert db.last_messages("iMessage;-;nobody@example.com") == []
    # chat.guid is UNIQUE in every release's schema, so "chats sharing a GUID" cannot occur in a
    # real database: the same address over SMS is a different chat and is not merged in.


def test_chats_of_handle_matches_email_case_and_phone_formats(chatdb_factory):
    path, sim = chatdb_factory()
    mail_dm = sim.dm("Friend@Example.com")
    phone_dm = sim.dm(PHONE)
    sms_dm = sim.dm(PHONE, service="SMS")
    group = sim.group(["Friend@Example.com", PHONE], name="Both")
    sim.dm("someone@example.com")
    with ChatDB(path) as db:
        for variant in ("friend@example.com", "FRIEND@EXAMPLE.COM", "E:friend@example.com"):
            assert [c.guid for c in db.chats_of_handle(variant)] == [mail_dm.guid, group.guid]
        for variant in (PHONE, "+1 (555) 555-0123", "1-555-555-0123", "p:+15555550123", "tel:+15555550123"):
            assert [c.guid for c in db.chats_of_handle(variant)] == [phone_dm.guid, sms_dm.guid, group.guid]
        assert db.chats_of_handle("stranger@example.com") == []


def test_participants_chat_and_message_by_guid(chatdb_factory):
    path, sim = chatdb_factory()
    group = sim.group([FRIEND, PHONE], name="Trip")
    row = sim.receive(group, FRIEND, "hi all")
    with ChatDB(path) as db:
        assert db.participants(group.guid) == [PHONE, FRIEND]
        assert db.participants("iMessage;+;chat0") == []
        chat = db.chat(group.guid)
        assert chat == Chat(group.rowid, group.guid, 43, group.guid.split(";")[-1], "iMessage", "Trip")
        assert chat.is_group
        assert not chat.is_dm
        assert db.chat("iMessage;-;nobody") is None
        assert [c.guid for c in db.chats()] == [group.guid]
        assert db.message_by_guid(row.guid).text == "hi all"  # type: ignore[union-attr]
        assert db.message_by_guid("NO-SUCH-GUID") is None


def _query_plans(path: Path, statements: list[str]) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [
            row[3]
            for sql in statements
            if sql.startswith("SELECT")
            for row in conn.execute("EXPLAIN QUERY PLAN " + sql)
        ]
    finally:
        conn.close()


def _full_scans(plans: list[str]) -> list[str]:
    return [p for p in plans if p.startswith("SCAN ") and "INDEX" not in p]


@pytest.mark.parametrize(
    ("call", "index"),
    [
        (lambda db, dm: db.last_messages(dm.guid, 5), "chat_message_join_idx_message_date_id_chat_id"),
        (lambda db, dm: db.chats_of_handle("FRIEND@example.com"), "chat_handle_join_idx_handle_id"),
        (lambda db, dm: db.messages_after(3, 5), "PRIMARY KEY"),
        (lambda db, dm: db.participants(dm.guid), "chat_handle_join"),
    ],
    ids=["last_messages", "chats_of_handle", "messages_after", "participants"],
)
def test_queries_use_indexes(chatdb_factory, call, index):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    group = sim.group([FRIEND, PHONE])
    with sim.batch():
        for i in range(30):
            sim.receive(dm if i % 2 else group, FRIEND, f"m{i}")
    statements: list[str] = []
    with ChatDB(path) as db:
        db._conn.set_trace_callback(statements.append)  # the reader's real statements, parameters expanded
        assert call(db, dm)
    plans = _query_plans(path, statements)
    assert _full_scans(plans) == []
    assert any(index in p for p in plans), plans


def test_the_full_scan_check_can_fail(chatdb_factory):
    path, _sim = chatdb_factory()
    assert _full_scans(_query_plans(path, ["SELECT * FROM message WHERE text = 'x'"])) == ["SCAN message"]


# --------------------------------------------------------------------------------------------------
# WAL: no read transaction kept open; new commits visible


def _checkpoint_busy(path: Path) -> int:
    """Run a TRUNCATE checkpoint from a writer that does not wait; return its `busy` column."""
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        return int(writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
    finally:
        writer.close()


READER_CALLS = {
    "messages_after": lambda db, dm: db.messages_after(0, 2),
    "recent": lambda db, dm: db.recent(3),
    "last_messages": lambda db, dm: db.last_messages(dm.guid, 3),
    "message_by_guid": lambda db, dm: db.message_by_guid("x"),
    "chats_of_handle": lambda db, dm: db.chats_of_handle(FRIEND),
    "participants": lambda db, dm: db.participants(dm.guid),
    "owner_handles": lambda db, dm: db.owner_handles(),
    "max_rowid": lambda db, dm: db.max_rowid(),
    "data_version": lambda db, dm: db.data_version(),
    "iter_all_partly": lambda db, dm: next(db.iter_all(batch=1)),
}


@pytest.mark.parametrize("name", list(READER_CALLS))
def test_no_read_transaction_stays_open_between_calls(chatdb_factory, name):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    for i in range(3):
        sim.receive(dm, FRIEND, f"m{i}", attachments=[AttachmentSpec("a.png", "image/png", "public.png", b"x")])
    with ChatDB(path) as db:
        READER_CALLS[name](db, dm)
        sim.receive(dm, FRIEND, "after the read")  # the WAL has frames to checkpoint
        assert _checkpoint_busy(path) == 0


def test_the_checkpoint_check_detects_a_leaked_read_transaction(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    sim.receive(dm, FRIEND, "one")
    leaky = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        leaky.execute("BEGIN")
        leaky.execute("SELECT count(*) FROM message").fetchone()  # the snapshot stays until COMMIT
        sim.receive(dm, FRIEND, "two")
        assert _checkpoint_busy(path) == 1
    finally:
        leaky.close()


def test_reader_sees_rows_committed_after_it_opened(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    with ChatDB(path) as db:
        assert db.max_rowid() == 0
        before = db.data_version()
        row = sim.receive(dm, FRIEND, "new")
        assert db.data_version() != before
        assert [m.guid for m in db.messages_after(0)] == [row.guid]


def test_reader_never_writes(chatdb_factory):
    path, _sim = chatdb_factory()
    with ChatDB(path) as db, pytest.raises(ChatDBError):
        db._query("INSERT INTO handle (id, service) VALUES ('x', 'iMessage')")


# --------------------------------------------------------------------------------------------------
# Errors a user can fix


def test_missing_database_explains_full_disk_access(tmp_path):
    with pytest.raises(ChatDBError) as err:
        ChatDB(tmp_path / "nope" / "chat.db")
    assert "Full Disk Access" in str(err.value)
    assert FDA_PATH in str(err.value)


@pytest.mark.parametrize(
    ("kind", "says"), [("directory", "is a folder, not a database file"), ("not a database", "not an SQLite database")]
)
def test_a_path_that_is_no_database_is_named_as_such_not_blamed_on_full_disk_access(tmp_path, kind, says):
    target = tmp_path / "chat.db"
    if kind == "directory":
        target.mkdir()
    else:
        target.write_bytes(b"this is not an SQLite database, it only has its name " * 20)
    with pytest.raises(ChatDBError) as err:
        ChatDB(target)
    assert says in str(err.value) and FDA_PATH not in str(err.value)
    assert "\n" not in str(err.value)


def test_paths_with_uri_characters_open(tmp_path):
    folder = tmp_path / "Application Support" / "chats #1?x=y&mode=rw%20"
    folder.mkdir(parents=True)
    path = create_chatdb(folder / "chat.db", "ventura")
    with MessagesSimulator(path) as sim:
        sim.receive(sim.dm(FRIEND), FRIEND, "found")
    with ChatDB(path) as db:
        assert [m.text for m in db.recent()] == ["found"]
        with pytest.raises(ChatDBError):  # still read-only: the query string was not taken from the path
            db._query("INSERT INTO handle (id, service) VALUES ('x', 'iMessage')")


def test_a_database_without_messages_tables_is_refused(tmp_path):
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()
    with pytest.raises(ChatDBError, match="not a Messages database"):
        ChatDB(path)


# --------------------------------------------------------------------------------------------------
# Owner detection


def test_owner_handles_from_accounts_and_destination_caller_ids(chatdb_factory):
    path, sim = chatdb_factory()
    insert_message(sim, is_from_me=1, account="E:Owner@Example.COM")
    insert_message(sim, is_from_me=1, account="e:second@example.com")
    insert_message(sim, is_from_me=1, account="p:+15555550100")
    insert_message(sim, is_from_me=1, account="P:+1 555 555 0101")
    insert_message(sim, is_from_me=0, destination_caller_id="Receiving@Example.com")
    insert_message(sim, is_from_me=1, account="E:", destination_caller_id="")  # empty values are ignored
    insert_message(sim, is_from_me=0, account="E:stranger@example.com")  # only sent rows' account counts
    with ChatDB(path) as db:
        assert db.owner_handles() == {
            "owner@example.com",
            "second@example.com",
            "+15555550100",
            "+15555550101",
            "receiving@example.com",
        }


def test_owner_handles_ignore_last_addressed_handle(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    sim.send(dm, "hi")
    sim.conn.execute("UPDATE chat SET last_addressed_handle = '12345' WHERE ROWID = ?", (dm.rowid,))
    sms = sim.dm("12345", service="SMS")
    sim.conn.execute("UPDATE chat SET last_addressed_handle = 'spam@example.com' WHERE ROWID = ?", (sms.rowid,))
    with ChatDB(path) as db:
        owner = db.owner_handles()
    assert OWNER in owner
    assert "+12345" not in owner
    assert "12345" not in owner
    assert "spam@example.com" not in owner


def test_owner_detection_reads_a_bounded_window(chatdb_factory):
    path, sim = chatdb_factory()
    insert_message(sim, is_from_me=1, account="E:old-alias@example.com")
    for _ in range(5):
        insert_message(sim, is_from_me=0, destination_caller_id=OWNER)
    with ChatDB(path) as db:
        assert "old-alias@example.com" not in db.owner_handles(scan_rows=5)
        assert "old-alias@example.com" in db.owner_handles(scan_rows=6)
        assert "old-alias@example.com" in db.owner_handles()
    assert OWNER_SCAN_ROWS >= 1000


# --------------------------------------------------------------------------------------------------
# Self-chat


@pytest.fixture
def self_chat_db(chatdb_factory):
    path, sim = chatdb_factory("tahoe", owner_phone="+15555550100")
    chats = {
        "email": sim.self_chat(),
        "phone": sim.self_chat("+15555550100"),
        "any": sim.self_chat(any_guid=True),
        "friend": sim.dm(FRIEND),
        "group": sim.group([OWNER]),
    }
    sim.send(chats["friend"], "hello")
    with ChatDB(path) as db:
        owner = db.owner_handles()
        yield {name: (db.chat(ref.guid), db.participants(ref.guid), owner) for name, ref in chats.items()}


@pytest.mark.parametrize(("name", "expected"), [("email", True), ("phone", True), ("any", True)])
def test_self_chat_over_email_phone_and_any_guid(self_chat_db, name, expected):
    chat, participants, owner = self_chat_db[name]
    assert {OWNER, "+15555550100"} <= owner
    assert is_self_chat(chat, participants, owner) is expected


def test_a_dm_with_someone_else_is_not_self_chat(self_chat_db):
    assert not is_self_chat(*self_chat_db["friend"])


def test_a_group_is_never_self_chat(self_chat_db):
    chat, participants, owner = self_chat_db["group"]
    assert participants == [OWNER]
    assert not is_self_chat(chat, participants, owner)


def test_self_chat_needs_a_chat_and_an_owner():
    dm = Chat(1, f"iMessage;-;{OWNER}", 45, OWNER, "iMessage", None)
    assert is_self_chat(dm, [OWNER], frozenset({OWNER}))
    assert not is_self_chat(None, [OWNER], frozenset({OWNER}))
    assert not is_self_chat(dm, [OWNER], frozenset())
    assert not is_self_chat(Chat(1, "x;?;y", None, OWNER, "iMessage", None), [OWNER], frozenset({OWNER}))


# --------------------------------------------------------------------------------------------------
# The real Ventura database


def test_reference_database_rows(reference_db):
    with ChatDB(reference_db) as db:
        first, second = db.recent()
        owner = db.owner_handles()
        group_members = db.participants(first.chat_guid)  # type: ignore[arg-type]

    assert (first.rowid, first.kind, first.text) == (1602652, Kind.TEXT, "iMessagedb test: Let’s set something up")
    assert (first.chat_guid, first.chat_style) == ("iMessage;+;chat78806267822556021", 43)
    assert (first.is_from_me, first.handle, first.sender) == (True, None, OWNER)  # handle_id 0: from `account`
    assert first.date == datetime(2023, 5, 17, 12, 22, 43, 580999, tzinfo=UTC)
    assert first.attachments == ()
    assert group_members == [PHONE, FRIEND]

    assert (second.rowid, second.kind, second.text) == (1602655, Kind.TEXT, "It’s a lovely day!")
    assert (second.chat_guid, second.chat_style, second.is_dm) == ("iMessage;-;friend@example.com", 45, True)
    assert (second.handle, second.sender) == (FRIEND, OWNER)
    assert [(a.name, a.mime_type, a.uti, a.transfer_state, a.is_image) for a in second.attachments] == [
        ("IMG_4911.heic", "image/heic", "public.heic", 5, True),
        ("IMG_4868.heic", "image/heic", "public.heic", 5, True),
    ]
    assert [a.path for a in second.attachments] == [
        os.path.expanduser("~/Library/Messages/Attachments/4f/15/D7CEBAED-9844-4B25-B841-F7748EA3BCAD/IMG_4911.heic"),
        os.path.expanduser("~/Library/Messages/Attachments/02/02/B5C4912D-2401-4844-946D-473B0FCFF212/IMG_4868.heic"),
    ]
    assert {OWNER, "owner-alt@example.com"} <= owner


def test_reference_database_last_messages_and_handles(reference_db):
    with ChatDB(reference_db) as db:
        (m,) = db.last_messages("iMessage;-;friend@example.com", 10)
        assert m.text == "It’s a lovely day!"
        assert [c.guid for c in db.chats_of_handle("Friend@Example.com")] == [
            "iMessage;-;friend@example.com",
            "iMessage;+;chat78806267822556021",
        ]
        assert [c.guid for c in db.chats_of_handle("+1 555-555-0123")] == ["iMessage;+;chat78806267822556021"]
