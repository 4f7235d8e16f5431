"""Routing: which live session gets a text. Pure decisions, no I/O.

Owns the rules of "many sessions, one Mac" (the reader applies them to every row it delivers):

1. `/sessions` typed in self-chat is answered by the channel (`sessions_text`) and delivered to nobody.
2. A text starting with `@name` (case-insensitive; the name of a live session; followed by the end, white
   space or one of `: , ; . ! ?`) goes to that session with the prefix removed, and the chat sticks to it.
   `@name` alone only moves the chat (answered in self-chat, delivered nowhere) unless the message has
   files.
3. `@name` of no live session (with more than one live) is not lost: the whole text goes where an
   unaddressed one would, with a note in front; in self-chat the owner is also told which sessions run.
4. An event about an earlier message (a reaction, an edit, an unsend, a late file) follows that message's
   session while it lives (`follows`).
5. A chat pinned in access.json (`"routes": {"<chat guid>": "<session name>"}`) goes to that session while
   it lives; else the chat's sticky session; else the most recently started live session (the default).

With one live session everything goes to it and nothing is added (no note, no `session` meta): the channel
behaves as it did before sessions existed, except that `@its-name` is stripped. With more than one, every
delivered event carries `session="<name>"` (a name we chose, never text a sender typed).

Inputs are plain values (live sessions as `sessions.SessionInfo`, the sticky map as chat GUID → session
id, pins as chat GUID → session name); `decide` returns a `Route` with a `Decision` (an enum that carries
its own description for logs), the target, the text to deliver, meta additions, an optional reply to send
in the chat, and the new sticky map (entries of ended sessions dropped). Chat GUIDs are compared without
their service prefix (`iMessage;-;x` ≡ `any;-;x`), as the echo filter does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .reasons import Described
from .sessions import SessionInfo

SESSIONS_COMMAND = "/sessions"

_ADDRESS = re.compile(r"\s*@(\w[\w.-]*)")
_BOUNDARY = re.compile(r"$|[\s:,;!?]")
_LEAD = re.compile(r"[\s:,;.!?]*")


class Decision(Described):
    """How a text was routed. `value` is a short tag for logs; `description` says what happened."""

    SESSIONS = ("sessions", "`/sessions` in self-chat: answered by the channel with the live sessions")
    SWITCHED = ("switched", "`@name` alone: the chat now sticks to that live session; nothing to deliver")
    ADDRESSED = ("addressed", "starts with `@name` of a live session: delivered there without the prefix")
    UNKNOWN_NAME = ("unknown-name", "`@name` of no live session: delivered whole to the chat's session, with a note")
    FOLLOW_UP = ("follow-up", "about an earlier message: delivered to the session that got that message")
    PINNED = ("pinned", "the chat is pinned to a live session in access.json `routes`")
    PIN_ABSENT = ("pin-absent", "pinned to a session that is not running: delivered to the chat's session, with a note")
    STICKY = ("sticky", "the chat sticks to a live session since an earlier `@name`")
    DEFAULT = ("default", "no address, pin or sticky session: the most recently started live session")

    @property
    def delivers(self) -> bool:
        """False for decisions that deliver nothing to Claude (`SESSIONS`, `SWITCHED`)."""
        return self not in (Decision.SESSIONS, Decision.SWITCHED)


@dataclass(frozen=True, slots=True)
class Route:
    """What to do with one text.

    `target`: the session to deliver to (None when `decision.delivers` is False); `text`: what to deliver
    in place of the typed text (prefix removed, a note line in front when there is one); `meta`: keys to
    add to the event's meta; `reply`: a text to send back in the same chat, or None; `sticky`: the new
    sticky map (chat GUID → session id); `note`: the note, also for logs."""

    decision: Decision
    target: SessionInfo | None
    text: str
    meta: dict[str, str] = field(default_factory=dict)
    reply: str | None = None
    sticky: dict[str, str] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Address:
    """A leading `@name`: `name` as typed (trailing dots dropped), `rest` the text after it (separating
    white space and `: , ; . ! ?` removed)."""

    name: str
    rest: str


def parse_address(text: str) -> Address | None:
    """The `@name` a text starts with, or None. `"@Work: fix it"` → `Address("Work", "fix it")`;
    `"@work's"` → None (a name must end at white space, punctuation `: , ; . ! ?` or the end)."""
    m = _ADDRESS.match(text)
    if m is None or not _BOUNDARY.match(text, m.end()):
        return None
    name = m.group(1).rstrip(".")
    rest = text[m.start(1) + len(name) :]
    lead = _LEAD.match(rest)  # always matches, possibly empty
    return Address(name, rest[lead.end() if lead else 0 :])


def chat_key(chat_guid: str) -> str:
    """A chat GUID without its service prefix, lower-cased (`iMessage;-;X` → `x`)."""
    parts = chat_guid.split(";", 2)
    return (parts[2] if len(parts) == 3 else chat_guid).casefold()


def is_sessions_command(text: str) -> bool:
    """True for `/sessions` (any case, surrounding white space ignored)."""
    return text.strip().casefold() == SESSIONS_COMMAND


def find_session(live: Sequence[SessionInfo], name: str) -> SessionInfo | None:
    """The live session called `name` (case-insensitive), or None."""
    wanted = name.casefold()
    return next((s for s in live if s.name.casefold() == wanted), None)


def pinned_name(chat_guid: str, pins: Mapping[str, str]) -> str | None:
    """The session name `chat_guid` is pinned to in `pins` (keys compared by `chat_key`), or None."""
    key = chat_key(chat_guid)
    return next((name for guid, name in pins.items() if chat_key(guid) == key), None)


def pins_from_access(doc: Mapping[str, object]) -> dict[str, str]:
    """The pins in a raw access.json object: its `routes` key when it is an object, keeping only string →
    non-empty string entries (anything else is ignored, like other malformed access.json entries)."""
    routes = doc.get("routes")
    if not isinstance(routes, Mapping):
        return {}
    return {g: n.strip() for g, n in routes.items() if isinstance(g, str) and isinstance(n, str) and n.strip()}


def permission_prompt_prefix(name: str, live_count: int) -> str:
    """What a session puts in front of its permission prompt: `"[name] "` when more than one session is
    live (so the owner knows who asks), else nothing."""
    return f"[{name}] " if live_count > 1 else ""


def _names(live: Sequence[SessionInfo]) -> str:
    return ", ".join(s.name for s in live)


def _fallback(
    chat: str,
    live: Sequence[SessionInfo],
    sticky: Mapping[str, str],
    pins: Mapping[str, str],
    follows: str | None,
) -> tuple[Decision, SessionInfo, str | None]:
    """Where an unaddressed text goes: (decision, target, note). `live` is ordered by start."""
    by_id = {s.id: s for s in live}
    followed = by_id.get(follows) if follows is not None else None
    if followed is not None:
        return Decision.FOLLOW_UP, followed, None
    pin = pinned_name(chat, pins)
    pinned = find_session(live, pin) if pin else None
    if pinned is not None:
        return Decision.PINNED, pinned, None
    target = by_id.get(sticky.get(chat, ""), live[-1])
    if pin is not None:
        note = f'[This chat is pinned to the session "{pin}", which is not running; it went to "{target.name}".]'
        return Decision.PIN_ABSENT, target, note
    return (Decision.STICKY if chat in sticky else Decision.DEFAULT), target, None


def decide(
    text: str,
    chat: str,
    live: Sequence[SessionInfo],
    *,
    sticky: Mapping[str, str],
    pins: Mapping[str, str] | None = None,
    self_chat: bool = False,
    follows: str | None = None,
    attachments: bool = False,
    stick_default: bool = False,
    labels: Mapping[str, str] | None = None,
    reader: str | None = None,
) -> Route:
    """Route one text (see the module docstring for the rules).

    `text`: what the sender typed; `chat`: its chat GUID; `live`: the live sessions (any order; the reader
    is always one of them); `sticky`: chat GUID → session id; `pins`: chat GUID → session name
    (`pins_from_access`); `self_chat`: the owner texting themself (only there do `/sessions` and replies
    about routing happen); `follows`: the id of the session that got the message this event is about;
    `attachments`: the message has files (so a bare `@name` is still delivered); `stick_default`: also
    stick a chat to the default session it was routed to; `labels` (chat GUID → display name) and
    `reader` (the reader's session id) go to `sessions_text`. Raises `ValueError` when `live` is empty."""
    if not live:
        raise ValueError("routing needs at least one live session (the reader is one)")
    live = sorted(live, key=lambda s: s.seq)
    many = len(live) > 1
    ids = {s.id for s in live}
    new_sticky = {c: s for c, s in sticky.items() if s in ids}
    pins = pins or {}
    if self_chat and follows is None and is_sessions_command(text):
        answer = sessions_text(live, sticky=new_sticky, pins=pins, reader=reader, labels=labels)
        return Route(Decision.SESSIONS, None, "", reply=answer, sticky=new_sticky)
    address = parse_address(text) if follows is None else None
    named = find_session(live, address.name) if address else None
    if address is not None and named is not None:
        new_sticky[chat] = named.id
        meta = {"session": named.name} if many else {}
        if address.rest or attachments:
            return Route(Decision.ADDRESSED, named, address.rest, meta, sticky=new_sticky)
        reply = f'This chat now goes to "{named.name}".' if self_chat else None
        return Route(Decision.SWITCHED, None, "", reply=reply, sticky=new_sticky)
    decision, target, note = _fallback(chat, live, new_sticky, pins, follows)
    reply = None
    if address is not None and many:
        decision = Decision.UNKNOWN_NAME
        note = f'[No session named "{address.name}" is running; this went to "{target.name}".]'
        if self_chat:
            running = _names(live)
            reply = f'No session "{address.name}" is running; your text went to "{target.name}". Running: {running}.'
    if stick_default and decision is Decision.DEFAULT:
        new_sticky[chat] = target.id
    if not many:
        return Route(decision, target, text, sticky=new_sticky)
    body = f"{note}\n{text}" if note else text
    return Route(decision, target, body, {"session": target.name}, reply, new_sticky, note)


def redirect(
    chat: str,
    live: Sequence[SessionInfo],
    *,
    sticky: Mapping[str, str],
    pins: Mapping[str, str] | None = None,
) -> Route:
    """Where an event goes again when the session it was routed to died before writing it (the handoff's
    orphans): the chat's pinned, else sticky, else default session among `live` (the dead one no longer
    in it), as for an unaddressed text. `text` is empty (the event keeps its content); `meta` is the
    `session` key to overwrite (empty with one live session: remove the key then). Raises `ValueError`
    when `live` is empty."""
    if not live:
        raise ValueError("routing needs at least one live session (the reader is one)")
    live = sorted(live, key=lambda s: s.seq)
    ids = {s.id for s in live}
    new_sticky = {c: s for c, s in sticky.items() if s in ids}
    decision, target, _ = _fallback(chat, live, new_sticky, pins or {}, None)
    meta = {"session": target.name} if len(live) > 1 else {}
    return Route(decision, target, "", meta, sticky=new_sticky)


def sessions_text(
    live: Sequence[SessionInfo],
    *,
    sticky: Mapping[str, str],
    pins: Mapping[str, str] | None = None,
    reader: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """The channel's answer to `/sessions`: the live session names (oldest first) with the default (the
    newest) and the reader (session id `reader`) marked, then where chats are pinned or stuck (chat
    labels from `labels`, else the GUID), then how to address a session. Plain text for a phone."""
    live = sorted(live, key=lambda s: s.seq)
    labels = labels or {}
    by_id = {s.id: s for s in live}
    lines = [f"Sessions ({len(live)}):" if len(live) != 1 else "One session:"]
    for s in live:
        marks = [m for m, on in (("default", s is live[-1]), ("reads iMessage", s.id == reader)) if on]
        lines.append(f"• {s.name}" + (f" ({', '.join(marks)})" if marks else ""))
    chats = []
    for guid, name in sorted((pins or {}).items()):
        running = "" if find_session(live, name) else ", not running"
        chats.append(f"• {labels.get(guid, guid)} → {name} (pinned{running})")
    for guid, sid in sorted(sticky.items()):
        if sid in by_id and (pins is None or pinned_name(guid, pins) is None):
            chats.append(f"• {labels.get(guid, guid)} → {by_id[sid].name}")
    if chats:
        lines += ["Chats:", *chats]
    lines.append("Start a text with @name to send it to that session; the chat then stays with it.")
    return "\n".join(lines)
