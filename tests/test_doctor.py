"""`imessage-channel doctor`: each check passes on a good setup and explains the fix when it fails.

The good setup is a fixture chat.db with an owner and a self-chat, the fake `osascript` on PATH and
a private state directory; the bad ones are a missing path, a file that is not a database, a
database that is not Messages', and each misconfiguration the checks exist for. The channel check
really starts `serve` and speaks MCP to it; it is also pointed at impostor servers to show it fails.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from fixtures.addressbook_builder import Card, create_addressbook_dir, store_path
from fixtures.chatdb_builder import create_chatdb
from imessage_channel.chatdb import ChatDB
from imessage_channel.cli import doctor, main
from imessage_channel.cli.doctor import Status
from imessage_channel.contacts import Contacts
from tests import zygote_client

FAKES_BIN = Path(__file__).resolve().parent / "fakes" / "bin"
OWNER = "owner@example.com"
FRIEND = "friend@example.com"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A private state dir, the fake osascript first on PATH (logging to `log`), osascript backend."""
    state = tmp_path / "state"
    log = tmp_path / "osascript.jsonl"
    monkeypatch.setenv("IMESSAGE_STATE_DIR", str(state))
    monkeypatch.setenv("IMESSAGE_APPLESCRIPT_BACKEND", "osascript")
    monkeypatch.setenv("FAKE_OSASCRIPT_LOG", str(log))
    monkeypatch.setenv("PATH", f"{FAKES_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("IMESSAGE_DB_PATH", "IMESSAGE_ACCESS_MODE", "IMESSAGE_ALLOW_SMS", "FAKE_OSASCRIPT_MODE"):
        monkeypatch.delenv(name, raising=False)
    book = create_addressbook_dir(tmp_path / "AddressBook", main=[Card("Jane", "Appleseed", emails=[FRIEND])])
    monkeypatch.setenv("IMESSAGE_ADDRESSBOOK_DIR", str(book))
    monkeypatch.delenv("IMESSAGE_CONTACTS", raising=False)
    return {"state": state, "log": log, "book": book}


@pytest.fixture
def forked_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel check starts the server through the test fork server (`tests/zygote_exec.py`): the same
    server over the same pipes, without importing the package again (~1 s of CPU).
    `test_a_good_setup_passes_every_check_and_exits_0` keeps the real `python -m imessage_channel serve`."""
    prefix, extra = zygote_client.command()
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(doctor, "check_channel", functools.partial(doctor.check_channel, argv=[*prefix, "serve"]))


@pytest.fixture
def good_db(chatdb_factory) -> Path:
    path, sim = chatdb_factory("sonoma", owner=OWNER)
    sim.text_self("Hi Claude")
    sim.receive(sim.dm(FRIEND), FRIEND, "hello")
    return path


def run_doctor(capsys, *args: str) -> tuple[int, str]:
    code = main(["doctor", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def osascript_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


# --- the whole report -----------------------------------------------------------------------------


def test_a_good_setup_passes_every_check_and_exits_0(env, good_db, capsys):
    code, out = run_doctor(capsys, "--db", str(good_db))
    lines = out.splitlines()
    assert code == 0, out
    assert lines[-1] == "All checks passed."
    assert [line[0] for line in lines[:-1]] == ["✓"] * 5 + ["–"] + ["✓"] * 3 + ["–", "✓"]
    assert "– sessions: none running" in out
    assert f"✓ contact names: 1 contact with 1 handle from 1 Contacts store in {env['book']}" in out
    assert f"✓ self-chat exists: iMessage;-;{OWNER}" in lines
    assert "✓ schema recognised: macOS 14 Sonoma (85 message columns)" in lines
    assert lines[-2].startswith("✓ Claude Code sees a channel: initialize answered in ")
    assert "channel + permission relay" in lines[-2]
    assert "– Automation permission: not checked; add --send-test" in out
    assert osascript_calls(env["log"]) == []  # nothing is sent without --send-test


def test_the_check_never_touches_the_state_directory(env, good_db, capsys, forked_serve):
    env["state"].mkdir(mode=0o700)
    (env["state"] / "access.json").write_text('{"allowFrom": ["friend@example.com"]}', encoding="utf-8")
    os.chmod(env["state"] / "access.json", 0o600)
    before = sorted(p.name for p in env["state"].iterdir())
    run_doctor(capsys, "--db", str(good_db))
    assert sorted(p.name for p in env["state"].iterdir()) == before


def test_json_output(env, good_db, capsys, forked_serve):
    code, out = run_doctor(capsys, "--db", str(good_db), "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    assert [c["status"] for c in data["checks"]].count("fail") == 0
    assert {c["name"] for c in data["checks"]} >= {doctor.CHATDB, doctor.CHANNEL, doctor.STATE}


def test_a_missing_database_fails_with_the_full_disk_access_fix(env, tmp_path, capsys):
    code, out = run_doctor(capsys, "--db", str(tmp_path / "Messages" / "chat.db"))
    assert code == 1
    assert out.splitlines()[0] == f"✗ chat.db readable: cannot read {tmp_path / 'Messages' / 'chat.db'}"
    assert "Full Disk Access" in out.splitlines()[1] and out.splitlines()[1].startswith("    fix: ")
    for name in (doctor.SCHEMA, doctor.OWNER, doctor.SELF_CHAT, doctor.CHANNEL):
        assert f"– {name}: needs a readable chat.db" in out
    assert out.splitlines()[-1] == "1 check(s) failed."


def test_a_file_that_is_not_a_database_fails(env, tmp_path, capsys):
    bogus = tmp_path / "chat.db"
    bogus.write_bytes(b"this is not SQLite at all" * 100)
    code, out = run_doctor(capsys, "--db", str(bogus))
    assert code == 1
    assert out.startswith(f"✗ chat.db readable: cannot read {bogus}\n    fix: {bogus} is not an SQLite database")
    assert "Full Disk Access" not in out.splitlines()[1]  # the path is wrong; access is not the problem


def test_a_database_that_is_not_messages_fails(env, tmp_path, capsys):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    code, out = run_doctor(capsys, "--db", str(other))
    assert code == 1
    assert "not a Messages database" in out.splitlines()[1]


# --- single checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "release"),
    [
        ("monterey", "macOS 12 Monterey or older"),
        ("ventura", "macOS 13 Ventura"),
        ("sonoma", "macOS 14 Sonoma"),
        ("sequoia", "macOS 15 Sequoia"),
        ("tahoe", "macOS 26 Tahoe"),
    ],
)
def test_the_schema_check_names_the_release(tmp_path, version, release):
    path = create_chatdb(tmp_path / "chat.db", version)
    with ChatDB(path) as db:
        check = doctor.check_schema(db)
    assert check.status is Status.PASS
    assert check.detail.startswith(release + " (")


def test_the_schema_check_fails_when_a_needed_column_or_table_is_missing(tmp_path):
    path = tmp_path / "chat.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE message (ROWID INTEGER PRIMARY KEY, guid TEXT, text TEXT, date INTEGER)")
        conn.execute("CREATE TABLE attachment (ROWID INTEGER PRIMARY KEY, guid TEXT)")
    with ChatDB(path) as db:
        check = doctor.check_schema(db)
    assert check.status is Status.FAIL
    assert "chat_message_join" in check.detail and "message.attributedBody" in check.detail
    assert "IMESSAGE_DB_PATH" in check.fix


def test_no_owner_handles_fails_and_skips_the_self_chat_check(chatdb_factory):
    path, sim = chatdb_factory("ventura", owner=OWNER)
    sim.receive(sim.dm(FRIEND), FRIEND, "hello")
    sim.conn.execute("UPDATE message SET account = NULL, destination_caller_id = NULL")
    sim.conn.execute("UPDATE chat SET account_login = NULL")
    with ChatDB(path) as db:
        owner_check, owner = doctor.check_owner(db)
        self_check, guid = doctor.check_self_chat(db, owner)
    assert owner_check.status is Status.FAIL and "send one iMessage" in owner_check.fix
    assert self_check.status is Status.SKIP and guid is None


def test_no_self_chat_fails_with_how_to_start_one(chatdb_factory):
    path, sim = chatdb_factory("ventura", owner=OWNER)
    sim.receive(sim.dm(FRIEND), FRIEND, "hello")
    with ChatDB(path) as db:
        _, owner = doctor.check_owner(db)
        check, guid = doctor.check_self_chat(db, owner)
    assert owner == {OWNER}
    assert check.status is Status.FAIL and guid is None
    assert "text your own phone number or Apple ID email" in check.fix


def test_a_self_chat_over_the_phone_number_is_found(chatdb_factory):
    path, sim = chatdb_factory("sequoia", owner=OWNER, owner_phone="+15555550100")
    sim.text_self("hi", sim.self_chat("+15555550100"))
    with ChatDB(path) as db:
        _, owner = doctor.check_owner(db)
        check, _ = doctor.check_self_chat(db, owner)
    assert check.status is Status.PASS and check.detail == "iMessage;-;+15555550100"


def test_the_backend_check():
    assert doctor.check_backend(lambda _: None, lambda _: True).detail == "py-applescript (in-process)"
    assert doctor.check_backend(lambda _: "/usr/bin/osascript", lambda _: False).detail == (
        "osascript at /usr/bin/osascript"
    )
    missing = doctor.check_backend(lambda _: None, lambda _: False)
    assert missing.status is Status.FAIL and "needs macOS" in missing.fix


@pytest.fixture
def on_a_mac(monkeypatch):
    """The Mac code path, with the fake osascript of tests/fakes/bin standing in for AppleScript."""
    monkeypatch.setattr(sys, "platform", "darwin")


def test_send_test_texts_the_self_chat(env, good_db, capsys, forked_serve, on_a_mac):
    code, out = run_doctor(capsys, "--db", str(good_db), "--send-test")
    assert code == 0, out
    assert f"✓ Automation permission: test message sent to iMessage;-;{OWNER}" in out
    [call] = osascript_calls(env["log"])
    assert call["argv"] == ["-", doctor.TEST_MESSAGE, f"iMessage;-;{OWNER}"]


def test_send_test_without_automation_permission_says_how_to_grant_it(
    env, good_db, capsys, forked_serve, monkeypatch, on_a_mac
):
    monkeypatch.setenv("FAKE_OSASCRIPT_MODE", "fail-1743")
    code, out = run_doctor(capsys, "--db", str(good_db), "--send-test")
    assert code == 1
    assert "✗ Automation permission: macOS refused to let this program control Messages" in out
    assert "Privacy & Security → Automation" in out


def test_send_test_off_macos_says_applescript_needs_a_mac(env, good_db, capsys, forked_serve, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    code, out = run_doctor(capsys, "--db", str(good_db), "--send-test")
    assert code == 1
    assert "✗ Automation permission: sending needs AppleScript, which only macOS has" in out
    assert "Open Messages once" not in out
    assert osascript_calls(env["log"]) == []


def test_the_state_directory_must_be_private(tmp_path):
    state = tmp_path / "state"
    assert doctor.check_state_dir(state).status is Status.PASS  # created on first write
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    loose = doctor.check_state_dir(state)
    assert loose.status is Status.FAIL and f"chmod 700 '{state}'" in loose.fix
    os.chmod(state, 0o700)
    (state / "access.json").write_text("{}", encoding="utf-8")
    os.chmod(state / "access.json", 0o644)
    shared = doctor.check_state_dir(state)
    assert shared.status is Status.FAIL and f"chmod 600 '{state / 'access.json'}'" in shared.fix
    os.chmod(state / "access.json", 0o600)
    assert doctor.check_state_dir(state).status is Status.PASS


def test_a_state_path_that_is_a_file_fails(tmp_path):
    (tmp_path / "state").write_text("x", encoding="utf-8")
    assert doctor.check_state_dir(tmp_path / "state").status is Status.FAIL


def _access(state: Path, data: object) -> doctor.Check:
    state.mkdir(exist_ok=True)
    (state / "access.json").write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return doctor.check_access(state, allow_sms=False)


def test_the_access_summary(tmp_path):
    check = _access(tmp_path, {"dmPolicy": "pairing", "allowFrom": ["a@b.com", "+15551234567"]})
    assert check.status is Status.PASS
    assert check.detail == "policy pairing, 2 allowed, 0 group(s), 0 pending code(s)"
    assert doctor.check_access(tmp_path / "none", allow_sms=True).detail.startswith("no access.json yet")


def test_a_group_waiting_for_a_mention_with_no_patterns_fails(tmp_path):
    check = _access(tmp_path, {"groups": {"iMessage;+;chat1": {"requireMention": True}}})
    assert check.status is Status.FAIL
    assert "iMessage;+;chat1 need a mention but no mentionPatterns" in check.detail
    assert "set mentionPatterns" in check.fix


def test_an_invalid_mention_regex_fails(tmp_path):
    check = _access(tmp_path, {"mentionPatterns": ["(claude"]})
    assert check.status is Status.FAIL and "'(claude' is not a valid regex" in check.detail


def test_a_corrupt_access_file_fails_and_is_left_where_it_is(tmp_path):
    check = _access(tmp_path, '{"dmPolicy": ')
    assert check.status is Status.FAIL and "not valid" in check.detail
    assert (tmp_path / "access.json").read_text(encoding="utf-8") == '{"dmPolicy": '
    assert [p.name for p in tmp_path.iterdir()] == ["access.json"]


# --- contact names ---------------------------------------------------------------------------------------


def test_contact_names_are_optional_so_no_folder_or_off_is_skipped(tmp_path):
    missing = doctor.check_contacts(Contacts(tmp_path / "AddressBook"))
    assert missing.status is Status.SKIP and "no Contacts folder" in missing.detail
    off = doctor.check_contacts(Contacts(tmp_path, enabled=False))
    assert off.status is Status.SKIP and "IMESSAGE_CONTACTS=off" in off.detail


def test_a_contacts_store_that_cannot_be_read_fails_with_the_fix(tmp_path):
    book = create_addressbook_dir(tmp_path / "AddressBook", main=[Card("Jane", "Appleseed", emails=["j@x.test"])])
    store_path(book).write_bytes(b"not a database at all, just text" * 64)
    check = doctor.check_contacts(Contacts(book))
    assert check.status is Status.FAIL
    assert "problems:" in check.detail and "Full Disk Access" in check.fix


# --- the channel self-check against impostors ---------------------------------------------------------

NO_CHANNEL = """
import json, sys
req = json.loads(sys.stdin.readline())
caps = {"tools": {}, "experimental": {"claude/channel": {}}}
print(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": {"protocolVersion": "2025-11-25",
    "capabilities": caps, "serverInfo": {"name": "x", "version": "0"}}}), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(
    ("script", "words"),
    [
        ("print('Installing dependencies...', flush=True)\nimport sys; sys.stdin.read()", "not JSON-RPC"),
        ("import sys; sys.stderr.write('boom: no chat.db'); sys.exit(2)", "exited (status 2) before answering"),
        (NO_CHANNEL, "does not declare claude/channel/permission"),
    ],
)
def test_the_channel_check_fails_for_a_server_claude_code_would_not_register(good_db, script, words):
    check = doctor.check_channel(good_db, argv=[sys.executable, "-c", script])
    assert check.status is Status.FAIL
    assert words in check.detail


