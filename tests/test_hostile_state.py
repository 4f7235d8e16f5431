"""Nothing a sender, a clock or a crash does can blind the channel: hostile state files.

Items proven here (issue "Nothing a sender, a clock or a crash does can blind the channel"):

- 3. An unreadable access.json (another owner's 0600 file after `sudo imessage-channel access …`, a directory,
  EIO) never stops self-chat or replies to it; everyone else gets the defaults with one log line; the file is
  left where it is (never moved aside, never overwritten); the CLI refuses to edit it and `doctor` names the fix.
- 4. Malformed state files never stop a start: `delivered.log` with invalid UTF-8, `outbox.json` entries of the
  wrong types, a `delivery.json` of the wrong shape; each bad file is moved aside under a unique name
  (`<name>.corrupt-<UTC stamp>[-N]`, never replacing an older one), logged once, and what was good in it is kept.
- 5. An editor writing access.json in place is read mid-write now and then: the last good configuration stays in
  force, a file that does not parse is judged only once it has been unchanged for 2 s (by its mtime or by how long
  it has been seen, on the injected clock), and only one that stays invalid is moved aside.
- 7. Phone numbers are read with libphonenumber in the owner's region (their own number in chat.db, else
  `handle.country`, else the locale) and kept in E.164; a national number with no region known is refused with a
  request for the country code; `allow`, `group add --allow`, `pair` and access.json loading share one validation
  (`handles.parse_handle`), and entries of access.json that fail it are ignored one log line each.
- 12. The state dir is not a command channel: an `approved/<sender>` file is confirmed ("Paired!") only when its
  sender is in allowFrom now and its chat is that sender's one-to-one chat; an outbox entry is sent only to a chat
  `Channel.may_answer` accepts at send time; anything else is dropped with one log line and nothing is sent.

Server behaviour is tested against the real server over stdio (tests/harness.py); "not delivered" is proven
with a sentinel row. Pure units (the `statefile` helpers) are tested directly, with a `ManualClock`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imessage_channel import statefile
from imessage_channel.access import Access, AccessStore, AccessUnavailableError, allow
from imessage_channel.cli import doctor, main
from imessage_channel.cli.doctor import Status
from imessage_channel.clock import ManualClock
from imessage_channel.delivery import parse_state
from imessage_channel.handles import CountryCodeNeeded, HandleError, normalize_handle, parse_handle, pick_region
from imessage_channel.settings import Settings
from tests.test_durability import FRIEND, Rig

T0 = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


def state(rig: Rig) -> Path:
    return rig.home / "state"


def asides(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.corrupt-*"))


def contents(server) -> list[str]:
    return [e["content"] for e in server.events()]


# --- statefile: the one implementation of atomic writes and move-aside --------------------------------------


def test_atomic_write_creates_a_private_file_in_a_private_dir_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "new" / "x.json"
    statefile.atomic_write(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_move_aside_never_replaces_an_earlier_file(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    path = tmp_path / "outbox.json"
    names = []
    for text in ("first", "second", "third"):
        path.write_text(text)
        names.append(statefile.move_aside(path, clock.now()).name)
    assert names == [
        "outbox.json.corrupt-20310506T070809Z",
        "outbox.json.corrupt-20310506T070809Z-1",
        "outbox.json.corrupt-20310506T070809Z-2",
    ]
    assert [p.read_text() for p in asides(tmp_path, "outbox.json")] == ["first", "second", "third"]
    assert not path.exists()


def test_load_leaves_an_unreadable_file_where_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.json"
    path.mkdir()  # as unreadable as a root-owned 0600 file is to its user (the tests run as root)
    log = logging.getLogger("tests.hostile_state")
    loaded = statefile.load(path, json.loads, clock=ManualClock(T0), log=log, then="going on")
    assert loaded.state is statefile.LoadState.UNREADABLE and loaded.value is None
    assert path.is_dir() and not asides(tmp_path, "outbox.json")
    assert "left where it is" in caplog.text and "directory" in caplog.text


def test_a_file_replaced_since_it_was_read_is_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "delivery.json"
    path.write_text("{broken")
    key = statefile.stat_key(path)
    statefile.atomic_write(path, b'{"version": 1}')  # a writer's good file lands between the read and the move
    assert statefile.move_aside_if_unchanged(path, key, T0) is None
    assert path.read_bytes() == b'{"version": 1}' and not asides(tmp_path, "delivery.json")


# --- item 3: an unreadable access.json --------------------------------------------------------------------

UNREADABLE = {
    "a-directory": IsADirectoryError(errno.EISDIR, "Is a directory"),
    "another-owner": PermissionError(errno.EACCES, "Permission denied"),
    "disk-error": OSError(errno.EIO, "Input/output error"),
}
FIXES = {"a-directory": "mv ", "another-owner": 'sudo chown "$USER"', "disk-error": "Disk Utility"}


@pytest.fixture
def unreadable(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state dir whose access.json (allowing FRIEND) cannot be read, in the way `request.param` names.
    The tests run as root, who reads any file: the read is made to fail as it would for the user."""
    kind = request.param
    path = tmp_path / kind / "access.json"  # the folder names the case (see FIXES)
    path.parent.mkdir()
    path.write_text(json.dumps({"allowFrom": [FRIEND]}))
    if kind == "another-owner":
        os.chown(path, 4242, 4242)  # as `sudo imessage-channel access …` leaves it: root's, 0600
        os.chmod(path, 0o600)
    real = statefile.read

    def failing(p: Path) -> bytes | None:
        if Path(p) == path:
            raise statefile.Unreadable(path, UNREADABLE[kind])
        return real(p)

    monkeypatch.setattr(statefile, "read", failing)
    return path


