"""The cursor: where reading chat.db stands, the only owner of that position.

Owns the watermark (every row up to this ROWID has been decided), the GUID of the row at it (`edge_guid`, to
notice a file rebuilt, renumbered or restored), the catch-up range (rows that arrived while the channel was
down) and the replay range (`imessage-channel watch --last`). It places itself at start from what the delivery
ledger saved (`resume`), checks before each read that the rows it stands on are still the ones decided
(`check`), and re-anchors when they are not. The ledger persists it (`delivery.DeliveryLedger.commit`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..appletime import to_apple_ns
from ..chatdb import ChatDB, Message
from ..delivery import Resume
from .filters import LATE_AFTER

log = logging.getLogger("imessage_channel.inbound")


@dataclass
class Cursor:
    """The read position (see the module docstring). `catchup_until`: rows up to this ROWID arrived while the
    channel was down (delivered with `catch_up="true"` when dated within the catch-up window);
    `replay_until`: rows up to this ROWID skip the age step (watch's replay). Not thread-safe: the delivery
    loop's thread owns it."""

    watermark: int = 0
    edge_guid: str | None = None
    catchup_until: int = 0
    replay_until: int = 0

    def resume(
        self, db: ChatDB, saved: Resume, now: datetime, window: timedelta, most: int, *, handover: bool = False
    ) -> None:
        """Place the cursor at start. First start → `MAX(ROWID)` (nothing old is delivered); restart → where
        the ledger left off, catching up on rows dated within `window` of `now` (at most the newest `most`);
        a corrupt ledger → the same catch-up from the start of the window; a file rebuilt or restored while
        the channel was down → at the saved position, which the first `check` re-anchors. A `handover` (this
        session takes over reading from another that just ended, `multisession`) → exactly at the saved
        position: the channel was never down, so the rows after it are live, none capped or marked catch-up.
        Raises `ChatDBError`."""
        top = db.max_rowid()
        if saved.rowid is None and not saved.corrupt:
            self.watermark = top
            return
        base = saved.rowid or 0
        self.edge_guid = saved.edge_guid
        seq, guid = db.anchor(base)
        rebuilt = base and (seq < base or (guid is not None and saved.edge_guid and guid != saved.edge_guid))
        if rebuilt or (handover and saved.rowid is not None):
            self.watermark = base
            return
        since = now - window
        start = db.catchup_start(base, top, to_apple_ns(since), most)
        self.watermark, self.edge_guid = start - 1, None  # the anchor at `base` was checked above
        self.catchup_until = top
        if top > base:
            log.info(
                "%d rows arrived while the channel was down; delivering those since %s (at most %d)",
                top - base,
                since.isoformat(timespec="minutes"),
                most,
            )

    def check(self, db: ChatDB, last_read: datetime) -> None:
        """Before each read: are the rows up to the watermark still the ones decided? Not when the ROWID
        sequence fell below the watermark (chat.db rebuilt or renumbered: ROWIDs are never reused otherwise),
        nor when the row at the watermark now has another GUID than the one decided there (the file was
        restored or rebuilt in place, even with as many rows). A deleted row at the watermark is an ordinary
        deletion. Either case re-anchors (`reanchor`). Raises `ChatDBError`."""
        if not self.watermark:
            return
        seq, guid = db.anchor(self.watermark)
        if seq < self.watermark:
            self.reanchor(db, last_read, f"the ROWID sequence went back to {seq}, below the watermark {self.watermark}")
        elif guid is not None and self.edge_guid is not None and guid != self.edge_guid:
            self.reanchor(db, last_read, f"the row at the watermark {self.watermark} is another message than before")

    def reanchor(self, db: ChatDB, last_read: datetime, why: str) -> None:
        """The rows at the watermark are not the ones decided. Resume right after the last row decided
        (`edge_guid`) if the new file still has it under another ROWID (renumbered); else at the first row
        dated since the channel's last read (local clock, minus `LATE_AFTER`). GUIDs already delivered are
        still recognised by the ledger, and the age rules judge the rest. Raises `ChatDBError`."""
        moved = db.rowid_of(self.edge_guid) if self.edge_guid else None
        if moved is not None:
            new = moved
        else:
            first = db.first_rowid_since(to_apple_ns(last_read - LATE_AFTER))
            new = (first - 1) if first is not None else db.max_rowid()
        log.warning("chat.db was rebuilt or restored (%s); resuming after ROWID %d", why, new)
        self.watermark, self.edge_guid = new, None
        self.catchup_until = 0

    def advance(self, msg: Message) -> None:
        """`msg` is decided: the watermark moves past it."""
        self.watermark, self.edge_guid = msg.rowid, msg.guid

    def is_catch_up(self, msg: Message) -> bool:
        return self.replay_until < msg.rowid <= self.catchup_until

    def is_replay(self, msg: Message) -> bool:
        return msg.rowid <= self.replay_until

    @property
    def live_after(self) -> int:
        """Rows above this ROWID arrived while running (neither catch-up nor replay)."""
        return max(self.catchup_until, self.replay_until)
