"""The inbound filters: rows that are not news — too old, a sync storm, a second copy of one text.

Owns the state each of these judgements needs, and nothing else:
- `Ages`: a row's age against the local clock (this read and the previous one), never against another row's
  date (`message.date` is the sender's clock, design §8), and the sync-storm rule (`judge_age`, `is_storm`);
- `Twins`: a self-chat text typed on the phone exists twice (the sent and the received copy);
- `Duplicates`: iCloud can write one inbound message twice under two GUIDs.

Each answers "drop it, for this reason" or "go on"; the pipeline (`inbound.pipeline`) asks them in order. The
echo filter (`echo.EchoFilter`) and the delivery ledger's seen-set (`delivery`) are filters too, kept where
their state is shared with the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from ..appletime import to_apple_ns
from ..chatdb import Kind, Message
from ..delivery import RECENT_LIMIT, Fingerprint
from ..echo import conversation_key, normalize_text
from ..handles import normalize_handle
from ..reasons import Reason

log = logging.getLogger("imessage_channel.inbound")

LATE_AFTER = timedelta(minutes=15)
"""A row dated more than this before the channel's previous read is *late*. A text sent from a phone that
was offline arrives with its old date, and a sender's clock can be slow (BlueBubbles server #597 shows
skewed values), so lateness is a hint for Claude (`late="true"`), never a reason to drop a lone text."""

STORM_ROWS = 20
"""Late rows in one read from which the read is an iCloud sync storm (see `is_storm`)."""

TWIN_WINDOW = timedelta(seconds=30)
"""Max distance between the sent and received copies of one self-chat text typed on the phone."""

TWIN_MEMORY = 64
"""Self-chat texts remembered for `Twins` (a handful arrive per minute at most)."""

DUPLICATE_WINDOW = timedelta(seconds=5)
"""iCloud can write one inbound message twice under two GUIDs: same sender, chat and text, dates this
close. The second copy is dropped."""


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


@dataclass
class Ages:
    """The age step for one pipeline: the reads' local times, the catch-up window, the storm in progress.

    `begin_read(rows, live_after)` before deciding a read's rows (rows above ROWID `live_after` arrived
    while running; the others are catch-up or replayed rows), `judge(msg)` per row, `end_read(drained)`
    after it. `last_read` starts as the previous run's last activity (the ledger's `last_active`): a
    re-anchor resumes there; ages are never judged against a time before `started`."""

    started: datetime
    window: timedelta
    last_read: datetime | None = None
    _previous: datetime | None = None
    _storm: int = 0
    _read_storm: bool = False

    def begin_read(self, now: datetime, rows: list[Message], live_after: int) -> None:
        """Start judging the rows of a read taken at local time `now`."""
        self._previous = max(self.started, self.last_read or self.started)
        self.last_read = now
        late = sum(1 for m in rows if m.rowid > live_after and self.judge(m) is Age.LATE)
        self._read_storm = is_storm(late, self._storm > 0)

    def judge(self, msg: Message) -> Age:
        """`judge_age` of `msg` in the current read."""
        assert self._previous is not None and self.last_read is not None
        return judge_age(msg.date, self.last_read, self._previous, self.window)

    def live_reason(self, age: Age) -> Reason | None:
        """Why a row that arrived while running is not delivered (too old, or late in a storm), or None.
        Counts it for the storm's log lines (the first one says a storm began)."""
        if age is Age.FRESH or (age is Age.LATE and not self._read_storm):
            return None
        if not self._storm:
            log.warning("old messages are arriving as new rows (iCloud sync or a rebuild); not delivering them")
        self._storm += 1
        return Reason.BACKFILL if age is Age.LATE else Reason.TOO_OLD

    def end_read(self, drained: bool) -> None:
        """After a read (`drained`: it read every row there was): a storm that this read did not continue is
        over, said once with its count."""
        if self._storm and not self._read_storm and drained:
            log.warning("sync storm over: %d old messages were not delivered as new", self._storm)
            self._storm = 0


@dataclass(slots=True)
class _Seen:
    """A self-chat text seen once (`is_from_me` tells the copy), waiting for its twin."""

    text: str
    is_from_me: bool
    date: datetime
    paired: bool = False


@dataclass
class Twins:
    """Self-chat texts typed on the phone exist twice: the sent copy and the received copy (design §5)."""

    _seen: dict[str, deque[_Seen]] = field(default_factory=dict)
    _order: deque[str] = field(default_factory=deque)

    def is_twin(self, msg: Message, when: datetime) -> bool:
        """Is `msg` (a self-chat row, dated `when`) the other copy of a text already seen (opposite
        `is_from_me`, within `TWIN_WINDOW`)? Remembers it otherwise."""
        text = normalize_text(msg.text)
        for seen in self._seen.get(text, ()):
            if not seen.paired and seen.is_from_me != msg.is_from_me and abs(seen.date - when) <= TWIN_WINDOW:
                seen.paired = True
                return True
        self._seen.setdefault(text, deque()).append(_Seen(text, msg.is_from_me, when))
        self._order.append(text)
        if len(self._order) > TWIN_MEMORY:  # forget the oldest text seen
            old = self._order.popleft()
            bucket = self._seen[old]
            bucket.popleft()
            if not bucket:
                del self._seen[old]
        return False


@dataclass
class Duplicates:
    """Fingerprints of recent deliveries (sender, conversation, content hash, Apple ns, GUID), indexed by the
    first three; persisted by the delivery ledger (`recent`) so the check survives a restart."""

    recent: deque[Fingerprint] = field(default_factory=deque)
    _index: dict[tuple[str, str, str], list[tuple[int, str]]] = field(default_factory=dict)

    def is_copy(self, msg: Message) -> bool:
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
        comparable = msg.kind in (Kind.TEXT, Kind.REPLY) and bool(msg.text or msg.attachments)
        if comparable and any(abs(d - when) <= window and g != msg.guid for d, g in self._index.get(key, ())):
            return True
        self.remember((*key, when, msg.guid))
        return False

    def remember(self, fingerprint: Fingerprint) -> None:
        """Add a fingerprint, evicting the oldest beyond `delivery.RECENT_LIMIT`."""
        if len(self.recent) >= RECENT_LIMIT:
            old = self.recent.popleft()
            bucket = self._index.get(old[:3], [])
            with contextlib.suppress(ValueError):
                bucket.remove(old[3:])
            if not bucket:
                self._index.pop(old[:3], None)
        self.recent.append(fingerprint)
        self._index.setdefault(fingerprint[:3], []).append(fingerprint[3:])
