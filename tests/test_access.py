"""access.json storage and pairing, with the official plugin's schema and limits.

Source of the semantics: anthropics/claude-plugins-official external_plugins/imessage (server.ts,
ACCESS.md, skills/access/SKILL.md).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from imessage_channel import access as access_mod
from imessage_channel.access import (
    PAIRED_CONFIRMATION,
    Access,
    AccessReadOnlyError,
    AccessStore,
    DmPolicy,
    ExpiredCodeError,
    PairingStatus,
    Pending,
    UnknownCodeError,
    allow,
    approve,
    deny,
    disallow,
    discard_approval,
    issue_pairing_code,
    locked,
    pending_approvals,
    prune_expired,
    read_approval,
    write_approval,
)
from imessage_channel.clock import SYSTEM, ManualClock

ALICE = "+15551234567"
DM_ALICE = "iMessage;-;+15551234567"
HOUR_MS = 3_600_000

FULL = {
    "dmPolicy": "pairing",
    "allowFrom": ["+15551234567", "friend@icloud.com"],
    "groups": {
        "iMessage;+;chat123": {
            "requireMention": False,
            "allowFrom": ["bob@icloud.com"],
            "nickname": "book club",
        }
    },
    "pending": {
        "a4f91c": {
            "senderId": "+15550000000",
            "chatId": "iMessage;-;+15550000000",
            "createdAt": 1_700_000_000_000,
            "expiresAt": 1_700_003_600_000,
            "replies": 1,
            "note": "kept",
        }
    },
    "mentionPatterns": ["^claude\\b"],
    "textChunkLimit": 5000,
    "chunkMode": "newline",
    "appendSignature": False,
    "ackReaction": "👀",
    "futureKey": {"nested": [1, 2, 3]},
}


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def settle(path: Path, wall: float | None = None) -> None:
    """Make `path` look unchanged for a minute (its mtime, against `wall`, default the system clock): a file
    that does not parse is judged corrupt only once nobody is writing it any more (AccessStore.QUIET_S)."""
    t = (SYSTEM.wall() if wall is None else wall) - 60
    os.utime(path, (t, t))


def rng_of(*codes: str) -> Callable[[int], bytes]:
    """A stand-in for secrets.token_bytes that yields the given hex codes in turn."""
    it = iter(codes)
    return lambda n: bytes.fromhex(next(it))


# --- reading and writing ------------------------------------------------------------------------


def test_missing_file_means_defaults_and_nothing_is_created(tmp_path: Path) -> None:
    store = AccessStore(tmp_path / "state")
    access = store.load()
    assert access == Access()
    assert access.dm_policy is DmPolicy.ALLOWLIST
    assert access.allow_from == () and dict(access.groups) == {} and dict(access.pending) == {}
    assert not (tmp_path / "state").exists()


def test_missing_keys_and_nulls_take_the_defaults() -> None:
    access = Access.from_json({"allowFrom": None, "groups": {"g": {}}, "dmPolicy": None})
    assert access.dm_policy is DmPolicy.ALLOWLIST
    assert access.allow_from == ()
    assert access.groups["g"].require_mention is True  # requireMention defaults to true
    assert access.groups["g"].allow_from == ()
    assert access.effective_text_chunk_limit == 10000
    assert access.effective_chunk_mode == "length"


def test_pending_entry_without_replies_counts_as_one_reply() -> None:
    entry = {"senderId": ALICE, "chatId": DM_ALICE, "createdAt": 1, "expiresAt": 2}
    assert Access.from_json({"pending": {"abcdef": entry}}).pending["abcdef"].replies == 1


def test_round_trip_keeps_every_key_including_unknown_ones(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    write(store.path, FULL)
    store.save(store.load())
    assert json.loads(store.path.read_text(encoding="utf-8")) == FULL


def test_absent_optional_keys_stay_absent(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    store.save(Access())
    assert json.loads(store.path.read_text()) == {
        "dmPolicy": "allowlist",
        "allowFrom": [],
        "groups": {},
        "pending": {},
    }


def test_save_is_pretty_printed_with_two_spaces_and_a_final_newline(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    store.save(allow(Access(), ALICE))
    text = store.path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
    assert '\n  "allowFrom": [\n    "+15551234567"\n  ]' in text


def test_save_creates_dir_0700_and_file_0600_and_leaves_no_temp_file(tmp_path: Path) -> None:
    state = tmp_path / "channels" / "imessage"
    store = AccessStore(state)
    store.save(Access())
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["access.json"]


def test_save_replaces_the_file_rather_than_rewriting_it(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    store.save(Access())
    before = store.path.stat().st_ino
    store.save(allow(Access(), ALICE))
    assert store.path.stat().st_ino != before


# --- the stat cache -----------------------------------------------------------------------------


@pytest.fixture
def parse_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    real = json.loads

    def counting(*args: object, **kwargs: object) -> object:
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(access_mod.json, "loads", counting)
    return count


def test_unchanged_file_is_not_parsed_again(tmp_path: Path, parse_count: list[int]) -> None:
    store = AccessStore(tmp_path)
    write(store.path, {"allowFrom": [ALICE]})
    first = store.load()
    for _ in range(5):
        assert store.load() is first
    assert parse_count[0] == 1


def test_rewritten_file_is_seen_on_the_next_load(tmp_path: Path, parse_count: list[int]) -> None:
    store = AccessStore(tmp_path)
    write(store.path, {"allowFrom": [ALICE]})
    assert store.load().allow_from == (ALICE,)
    write(store.path, {"allowFrom": [ALICE, "friend@icloud.com"], "dmPolicy": "disabled"})
    assert store.load().dm_policy is DmPolicy.DISABLED
    assert parse_count[0] == 2


def test_a_same_size_replacement_is_seen_through_the_inode(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    write(store.path, {"allowFrom": ["+15551234567"]})
    assert store.load().allow_from == ("+15551234567",)
    st = store.path.stat()
    other = tmp_path / "other.json"
    write(other, {"allowFrom": ["+15551234568"]})
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert other.stat().st_size == st.st_size and other.stat().st_mtime_ns == st.st_mtime_ns
    os.replace(other, store.path)
    assert store.load().allow_from == ("+15551234568",)


def test_deleted_file_falls_back_to_defaults(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    write(store.path, {"allowFrom": [ALICE]})
    assert store.load().allow_from == (ALICE,)
    store.path.unlink()
    assert store.load() == Access()


# --- static mode --------------------------------------------------------------------------------


def test_static_mode_reads_once_downgrades_pairing_and_never_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "access.json", FULL)
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        store = AccessStore(tmp_path, static=True)
    assert store.static
    assert "downgraded" in caplog.text
    access = store.load()
    assert access.dm_policy is DmPolicy.ALLOWLIST  # pairing needs writes
    assert dict(access.pending) == {}
    assert access.allow_from == tuple(FULL["allowFrom"])

    write(tmp_path / "access.json", {"allowFrom": []})  # edits after boot are not seen
    assert store.load() is access
    with pytest.raises(AccessReadOnlyError):
        store.save(Access())
    with pytest.raises(AccessReadOnlyError):
        store.update(lambda a: a)
    assert json.loads((tmp_path / "access.json").read_text()) == {"allowFrom": []}


# --- corrupt files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        '["a list"]',
        '{"dmPolicy": "open"}',
        '{"allowFrom": "+15551234567"}',
        '{"groups": {"g": {"requireMention": "yes"}}}',
        '{"pending": {"abcdef": {"senderId": "x"}}}',
        '{"textChunkLimit": "5000"}',
        '{"chunkMode": "words"}',
    ],
    ids=["invalid", "empty", "list", "policy", "allowFrom-str", "group", "pending", "limit", "chunkMode"],
)  # fmt: skip
def test_corrupt_file_is_moved_aside_and_defaults_are_used(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = AccessStore(tmp_path)
    write(store.path, content)
    settle(store.path)
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        assert store.load() == Access()
    assert not store.path.exists()
    [aside] = tmp_path.glob("access.json.corrupt-*")
    assert aside.read_text(encoding="utf-8") == content
    assert "corrupt" in caplog.text and aside.name in caplog.text


def test_a_second_corrupt_file_never_overwrites_the_first(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC))
    store = AccessStore(tmp_path, clock=clock)
    write(store.path, "first {")
    settle(store.path, clock.wall())
    store.load()
    write(store.path, "second {")
    settle(store.path, clock.wall())
    store.load()
    asides = sorted(tmp_path.glob("access.json.corrupt-*"))
    assert [p.name for p in asides] == [
        "access.json.corrupt-20250301T120000Z",
        "access.json.corrupt-20250301T120000Z-1",
    ]
    assert sorted(p.read_text() for p in asides) == ["first {", "second {"]


def test_update_on_a_corrupt_file_starts_from_defaults(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    write(store.path, "{oops")
    settle(store.path)
    store.update(lambda a: allow(a, ALICE))
    assert json.loads(store.path.read_text())["allowFrom"] == [ALICE]
    assert len(list(tmp_path.glob("access.json.corrupt-*"))) == 1


def test_invalid_mention_pattern_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = AccessStore(tmp_path)
    write(store.path, {"mentionPatterns": ["(", "claude"]})
    with caplog.at_level(logging.WARNING, logger="imessage_channel.access"):
        assert store.load().mention_patterns == ("(", "claude")
    assert "'('" in caplog.text
    assert store.path.exists()


# --- update and the lock ------------------------------------------------------------------------


def test_update_saves_what_fn_returns(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    result = store.update(lambda a: replace(allow(a, "Friend@iCloud.com"), dm_policy=DmPolicy.PAIRING))
    assert result.allow_from == ("friend@icloud.com",)  # stored normalised
    assert AccessStore(tmp_path).load() == result


def test_update_returning_the_same_object_writes_nothing(tmp_path: Path) -> None:
    store = AccessStore(tmp_path)
    store.update(lambda a: a)
    assert not store.path.exists()


def _increment(state: str, times: int, barrier: Any) -> None:
    store = AccessStore(Path(state))
    barrier.wait()
    for _ in range(times):
        store.update(lambda a: replace(a, extra={**a.extra, "counter": a.extra.get("counter", 0) + 1}))


def test_lock_serialises_updates_from_two_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_increment, args=(str(tmp_path), 50, barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert json.loads((tmp_path / "access.json").read_text())["counter"] == 100


def test_locked_creates_a_private_lock_file(tmp_path: Path) -> None:
    state = tmp_path / "new"
    with locked(state):
        assert stat.S_IMODE((state / "access.json.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


# --- pairing (server.ts gate under dmPolicy "pairing") --------------------------------------------


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time("2025-06-01 09:00:00") as f:
        yield f


def now() -> datetime:
    return datetime.now(UTC)


def test_a_new_sender_gets_a_six_hex_code_valid_for_one_hour(frozen: FrozenDateTimeFactory) -> None:
    access, outcome = issue_pairing_code(Access(), "+1 (555) 123-4567", DM_ALICE, now(), rng_of("a1b2c3"))
    assert outcome.status is PairingStatus.ISSUED and outcome.code == "a1b2c3"
    assert outcome.should_reply
    t = int(now().timestamp() * 1000)
    assert access.pending["a1b2c3"] == Pending(
        sender_id=ALICE, chat_id=DM_ALICE, created_at=t, expires_at=t + HOUR_MS, replies=1
    )
    assert outcome.message().startswith("Pairing required")
    assert outcome.message().endswith("/imessage:access pair a1b2c3")


def test_real_codes_are_six_lowercase_hex_chars() -> None:
    _, outcome = issue_pairing_code(Access(), ALICE, DM_ALICE, datetime.now(UTC))
    assert outcome.code is not None and len(outcome.code) == 6
    assert int(outcome.code, 16) >= 0 and outcome.code == outcome.code.lower()


def test_a_sender_gets_at_most_two_replies_then_silence(frozen: FrozenDateTimeFactory) -> None:
    access, _ = issue_pairing_code(Access(), ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    access, second = issue_pairing_code(access, "15551234567", DM_ALICE, now(), rng_of("ffffff"))
    assert (second.status, second.code, second.reason) == (PairingStatus.RESENT, "a1b2c3", "reminder")
    assert second.message().startswith("Still pending")
    assert access.pending["a1b2c3"].replies == 2
    access, third = issue_pairing_code(access, ALICE, DM_ALICE, now(), rng_of("eeeeee"))
    assert (third.status, third.code, third.reason) == (PairingStatus.SILENT, None, "reply-limit")
    assert not third.should_reply
    assert list(access.pending) == ["a1b2c3"] and access.pending["a1b2c3"].replies == 2


def test_at_most_three_codes_are_pending(frozen: FrozenDateTimeFactory) -> None:
    access = Access()
    for i, code in enumerate(["000001", "000002", "000003"]):
        access, outcome = issue_pairing_code(access, f"+1555000000{i}", DM_ALICE, now(), rng_of(code))
        assert outcome.status is PairingStatus.ISSUED
    access, fourth = issue_pairing_code(access, ALICE, DM_ALICE, now(), rng_of("000004"))
    assert (fourth.status, fourth.reason) == (PairingStatus.SILENT, "pending-limit")
    assert len(access.pending) == 3

    frozen.tick(timedelta(hours=1, seconds=1))
    access, later = issue_pairing_code(access, ALICE, DM_ALICE, now(), rng_of("000004"))
    assert later.status is PairingStatus.ISSUED
    assert list(access.pending) == ["000004"]  # the expired ones were pruned first


def test_an_expired_code_is_replaced_by_a_new_one(frozen: FrozenDateTimeFactory) -> None:
    access, _ = issue_pairing_code(Access(), ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    access, _ = issue_pairing_code(access, ALICE, DM_ALICE, now(), rng_of("ffffff"))
    frozen.tick(timedelta(hours=2))
    access, outcome = issue_pairing_code(access, ALICE, DM_ALICE, now(), rng_of("d4e5f6"))
    assert (outcome.status, outcome.code) == (PairingStatus.ISSUED, "d4e5f6")
    assert list(access.pending) == ["d4e5f6"]


def test_a_colliding_random_code_is_drawn_again(frozen: FrozenDateTimeFactory) -> None:
    access, _ = issue_pairing_code(Access(), ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    access, outcome = issue_pairing_code(access, "bob@icloud.com", "c", now(), rng_of("a1b2c3", "0badc0"))
    assert outcome.code == "0badc0"
    assert access.pending["a1b2c3"].sender_id == ALICE


def test_prune_keeps_a_code_until_its_expiry_instant(frozen: FrozenDateTimeFactory) -> None:
    access, _ = issue_pairing_code(Access(), ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    frozen.tick(timedelta(hours=1))
    assert prune_expired(access, now()) is access
    frozen.tick(timedelta(milliseconds=1))
    assert dict(prune_expired(access, now()).pending) == {}


def test_approve_allowlists_the_sender_and_removes_the_code(frozen: FrozenDateTimeFactory) -> None:
    access, _ = issue_pairing_code(Access(), ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    frozen.tick(timedelta(minutes=59))
    approved, entry = approve(access, " A1B2C3 ", now())
    assert (entry.sender_id, entry.chat_id) == (ALICE, DM_ALICE)
    assert approved.allow_from == (ALICE,)
    assert dict(approved.pending) == {}


def test_approve_does_not_duplicate_an_allowlisted_handle(frozen: FrozenDateTimeFactory) -> None:
    access = allow(Access(), "+1 555 123 4567")
    access, _ = issue_pairing_code(access, ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    approved, _ = approve(access, "a1b2c3", now())
    assert approved.allow_from == (ALICE,)


def test_approve_refuses_unknown_and_expired_codes(frozen: FrozenDateTimeFactory) -> None:
    access, _ = issue_pairing_code(Access(), ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    with pytest.raises(UnknownCodeError):
        approve(access, "ffffff", now())
    frozen.tick(timedelta(hours=1, seconds=1))
    with pytest.raises(ExpiredCodeError, match="expired"):
        approve(access, "a1b2c3", now())
    with pytest.raises(ValueError):  # both are ValueErrors for callers that do not care which
        approve(access, "a1b2c3", now())


def test_deny_discards_a_code_and_refuses_an_unknown_one(frozen: FrozenDateTimeFactory) -> None:
    access, _ = issue_pairing_code(Access(), ALICE, DM_ALICE, now(), rng_of("a1b2c3"))
    assert dict(deny(access, "a1b2c3").pending) == {}
    with pytest.raises(UnknownCodeError):
        deny(access, "ffffff")


def test_allow_and_disallow_compare_normalised_handles() -> None:
    access = allow(allow(Access(), "Friend@iCloud.com"), "friend@icloud.com")
    assert access.allow_from == ("friend@icloud.com",)
    access = allow(access, ALICE)
    assert disallow(access, "+1 (555) 123-4567").allow_from == ("friend@icloud.com",)


# --- approved/ ----------------------------------------------------------------------------------


def test_approved_files_are_listed_read_and_deleted(tmp_path: Path) -> None:
    assert pending_approvals(tmp_path) == []
    write_approval(tmp_path, ALICE, DM_ALICE)
    write_approval(tmp_path, "friend@icloud.com", "iMessage;-;friend@icloud.com")
    assert stat.S_IMODE((tmp_path / "approved").stat().st_mode) == 0o700
    assert pending_approvals(tmp_path) == [ALICE, "friend@icloud.com"]
    assert read_approval(tmp_path, ALICE) == DM_ALICE
    discard_approval(tmp_path, ALICE)
    assert pending_approvals(tmp_path) == ["friend@icloud.com"]
    assert PAIRED_CONFIRMATION == "Paired! Say hi to Claude."


def test_an_empty_approved_file_is_deleted_without_a_chat(tmp_path: Path) -> None:
    write(tmp_path / "approved" / ALICE, "\n")
    assert read_approval(tmp_path, ALICE) is None
    discard_approval(tmp_path, ALICE)
    assert pending_approvals(tmp_path) == []


@pytest.mark.parametrize("sender", ["", ".", "..", "../access.json", "a/b@c.com", ".hidden"])
def test_sender_ids_that_are_not_plain_file_names_are_refused(tmp_path: Path, sender: str) -> None:
    with pytest.raises(ValueError):
        write_approval(tmp_path, sender, DM_ALICE)