@pytest.mark.parametrize("unreadable", list(UNREADABLE), indirect=True)
def test_an_unreadable_access_json_means_defaults_one_log_line_and_no_write(
    unreadable: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = unreadable.read_bytes()
    store = AccessStore(unreadable.parent, clock=ManualClock(T0))
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        for _ in range(3):
            assert store.load() == Access()
        with pytest.raises(AccessUnavailableError, match="cannot read"):
            store.update(lambda a: allow(a, "new@example.com"))
        with pytest.raises(AccessUnavailableError):
            store.load(strict=True)
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1
    assert "self-chat still works" in caplog.text
    assert unreadable.read_bytes() == before and not asides(unreadable.parent, "access.json")


@pytest.mark.parametrize("unreadable", list(UNREADABLE), indirect=True)
def test_doctor_names_the_fix_for_an_unreadable_access_json(unreadable: Path) -> None:
    check = doctor.check_access(unreadable.parent)
    assert check.status is Status.FAIL
    assert "self-chat still works" in check.detail
    assert FIXES[unreadable.parent.name] in check.fix


def test_doctor_flags_state_files_of_another_owner_and_directories_in_their_place(tmp_path: Path) -> None:
    (tmp_path / "access.json").write_text("{}")
    os.chown(tmp_path / "access.json", 4242, 4242)
    (tmp_path / "access.json.lock").write_text("")
    os.chown(tmp_path / "access.json.lock", 4242, 4242)
    (tmp_path / "outbox.json").mkdir()
    os.chmod(tmp_path, 0o700)
    check = doctor.check_state_dir(tmp_path)
    assert check.status is Status.FAIL
    assert "access.json belongs to another user" in check.detail and "outbox.json is a directory" in check.detail
    assert f"sudo chown \"$USER\" '{tmp_path / 'access.json.lock'}'" in check.fix
    assert f"mv '{tmp_path / 'outbox.json'}'" in check.fix


def test_the_cli_refuses_to_edit_an_access_json_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "state"
    (folder / "access.json").mkdir(parents=True)
    monkeypatch.setenv("IMESSAGE_STATE_DIR", str(folder))
    for args in (["allow", "new@example.com"], []):
        assert main(["access", *args]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "cannot read" in err and "directory" in err and f"mv '{folder / 'access.json'}'" in err
    assert (folder / "access.json").is_dir() and list(folder.glob("access.json.corrupt-*")) == []


def test_with_access_json_a_directory_self_chat_and_replies_still_work(rig: Rig) -> None:
    path = state(rig) / "access.json"
    path.unlink()
    path.mkdir()  # as unreadable as root's 0600 file is to the user (these tests run as root)
    server = rig.start()
    rig.sim.receive(rig.friend, FRIEND, "friend, while access.json is unreadable")
    rig.sentinel(server)
    rig.sim.receive(rig.friend, FRIEND, "friend again")
    rig.sentinel(server)
    assert contents(server) == ["sentinel 1", "sentinel 2"]  # self-chat delivered, the friend gets the defaults
    result = server.call_tool("reply", {"chat_id": rig.me.guid, "text": "answer to self-chat"})
    assert result.get("isError") is not True
    assert server.wait_osascript(1)[0]["argv"][1].startswith("answer to self-chat")
    refused = server.call_tool("reply", {"chat_id": rig.friend.guid, "text": "to the friend"})
    assert refused["isError"] is True
    log = server.stderr()
    assert log.count("cannot read") == 1 and "self-chat still works" in log and f"mv '{path}'" in log
    assert path.is_dir() and not asides(state(rig), "access.json")
    # Fixed: the friend's texts are delivered again, with one line saying so.
    path.rmdir()
    path.write_text(json.dumps({"allowFrom": [FRIEND]}))
    rig.sim.receive(rig.friend, FRIEND, "friend, after the fix")
    server.wait_event(lambda e: e["content"] == "friend, after the fix")
    assert "can be read again" in server.stderr()


# --- item 4: malformed state files never stop a start ------------------------------------------------------


def queued(chat: str, **fields: object) -> dict[str, object]:
    """An outbox entry as the server writes it, due at once; `fields` override (the fault)."""
    entry: dict[str, object] = {
        "id": "abc123",
        "chat_guid": chat,
        "parts": ["still queued"],
        "files": [],
        "first_words": "still queued",
        "created": 0,
        "next_at": 0,
        "attempts": 1,
        "last_error": "Messages is not running",
        "extra": {},
    }
    return {**entry, **fields}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("outbox.json", b"{not json"),
        ("outbox.json", b'{"version": 1, "entries": 5}'),
        ("outbox.json", json.dumps({"version": 1, "entries": [{"id": 1}]}).encode()),
        ("delivery.json", b"\xff\xfe{}"),
        ("delivery.json", json.dumps({"version": 1, "db": "x", "rowid": "12"}).encode()),
        ("delivery.json", json.dumps({"version": 1, "db": "x", "rowid": 3, "seen": 5}).encode()),
        ("delivery.json", json.dumps({"version": 1, "db": "x", "rowid": 3, "recent": [[1, 2]]}).encode()),
        ("delivered.log", b"\xff\xfe\xfd\n"),
    ],
    ids=[
        "outbox-not-json",
        "outbox-entries-not-a-list",
        "outbox-entry-of-wrong-types",
        "delivery-not-utf8",
        "delivery-rowid-a-string",
        "delivery-seen-a-number",
        "delivery-recent-malformed",
        "delivered-log-not-utf8",
    ],
)
def test_a_malformed_state_file_is_moved_aside_and_the_server_starts(rig: Rig, name: str, content: bytes) -> None:
    (state(rig) / name).write_bytes(content)
    server = rig.start()
    rig.sentinel(server)
    [aside] = asides(state(rig), name)
    assert aside.read_bytes() == content
    assert f"{name} is corrupt" in server.stderr() and "Traceback" not in server.stderr()


