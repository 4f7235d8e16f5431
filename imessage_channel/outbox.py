"""Outbox: reply parts that could not be sent yet, retried with backoff and kept across restarts.

A reply is split into parts (text chunks, then files). When AppleScript fails in a way that certainly
sent nothing and may work later (`SendError.transient`: Messages not running, a call given up on before
it started), the parts not yet sent are queued here instead of being lost. The server's outbox task
retries them in order with growing pauses (`BACKOFF_S`) for at most `RETRY_FOR`; each part is removed
from the persisted queue the moment AppleScript reports it sent, so a restart never sends it twice. A
reply given up on (time out, or a permanent error such as a deleted file) is reported to Claude as a
channel event naming the chat and the text's first words.

Persistence: `outbox.json` in the state dir, rewritten atomically on every change; unreadable or
malformed files are moved aside (`outbox.json.corrupt`) and the queue starts empty.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .clock import SYSTEM

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.json"
RETRY_FOR_S = 600.0
"""How long a queued reply is retried before it is given up (10 minutes: long enough for Messages to be
relaunched or the Mac to wake; short enough that a late answer is still welcome)."""
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
"""Pause before retry n (the last value repeats)."""


@dataclass
class Queued:
    """One reply's unsent remainder: `parts` (texts exactly as to be sent) then `files` (paths)."""

    id: str
    chat_guid: str
    parts: list[str]
    files: list[str]
    first_words: str
    created: float
    next_at: float
    attempts: int = 0
    last_error: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.parts and not self.files


class Outbox:
    """The persisted queue. `clock` is wall time in seconds (injectable). Not thread-safe: the server
    touches it from its event loop only (sends themselves run in worker threads)."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = SYSTEM.wall) -> None:
        self.path = state_dir / OUTBOX_FILE
        self.clock = clock
        self.entries: list[Queued] = []
        self.writable = True

    def load(self) -> None:
        """Read the queue left by a previous run (missing file: empty)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = [Queued(**e) for e in data["entries"]]
        except FileNotFoundError:
            self.entries = []
        except (OSError, ValueError, TypeError, KeyError) as exc:
            aside = self.path.with_name(OUTBOX_FILE + ".corrupt")
            log.warning("%s is unreadable (%s); moved to %s, starting with an empty outbox", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self.entries = []

    def add(self, chat_guid: str, parts: list[str], files: list[str], error: str, first_words: str) -> Queued:
        """Queue the remainder of a reply; the first retry is due after `BACKOFF_S[0]`."""
        now = self.clock()
        entry = Queued(uuid.uuid4().hex[:12], chat_guid, list(parts), list(files), first_words, now, now + BACKOFF_S[0])
        entry.last_error = error
        self.entries.append(entry)
        self.save()
        return entry

    def next_due(self) -> float | None:
        """Wall time of the earliest retry, or None when the queue is empty."""
        return min((e.next_at for e in self.entries), default=None)

    def due(self) -> list[Queued]:
        """Entries whose retry time has come, oldest first."""
        now = self.clock()
        return [e for e in self.entries if e.next_at <= now]

    def part_sent(self, entry: Queued) -> None:
        """AppleScript reported the first remaining item sent: drop it for good (persisted at once)."""
        if entry.parts:
            entry.parts.pop(0)
        elif entry.files:
            entry.files.pop(0)
        if entry.empty:
            self.entries.remove(entry)
        self.save()

    def retry_later(self, entry: Queued, error: str) -> bool:
        """Record a transient failure. Returns False (and removes the entry) when `RETRY_FOR_S` has
        passed: the caller reports the reply as given up."""
        now = self.clock()
        entry.attempts += 1
        entry.last_error = error
        if now - entry.created >= RETRY_FOR_S:
            self.drop(entry)
            return False
        entry.next_at = now + BACKOFF_S[min(entry.attempts, len(BACKOFF_S) - 1)]
        self.save()
        return True

    def drop(self, entry: Queued) -> None:
        """Remove an entry (given up)."""
        if entry in self.entries:
            self.entries.remove(entry)
        self.save()

    def save(self) -> None:
        """Rewrite `outbox.json` atomically; on failure keep going in memory (logged once)."""
        if not self.writable:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".outbox-", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "entries": [asdict(e) for e in self.entries]}, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            self.writable = False
            log.error("cannot write %s (%s): queued replies will not survive a restart", self.path, exc)
