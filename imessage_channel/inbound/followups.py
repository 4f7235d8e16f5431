"""Follow-ups: what changes about a message after it was delivered, which no watermark sees.

Owns three bounded watches over delivered messages, each read with one indexed query per poll:
- *downloads*: files still downloading when their message was delivered (`transfer_state` ≠ 5) are watched
  (at most `MAX_WAITING`, for `ATTACHMENT_WAIT_S`); each message's finished files follow as one
  `kind="attachment"` event with the original `message_id`;
- *late joins*: files a message announced (its text's U+FFFC count, its attributedBody's transfers) but that
  Messages had not joined to it yet are watched (at most `MAX_JOINING`, for `JOIN_WATCH_S`); each newly joined
  file follows the same way — no file goes missing silently;
- *edits and unsends*, which change a row in place: delivered texts are tracked (at most `TRACK_LIMIT`, until
  `EDIT_WINDOW` after their date) and their `date_edited`/`date_retracted` read; an edit becomes `kind="edit"`,
  an unsend `kind="unsend"`.

None of this survives a restart (the ledger persists rows, not these watches), and a replaced chat.db clears
them (`clear`): its ROWIDs may mean other rows now.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, TypeVar

from ..appletime import to_apple_ns
from ..chatdb import Attachment, ChatDB, Message
from ..clock import Clock
from .actions import Action, Deliver
from .events import Events, Tracked

log = logging.getLogger("imessage_channel.inbound")

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

EDIT_WINDOW = timedelta(minutes=16)
"""How long after its date a delivered message is watched for edits and unsends: Apple allows editing
for 15 minutes (unsending for 2), iOS 16 / macOS Ventura ("Unsend and edit messages", Apple Support);
one more minute absorbs clock differences between the sender's device and this Mac."""

TRACK_LIMIT = 200
"""Delivered messages watched for edits and unsends at once (the newest are kept)."""


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


class _Watched(Protocol):
    since: float  # monotonic seconds when the watch began


_W = TypeVar("_W", bound=_Watched)


def _give_up(watched: dict[int, _W], limit: float, now: float, what: Callable[[_W], str]) -> None:
    """Drop the entries of `watched` older than `limit` seconds at `now`, each with a warning: `what(entry)`
    followed by "; not waiting longer"."""
    for rowid, entry in list(watched.items()):
        if now - entry.since > limit:
            log.warning("%s; not waiting longer", what(entry))
            del watched[rowid]