@pytest.mark.parametrize(
    "fault",
    [{"parts": 5}, {"next_at": "soon"}, {"files": [3]}, {"attempts": -1}, {"chat_guid": None}, {"created": True}],
    ids=["parts-a-number", "next_at-a-word", "files-not-strings", "attempts-negative", "no-chat", "created-a-bool"],
)
def test_bad_outbox_entries_are_dropped_and_the_good_ones_are_still_sent(rig: Rig, fault: dict[str, object]) -> None:
    good = queued(rig.me.guid, id="good", parts=["the good one"])
    bad = queued(rig.me.guid, **{"id": "bad", "parts": ["the bad one"], **fault})
    doc = json.dumps({"version": 1, "entries": [bad, good]}).encode()
    (state(rig) / "outbox.json").write_bytes(doc)
    server = rig.start()
    [call] = server.wait_osascript(1)
    assert call["argv"][1] == "the good one"
    rig.sentinel(server)
    assert [c["argv"][1] for c in server.osascript_calls()] == ["the good one"]
    [aside] = asides(state(rig), "outbox.json")
    assert aside.read_bytes() == doc  # nothing that was in the file is lost
    assert "entry 0" in server.stderr()


def test_guids_in_a_damaged_delivered_log_still_count_as_delivered(rig: Rig) -> None:
    first = rig.start()
    rig.sentinel(first)
    first.close_stdin()
    assert first.wait_exit() == 0
    row = rig.sim.receive(rig.friend, FRIEND, "delivered just before a crash")
    # The crash left the log with this GUID, then garbage (a torn write on a damaged disk).
    (state(rig) / "delivered.log").write_bytes(row.guid.encode() + b"\n\xff\xfe\x00garbage\n")
    second = rig.start()
    rig.sentinel(second)
    assert contents(second) == ["sentinel 2"]
    [aside] = asides(state(rig), "delivered.log")
    assert row.guid.encode() in aside.read_bytes()


