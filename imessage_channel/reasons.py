"""What happened to a chat.db row and why: the verdicts and reasons every decision is made of, in words.

Owns the vocabulary of decisions. The gate (`gate.decide`) and the inbound pipeline (`inbound`) return a
`Verdict` and a `Reason`; each carries its own description, and a reason that the owner can act on carries the
fix, so `imessage-channel watch` prints them and the README's "Why isn't my text arriving?" section is
generated from them (`reasons_table`): the words cannot drift from the code.

A reason's value is a stable slug (`not-allowlisted`): it is what logs and `watch --json`-like output show.
A fix may name the row's `{handle}` or `{chat}`; `Reason.fix_for` fills them in.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self, overload


class Described(StrEnum):
    """Base of the decisions that carry their own words (`Verdict`, `routing.Decision`): each member is
    `(value, description)`, the value a short tag for logs, the description a sentence for people."""

    description: str

    def __new__(cls, value: str, description: str) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member


class Verdict(Described):
    """What becomes of a row."""

    DELIVER = ("deliver", "delivered to Claude as a channel event")
    DROP = ("drop", "not delivered")
    PAIR = ("pair", "answered with a pairing code (dmPolicy pairing)")
    VERDICT = ("verdict", "a permission answer, passed to Claude Code, not delivered as a text")
    HOLD = ("hold", "waiting a moment for Messages to finish writing it")


class Reason(StrEnum):
    """Why a row got its verdict: words for a person, and for a drop the owner can change, the fix."""

    words: str
    fix: str

    @overload
    def __new__(cls, value: str) -> Reason: ...  # `Reason("sms")`: the member with that value (Enum's lookup)

    @overload
    def __new__(cls, value: str, words: str, fix: str = "") -> Reason: ...  # defining a member

    def __new__(cls, value: str, words: str = "", fix: str = "") -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.words = words
        member.fix = fix
        return member

    def fix_for(self, handle: str | None, chat: str | None) -> str:
        """`fix` with the row's sender handle and chat GUID filled in (`<handle>`/`<chat>` when unknown)."""
        return self.fix.format(handle=handle or "<handle>", chat=chat or "<chat>")

    # -- delivered (the gate, gate.py's table) ------------------------------------------------------
    SELF_CHAT = ("self-chat", "self-chat")
    ALLOWLISTED = ("allowlisted", "allowlisted sender")
    GROUP_OPEN = ("group-open", "group open to every message")
    MENTIONED = ("mentioned", "a mention pattern matched")
    # -- the gate's drops -------------------------------------------------------------------------------
    SMS = ("sms", "SMS/RCS sender, spoofable", "IMESSAGE_ALLOW_SMS=true lets SMS in")
    OWN_MESSAGE = ("own-message", "your own message outside self-chat")
    NO_SENDER = ("no-sender", "no sender handle")
    UNKNOWN_CHAT_STYLE = ("unknown-chat-style", "unknown chat type")
    DM_DISABLED = (
        "dm-disabled",
        "policy is disabled, only self-chat gets through",
        "imessage-channel access policy allowlist",
    )
    NOT_ALLOWLISTED = ("not-allowlisted", "not allowlisted", "allow them: imessage-channel access allow {handle}")
    GROUP_NOT_ENABLED = ("group-not-enabled", "group not enabled", "imessage-channel access group add '{chat}'")
    NOT_IN_GROUP_ALLOWLIST = ("not-in-group-allowlist", "sender not in this group's allowFrom")
    NO_MENTION = (
        "no-mention",
        "no mention",
        "no mentionPatterns regex matched; see imessage-channel access set mentionPatterns",
    )
    PAIRING = ("pairing", "unknown sender under dmPolicy pairing", "imessage-channel access pair <code>")
    # -- the kinds of row never delivered (chatdb.Kind values) --------------------------------------
    RECEIPT = ("receipt", "receipt, no text")
    UNSEND = ("unsend", "unsent message")
    GROUP_EVENT = ("group_event", "group event")
    LOCATION_SHARING = (
        "location_sharing",
        "a notice that location sharing started or stopped; the location is not in chat.db",
    )
    AUDIO_KEPT = ("audio_kept", "a notice that someone kept an audio message")
    SHAREPLAY = ("shareplay", "a SharePlay/FaceTime notice")
    OTHER_EVENT = ("other_event", "a Messages notice of a kind this version does not know")
    # -- the inbound pipeline's own -------------------------------------------------------------------
    NO_CHAT = ("no-chat", "Messages never joined it to a chat")
    UNSAFE_ID = ("unsafe-id", "its GUID or chat GUID holds characters that could forge meta")
    UNREADABLE = ("unreadable", "the row could not be decoded (see the log)")
    ALREADY_DELIVERED = ("already-delivered", "already delivered")
    CATCH_UP_TOO_OLD = (
        "catch-up-too-old",
        "arrived while the channel was stopped, dated before the catch-up window",
        "IMESSAGE_CATCHUP_HOURS widens the window (default 24)",
    )
    BACKFILL = ("backfill", "backfill: an old message re-inserted by iCloud sync or a rebuild (a storm of late rows)")
    TOO_OLD = (
        "too-old",
        "dated before the catch-up window: history, not news (or the sender's clock is far behind)",
        "IMESSAGE_CATCHUP_HOURS widens the window (default 24)",
    )
    ECHO = ("echo", "echo of a message Claude sent")
    SELF_CHAT_COPY = ("self-chat-copy", "second copy of a self-chat text")
    ICLOUD_DUPLICATE = ("icloud-duplicate", "second copy of a message iCloud wrote twice")
    PERMISSION_REPLY = ("permission-reply", "an answer to a permission prompt")
    # -- holds ------------------------------------------------------------------------------------------
    WAITING_FOR_CHAT_JOIN = ("waiting-for-chat-join", "Messages has not joined it to a chat yet")
    WAITING_FOR_ATTACHMENTS = ("waiting-for-attachments", "Messages has not joined all of its files to it yet")


DELIVERED = frozenset({Reason.SELF_CHAT, Reason.ALLOWLISTED, Reason.GROUP_OPEN, Reason.MENTIONED})
"""The reasons a row is delivered for (the gate's)."""

HOLDS = frozenset({Reason.WAITING_FOR_CHAT_JOIN, Reason.WAITING_FOR_ATTACHMENTS})
"""The reasons a row waits for."""


def reasons_table() -> str:
    """The README's table of everything that keeps a text from Claude, with the fix where the owner has one
    (a Markdown table; `tests/test_newcomer.py` checks the README holds exactly this)."""
    rows = ["| reason | what `watch` says | what to do |", "|---|---|---|"]
    for reason in Reason:
        if reason in DELIVERED or reason in HOLDS or reason is Reason.PERMISSION_REPLY:
            continue
        fix = f"`{reason.fix_for(None, None)}`" if reason.fix else "—"
        rows.append(f"| `{reason.value}` | {reason.words} | {fix} |")
    return "\n".join(rows)
