"""`imessage-channel access …`: the official skill's verbs from a shell, on the shared access.json.

Every verb, the validation errors (exit 2, one paragraph, nothing written), handle normalisation,
`--json`, and the lock: the CLI and another process writing at the same time lose nothing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from fixtures.addressbook_builder import Card, create_addressbook_dir
from imessage_channel import access as access_mod
from imessage_channel.access import PAIRED_CONFIRMATION, Access, AccessStore
from imessage_channel.cli import main

PROJECT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STRANGER = "+15559876543"
DM_STRANGER = f"iMessage;-;{STRANGER}"
GROUP = "iMessage;+;chat123456789"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv("IMESSAGE_STATE_DIR", str(folder))
    monkeypatch.delenv("IMESSAGE_ACCESS_MODE", raising=False)
    # Phone numbers typed without a country code are read in the owner's region: no chat.db here, so the
    # locale decides, and it says US (a US user's terminal).
    monkeypatch.setenv("IMESSAGE_DB_PATH", str(tmp_path / "no-messages" / "chat.db"))
    for name in ("LC_ALL", "LC_TELEPHONE", "LC_CTYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    # The owner's Contacts: a fixture folder (empty unless a test fills it), never the real one.
    monkeypatch.setenv("IMESSAGE_ADDRESSBOOK_DIR", str(tmp_path / "AddressBook"))
    monkeypatch.delenv("IMESSAGE_CONTACTS", raising=False)
    return folder


JANE = Card("Jane", "Appleseed", phones=["(415) 555-0132"], emails=["Jane@Example.com"])
KATE = Card("Kate", "Bell", phones=["+1 415 555 0199"])
KATE_AT_WORK = Card("Kate", "Zakroff", organization="Acme", emails=["kate@acme.test"])


@pytest.fixture
def book(tmp_path: Path) -> Path:
    """The owner's Contacts: Jane (a phone and an email), two Kates."""
    return create_addressbook_dir(tmp_path / "AddressBook", main=[JANE, KATE, KATE_AT_WORK])


def access_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["access", *args])
    out, err = capsys.readouterr()
    return code, out, err


def stored(state: Path) -> dict:
    return json.loads((state / "access.json").read_text(encoding="utf-8"))


