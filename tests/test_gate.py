"""The access gate as a policy table: one row per rule (see imessage_channel/gate.py's docstring).

Each row: what happens, the inbound message (fields that differ from a plain iMessage DM from
ALICE), the access.json contents, IMESSAGE_ALLOW_SMS, and the expected verdict and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from imessage_channel.access import Access
from imessage_channel.gate import Decision, Inbound, Verdict, decide, find_group, mentioned

ALICE = "+15551234567"
BOB = "bob@icloud.com"
OWNER = "me@icloud.com"
DM_ALICE = "iMessage;-;+15551234567"
GROUP = "iMessage;+;chat123456789"
GROUP_TAHOE = "any;+;chat123456789"  # the same group as macOS 26 writes its GUID

DELIVER, DROP, PAIR = Verdict.DELIVER, Verdict.DROP, Verdict.PAIR

# A plain inbound iMessage DM from ALICE; each row overrides what it is about.
BASE = Inbound(
    sender=ALICE,
    chat_guid=DM_ALICE,
    chat_style=45,
    service="iMessage",
    text="hello",
    is_from_me=False,
    is_self_chat=False,
)
SELF_CHAT = {"sender": OWNER, "chat_guid": f"iMessage;-;{OWNER}", "is_self_chat": True}
IN_GROUP = {"chat_guid": GROUP, "chat_style": 43}
OWN_ROW = {"sender": None, "is_from_me": True}


@dataclass(frozen=True)
class Row:
    what: str
    msg: dict[str, Any]
    access: dict[str, Any]
    verdict: Verdict
    reason: str
    allow_sms: bool = False


# fmt: off
TABLE = [
    # --- self-chat bypasses the gate (but not the SMS rule) -------------------------------------
    Row("self-chat, default access", SELF_CHAT, {}, DELIVER, "self-chat"),
    Row("self-chat under dmPolicy disabled", SELF_CHAT, {"dmPolicy": "disabled"}, DELIVER, "self-chat"),
    Row("self-chat row typed on the Mac (is_from_me)", {**SELF_CHAT, "is_from_me": True}, {},
        DELIVER, "self-chat"),
    Row("self-chat over SMS is still SMS (spoofable)", {**SELF_CHAT, "service": "SMS"}, {}, DROP, "sms"),
    Row("self-chat over SMS with IMESSAGE_ALLOW_SMS", {**SELF_CHAT, "service": "SMS"}, {},
        DELIVER, "self-chat", allow_sms=True),
    # --- our own rows ---------------------------------------------------------------------------
    Row("own message in a DM", OWN_ROW, {"allowFrom": [ALICE]}, DROP, "own-message"),
    Row("own message in an enabled group", {**OWN_ROW, **IN_GROUP},
        {"groups": {GROUP: {"requireMention": False}}}, DROP, "own-message"),
    Row("row without a sender handle", {"sender": None}, {"allowFrom": [ALICE]}, DROP, "no-sender"),
    # --- SMS / RCS ------------------------------------------------------------------------------
    Row("SMS from an allowlisted handle", {"service": "SMS"}, {"allowFrom": [ALICE]}, DROP, "sms"),
    Row("RCS from an allowlisted handle", {"service": "RCS"}, {"allowFrom": [ALICE]}, DROP, "sms"),
    Row("rcs (lower case) from an allowlisted handle", {"service": "rcs"}, {"allowFrom": [ALICE]},
        DROP, "sms"),
    Row("SMS allowed by IMESSAGE_ALLOW_SMS", {"service": "SMS"}, {"allowFrom": [ALICE]},
        DELIVER, "allowlisted", allow_sms=True),
    Row("SMS allowed but sender not allowlisted", {"service": "SMS"}, {}, DROP, "not-allowlisted",
        allow_sms=True),
    Row("iMessageLite (satellite) counts as iMessage", {"service": "iMessageLite"}, {"allowFrom": [ALICE]},
        DELIVER, "allowlisted"),
    Row("service compared case-insensitively", {"service": "imessage"}, {"allowFrom": [ALICE]},
        DELIVER, "allowlisted"),
    # --- DMs (style 45) -------------------------------------------------------------------------
    Row("DM from an allowlisted handle", {}, {"allowFrom": [ALICE]}, DELIVER, "allowlisted"),
    Row("DM from a stranger, default policy (allowlist)", {}, {}, DROP, "not-allowlisted"),
    Row("DM from a stranger, dmPolicy allowlist", {}, {"dmPolicy": "allowlist", "allowFrom": [BOB]},
        DROP, "not-allowlisted"),
    Row("DM from a stranger, dmPolicy pairing", {}, {"dmPolicy": "pairing"}, PAIR, "pairing"),
    Row("DM from an allowlisted handle, dmPolicy pairing", {}, {"dmPolicy": "pairing", "allowFrom": [ALICE]},
        DELIVER, "allowlisted"),
    Row("DM from an allowlisted handle, dmPolicy disabled", {},
        {"dmPolicy": "disabled", "allowFrom": [ALICE]}, DROP, "dm-disabled"),
    Row("DM with a macOS 26 GUID (any;-;)", {"chat_guid": "any;-;+15551234567"}, {"allowFrom": [ALICE]},
        DELIVER, "allowlisted"),
    Row("gated on the sender, not the chat: chat GUID listed", {"sender": "+15559999999"},
        {"allowFrom": [DM_ALICE]}, DROP, "not-allowlisted"),
    Row("gated on the sender, not the chat: other sender in ALICE's DM", {"sender": "+15559999999"},
        {"allowFrom": [ALICE]}, DROP, "not-allowlisted"),
    # --- handle normalisation -------------------------------------------------------------------
    Row("email allowlisted in other case", {"sender": "friend@icloud.com"},
        {"allowFrom": ["Friend@iCloud.COM"]}, DELIVER, "allowlisted"),
    Row("email sender in other case", {"sender": "FRIEND@icloud.com"}, {"allowFrom": ["friend@icloud.com"]},
        DELIVER, "allowlisted"),
    Row("phone allowlisted with formatting", {}, {"allowFrom": ["+1 (555) 123-4567"]},
        DELIVER, "allowlisted"),
    Row("phone allowlisted without +", {}, {"allowFrom": ["15551234567"]}, DELIVER, "allowlisted"),
    Row("phone allowlisted with dots", {}, {"allowFrom": ["+1.555.123.4567"]}, DELIVER, "allowlisted"),
    Row("a different phone number", {}, {"allowFrom": ["+15551234568"]}, DROP, "not-allowlisted"),
    Row("a different email", {"sender": "friend@icloud.com"}, {"allowFrom": ["friend@icloud.co"]},
        DROP, "not-allowlisted"),
    # --- groups (style 43) ----------------------------------------------------------------------
    Row("group not in groups", IN_GROUP, {"allowFrom": [ALICE]}, DROP, "group-not-enabled"),
    Row("group not in groups, dmPolicy pairing: never a code in a group", IN_GROUP, {"dmPolicy": "pairing"},
        DROP, "group-not-enabled"),
    Row("group enabled, requireMention default, no mentionPatterns", IN_GROUP, {"groups": {GROUP: {}}},
        DROP, "no-mention"),
    Row("group enabled, requireMention, text matches a pattern", {**IN_GROUP, "text": "Claude, what's up?"},
        {"groups": {GROUP: {"requireMention": True}}, "mentionPatterns": [r"^claude\b"]},
        DELIVER, "mentioned"),
    Row("group enabled, requireMention, text does not match", {**IN_GROUP, "text": "claudette says hi"},
        {"groups": {GROUP: {"requireMention": True}}, "mentionPatterns": [r"^claude\b"]},
        DROP, "no-mention"),
    Row("invalid pattern skipped, next pattern matches", {**IN_GROUP, "text": "hi @Assistant"},
        {"groups": {GROUP: {}}, "mentionPatterns": ["(", "@assistant"]}, DELIVER, "mentioned"),
    Row("invalid pattern alone never matches", {**IN_GROUP, "text": "("},
        {"groups": {GROUP: {}}, "mentionPatterns": ["("]}, DROP, "no-mention"),
    Row("group with requireMention false", IN_GROUP, {"groups": {GROUP: {"requireMention": False}}},
        DELIVER, "group-open"),
    Row("group allowFrom lists the sender (other case)", {**IN_GROUP, "sender": "BOB@icloud.com"},
        {"groups": {GROUP: {"requireMention": False, "allowFrom": [BOB]}}}, DELIVER, "group-open"),
    Row("group allowFrom does not list the sender", IN_GROUP,
        {"groups": {GROUP: {"requireMention": False, "allowFrom": [BOB]}}}, DROP, "not-in-group-allowlist"),
    Row("group allowFrom checked before the mention", {**IN_GROUP, "text": "claude help"},
        {"groups": {GROUP: {"allowFrom": [BOB]}}, "mentionPatterns": ["claude"]},
        DROP, "not-in-group-allowlist"),
    Row("top-level allowFrom does not open a group", IN_GROUP, {"allowFrom": [ALICE]},
        DROP, "group-not-enabled"),
    Row("group configured as iMessage;+; matches any;+;", {**IN_GROUP, "chat_guid": GROUP_TAHOE},
        {"groups": {GROUP: {"requireMention": False}}}, DELIVER, "group-open"),
    Row("group configured as any;+; matches iMessage;+;", IN_GROUP,
        {"groups": {GROUP_TAHOE: {"requireMention": False}}}, DELIVER, "group-open"),
    Row("a different group id does not match", {**IN_GROUP, "chat_guid": "any;+;chat999"},
        {"groups": {GROUP: {"requireMention": False}}}, DROP, "group-not-enabled"),
    Row("group under dmPolicy disabled", IN_GROUP, {"dmPolicy": "disabled", "groups": {GROUP: {}}},
        DROP, "dm-disabled"),
    Row("group message over SMS", {**IN_GROUP, "service": "SMS"},
        {"groups": {GROUP: {"requireMention": False}}}, DROP, "sms"),
    # --- unknown chat style ---------------------------------------------------------------------
    Row("NULL chat style, allowlisted sender", {"chat_style": None}, {"allowFrom": [ALICE]},
        DROP, "unknown-chat-style"),
    Row("NULL chat style under pairing: no code leaks", {"chat_style": None}, {"dmPolicy": "pairing"},
        DROP, "unknown-chat-style"),
    Row("unknown chat style 42", {"chat_style": 42}, {"allowFrom": [ALICE]}, DROP, "unknown-chat-style"),
]
# fmt: on


@pytest.mark.parametrize("row", TABLE, ids=[r.what for r in TABLE])
def test_policy_table(row: Row) -> None:
    msg = replace(BASE, **row.msg)
    access = Access.from_json(row.access, region="US")  # the owner's region reads numbers typed without +
    assert decide(msg, access, allow_sms=row.allow_sms) == Decision(row.verdict, row.reason)


def test_table_reaches_every_reason() -> None:
    assert {r.reason for r in TABLE} == {
        "self-chat", "own-message", "no-sender", "sms", "unknown-chat-style", "dm-disabled", "allowlisted",
        "pairing", "not-allowlisted", "group-not-enabled", "not-in-group-allowlist", "group-open",
        "mentioned", "no-mention",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "patterns", "expected"),
    [
        ("Hey CLAUDE", ["claude"], True),
        ("hey", ["claude"], False),
        ("anything", [], False),
        ("a(b", ["(", r"a\(b"], True),
        ("@assistant ping", [r"^@assistant\b"], True),
        ("ping @assistant", [r"^@assistant\b"], False),
    ],
)
def test_mentioned_is_a_case_insensitive_search(text: str, patterns: list[str], expected: bool) -> None:
    assert mentioned(text, patterns) is expected


def test_find_group_prefers_the_exact_key() -> None:
    access = Access.from_json({"groups": {GROUP: {"requireMention": True}, GROUP_TAHOE: {"requireMention": False}}})
    exact = find_group(access.groups, GROUP_TAHOE)
    assert exact is not None and exact.require_mention is False
    assert find_group(access.groups, "not a guid") is None
    # a DM GUID with the same id is not the group
    assert find_group(access.groups, "iMessage;-;chat123456789") is None