def test_a_second_bad_outbox_never_replaces_the_first(rig: Rig) -> None:
    for n in (1, 2):
        (state(rig) / "outbox.json").write_text(f"broken {n}")
        server = rig.start()
        rig.sentinel(server)
        server.close_stdin()
        assert server.wait_exit() == 0
    kept = sorted(p.read_text() for p in asides(state(rig), "outbox.json"))
    assert kept == ["broken 1", "broken 2"]


def test_an_unreadable_outbox_is_left_in_place_and_never_overwritten(rig: Rig) -> None:
    blocker = state(rig) / "outbox.json"
    blocker.mkdir()
    (blocker / "keep").write_text("whatever was here")
    server = rig.start(osascript_mode="fail-600,ok")
    result = server.call_tool("reply", {"chat_id": rig.me.guid, "text": "queued in memory"})
    assert "queued" in result["content"][0]["text"]
    server.wait_osascript(2, timeout=30)
    assert (blocker / "keep").read_text() == "whatever was here" and not asides(state(rig), "outbox.json")
    assert "left where it is" in server.stderr()
    assert os.path.isdir(blocker)


@pytest.mark.parametrize(
    ("doc", "last_active"),
    [
        ({"version": 1, "db": "x", "rowid": 3, "last_active": 42}, 42),
        ({"version": 1, "db": "x", "rowid": 3, "newest_date": 41}, 41),
        ({"version": 1, "db": "x", "rowid": 3}, None),
    ],
    ids=["last-active", "older-file-with-newest-date", "neither"],
)
def test_delivery_state_reads_last_active_and_the_older_newest_date(doc: dict, last_active: int | None) -> None:
    assert parse_state(json.dumps(doc).encode()).last_active == last_active


@pytest.mark.parametrize(
    "fault",
    [{"last_active": "soon"}, {"rowid": -1}, {"rowid": True}, {"edge_guid": "has space"}, {"db": None}],
    ids=["last-active-a-word", "negative-rowid", "rowid-a-bool", "guid-with-a-space", "no-db"],
)
def test_delivery_state_of_the_wrong_types_is_refused(fault: dict) -> None:
    with pytest.raises(ValueError):
        parse_state(json.dumps({"version": 1, "db": "x", "rowid": 3, **fault}).encode())


# --- item 5: in-place edits of access.json ------------------------------------------------------------------

ALICE, BOB = "+15551234567", "bob@example.com"


def write_in_place(path: Path, text: str) -> object:
    """Start an in-place write as editors do (truncate, then write): returns the open file, `text` written."""
    fh = path.open("r+", encoding="utf-8")
    fh.truncate(0)
    fh.write(text)
    fh.flush()
    return fh


