"""Hostile input on the way out and on the wire: nothing a sender, a tool call or a stray line does can
blind the channel. Items of the issue "Nothing a sender, a clock or a crash does can blind the channel":

- 6. `reply` files are opened once (no final symlink followed), checked on the open descriptor (regular,
  ≤ 100 MB, not one of the state dir's files nor chat.db/-wal/-shm, by device and inode) and copied from
  that descriptor with a byte cap, every file staged before any text is sent, partial copies removed.
  Races are made deterministic: the fake osascript swaps the file while the text part is "sent" (mode
  `swap`), or a wrapper around `os.open`/`os.fstat` swaps or grows it between the check and the open/copy.
- 10. Malformed JSON-RPC lines get their JSON-RPC 2.0 error (-32700 / -32600 / -32602, the request's id when
  it has a usable one, else null) written through the server's one stdout writer, and the server keeps
  serving; valid messages pass untouched; an over-long line is discarded as it arrives (memory stays far
  below its size) and answered once, with its id when one is at its top level.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures.chatdb_builder import create_chatdb
from imessage_channel import sender as sender_mod
from imessage_channel.access import Access, AccessStore
from imessage_channel.devtools.simulator import MessagesSimulator
from imessage_channel.gate import mentioned
from imessage_channel.patterns import PatternError, compile_pattern
from imessage_channel.sender import (
    MAX_CHUNK_LIMIT,
    MAX_FILES,
    MAX_TEXT_PARTS,
    SEND_FILE_SCRIPT,
    STAGING_NAME,
    OsascriptBackend,
    Sender,
    SendError,
    chunk_text,
    sqlite_files,
    text_parts,
)
from imessage_channel.wire import IdScanner, LineSplitter, Oversized, screen
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
    (d / "approved").mkdir()
    (d / "approved" / "friend@example.com").write_text("iMessage;-;friend@example.com")
    return d


@pytest.fixture
def chat_db(tmp_path: Path) -> Path:
    folder = tmp_path / "Library" / "Messages"
    folder.mkdir(parents=True)
    db = folder / "chat.db"
    for path in sqlite_files(db):
        path.write_bytes(b"SQLite format 3\x00 " + path.name.encode())
    return db


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "Messages" / STAGING_NAME


@pytest.fixture
def sender(osa: Osa, state_dir: Path, chat_db: Path, tmp_path: Path) -> Sender:
    return Sender(
        OsascriptBackend(),
        state_dir=state_dir,
        messages_dir=tmp_path / "Messages",
        protected=sqlite_files(chat_db),
        timeout=10,
    )


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    folder = tmp_path / "work" / "pics"
    folder.mkdir(parents=True)
    path = folder / "photo.jpg"
    path.write_bytes(ORIGINAL)
    return path


def staged_copies(staging: Path) -> list[Path]:
    """Every file under the staging folder (each staged copy lives in its own `<uuid>/` folder)."""
    return sorted(p for p in staging.rglob("*") if p.is_file()) if staging.exists() else []


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        fh.truncate(size)  # no real disk use
    return path


# --- item 6: a swap while the text is sent changes nothing that is sent --------------------------------


SWAPS: list[tuple[str, Callable[[Path, Path, Path], Path | str], str]] = [
    ("symlink into the state dir", lambda tmp, state, db: state / "access.json", "symlink"),
    ("symlink to chat.db", lambda tmp, state, db: db, "symlink"),
    ("symlink to a 150 MB file", lambda tmp, state, db: sparse(tmp / "huge.bin", 150 * 1024 * 1024), "symlink"),
    ("symlink to /dev/zero", lambda tmp, state, db: "/dev/zero", "symlink"),
    ("renamed over by a 150 MB file", lambda tmp, state, db: sparse(tmp / "huge2.bin", 150 * 1024 * 1024), "rename"),
]


@pytest.mark.parametrize(("case", "replacement", "how"), SWAPS, ids=[s[0] for s in SWAPS])
def test_a_file_swapped_while_the_text_is_sent_is_sent_as_it_was_checked(
    sender: Sender, osa: Osa, photo: Path, staging: Path, tmp_path: Path, state_dir: Path, chat_db: Path,
    case: str, replacement: Callable[[Path, Path, Path], Path | str], how: str,
) -> None:  # fmt: skip
    osa.swap(photo, replacement(tmp_path, state_dir, chat_db), how)
    osa.mode("swap", "ok")  # the text part's call swaps the file; the file part's call succeeds

    result = sender.send(DM, "here it is", [str(photo)])

    assert result.parts_total == 2
    text_call, file_call = osa.calls()
    assert text_call["argv"][1] == "here it is"
    assert file_call["stdin"] == SEND_FILE_SCRIPT
    staged = Path(file_call["argv"][1])
    assert staged.read_bytes() == ORIGINAL  # copied before the swap, from the descriptor that was checked
    assert staged_copies(staging) == [staged]


# --- item 6: races between the check and the open, and during the copy ---------------------------------


def swap_before_open(monkeypatch: pytest.MonkeyPatch, victim: Path, swap: Callable[[], None]) -> None:
    """Run `swap` just before the sender opens `victim` for reading: after the path was resolved and
    checked, before the descriptor exists (the window the old check-then-copy left open)."""
    real_open = os.open

    def opening(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if os.fspath(path) == str(victim) and not flags & os.O_WRONLY:
            swap()
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(sender_mod.os, "open", opening)


def _to_symlink(victim: Path, target: Path) -> Callable[[], None]:
    def swap() -> None:
        victim.unlink()
        victim.symlink_to(target)

    return swap


def _to_fifo(victim: Path) -> Callable[[], None]:
    def swap() -> None:
        victim.unlink()
        os.mkfifo(victim)

    return swap


def _to_hard_link(victim: Path, target: Path) -> Callable[[], None]:
    def swap() -> None:
        victim.unlink()
        os.link(target, victim)

    return swap


RACES = [
    ("last component becomes a symlink to access.json", "symbolic link"),
    ("folder in the path becomes a symlink to the state dir", "refusing to send channel state"),
    ("file becomes a FIFO (would block a plain open)", "not a regular file"),
    ("file becomes a hard link of chat.db-wal", "refusing to send channel state"),
]


@pytest.mark.parametrize(("case", "complaint"), RACES, ids=[r[0] for r in RACES])
def test_a_swap_between_check_and_open_is_refused_and_nothing_is_sent(
    sender: Sender, osa: Osa, staging: Path, tmp_path: Path, state_dir: Path, chat_db: Path,
    monkeypatch: pytest.MonkeyPatch, case: str, complaint: str,
) -> None:  # fmt: skip
    folder = tmp_path / "work" / "state-lookalike"
    folder.mkdir(parents=True)
    victim = folder / "access.json"  # same name as the state file, so a swapped folder lands on it
    victim.write_bytes(ORIGINAL)
    if case.startswith("last component"):
        swap = _to_symlink(victim, state_dir / "access.json")
    elif case.startswith("folder"):

        def swap() -> None:
            folder.rename(tmp_path / "work" / "moved")
            folder.symlink_to(state_dir)

    elif case.startswith("file becomes a FIFO"):
        swap = _to_fifo(victim)
    else:
        swap = _to_hard_link(victim, sqlite_files(chat_db)[1])
    swap_before_open(monkeypatch, victim, swap)

    with pytest.raises(SendError, match=complaint) as err:
        sender.send(DM, "look", [str(victim)])

    assert err.value.sent_parts == 0 and not err.value.transient
    assert err.value.message.startswith("sent 0 of 2 parts; part 2 (file access.json) failed: ")
    assert osa.calls() == []
    assert staged_copies(staging) == []


def test_a_file_that_grows_past_the_cap_while_copied_is_refused_and_its_partial_copy_removed(
    osa: Osa, state_dir: Path, photo: Path, staging: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = Sender(OsascriptBackend(), state_dir=state_dir, messages_dir=tmp_path / "Messages", max_file_bytes=1000)
    photo.write_bytes(b"x" * 900)
    real_fstat = os.fstat

    def fstat_then_grow(fd: int) -> os.stat_result:
        st = real_fstat(fd)  # the check sees 900 bytes …
        with photo.open("ab") as fh:
            fh.write(b"y" * 500)  # … the copy finds 1400
        return st

    monkeypatch.setattr(sender_mod.os, "fstat", fstat_then_grow)

    with pytest.raises(SendError, match="grew past") as err:
        sender.send(DM, "hi", [str(photo)])

    assert err.value.sent_parts == 0
    assert osa.calls() == []
    assert staged_copies(staging) == []
    assert list(staging.iterdir()) == []  # the copy's folder went too


# --- item 6: the same file under another name --------------------------------------------------------


ALIASES = [
    ("hard link of access.json", lambda state, db: state / "access.json"),
    ("hard link of a file in approved/", lambda state, db: state / "approved" / "friend@example.com"),
    ("hard link of chat.db", lambda state, db: db),
    ("hard link of chat.db-wal", lambda state, db: sqlite_files(db)[1]),
    ("hard link of chat.db-shm", lambda state, db: sqlite_files(db)[2]),
]


@pytest.mark.parametrize(("case", "original"), ALIASES, ids=[a[0] for a in ALIASES])
def test_another_name_for_a_protected_file_is_refused(
    sender: Sender, osa: Osa, staging: Path, tmp_path: Path, state_dir: Path, chat_db: Path,
    case: str, original: Callable[[Path, Path], Path],
) -> None:  # fmt: skip
    """A hard link (and so a bind mount, or `…/IMESSAGE/access.json` on case-insensitive APFS: the same
    inode under another spelling) passes any comparison of path strings; the descriptor's identity does not."""
    alias = tmp_path / "innocent.txt"
    os.link(original(state_dir, chat_db), alias)

    with pytest.raises(SendError, match="refusing to send channel state"):
        sender.send(DM, "x", [str(alias)])
    assert osa.calls() == []
    assert staged_copies(staging) == []


