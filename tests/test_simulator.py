"""The Messages simulator writes rows shaped like the real ones: attributedBody blobs both decoders
read, joins and attachments as in the real Ventura rows, idempotent handle/chat upserts, one commit
per batch, edits that keep the old body, and every fixture schema version."""

from __future__ import annotations

import plistlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typedstream as oracle

from fixtures.chatdb_builder import VERSIONS
from imessage_channel.appletime import to_apple_ns
from imessage_channel.chatdb import ChatDB, Kind
from imessage_channel.devtools.simulator import AttachmentSpec, MessagesSimulator
from imessage_channel.typedstream import decode_attributed_body

OWNER = "owner@example.com"
FRIEND = "friend@example.com"
PHONE = "+15555550123"
T0 = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)
HEIC = AttachmentSpec("IMG_4911.heic", "image/heic", "public.heic", b"\x00heic")


def row(sim: MessagesSimulator, rowid: int) -> sqlite3.Row:
    sim.conn.row_factory = sqlite3.Row
    try:
        return sim.conn.execute("SELECT * FROM message WHERE ROWID = ?", (rowid,)).fetchone()
    finally:
        sim.conn.row_factory = None


def oracle_text(blob: bytes) -> str:
    """The string inside an attributedBody according to pytypedstream (an independent decoder)."""
    archived = oracle.unarchive_from_data(blob)
    return archived.contents[0].value.value


# --------------------------------------------------------------------------------------------------
# attributedBody


@pytest.mark.parametrize("text", ["hi", "It’s a lovely day! 😀", "x" * 300, "é" * 35_000, "𝄞" * 20_000])
def test_attributed_body_decodes_with_both_decoders(chatdb_factory, text):
    _path, sim = chatdb_factory()
    ref = sim.receive(sim.dm(FRIEND), FRIEND, text)
    blob = row(sim, ref.rowid)["attributedBody"]
    ours = decode_attributed_body(blob)
    assert ours is not None
    assert ours.text == text
    assert oracle_text(blob) == text
    assert oracle.unarchive_from_data(blob).clazz.name == b"NSMutableAttributedString"


def test_attachment_runs_match_the_attachment_rows(chatdb_factory):
    _path, sim = chatdb_factory()
    pdf = AttachmentSpec("menu.pdf", "application/pdf", "com.adobe.pdf", b"%PDF")
    ref = sim.send(sim.dm(FRIEND), "It’s a lovely day!", attachments=[HEIC, pdf])
    blob = row(sim, ref.rowid)["attributedBody"]
    decoded = decode_attributed_body(blob)
    assert decoded is not None
    guids = [g for (g,) in sim.conn.execute("SELECT guid FROM attachment ORDER BY ROWID")]
    # As in the real row: one U+FFFC per attachment first, each with its transfer GUID, then the text.
    assert decoded.text == "\ufffc\ufffcIt’s a lovely day!"
    assert list(decoded.file_transfer_guids) == guids
    assert decoded.message_parts == (0, 1, 2)
    assert [(r.start, r.length) for r in decoded.runs] == [(0, 1), (1, 1), (2, 18)]
    assert oracle_text(blob) == decoded.text


def test_body_starts_like_a_real_mutable_attributed_string(chatdb_factory, reference_db):
    conn = sqlite3.connect(reference_db)
    real = conn.execute("SELECT attributedBody FROM message ORDER BY ROWID LIMIT 1").fetchone()[0]
    conn.close()
    _path, sim = chatdb_factory()
    ref = sim.send(sim.group([FRIEND]), "x")
    ours = row(sim, ref.rowid)["attributedBody"]
    # streamtyped, version 1000, then NSMutableAttributedString → NSAttributedString → NSObject.
    header = real[: real.index(b"NSObject") + len(b"NSObject")]
    assert ours.startswith(header)


# --------------------------------------------------------------------------------------------------
# Row shapes compared with the real Ventura rows


