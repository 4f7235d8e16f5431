"""The inbound pipeline: new chat.db rows → decisions → channel events and side effects.

Owns the order in which a row is decided (design §2, §5); each step lives in its own module:

1. *pieces*: a row with no `chat_message_join` (or with fewer joined files than its text's U+FFFC count or
   its attributedBody's file transfers announce) holds the watermark for `JOIN_GRACE_S`, then goes on with
   a log (a reader that moved past it would lose the message for good; its late files follow, `followups`);
2. *kind*: receipts, rows already unsent and Messages' notices are never delivered (`NOT_DELIVERED`); a row
   that cannot be decoded, or whose own ids are not plain, neither;
3. *already delivered*: GUIDs in the delivery ledger's seen-set (a crash between push and commit);
4. *age* (`filters.Ages`): against the local clock, never another row's date; storms are held back;
5. *echo*: our own sends coming back (`echo.EchoFilter`) are dropped;
6. *self-chat twins* (`filters.Twins`): the second copy of a text typed on the phone to oneself;
7. *permission replies* (`permissions`): `yes abcde` in self-chat answers a relayed request;
8. *the gate* (`gate.decide`): deliver, drop, or answer with a pairing code;
9. *iCloud duplicates* (`filters.Duplicates`): a second copy of one delivery under another GUID.

`poll()` returns the `Action`s (`actions`) and the `RowDecision`s it took; it performs no MCP or AppleScript
I/O: the server executes the actions. Not thread-safe: one thread polls (it may run `sips`, so never the
event loop's).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from .. import access as access_mod
from ..access import AccessStore
from ..appletime import from_apple
from ..chatdb import ChatDB, Kind, Message, is_self_chat, plain_id
from ..clock import SYSTEM, Clock
from ..delivery import Resume, Snapshot
from ..echo import EchoFilter
from ..gate import Inbound, decide
from ..handles import normalize_handle
from ..media import Inbox
from ..reasons import Reason, Verdict
from ..render import Names
from ..settings import CATCHUP_HOURS
from .actions import Action, Deliver, RowDecision, Send
from .cursor import Cursor
from .events import FILE_KINDS, Events
from .filters import Age, Ages, Duplicates, Twins
from .followups import FollowUps
from .permissions import PendingPermissions, Requests, answer

log = logging.getLogger("imessage_channel.inbound")

BATCH = 500
"""Rows read per query; a burst is drained batch after batch within one wake."""

JOIN_GRACE_S = 2.0
"""How long a `message` row without its `chat_message_join` (or its attachment joins) holds the watermark."""

HOLD_PENALTY_S = 10 * 60.0
"""When a sender's message was held the whole `JOIN_GRACE_S` for files that never joined, that sender's next
messages are not held for files for this long: they are delivered at once and their files follow as
`kind="attachment"` events. The U+FFFC count and the transfer runs are the sender's to write, so without
this a stranger could delay every message behind theirs by `JOIN_GRACE_S` per text they send."""

HOLD_PENALTY_LIMIT = 256
"""Senders remembered for `HOLD_PENALTY_S` (the oldest are forgotten first)."""

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
"""Kinds never delivered (the drop reason is the kind's own, `reasons.Reason`). A channel event makes Claude
act, and none of these holds anything to act on: no words from anyone, and no data Claude could use — a row
already unsent; Messages' notices of group changes, of location sharing started or stopped (the location
lives in Find My, not chat.db), of an audio message kept (the recording was delivered with its own message),
of a SharePlay/FaceTime session, or of an `item_type` this version does not know. They stay visible in
`chat_messages` history."""


class Seen(Protocol):
    """The delivery ledger as the pipeline reads it (`delivery.DeliveryLedger`; with several sessions the
    reader's `handoff.SeenGuard`, which also counts rows in flight at another session)."""

    def is_seen(self, guid: str) -> bool: ...


@dataclass
class Holds:
    """Rows holding the watermark while Messages finishes writing them (`JOIN_GRACE_S`), and the senders whose
    announced files never came (`HOLD_PENALTY_S`)."""

    clock: Clock
    _since: dict[int, float] = field(default_factory=dict)
    _spent: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def waiting_for(self, msg: Message) -> Reason | None:
        """What `msg` still waits for: its chat join, or files it announced (unless its sender's last hold
        ran out for files that never came), or None. A row that cannot be decoded waits for nothing."""
        if msg.kind is Kind.UNREADABLE:
            return None
        if msg.chat_guid is None:
            return Reason.WAITING_FOR_CHAT_JOIN
        if msg.attachments_pending and msg.kind in FILE_KINDS:
            spent = self._spent.get(normalize_handle(msg.sender or ""))
            if spent is None or self.clock.monotonic() - spent >= HOLD_PENALTY_S:
                return Reason.WAITING_FOR_ATTACHMENTS
        return None

    def still_holding(self, msg: Message, reason: Reason) -> bool:
        """True while `msg` may go on waiting; once its grace is over, it is logged and goes on."""
        first = self._since.setdefault(msg.rowid, self.clock.monotonic())
        if self.clock.monotonic() - first < JOIN_GRACE_S:
            return True
        log.warning("message ROWID %d still %s after %.1f s; going on", msg.rowid, reason.value, JOIN_GRACE_S)
        if reason is Reason.WAITING_FOR_ATTACHMENTS:
            key = normalize_handle(msg.sender or "")
            self._spent.pop(key, None)
            self._spent[key] = self.clock.monotonic()
            while len(self._spent) > HOLD_PENALTY_LIMIT:
                self._spent.popitem(last=False)
        return False

    def done(self, msg: Message) -> None:
        self._since.pop(msg.rowid, None)


@dataclass
class InboundPipeline:
    """Turns rows past `cursor.watermark` into actions (see the module docstring).

    `owner`: the owner's normalised handles (`ChatDB.owner_handles()`); `allow_sms`: `Settings.allow_sms`;
    `dry_run`: decide only, never write access.json (pairing) nor watch follow-ups — for `imessage-channel
    watch`; `ledger`: the persisted seen-set (see `delivery`); `catchup_window`: rows older than this are not
    delivered; `inbox`: where images are converted for Claude (None: files are delivered as they are);
    `names`: contact names for `user_name` (None: none); `clock`: the one clock (ages and event times from
    `now()`, grace periods and waits from `monotonic()`).
    """

    db: ChatDB
    store: AccessStore
    owner: frozenset[str]
    cursor: Cursor = field(default_factory=Cursor)
    echo: EchoFilter = field(default_factory=EchoFilter)
    permissions: Requests = field(default_factory=PendingPermissions)
    allow_sms: bool = False
    dry_run: bool = False
    ledger: Seen | None = None
    catchup_window: timedelta = timedelta(hours=CATCHUP_HOURS)
    inbox: Inbox | None = None
    names: Names | None = None
    clock: Clock = SYSTEM
    answered_in: str | None = None
    """The self-chat GUID of the last permission verdict (where the owner answers prompts)."""

    def __post_init__(self) -> None:
        self.ages = Ages(started=self.clock.now(), window=self.catchup_window)
        self.twins = Twins()
        self.duplicates = Duplicates()
        self.holds = Holds(self.clock)
        self.events = Events(self.db, self.clock, self.inbox, self.names)
        self.followups = FollowUps(self.db, self.events, self.clock, dry_run=self.dry_run)
        self._self: dict[str, bool] = {}
        self._generation: int | None = None

    @property
    def watermark(self) -> int:
        """`cursor.watermark`: every row up to this ROWID has been decided."""
        return self.cursor.watermark

    def is_self_chat(self, chat_guid: str) -> bool:
        """Cached: is this chat GUID a DM with the owner? Raises `ChatDBError`."""
        cached = self._self.get(chat_guid)
        if cached is None:
            cached = is_self_chat(self.db.chat(chat_guid), self.db.participants(chat_guid), self.owner)
            self._self[chat_guid] = cached
        return cached

    def from_owner(self, msg: Message) -> bool:
        """Did the owner write `msg`? A sent row (`is_from_me`), or a received one whose sender handle is one
        of the owner's (the received copy of a self-chat text). Self-chat trust needs this *and* the chat:
        a row from anyone else in a chat that looks like self-chat is gated as that sender's."""
        return msg.is_from_me or (msg.handle is not None and normalize_handle(msg.handle) in self.owner)

    def last_read(self) -> datetime:
        """The local time of the latest read (or of the start): where a re-anchor resumes."""
        return self.ages.last_read or self.ages.started

    def resume(self, saved: Resume, most: int, *, handover: bool = False) -> None:
        """Take up where the delivery ledger left off (`saved`): the cursor (catching up on at most `most`
        rows within the catch-up window; exactly at the saved watermark on a `handover` between sessions,
        `Cursor.resume`), the recent deliveries' fingerprints, the last read's time."""
        for fingerprint in saved.recent:
            self.duplicates.remember(fingerprint)
        if saved.last_active is not None:
            self.ages.last_read = from_apple(saved.last_active)
        self.cursor.resume(self.db, saved, self.clock.now(), self.catchup_window, most, handover=handover)

    def snapshot(self) -> Snapshot:
        """What the delivery ledger saves after each batch (`DeliveryLedger.commit`)."""
        return Snapshot(self.cursor.watermark, self.cursor.edge_guid, self.last_read(), self.duplicates.recent)

    def poll(self, limit: int = BATCH) -> tuple[list[Action], list[RowDecision]]:
        """Read up to `limit` rows past the watermark; return the actions and per-row decisions.

        The watermark advances past every row decided here and stops at a row still held (`Holds`). Before
        the new rows come the follow-ups of messages already delivered (`followups`). A replaced chat.db is
        reopened (here or by a tool call: the follow-ups pending on the old one are dropped); a file rebuilt,
        renumbered or restored in place is re-anchored (`Cursor.check`). Raises `ChatDBError` when chat.db
        cannot be read (the caller logs and retries)."""
        self.db.refresh()
        if self._generation is not None and self.db.generation != self._generation:
            log.warning("chat.db was replaced; reopened it")
            self.followups.clear()
        self._generation = self.db.generation
        self.cursor.check(self.db, self.last_read())
        actions: list[Action] = self.followups.poll()
        decisions: list[RowDecision] = []
        rows = self.db.messages_after(self.cursor.watermark, limit)
        self.ages.begin_read(self.clock.now(), rows, self.cursor.live_after)
        for msg in rows:
            waiting = self.holds.waiting_for(msg)
            if waiting is not None and self.holds.still_holding(msg, waiting):
                decisions.append(RowDecision(msg, Verdict.HOLD, waiting))
                break
            self.holds.done(msg)
            verdict, reason, acts = self._decide(msg)
            decisions.append(RowDecision(msg, verdict, reason))
            actions += acts
            self.cursor.advance(msg)
        self.ages.end_read(drained=len(rows) < limit)
        return actions, decisions

    def _decide(self, msg: Message) -> tuple[Verdict, Reason, list[Action]]:
        """Steps 2–9 of the module docstring for one row."""
        reason = self._not_a_message(msg)
        if reason is None:
            reason = self._not_news(msg)
        if reason is not None:
            return Verdict.DROP, reason, []
        assert msg.chat_guid is not None
        self_chat = self.is_self_chat(msg.chat_guid) and self.from_owner(msg)
        if self._is_echo(msg, self_chat):
            return Verdict.DROP, Reason.ECHO, []
        if self_chat and msg.kind not in (Kind.TAPBACK, Kind.TAPBACK_REMOVAL):
            if self.twins.is_twin(msg, msg.date or self.clock.now()):
                return Verdict.DROP, Reason.SELF_CHAT_COPY, []
            verdict = answer(msg, self.permissions)
            if verdict is not None:
                self.answered_in = msg.chat_guid
                return Verdict.VERDICT, Reason.PERMISSION_REPLY, verdict
        return self._gate(msg, self_chat)

    def _is_echo(self, msg: Message, self_chat: bool) -> bool:
        """Is `msg` our own send coming back: a text part, or a file sent without text (by its name)?"""
        assert msg.chat_guid is not None
        if msg.text:
            return self.echo.is_echo(msg.chat_guid, msg.text, self_chat=self_chat)
        names = [a.name for a in msg.attachments]
        return bool(names) and self.echo.is_file_echo(msg.chat_guid, names, self_chat=self_chat)

    def _not_a_message(self, msg: Message) -> Reason | None:
        """Why `msg` is no message to deliver at all (no chat, undecodable, unsafe ids, a notice), or None."""
        if msg.kind is Kind.UNREADABLE:  # logged by the reader
            return Reason.UNREADABLE
        if msg.chat_guid is None:
            return Reason.NO_CHAT
        if plain_id(msg.guid) is None or plain_id(msg.chat_guid) is None:
            log.warning("message ROWID %d: its GUID or chat GUID is not a plain id; not delivered", msg.rowid)
            return Reason.UNSAFE_ID
        if msg.kind in NOT_DELIVERED:
            return Reason(msg.kind.value)
        return None

    def _not_news(self, msg: Message) -> Reason | None:
        """Why `msg` is no news (delivered before, too old, part of a sync storm), or None."""
        if self.ledger is not None and self.ledger.is_seen(msg.guid):
            return Reason.ALREADY_DELIVERED
        if self.cursor.is_replay(msg):
            return None
        age = self.ages.judge(msg)
        if self.cursor.is_catch_up(msg):
            return Reason.CATCH_UP_TOO_OLD if age is Age.TOO_OLD else None
        return self.ages.live_reason(age)

    def _gate(self, msg: Message, self_chat: bool) -> tuple[Verdict, Reason, list[Action]]:
        """The gate's verdict, and for a delivery the event (after the iCloud-duplicate check)."""
        assert msg.chat_guid is not None
        inbound = Inbound(
            sender=msg.handle if not msg.is_from_me else None,
            chat_guid=msg.chat_guid,
            chat_style=msg.chat_style,
            service=msg.service,
            text=msg.text,
            is_from_me=msg.is_from_me,
            is_self_chat=self_chat,
        )
        access = access_mod.Access() if self_chat else self.store.load()  # self-chat never needs access.json
        decision = decide(inbound, access, allow_sms=self.allow_sms)
        if decision.verdict is Verdict.DELIVER:
            if self.duplicates.is_copy(msg):
                return Verdict.DROP, Reason.ICLOUD_DUPLICATE, []
            return Verdict.DELIVER, decision.reason, [self._deliver(msg, self_chat)]
        if decision.verdict is Verdict.PAIR and msg.handle:
            return Verdict.PAIR, decision.reason, self._pair(msg)
        return decision.verdict, decision.reason, []

    def _deliver(self, msg: Message, self_chat: bool) -> Deliver:
        """The event for `msg`, with the follow-ups it needs watched."""
        missing = msg.files_missing if msg.kind in FILE_KINDS else 0
        event, downloading = self.events.message(msg, self_chat, missing)
        if self.cursor.is_catch_up(msg):
            event.meta["catch_up"] = "true"
        elif not self.cursor.is_replay(msg) and self.ages.judge(msg) is Age.LATE:
            event.meta["late"] = "true"
        self.followups.watch(msg, self_chat, downloading, missing)
        if msg.kind in FILE_KINDS:
            self.followups.track(msg, event)
        return event

    def _pair(self, msg: Message) -> list[Action]:
        """Issue (or re-send) the sender's pairing code; never in a dry run."""
        assert msg.handle is not None and msg.chat_guid is not None
        if self.dry_run:
            return []
        handle, chat = msg.handle, msg.chat_guid
        outcomes: list[access_mod.PairingOutcome] = []

        def step(acc: access_mod.Access) -> access_mod.Access:
            new, outcome = access_mod.issue_pairing_code(acc, handle, chat, self.clock.now())
            outcomes.append(outcome)
            return new

        try:
            self.store.update(step)
        except (access_mod.AccessReadOnlyError, access_mod.AccessUnavailableError, OSError) as exc:
            log.warning("pairing for %s not recorded: %s", handle, exc)
            return []
        outcome = outcomes[-1]
        return [Send(chat, outcome.message())] if outcome.should_reply else []
