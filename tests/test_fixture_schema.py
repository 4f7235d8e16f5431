"""The fixture chat.db builder emits Apple's real schema per macOS version.

Ventura is checked against a real Ventura chat.db (fixtures/reference);
the other versions against the column facts their schema headers cite.
"""

import re
import sqlite3

import pytest

from fixtures import REFERENCE_DB
from fixtures.chatdb_builder import (
    BUSY_TIMEOUT_MS,
    VERSIONS,
    connect_writer,
    create_chatdb,
    message_columns,
    register_trigger_stubs,
    schema_sql,
)

CORE_TABLES = {
    "message",
    "chat",
    "handle",
    "attachment",
    "chat_message_join",
    "chat_handle_join",
    "message_attachment_join",
}
VENTURA_ADDED = {"date_retracted", "date_edited", "was_detonated", "part_count"}
SONOMA_ADDED = {"is_sos", "is_critical", "bia_reference_id", "fallback_hash"}
SEQUOIA_ADDED = {
    "associated_message_emoji",
    "is_pending_satellite_send",
    "needs_relay",
    "schedule_type",
    "schedule_state",
    "sent_or_received_off_grid",
    "date_recovered",
}
TAHOE_ADDED = {"is_time_sensitive", "ck_chat_id", "index_state"}

# version -> (message columns it must have, message columns it must not have)
COLUMN_FACTS = {
    "monterey": (set(), VENTURA_ADDED | {"is_stewie", "is_kt_verified"}),
    "ventura": (VENTURA_ADDED | {"is_stewie", "is_kt_verified"}, SONOMA_ADDED),
    "sonoma": (VENTURA_ADDED | SONOMA_ADDED, SEQUOIA_ADDED),
    "sequoia": (SONOMA_ADDED | SEQUOIA_ADDED, TAHOE_ADDED),
    "tahoe": (SEQUOIA_ADDED | TAHOE_ADDED, set()),
}


def _schema_objects(conn: sqlite3.Connection, kind: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = ? AND sql IS NOT NULL AND name NOT LIKE 'sqlite_%'",
        (kind,),
    )
    return {name: " ".join(sql.split()) for name, sql in rows}


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple]:
    # (name, declared type, notnull, default, pk) in declaration order
    return [row[1:] for row in conn.execute(f"PRAGMA table_info({table})")]


def _add_message(conn: sqlite3.Connection, guid: str, **extra: object) -> int:
    values = {"guid": guid, "service": "iMessage", "date": 700_000_000_000_000_000, **extra}
    names = ", ".join(values)
    cur = conn.execute(f"INSERT INTO message ({names}) VALUES ({', '.join('?' * len(values))})", list(values.values()))
    return cur.lastrowid


def _add_attachment(conn: sqlite3.Connection, guid: str) -> int:
    cur = conn.execute(
        "INSERT INTO attachment (guid, original_guid, filename, mime_type) VALUES (?, ?, ?, 'image/heic')",
        (guid, guid, f"~/Library/Messages/Attachments/{guid}/IMG.HEIC"),
    )
    return cur.lastrowid


@pytest.mark.parametrize("version", VERSIONS)
def test_builds_a_wal_database_with_the_core_tables(tmp_path, version):
    path = create_chatdb(tmp_path / "chat.db", version)

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert set(_schema_objects(conn, "table")) >= CORE_TABLES
    conn.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_message_columns_follow_the_version_facts(tmp_path, version):
    must_have, must_not_have = COLUMN_FACTS[version]
    path = create_chatdb(tmp_path / "chat.db", version)
    conn = sqlite3.connect(path)
    on_disk = {row[0] for row in _columns(conn, "message")}
    conn.close()

    assert on_disk == message_columns(version)
    assert must_have <= on_disk
    assert not (must_not_have & on_disk)
    assert {"ROWID", "guid", "text", "attributedBody", "date", "is_from_me", "handle_id"} <= on_disk


