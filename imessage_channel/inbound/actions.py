"""What the inbound pipeline asks the server to do, and the record of each decision it took.

Owns the pipeline's outputs: `Deliver` (a channel event), `PermissionVerdict` (an answer to Claude Code's
permission request), `Send` (a text back to a chat), and `RowDecision` (what became of one row, for logs and
`imessage-channel watch`). The pipeline performs no MCP or AppleScript I/O itself: the server executes these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ..chatdb import Message
from ..reasons import Reason, Verdict


@dataclass(frozen=True, slots=True)
class Deliver:
    """Push `notifications/claude/channel` with this content and meta (all values strings); `rowid` is the row
    it comes from (0 for a follow-up of an earlier row: edit, unsend, late file), for the delivery ledger;
    `typed` is what the sender typed, which `content` ends with (None for events that are not a typed text:
    reactions, follow-ups, the channel's own news), so routing can read an `@name` and remove it
    (`multisession.routed_content`)."""

    content: str
    meta: dict[str, str]
    rowid: int = 0
    typed: str | None = None


@dataclass(frozen=True, slots=True)
class PermissionVerdict:
    """Push `notifications/claude/channel/permission` `{request_id, behavior}`; `behavior` is `allow` or `deny`."""

    request_id: str
    behavior: str


@dataclass(frozen=True, slots=True)
class Send:
    """Text something back through the sender (pairing codes, confirmations, acknowledgements)."""

    chat_guid: str
    text: str


Action = Deliver | PermissionVerdict | Send


@dataclass(frozen=True, slots=True)
class RowDecision:
    """What happened to one row: its `verdict` and the `reason` that decided it (both describe themselves)."""

    message: Message
    verdict: Verdict
    reason: Reason


def iso_utc(when: datetime) -> str:
    """`2026-11-24T10:02:03.123Z` (the official plugin's `Date.toISOString()` form) of an aware datetime."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