def test_sent_dm_row_with_attachments_has_the_real_shape(chatdb_factory, tmp_path):
    path, sim = chatdb_factory(attachments_dir=tmp_path / "Attachments")
    dm = sim.dm(FRIEND)
    ref = sim.send(dm, "It’s a lovely day!", attachments=[HEIC, HEIC], date=T0, body_only=False)
    r = row(sim, ref.rowid)
    friend_id = sim.conn.execute("SELECT ROWID FROM handle WHERE id = ?", (FRIEND,)).fetchone()[0]
    # Same values as the real row 1602655 of fixtures/reference (a sent DM with two HEIC photos).
    assert r["text"] == "\ufffc\ufffcIt’s a lovely day!"
    assert (r["service"], r["account"], r["handle_id"]) == ("iMessage", f"E:{OWNER}", friend_id)
    assert (r["is_from_me"], r["is_sent"], r["is_delivered"], r["is_finished"]) == (1, 1, 1, 1)
    assert (r["cache_has_attachments"], r["part_count"], r["date"]) == (1, 3, to_apple_ns(T0))
    assert (r["date_edited"], r["date_retracted"], r["item_type"], r["associated_message_type"]) == (0, 0, 0, 0)
    join = sim.conn.execute("SELECT chat_id, message_date FROM chat_message_join WHERE message_id = ?", (ref.rowid,))
    assert join.fetchall() == [(dm.rowid, to_apple_ns(T0))]
    atts = sim.conn.execute(
        "SELECT guid, original_guid, created_date, filename, mime_type, uti, transfer_name, transfer_state"
        " FROM attachment ORDER BY ROWID"
    ).fetchall()
    assert len(atts) == 2
    for guid, original, created, filename, mime, uti, name, state in atts:
        assert original == guid
        assert created == to_apple_ns(T0) // 10**9  # seconds, as in the real attachment rows
        assert (mime, uti, name, state) == ("image/heic", "public.heic", "IMG_4911.heic", 5)
        assert Path(filename).read_bytes() == HEIC.data
        assert Path(filename).parent.name == guid
    chat = sim.conn.execute("SELECT style, chat_identifier, service_name, account_login FROM chat").fetchone()
    assert chat == (45, FRIEND, "iMessage", f"E:{OWNER}")
    with ChatDB(path) as db:
        (m,) = db.recent()
    assert (m.text, m.kind, m.sender, len(m.attachments)) == ("It’s a lovely day!", Kind.TEXT, OWNER, 2)


def test_sent_group_row_has_no_handle(chatdb_factory):
    _path, sim = chatdb_factory()
    group = sim.group([FRIEND, PHONE])
    ref = sim.send(group, "iMessagedb test: Let’s set something up")
    r = row(sim, ref.rowid)
    assert (r["handle_id"], r["is_from_me"], r["part_count"], r["text"]) == (0, 1, 1, None)  # like row 1602652
    chat = sim.conn.execute("SELECT guid, style, chat_identifier, room_name FROM chat").fetchone()
    assert chat[0] == f"iMessage;+;{chat[2]}"
    assert chat[1:] == (43, chat[2], chat[2])
    members = sim.conn.execute(
        "SELECT h.id FROM chat_handle_join j JOIN handle h ON h.ROWID = j.handle_id ORDER BY h.id"
    ).fetchall()
    assert members == [(PHONE,), (FRIEND,)]


def test_inbound_row_shape(chatdb_factory):
    _path, sim = chatdb_factory(owner_phone="+15555550100")
    ref = sim.receive(sim.dm(FRIEND), FRIEND, "hi")
    r = row(sim, ref.rowid)
    assert (r["is_from_me"], r["is_sent"], r["is_read"], r["account"]) == (0, 0, 1, None)
    assert r["destination_caller_id"] == "+15555550100"  # the owner's receiving address
    assert r["text"] is None


# --------------------------------------------------------------------------------------------------
# Upserts and transactions


def test_handle_upsert_is_idempotent(chatdb_factory):
    _path, sim = chatdb_factory()
    first = sim.handle(FRIEND)
    assert sim.handle(FRIEND) == first
    sms = sim.handle(PHONE, "SMS")
    assert sim.handle(PHONE, "iMessage") != sms  # unique on (id, service)
    counts = sim.conn.execute("SELECT id, service, count(*) FROM handle GROUP BY id, service ORDER BY id").fetchall()
    assert counts == [(PHONE, "SMS", 1), (PHONE, "iMessage", 1), (FRIEND, "iMessage", 1)]


def test_chats_are_reused(chatdb_factory):
    _path, sim = chatdb_factory()
    a = sim.dm(FRIEND)
    b = sim.dm(FRIEND)
    assert a == b
    assert sim.conn.execute("SELECT count(*) FROM chat").fetchone()[0] == 1
    assert sim.conn.execute("SELECT count(*) FROM chat_handle_join").fetchone()[0] == 1
    assert sim.self_chat().guid == f"iMessage;-;{OWNER}"
    assert sim.dm(FRIEND, any_guid=True).guid == f"any;-;{FRIEND}"