@pytest.mark.parametrize("version", ["ventura", "sonoma", "sequoia"])
def test_edit_and_unsend_dates_default_to_zero_before_tahoe(tmp_path, version):
    conn = connect_writer(create_chatdb(tmp_path / "chat.db", version))
    rowid = _add_message(conn, "m1")
    assert conn.execute("SELECT date_edited, date_retracted FROM message WHERE ROWID = ?", (rowid,)).fetchone() == (
        0,
        0,
    )
    conn.close()


def test_edit_and_unsend_dates_have_no_default_on_tahoe(tmp_path):
    conn = connect_writer(create_chatdb(tmp_path / "chat.db", "tahoe"))
    defaults = {row[0]: row[3] for row in _columns(conn, "message")}
    assert defaults["date_edited"] is None
    assert defaults["date_retracted"] is None

    rowid = _add_message(conn, "m1")
    assert conn.execute("SELECT date_edited, date_retracted FROM message WHERE ROWID = ?", (rowid,)).fetchone() == (
        None,
        None,
    )
    conn.close()


def test_tahoe_has_the_macos26_tables_and_chat_columns(tmp_path):
    conn = sqlite3.connect(create_chatdb(tmp_path / "chat.db", "tahoe"))
    assert {
        "chat_lookup",
        "chat_service",
        "index_state_metrics",
        "persistent_tasks",
        "sync_chat_slice",
    } <= set(_schema_objects(conn, "table"))
    assert "is_pending_review" in {row[0] for row in _columns(conn, "chat")}
    assert "index_state" in {row[0] for row in _columns(conn, "chat_message_join")}
    conn.close()


def test_unknown_version_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown macOS version"):
        schema_sql("catalina")
    with pytest.raises(ValueError):
        create_chatdb(tmp_path / "chat.db", "big-sur")
    assert not (tmp_path / "chat.db").exists()


def test_refuses_to_overwrite_an_existing_file(tmp_path):
    path = create_chatdb(tmp_path / "chat.db")
    with pytest.raises(FileExistsError):
        create_chatdb(path)


def test_wal_can_be_turned_off(tmp_path):
    conn = sqlite3.connect(create_chatdb(tmp_path / "chat.db", wal=False))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_connect_writer_waits_for_locks_instead_of_failing(tmp_path):
    conn = connect_writer(create_chatdb(tmp_path / "chat.db"))
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS > 0
    conn.close()


class TestVenturaMatchesRealChatDb:
    @pytest.fixture
    def pair(self, tmp_path):
        built = sqlite3.connect(create_chatdb(tmp_path / "chat.db", "ventura"))
        real = sqlite3.connect(f"file:{REFERENCE_DB}?mode=ro", uri=True)
        yield built, real
        built.close()
        real.close()

    def test_same_tables_and_columns(self, pair):
        built, real = pair
        tables = set(_schema_objects(real, "table"))
        assert set(_schema_objects(built, "table")) == tables
        for table in tables:
            assert _columns(built, table) == _columns(real, table), table

    def test_same_indexes(self, pair):
        built, real = pair
        assert _schema_objects(built, "index") == _schema_objects(real, "index")

    def test_same_triggers(self, pair):
        built, real = pair
        assert _schema_objects(built, "trigger") == _schema_objects(real, "trigger")


