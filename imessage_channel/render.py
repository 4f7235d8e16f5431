"""Plain-text rendering of messages for people and for Claude.

Owns the one text form of a message used by `imessage-channel messages` and the `chat_messages`
tool: `[HH:MM] sender: text`, with conversation headers and day separators. Message text is
untrusted: every line break (LF, CR, U+2028/2029, U+0085, VT, FF…) and other control character is
rendered visibly, so a message can never forge an extra history line or header.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, tzinfo

from .chatdb import Attachment, Chat, Kind, Message, Tapback

NEWLINE_MARK = " ⏎ "
"""What a line break inside a message becomes when rendered on one line."""

QuoteLookup = Callable[[str], "str | None"]
"""Maps a message GUID to that message's text (for quoting tapback/reply targets), or None."""

REACTION_VERBS = {
    "love": "loved",
    "like": "liked",
    "dislike": "disliked",
    "laugh": "laughed at",
    "emphasize": "emphasized",
    "question": "questioned",
}
"""Past-tense verbs of the six classic tapbacks (the names are `chatdb.TAPBACKS`')."""


def one_line(text: str) -> str:
    """Collapse `text` onto one line: line breaks → ` ⏎ `, other control/format characters that
    could move the cursor or hide text (C0/C1 controls, bidi overrides) → `\\uXXXX` escapes."""
    if text.isprintable():  # no line break, control or format character: nothing to do (the common case)
        return text
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


def reaction_phrase(tapback: Tapback) -> str:
    """What a tapback did, ready to be followed by its target: `👍 liked`, `😂 laughed at`,
    `reacted 🎉 to` (custom emoji, macOS 15+), `reacted with a sticker to`; a removal is
    `removed 👍 from` / `removed a sticker from`."""
    emoji = one_line(tapback.emoji)
    if tapback.removed:
        what = "a sticker" if tapback.reaction == "sticker" else (emoji or tapback.reaction)
        return f"removed {what} from"
    if tapback.reaction == "sticker":
        return "reacted with a sticker to"
    if tapback.reaction == "emoji":
        return f"reacted {emoji} to" if emoji else "reacted to"
    return f"{emoji} {REACTION_VERBS.get(tapback.reaction, tapback.reaction)}".strip()


def attachment_label(att: Attachment, *, audio_message: bool = False) -> str:
    """`[attachment: IMG_1.heic image/heic]`; `[audio message: Audio Message.caf audio/x-caf]` for a voice
    message (`audio_message`, or a `.caf`/`audio/*` file); `[sticker: name]` for a sticker."""
    name, mime = one_line(att.name), one_line(att.mime_type or "unknown")
    if att.is_sticker:
        return f"[sticker: {name}]"
    if audio_message or att.is_audio:
        return f"[audio message: {name} {mime}]"
    return f"[attachment: {name} {mime}]"


def whose_message(target: Message | None, actor: Message) -> str:
    """Who wrote the message a reaction or reply (`actor`) points at, as Claude should read it:
    `your message` for the owner's account — which is how Claude's replies are sent, so a reaction to
    Claude's summary reads as one —, `their own message` when the actor wrote it, `<handle>'s message`
    for someone else, `a message` when the target is not in chat.db."""
    if target is None:
        return "a message"
    if target.is_from_me:
        return "your message"
    if not actor.is_from_me and target.handle and target.handle == actor.handle:
        return "their own message"
    return f"{one_line(target.handle or 'someone')}'s message"


def quote_of(target: Message, limit: int = 60) -> str:
    """The first words of a message's first line for quoting (`…` when cut or when more lines follow,
    such as a reply's signature), or its attachment labels when it has no text."""
    if target.text:
        lines = target.text.strip().splitlines() or [""]
        words = first_words(lines[0], limit)
        return words + "…" if len(lines) > 1 and not words.endswith("…") else words
    return " ".join(attachment_label(a, audio_message=target.is_audio_message) for a in target.attachments)