def test_an_access_json_read_mid_write_keeps_the_last_good_settings_then_takes_the_new_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "access.json"
    path.write_text(json.dumps({"allowFrom": [ALICE]}))
    clock = ManualClock(datetime.fromtimestamp(path.stat().st_mtime, UTC))  # the file system's "now"
    store = AccessStore(tmp_path, clock=clock)
    assert store.load().allow_from == (ALICE,)
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        fh = write_in_place(store.path, '{"allowFrom": ["+15551234567", "bob@exa')
        assert store.load().allow_from == (ALICE,)
        clock.advance(1.5)
        assert store.load().allow_from == (ALICE,)
        with pytest.raises(AccessUnavailableError, match="another program may be writing it"):
            store.update(lambda a: allow(a, "carol@example.com"))  # never replace a file being written
        fh.write('mple.com"]}\n')  # type: ignore[attr-defined]
        fh.close()  # type: ignore[attr-defined]
        assert store.load().allow_from == (ALICE, BOB)
    assert not asides(tmp_path, "access.json")
    assert json.loads(store.path.read_text())["allowFrom"] == [ALICE, BOB]  # the whole write landed in place
    assert len([r for r in caplog.records if "may be writing" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("mtime", "seen_for", "moved"),
    [
        (0.0, 0.0, False),
        (-1.9, 0.0, False),
        (-2.1, 0.0, True),
        (0.0, 1.9, False),
        (0.0, 2.0, True),
        (3600.0, 1.9, False),
        (3600.0, 2.0, True),
    ],
    ids=[
        "written-just-now-waits",
        "unchanged-1.9s-by-mtime-waits",
        "unchanged-2.1s-by-mtime-is-moved",
        "seen-unchanged-1.9s-waits",
        "seen-unchanged-2s-is-moved",
        "mtime-in-the-future-seen-1.9s-waits",
        "mtime-in-the-future-seen-2s-is-moved",
    ],
)
def test_an_access_json_that_does_not_parse_is_moved_aside_only_once_quiet(
    tmp_path: Path, mtime: float, seen_for: float, moved: bool
) -> None:
    clock = ManualClock()
    store = AccessStore(tmp_path, clock=clock)
    store.path.write_text(json.dumps({"allowFrom": [ALICE]}))
    assert store.load().allow_from == (ALICE,)
    store.path.write_text('{"allowFrom": [')
    os.utime(store.path, (clock.wall() + mtime, clock.wall() + mtime))
    first = store.load()
    clock.advance(seen_for)
    second = store.load()
    assert bool(asides(tmp_path, "access.json")) is moved
    if moved:
        assert second == Access() and not store.path.exists()  # judged corrupt: the defaults
        assert asides(tmp_path, "access.json")[0].read_text() == '{"allowFrom": ['
    else:
        assert first.allow_from == second.allow_from == (ALICE,)  # the last good settings stay in force
        assert store.path.read_text() == '{"allowFrom": ['


def test_the_server_keeps_the_last_good_access_while_an_editor_writes_it_in_place(rig: Rig) -> None:
    other = "other@example.com"
    other_dm = rig.sim.dm(other)
    server = rig.start()
    rig.sim.receive(rig.friend, FRIEND, "before the edit")
    server.wait_event(lambda e: e["content"] == "before the edit")
    path = state(rig) / "access.json"
    fh = write_in_place(path, f'{{"allowFrom": ["{FRIEND}", "other@exa')
    rig.sim.receive(rig.friend, FRIEND, "while the editor writes")
    server.wait_event(lambda e: e["content"] == "while the editor writes")  # the last good settings
    fh.write('mple.com"]}\n')  # type: ignore[attr-defined]
    fh.close()  # type: ignore[attr-defined]
    rig.sim.receive(other_dm, other, "the new friend")
    server.wait_event(lambda e: e["content"] == "the new friend")  # the complete file applies
    assert json.loads(path.read_text()) == {"allowFrom": [FRIEND, other]}
    assert not asides(state(rig), "access.json")
    assert "may be writing" in server.stderr()


# --- item 7: phone numbers and one validation of handles ------------------------------------------------------

PARSED = [
    ("(479) 123-4567", "US", "+14791234567"),
    ("(555) 555-0123", "US", "+15555550123"),
    ("479.123.4567", "US", "+14791234567"),
    ("1 555 123 4567", "US", "+15551234567"),
    ("+47 912 34 567", None, "+4791234567"),
    ("+1 (479) 123-4567", "NO", "+14791234567"),
    ("020 7946 0958", "GB", "+442079460958"),
    ("p:+15551234567", None, "+15551234567"),
    ("Friend@iCloud.COM", None, "friend@icloud.com"),
    ("E:me@icloud.com", None, "me@icloud.com"),
]


@pytest.mark.parametrize(
    ("text", "region", "handle"),
    PARSED,
    ids=[
        "us-national-with-parentheses",
        "us-fiction-555-number",
        "us-national-with-dots",
        "us-trunk-prefix-1",
        "norwegian-with-plus",
        "plus-wins-over-region",
        "uk-national",
        "account-prefix-p",
        "email-any-case",
        "account-prefix-e",
    ],
)
def test_parse_handle_gives_e164_and_lowercase_emails(text: str, region: str | None, handle: str) -> None:
    assert parse_handle(text, region) == handle


REFUSED = [
    ("(479) 123-4567", None, CountryCodeNeeded, "country code"),
    ("junk", "US", HandleError, "is not a handle"),
    ("a@b", "US", HandleError, "not a valid email"),
    ("a@b@c", "US", HandleError, "not a valid email"),
    ("1234567890123456789012", "US", HandleError, "too long"),
    ("+1234567890123456789012", None, HandleError, "too long"),
    ("12345", "US", HandleError, "short code"),
    ("555-1234", "US", HandleError, "area code"),
    ("+999 1234567", None, HandleError, "country code"),
    ("+1", None, HandleError, "is not a handle"),
    ("", "US", HandleError, "empty"),
    ("iMessage;-;+15551234567", "US", HandleError, "is not a handle"),
]


@pytest.mark.parametrize(
    ("text", "region", "error", "words"),
    REFUSED,
    ids=[
        "national-without-region",
        "a-word",
        "email-without-dotted-domain",
        "two-at-signs",
        "22-digits",
        "22-digits-with-plus",
        "sms-short-code",
        "no-area-code",
        "unknown-country-code",
        "country-code-alone",
        "empty",
        "chat-guid",
    ],
)
def test_parse_handle_refuses_what_is_not_a_person(text: str, region: str | None, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        parse_handle(text, region)


def test_the_region_is_asked_for_only_when_a_national_number_needs_it() -> None:
    asked: list[int] = []

    def region() -> str:
        asked.append(1)
        return "US"

    assert parse_handle("+15551234567", region) == "+15551234567"
    assert parse_handle("a@example.com", region) == "a@example.com"
    assert asked == []
    assert parse_handle("(479) 123-4567", region) == "+14791234567" and asked == [1]


@pytest.mark.parametrize(
    ("a", "b"),
    [("12345", "12345"), ("AMAZON", "amazon"), ("+15551234567", "p:15551234567"), ("E:Me@iCloud.com", "me@icloud.com")],
    ids=["sms-short-code", "alphanumeric-sender", "phone-with-prefix", "email-with-prefix"],
)
def test_normalize_handle_still_compares_what_chat_db_stores(a: str, b: str) -> None:
    assert normalize_handle(a) == normalize_handle(b) != ""


@pytest.mark.parametrize(
    ("owner", "countries", "env", "region"),
    [
        (["me@icloud.com", "+15555550100"], ["gb"], {"LANG": "de_DE.UTF-8"}, "US"),
        (["+447700900123"], [], {}, "GB"),
        (["+4791234567"], [], {}, "NO"),
        (["me@icloud.com"], ["us", "fr"], {"LANG": "de_DE.UTF-8"}, "US"),
        (["me@icloud.com"], ["zz"], {"LANG": "de_DE.UTF-8"}, "DE"),
        ([], [], {"LANG": "en_US.UTF-8", "LC_ALL": "fr_FR.UTF-8"}, "FR"),
        ([], [], {"LANG": "C.UTF-8"}, None),
        ([], [], {"LC_CTYPE": "UTF-8", "LANG": "en_CA.UTF-8"}, "CA"),
    ],
    ids=[
        "owner-number-first",
        "owner-uk-number",
        "owner-norwegian-number",
        "handle-country-next",
        "unknown-country-then-locale",
        "lc-all-wins-over-lang",
        "c-locale-names-no-region",
        "lang-over-a-bare-lc-ctype",
    ],
)
def test_the_owner_region_comes_from_their_number_then_handle_country_then_the_locale(
    owner: list[str], countries: list[str], env: dict[str, str], region: str | None
) -> None:
    assert pick_region(owner, countries, Settings.from_env(env).locales).code == region


def test_access_json_entries_that_are_not_handles_are_ignored_one_log_line_each_and_kept_in_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    group = "iMessage;+;chat1"
    doc = {
        "allowFrom": ["junk", "+1 555 123 4567", 7, "(479) 123-4567", "a@b"],
        "groups": {group: {"requireMention": False, "allowFrom": ["x", "Bob@Example.com"]}},
        "dmPolicy": "allowlist",
    }
    (tmp_path / "access.json").write_text(json.dumps(doc))
    store = AccessStore(tmp_path, region="US")
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        access = store.load()
        store.load()
    assert access.allow_from == ("+15551234567", "+14791234567")
    assert access.groups[group].allow_from == ("bob@example.com",)
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 4 and all("is not a handle" in line for line in ignored)
    # Without a region the national number is ignored too, and the rest still applies.
    assert AccessStore(tmp_path).load().allow_from == ("+15551234567",)
    store.update(lambda a: allow(a, "carol@example.com"))  # a write keeps what it did not understand
    saved = json.loads((tmp_path / "access.json").read_text())
    assert saved["allowFrom"] == ["+15551234567", "+14791234567", "carol@example.com", "junk", 7, "a@b"]
    assert saved["groups"][group]["allowFrom"] == ["bob@example.com", "x"]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The CLI's environment: a state dir, no chat.db, and a locale to set (`set_locale`)."""
    folder = tmp_path / "state"
    monkeypatch.setenv("IMESSAGE_STATE_DIR", str(folder))
    monkeypatch.delenv("IMESSAGE_ACCESS_MODE", raising=False)
    monkeypatch.setenv("IMESSAGE_DB_PATH", str(tmp_path / "no-messages" / "chat.db"))
    for name in ("LC_ALL", "LC_TELEPHONE", "LC_CTYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")

    def set_locale(lang: str) -> None:
        monkeypatch.setenv("LANG", lang)

    return folder, set_locale, monkeypatch


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["access", *args])
    out, err = capsys.readouterr()
    return code, out, err


def allowed(folder: Path) -> list[object]:
    return json.loads((folder / "access.json").read_text())["allowFrom"]


def test_cli_reads_a_national_number_in_the_locales_region(cli_env, capsys) -> None:
    folder, set_locale, _ = cli_env
    set_locale("en_US.UTF-8")
    assert cli(capsys, "allow", "(479) 123-4567") == (0, "Allowed +14791234567.\n", "")
    assert allowed(folder) == ["+14791234567"]


def test_cli_refuses_a_national_number_when_no_region_is_known(cli_env, capsys) -> None:
    folder, _, _ = cli_env
    code, out, err = cli(capsys, "allow", "(479) 123-4567")
    assert code == 2 and out == "" and "country code" in err and "+1 (479) 123-4567" in err
    assert not (folder / "access.json").exists()


def test_cli_reads_a_national_number_in_the_owners_region_from_chat_db(cli_env, capsys, chatdb_factory) -> None:
    folder, set_locale, monkeypatch = cli_env
    set_locale("en_US.UTF-8")  # the owner's own number in chat.db wins over the locale
    db, sim = chatdb_factory("sonoma", owner_phone="+447700900123")
    sim.send(sim.self_chat(), "note to self")
    sim.conn.execute("UPDATE message SET destination_caller_id = ?", ("+447700900123",))
    monkeypatch.setenv("IMESSAGE_DB_PATH", str(db))
    assert cli(capsys, "allow", "07700 900456")[0] == 0
    assert allowed(folder) == ["+447700900456"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["allow", "junk"], ["'junk' is not a handle"]),
        (["allow", "a@b"], ["'a@b' is not a handle", "email"]),
        (["allow", "1234567890123456789012"], ["too long"]),
        (["allow", "12345"], ["short code"]),
        (["group", "add", "iMessage;+;chat1", "--allow", "x,junk,,"], ["--allow", "'x' is not a handle", "'junk'"]),
        (["remove", "junk"], ["'junk' is not a handle"]),
    ],
    ids=["allow-a-word", "allow-a-bad-email", "allow-22-digits", "allow-a-short-code", "group-allow-list", "remove"],
)
def test_cli_refuses_what_is_not_a_handle_and_writes_nothing(cli_env, capsys, args: list[str], words: list[str]):
    folder, set_locale, _ = cli_env
    set_locale("en_US.UTF-8")
    code, out, err = cli(capsys, *args)
    assert code == 2 and out == "" and err.count("\n") == 1
    for word in words:
        assert word in err
    assert not (folder / "access.json").exists()