@pytest.mark.parametrize("version", VERSIONS)
def test_attachment_join_sets_cache_has_attachments_via_the_real_trigger(tmp_path, version):
    conn = connect_writer(create_chatdb(tmp_path / "chat.db", version))
    message_id = _add_message(conn, "m1")
    attachment_id = _add_attachment(conn, "at_0_A")
    assert conn.execute("SELECT cache_has_attachments FROM message").fetchone()[0] == 0

    conn.execute(
        "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)",
        (message_id, attachment_id),
    )

    assert conn.execute("SELECT cache_has_attachments FROM message").fetchone()[0] == 1
    conn.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_chat_message_join_fills_cache_roomnames(tmp_path, version):
    conn = connect_writer(create_chatdb(tmp_path / "chat.db", version))
    conn.execute(
        "INSERT INTO chat (guid, style, chat_identifier, room_name) VALUES (?, 43, 'chat1', 'chat1')",
        ("iMessage;+;chat1",),
    )
    message_id = _add_message(conn, "m1")
    conn.execute("INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (1, ?, 1)", (message_id,))
    assert conn.execute("SELECT cache_roomnames FROM message").fetchone()[0] == "chat1"
    conn.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_deletes_run_all_triggers_once_stubs_are_registered(tmp_path, version):
    path = create_chatdb(tmp_path / "chat.db", version)
    conn = sqlite3.connect(path)
    register_trigger_stubs(conn)
    with conn:
        conn.execute("INSERT INTO handle (id, service) VALUES ('friend@example.com', 'iMessage')")
        conn.execute(
            "INSERT INTO chat (guid, style, chat_identifier) VALUES (?, 45, 'friend@example.com')",
            ("iMessage;-;friend@example.com",),
        )
        plain = _add_message(conn, "m1", handle_id=1)
        plugin = _add_message(conn, "m2", handle_id=1, balloon_bundle_id="com.apple.messages.URLBalloonProvider")
        attachment_id = _add_attachment(conn, "at_0_A")
        conn.execute("INSERT INTO message_attachment_join VALUES (?, ?)", (plain, attachment_id))
        conn.execute("INSERT INTO chat_message_join (chat_id, message_id) VALUES (1, ?), (1, ?)", (plain, plugin))

    with conn:
        conn.execute("DELETE FROM message WHERE ROWID = ?", (plugin,))
        conn.execute("DELETE FROM attachment WHERE ROWID = ?", (attachment_id,))
        conn.execute("DELETE FROM chat WHERE ROWID = 1")

    assert conn.execute("SELECT guid FROM deleted_messages ORDER BY ROWID").fetchall() == [("m2",), ("m1",)]
    assert conn.execute("SELECT COUNT(*) FROM message").fetchone()[0] == 0
    conn.close()


def test_without_stubs_apple_triggers_fail_in_plain_sqlite(tmp_path):
    conn = sqlite3.connect(create_chatdb(tmp_path / "chat.db", "ventura"))
    _add_attachment(conn, "at_0_A")
    with pytest.raises(sqlite3.OperationalError, match="no such function"):
        conn.execute("DELETE FROM attachment")
    conn.close()


def test_tahoe_needs_the_stub_even_to_insert_a_chat(tmp_path):
    conn = sqlite3.connect(create_chatdb(tmp_path / "chat.db", "tahoe"))
    with pytest.raises(sqlite3.OperationalError, match="verify_chat"):
        conn.execute("INSERT INTO chat (guid) VALUES ('any;-;+15555550123')")
    conn.close()


def _trigger_calls(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    """(function name, argument count) of every call in the trigger bodies."""
    calls = set()
    for sql in _schema_objects(conn, "trigger").values():
        for name, args in re.findall(r"(\w+)\(([^()]*)\)", sql):
            calls.add((name, 0 if not args.strip() else args.count(",") + 1))
    return calls


@pytest.mark.parametrize("version", VERSIONS)
def test_every_function_a_trigger_calls_exists_once_stubs_are_registered(version):
    plain = sqlite3.connect(":memory:")
    plain.executescript(schema_sql(version))
    stubbed = sqlite3.connect(":memory:")
    register_trigger_stubs(stubbed)

    missing_in_plain_sqlite = set()
    for name, n_args in _trigger_calls(plain):
        call = f"SELECT {name}({', '.join('?' * n_args)})"
        try:
            plain.execute(call, [None] * n_args)
        except sqlite3.OperationalError:
            missing_in_plain_sqlite.add(name)
        stubbed.execute(call, [None] * n_args)

    assert {"delete_attachment_path", "before_delete_attachment_path", "after_delete_message_plugin"} <= (
        missing_in_plain_sqlite
    )
    plain.close()
    stubbed.close()
