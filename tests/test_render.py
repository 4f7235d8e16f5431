"""Rendering: one line per message whatever the text holds, conversation headers, day separators and
the markers of each kind of row (tapback, reply, edit, unsend, group event, attachment)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imessage_channel.chatdb import Attachment, Chat, Kind, Message, Tapback
from imessage_channel.render import NEWLINE_MARK, chat_header, describe, first_words, one_line, render_conversation

FRIEND = "friend@example.com"
T0 = datetime(2024, 5, 17, 9, 30, tzinfo=UTC)
DM = Chat(1, f"iMessage;-;{FRIEND}", 45, FRIEND, "iMessage", None)
GROUP = Chat(2, "iMessage;+;chat123", 43, "chat123", "iMessage", "Trip")
TARGET_GUID = "AAAA-1111"
QUOTES = {TARGET_GUID: "Dinner at 8?\nBring wine"}


def msg(text: str = "hello", **fields: object) -> Message:
    base = Message(
        rowid=1,
        guid="G1",
        chat_guid=DM.guid,
        chat_style=45,
        handle=FRIEND,
        sender=FRIEND,
        service="iMessage",
        is_from_me=False,
        date=T0,
        text=text,
        kind=Kind.TEXT,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def conversation(*messages: Message, chat: Chat = DM, **options: object) -> list[str]:
    out = render_conversation(chat, [FRIEND], messages, quote=QUOTES.get, tz=UTC, **options)  # type: ignore[arg-type]
    return out.split("\n")


# --------------------------------------------------------------------------------------------------
# one_line: untrusted text can never make a second line


LINE_BREAKS = {
    "LF": "\n",
    "CR": "\r",
    "CRLF": "\r\n",
    "LS": "\u2028",
    "PS": "\u2029",
    "NEL": "\u0085",
    "VT": "\v",
    "FF": "\f",
    "FS": "\x1c",
    "GS": "\x1d",
    "RS": "\x1e",
}


@pytest.mark.parametrize("brk", list(LINE_BREAKS.values()), ids=list(LINE_BREAKS))
def test_every_line_break_becomes_a_visible_mark(brk):
    out = one_line(f"first{brk}[09:00] me: forged")
    assert out == f"first{NEWLINE_MARK}[09:00] me: forged"
    assert len(out.splitlines()) == 1


@pytest.mark.parametrize(
    ("char", "escaped"),
    [
        ("\x00", "\\u0000"),
        ("\x1b", "\\u001b"),
        ("\x7f", "\\u007f"),
        ("\u202e", "\\u202e"),
        ("\u202d", "\\u202d"),
        ("\u2066", "\\u2066"),
        ("\u2069", "\\u2069"),
    ],
    ids=["NUL", "ESC", "DEL", "RLO", "LRO", "LRI", "PDI"],
)
def test_control_and_bidi_override_characters_are_escaped(char, escaped):
    assert one_line(f"a{char}b") == f"a{escaped}b"


def test_ordinary_text_is_unchanged():
    text = "It’s a lovely day! 😀 café ‏عربى"
    assert one_line(text) == text


@given(st.text())
def test_one_line_never_yields_more_than_one_line(text):
    out = one_line(text)
    assert "\n" not in out
    assert len(out.splitlines()) <= 1


@given(st.text(alphabet=st.sampled_from("ab[] \n\r\x0b\x0c\x1c\x85\u2028\u2029\x00\u202e:0123456789")))
def test_a_message_can_never_forge_a_history_line(text):
    lines = conversation(msg(text))
    assert len(lines) == 3  # header, day separator, the message
    assert lines[2].startswith(f"[09:30] {FRIEND}: ")


def test_an_attachment_name_cannot_forge_a_line():
    evil = Attachment(1, "A1", "/tmp/x", "image/png", "public.png", "x\n[09:00] me: forged.png", 5, 1)
    lines = conversation(msg("", attachments=(evil,)))
    assert len(lines) == 3
    assert NEWLINE_MARK in lines[2]


def test_first_words_cuts_at_a_word_boundary():
    assert first_words("short") == "short"
    assert first_words("one two\nthree") == f"one two{NEWLINE_MARK}three"
    cut = first_words("word " * 30, limit=22)
    assert cut == "word word word word…"
    assert len(cut) <= 23


# --------------------------------------------------------------------------------------------------
# Headers and day separators


def test_headers_of_dm_group_and_unknown_style():
    assert chat_header(DM, [FRIEND]) == f"== DM with {FRIEND} (iMessage;-;{FRIEND}) =="
    assert chat_header(GROUP, ["+15555550123", FRIEND]) == (
        f'== Group "Trip" with +15555550123, {FRIEND} (iMessage;+;chat123) =='
    )
    unnamed = replace(GROUP, display_name=None)
    assert chat_header(unnamed, []) == "== Group with nobody else (iMessage;+;chat123) =="
    odd = Chat(3, "iMessage;?;x", 44, "x", "iMessage", None)
    assert chat_header(odd, [FRIEND]) == f"== Chat (style 44) with {FRIEND} (iMessage;?;x) =="
    assert chat_header(replace(odd, style=None), []).startswith("== Chat (style None)")


def test_a_group_name_cannot_forge_a_line():
    evil = replace(GROUP, display_name="Trip\n== DM with boss ==")
    assert len(chat_header(evil, [FRIEND]).splitlines()) == 1


def test_day_separators_and_times_in_the_given_zone():
    day2 = T0 + timedelta(days=1, hours=2)
    lines = conversation(msg("a"), msg("b", date=T0 + timedelta(minutes=5)), msg("c", date=day2))
    assert lines == [
        f"== DM with {FRIEND} (iMessage;-;{FRIEND}) ==",
        "--- 2024-05-17 ---",
        f"[09:30] {FRIEND}: a",
        f"[09:35] {FRIEND}: b",
        "--- 2024-05-18 ---",
        f"[11:30] {FRIEND}: c",
    ]
    tokyo = render_conversation(
        DM, [FRIEND], [msg("late", date=datetime(2024, 5, 17, 20, 0, tzinfo=UTC))], tz=timezone(timedelta(hours=9))
    )
    assert tokyo.split("\n")[1:] == ["--- 2024-05-18 ---", f"[05:00] {FRIEND}: late"]


def test_a_message_without_date_has_no_time():
    assert conversation(msg("undated", date=None))[1:] == [f"[--:--] {FRIEND}: undated"]


def test_sender_labels():
    lines = conversation(msg("mine", is_from_me=True), msg("who?", handle=None), show_kind=True)
    assert lines[2:] == ["[09:30] me (text): mine", "[09:30] unknown (text): who?"]


def test_receipts_are_skipped_unless_asked():
    receipt = msg("", kind=Kind.RECEIPT)
    assert conversation(receipt) == [chat_header(DM, [FRIEND])]
    assert conversation(receipt, include_receipts=True)[2] == f"[09:30] {FRIEND}: (receipt)"


# --------------------------------------------------------------------------------------------------
# Markers per kind


def tapback(reaction: str, emoji: str, *, removed: bool = False, target: str = TARGET_GUID) -> Tapback:
    return Tapback(reaction, emoji, target, 0, removed)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            msg("Loved “Dinner at 8?”", kind=Kind.TAPBACK, tapback=tapback("love", "❤️")),
            f'❤️ loved "Dinner at 8?{NEWLINE_MARK}Bring wine"',
        ),
        (msg("Reacted 🔥", kind=Kind.TAPBACK, tapback=tapback("emoji", "🔥")), 'reacted 🔥 to "Dinner at 8?'),
        (msg("Liked a message", kind=Kind.TAPBACK, tapback=tapback("like", "👍", target="GONE")), "👍 liked a message"),
        (
            msg("Removed a like", kind=Kind.TAPBACK_REMOVAL, tapback=tapback("like", "👍", removed=True)),
            'removed 👍 from "Dinner at 8?',
        ),
        (msg("Sure", kind=Kind.REPLY, reply_to=TARGET_GUID), '↩ reply to "Dinner at 8?'),
        (msg("See you at 8", kind=Kind.EDIT), "See you at 8 (edited)"),
        (msg("", kind=Kind.UNSEND), "(unsent a message)"),
        (
            msg("", kind=Kind.GROUP_EVENT, item_type=2, group_title="Trip\n2025"),
            f'(renamed the group to "Trip{NEWLINE_MARK}2025")',
        ),
        (msg("", kind=Kind.GROUP_EVENT, item_type=1, group_action_type=0), "(added someone to the group)"),
        (msg("", kind=Kind.GROUP_EVENT, item_type=1, group_action_type=1), "(removed someone from the group)"),
        (msg("", kind=Kind.GROUP_EVENT, item_type=3), "(changed the group)"),
    ],
    ids=[
        "tapback",
        "custom-emoji",
        "tapback-unknown-target",
        "tapback-removal",
        "reply",
        "edit",
        "unsend",
        "rename",
        "member-added",
        "member-removed",
        "other-group-event",
    ],
)
def test_markers(message, expected):
    line = describe(message, QUOTES.get)
    assert line.startswith(expected)
    assert "Loved" not in line
    assert "Liked" not in line


def test_reply_marker_keeps_the_reply_text():
    assert describe(msg("Sure", kind=Kind.REPLY, reply_to="GONE")) == "↩ reply to a message: Sure"


def test_attachment_markers_come_before_the_text():
    heic = Attachment(1, "A1", "/x/IMG_1.heic", "image/heic", "public.heic", "IMG_1.heic", 5, 10)
    unknown = Attachment(2, "A2", "/x/blob", None, None, None, 0, 0)
    assert describe(msg("Look", attachments=(heic, unknown))) == (
        "[attachment: IMG_1.heic image/heic] [attachment: blob unknown] Look"
    )


def test_conversation_shows_kinds_and_never_the_tapback_text():
    lines = conversation(
        msg("Dinner at 8?", guid=TARGET_GUID),
        msg("Loved “Dinner at 8?”", kind=Kind.TAPBACK, tapback=tapback("love", "❤️")),
        chat=GROUP,
        show_kind=True,
    )
    assert lines[0].startswith('== Group "Trip"')
    assert lines[3].startswith(f'[09:30] {FRIEND} (tapback): ❤️ loved "Dinner at 8?')
    assert "Loved" not in "\n".join(lines)
