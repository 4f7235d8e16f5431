"""Plain-text rendering of messages for people and for Claude.

Owns the one text form of a message used by `imessage-channel messages` and the `chat_messages`
tool: `[HH:MM] sender: text`, with conversation headers and day separators. Message text is
untrusted: every line break (LF, CR, U+2028/2029, U+0085, VT, FF…) and other control character is
rendered visibly, so a message can never forge an extra history line or header.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo

from .chatdb import Chat, Kind, Message

NEWLINE_MARK = " ⏎ "
"""What a line break inside a message becomes when rendered on one line."""

QuoteLookup = Callable[[str], "str | None"]
"""Maps a message GUID to that message's text (for quoting tapback/reply targets), or None."""


def one_line(text: str) -> str:
    """Collapse `text` onto one line: line breaks → ` ⏎ `, other control/format characters that
    could move the cursor or hide text (C0/C1 controls, bidi overrides) → `\\uXXXX` escapes."""
    out: list[str] = []
    for line_no, line in enumerate(text.splitlines()):
        if line_no:
            out.append(NEWLINE_MARK)
        for ch in line:
            cat = unicodedata.category(ch)
            if cat == "Cc" or (cat == "Cf" and ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"):
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
    return "".join(out)


def first_words(text: str, limit: int = 60) -> str:
    """The start of `text` on one line, cut at a word boundary near `limit` characters with `…`."""
    flat = one_line(text).strip()
    if len(flat) <= limit:
        return flat
    cut = flat[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def describe(msg: Message, quote: QuoteLookup | None = None) -> str:
    """The body of a message as one line: its text plus compact markers for its kind.

    `[attachment: IMG_1.heic image/heic]`, `(edited)`, `↩ reply to "…"`, `❤️ loved "…"`,
    `(unsent a message)`, `(renamed the group to "…")`."""
    q = quote or (lambda _guid: None)

    def quoted(guid: str | None) -> str:
        target = q(guid) if guid else None
        return f'"{first_words(target, 40)}"' if target else "a message"

    atts = " ".join(f"[attachment: {one_line(a.name)} {one_line(a.mime_type or 'unknown')}]" for a in msg.attachments)
    text = " ".join(p for p in (atts, one_line(msg.text)) if p)
    if msg.kind is Kind.TAPBACK and msg.tapback:
        emoji = msg.tapback.emoji or msg.tapback.reaction
        return f"{emoji} {msg.tapback.reaction} {quoted(msg.tapback.target_guid)}"
    if msg.kind is Kind.TAPBACK_REMOVAL and msg.tapback:
        return f"removed {msg.tapback.reaction} from {quoted(msg.tapback.target_guid)}"
    if msg.kind is Kind.UNSEND:
        return "(unsent a message)"
    if msg.kind is Kind.GROUP_EVENT:
        if msg.item_type == 2:
            return f'(renamed the group to "{one_line(msg.group_title or "")}")'
        if msg.item_type == 1:
            return "(removed someone from the group)" if msg.group_action_type == 1 else "(added someone to the group)"
        return "(changed the group)"
    if msg.kind is Kind.RECEIPT:
        return "(receipt)"
    if msg.reply_to:
        text = f"↩ reply to {quoted(msg.reply_to)}: {text}"
    if msg.kind is Kind.EDIT:
        text += " (edited)"
    return text


def sender_label(msg: Message) -> str:
    """`me` for the owner's rows, else the sender's handle (or `unknown`)."""
    if msg.is_from_me:
        return "me"
    return one_line(msg.handle or "unknown")


def chat_header(chat: Chat, participants: Sequence[str]) -> str:
    """`== DM with a@example.com (iMessage;-;a@example.com) ==` or `== Group "name": a, b (guid) ==`."""
    who = ", ".join(one_line(p) for p in participants) or "nobody else"
    if chat.is_group:
        name = f' "{one_line(chat.display_name)}"' if chat.display_name else ""
        return f"== Group{name} with {who} ({chat.guid}) =="
    if chat.is_dm:
        return f"== DM with {who} ({chat.guid}) =="
    return f"== Chat (style {chat.style}) with {who} ({chat.guid}) =="


def render_conversation(
    chat: Chat,
    participants: Sequence[str],
    messages: Sequence[Message],
    *,
    quote: QuoteLookup | None = None,
    tz: tzinfo | None = None,
    include_receipts: bool = False,
    show_kind: bool = False,
) -> str:
    """A conversation block: header, `--- YYYY-MM-DD ---` day separators, `[HH:MM] sender: text`.
    Times are shown in `tz` (default: the machine's local zone). Receipts are skipped unless asked;
    `show_kind` adds the row's kind (`[10:02] a@example.com (tapback): …`)."""
    lines = [chat_header(chat, participants)]
    day = None
    for msg in messages:
        if msg.kind is Kind.RECEIPT and not include_receipts:
            continue
        when = (msg.date or datetime.min).astimezone(tz) if msg.date else None
        if when and when.date() != day:
            day = when.date()
            lines.append(f"--- {day.isoformat()} ---")
        stamp = when.strftime("%H:%M") if when else "--:--"
        kind = f" ({msg.kind.value})" if show_kind else ""
        lines.append(f"[{stamp}] {sender_label(msg)}{kind}: {describe(msg, quote)}")
    return "\n".join(lines)