def describe(msg: Message, quote: QuoteLookup | None = None) -> str:
    """The body of a message as one line: its text plus compact markers for its kind.

    `[attachment: IMG_1.heic image/heic]`, `[audio message: …]`, `[sticker: …]`, `(edited)`,
    `↩ reply to "…"`, `❤️ loved "…"`, `removed 👍 from "…"`, `(unsent a message)`,
    `(renamed the group to "…")`, `(started sharing location)`, `(kept an audio message)`,
    `(SharePlay / FaceTime)`."""
    q = quote or (lambda _guid: None)

    def quoted(guid: str | None) -> str:
        target = q(guid) if guid else None
        return f'"{first_words(target, 40)}"' if target else "a message"

    atts = " ".join(attachment_label(a, audio_message=msg.is_audio_message) for a in msg.attachments)
    text = " ".join(p for p in (atts, one_line(msg.text)) if p)
    if msg.kind in (Kind.TAPBACK, Kind.TAPBACK_REMOVAL) and msg.tapback:
        return f"{reaction_phrase(msg.tapback)} {quoted(msg.tapback.target_guid)}"
    if msg.kind is Kind.UNSEND:
        return "(unsent a message)"
    if msg.kind is Kind.GROUP_EVENT:
        if msg.item_type == 2:
            return f'(renamed the group to "{one_line(msg.group_title or "")}")'
        if msg.item_type == 1:
            return "(removed someone from the group)" if msg.group_action_type == 1 else "(added someone to the group)"
        return "(changed the group)"
    if msg.kind is Kind.LOCATION_SHARING:
        return "(stopped sharing location)" if msg.share_status else "(started sharing location)"
    if msg.kind is Kind.AUDIO_KEPT:
        return "(kept an audio message)"
    if msg.kind is Kind.SHAREPLAY:
        return "(SharePlay / FaceTime)"
    if msg.kind is Kind.OTHER_EVENT:
        return f"(Messages notice, item_type {msg.item_type})"
    if msg.kind is Kind.RECEIPT:
        return "(receipt)"
    if msg.reply_to or msg.kind is Kind.REPLY:
        text = f"↩ reply to {quoted(msg.reply_to)}: {text}"
    if msg.kind is Kind.EDIT:
        text += " (edited)"
    return text


Names = Callable[[str], str | None]
"""A handle's contact name, or None (`contacts.Contacts.name_for`)."""


def named(handle: str, names: Names | None) -> str:
    """`Jane Appleseed (+14155550132)` when `names` knows the handle, else the handle; one line either way."""
    name = names(handle) if names is not None else None
    return one_line(f"{name} ({handle})" if name else handle)


def sender_label(msg: Message, names: Names | None = None) -> str:
    """`me` for the owner's rows, else the sender's handle (or `unknown`), with its contact name."""
    if msg.is_from_me:
        return "me"
    return named(msg.handle, names) if msg.handle else "unknown"


def chat_header(chat: Chat, participants: Sequence[str], names: Names | None = None) -> str:
    """`== DM with a@example.com (iMessage;-;a@example.com) ==` or `== Group "name": a, b (guid) ==`; a
    participant with a contact name reads `Jane Appleseed (+14155550132)`."""
    who = ", ".join(named(p, names) for p in participants) or "nobody else"
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
    names: Names | None = None,
    marks: Mapping[int, str] | None = None,
) -> str:
    """A conversation block: header, `--- YYYY-MM-DD ---` day separators, `[HH:MM] sender: text`.
    Times are shown in `tz` (default: the machine's local zone). Receipts are skipped unless asked;
    `show_kind` adds the row's kind (`[10:02] a@example.com (tapback): …`); `names` puts contact names beside
    handles; `marks` adds words after a message's line by ROWID (`receipts.failed_label`: `(not delivered)`)."""
    lines = [chat_header(chat, participants, names)]
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
        mark = f" {marks[msg.rowid]}" if marks and msg.rowid in marks else ""
        lines.append(f"[{stamp}] {sender_label(msg, names)}{kind}: {describe(msg, quote)}{mark}")
    return "\n".join(lines)