def test_a_state_file_kept_elsewhere_and_linked_in_is_protected_at_its_real_place(
    sender: Sender, osa: Osa, tmp_path: Path, state_dir: Path
) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "access.json"
    (state_dir / "access.json").replace(real)
    (state_dir / "access.json").symlink_to(real)

    with pytest.raises(SendError, match="refusing to send channel state"):
        sender.send(DM, "x", [str(real)])
    assert osa.calls() == []


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("relative/photo.jpg", "not an absolute path"),
        ("/dev/zero", "not a regular file"),
        ("/dev/null", "not a regular file"),
    ],
    ids=["relative path", "/dev/zero", "/dev/null"],
)
def test_paths_that_are_not_a_plain_absolute_file_are_refused(
    sender: Sender, osa: Osa, name: str, complaint: str
) -> None:
    with pytest.raises(SendError, match=complaint):
        sender.send(DM, "x", [name])
    assert osa.calls() == []


def test_a_symlink_to_an_ordinary_file_is_sent_as_its_target(sender: Sender, osa: Osa, photo: Path, tmp_path: Path):
    link = tmp_path / "link-to-photo.jpg"
    link.symlink_to(photo)

    sender.send(DM, "", [str(link)])

    staged = Path(osa.calls()[0]["argv"][1])
    assert staged.name == "photo.jpg" and staged.read_bytes() == ORIGINAL


