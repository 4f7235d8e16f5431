"""Inbound pipeline: new chat.db rows → decisions → channel events and side effects.

Owns the step between the reader and the MCP session: for every row past the watermark it decides,
in this order (design §2, §5):

1. *pieces*: a row with no `chat_message_join` (or whose attributedBody names file transfers not yet
   joined) holds the watermark for `JOIN_GRACE_S`, then goes on with a log (a reader that moved past
   it would lose the message for good);
2. *kind*: receipts, group events and rows already unsent are never delivered;
3. *already delivered*: GUIDs in the delivery ledger's seen-set (a crash between push and commit);
4. *age*: rows that arrived while the server was down are delivered only when dated within the
   catch-up window; newer rows dated `BACKFILL_THRESHOLD` before the newest delivered message (or the
   start) are iCloud backfill, counted and logged once per storm;
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
the actions. Untrusted text only ever lands in `content`; meta values come from chat.db columns (file
names, which senders choose, are flattened by `media.safe_name`).

Rich messages (what each delivered row becomes, see `_event`):
- *attachments*: every file on disk is listed in `attachments` (JSON `{path, mime, name, size[, original]}`,
  prepared by `media.prepare`: HEIC and oversized images become an inbox JPEG), the first image is
  `image_path`, `attachment_count` counts them all. Files still downloading (`transfer_state` ≠ 5) do
  not hold the watermark: the message is delivered now with `attachments_pending`, their ROWIDs are
  watched (at most `MAX_WAITING`, for `ATTACHMENT_WAIT_S`) with one query per poll, and each message's
  finished files arrive as a follow-up event `kind="attachment"` with the original `message_id`;
- *reactions* (tapbacks) read as `👍 liked your message "Done: 3 files…"` (`render.whose_message`);
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

from . import access as access_mod
from .access import AccessStore
from .appletime import from_apple, to_apple_ns
from .chatdb import Attachment, ChatDB, Kind, Message, is_self_chat
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

BACKFILL_THRESHOLD = timedelta(minutes=15)
"""A new row dated this much before the newest delivered message (or before the server started) is
backfill, not news. iCloud sync and database rebuilds re-insert old messages under fresh ROWIDs with their
old dates (replay floods users of the official plugin report); a real text delayed in transit is rarely
more than minutes older than the newest one delivered. Rows queued while the Mac slept are *newer* than
what was delivered before it slept, so they still arrive."""

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

EDIT_WINDOW = timedelta(minutes=16)
"""How long after its date a delivered message is watched for edits and unsends: Apple allows editing
for 15 minutes (unsending for 2), iOS 16 / macOS Ventura ("Unsend and edit messages", Apple Support);
one more minute absorbs clock differences between the sender's device and this Mac."""