@dataclass
class FollowUps:
    """The three watches (see the module docstring). `dry_run` (watch's) watches nothing."""

    db: ChatDB
    events: Events
    clock: Clock
    dry_run: bool = False
    _tracked: OrderedDict[int, Tracked] = field(default_factory=OrderedDict)
    _waiting: dict[int, _Waiting] = field(default_factory=dict)
    _joining: dict[int, _Joining] = field(default_factory=dict)

    @property
    def watched(self) -> tuple[int, int, int]:
        """(downloads, messages waiting for joins, messages tracked for edits) watched now."""
        return len(self._waiting), len(self._joining), len(self._tracked)

    def clear(self) -> None:
        """Forget every watch (chat.db was replaced: its ROWIDs may mean other rows now)."""
        self._tracked.clear()
        self._waiting.clear()
        self._joining.clear()

    def poll(self) -> list[Action]:
        """The follow-up events due now: files joined late, downloads finished, edits, unsends."""
        return [*self._late_joins(), *self._downloads(), *self._edits()]

    def watch(self, msg: Message, self_chat: bool, downloading: list[Attachment], missing: int) -> None:
        """Start watching delivered `msg`: its files still `downloading`, and `missing` files not joined yet."""
        if self.dry_run:
            return
        for att in downloading:
            self._wait_for(att, msg, self_chat)
        if missing:
            self._watch_joins(msg, self_chat, missing)

    # -- downloads ---------------------------------------------------------------------------------------
    def _wait_for(self, att: Attachment, msg: Message, self_chat: bool) -> None:
        if len(self._waiting) >= MAX_WAITING:
            log.warning("%d downloads already watched; not waiting for %s of %s", MAX_WAITING, att.name, msg.guid)
            return
        self._waiting[att.rowid] = _Waiting(msg, self_chat, self.clock.monotonic())

    def _downloads(self) -> list[Action]:
        """One event per message whose watched downloads finished; downloads watched longer than
        `ATTACHMENT_WAIT_S` are given up."""
        _give_up(
            self._waiting,
            ATTACHMENT_WAIT_S,
            self.clock.monotonic(),
            lambda w: (
                f"an attachment of message {w.message.guid} did not finish downloading in "
                f"{ATTACHMENT_WAIT_S / 60:.0f} min"
            ),
        )
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
        return [self._finished(waiting, atts) for waiting, atts in finished.values()]

    def _finished(self, waiting: _Waiting, atts: list[Attachment]) -> Deliver:
        msg = waiting.message
        files = self.events.files(msg, atts)
        still = self._still_coming(msg)
        return self.events.later_files(msg, waiting.self_chat, atts, files, still, "finished downloading")

    def _still_coming(self, msg: Message) -> int:
        """Files of delivered `msg` still downloading or not joined yet (both watched)."""
        joining = self._joining.get(msg.rowid)
        downloading = sum(1 for w in self._waiting.values() if w.message.guid == msg.guid)
        return downloading + (joining.missing if joining is not None else 0)

    # -- late joins ----------------------------------------------------------------------------------------
    def _watch_joins(self, msg: Message, self_chat: bool, missing: int) -> None:
        if len(self._joining) >= MAX_JOINING and msg.rowid not in self._joining:
            log.warning(
                "%d messages already watched for files; not waiting for %d of %s", MAX_JOINING, missing, msg.guid
            )
            return
        known = {a.rowid for a in msg.attachments}
        self._joining[msg.rowid] = _Joining(msg, self_chat, known, missing, self.clock.monotonic())

    def _late_joins(self) -> list[Action]:
        """One event per watched message with newly joined files (those still downloading go to the
        download watch); a message watched longer than `JOIN_WATCH_S` is given up with a log line."""
        _give_up(
            self._joining,
            JOIN_WATCH_S,
            self.clock.monotonic(),
            lambda j: f"{j.missing} file(s) of message {j.message.guid} never joined in {JOIN_WATCH_S / 60:.0f} min",
        )
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
            event = self._joined(joining, new)
            if event is not None:
                out.append(event)
        return out

    def _joined(self, joining: _Joining, atts: list[Attachment]) -> Deliver | None:
        """The event for files joined after delivery; None when all are still downloading (the download
        watch delivers them when done)."""
        msg = joining.message
        files = self.events.files(msg, atts)
        for att in files.downloading:
            self._wait_for(att, msg, joining.self_chat)
        if len(files.downloading) == len(atts):
            return None
        still = self._still_coming(msg)
        return self.events.later_files(msg, joining.self_chat, atts, files, still, "arrived later")

    # -- edits and unsends ---------------------------------------------------------------------------------
    def track(self, msg: Message, event: Deliver) -> None:
        """Watch delivered `msg` for edits and unsends until `EDIT_WINDOW` after its date."""
        assert msg.chat_guid is not None
        if self.dry_run:
            return
        until = (msg.date or self.clock.now()) + EDIT_WINDOW
        if until <= self.clock.now():
            return
        self._tracked[msg.rowid] = Tracked(
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
        """Edit and unsend events for tracked messages whose `date_edited` / `date_retracted` changed (one
        query over their ROWIDs; the edited rows are then read in full, one more query)."""
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
                out.append(self.events.unsend(tracked, retracted_ns))
            elif edited_ns and edited_ns != tracked.edited_ns:
                edited[rowid] = edited_ns
        for msg in self.db.messages_by_rowid(edited) if edited else []:
            tracked = self._tracked[msg.rowid]
            tracked.edited_ns = edited[msg.rowid]
            if msg.text and msg.text != tracked.text:
                tracked.text = msg.text
                out.append(self.events.edit(tracked, msg.text, edited[msg.rowid]))
        return out
