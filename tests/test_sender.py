"""Outbound sending: argv-only content, GUID fallbacks, errors, chunking, signature, files, backends.

macOS is replaced by tests/fakes/bin/osascript (on PATH) and tests/fakes/applescript.py (on sys.path).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
import threading
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imessage_channel import sender as sender_mod
from imessage_channel.sender import (
    AUTOMATION_HELP,
    DEFAULT_SIGNATURE,
    MAX_CHUNK_LIMIT,
    MAX_FILE_BYTES,
    SEND_FILE_PARTICIPANT_SCRIPT,
    SEND_FILE_SCRIPT,
    SEND_PARTICIPANT_SCRIPT,
    SEND_SCRIPT,
    STAGING_NAME,
    AppleScriptBackend,
    OsascriptBackend,
    Sender,
    SendError,
    chunk_text,
    default_backend,
    parse_osascript_error,
    with_signature,
)

FAKES = Path(__file__).parent / "fakes"
DM = "any;-;+15555550123"
GROUP = "any;+;chat123456789"


# --- fixtures ----------------------------------------------------------------------------------


class FakeOsascript:
    """Handle on the fake osascript: set its mode, read what it was called with."""

    def __init__(self, log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log = log
        self._mp = monkeypatch

    def mode(self, *behaviours: str) -> None:
        self._mp.setenv("FAKE_OSASCRIPT_MODE", ",".join(behaviours))

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def osa(tmp_path, monkeypatch) -> FakeOsascript:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "osascript"
    shutil.copyfile(FAKES / "bin" / "osascript", fake)
    fake.chmod(0o755)  # the executable bit may not survive every checkout
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "osascript.jsonl"
    monkeypatch.setenv("FAKE_OSASCRIPT_LOG", str(log))
    handle = FakeOsascript(log, monkeypatch)
    handle.mode("ok")
    return handle


@pytest.fixture
def state_dir(tmp_path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    (d / "access.json").write_text("{}")
    return d


@pytest.fixture
def messages_dir(tmp_path) -> Path:
    d = tmp_path / "Messages"
    d.mkdir()
    return d


@pytest.fixture
def sender(osa, state_dir, messages_dir) -> Sender:
    return Sender(OsascriptBackend(), state_dir=state_dir, messages_dir=messages_dir, timeout=10)


@pytest.fixture
def fake_applescript(monkeypatch):
    """A fresh copy of tests/fakes/applescript.py importable as `applescript`."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "applescript", raising=False)
    module = importlib.import_module("applescript")
    monkeypatch.setitem(sys.modules, "applescript", module)
    module.compiled.clear()
    module.runs.clear()
    module.handler = None
    return module


# --- argv, not source --------------------------------------------------------------------------