def test_cli_pair_refuses_a_code_issued_to_something_that_is_not_a_handle(cli_env, capsys) -> None:
    folder, _, _ = cli_env
    folder.mkdir()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    pending = {"senderId": "junk", "chatId": "iMessage;-;junk", "createdAt": now_ms, "expiresAt": now_ms + 3_600_000}
    (folder / "access.json").write_text(json.dumps({"pending": {"abc123": pending}}))
    before = (folder / "access.json").read_bytes()
    code, out, err = cli(capsys, "pair", "abc123")
    assert code == 2 and out == "" and "'junk' is not a handle" in err and "access deny abc123" in err
    assert (folder / "access.json").read_bytes() == before and not (folder / "approved").exists()


def test_cli_lists_and_removes_entries_that_are_not_handles(cli_env, capsys) -> None:
    folder, _, _ = cli_env
    folder.mkdir()
    (folder / "access.json").write_text(json.dumps({"allowFrom": ["junk", "+15551234567"]}))
    code, out, _ = cli(capsys)
    assert code == 0 and "Ignored, not handles (1)" in out and "'junk' is not a handle" in out
    assert cli(capsys, "remove", "junk")[0] == 0
    assert allowed(folder) == ["+15551234567"]


def test_the_server_reads_national_numbers_in_the_owners_region_and_ignores_junk(tmp_path: Path) -> None:
    rig = Rig(tmp_path)  # the owner's phone is +15555550100: region US
    try:
        neighbour = "+15555550199"
        dm = rig.sim.dm(neighbour)
        (state(rig) / "access.json").write_text(json.dumps({"allowFrom": ["junk", "(555) 555-0199", "a@b"]}))
        server = rig.start()
        rig.sim.receive(dm, neighbour, "typed without a country code, allowed all the same")
        rig.sim.receive(rig.friend, FRIEND, "no longer allowed")
        rig.sentinel(server)
        assert contents(server) == ["typed without a country code, allowed all the same", "sentinel 1"]
        log = server.stderr()
        assert log.count("'junk' is not a handle") == 1 and log.count("'a@b' is not a handle") == 1
        assert "read as US numbers (from your number +15555550100)" in log
    finally:
        rig.close()


