"""Inbound pipeline: new chat.db rows → decisions → channel events and side effects.

Owns the step between the reader and the MCP session: for every row past the watermark it decides,
in this order (design §2, §5):

1. *pieces*: a row with no `chat_message_join` (or with fewer joined files than its text's U+FFFC count or
   its attributedBody's file transfers announce) holds the watermark for `JOIN_GRACE_S`, then goes on with
   a log (a reader that moved past it would lose the message for good; its late files follow, see below);
2. *kind*: receipts, rows already unsent and Messages' notices (group changes, location sharing, an audio
   message kept, SharePlay, unknown `item_type`s) are never delivered (`NOT_DELIVERED`);
3. *already delivered*: GUIDs in the delivery ledger's seen-set (a crash between push and commit);
4. *age* (`judge_age`, `is_storm`): a row's age is its `date` against the local clock (the time of
   this read and of the previous one), never against another row's date (`date` is the sender's clock).
   Rows that arrived while the server was down are delivered when dated within the catch-up window; a
   row written well before the previous read (sender's clock slow, phone offline) is delivered with
   `late="true"`; rows older than the catch-up window, and late rows in a storm (`is_storm`: iCloud
   backfill), are held back, counted and logged once per storm;
5. *echo*: our own sends coming back (`EchoFilter`) are dropped;
6. *self-chat twins*: a text typed on the phone to oneself exists twice (sent and received copy);
   the second copy is dropped;
7. *permission replies*: in self-chat over iMessage only, `yes abcde` / `no abcde` answering a relayed
   request becomes a verdict plus an acknowledgement, not a chat message;
8. *the gate* (`gate.decide`): deliver, drop, or answer with a pairing code;
9. *iCloud duplicates*: a delivery whose sender, chat and text match one within `DUPLICATE_WINDOW`
   under another GUID is dropped.

`poll()` returns `Action`s — `Deliver`, `PermissionVerdict`, `Send` — and the decisions it took (for
logs and `imessage-channel watch`). It performs no MCP or AppleScript I/O itself: the server executes
the actions. Untrusted text only ever lands in `content`; meta values come from chat.db columns, and those
a sender's client can choose are checked first: file names are flattened by `media.safe_name`, reply and
reaction targets must be GUID-shaped (`chatdb.message_guid`, else left out), and a row whose own GUID or
chat GUID is not a plain id (`chatdb.plain_id`) is not delivered (reason `unsafe-id`).

Rich messages (what each delivered row becomes, see `_event`):
- *attachments*: every file on disk is listed in `attachments` (JSON `{path, mime, name, size[, original]}`,
  prepared by `media.prepare`: HEIC and oversized images become an inbox JPEG), the first image is
  `image_path`, `attachment_count` counts them all. Files still downloading (`transfer_state` ≠ 5) do
  not hold the watermark: the message is delivered now with `attachments_pending`, their ROWIDs are
  watched (at most `MAX_WAITING`, for `ATTACHMENT_WAIT_S`) with one query per poll, and each message's
  finished files arrive as a follow-up event `kind="attachment"` with the original `message_id`. Files
  announced but not joined when the message is delivered (joins committed late, one by one) count in
  `attachments_pending` too; the message's joins are watched (at most `MAX_JOINING`, for `JOIN_WATCH_S`)
  with one query per poll, and each newly joined file arrives the same way — no file goes missing silently;
- *reactions* (tapbacks, and stickers placed on a bubble: `reaction="sticker"` with the sticker's image) read
  as `👍 liked your message "Done: 3 files…"` (`render.whose_message`);
  *replies* get `reply_to` and a first line `↩ reply to your message "…"` in the content (never meta:
  the quote is someone's text);
- *edits and unsends* change a row in place, so the watermark never sees them. Delivered messages
  are tracked (at most `TRACK_LIMIT`, until `EDIT_WINDOW` after their date) and their
  `date_edited`/`date_retracted` read with one query per poll: an edit becomes `kind="edit"` with the
  new text, an unsend `kind="unsend"`. Neither survives a restart (the ledger persists rows, not this).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from . import access as access_mod
from .access import AccessStore
from .appletime import from_apple, to_apple_ns
from .chatdb import Attachment, ChatDB, Kind, Message, is_self_chat, plain_id
from .clock import SYSTEM, Clock
from .delivery import RECENT_LIMIT, DeliveryLedger
from .echo import EchoFilter, conversation_key, normalize_text
from .gate import IMESSAGE_SERVICES, Inbound, Verdict, decide
from .handles import normalize_handle
from .media import Inbox, Prepared, prepare
from .render import attachment_label, first_words, quote_of, reaction_phrase, whose_message

log = logging.getLogger(__name__)

JOIN_GRACE_S = 2.0
"""How long a `message` row without its `chat_message_join` holds the watermark (design §5)."""

TWIN_WINDOW = timedelta(seconds=30)
"""Max distance between the sent and received copies of one self-chat text typed on the phone."""

PERMISSION_REPLY = re.compile(r"^\s*(y|yes|n|no)\s+([a-km-z]{5})\s*$", re.IGNORECASE)
"""A permission verdict typed in self-chat (Claude Code channels reference: 5 letters a–z minus l)."""

BATCH = 500
"""Rows read per query; a burst is drained batch after batch within one wake."""

LATE_AFTER = timedelta(minutes=15)
"""A row dated more than this before the local clock at the moment it is read is *late*. `message.date`
of a received text is the sender's clock (BlueBubbles server #597 shows skewed values) and a text sent
from a phone that was offline arrives with its old date, so lateness is a hint for Claude (`late="true"`),
never a reason to drop a lone text."""

STORM_ROWS = 20
"""Late rows in one read from which the read is an iCloud sync storm (see `is_storm`)."""

DUPLICATE_WINDOW = timedelta(seconds=5)
"""iCloud can write one inbound message twice under two GUIDs: same sender, chat and text, dates this
close. The second copy is dropped."""

CATCHUP_WINDOW = timedelta(hours=24)
CATCHUP_MAX = 100
"""After a restart, rows that arrived while the server was down are delivered when dated within
`CATCHUP_WINDOW` and among the newest `CATCHUP_MAX` such rows (env `IMESSAGE_CATCHUP_HOURS`,
`IMESSAGE_CATCHUP_MAX`; 0 turns catch-up off)."""

ATTACHMENT_WAIT_S = 15 * 60.0
"""How long a delivered message's unfinished downloads are watched for (a long video over a slow link
takes minutes); after that they are given up with a log line."""

MAX_WAITING = 100
"""Unfinished attachments watched at once; beyond that new ones are not waited for (logged)."""

JOIN_WATCH_S = 10 * 60.0
"""How long a delivered message that still lacks some of its files (`Message.files_missing`) is watched for
their `message_attachment_join` rows. Messages normally commits them within a second of the message; the
watch outlasts a slow sync by far, and is bounded because the expected count comes from the sender's client
(a U+FFFC typed into a text announces a file that will never come)."""

MAX_JOINING = 100
"""Messages watched for late joins at once; beyond that a message's missing files are logged, not waited for."""