def seed(state: Path, **fields: object) -> None:
    """Write access.json with these top-level fields (raw JSON names)."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "access.json").write_text(json.dumps(fields), encoding="utf-8")


def issue_code(state: Path, sender: str, chat: str, at: datetime) -> str:
    """Record a pairing code for `sender` as the server does, at `at`; return the code."""
    store = AccessStore(state)
    box: list[str] = []

    def step(a: Access) -> Access:
        new, outcome = access_mod.issue_pairing_code(a, sender, chat, at)
        assert outcome.code is not None
        box.append(outcome.code)
        return new

    store.update(step)
    return box[-1]


def assert_refused(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("imessage-channel access: ")
    assert "Traceback" not in err
    assert err.count("\n") == 1  # one paragraph
    for word in words:
        assert word in err, err


# --- status -----------------------------------------------------------------------------------


def test_status_of_a_fresh_install_shows_the_defaults_and_writes_nothing(state, capsys):
    code, out, err = access_cli(capsys)
    assert code == 0 and err == ""
    assert "DM policy: allowlist" in out
    assert "Allowed (0): nobody yet (self-chat always works)" in out
    assert "Pending pairings (0)" in out
    assert "Groups (0)" in out
    assert not (state / "access.json").exists()


def test_status_lists_policy_allowlist_pending_codes_with_their_age_and_groups(state, capsys):
    code_ = issue_code(state, STRANGER, DM_STRANGER, T0)
    seed(
        state,
        **{
            **stored(state),
            "dmPolicy": "pairing",
            "allowFrom": ["friend@icloud.com"],
            "groups": {GROUP: {"requireMention": False, "allowFrom": ["+15550001111"]}},
        },
    )
    with freeze_time(T0 + timedelta(minutes=12)):
        code, out, _ = access_cli(capsys)
    assert code == 0
    assert "DM policy: pairing" in out
    assert "Allowed (1): friend@icloud.com" in out
    assert f"  {code_}  {STRANGER}  asked 12 min ago, expires in 48 min" in out
    assert f"  {GROUP}  (every message; from +15550001111)" in out


def test_status_json_gives_the_file_and_pending_ages(state, capsys):
    code_ = issue_code(state, STRANGER, DM_STRANGER, T0)
    with freeze_time(T0 + timedelta(minutes=90)):
        code, out, _ = access_cli(capsys, "--json")
    data = json.loads(out)
    assert code == 0
    assert data["path"] == str(state / "access.json")
    assert data["access"]["pending"][code_]["senderId"] == STRANGER
    [pending] = data["pending"]
    assert pending == {
        "code": code_,
        "senderId": STRANGER,
        "chatId": DM_STRANGER,
        "ageSeconds": 90 * 60,
        "expiresInSeconds": -30 * 60,
        "expired": True,
    }


# --- allow / remove -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        ("+1 (555) 123-4567", "+15551234567"),
        ("15551234567", "+15551234567"),
        ("+1.555.123.4567", "+15551234567"),
        ("Friend@iCloud.COM", "friend@icloud.com"),
        ("  friend@icloud.com ", "friend@icloud.com"),
    ],
)
def test_allow_stores_the_normalised_handle(state, capsys, typed, kept):
    code, out, _ = access_cli(capsys, "allow", typed)
    assert code == 0
    assert out == f"Allowed {kept}.\n"
    assert stored(state)["allowFrom"] == [kept]


def test_allow_twice_in_another_notation_keeps_one_entry(state, capsys):
    access_cli(capsys, "allow", "+15551234567")
    code, out, _ = access_cli(capsys, "allow", "1 555 123 4567")
    assert code == 0
    assert out == "+15551234567 is already allowed.\n"
    assert stored(state)["allowFrom"] == ["+15551234567"]


def test_the_file_is_pretty_printed_private_and_keeps_unknown_keys(state, capsys):
    seed(state, dmPolicy="allowlist", allowFrom=[], futureKey={"nested": [1]}, groups={GROUP: {"nick": "club"}})
    access_cli(capsys, "allow", "friend@icloud.com")
    text = (state / "access.json").read_text(encoding="utf-8")
    assert text.startswith('{\n  "dmPolicy": "allowlist",\n  "allowFrom": [\n    "friend@icloud.com"\n  ],')
    assert text.endswith("}\n")
    data = json.loads(text)
    assert data["futureKey"] == {"nested": [1]}
    assert data["groups"][GROUP]["nick"] == "club"
    assert stat.S_IMODE(os.stat(state / "access.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700


def test_remove_matches_by_digits_and_by_email_case(state, capsys):
    seed(state, allowFrom=["+15551234567", "friend@icloud.com", "other@icloud.com"])
    assert access_cli(capsys, "remove", "+1 (555) 123-4567")[0] == 0
    code, out, _ = access_cli(capsys, "remove", "FRIEND@icloud.com")
    assert code == 0 and out == "Removed friend@icloud.com from the allowlist.\n"
    assert stored(state)["allowFrom"] == ["other@icloud.com"]


def test_removing_someone_not_allowed_changes_nothing(state, capsys):
    seed(state, allowFrom=["other@icloud.com"])
    before = (state / "access.json").read_bytes()
    code, out, _ = access_cli(capsys, "remove", "friend@icloud.com")
    assert code == 0
    assert "was not in the allowlist; nothing changed" in out
    assert (state / "access.json").read_bytes() == before


@pytest.mark.parametrize(
    ("handle", "words"),
    [
        ("", ["is not a handle"]),
        ("john smith", ["is not a handle", "email address", "phone"]),
        ("a@b@c", ["is not a handle"]),
        ("+1", ["is not a handle"]),
        ("../evil", ["is not a handle"]),
        ("iMessage;-;+15551234567", ["chat GUID", "access allow +15551234567"]),
        ("iMessage;+;chat123", ["group chat GUID", "group add"]),
    ],
)
def test_a_bad_handle_is_refused_and_nothing_is_written(state, capsys, handle, words):
    code, out, err = access_cli(capsys, "allow", handle)
    assert_refused(code, out, err, *words)
    assert not (state / "access.json").exists()


# --- pair / deny --------------------------------------------------------------------------------


def test_pair_allows_the_sender_drops_the_code_and_writes_the_approval(state, capsys):
    other = issue_code(state, "+15550000001", "iMessage;-;+15550000001", T0)
    code_ = issue_code(state, STRANGER, DM_STRANGER, T0)
    with freeze_time(T0 + timedelta(minutes=5)):
        code, out, _ = access_cli(capsys, "pair", f" {code_.upper()} ")
    assert code == 0
    assert STRANGER in out and PAIRED_CONFIRMATION in out
    data = stored(state)
    assert data["allowFrom"] == [STRANGER]
    assert list(data["pending"]) == [other]
    assert (state / "approved" / STRANGER).read_text(encoding="utf-8") == DM_STRANGER


def test_after_pair_the_server_texts_the_confirmation_to_the_senders_chat(state, capsys, chatdb_factory):
    from imessage_channel.chatdb import ChatDB
    from imessage_channel.inbound import Approvals, Send

    path, sim = chatdb_factory("sonoma")
    sim.receive(sim.dm(STRANGER), STRANGER, "hi, may I?")  # the text that got the code
    code_ = issue_code(state, STRANGER, DM_STRANGER, T0)
    with freeze_time(T0):
        access_cli(capsys, "pair", code_)
    with ChatDB(path) as db:
        assert Approvals(AccessStore(state), db).confirmations() == [Send(DM_STRANGER, PAIRED_CONFIRMATION)]
    assert not (state / "approved" / STRANGER).exists()


def test_pair_with_an_unknown_code_lists_the_pending_ones(state, capsys):
    code_ = issue_code(state, STRANGER, DM_STRANGER, T0)
    with freeze_time(T0):
        code, out, err = access_cli(capsys, "pair", "abcdef")
    assert_refused(code, out, err, "No pending pairing has the code 'abcdef'", f"{code_} ({STRANGER})")
    assert stored(state)["allowFrom"] == []
    assert not (state / "approved").exists()


def test_pair_with_an_expired_code_is_refused(state, capsys):
    code_ = issue_code(state, STRANGER, DM_STRANGER, T0)
    with freeze_time(T0 + timedelta(hours=1, seconds=1)):
        code, out, err = access_cli(capsys, "pair", code_)
    assert_refused(code, out, err, "expired", "text again")
    assert stored(state)["allowFrom"] == []
    assert code_ in stored(state)["pending"]
    assert not (state / "approved").exists()


def test_deny_drops_the_code_without_allowing(state, capsys):
    code_ = issue_code(state, STRANGER, DM_STRANGER, T0)
    code, out, _ = access_cli(capsys, "deny", code_)
    assert code == 0
    assert out == f"Denied pairing {code_} from {STRANGER}.\n"
    assert stored(state)["pending"] == {}
    assert stored(state)["allowFrom"] == []


def test_deny_of_an_unknown_code_is_refused(state, capsys):
    code, out, err = access_cli(capsys, "deny", "abcdef")
    # as helpful as `pair`: the pending codes, and what a code is
    assert_refused(code, out, err, "No pending pairing has the code 'abcdef'", "Pending codes: none", "6 characters")


# --- policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pairing", "allowlist", "disabled", "PAIRING"])
def test_policy_sets_dm_policy(state, capsys, mode):
    seed(state, dmPolicy="disabled" if mode.lower() != "disabled" else "allowlist")
    code, out, _ = access_cli(capsys, "policy", mode)
    assert code == 0
    assert stored(state)["dmPolicy"] == mode.lower()
    assert out.startswith(f"DM policy set to {mode.lower()}: ")


def test_policy_already_in_force_changes_nothing(state, capsys):
    code, out, _ = access_cli(capsys, "policy", "allowlist")
    assert code == 0
    assert out.startswith("DM policy is already allowlist: ")
    assert not (state / "access.json").exists()


def test_an_unknown_policy_is_refused_with_the_choices(state, capsys):
    code, out, err = access_cli(capsys, "policy", "open")
    assert_refused(code, out, err, "Unknown policy 'open'", "allowlist", "pairing", "disabled")
    assert not (state / "access.json").exists()


# --- groups ------------------------------------------------------------------------------------


def test_group_add_defaults_to_mention_required_and_warns_without_patterns(state, capsys):
    code, out, _ = access_cli(capsys, "group", "add", GROUP)
    assert code == 0
    assert stored(state)["groups"] == {GROUP: {"requireMention": True, "allowFrom": []}}
    assert "no mentionPatterns are set" in out


def test_group_add_with_no_mention_and_allow_list(state, capsys):
    code, out, _ = access_cli(
        capsys, "group", "add", GROUP, "--no-mention", "--allow", "Bob@iCloud.com, +1 555 000 1111"
    )
    assert code == 0
    assert stored(state)["groups"][GROUP] == {"requireMention": False, "allowFrom": ["bob@icloud.com", "+15550001111"]}
    assert "mentionPatterns" not in out


def test_group_add_again_replaces_the_settings_and_keeps_unknown_keys(state, capsys):
    seed(
        state,
        groups={GROUP: {"requireMention": False, "allowFrom": ["x@y.com"], "nick": "club"}},
        mentionPatterns=["c"],
    )
    access_cli(capsys, "group", "add", GROUP)
    assert stored(state)["groups"][GROUP] == {"requireMention": True, "allowFrom": [], "nick": "club"}


@pytest.mark.parametrize(
    ("guid", "words"),
    [
        ("iMessage;-;+15551234567", ["one-to-one chat", "access allow +15551234567"]),
        ("chat123", ["not a group chat GUID"]),
    ],
)
def test_group_add_refuses_what_is_not_a_group(state, capsys, guid, words):
    assert_refused(*access_cli(capsys, "group", "add", guid), *words)


def test_group_add_refuses_a_bad_member_handle(state, capsys):
    assert_refused(*access_cli(capsys, "group", "add", GROUP, "--allow", "bob@icloud.com,not a handle"), "not a handle")
    assert not (state / "access.json").exists()


def test_group_rm_matches_the_guid_under_another_service_prefix(state, capsys):
    seed(state, groups={GROUP: {}, "iMessage;+;chat999": {}})
    code, _, _ = access_cli(capsys, "group", "rm", "any;+;chat123456789")
    assert code == 0
    assert list(stored(state)["groups"]) == ["iMessage;+;chat999"]


def test_group_rm_of_a_group_not_enabled_changes_nothing(state, capsys):
    code, out, _ = access_cli(capsys, "group", "rm", GROUP)
    assert code == 0 and "was not enabled; nothing changed" in out


# --- set -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("textChunkLimit", "2000", 2000),
        ("textChunkLimit", "10000", 10000),
        ("chunkMode", "newline", "newline"),
        ("chunkMode", "LENGTH", "length"),
        ("mentionPatterns", '["^claude\\\\b", "@claude"]', ["^claude\\b", "@claude"]),
        ("mentionPatterns", "^hey claude", ["^hey claude"]),
        ("mentionPatterns", "[]", []),
        ("appendSignature", "false", False),
        ("appendSignature", "True", True),
    ],
)
def test_set_writes_the_setting(state, capsys, key, value, expected):
    code, out, _ = access_cli(capsys, "set", key, value)
    assert code == 0
    assert stored(state)[key] == expected
    assert out.startswith(f"{key} = ")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("textChunkLimit", "abc", ["whole number"]),
        ("textChunkLimit", "2.5", ["whole number"]),
        ("textChunkLimit", "0", ["between 1 and 10000"]),
        ("textChunkLimit", "10001", ["between 1 and 10000"]),
        ("chunkMode", "paragraph", ["`length`", "`newline`"]),
        ("mentionPatterns", "(claude", ["not a valid regular expression"]),
        ("mentionPatterns", '["ok", "[z-a]"]', ["'[z-a]' is not a valid regular expression"]),
        ("mentionPatterns", '["^claude"', ["not a JSON array"]),
        ("mentionPatterns", "[1, 2]", ["array of strings"]),
        ("mentionPatterns", '[""]', ["empty pattern"]),
        ("appendSignature", "maybe", ["`true` or `false`"]),
        ("ackReaction", "x", ["Unknown setting 'ackReaction'", "textChunkLimit"]),
    ],
)
def test_set_refuses_bad_values_and_writes_nothing(state, capsys, key, value, words):
    assert_refused(*access_cli(capsys, "set", key, value), *words)
    assert not (state / "access.json").exists()


# --- output modes --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_output_for_a_change(state, capsys, where):
    args = ["--json", "allow", "friend@icloud.com"] if where == "before" else ["allow", "friend@icloud.com", "--json"]
    code, out, _ = access_cli(capsys, *args)
    data = json.loads(out)
    assert code == 0
    assert data["changed"] is True
    assert data["handle"] == "friend@icloud.com"
    assert data["access"]["allowFrom"] == ["friend@icloud.com"]


def test_static_mode_edits_the_file_and_says_a_restart_is_needed(state, capsys, monkeypatch):
    monkeypatch.setenv("IMESSAGE_ACCESS_MODE", "static")
    code, _, err = access_cli(capsys, "allow", "friend@icloud.com")
    assert code == 0
    assert stored(state)["allowFrom"] == ["friend@icloud.com"]
    assert "restart" in err


def test_as_a_real_command_errors_are_one_paragraph_without_traceback(tmp_path):
    env = {**os.environ, "IMESSAGE_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run(
        [sys.executable, "-m", "imessage_channel", "access", "policy", "open"],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("imessage-channel access: Unknown policy 'open'")
    assert "Traceback" not in proc.stderr


# --- the lock ------------------------------------------------------------------------------------

WORKER = """
import sys
from pathlib import Path
from imessage_channel.access import AccessStore, allow
store = AccessStore(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    store.update(lambda a, i=i: allow(a, f"worker{i}@example.com"))
print("done", flush=True)
"""


def test_the_cli_and_another_writer_at_the_same_time_lose_no_update(state, capsys):
    """The other writer is a separate process using `AccessStore.update`, as the server does when it
    records a pairing code; both add 20 handles at once, released together."""
    n = 20
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(state), str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT,
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        assert worker.stdout.readline().strip() == "ready"
        worker.stdin.write("go\n")
        worker.stdin.flush()
        for i in range(n):
            assert main(["access", "allow", f"cli{i}@example.com"]) == 0
        assert worker.stdout.readline().strip() == "done"
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    capsys.readouterr()
    allowed = set(stored(state)["allowFrom"])
    assert allowed == {f"cli{i}@example.com" for i in range(n)} | {f"worker{i}@example.com" for i in range(n)}


# --- names from Contacts ------------------------------------------------------------------------------


def test_allow_by_name_allows_every_handle_of_that_contact_and_says_which(state, capsys, book):
    code, out, _ = access_cli(capsys, "allow", "Jane Appleseed")
    assert code == 0
    assert out.strip() == "Allowed Jane Appleseed: +14155550132, jane@example.com."
    assert stored(state)["allowFrom"] == ["+14155550132", "jane@example.com"]


def test_allow_by_name_is_case_and_space_blind_and_says_what_was_already_allowed(state, capsys, book):
    access_cli(capsys, "allow", "+1 415 555 0132")
    code, out, _ = access_cli(capsys, "allow", "  jane   APPLESEED ")
    assert code == 0
    assert out.strip() == "Allowed Jane Appleseed: jane@example.com (+14155550132 already was)."
    code, out, _ = access_cli(capsys, "allow", "Appleseed Jane")
    assert (code, out.strip()) == (0, "Jane Appleseed is already allowed: +14155550132, jane@example.com.")
    assert stored(state)["allowFrom"] == ["+14155550132", "jane@example.com"]


def test_an_ambiguous_name_is_refused_with_the_candidates_and_nothing_is_written(state, capsys, book):
    code, out, err = access_cli(capsys, "allow", "Kate")
    assert code == 2 and out == ""
    assert "matches 2 contacts" in err
    assert "Kate Bell (+14155550199)" in err and "Kate Zakroff (kate@acme.test)" in err
    assert not (state / "access.json").exists()


def test_an_unknown_name_is_refused_with_close_matches(state, capsys, book):
    code, _, err = access_cli(capsys, "allow", "Jane Doe")
    assert code == 2
    assert "No contact named 'Jane Doe' with a phone number or email in your Contacts" in err
    code, _, err = access_cli(capsys, "allow", "Apple")
    assert code == 2 and "Close matches: Jane Appleseed (+14155550132, jane@example.com)" in err
    assert not (state / "access.json").exists()


def test_names_need_contacts(state, capsys, book, monkeypatch):
    monkeypatch.setenv("IMESSAGE_CONTACTS", "off")
    code, _, err = access_cli(capsys, "allow", "Jane Appleseed")
    assert code == 2 and "is not a handle" in err and "IMESSAGE_CONTACTS=off" in err


def test_without_a_contacts_store_a_name_is_refused_saying_why(state, capsys):
    code, _, err = access_cli(capsys, "allow", "Jane Appleseed")
    assert code == 2 and "is not a handle" in err
    assert "Cannot read your Contacts" in err and "Full Disk Access" in err


def test_remove_by_name_removes_all_of_that_contacts_handles(state, capsys, book):
    seed(state, allowFrom=["+14155550132", "jane@example.com", "+14155550199"])
    code, out, _ = access_cli(capsys, "remove", "jane appleseed")
    assert (code, out.strip()) == (0, "Removed Jane Appleseed from the allowlist: +14155550132, jane@example.com.")
    assert stored(state)["allowFrom"] == ["+14155550199"]
    code, out, _ = access_cli(capsys, "remove", "Jane Appleseed")
    assert code == 0 and "was not in the allowlist; nothing changed" in out


def test_the_status_shows_names_beside_handles(state, capsys, book):
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    seed(
        state,
        allowFrom=["+14155550132", "+15550001111"],
        pending={
            "abc123": {
                "senderId": "+14155550199",
                "chatId": "iMessage;-;+14155550199",
                "createdAt": now_ms,
                "expiresAt": now_ms + 3_600_000,
                "replies": 1,
            }
        },
        groups={GROUP: {"requireMention": False, "allowFrom": ["kate@acme.test"]}},
    )
    code, out, _ = access_cli(capsys, "--json")
    assert code == 0
    assert json.loads(out)["names"] == {
        "+14155550132": "Jane Appleseed",
        "+14155550199": "Kate Bell",
        "kate@acme.test": "Kate Zakroff",
    }
    code, out, _ = access_cli(capsys)
    assert "Allowed (2): Jane Appleseed (+14155550132), +15550001111" in out
    assert "abc123  Kate Bell (+14155550199)  asked just now, expires in " in out
    assert "from Kate Zakroff (kate@acme.test)" in out


def test_json_of_an_allow_by_name(state, capsys, book):
    code, out, _ = access_cli(capsys, "allow", "Jane Appleseed", "--json")
    result = json.loads(out)
    assert code == 0 and result["changed"] is True
    assert (result["contact"], result["added"]) == ("Jane Appleseed", ["+14155550132", "jane@example.com"])


# -- sessions and routes (many Claude Code sessions on one Mac) ---------------------------------------------


def test_route_add_pins_a_chat_to_a_session_and_rm_unpins_it(state, capsys):
    seed(state, allowFrom=[STRANGER], routes={GROUP: "family"})
    code, out, _ = access_cli(capsys, "route", "add", DM_STRANGER, "My Project")
    assert code == 0
    assert out.strip() == f"Chat {DM_STRANGER} now goes to the session 'my-project' while it runs."
    assert stored(state)["routes"] == {GROUP: "family", DM_STRANGER: "my-project"}
    assert stored(state)["allowFrom"] == [STRANGER]  # nothing else touched
    code, out, _ = access_cli(capsys, "route", "rm", GROUP)
    assert code == 0 and "no longer pinned" in out
    assert stored(state)["routes"] == {DM_STRANGER: "my-project"}
    access_cli(capsys, "route", "rm", DM_STRANGER)
    assert "routes" not in stored(state)
    code, out, _ = access_cli(capsys, "route", "rm", DM_STRANGER)
    assert code == 0 and "was not pinned; nothing changed" in out


def test_route_add_refuses_what_is_not_a_chat_guid(state, capsys):
    code, _, err = access_cli(capsys, "route", "add", "+15559876543", "work")
    assert code == 2
    assert "is not a chat GUID" in err and "chat_id" in err
    assert not (state / "access.json").exists()


def test_status_lists_live_sessions_the_reader_and_pinned_chats(state, capsys):
    from imessage_channel.lease import ReaderLease
    from imessage_channel.sessions import Registry, new_session_id

    seed(state, routes={GROUP: "family"})
    code, out, _ = access_cli(capsys)
    assert "Sessions: none running" in out
    registry = Registry(state)
    alpha = registry.register(new_session_id(), "alpha")
    beta = registry.register(new_session_id(), "beta", project="/Users/me/beta")
    lease = ReaderLease(state, alpha.info.id)
    assert lease.try_acquire()
    try:
        code, out, _ = access_cli(capsys)
        assert code == 0
        assert "Sessions (2): alpha (reads iMessage), beta (default)" in out
        assert f"  beta: pid {os.getpid()}, /Users/me/beta, started " in out
        assert f"Pinned chats (1):\n  {GROUP} → family" in out
        code, out, _ = access_cli(capsys, "--json")
        data = json.loads(out)
        assert [s["name"] for s in data["sessions"]] == ["alpha", "beta"]
        assert data["reader"] == alpha.info.id and data["default"] == beta.info.id
        assert data["access"]["routes"] == {GROUP: "family"}
    finally:
        lease.release()
        alpha.close()
        beta.close()