def test_doctor_flags_access_json_entries_that_are_not_handles(tmp_path: Path) -> None:
    (tmp_path / "access.json").write_text(json.dumps({"allowFrom": ["junk", "(479) 123-4567", "+15551234567"]}))
    check = doctor.check_access(tmp_path, region="US")
    assert check.status is Status.FAIL
    assert "'junk' is not a handle" in check.detail and "(ignored)" in check.detail and "479" not in check.detail
    assert "access remove" in check.fix
    assert "1 allowed" not in check.detail and "2 allowed" in check.detail


# --- item 12: the state dir is not a command channel ---------------------------------------------------------

STRANGER = "+15550001111"


@pytest.mark.parametrize(
    ("sender", "chat", "confirmed", "why"),
    [
        (FRIEND, "friend-dm", True, ""),
        (STRANGER, "stranger-dm", False, "is not in allowFrom"),
        (FRIEND, "stranger-dm", False, "is not friend@example.com's one-to-one chat"),
        (FRIEND, "group", False, "one-to-one chat"),
        (FRIEND, "iMessage;-;nobody@example.com", False, "is not in chat.db"),
        ("owner@example.com", "self-chat", False, "is not in allowFrom"),
    ],
    ids=[
        "allowed-sender-in-their-dm-is-confirmed",
        "sender-not-in-allowfrom",
        "allowed-sender-but-someone-elses-chat",
        "allowed-sender-but-a-group",
        "chat-not-in-chat-db",
        "the-owner-in-self-chat",
    ],
)
def test_an_approval_file_is_confirmed_only_for_an_allowed_sender_in_their_own_dm(
    rig: Rig, sender: str, chat: str, confirmed: bool, why: str
) -> None:
    chats = {
        "friend-dm": rig.friend.guid,
        "stranger-dm": rig.sim.dm(STRANGER).guid,
        "group": rig.sim.group([FRIEND, STRANGER]).guid,
        "self-chat": rig.me.guid,
    }
    guid = chats.get(chat, chat)
    server = rig.start()
    rig.sentinel(server)
    approved = state(rig) / "approved"
    approved.mkdir(exist_ok=True)
    (approved / sender).write_text(guid)  # dropped by any program of the user's, not by `access pair`
    rig.sentinel(server)  # each wake reads approved/ before the new rows
    if confirmed:
        [call] = server.wait_osascript(1)
        assert call["argv"][1:] == ["Paired! Say hi to Claude.", guid]
    else:
        rig.sentinel(server)
        assert server.osascript_calls() == []
        assert (
            server.stderr().count(f"approved/{sender} dropped without a confirmation") == 1 and why in server.stderr()
        )
    assert not (approved / sender).exists()