def test_batch_commits_once(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    observer = sqlite3.connect(path, isolation_level=None)
    commits: list[str] = []
    sim.conn.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    try:
        before = observer.execute("PRAGMA data_version").fetchone()[0]
        with sim.batch():
            for i in range(100):
                sim.receive(dm, FRIEND, f"m{i}")
            # Nothing is visible to another connection until the batch ends.
            assert observer.execute("PRAGMA data_version").fetchone()[0] == before
            assert observer.execute("SELECT count(*) FROM message").fetchone()[0] == 0
        assert observer.execute("PRAGMA data_version").fetchone()[0] != before
        assert observer.execute("SELECT count(*) FROM message").fetchone()[0] == 100
        assert len(commits) == 1
    finally:
        sim.conn.set_trace_callback(None)
        observer.close()


def test_each_write_outside_a_batch_commits_on_its_own(chatdb_factory):
    path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    observer = sqlite3.connect(path, isolation_level=None)
    try:
        before = observer.execute("PRAGMA data_version").fetchone()[0]
        sim.receive(dm, FRIEND, "one")
        assert observer.execute("PRAGMA data_version").fetchone()[0] != before
        assert observer.execute("SELECT count(*) FROM message").fetchone()[0] == 1
    finally:
        observer.close()


def test_a_failed_batch_writes_nothing(chatdb_factory):
    _path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    with pytest.raises(RuntimeError), sim.batch():
        sim.receive(dm, FRIEND, "lost")
        raise RuntimeError("boom")
    assert sim.conn.execute("SELECT count(*) FROM message").fetchone()[0] == 0
    sim.receive(dm, FRIEND, "kept")  # the simulator is usable afterwards
    assert sim.conn.execute("SELECT count(*) FROM message").fetchone()[0] == 1


# --------------------------------------------------------------------------------------------------
# Edits, unsends, late joins, self-texts, tapbacks, SMS


def test_edit_keeps_the_old_body_in_message_summary_info(chatdb_factory):
    path, sim = chatdb_factory()
    ref = sim.receive(sim.dm(FRIEND), FRIEND, "See you at 7", date=T0)
    old_body = row(sim, ref.rowid)["attributedBody"]
    sim.edit(ref, "See you at 8", date=T0)
    r = row(sim, ref.rowid)
    info = plistlib.loads(r["message_summary_info"])
    assert info["ec"] == {"0": [{"d": to_apple_ns(T0), "t": old_body}]}
    assert decode_attributed_body(info["ec"]["0"][0]["t"]).text == "See you at 7"  # type: ignore[union-attr]
    assert r["date_edited"] == to_apple_ns(T0)
    assert decode_attributed_body(r["attributedBody"]).text == "See you at 8"  # type: ignore[union-attr]
    with ChatDB(path) as db:
        m = db.message_by_guid(ref.guid)
    assert m is not None
    assert (m.kind, m.text) == (Kind.EDIT, "See you at 8")


def test_unsend_clears_the_text_and_lists_the_part(chatdb_factory):
    _path, sim = chatdb_factory()
    ref = sim.receive(sim.dm(FRIEND), FRIEND, "oops", body_only=False)
    sim.unsend(ref, date=T0)
    r = row(sim, ref.rowid)
    assert (r["text"], r["attributedBody"], r["date_retracted"]) == (None, None, to_apple_ns(T0))
    assert plistlib.loads(r["message_summary_info"])["rp"] == [0]


def test_late_join(chatdb_factory):
    _path, sim = chatdb_factory()
    dm = sim.dm(FRIEND)
    ref = sim.receive(dm, FRIEND, "early", join=False, date=T0)
    assert sim.conn.execute("SELECT count(*) FROM chat_message_join").fetchone()[0] == 0
    sim.join_chat(ref.rowid, dm)
    assert sim.conn.execute("SELECT chat_id, message_id, message_date FROM chat_message_join").fetchall() == [
        (dm.rowid, ref.rowid, to_apple_ns(T0))
    ]


@pytest.mark.parametrize(("typed_on", "from_me"), [("phone", [1, 0]), ("mac", [1])])
def test_texting_yourself(chatdb_factory, typed_on, from_me):
    path, sim = chatdb_factory()
    rows = sim.text_self("hello me", typed_on=typed_on)
    assert [row(sim, r.rowid)["is_from_me"] for r in rows] == from_me
    with ChatDB(path) as db:
        msgs = db.recent()
    assert {m.chat_guid for m in msgs} == {f"iMessage;-;{OWNER}"}
    assert [m.text for m in msgs] == ["hello me"] * len(from_me)


def test_tapback_rows(chatdb_factory):
    _path, sim = chatdb_factory("sequoia")
    dm = sim.dm(FRIEND)
    target = sim.send(dm, "Dinner?")
    love = sim.tapback(dm, FRIEND, target.guid, "love")
    gone = sim.tapback(dm, None, target.guid, "question", removed=True, part=1)
    fire = sim.tapback(dm, FRIEND, target.guid, "emoji", emoji="🔥")
    got = {
        r.rowid: (row(sim, r.rowid)["associated_message_type"], row(sim, r.rowid)["associated_message_guid"])
        for r in (love, gone, fire)
    }
    assert got == {
        love.rowid: (2000, f"p:0/{target.guid}"),
        gone.rowid: (3005, f"p:1/{target.guid}"),
        fire.rowid: (2006, f"p:0/{target.guid}"),
    }
    assert row(sim, fire.rowid)["associated_message_emoji"] == "🔥"
    assert row(sim, gone.rowid)["is_from_me"] == 1


@pytest.mark.parametrize("service", ["SMS", "RCS"])
def test_sms_rows(chatdb_factory, service):
    _path, sim = chatdb_factory()
    ref = sim.sms(PHONE, "code 1234", service=service)
    r = row(sim, ref.rowid)
    assert (r["service"], r["text"]) == (service, "code 1234")
    assert sim.conn.execute("SELECT guid, service_name FROM chat").fetchone() == (f"{service};-;{PHONE}", service)
    assert sim.conn.execute("SELECT id, service FROM handle").fetchone() == (PHONE, service)


def test_attachment_without_data_writes_no_file(chatdb_factory, tmp_path):
    _path, sim = chatdb_factory(attachments_dir=tmp_path / "att")
    pending = AttachmentSpec("big.mov", "video/quicktime", "com.apple.quicktime-movie", None, transfer_state=3)
    sim.receive(sim.dm(FRIEND), FRIEND, "", attachments=[pending])
    filename, state, size = sim.conn.execute("SELECT filename, transfer_state, total_bytes FROM attachment").fetchone()
    assert not Path(filename).exists()
    assert (state, size) == (3, 0)


def test_the_simulator_never_touches_the_real_messages_folder(chatdb_factory, tmp_path):
    path, sim = chatdb_factory()
    sim.receive(sim.dm(FRIEND), FRIEND, "", attachments=[HEIC])
    (filename,) = sim.conn.execute("SELECT filename FROM attachment").fetchone()
    assert Path(filename).is_relative_to(path.parent)


# --------------------------------------------------------------------------------------------------
# Every schema version


@pytest.mark.parametrize("version", VERSIONS)
def test_every_kind_of_write_works_on_every_version(chatdb_factory, version):
    path, sim = chatdb_factory(version, owner_phone="+15555550100")
    dm = sim.dm(FRIEND)
    group = sim.group([FRIEND, PHONE], name="Trip", any_guid=version == "tahoe")
    with sim.batch():
        hello = sim.receive(dm, FRIEND, "hello", attachments=[HEIC])
        sim.send(dm, "back")
        sim.tapback(dm, FRIEND, hello.guid, "love")
        sim.receive(group, PHONE, "re", reply_to=hello.guid)
        sim.group_event(group, FRIEND, item_type=2, title="Trip 2")
        sim.receipt(dm, FRIEND)
        sim.sms(PHONE, "sms")
        sim.text_self("note to self")
    sim.edit(hello, "hello!")
    with ChatDB(path) as db:
        msgs = db.messages_after(0)
    assert len(msgs) == 9
    assert all(m.chat_guid for m in msgs)
    assert msgs[0].attachments[0].name == "IMG_4911.heic"
    assert sorted({m.kind.value for m in msgs}) == sorted(
        {"text", "tapback", "reply", "group_event", "receipt"} | ({"edit"} if version != "monterey" else set())
    )
