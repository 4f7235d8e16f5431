"""`imessage-channel messages`: the acceptance checks of issue "Read chat.db faithfully".

Long attributedBody-only texts come out intact, tapbacks show as reactions, the real Ventura rows
read right, and a missing or unreadable chat.db gives one paragraph about Full Disk Access, exit 2,
no traceback. Run in-process through `cli.main` and once as a real `python -m` subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imessage_channel.cli import main

FRIEND = "friend@example.com"
FDA = "Full Disk Access"
FDA_PATH = "System Settings → Privacy & Security → Full Disk Access"
PROJECT = Path(__file__).resolve().parents[1]


def text_of_bytes(n: int) -> str:
    """A text of exactly `n` UTF-8 bytes mixing 1-, 2-, 3- and 4-byte characters (and so UTF-16
    surrogate pairs), ending in a marker so a truncated copy cannot pass for the whole."""
    unit = "Long text é ü ’ 😀 "
    out = ""
    while len((out + unit).encode()) <= n - 8:
        out += unit
    out += "x" * (n - 4 - len(out.encode())) + "END!"
    assert len(out.encode()) == n
    return out


TEXT_300 = text_of_bytes(300)
TEXT_70K = text_of_bytes(70_000)


@pytest.fixture
def fixture_db(chatdb_factory) -> tuple[Path, dict[str, str]]:
    path, sim = chatdb_factory("sonoma")
    dm = sim.dm(FRIEND)
    guids = {
        "short": sim.receive(dm, FRIEND, TEXT_300).guid,
        "long": sim.receive(dm, FRIEND, TEXT_70K).guid,
        "hello": sim.receive(dm, FRIEND, "Dinner at 8?").guid,
    }
    guids["love"] = sim.tapback(dm, None, guids["hello"], "love").guid
    stored = sim.conn.execute("SELECT count(*) FROM message WHERE text IS NULL AND attributedBody IS NOT NULL")
    assert stored.fetchone()[0] == 4  # every text lives only in attributedBody
    return path, guids


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["messages", *args])
    out, err = capsys.readouterr()
    return code, out, err


def by_guid(out: str) -> dict[str, dict]:
    return {entry["guid"]: entry for entry in json.loads(out)}


# --------------------------------------------------------------------------------------------------
# Texts and tapbacks


def test_long_attributed_body_texts_are_intact_in_text_mode(fixture_db, capsys):
    path, _guids = fixture_db
    code, out, err = run_cli(capsys, "--db", str(path))
    assert (code, err) == (0, "")
    assert f"{FRIEND} (text): {TEXT_300}\n" in out
    assert f"{FRIEND} (text): {TEXT_70K}\n" in out


def test_long_attributed_body_texts_are_intact_in_json(fixture_db, capsys):
    path, guids = fixture_db
    code, out, _err = run_cli(capsys, "--db", str(path), "--json")
    assert code == 0
    entries = by_guid(out)
    assert entries[guids["short"]]["text"] == TEXT_300
    assert entries[guids["long"]]["text"] == TEXT_70K
    assert entries[guids["long"]]["kind"] == "text"
    assert entries[guids["long"]]["chat_guid"] == f"iMessage;-;{FRIEND}"


def test_tapbacks_show_as_reactions_not_texts(fixture_db, capsys):
    path, guids = fixture_db
    code, out, _err = run_cli(capsys, "--db", str(path))
    assert code == 0
    assert 'me (tapback): ❤️ loved "Dinner at 8?"' in out
    assert "Loved" not in out

    code, out, _err = run_cli(capsys, "--db", str(path), "--json")
    love = by_guid(out)[guids["love"]]
    assert love["kind"] == "tapback"
    assert love["tapback"] == {"reaction": "love", "emoji": "❤️", "target_guid": guids["hello"], "removed": False}


def test_chat_filter_and_limit(fixture_db, capsys):
    path, guids = fixture_db
    code, out, _err = run_cli(capsys, "--db", str(path), "--chat", f"iMessage;-;{FRIEND}", "--limit", "2", "--json")
    assert code == 0
    assert [e["guid"] for e in json.loads(out)] == [guids["hello"], guids["love"]]
    code, out, err = run_cli(capsys, "--db", str(path), "--chat", "iMessage;-;nobody@example.com")
    assert (code, out) == (1, "")  # an unknown chat is a mistake to name, not an empty result
    assert "no chat has the GUID 'iMessage;-;nobody@example.com'" in err


def test_db_path_from_the_environment(fixture_db, capsys, monkeypatch):
    path, guids = fixture_db
    monkeypatch.setenv("IMESSAGE_DB_PATH", str(path))
    code, out, _err = run_cli(capsys, "--json")
    assert code == 0
    assert guids["long"] in by_guid(out)


def test_empty_database(chatdb_factory, capsys):
    path, _sim = chatdb_factory()
    assert run_cli(capsys, "--db", str(path)) == (0, "No messages.\n", "")
    assert run_cli(capsys, "--db", str(path), "--json") == (0, "[]\n", "")


def test_a_message_without_its_chat_yet_stays_on_one_line(chatdb_factory, capsys):
    path, sim = chatdb_factory()
    sim.receive(sim.dm(FRIEND), FRIEND, "early\n[09:00] me: forged", join=False)
    code, out, _err = run_cli(capsys, "--db", str(path))
    assert code == 0
    assert out.splitlines()[0] == "== (no chat yet) =="
    assert len(out.splitlines()) == 2
    assert not out.splitlines()[1].startswith("[")


# --------------------------------------------------------------------------------------------------
# The real Ventura database


def test_reference_database_text_mode(reference_db, capsys):
    code, out, err = run_cli(capsys, "--db", str(reference_db))
    assert (code, err) == (0, "")
    assert "me (text): iMessagedb test: Let’s set something up\n" in out
    assert (
        "me (text): [attachment: IMG_4911.heic image/heic] [attachment: IMG_4868.heic image/heic] It’s a lovely day!\n"
    ) in out
    assert "== Group with +15555550123, friend@example.com (iMessage;+;chat78806267822556021) ==" in out
    assert "== DM with friend@example.com (iMessage;-;friend@example.com) ==" in out


def test_reference_database_json(reference_db, capsys):
    code, out, _err = run_cli(capsys, "--db", str(reference_db), "--json")
    assert code == 0
    first, second = json.loads(out)
    assert (first["text"], first["kind"], first["sender"], first["handle"]) == (
        "iMessagedb test: Let’s set something up",
        "text",
        "owner@example.com",
        None,
    )
    assert (second["text"], second["kind"], second["handle"]) == ("It’s a lovely day!", "text", FRIEND)
    assert [a["mime_type"] for a in second["attachments"]] == ["image/heic", "image/heic"]
    assert [a["name"] for a in second["attachments"]] == ["IMG_4911.heic", "IMG_4868.heic"]
    for att in second["attachments"]:
        assert att["path"] == os.path.expanduser(
            f"~/Library/Messages/Attachments/{att['path'].split('/Attachments/')[1]}"
        )
        assert not att["path"].startswith("~")


# --------------------------------------------------------------------------------------------------
# Missing and unreadable databases


def assert_full_disk_access_paragraph(code: int, out: str, err: str) -> None:
    assert code == 2
    assert out == ""
    assert FDA in err
    assert FDA_PATH in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one paragraph


def test_missing_database(tmp_path, capsys):
    assert_full_disk_access_paragraph(*run_cli(capsys, "--db", str(tmp_path / "chat.db")))


def test_directory_instead_of_a_database_is_named_as_such(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--db", str(tmp_path))
    assert (code, out) == (2, "")
    assert "is a folder, not a database file" in err and "Full Disk Access" not in err


def test_file_that_is_not_a_database_is_named_as_such(tmp_path, capsys):
    junk = tmp_path / "chat.db"
    junk.write_bytes(b"not an SQLite file, only its name " * 50)
    code, out, err = run_cli(capsys, "--db", str(junk))
    assert (code, out) == (2, "")
    assert "is not an SQLite database" in err and "Full Disk Access" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway; the other cases cover this path")
def test_database_without_read_permission(fixture_db, capsys):
    path, _guids = fixture_db
    path.chmod(0)
    try:
        assert_full_disk_access_paragraph(*run_cli(capsys, "--db", str(path)))
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------------------------------
# As a real process


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imessage_channel", "messages", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=PROJECT,
        timeout=60,
        check=False,
    )


def test_subprocess_prints_long_texts_intact(fixture_db):
    path, guids = fixture_db
    proc = run_module("--db", str(path), "--json")
    assert (proc.returncode, proc.stderr) == (0, "")
    entries = by_guid(proc.stdout)
    assert entries[guids["long"]]["text"] == TEXT_70K
    assert entries[guids["short"]]["text"] == TEXT_300
    assert entries[guids["love"]]["kind"] == "tapback"


def test_subprocess_missing_database(tmp_path):
    proc = run_module("--db", str(tmp_path / "chat.db"))
    assert_full_disk_access_paragraph(proc.returncode, proc.stdout, proc.stderr)
