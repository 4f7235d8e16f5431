"""Outbox: reply parts that could not be sent yet, retried with backoff and kept across restarts.

A reply is split into parts (text chunks, then files). When AppleScript fails in a way that certainly
sent nothing and may work later (`SendError.transient`: Messages not running, a call given up on before
it started), the parts not yet sent are queued here instead of being lost. The server's outbox task
retries them in order with growing pauses (`BACKOFF_S`) for at most `RETRY_FOR`; each part is removed
from the persisted queue the moment AppleScript reports it sent, so a restart never sends it twice. A
reply given up on (time out, or a permanent error such as a deleted file) is reported to Claude as a
channel event naming the chat and the text's first words.

Persistence: `outbox.json` in the state dir (with several sessions, the reader's; the others keep their own
`sessions/<id>.outbox.json`, adopted by the reader once they end: `move_to`, `adopt`), rewritten
atomically on every change (`statefile.atomic_write`) and validated entry by entry on load
(`Queued.from_json`). A file that does not parse is moved aside under a unique name (`statefile.move_aside`)
and the queue starts empty; bad entries are dropped with the file moved aside and the good ones kept. An
unreadable file (permissions, a directory, EIO) is left where it is and the outbox works in memory only, so
fixing the file's owner later loses nothing.

Every entry is re-checked against the gate when it is due (`server.Channel._retry`): the file is in the state
dir, which is not proof that the channel may answer the chat an entry names.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import statefile
from .clock import SYSTEM, Clock
from .statefile import LoadState, Salvaged

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
        """True when nothing is left to send."""
        return not self.parts and not self.files

    @classmethod
    def from_json(cls, obj: object) -> Queued:
        """Validate one entry of `outbox.json`. Raises `ValueError` naming the field: `id`, `chat_guid`,
        `first_words`, `last_error` must be strings (`chat_guid` non-empty), `parts` and `files` lists of
        strings, `created` and `next_at` finite numbers (Unix seconds), `attempts` an integer ≥ 0, `extra`
        an object. Keys this version does not know are kept in `extra`."""
        if not isinstance(obj, dict):
            raise ValueError(f"expected an object, got {obj!r:.40}")
        known = {f.name for f in fields(cls)}
        out: dict[str, Any] = {}
        for name in ("id", "chat_guid", "first_words"):
            out[name] = _check(isinstance(obj.get(name), str), obj, name, "a string")
        if not out["chat_guid"]:
            raise ValueError("chat_guid: empty")
        out["last_error"] = _check(isinstance(obj.get("last_error", ""), str), obj, "last_error", "a string", "")
        for name in ("parts", "files"):
            value = obj.get(name)
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            out[name] = list(_check(ok, obj, name, "a list of strings"))
        for name in ("created", "next_at"):
            value = obj.get(name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            out[name] = float(_check(ok, obj, name, "a number of seconds"))
        attempts = obj.get("attempts", 0)
        ok = isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0
        out["attempts"] = _check(ok, obj, "attempts", "a whole number ≥ 0", 0)
        extra = obj.get("extra", {})
        if not isinstance(extra, dict):
            raise ValueError(f"extra: expected an object, got {extra!r:.40}")
        out["extra"] = {**extra, **{k: v for k, v in obj.items() if k not in known}}
        return cls(**out)


def _check(ok: bool, obj: dict[str, Any], name: str, what: str, default: object = None) -> Any:
    value = obj.get(name, default)
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {value!r:.40}")
    return value


def parse_outbox(data: bytes) -> list[Queued]:
    """Validate `outbox.json` bytes: UTF-8 JSON `{"version": 1, "entries": [...]}`. Raises `ValueError`
    when the document is not of that shape, and `Salvaged` with the valid entries when some entries are
    bad (`Queued.from_json` says why)."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ValueError('expected {"version": 1, "entries": [...]}')
    good: list[Queued] = []
    bad: list[str] = []
    for i, entry in enumerate(doc["entries"]):
        try:
            good.append(Queued.from_json(entry))
        except ValueError as exc:
            bad.append(f"entry {i}: {exc}")
    if bad:
        raise Salvaged(good, "; ".join(bad))
    return good


class Outbox:
    """The persisted queue. `clock` is wall time in seconds (injectable); `stamp` is the clock whose
    `now()` names a file moved aside. Not thread-safe: the server touches it from its event loop only
    (sends themselves run in worker threads)."""

    def __init__(
        self,
        state_dir: Path,
        clock: Callable[[], float] = SYSTEM.wall,
        stamp: Clock = SYSTEM,
        path: Path | None = None,
    ) -> None:
        self.path = path or state_dir / OUTBOX_FILE
        self.clock = clock
        self.stamp = stamp
        self.entries: list[Queued] = []
        self.writable = True

    def load(self) -> None:
        """Read the queue left by a previous run; never raises (see the module docstring for bad files)."""
        loaded = statefile.load(
            self.path,
            parse_outbox,
            clock=self.stamp,
            log=log,
            then="starting with an empty outbox",
            then_unreadable="queued replies are kept in memory only until it is fixed",
        )
        self.entries = loaded.value or []
        if loaded.state is LoadState.UNREADABLE:
            self.writable = False  # never replace a file we could not read: fixing its owner loses nothing
        elif loaded.state is LoadState.SALVAGED:
            log.warning("outbox: kept the %d valid entries of %s", len(self.entries), self.path.name)
            self.save()

    def adopt(self, path: Path) -> int:
        """Take over the queue another outbox left in `path` (a session that ended): its valid entries join
        this queue (saved first), then the file is removed. Returns how many entries were adopted; a file
        that cannot be read is left where it is."""
        if path == self.path:
            return 0
        adopted = self._merge(path)
        if adopted:
            self.save()
        self._remove(path)
        if adopted:
            log.info("outbox: took over %d queued repl(ies) from %s", adopted, path.name)
        return adopted

    def move_to(self, path: Path) -> None:
        """Keep the queue in `path` from now on (a session that becomes the reader moves to `outbox.json`):
        entries already in that file join the queue, which is saved there, and the old file is removed."""
        old = self.path
        if path == old:
            return
        self.path = path
        self._merge(path)
        self.save()
        self._remove(old)

    def _merge(self, path: Path) -> int:
        """Add the valid entries of the queue file `path` that this queue does not hold; how many."""
        loaded = statefile.load(
            path, parse_outbox, clock=self.stamp, log=log, then="nothing adopted", then_unreadable="left where it is"
        )
        known = {e.id for e in self.entries}
        adopted = [e for e in loaded.value or [] if e.id not in known]
        self.entries += adopted
        return len(adopted)

    def _remove(self, path: Path) -> None:
        """Delete a queue file whose entries this queue now holds (not while this queue cannot be saved)."""
        if not self.writable:
            return
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("outbox: could not remove %s: %s", path, exc)

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
        doc = {"version": 1, "entries": [asdict(e) for e in self.entries]}
        try:
            statefile.atomic_write(self.path, json.dumps(doc, ensure_ascii=False).encode("utf-8"))
        except OSError as exc:
            self.writable = False
            log.error("cannot write %s (%s): queued replies will not survive a restart", self.path, exc)