HOLD_PENALTY_S = 10 * 60.0
"""When a sender's message was held the whole `JOIN_GRACE_S` for files that never joined, that sender's next
messages are not held for files for this long: they are delivered at once and their files follow as
`kind="attachment"` events. The U+FFFC count and the transfer runs are the sender's to write, so without
this a stranger could delay every message behind theirs by `JOIN_GRACE_S` per text they send."""

HOLD_PENALTY_LIMIT = 256
"""Senders remembered for `HOLD_PENALTY_S` (the oldest are forgotten first)."""

FILE_KINDS = frozenset({Kind.TEXT, Kind.REPLY, Kind.EDIT})
"""Kinds whose files are waited for and followed (a reaction's sticker is not)."""

EDIT_WINDOW = timedelta(minutes=16)
"""How long after its date a delivered message is watched for edits and unsends: Apple allows editing
for 15 minutes (unsending for 2), iOS 16 / macOS Ventura ("Unsend and edit messages", Apple Support);
one more minute absorbs clock differences between the sender's device and this Mac."""

TRACK_LIMIT = 200
"""Delivered messages watched for edits and unsends at once (the newest are kept)."""


NOT_DELIVERED = frozenset(
    {
        Kind.RECEIPT,
        Kind.UNSEND,
        Kind.GROUP_EVENT,
        Kind.LOCATION_SHARING,
        Kind.AUDIO_KEPT,
        Kind.SHAREPLAY,
        Kind.OTHER_EVENT,
    }
)
"""Kinds never delivered (the drop reason is the kind's value; `imessage-channel watch` words each one).
A channel event makes Claude act, and none of these holds anything to act on: no words from anyone, and no
data Claude could use — a row already unsent; Messages' notices of group changes, of location sharing
started or stopped (the location itself lives in Find My, not chat.db), of an audio message kept (the
recording was delivered with its own message), of a SharePlay/FaceTime session, or of an `item_type` this
version does not know. They stay visible in `chat_messages` history."""


class Age(StrEnum):
    """How old a row is when it is read, by the local clock (see `judge_age`)."""

    FRESH = "fresh"  # written after (or just before) the previous read, or dated ahead (a clock ahead)
    LATE = "late"  # written well before the previous read, within the catch-up window
    TOO_OLD = "too-old"  # older than the catch-up window


def judge_age(date: datetime | None, now: datetime, previous_read: datetime, window: timedelta) -> Age:
    """Age of a row dated `date` (UTC; None for a NULL date, treated as fresh), read at local time `now`;
    `previous_read` is the local time of the read before this one (or the start).

    FRESH when dated after `previous_read` minus `LATE_AFTER`: written since we last looked, so news even if
    it reaches us hours later (this Mac was asleep, Messages caught up on wake). LATE when dated before that
    but within `window` of `now` (the catch-up window, env `IMESSAGE_CATCHUP_HOURS`): a sender's phone that
    was offline, or a slow clock. TOO_OLD beyond. Pure: only this row's date and the local clock count,
    never another row's date."""
    if date is None or date >= previous_read - LATE_AFTER:
        return Age.FRESH
    return Age.LATE if now - date <= window else Age.TOO_OLD


def is_storm(late_rows: int, storm_running: bool) -> bool:
    """Is a read with `late_rows` late rows (see `Age.LATE`) part of an iCloud sync storm?

    Why: iCloud sync and database rebuilds re-insert old messages under fresh ROWIDs with their old dates,
    hundreds at a time (replay floods users of the official plugin report); delivering them would flood
    Claude with history. A real text arrives late one or a few at a time (a phone back online, a sender's
    slow clock). So a read with `STORM_ROWS` or more late rows starts a storm, and the storm goes on
    through the following reads while they still carry late rows (a sync trickles in over several reads);
    the first read with none ends it. During a storm late rows are held back, fresh rows (self-chat
    included) are delivered as always. Pure."""
    return late_rows >= STORM_ROWS or (storm_running and late_rows > 0)


@dataclass(frozen=True, slots=True)
class Deliver:
    """Push `notifications/claude/channel` with this content and meta (all values strings); `rowid` is
    the row it comes from (for the delivery ledger)."""

    content: str
    meta: dict[str, str]
    rowid: int = 0


@dataclass(frozen=True, slots=True)
class PermissionVerdict:
    """Push `notifications/claude/channel/permission` `{request_id, behavior}`."""

    request_id: str
    behavior: str  # "allow" | "deny"