def test_every_file_is_staged_before_any_text_and_a_refused_one_leaves_no_copies(
    sender: Sender, osa: Osa, photo: Path, staging: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second.txt"
    second.write_text("two")

    with pytest.raises(SendError, match=r"part 4 \(file missing.png\) failed: file not found"):
        sender.send(DM, "text", [str(photo), str(second), str(tmp_path / "missing.png")])

    assert osa.calls() == []
    assert staged_copies(staging) == []


def test_when_a_part_fails_the_copies_not_yet_handed_to_messages_are_removed(
    sender: Sender, osa: Osa, photo: Path, staging: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second.txt"
    second.write_text("two")
    osa.mode("ok", "exit-1")  # the text goes, the first file fails

    with pytest.raises(SendError, match=r"sent 1 of 3 parts; part 2 \(file photo.jpg\) failed"):
        sender.send(DM, "text", [str(photo), str(second)])

    handed_over = Path(osa.calls()[1]["argv"][1])
    assert staged_copies(staging) == [handed_over]  # Messages may still read it; the unsent one is gone


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


# --- items 6 and 11 against the real server ----------------------------------------------------------


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
        self.staging = self.server.home / "Library" / "Messages" / STAGING_NAME

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


def test_server_sends_the_checked_file_even_if_it_becomes_a_link_to_access_json(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(ORIGINAL)
    state = tmp_path / "home" / "state"
    swap = {"FAKE_OSASCRIPT_SWAP_PATH": str(photo), "FAKE_OSASCRIPT_SWAP_TO": str(state / "access.json")}
    w = World(tmp_path, {"allowFrom": ["secret@example.com"]}, env=swap, osascript_mode="swap,ok")
    try:
        result = w.reply("the photo", [str(photo)])
        assert result.get("isError") is not True, result
        staged = Path(w.server.wait_osascript(2)[1]["argv"][1])
        assert photo.is_symlink()  # the swap happened, while the text was being sent
        assert staged.read_bytes() == ORIGINAL
    finally:
        w.close()


def test_server_refuses_a_hard_link_of_chat_db(world: World, tmp_path: Path) -> None:
    alias = tmp_path / "notes.db"
    os.link(world.db, alias)
    result = world.reply("see attached", [str(alias)])
    assert result["isError"] is True and "refusing to send channel state" in result["content"][0]["text"]
    assert world.server.osascript_calls() == []


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


# --- item 10: malformed JSON-RPC gets its error, the server keeps serving ------------------------------


def _request(rid: object, method: str = "tools/list", **extra: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, **extra}).encode()


SURROGATE_REPLY = (
    b'{"jsonrpc":"2.0","id":9013,"method":"tools/call","params":{"name":"reply","arguments":'
    b'{"chat_id":"x","text":"half an emoji \\ud83d"}}}'
)

WIRE_CASES: list[tuple[str, bytes, list[tuple[int, object]]]] = [
    ("not JSON", b"hello there", [(-32700, None)]),
    ("truncated object", b'{"jsonrpc":"2.0","id":9007,"method":"tools/list"', [(-32700, None)]),
    ("trailing garbage", _request(9007) + b" and more", [(-32700, None)]),
    ("lone surrogate escape", SURROGATE_REPLY, [(-32700, 9013)]),
    ("not UTF-8", b'{"jsonrpc":"2.0","id":9014,"method":"tools/list","params":{"x":"\xff"}}', [(-32700, 9014)]),
    ("empty batch", b"[]", [(-32600, None)]),
    ("batch of two requests", b"[%s,%s]" % (_request(9008), _request("9", "ping")), [(-32600, 9008), (-32600, "9")]),
    ("batch of notifications", b'[{"jsonrpc":"2.0","method":"notifications/x"}]', [(-32600, None)]),
    ("a number", b"42", [(-32600, None)]),
    ("missing method", b'{"jsonrpc":"2.0","id":9010}', [(-32600, 9010)]),
    ("jsonrpc 1.0", b'{"jsonrpc":"1.0","id":9011,"method":"tools/list"}', [(-32600, 9011)]),
    ("no jsonrpc member", b'{"id":"twelve","method":"tools/list"}', [(-32600, "twelve")]),
    ("method not a string", b'{"jsonrpc":"2.0","id":9015,"method":42}', [(-32600, 9015)]),
    ("id true", _request(True), [(-32600, None)]),
    ("id 1.5", _request(1.5), [(-32600, None)]),
    ("id null", _request(None), [(-32600, None)]),
    ("id an object", _request({"n": 1}), [(-32600, None)]),
    ("positional params", _request(9016, params=[1, 2]), [(-32602, 9016)]),
    ("params a string", _request(9017, params="x"), [(-32600, 9017)]),
    ("invalid notification", b'{"jsonrpc":"2.0","method":"notifications/x","params":5}', [(-32600, None)]),
    ("malformed response: dropped, not answered", b'{"jsonrpc":"2.0","id":9018,"result":5}', []),
    ("valid response from the client passes", b'{"jsonrpc":"2.0","id":"srv-1","result":{}}', []),
    ("valid notification passes", b'{"jsonrpc":"2.0","method":"notifications/progress","params":{}}', []),
    ("blank and white-space lines are skipped", b"\n   \r\n\t", []),
]  # fmt: skip


@pytest.fixture(scope="module")
def wire_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole table: every case also proves it kept serving after the ones before. Ids in
    the table are 90xx, strings or odd values, so they never collide with the harness's own request ids."""
    tmp = tmp_path_factory.mktemp("wire")
    server = ServerProcess(create_chatdb(tmp / "chat.db", "sequoia"), tmp / "home")
    server.start()
    server.initialize()
    yield server
    server.stop()


@pytest.mark.parametrize(("case", "line", "expected"), WIRE_CASES, ids=[c[0] for c in WIRE_CASES])
def test_a_malformed_line_gets_its_json_rpc_error_and_the_server_keeps_serving(
    wire_server: ServerProcess, case: str, line: bytes, expected: list[tuple[int, object]]
) -> None:
    before = len(wire_server.errors())
    wire_server.send_raw(line + b"\n")
    # Errors are written when the reader reaches their line, so before the answer to any later request.
    assert "result" in wire_server.request("ping")
    errors = wire_server.errors()[before:]
    assert [(e["error"]["code"], e["id"]) for e in errors] == expected
    assert all(e["jsonrpc"] == "2.0" and e["error"]["message"] for e in errors)


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("where", ["id first", "id last, after params (Claude Code's order)"])
def test_an_over_long_line_is_discarded_unbuffered_and_answered_once_with_its_id(tmp_path: Path, where: str) -> None:
    server = ServerProcess(create_chatdb(tmp_path / "chat.db", "sequoia"), tmp_path / "home")
    server.start()
    try:
        server.initialize()
        pid = server.proc.pid
        measurable = Path(f"/proc/{pid}/status").exists()
        before = _vm_hwm_kib(pid) if measurable else 0
        text = "x" * (64 * 1024 * 1024)  # 64 MB: four times the 16 MiB cap
        params = {"name": "reply", "arguments": {"chat_id": "any;-;x", "text": text}}
        head = {"jsonrpc": "2.0", "id": "big-1", "method": "tools/call"}
        message = (
            {**head, "params": params}
            if where == "id first"
            else {"method": "tools/call", "params": params, "jsonrpc": "2.0", "id": "big-1"}
        )
        line = json.dumps(message).encode()
        del text, params, message
        server.send_raw(line + b"\n")
        del line
        assert "result" in server.request("ping")
        errors = server.errors()
        assert [(e["error"]["code"], e["id"]) for e in errors] == [(-32600, "big-1")]
        assert "over the limit" in errors[0]["error"]["message"]
        assert server.osascript_calls() == []
        if measurable:  # peak RSS: the old reader grew by the whole line (66 MB); now by about the 16 MiB cap
            assert _vm_hwm_kib(pid) - before < 32 * 1024
    finally:
        server.stop()


def test_an_over_long_line_split_across_reads_at_awkward_places_is_still_one_error() -> None:
    splitter = LineSplitter(cap=64)
    line = b'{"method":"x","params":{"t":"' + b'a\\"b' * 40 + b'","id":"inner"},"id":"outer \\"q\\""}'
    items: list[object] = []
    for i in range(len(line)):  # one byte at a time: every escape and quote split from what follows
        items += splitter.feed(line[i : i + 1])
    items += splitter.feed(b"\n" + _request(1) + b"\n")
    assert len(items) == 2
    oversized, normal = items
    assert isinstance(oversized, Oversized) and oversized.size == len(line)
    assert oversized.request_id == 'outer "q"' and not oversized.is_response
    assert normal == _request(1)


@pytest.mark.parametrize(
    ("text", "request_id", "is_response"),
    [
        (b'{"jsonrpc":"2.0","id":5,"method":"m","params":{"id":6}}', 5, False),
        (b'{"params":{"id":6,"deep":[{"id":7}]},"id":"last"}', "last", False),
        (b'{"id":{"n":1},"method":"m"}', None, False),
        (b'{"id":true,"method":"m"}', None, False),
        (b'{"\\u0069d":9,"method":"m"}', 9, False),
        (b'{"jsonrpc":"2.0","id":3,"result":{"id":4}}', 3, True),
        (b'[{"id":1,"method":"m"}]', None, False),
        (b'{"method":"m","params":{"text":"no id anywhere"}}', None, False),
    ],
    ids=["id first", "id after params", "object id", "bool id", "escaped key", "response", "batch", "no id"],
)
def test_id_scanner_reads_only_the_top_level_id(text: bytes, request_id: object, is_response: bool) -> None:
    scanner = IdScanner()
    for i in range(0, len(text), 3):
        scanner.feed(text[i : i + 3])
    assert (scanner.request_id, scanner.is_response) == (request_id, is_response)


def test_valid_lines_pass_to_the_sdk_untouched() -> None:
    for line in [_request(1), b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
                 b'  {"jsonrpc":"2.0","id":"r","result":{}}  \r', '{"jsonrpc":"2.0","id":2,"method":"m","params":'
                 '{"t":"caf\u00e9 \\ud83d\\ude00 \U0001f600"}}'.encode()]:  # fmt: skip
        assert screen(line) == line.decode()


@pytest.mark.parametrize(("size", "kept"), [(10, True), (11, False)], ids=["at the cap", "one byte over"])
def test_the_line_cap_is_exact(size: int, kept: bool) -> None:
    splitter = LineSplitter(cap=10)
    items = [*splitter.feed(b"a" * (size - 3)), *splitter.feed(b"aaa\nrest"), *splitter.close()]
    assert items[0] == b"a" * size if kept else items[0] == Oversized(size, None, False)
    assert items[1:] == [b"rest"]