TRACK_LIMIT = 200
"""Delivered messages watched for edits and unsends at once (the newest are kept)."""


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
    `imessage-channel watch`; `ledger`: the persisted seen-set (see `delivery`); `catchup_until` /
    `catchup_since`: rows up to that ROWID arrived while the server was down and are delivered only
    when dated since then; `newest_date`: newest delivered message (backfill reference); `inbox`:
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
    catchup_since: datetime | None = None
    newest_date: datetime | None = None
    started: datetime | None = None
    inbox: Inbox | None = None
    clock: Clock = SYSTEM
    _self: dict[str, bool] = field(default_factory=dict)
    _recent_self: deque[_Recent] = field(default_factory=lambda: deque(maxlen=64))
    _held_since: dict[int, float] = field(default_factory=dict)
    recent: deque[tuple[str, str, str, int, str]] = field(default_factory=deque)
    _recent_index: dict[tuple[str, ...], list[tuple[int, str]]] = field(default_factory=dict)
    edge_guid: str | None = None
    _anchor_checked: bool = False
    _storm: int = 0
    _tracked: OrderedDict[int, _Tracked] = field(default_factory=OrderedDict)
    _waiting: dict[int, _Waiting] = field(default_factory=dict)
    _generation: int | None = None
    _approvals_unreadable: bool = False

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

    # -- the loop body -------------------------------------------------------------------------
    def poll(self, limit: int = BATCH) -> tuple[list[Action], list[RowDecision]]:
        """Read up to `limit` rows past the watermark; return the actions and per-row decisions.

        The watermark advances past every row decided here, and stops at a row still waiting for its
        chat join or its attachment joins (for `JOIN_GRACE_S`). Before the new rows come the follow-ups
        of messages already delivered: finished downloads, edits, unsends. A replaced chat.db is
        reopened (follow-ups pending on the old one are dropped: its ROWIDs may mean other rows now);
        a watermark above `MAX(ROWID)` (rows renumbered by a rebuild) is re-anchored by date. Raises
        `ChatDBError` when chat.db cannot be read (the caller logs and retries)."""
        self.db.refresh()
        reopened = self._generation is not None and self.db.generation != self._generation
        self._generation = self.db.generation
        if reopened:  # here or by a tool call
            log.warning("chat.db was replaced; reopened it")
            self._anchor_checked = False
            self._tracked.clear()
            self._waiting.clear()
        if not self._anchor_checked:
            self._check_anchor()
        actions: list[Action] = [*self._downloads(), *self._edits()]
        decisions: list[RowDecision] = []
        rows = self.db.messages_after(self.watermark, limit)
        if not rows and self.watermark and self.db.max_rowid() < self.watermark:
            self._reanchor()
            rows = self.db.messages_after(self.watermark, limit)
        for msg in rows:
            pending = "waiting-for-chat-join" if msg.chat_guid is None else None
            if pending is None and msg.attachments_pending and msg.kind in (Kind.TEXT, Kind.REPLY, Kind.EDIT):
                pending = "waiting-for-attachments"
            if pending:
                first = self._held_since.setdefault(msg.rowid, self.clock.monotonic())
                if self.clock.monotonic() - first < JOIN_GRACE_S:
                    decisions.append(RowDecision(msg, "hold", pending))
                    break
                log.warning("message ROWID %d still %s after %.1f s; going on", msg.rowid, pending, JOIN_GRACE_S)
            self._held_since.pop(msg.rowid, None)
            if msg.chat_guid is None:
                verdict, reason, acts = "drop", "no-chat", []
            else:
                verdict, reason, acts = self._decide(msg)
            decisions.append(RowDecision(msg, verdict, reason))
            actions += acts
            self.watermark, self.edge_guid = msg.rowid, msg.guid
        if self._storm and len(rows) < limit:
            log.warning("sync storm over: %d old messages were not delivered as new", self._storm)
            self._storm = 0
        return actions, decisions

    def _check_anchor(self) -> None:
        """At start and after chat.db was replaced: the row at the watermark must still be the one
        decided last (`edge_guid`). A different GUID there means the ROWIDs were renumbered."""
        self._anchor_checked = True
        if self.watermark and self.edge_guid and self.db.guid_at(self.watermark) != self.edge_guid:
            self._reanchor()

    def _reanchor(self) -> None:
        """The watermark is above every ROWID: chat.db was rebuilt and renumbered. Resume at the first
        row dated after the newest delivered message (minus `BACKFILL_THRESHOLD`); GUIDs already
        delivered are still recognised by the ledger."""
        top = self.db.max_rowid()
        since = (self.newest_date or self.started or self.clock.now()) - BACKFILL_THRESHOLD
        first = self.db.first_rowid_since(to_apple_ns(since))
        new = (first - 1) if first is not None else top
        log.warning(
            "chat.db ROWIDs were renumbered (watermark %d > MAX(ROWID) %d); resuming at %d", self.watermark, top, new
        )
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
        if msg.kind in (Kind.RECEIPT, Kind.GROUP_EVENT, Kind.UNSEND):
            return "drop", msg.kind.value, []
        if self.ledger is not None and self.ledger.is_seen(msg.guid):
            return "drop", "already-delivered", []
        if msg.date is not None:
            if msg.rowid <= self.catchup_until:
                if self.catchup_since is None or msg.date < self.catchup_since:
                    return "drop", "catch-up-too-old", []
            else:
                reference = max(d for d in (self.started, self.newest_date) if d is not None)
                if msg.date < reference - BACKFILL_THRESHOLD:
                    if not self._storm:
                        log.warning(
                            "old messages are arriving as new rows (iCloud sync or a rebuild); not delivering them"
                        )
                    self._storm += 1
                    return "drop", "backfill", []
        self_chat = self.is_self_chat(msg.chat_guid)
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
            if msg.date is not None and (self.newest_date is None or msg.date > self.newest_date):
                self.newest_date = msg.date
            event = self._event(msg, self_chat)
            if msg.kind in (Kind.TEXT, Kind.REPLY, Kind.EDIT) and not self.dry_run:
                self._track(msg, event)
            return "deliver", decision.reason, [event]
        if decision.verdict is Verdict.PAIR and msg.handle:
            return "pair", decision.reason, self._pair(msg)
        return "drop", decision.reason, []

    def _is_duplicate(self, msg: Message) -> bool:
        """Is `msg` a second copy (another GUID) of a message just delivered? Records it otherwise."""
        assert msg.chat_guid is not None
        key = (
            normalize_handle(msg.sender or ""),
            conversation_key(msg.chat_guid, self_chat=False),
            hashlib.sha256(normalize_text(msg.text).encode()).hexdigest()[:16],
        )
        when = to_apple_ns(msg.date) if msg.date else 0
        window = DUPLICATE_WINDOW.total_seconds() * 1e9
        same = self._recent_index.setdefault(key, [])
        if msg.kind in (Kind.TEXT, Kind.REPLY) and any(abs(d - when) <= window and g != msg.guid for d, g in same):
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
        if msg.attachments:
            labels = self._attachments(msg, self_chat, meta)
            content = content or labels
        if msg.reply_to:
            meta["reply_to"] = msg.reply_to
            content = f"↩ reply to {self._target(msg, msg.reply_to)}\n{content}"
        if msg.kind is Kind.EDIT:
            meta["edited"] = "true"
        if msg.tapback is not None:
            content = f"{reaction_phrase(msg.tapback)} {self._target(msg, msg.tapback.target_guid)}"
            meta["kind"] = "reaction"
            meta["reaction"] = msg.tapback.reaction
            meta["reaction_to"] = msg.tapback.target_guid
            if msg.tapback.removed:
                meta["reaction_removed"] = "true"
        if msg.rowid <= self.catchup_until:
            meta["catch_up"] = "true"
        return Deliver(content, meta, msg.rowid)

    def _target(self, msg: Message, guid: str) -> str:
        """`your message "Done: 3 files…"`: whose message `guid` is and its first words (one lookup by
        the unique `message.guid`), or `a message` when it is not in chat.db."""
        target = self.db.message_by_guid(guid)
        quoted = quote_of(target) if target is not None else ""
        return f'{whose_message(target, msg)} "{quoted}"' if quoted else whose_message(target, msg)

    # -- attachments ---------------------------------------------------------------------------------
    def _attachments(self, msg: Message, self_chat: bool, meta: dict[str, str]) -> str:
        """Add the attachment meta of `msg` to `meta`, start watching its unfinished downloads, and
        return its attachment labels (the content of a message without text), e.g.
        `[attachment: IMG_1.heic image/heic] [attachment: IMG_2.heic image/heic, still downloading]`.

        A file is delivered when it is on disk and finished (`transfer_state` 5) — or, for a row sent
        from this Mac (`is_from_me`), simply on disk: the original is local. A finished file that is not
        on disk (storage optimised away, deleted) is labelled `not on this Mac`."""
        delivered: list[Prepared] = []
        labels: list[str] = []
        pending = 0
        for att in msg.attachments:
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
        _attachment_meta(meta, delivered, len(msg.attachments))
        if pending:
            meta["attachments_pending"] = str(pending)
        if msg.is_audio_message or any(a.is_audio for a in msg.attachments):
            meta["audio_message"] = "true"
        if any(a.is_sticker for a in msg.attachments):
            meta["sticker"] = "true"
        return " ".join(labels)

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

    def _download_event(self, waiting: _Waiting, atts: list[Attachment]) -> Deliver:
        """`kind="attachment"`: files of an earlier message (`message_id`) that finished downloading."""
        msg = waiting.message
        meta = self._base_meta(msg, waiting.self_chat)
        meta["ts"] = iso_utc(self.clock.now())
        meta["kind"] = "attachment"
        delivered = [p for a in atts if (p := prepare(a, self.inbox)) is not None]
        _attachment_meta(meta, delivered, len(atts))
        still = sum(1 for w in self._waiting.values() if w.message.guid == msg.guid)
        if still:
            meta["attachments_pending"] = str(still)
        if msg.is_audio_message or any(a.is_audio for a in atts):
            meta["audio_message"] = "true"
        if any(a.is_sticker for a in atts):
            meta["sticker"] = "true"
        labels = " ".join(attachment_label(a, audio_message=msg.is_audio_message) for a in atts)
        return Deliver(f"finished downloading for an earlier message: {labels}", meta)

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


def _attachment_meta(meta: dict[str, str], delivered: list[Prepared], count: int) -> None:
    """`attachment_count`, `attachments` (JSON of `Prepared.as_json`) and `image_path` (first image)."""
    if count:
        meta["attachment_count"] = str(count)
    if delivered:
        meta["attachments"] = json.dumps([p.as_json() for p in delivered], ensure_ascii=False)
        image = next((p for p in delivered if p.is_image), None)
        if image is not None:
            meta["image_path"] = image.path