@dataclass(frozen=True, slots=True)
class Send:
    """Text something back through the sender (pairing codes, confirmations, acknowledgements)."""

    chat_guid: str
    text: str


Action = Deliver | PermissionVerdict | Send


@dataclass(frozen=True, slots=True)
class RowDecision:
    """What happened to one row: `verdict` is deliver/drop/pair/verdict/hold, `reason` a slug."""

    message: Message
    verdict: str
    reason: str


class PendingPermissions:
    """Request ids relayed to self-chat and not answered yet (thread-safe, bounded)."""

    def __init__(self, limit: int = 64) -> None:
        self._ids: deque[str] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        with self._lock:
            if request_id.lower() not in self._ids:
                self._ids.append(request_id.lower())

    def take(self, request_id: str) -> bool:
        """Remove and return True when `request_id` is pending."""
        with self._lock:
            rid = request_id.lower()
            if rid in self._ids:
                self._ids.remove(rid)
                return True
            return False


def iso_utc(when: datetime) -> str:
    """`2026-11-24T10:02:03.123Z` (the official plugin's `Date.toISOString()` form) of an aware datetime."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass(slots=True)
class _Tracked:
    """A delivered message watched for edits and unsends."""

    guid: str
    chat_guid: str
    user: str
    self_chat: bool
    text: str
    edited_ns: int
    until: datetime


@dataclass(slots=True)
class _Waiting:
    """An attachment of a delivered message that was still downloading."""

    message: Message
    self_chat: bool
    since: float


@dataclass(slots=True)
class _Joining:
    """A delivered message whose files are not all joined: `known` are the attachment ROWIDs handled so
    far, `missing` how many more its text or attributedBody announced."""

    message: Message
    self_chat: bool
    known: set[int]
    missing: int
    since: float


@dataclass(slots=True)
class _Recent:
    text: str
    is_from_me: bool
    date: datetime
    paired: bool = False


@dataclass
class InboundPipeline:
    """Turns rows past `watermark` into actions (see module docstring).

    `owner`: the owner's normalised handles (`ChatDB.owner_handles()`); `allow_sms`: env
    `IMESSAGE_ALLOW_SMS=true`; `dry_run`: decide only, never write access.json (pairing) — for
    `imessage-channel watch`; `ledger`: the persisted seen-set (see `delivery`); `catchup_until`:
    rows up to that ROWID arrived while the server was down (`catch_up="true"`); `catchup_window`: the
    catch-up window (older rows are not delivered; watch's replay sets it unbounded); `last_read`: the
    local time of the latest read (ages are judged against the one before; a re-anchor resumes there;
    the server starts it from the ledger's `last_active`); `replay_until`: rows up to
    this ROWID skip the age step (`imessage-channel watch` replaying history); `inbox`:
    where images are converted for Claude (None: attachments are delivered as they are); `clock`:
    the one clock (`clock.Clock`: ages and event times from `now()`, grace periods and download waits
    from `monotonic()`). Not
    thread-safe: one thread polls (it may run `sips`, so never the event loop's).
    """

    db: ChatDB
    store: AccessStore
    owner: frozenset[str]
    watermark: int
    echo: EchoFilter = field(default_factory=EchoFilter)
    permissions: PendingPermissions = field(default_factory=PendingPermissions)
    allow_sms: bool = False
    dry_run: bool = False
    ledger: DeliveryLedger | None = None
    catchup_until: int = 0
    catchup_window: timedelta = timedelta(hours=24)
    last_read: datetime | None = None
    _previous_read: datetime | None = None
    replay_until: int = 0
    started: datetime | None = None
    inbox: Inbox | None = None
    clock: Clock = SYSTEM
    _self: dict[str, bool] = field(default_factory=dict)
    _recent_self: deque[_Recent] = field(default_factory=lambda: deque(maxlen=64))
    _held_since: dict[int, float] = field(default_factory=dict)
    recent: deque[tuple[str, str, str, int, str]] = field(default_factory=deque)
    _recent_index: dict[tuple[str, ...], list[tuple[int, str]]] = field(default_factory=dict)
    edge_guid: str | None = None
    _storm: int = 0
    _read_storm: bool = False
    _tracked: OrderedDict[int, _Tracked] = field(default_factory=OrderedDict)
    _waiting: dict[int, _Waiting] = field(default_factory=dict)
    _joining: dict[int, _Joining] = field(default_factory=dict)
    _hold_expired: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _generation: int | None = None
    _approvals_unreadable: bool = False
    answered_in: str | None = None
    """The self-chat GUID of the last permission verdict (where the owner answers prompts)."""

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock.now()

    # -- chats ---------------------------------------------------------------------------------
    def is_self_chat(self, chat_guid: str) -> bool:
        """Cached: is this chat GUID a DM with the owner?"""
        cached = self._self.get(chat_guid)
        if cached is None:
            cached = is_self_chat(self.db.chat(chat_guid), self.db.participants(chat_guid), self.owner)
            self._self[chat_guid] = cached
        return cached

    def _age(self, msg: Message) -> Age:
        """`judge_age` of `msg` in the current read."""
        assert self._previous_read is not None and self.last_read is not None
        return judge_age(msg.date, self.last_read, self._previous_read, self.catchup_window)

    def from_owner(self, msg: Message) -> bool:
        """Did the owner write `msg`? A sent row (`is_from_me`), or a received one whose sender handle is one
        of the owner's (the received copy of a self-chat text). Self-chat trust needs this *and* the chat:
        a row from anyone else in a chat that looks like self-chat is gated as that sender's."""
        return msg.is_from_me or (msg.handle is not None and normalize_handle(msg.handle) in self.owner)

    # -- the loop body -------------------------------------------------------------------------
    def poll(self, limit: int = BATCH) -> tuple[list[Action], list[RowDecision]]:
        """Read up to `limit` rows past the watermark; return the actions and per-row decisions.

        The watermark advances past every row decided here, and stops at a row still waiting for its
        chat join or its attachment joins (for `JOIN_GRACE_S`; for files, not again for `HOLD_PENALTY_S`
        from a sender whose files never came). Before the new rows come the follow-ups of messages already
        delivered: files joined late, finished downloads, edits, unsends. A replaced chat.db is
        reopened (follow-ups pending on the old one are dropped: its ROWIDs may mean other rows now);
        a file rebuilt, renumbered or restored in place is re-anchored (`_check_anchor`). Raises
        `ChatDBError` when chat.db cannot be read (the caller logs and retries)."""
        self.db.refresh()
        reopened = self._generation is not None and self.db.generation != self._generation
        self._generation = self.db.generation
        if reopened:  # here or by a tool call
            log.warning("chat.db was replaced; reopened it")
            self._tracked.clear()
            self._waiting.clear()
            self._joining.clear()
        self._check_anchor()
        actions: list[Action] = [*self._late_joins(), *self._downloads(), *self._edits()]
        decisions: list[RowDecision] = []
        rows = self.db.messages_after(self.watermark, limit)
        now = self.clock.now()
        assert self.started is not None
        self._previous_read = max(self.started, self.last_read or self.started)
        self.last_read = now
        live = max(self.catchup_until, self.replay_until)
        late = sum(1 for m in rows if m.rowid > live and self._age(m) is Age.LATE)
        self._read_storm = is_storm(late, self._storm > 0)
        for msg in rows:
            if msg.kind is Kind.UNREADABLE:  # logged by the reader; the watermark moves past it
                decisions.append(RowDecision(msg, "drop", "unreadable"))
                self.watermark, self.edge_guid = msg.rowid, msg.guid
                continue
            pending = "waiting-for-chat-join" if msg.chat_guid is None else None
            if pending is None and msg.attachments_pending and msg.kind in FILE_KINDS and self._may_hold(msg):
                pending = "waiting-for-attachments"
            if pending:
                first = self._held_since.setdefault(msg.rowid, self.clock.monotonic())
                if self.clock.monotonic() - first < JOIN_GRACE_S:
                    decisions.append(RowDecision(msg, "hold", pending))
                    break
                log.warning("message ROWID %d still %s after %.1f s; going on", msg.rowid, pending, JOIN_GRACE_S)
                if pending == "waiting-for-attachments":
                    self._hold_spent(msg)
            self._held_since.pop(msg.rowid, None)
            if msg.chat_guid is None:
                verdict, reason, acts = "drop", "no-chat", []
            elif plain_id(msg.guid) is None or plain_id(msg.chat_guid) is None:
                log.warning("message ROWID %d: its GUID or chat GUID is not a plain id; not delivered", msg.rowid)
                verdict, reason, acts = "drop", "unsafe-id", []
            else:
                verdict, reason, acts = self._decide(msg)
            decisions.append(RowDecision(msg, verdict, reason))
            actions += acts
            self.watermark, self.edge_guid = msg.rowid, msg.guid
        if self._storm and not self._read_storm and len(rows) < limit:
            log.warning("sync storm over: %d old messages were not delivered as new", self._storm)
            self._storm = 0
        return actions, decisions

    def _check_anchor(self) -> None:
        """Before each read: are the rows up to the watermark still the ones decided? Not when the
        ROWID sequence fell below the watermark (chat.db rebuilt or renumbered: ROWIDs are never reused
        otherwise), nor when the row at the watermark now has another GUID than the one decided there
        (`edge_guid`: the file was restored or rebuilt in place, even with as many rows). A deleted row
        at the watermark (None) is an ordinary deletion. Either case re-anchors (`_reanchor`)."""
        if not self.watermark:
            return
        seq, guid = self.db.anchor(self.watermark)
        if seq < self.watermark:
            self._reanchor(f"the ROWID sequence went back to {seq}, below the watermark {self.watermark}")
        elif guid is not None and self.edge_guid is not None and guid != self.edge_guid:
            self._reanchor(f"the row at the watermark {self.watermark} is another message than the one read there")

    def _reanchor(self, why: str) -> None:
        """The rows at the watermark are not the ones decided (chat.db rebuilt, renumbered or restored).
        Resume right after the last row decided (`edge_guid`) if the new file still has it under another
        ROWID (renumbered); else at the first row dated since the channel was last active (local clock,
        minus `LATE_AFTER`). GUIDs already delivered are still recognised by the ledger, and the age rules
        judge the rest."""
        moved = self.db.rowid_of(self.edge_guid) if self.edge_guid else None
        if moved is not None:
            new = moved
        else:
            since = (self.last_read or self.started or self.clock.now()) - LATE_AFTER
            first = self.db.first_rowid_since(to_apple_ns(since))
            new = (first - 1) if first is not None else self.db.max_rowid()
        log.warning("chat.db was rebuilt or restored (%s); resuming after ROWID %d", why, new)
        self.watermark, self.edge_guid = new, None
        self.catchup_until = 0

    def approvals(self) -> list[Action]:
        """Confirmations for the `approved/<sender>` files the access skill or `access pair` wrote; each
        file is deleted once decided.

        A file in the state dir is no proof of a pairing (any program of the user's can drop one), so an
        approval is honoured only when, now, its sender is in `allowFrom` and its chat (the file's content,
        default `iMessage;-;<sender>`) is that sender's one-to-one chat in chat.db; otherwise it is dropped
        with one log line and nothing is sent. Raises `ChatDBError` (the file then stays for the next try)."""
        out: list[Action] = []
        state = self.store.state_dir
        try:
            senders = access_mod.pending_approvals(state)
        except OSError as exc:  # never let an unreadable approved/ stop delivery
            if not self._approvals_unreadable:
                where = state / access_mod.APPROVED_DIR
                log.warning("cannot list %s (%s); pairing confirmations wait until it can be read", where, exc)
            self._approvals_unreadable = True
            return out
        self._approvals_unreadable = False
        access: access_mod.Access | None = None
        for sender in senders:
            try:
                chat = access_mod.read_approval(state, sender) or f"iMessage;-;{sender}"
            except ValueError:
                continue
            access = access or self.store.load()
            refused = self._approval_refused(sender, chat, access)
            access_mod.discard_approval(state, sender)
            if refused:
                log.warning("approved/%s dropped without a confirmation: %s", sender, refused)
                continue
            out.append(Send(chat, access_mod.PAIRED_CONFIRMATION))
        return out

    def _approval_refused(self, sender: str, chat_guid: str, access: access_mod.Access) -> str | None:
        """Why an approval for `sender` in `chat_guid` must not be confirmed, or None when it may."""
        if not access_mod.is_allowed(access.allow_from, sender):
            return f"{sender!r} is not in allowFrom"
        chat = self.db.chat(chat_guid)
        if chat is None:
            return f"chat {chat_guid!r} is not in chat.db"
        participants = self.db.participants(chat_guid)
        wanted = normalize_handle(sender)
        if not chat.is_dm or [normalize_handle(p) for p in participants] != [wanted]:
            return f"chat {chat_guid!r} is not {sender}'s one-to-one chat"
        return None

    def _decide(self, msg: Message) -> tuple[str, str, list[Action]]:
        assert msg.chat_guid is not None
        if msg.kind in NOT_DELIVERED:
            return "drop", msg.kind.value, []
        if self.ledger is not None and self.ledger.is_seen(msg.guid):
            return "drop", "already-delivered", []
        age = self._age(msg)
        if msg.rowid <= self.replay_until:
            age = Age.FRESH
        elif msg.rowid <= self.catchup_until:
            if age is Age.TOO_OLD:
                return "drop", "catch-up-too-old", []
        elif age is Age.TOO_OLD or (age is Age.LATE and self._read_storm):
            if not self._storm:
                log.warning("old messages are arriving as new rows (iCloud sync or a rebuild); not delivering them")
            self._storm += 1
            return "drop", "backfill" if age is Age.LATE else "too-old", []
        self_chat = self.is_self_chat(msg.chat_guid) and self.from_owner(msg)
        if msg.text and self.echo.is_echo(msg.chat_guid, msg.text, self_chat=self_chat):
            return "drop", "echo", []
        if self_chat and msg.kind not in (Kind.TAPBACK, Kind.TAPBACK_REMOVAL) and self._is_twin(msg):
            return "drop", "self-chat-copy", []
        if (
            self_chat
            and msg.service.lower() in IMESSAGE_SERVICES  # an SMS "from yourself" can be spoofed
            and (m := PERMISSION_REPLY.match(msg.text))
            and self.permissions.take(m.group(2))
        ):
            allow = m.group(1).lower().startswith("y")
            rid = m.group(2).lower()
            self.answered_in = msg.chat_guid
            ack = f"{'✅ Allowed' if allow else '❌ Denied'} ({rid})"
            return (
                "verdict",
                "permission-reply",
                [
                    PermissionVerdict(rid, "allow" if allow else "deny"),
                    Send(msg.chat_guid, ack),
                ],
            )
        decision = decide(
            Inbound(
                sender=msg.handle if not msg.is_from_me else None,
                chat_guid=msg.chat_guid,
                chat_style=msg.chat_style,
                service=msg.service,
                text=msg.text,
                is_from_me=msg.is_from_me,
                is_self_chat=self_chat,
            ),
            access_mod.Access() if self_chat else self.store.load(),  # self-chat never needs access.json
            allow_sms=self.allow_sms,
        )
        if decision.verdict is Verdict.DELIVER:
            if self._is_duplicate(msg):
                return "drop", "icloud-duplicate", []
            event = self._event(msg, self_chat)
            if age is Age.LATE and msg.rowid > self.catchup_until:
                event.meta["late"] = "true"
            if msg.kind in (Kind.TEXT, Kind.REPLY, Kind.EDIT) and not self.dry_run:
                self._track(msg, event)
            return "deliver", decision.reason, [event]
        if decision.verdict is Verdict.PAIR and msg.handle:
            return "pair", decision.reason, self._pair(msg)
        return "drop", decision.reason, []

    def _is_duplicate(self, msg: Message) -> bool:
        """Is `msg` a second copy (another GUID) of a message just delivered? Records it otherwise.

        Files count as content: the fingerprint of a message with joined files includes their names, so two
        photos sent in a row as two messages without text are not one photo twice; a message with neither
        text nor joined files is never called a copy (nothing to compare yet)."""
        assert msg.chat_guid is not None
        content = normalize_text(msg.text)
        if msg.attachments:
            content += "\0" + "\0".join(a.transfer_name or a.name for a in msg.attachments)
        key = (
            normalize_handle(msg.sender or ""),
            conversation_key(msg.chat_guid, self_chat=False),
            hashlib.sha256(content.encode()).hexdigest()[:16],
        )
        when = to_apple_ns(msg.date) if msg.date else 0
        window = DUPLICATE_WINDOW.total_seconds() * 1e9
        same = self._recent_index.setdefault(key, [])
        comparable = msg.kind in (Kind.TEXT, Kind.REPLY) and bool(msg.text or msg.attachments)
        if comparable and any(abs(d - when) <= window and g != msg.guid for d, g in same):
            return True
        self.remember((*key, when, msg.guid))
        return False

    def remember(self, fingerprint: tuple[str, str, str, int, str]) -> None:
        """Add a delivery fingerprint (sender, conversation, text hash, Apple ns, GUID) to `recent`,
        evicting the oldest beyond `RECENT_LIMIT`; indexed by the first three for O(1) lookups."""
        if len(self.recent) >= RECENT_LIMIT:
            old = self.recent.popleft()
            bucket = self._recent_index.get(old[:3], [])
            with contextlib.suppress(ValueError):
                bucket.remove(old[3:])
            if not bucket:
                self._recent_index.pop(old[:3], None)
        self.recent.append(fingerprint)
        self._recent_index.setdefault(fingerprint[:3], []).append(fingerprint[3:])

    def _is_twin(self, msg: Message) -> bool:
        """Self-chat: is `msg` the other copy of a text already seen (opposite `is_from_me`)?"""
        text = normalize_text(msg.text)
        when = msg.date or self.clock.now()
        for seen in self._recent_self:
            if (
                not seen.paired
                and seen.is_from_me != msg.is_from_me
                and seen.text == text
                and abs(seen.date - when) <= TWIN_WINDOW
            ):
                seen.paired = True
                return True
        self._recent_self.append(_Recent(text, msg.is_from_me, when))
        return False

    def _pair(self, msg: Message) -> list[Action]:
        assert msg.handle is not None and msg.chat_guid is not None
        if self.dry_run:
            return []
        outcome_box: list[access_mod.PairingOutcome] = []

        def step(acc: access_mod.Access) -> access_mod.Access:
            new, outcome = access_mod.issue_pairing_code(acc, msg.handle or "", msg.chat_guid or "", self.clock.now())
            outcome_box.append(outcome)
            return new

        try:
            self.store.update(step)
        except (access_mod.AccessReadOnlyError, access_mod.AccessUnavailableError, OSError) as exc:
            log.warning("pairing for %s not recorded: %s", msg.handle, exc)
            return []
        outcome = outcome_box[-1]
        return [Send(msg.chat_guid, outcome.message())] if outcome.should_reply else []

    # -- events ------------------------------------------------------------------------------------
    def _base_meta(self, msg: Message, self_chat: bool) -> dict[str, str]:
        assert msg.chat_guid is not None
        meta = {
            "chat_id": msg.chat_guid,
            "message_id": msg.guid,
            "user": (msg.sender or "me") if msg.is_from_me else (msg.handle or "unknown"),
            "ts": iso_utc(msg.date or self.clock.now()),
        }
        if self_chat:
            meta["self_chat"] = "true"
        return meta

    def _event(self, msg: Message, self_chat: bool) -> Deliver:
        """The channel event for a row the gate let through (see the module docstring for its shape)."""
        meta = self._base_meta(msg, self_chat)
        content = msg.text
        if msg.attachments or (msg.files_missing and msg.kind in FILE_KINDS):
            labels = self._attachments(msg, self_chat, meta)
            content = content or labels
        if msg.reply_to or msg.kind is Kind.REPLY:
            if msg.reply_to:  # GUID-shaped only (chatdb.message_guid): the sender's client wrote it
                meta["reply_to"] = msg.reply_to
            content = f"↩ reply to {self._target(msg, msg.reply_to)}\n{content}"
        if msg.kind is Kind.EDIT:
            meta["edited"] = "true"
        if msg.tapback is not None:
            content = f"{reaction_phrase(msg.tapback)} {self._target(msg, msg.tapback.target_guid)}"
            meta["kind"] = "reaction"
            meta["reaction"] = msg.tapback.reaction
            if msg.tapback.target_guid:  # "" unless GUID-shaped (chatdb.tapback_of)
                meta["reaction_to"] = msg.tapback.target_guid
            if msg.tapback.removed:
                meta["reaction_removed"] = "true"
        if msg.rowid <= self.catchup_until:
            meta["catch_up"] = "true"
        return Deliver(content, meta, msg.rowid)

    def _target(self, msg: Message, guid: str | None) -> str:
        """`your message "Done: 3 files…"`: whose message `guid` is and its first words (one lookup by
        the unique `message.guid`), or `a message` when it is not in chat.db or there is no GUID."""
        target = self.db.message_by_guid(guid) if guid else None
        quoted = quote_of(target) if target is not None else ""
        return f'{whose_message(target, msg)} "{quoted}"' if quoted else whose_message(target, msg)

    # -- attachments ---------------------------------------------------------------------------------
    def _attachments(self, msg: Message, self_chat: bool, meta: dict[str, str]) -> str:
        """Add the attachment meta of `msg` to `meta`, start watching its unfinished downloads and its files
        not joined yet, and return its attachment labels (the content of a message without text), e.g.
        `[attachment: IMG_1.heic image/heic] [attachment: IMG_2.heic image/heic, still downloading]
        [1 more attachment still arriving]`. `attachment_count` counts the files joined and those still
        announced (`Message.files_missing`); `attachments_pending` the ones downloading or not joined yet."""
        delivered, labels, pending = self._files(msg, msg.attachments, self_chat)
        missing = msg.files_missing if msg.kind in FILE_KINDS else 0
        if missing:
            labels.append(_arriving_label(missing, more=bool(msg.attachments)))
            self._watch_joins(msg, self_chat, missing)
        _attachment_meta(meta, delivered, len(msg.attachments) + missing)
        if pending + missing:
            meta["attachments_pending"] = str(pending + missing)
        if msg.is_audio_message or any(a.is_audio for a in msg.attachments):
            meta["audio_message"] = "true"
        if any(a.is_sticker for a in msg.attachments):
            meta["sticker"] = "true"
        return " ".join(labels)

    def _files(
        self, msg: Message, atts: tuple[Attachment, ...] | list[Attachment], self_chat: bool
    ) -> tuple[list[Prepared], list[str], int]:
        """`(delivered, labels, downloading)` for these files of `msg`; unfinished ones are watched (`_wait_for`).

        A file is delivered when it is on disk and finished (`transfer_state` 5) — or, for a row sent
        from this Mac (`is_from_me`), simply on disk: the original is local. A finished file that is not
        on disk (storage optimised away, deleted) is labelled `not on this Mac`."""
        delivered: list[Prepared] = []
        labels: list[str] = []
        pending = 0
        for att in atts:
            label = attachment_label(att, audio_message=msg.is_audio_message)
            on_disk = bool(att.path) and os.path.isfile(att.path or "")
            if on_disk and (att.finished or msg.is_from_me):
                ready = prepare(att, self.inbox)
                if ready is not None:
                    delivered.append(ready)
                    labels.append(label)
                else:
                    labels.append(label[:-1] + ", unavailable]")
            elif not att.finished:  # not there yet, or partly written
                pending += 1
                self._wait_for(att, msg, self_chat)
                labels.append(label[:-1] + ", still downloading]")
            else:
                labels.append(label[:-1] + ", not on this Mac]")
        return delivered, labels, pending

    def _wait_for(self, att: Attachment, msg: Message, self_chat: bool) -> None:
        if self.dry_run:
            return
        if len(self._waiting) >= MAX_WAITING:
            log.warning("%d downloads already watched; not waiting for %s of %s", MAX_WAITING, att.name, msg.guid)
            return
        self._waiting[att.rowid] = _Waiting(msg, self_chat, self.clock.monotonic())

    def _downloads(self) -> list[Action]:
        """Follow-up events for watched attachments that finished downloading (one per message), with one
        query over their ROWIDs; downloads watched longer than `ATTACHMENT_WAIT_S` are given up."""
        if not self._waiting:
            return []
        now = self.clock.monotonic()
        for rowid, waiting in list(self._waiting.items()):
            if now - waiting.since > ATTACHMENT_WAIT_S:
                log.warning(
                    "an attachment of message %s did not finish downloading in %.0f min; not waiting longer",
                    waiting.message.guid,
                    ATTACHMENT_WAIT_S / 60,
                )
                del self._waiting[rowid]
        if not self._waiting:
            return []
        current = {a.rowid: a for a in self.db.attachments_by_rowid(self._waiting)}
        finished: dict[str, tuple[_Waiting, list[Attachment]]] = {}
        for rowid, waiting in list(self._waiting.items()):
            att = current.get(rowid)
            if att is None:  # the attachment row is gone (message deleted)
                del self._waiting[rowid]
            elif att.finished and att.path and os.path.isfile(att.path):
                finished.setdefault(waiting.message.guid, (waiting, []))[1].append(att)
                del self._waiting[rowid]
        return [self._download_event(waiting, atts) for waiting, atts in finished.values()]

    def _still_coming(self, msg: Message) -> int:
        """Files of delivered message `msg` still downloading or not joined yet (both watched)."""
        joining = self._joining.get(msg.rowid)
        downloading = sum(1 for w in self._waiting.values() if w.message.guid == msg.guid)
        return downloading + (joining.missing if joining is not None else 0)

    def _download_event(self, waiting: _Waiting, atts: list[Attachment]) -> Deliver:
        """`kind="attachment"`: files of an earlier message (`message_id`) that finished downloading."""
        msg = waiting.message
        meta = self._base_meta(msg, waiting.self_chat)
        meta["ts"] = iso_utc(self.clock.now())
        meta["kind"] = "attachment"
        delivered = [p for a in atts if (p := prepare(a, self.inbox)) is not None]
        _attachment_meta(meta, delivered, len(atts))
        still = self._still_coming(msg)
        if still:
            meta["attachments_pending"] = str(still)
        if msg.is_audio_message or any(a.is_audio for a in atts):
            meta["audio_message"] = "true"
        if any(a.is_sticker for a in atts):
            meta["sticker"] = "true"
        labels = " ".join(attachment_label(a, audio_message=msg.is_audio_message) for a in atts)
        return Deliver(f"finished downloading for an earlier message: {labels}", meta)

    # -- files joined after delivery ----------------------------------------------------------------
    def _may_hold(self, msg: Message) -> bool:
        """May `msg` hold the watermark for its files? Not within `HOLD_PENALTY_S` of a hold of its
        sender's that expired without them."""
        spent = self._hold_expired.get(normalize_handle(msg.sender or ""))
        return spent is None or self.clock.monotonic() - spent >= HOLD_PENALTY_S

    def _hold_spent(self, msg: Message) -> None:
        """`msg` waited `JOIN_GRACE_S` for files that did not join: remember its sender (`_may_hold`)."""
        key = normalize_handle(msg.sender or "")
        self._hold_expired.pop(key, None)
        self._hold_expired[key] = self.clock.monotonic()
        while len(self._hold_expired) > HOLD_PENALTY_LIMIT:
            self._hold_expired.popitem(last=False)

    def _watch_joins(self, msg: Message, self_chat: bool, missing: int) -> None:
        """Watch delivered `msg` for `missing` more files for `JOIN_WATCH_S` (at most `MAX_JOINING` messages)."""
        if self.dry_run:
            return
        if len(self._joining) >= MAX_JOINING and msg.rowid not in self._joining:
            log.warning(
                "%d messages already watched for files; not waiting for %d of %s", MAX_JOINING, missing, msg.guid
            )
            return
        known = {a.rowid for a in msg.attachments}
        self._joining[msg.rowid] = _Joining(msg, self_chat, known, missing, self.clock.monotonic())

    def _late_joins(self) -> list[Action]:
        """Follow-up events (`kind="attachment"`, one per message) for files Messages joined to delivered
        messages after delivery, with one query over the watched messages' joins; a message watched longer
        than `JOIN_WATCH_S` is given up with a log line. Newly joined files still downloading are handed to
        the download watch (`_wait_for`) and follow from there."""
        if not self._joining:
            return []
        now = self.clock.monotonic()
        for rowid, joining in list(self._joining.items()):
            if now - joining.since > JOIN_WATCH_S:
                log.warning(
                    "%d file(s) of message %s never joined in %.0f min; not waiting longer",
                    joining.missing,
                    joining.message.guid,
                    JOIN_WATCH_S / 60,
                )
                del self._joining[rowid]
        if not self._joining:
            return []
        joined = self.db.attachments_of(self._joining)
        out: list[Action] = []
        for rowid, joining in list(self._joining.items()):
            new = [a for a in joined.get(rowid, ()) if a.rowid not in joining.known]
            if not new:
                continue
            joining.known.update(a.rowid for a in new)
            joining.missing = max(joining.missing - len(new), 0)
            if not joining.missing:
                del self._joining[rowid]
            event = self._late_event(joining, new)
            if event is not None:
                out.append(event)
        return out

    def _late_event(self, joining: _Joining, atts: list[Attachment]) -> Deliver | None:
        """`kind="attachment"`: files joined to an earlier message (`message_id`) after it was delivered;
        None when every one of them is still downloading (the download watch delivers them when done)."""
        msg = joining.message
        delivered, labels, downloading = self._files(msg, atts, joining.self_chat)
        if downloading == len(atts):
            return None
        meta = self._base_meta(msg, joining.self_chat)
        meta["ts"] = iso_utc(self.clock.now())
        meta["kind"] = "attachment"
        _attachment_meta(meta, delivered, len(atts))
        still = self._still_coming(msg)
        if still:
            meta["attachments_pending"] = str(still)
        if msg.is_audio_message or any(a.is_audio for a in atts):
            meta["audio_message"] = "true"
        if any(a.is_sticker for a in atts):
            meta["sticker"] = "true"
        return Deliver(f"arrived later for an earlier message: {' '.join(labels)}", meta)

    # -- edits and unsends ---------------------------------------------------------------------------
    def _track(self, msg: Message, event: Deliver) -> None:
        """Watch a delivered message for edits and unsends until `EDIT_WINDOW` after its date."""
        assert msg.chat_guid is not None
        until = (msg.date or self.clock.now()) + EDIT_WINDOW
        if until <= self.clock.now():
            return
        self._tracked[msg.rowid] = _Tracked(
            guid=msg.guid,
            chat_guid=msg.chat_guid,
            user=event.meta["user"],
            self_chat=event.meta.get("self_chat") == "true",
            text=msg.text,
            edited_ns=to_apple_ns(msg.date_edited) if msg.date_edited else 0,
            until=until,
        )
        while len(self._tracked) > TRACK_LIMIT:
            self._tracked.popitem(last=False)

    def _edits(self) -> list[Action]:
        """Edit and unsend events for tracked messages whose `date_edited` / `date_retracted` changed
        (one query over their ROWIDs; the edited rows are then read in full, one more query)."""
        now = self.clock.now()
        for rowid in [r for r, t in self._tracked.items() if t.until <= now]:
            del self._tracked[rowid]
        if not self._tracked:
            return []
        states = self.db.edit_states(self._tracked)
        out: list[Action] = []
        edited: dict[int, int] = {}
        for rowid, tracked in list(self._tracked.items()):
            state = states.get(rowid)
            if state is None or state[0] != tracked.guid:  # deleted, or not the same row any more
                del self._tracked[rowid]
                continue
            _guid, edited_ns, retracted_ns = state
            if retracted_ns:
                del self._tracked[rowid]
                out.append(self._unsend_event(tracked, retracted_ns))
            elif edited_ns and edited_ns != tracked.edited_ns:
                edited[rowid] = edited_ns
        for msg in self.db.messages_by_rowid(edited) if edited else []:
            tracked = self._tracked[msg.rowid]
            tracked.edited_ns = edited[msg.rowid]
            if not msg.text or msg.text == tracked.text:
                continue
            tracked.text = msg.text
            meta = {
                "chat_id": tracked.chat_guid,
                "message_id": tracked.guid,
                "user": tracked.user,
                "ts": iso_utc(from_apple(edited[msg.rowid])),
                "kind": "edit",
                "edited_from": tracked.guid,
            }
            if tracked.self_chat:
                meta["self_chat"] = "true"
            out.append(Deliver(msg.text, meta))
        return out

    @staticmethod
    def _unsend_event(tracked: _Tracked, retracted_ns: int) -> Deliver:
        """`kind="unsend"`: the sender took back a message Claude received; quote its first words."""
        meta = {
            "chat_id": tracked.chat_guid,
            "message_id": tracked.guid,
            "user": tracked.user,
            "ts": iso_utc(from_apple(retracted_ns)),
            "kind": "unsend",
        }
        if tracked.self_chat:
            meta["self_chat"] = "true"
        quoted = f' "{first_words(tracked.text, 60)}"' if tracked.text else ""
        return Deliver(f"unsent their message{quoted}; disregard it", meta)


def _arriving_label(count: int, *, more: bool) -> str:
    """`[1 attachment still arriving]`, `[2 more attachments still arriving]`: files a message announced
    (U+FFFC, transfer runs) that Messages has not joined to it yet."""
    return f"[{count}{' more' if more else ''} attachment{'s' if count != 1 else ''} still arriving]"


def _attachment_meta(meta: dict[str, str], delivered: list[Prepared], count: int) -> None:
    """`attachment_count`, `attachments` (JSON of `Prepared.as_json`) and `image_path` (first image)."""
    if count:
        meta["attachment_count"] = str(count)
    if delivered:
        meta["attachments"] = json.dumps([p.as_json() for p in delivered], ensure_ascii=False)
        image = next((p for p in delivered if p.is_image), None)
        if image is not None:
            meta["image_path"] = image.path