@pytest.mark.parametrize(
    ("chat", "sent"),
    [
        ("self-chat", True),
        ("friend-dm", True),
        ("stranger-dm", False),
        ("group-not-configured", False),
        ("iMessage;-;nobody@example.com", False),
    ],
    ids=["self-chat-is-sent", "allowlisted-dm-is-sent", "stranger", "group-not-configured", "chat-not-in-chat-db"],
)
def test_an_outbox_entry_is_sent_only_to_a_chat_the_channel_may_answer(rig: Rig, chat: str, sent: bool) -> None:
    chats = {
        "self-chat": rig.me.guid,
        "friend-dm": rig.friend.guid,
        "stranger-dm": rig.sim.dm(STRANGER).guid,
        "group-not-configured": rig.sim.group([FRIEND, STRANGER]).guid,
    }
    guid = chats.get(chat, chat)
    control = queued(rig.me.guid, id="control", parts=["control, to self-chat"], created=1.0)
    entry = queued(guid, id="planted", parts=["hello stranger"])
    (state(rig) / "outbox.json").write_text(json.dumps({"version": 1, "entries": [entry, control]}))
    server = rig.start()
    calls = server.wait_osascript(2 if sent else 1)
    rig.sentinel(server)
    texts = [c["argv"][1] for c in server.osascript_calls()]
    if sent:
        assert sorted(texts) == ["control, to self-chat", "hello stranger"]
        assert [c["argv"][2] for c in calls if c["argv"][1] == "hello stranger"] == [guid]
    else:
        assert texts == ["control, to self-chat"]
        assert server.stderr().count(f"outbox: dropped a queued reply to {guid}") == 1
    # the outbox file is rewritten after each send returns (osascript's log has it as the call starts)
    server.wait_for(lambda: json.loads((state(rig) / "outbox.json").read_text())["entries"] == [], "an empty outbox")