def test_the_channel_check_shows_why_the_server_exited(good_db):
    check = doctor.check_channel(
        good_db, argv=[sys.executable, "-c", "import sys; sys.stderr.write('boom: no chat.db'); sys.exit(2)"]
    )
    assert "boom: no chat.db" in check.fix


def test_the_channel_check_gives_up_on_a_silent_server(good_db):
    check = doctor.check_channel(good_db, argv=[sys.executable, "-c", "import sys; sys.stdin.read()"], timeout=0.5)
    assert check.status is Status.FAIL and "no answer to initialize within 0.5 s" in check.detail


def test_sessions_lists_the_live_ones_and_the_reader(tmp_path):
    from imessage_channel.cli.doctor import check_sessions
    from imessage_channel.lease import ReaderLease
    from imessage_channel.sessions import Registry, new_session_id

    registry = Registry(tmp_path)
    alpha = registry.register(new_session_id(), "alpha", project="/Users/me/alpha")
    beta = registry.register(new_session_id(), "beta")
    lease = ReaderLease(tmp_path, alpha.info.id)
    assert lease.try_acquire()
    try:
        check = check_sessions(tmp_path, alpha.info.started + 30)
        assert check.status.value == "pass"
        assert check.detail.startswith("Sessions (2): alpha (reads iMessage), beta (default); ")
        assert f"alpha: pid {os.getpid()}, /Users/me/alpha, started 30 s ago" in check.detail
        beta.close()
        alone = check_sessions(tmp_path, alpha.info.started).detail
        assert alone.startswith("Sessions (1): alpha (reads iMessage, default)")
    finally:
        lease.release()
        alpha.close()
    assert check_sessions(tmp_path, 0).status.value == "skip"