TRICKY_TEXTS = [
    "plain",
    'say "hi"',
    "back\\slash \\n not a newline",
    "line one\nline two\r\nline three",
    "unicode: café 日本語 👨‍👩‍👧 🇫🇷 e\u0301",
    '" & (do shell script "rm -rf ~") & "',
    'end run\non run argv\ndo shell script "id"',
    "-e 'do shell script \"id\"'",
    "'single' and `backticks` and $(subshell)",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_text_and_guid_travel_only_as_argv_and_the_script_comes_on_stdin(sender, osa, text):
    sender.send(DM, text)

    [call] = osa.calls()
    assert call["argv"] == ["-", text, DM]
    assert call["stdin"] == SEND_SCRIPT
    assert text not in call["stdin"]


def test_send_script_reads_text_and_guid_from_argv():
    assert SEND_SCRIPT.startswith("on run argv")
    assert "(item 1 of argv)" in SEND_SCRIPT
    assert "chat id (item 2 of argv)" in SEND_SCRIPT
    assert "POSIX file (item 1 of argv)" in SEND_FILE_SCRIPT
    assert "participant (item 2 of argv)" in SEND_PARTICIPANT_SCRIPT
    assert "service type = iMessage" in SEND_PARTICIPANT_SCRIPT


def test_lone_surrogates_and_nul_are_made_sendable(sender, osa):
    sender.send(DM, "a\ud800b\x00c\ud83d\ude00")

    [call] = osa.calls()
    assert call["argv"][1] == "a\ufffdbc\U0001f600"


def test_a_successful_send_reports_its_parts(sender, osa):
    result = sender.send(DM, "hello")

    assert result.parts_total == 1
    assert [c["argv"][1:] for c in osa.calls()] == [["hello", DM]]


# --- GUID forms (macOS 26) ---------------------------------------------------------------------


def test_any_dm_guid_falls_back_to_imessage_then_sms(sender, osa):
    osa.mode("fail-1728", "fail-1728", "ok")

    sender.send(DM, "hi")

    assert [c["argv"][2] for c in osa.calls()] == [DM, "iMessage;-;+15555550123", "SMS;-;+15555550123"]


def test_imessage_guid_tries_any_before_sms(sender, osa):
    osa.mode("fail-1728", "ok")

    sender.send("iMessage;-;+15555550123", "hi")

    assert [c["argv"][2] for c in osa.calls()] == ["iMessage;-;+15555550123", DM]


def test_group_guid_forms_keep_the_plus_and_never_use_participant(sender, osa):
    osa.mode("fail-1728")

    with pytest.raises(SendError) as err:
        sender.send(GROUP, "hi")

    assert [c["argv"][2] for c in osa.calls()] == [GROUP, "iMessage;+;chat123456789", "SMS;+;chat123456789"]
    assert all(c["stdin"] == SEND_SCRIPT for c in osa.calls())
    assert err.value.code == -1728
    assert "Messages cannot find chat any;+;chat123456789" in err.value.message


def test_dm_finally_falls_back_to_participant_of_the_imessage_account(sender, osa):
    osa.mode("fail-1728", "fail-1728", "fail-1728", "ok")

    sender.send(DM, "hi")

    last = osa.calls()[-1]
    assert last["stdin"] == SEND_PARTICIPANT_SCRIPT
    assert last["argv"] == ["-", "hi", "+15555550123"]


def test_email_dm_can_use_the_participant_fallback(sender, osa):
    osa.mode("fail-1728", "fail-1728", "fail-1728", "ok")

    sender.send("any;-;me@example.com", "hi")

    last = osa.calls()[-1]
    assert (last["stdin"], last["argv"]) == (SEND_PARTICIPANT_SCRIPT, ["-", "hi", "me@example.com"])


def test_dm_whose_identifier_is_not_a_handle_gets_no_participant_fallback(sender, osa):
    osa.mode("fail-1728")

    with pytest.raises(SendError):
        sender.send("any;-;chat987", "hi")

    assert all(c["stdin"] == SEND_SCRIPT for c in osa.calls())
    assert len(osa.calls()) == 3


def test_exhausted_forms_name_every_form_tried(sender, osa):
    osa.mode("fail-1728")

    with pytest.raises(SendError) as err:
        sender.send(DM, "hi")

    assert len(osa.calls()) == 4
    assert err.value.code == -1728
    assert err.value.sent_parts == 0
    for form in (DM, "iMessage;-;+15555550123", "SMS;-;+15555550123", "participant:+15555550123"):
        assert form in err.value.message


def test_the_accepted_form_is_remembered_for_the_next_send(sender, osa):
    osa.mode("fail-1728", "ok")
    sender.send(DM, "first")

    sender.send(DM, "second")

    calls = osa.calls()
    assert [c["argv"][2] for c in calls] == [DM, "iMessage;-;+15555550123", "iMessage;-;+15555550123"]


def test_later_parts_reuse_the_form_found_by_the_first(sender, osa):
    osa.mode("fail-1728", "ok")

    result = sender.send(DM, "aaaa bbbb", chunk_limit=4)

    assert [c["argv"][1:] for c in osa.calls()] == [
        ["aaaa", DM],
        ["aaaa", "iMessage;-;+15555550123"],
        ["bbbb", "iMessage;-;+15555550123"],
    ]
    assert result.parts_total == 2


# --- errors ------------------------------------------------------------------------------------


def test_not_authorized_explains_how_to_grant_automation(sender, osa):
    osa.mode("fail-1743")

    with pytest.raises(SendError) as err:
        sender.send(DM, "hi")

    assert err.value.code == -1743
    assert AUTOMATION_HELP in err.value.message
    assert "System Settings → Privacy & Security → Automation" in err.value.message
    assert len(osa.calls()) == 1  # not an unknown-chat error: no GUID retries


def test_a_hung_osascript_is_killed_and_reported(osa, state_dir, messages_dir):
    osa.mode("hang")
    sender = Sender(OsascriptBackend(), state_dir=state_dir, messages_dir=messages_dir, timeout=1.0)

    with pytest.raises(SendError) as err:
        sender.send(DM, "hi")

    assert "AppleScript timed out after 1 s" in err.value.message
    assert err.value.code is None
    [call] = osa.calls()
    with pytest.raises(ProcessLookupError):
        os.kill(call["pid"], 0)


def test_nonzero_exit_without_error_number(sender, osa):
    osa.mode("exit-1")

    with pytest.raises(SendError) as err:
        sender.send(DM, "hi")

    assert err.value.code is None
    assert "something went badly wrong" in err.value.message
    assert len(osa.calls()) == 1


def test_missing_osascript_says_macos_is_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(SendError, match="osascript not found"):
        OsascriptBackend().run(SEND_SCRIPT, ["hi", DM], 5)


def test_osascript_error_lines_parse_to_number_and_message():
    stderr = '45:94: execution error: Messages got an error: Can\u2019t get chat id "any;-;x". (-1728)\n'

    assert parse_osascript_error(stderr) == (
        -1728,
        'execution error: Messages got an error: Can\u2019t get chat id "any;-;x". (-1728)',
    )
    assert parse_osascript_error("boom") == (None, "boom")
    assert parse_osascript_error("") == (None, "")


def test_partial_failure_says_what_was_sent(sender, osa):
    osa.mode("ok", "exit-1")

    with pytest.raises(SendError) as err:
        sender.send(DM, "aaaa bbbb cccc", chunk_limit=4)

    assert err.value.sent_parts == 1
    assert err.value.message.startswith("sent 1 of 3 parts; part 2 failed: ")
    assert len(osa.calls()) == 2  # part 3 was not attempted


def test_partial_failure_on_a_file_names_the_file(sender, osa, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"png")
    osa.mode("ok", "exit-1")

    with pytest.raises(SendError) as err:
        sender.send(DM, "look", [str(photo)])

    assert err.value.sent_parts == 1
    assert err.value.message.startswith("sent 1 of 2 parts; part 2 (file photo.png) failed: ")


def test_failure_of_the_only_part(sender, osa):
    osa.mode("exit-1")

    with pytest.raises(SendError) as err:
        sender.send(DM, "hi")

    assert err.value.message.startswith("sent 0 of 1 part; part 1 failed: ")


def test_nothing_to_send(sender, osa):
    with pytest.raises(SendError, match="nothing to send"):
        sender.send(DM, "  \n ")
    assert osa.calls() == []


@pytest.mark.parametrize("guid", ["", "   ", "any;-;+1\x00"])
def test_invalid_chat_ids_are_refused(sender, osa, guid):
    with pytest.raises(SendError, match="invalid chat id"):
        sender.send(guid, "hi")
    assert osa.calls() == []


# --- chunking ----------------------------------------------------------------------------------


def _rejoins(chunks: list[str], text: str) -> bool:
    """True when `text` is the chunks with only white space put back at their boundaries."""
    pattern = r"\s*" + r"\s*".join(re.escape(c) for c in chunks) + r"\s*"
    return re.fullmatch(pattern, text) is not None


@settings(max_examples=300)
@given(text=st.text(max_size=300), limit=st.integers(1, 60), mode=st.sampled_from(["length", "newline"]))
def test_chunks_fit_the_limit_and_rejoin_to_the_text(text, limit, mode):
    chunks = chunk_text(text, limit, mode)

    if len(text) <= limit:
        assert chunks == [text]
        return
    assert all(1 <= len(c) <= limit for c in chunks)
    assert all(c.strip() for c in chunks)
    assert _rejoins(chunks, text)


@settings(max_examples=200)
@given(
    words=st.lists(st.text(st.characters(blacklist_categories=["Zs", "Cc", "Zl", "Zp"]), min_size=1), min_size=1),
    seps=st.lists(st.sampled_from([" ", "\n", "\n\n"]), min_size=1),
    limit=st.integers(1, 40),
)
def test_newline_mode_only_drops_separators(words, seps, limit):
    text = "".join(w + seps[i % len(seps)] for i, w in enumerate(words)).rstrip()

    chunks = chunk_text(text, limit, "newline")

    assert "".join(chunks).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")


CLUSTERS = [
    "a",
    "é",
    "e\u0301",
    "a\u0301\u0323",
    "👍🏽",
    "🇫🇷",
    "🇯🇵",
    "👨\u200d👩\u200d👧",
    "🏳\ufe0f\u200d🌈",
    "1\ufe0f\u20e3",
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "\u1112\u1161\u11ab",
    "日",
]


@settings(max_examples=300)
@given(clusters=st.lists(st.sampled_from(CLUSTERS), min_size=1, max_size=60), limit=st.integers(7, 40))
def test_length_chunks_never_split_a_grapheme_cluster(clusters, limit):
    text = "".join(clusters)
    boundaries = set()
    position = 0
    for cluster in clusters:
        position += len(cluster)
        boundaries.add(position)

    chunks = chunk_text(text, limit, "length")
    assert "".join(chunks) == text  # no white space, so nothing is dropped
    ends = set()
    position = 0
    for chunk in chunks:
        position += len(chunk)
        ends.add(position)
    assert ends <= boundaries


def test_no_chunk_starts_with_a_combining_mark():
    text = "e\u0301" * 50

    for chunk in chunk_text(text, 7, "length"):
        assert unicodedata.combining(chunk[0]) == 0
        assert len(chunk) <= 7


def test_a_surrogate_pair_in_str_data_is_never_split():
    text = "\ud83d\ude00" * 10  # UTF-16 data that was never joined into code points

    chunks = chunk_text(text, 3, "length")

    assert all(len(c) % 2 == 0 for c in chunks)
    assert "".join(chunks) == text


def test_a_cluster_longer_than_the_limit_is_cut_by_code_point():
    text = "a" + "\u0301" * 9

    assert chunk_text(text, 4, "length") == [
        "a\u0301\u0301\u0301",
        "\u0301\u0301\u0301\u0301",
        "\u0301\u0301",
    ]


def test_short_texts_come_back_whole():
    assert chunk_text("hello", 5) == ["hello"]
    assert chunk_text("", 5) == [""]


def test_length_mode_cuts_as_late_as_possible():
    assert chunk_text("abcdefghij", 4, "length") == ["abcd", "efgh", "ij"]


def test_newline_mode_prefers_a_paragraph_break_past_half_the_limit():
    text = "first line\nsecond\n\nthird paragraph"

    assert chunk_text(text, 25, "newline") == ["first line\nsecond", "third paragraph"]


def test_newline_mode_uses_a_line_break_when_the_paragraph_break_is_too_early():
    text = "ab\n\ncdefghijkl\nmnopqrstuvwxyz"

    assert chunk_text(text, 20, "newline") == ["ab\n\ncdefghijkl", "mnopqrstuvwxyz"]


def test_newline_mode_falls_back_to_a_space_then_a_hard_cut():
    assert chunk_text("hello wonderful world", 12, "newline") == ["hello", "wonderful", "world"]
    assert chunk_text("abcdefghij", 4, "newline") == ["abcd", "efgh", "ij"]


def test_newline_mode_cuts_at_crlf_line_breaks():
    text = "first line here\r\nsecond line\r\nthird"

    assert chunk_text(text, 20, "newline") == ["first line here", "second line\r\nthird"]


def test_newline_mode_keeps_indentation_after_a_break():
    text = "def f():\n    return 1\n\n    indented paragraph"

    chunks = chunk_text(text, 24, "newline")

    assert chunks == ["def f():\n    return 1", "    indented paragraph"]


def test_unknown_mode_cuts_by_length_like_the_official_server():
    assert chunk_text("abcdefghij", 4, "paragraph") == chunk_text("abcdefghij", 4, "length")


def test_a_long_all_white_space_text_has_no_chunks():
    assert chunk_text(" " * 30, 10) == []


def test_limit_below_one_is_an_error():
    with pytest.raises(ValueError):
        chunk_text("abc", 0)


def test_send_clamps_the_chunk_limit(sender, osa):
    result = sender.send(DM, "x" * (MAX_CHUNK_LIMIT + 1), chunk_limit=50_000)

    assert result.parts_total == 2
    assert [len(c["argv"][1]) for c in osa.calls()] == [MAX_CHUNK_LIMIT, 1]


# --- signature ---------------------------------------------------------------------------------


def test_with_signature_appends_or_leaves_alone():
    assert with_signature("hi", DEFAULT_SIGNATURE) == "hi\nSent by Claude"
    assert with_signature("hi", None) == "hi"
    assert with_signature("hi", "") == "hi"


def sent_texts(osa) -> list[str]:
    return [c["argv"][1] for c in osa.calls()]


def test_signature_goes_on_the_last_part_only(sender, osa):
    sender.send(DM, "aaaa bbbb", chunk_limit=30, chunk_mode="newline", signature=DEFAULT_SIGNATURE)

    assert sent_texts(osa) == ["aaaa bbbb\nSent by Claude"]
    osa.log.unlink()
    sender.send(DM, "a" * 20 + " " + "b" * 20, chunk_limit=40, signature=DEFAULT_SIGNATURE)
    texts = sent_texts(osa)
    assert len(texts) > 1 and texts[-1].endswith(DEFAULT_SIGNATURE)
    assert not any(DEFAULT_SIGNATURE in t for t in texts[:-1])


def test_signature_never_pushes_a_part_over_the_limit(sender, osa):
    sender.send(DM, "x" * 40, chunk_limit=30, signature=DEFAULT_SIGNATURE)

    assert all(len(t) <= 30 for t in sent_texts(osa))
    assert "".join(sent_texts(osa)) == "x" * 40 + DEFAULT_SIGNATURE


def test_no_signature_on_a_files_only_send(sender, osa, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("data")

    result = sender.send(DM, "", [str(doc)], signature=DEFAULT_SIGNATURE)

    assert result.parts_total == 1
    assert [c["stdin"] for c in osa.calls()] == [SEND_FILE_SCRIPT]


# --- files -------------------------------------------------------------------------------------


def test_missing_file_is_refused_before_anything_is_sent(sender, osa, tmp_path):
    with pytest.raises(SendError, match="file not found") as err:
        sender.send(DM, "see attached", [str(tmp_path / "nope.png")])
    assert err.value.sent_parts == 0
    assert osa.calls() == []


def test_directory_is_refused(sender, osa, tmp_path):
    with pytest.raises(SendError, match="cannot send a directory"):
        sender.send(DM, "x", [str(tmp_path)])
    assert osa.calls() == []


def test_file_over_100_mb_is_refused(sender, osa, tmp_path):
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: no real disk use

    with pytest.raises(SendError, match=r"file too large: .*max 100 MB"):
        sender.send(DM, "x", [str(big)])
    assert osa.calls() == []


def test_file_of_exactly_100_mb_is_accepted(sender, tmp_path):
    edge = tmp_path / "edge.bin"
    with edge.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES)

    assert sender.check_file(str(edge)) == edge.resolve()


def test_file_inside_the_state_dir_is_refused(sender, osa, state_dir):
    with pytest.raises(SendError, match="refusing to send channel state"):
        sender.send(DM, "x", [str(state_dir / "access.json")])
    assert osa.calls() == []


def test_symlink_into_the_state_dir_is_refused(sender, osa, state_dir, tmp_path):
    link = tmp_path / "innocent.txt"
    link.symlink_to(state_dir / "access.json")

    with pytest.raises(SendError, match="refusing to send channel state"):
        sender.send(DM, "x", [str(link)])
    assert osa.calls() == []


def test_state_dir_reached_through_a_symlinked_parent_is_refused(osa, tmp_path, messages_dir):
    real_state = tmp_path / "real-state"
    real_state.mkdir()
    (real_state / "access.json").write_text("{}")
    link_state = tmp_path / "linked-state"
    link_state.symlink_to(real_state)
    sender = Sender(OsascriptBackend(), state_dir=link_state, messages_dir=messages_dir)

    with pytest.raises(SendError, match="refusing to send channel state"):
        sender.send(DM, "x", [str(real_state / "access.json")])


def test_a_fifo_is_refused(sender, osa, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    with pytest.raises(SendError, match="not a regular file"):
        sender.send(DM, "x", [str(fifo)])


def test_files_are_staged_under_messages_and_sent_after_the_text(sender, osa, tmp_path, messages_dir):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG data")

    result = sender.send(DM, "look", [str(photo)])

    text_call, file_call = osa.calls()
    assert text_call["argv"] == ["-", "look", DM]
    assert file_call["stdin"] == SEND_FILE_SCRIPT
    staged = Path(file_call["argv"][1])
    assert file_call["argv"][2] == DM
    assert staged.parent.parent == messages_dir / STAGING_NAME
    assert re.fullmatch(r"[0-9a-f]{32}", staged.parent.name)
    assert staged.name == "photo.png"
    assert staged.read_bytes() == b"\x89PNG data"
    assert photo.read_bytes() == b"\x89PNG data"
    assert result.parts_total == 2


def test_each_file_gets_its_own_staging_folder(sender, osa, tmp_path):
    a = tmp_path / "a" / "same.txt"
    b = tmp_path / "b" / "same.txt"
    for f, body in ((a, "one"), (b, "two")):
        f.parent.mkdir()
        f.write_text(body)

    sender.send(DM, "", [str(a), str(b)])

    staged = [Path(c["argv"][1]) for c in osa.calls()]
    assert staged[0].parent != staged[1].parent
    assert [p.read_text() for p in staged] == ["one", "two"]


def test_file_to_participant_fallback_uses_the_file_script(sender, osa, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("data")
    osa.mode("fail-1728", "fail-1728", "fail-1728", "ok")

    sender.send(DM, "", [str(doc)])

    assert osa.calls()[-1]["stdin"] == SEND_FILE_PARTICIPANT_SCRIPT


def _stage_dir(outbox: Path, name: str, mtime: float) -> Path:
    d = outbox / name
    d.mkdir(parents=True)
    (d / "file.txt").write_text("x")
    os.utime(d, (mtime, mtime))
    return d


def test_cleanup_removes_only_staged_folders_older_than_the_limit(sender, messages_dir):
    outbox = messages_dir / STAGING_NAME
    now = 1_800_000_000.0
    old = _stage_dir(outbox, "old", now - 601)
    fresh = _stage_dir(outbox, "fresh", now - 599)

    removed = sender.cleanup_staged(600, now=now)

    assert removed == 1
    assert not old.exists()
    assert fresh.exists()


def test_cleanup_without_an_outbox_is_a_no_op(sender):
    assert sender.cleanup_staged(0, now=0) == 0


def test_each_send_cleans_up_old_staged_copies_first(sender, messages_dir):
    outbox = messages_dir / STAGING_NAME
    old = _stage_dir(outbox, "old", 1_000_000.0)  # 1970: long expired

    sender.send(DM, "hi")

    assert not old.exists()


def test_staging_failure_is_a_send_error(osa, state_dir, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("file where the Messages dir should be")
    doc = tmp_path / "doc.txt"
    doc.write_text("data")
    sender = Sender(OsascriptBackend(), state_dir=state_dir, messages_dir=blocker)

    with pytest.raises(SendError, match=r"part 2 \(file doc.txt\) failed: could not stage doc.txt"):
        sender.send(DM, "hi", [str(doc)])


# --- AppleScriptBackend (py-applescript) -------------------------------------------------------


def test_applescript_backend_passes_argv_and_compiles_each_script_once(fake_applescript):
    backend = AppleScriptBackend()

    backend.run(SEND_SCRIPT, ["one", DM], 5)
    backend.run(SEND_SCRIPT, ["two", DM], 5)
    backend.run(SEND_FILE_SCRIPT, ["/tmp/x", DM], 5)

    assert fake_applescript.compiled == [SEND_SCRIPT, SEND_FILE_SCRIPT]
    assert fake_applescript.runs == [
        (SEND_SCRIPT, ("one", DM)),
        (SEND_SCRIPT, ("two", DM)),
        (SEND_FILE_SCRIPT, ("/tmp/x", DM)),
    ]


def test_applescript_backend_returns_the_result_as_text(fake_applescript):
    fake_applescript.handler = lambda source, args: 42

    assert AppleScriptBackend().run(SEND_SCRIPT, ["x", DM], 5) == "42"


def test_applescript_backend_maps_script_errors(fake_applescript):
    def handler(source, args):
        raise fake_applescript.ScriptError("Not authorized to send Apple events to Messages.", -1743)

    fake_applescript.handler = handler

    with pytest.raises(SendError) as err:
        AppleScriptBackend().run(SEND_SCRIPT, ["x", DM], 5)
    assert err.value.code == -1743


def test_sender_on_applescript_backend_retries_guid_forms(fake_applescript, state_dir, messages_dir):
    def handler(source, args):
        if args[1].startswith("any;"):
            raise fake_applescript.ScriptError(f'Can\u2019t get chat id "{args[1]}".', -1728)

    fake_applescript.handler = handler
    sender = Sender(AppleScriptBackend(), state_dir=state_dir, messages_dir=messages_dir)

    sender.send(DM, "hi")

    assert [args[1] for _, args in fake_applescript.runs] == [DM, "iMessage;-;+15555550123"]
    assert len(fake_applescript.compiled) == 1


def test_applescript_backend_times_out_and_never_sends_a_queued_call_late(fake_applescript):
    release = threading.Event()
    first_started = threading.Event()

    def handler(source, args):
        if args[0] == "stuck":
            first_started.set()
            release.wait()

    fake_applescript.handler = handler
    backend = AppleScriptBackend()
    stuck_error: list[SendError] = []

    def run_stuck():
        try:
            backend.run(SEND_SCRIPT, ["stuck", DM], 0.2)
        except SendError as exc:
            stuck_error.append(exc)

    worker = threading.Thread(target=run_stuck)
    worker.start()
    assert first_started.wait(10)
    with pytest.raises(SendError, match="waiting for an earlier AppleScript call") as queued:
        backend.run(SEND_SCRIPT, ["queued", DM], 0.2)
    worker.join(10)
    release.set()

    backend.run(SEND_SCRIPT, ["after", DM], 10)

    assert "timed out after 0.2 s" in queued.value.message
    assert [e.message.startswith("AppleScript timed out after 0.2 s;") for e in stuck_error] == [True]
    assert [args[0] for _, args in fake_applescript.runs] == ["stuck", "after"]


def test_applescript_backend_without_the_module_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "applescript", None)  # makes `import applescript` fail

    with pytest.raises(SendError, match="py-applescript is not importable"):
        AppleScriptBackend().run(SEND_SCRIPT, ["x", DM], 5)


def test_default_backend_prefers_py_applescript_when_importable(fake_applescript):
    assert isinstance(default_backend(), AppleScriptBackend)


def test_default_backend_falls_back_to_osascript(monkeypatch):
    monkeypatch.setitem(sys.modules, "applescript", None)

    assert isinstance(default_backend(), OsascriptBackend)


def test_module_never_prints(capsys, sender, osa):
    osa.mode("fail-1728", "ok")
    sender.send(DM, "hi")

    assert capsys.readouterr().out == ""
    assert sender_mod.log.name == "imessage_channel.sender"
