"""Delivery ledger: what has been delivered, persisted so restarts and crashes never lose or repeat a text.

Owns two files in the state dir (`IMESSAGE_STATE_DIR`):

- `delivery.json` — rewritten atomically (`statefile.atomic_write`) after each delivery batch:
  `{"version": 1, "db": <chat.db path>, "rowid": W, "edge_guid": <GUID of row W>, "last_active": <Apple ns>,
  "seen": [GUID…],
  "recent": [[sender, chat, text hash, Apple ns, GUID]…]}`. `rowid` is the watermark: every row ≤ W has been
  decided (delivered, or dropped for a reason). `seen` holds the last `SEEN_LIMIT` delivered GUIDs.
- `delivered.log` — one GUID per line, appended the moment an event's line has been written to stdout
  (the callback of `transport.StdoutLines.send`), and folded into `delivery.json` at the next commit.

Exactly-once works like this: before an event is pushed its (GUID, ROWID) is marked *in flight*; once the
line is written the GUID moves to the seen-set (and the log). A commit never moves the persisted watermark
past the oldest row still in flight. After a crash, rows past the watermark are read again and those whose
GUID was written are recognised as seen, so each is delivered once: the only window left is the few
microseconds between the `write` system call returning and the log append (a SIGKILL exactly there repeats
one event).

If the state dir is not writable, the ledger says so once on stderr and keeps everything in memory.
Both files are validated on load (`parse_state`, `parse_log`); a bad one is moved aside under a unique name
and start-up goes on (see `DeliveryLedger.load`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from . import statefile
from .appletime import to_apple_ns
from .clock import SYSTEM, Clock
from .statefile import LoadState, Salvaged

log = logging.getLogger(__name__)

STATE_FILE = "delivery.json"
LOG_FILE = "delivered.log"
SEEN_LIMIT = 5000
"""Delivered GUIDs remembered across restarts. A restart re-reads at most the rows past the watermark,
which is never more than a batch or two behind, so a few thousand is ample."""

RECENT_LIMIT = 200
"""Fingerprints of recent deliveries kept for the iCloud double-write check (see `inbound`)."""

Fingerprint = tuple[str, str, str, int, str]
"""A delivery's fingerprint for the iCloud double-write check: (normalised sender, conversation key, content
hash, Apple-epoch ns of its date, GUID); see `inbound.filters.Duplicates`."""


@dataclass(frozen=True)
class Snapshot:
    """What a commit saves: the watermark (`rowid`), the GUID of the row at it, the local time of the last
    read (aware UTC), the recent delivery fingerprints."""

    rowid: int
    edge_guid: str | None
    last_active: datetime
    recent: Iterable[Fingerprint]


@dataclass
class Resume:
    """What the ledger knew at start. `rowid` None: no usable file (first start, or a corrupt one:
    `corrupt` True)."""

    rowid: int | None
    last_active: int | None
    edge_guid: str | None = None
    seen: list[str] = field(default_factory=list)
    recent: list[Fingerprint] = field(default_factory=list)
    corrupt: bool = False


@dataclass(frozen=True, slots=True)
class LedgerState:
    """A validated `delivery.json` (see the module docstring for the fields)."""

    db: str
    rowid: int
    edge_guid: str | None
    last_active: int | None
    seen: tuple[str, ...]
    recent: tuple[Fingerprint, ...]


_GUID = re.compile(r"[\x21-\x7e]{1,200}")
"""What a message GUID in our files may be: printable ASCII without spaces (chat.db GUIDs are UUIDs)."""


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r:.40}")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {value!r:.40}")
    return value


def _guid(value: object, where: str) -> str:
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise ValueError(f"{where}: not a message GUID: {value!r:.40}")
    return value


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {value!r:.40}")
    return value


def _fingerprint(item: object, where: str) -> Fingerprint:
    if not isinstance(item, list) or len(item) != 5:
        raise ValueError(f"{where}: expected [sender, chat, text hash, date, GUID], got {item!r:.60}")
    return (
        _str(item[0], where),
        _str(item[1], where),
        _str(item[2], where),
        _int(item[3], where),
        _guid(item[4], where),
    )


def parse_state(data: bytes) -> LedgerState:
    """Validate `delivery.json` bytes. Raises `ValueError` (saying where and what) for anything but UTF-8
    JSON of version 1 with: `db` a string, `rowid` an integer ≥ 0, `edge_guid` a GUID or null,
    `last_active` an integer or null (files written before it existed have `newest_date`, read in its place),
    `seen` a list of GUIDs, `recent` a list of
    `[sender, chat, text hash, Apple ns, GUID]` (three strings, an integer, a GUID)."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError("not a version-1 delivery file")
    rowid = _int(doc.get("rowid"), "rowid")
    if rowid < 0:
        raise ValueError(f"rowid: negative ({rowid})")
    edge, active = doc.get("edge_guid"), doc.get("last_active", doc.get("newest_date"))
    return LedgerState(
        db=_str(doc.get("db"), "db"),
        rowid=rowid,
        edge_guid=None if edge is None else _guid(edge, "edge_guid"),
        last_active=None if active is None else _int(active, "last_active"),
        seen=tuple(_guid(g, f"seen[{i}]") for i, g in enumerate(_list(doc.get("seen", []), "seen"))),
        recent=tuple(_fingerprint(r, f"recent[{i}]") for i, r in enumerate(_list(doc.get("recent", []), "recent"))),
    )


def parse_log(data: bytes) -> list[str]:
    """The GUIDs in `delivered.log` bytes, one per line (blank lines skipped). Raises `Salvaged` with the
    good GUIDs when some lines are not GUIDs (invalid UTF-8, spaces, control characters): the caller keeps
    those and the file is moved aside."""
    good: list[str] = []
    bad = 0
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line:
            continue
        try:
            guid = _guid(line.decode("utf-8"), "line")
        except ValueError:  # UnicodeDecodeError included
            bad += 1
            continue
        good.append(guid)
    if bad:
        raise Salvaged(good, f"{bad} line(s) are not message GUIDs")
    return good


class DeliveryLedger:
    """Thread-safe: `written()` runs on the stdout writer thread, the rest on the delivery loop's.

    `clock` stamps the names of files moved aside (see `statefile`)."""

    def __init__(self, state_dir: Path, db_path: Path, clock: Clock = SYSTEM) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.db_path = str(db_path)
        self.path = state_dir / STATE_FILE
        self.log_path = state_dir / LOG_FILE
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, int] = {}
        self._log: TextIO | None = None
        self.writable = True

    # -- start -------------------------------------------------------------------------------------
    def load(self) -> Resume:
        """Read `delivery.json` and `delivered.log`. Never raises.

        A missing `delivery.json` is a first start. One that does not parse or fails validation
        (`parse_state`) is moved aside under a unique name (`statefile.move_aside`), logged, and reported
        with `corrupt=True` (the caller catches up on the last day). An unreadable one (permissions, a
        directory, EIO) is left where it is, logged, and treated as a first start; the next commit
        replaces it when the folder allows. A file written for another chat.db is a first start too.
        Lines of `delivered.log` that are not GUIDs (invalid UTF-8, control characters) are dropped and
        the log is moved aside; the good lines still count as delivered."""
        resume = Resume(rowid=None, last_active=None)
        loaded = statefile.load(
            self.path,
            parse_state,
            clock=self.clock,
            log=log,
            then="catching up on the last day's texts",
            then_unreadable="starting as if for the first time",
        )
        if loaded.state is LoadState.CORRUPT:
            resume.corrupt = True
        elif loaded.value is not None:
            state = loaded.value
            if state.db == self.db_path:
                resume.rowid, resume.last_active, resume.edge_guid = state.rowid, state.last_active, state.edge_guid
            resume.seen, resume.recent = list(state.seen), list(state.recent)
        logged = statefile.load(
            self.log_path,
            parse_log,
            clock=self.clock,
            log=log,
            then="its readable lines still count as delivered",
            then_unreadable="a text delivered just before the last stop may be delivered again",
        )
        resume.seen += logged.value or []
        for guid in resume.seen[-SEEN_LIMIT:]:
            self._seen[guid] = None
        return resume

    # -- per event ---------------------------------------------------------------------------------
    def is_seen(self, guid: str) -> bool:
        """True when an event for this message GUID has been written to stdout (now or before a restart)."""
        with self._lock:
            return guid in self._seen

    def in_flight(self, guid: str, rowid: int) -> None:
        """Mark an event as about to be pushed."""
        with self._lock:
            self._inflight[guid] = rowid

    def written(self, guid: str) -> None:
        """The event's line has been written to stdout: it is delivered. Appends to `delivered.log`."""
        with self._lock:
            self._inflight.pop(guid, None)
            self._seen[guid] = None
            while len(self._seen) > SEEN_LIMIT:
                self._seen.popitem(last=False)
            if self.writable:
                try:
                    if self._log is None:
                        self.state_dir.mkdir(parents=True, exist_ok=True)
                        self._log = self.log_path.open("a", encoding="utf-8")
                    self._log.write(guid + "\n")
                    self._log.flush()
                except OSError as exc:
                    self._unwritable(exc)

    # -- per batch -----------------------------------------------------------------------------------
    def safe_watermark(self, processed: int) -> int:
        """`processed`, or just below the oldest row still in flight."""
        with self._lock:
            return min([processed, *(r - 1 for r in self._inflight.values())])

    def commit(self, snapshot: Snapshot) -> None:
        """Persist `snapshot` (the pipeline's `InboundPipeline.snapshot()`): the watermark, never past a row
        still in flight; the GUID of the row at it (to detect renumbering); the seen-set; the recent
        fingerprints; the local time of the last read. Atomically, then `delivered.log` is emptied. Errors make
        the ledger memory-only, with one log line."""
        if not self.writable:
            return
        with self._lock:
            rowid = min([snapshot.rowid, *(r - 1 for r in self._inflight.values())])
            data = {
                "version": 1,
                "db": self.db_path,
                "rowid": rowid,
                "edge_guid": snapshot.edge_guid if rowid == snapshot.rowid else None,
                "last_active": to_apple_ns(snapshot.last_active),
                "seen": list(self._seen),
                "recent": [list(r) for r in snapshot.recent],
            }
            try:
                statefile.atomic_write(self.path, json.dumps(data).encode("utf-8"))
                if self._log is not None:
                    self._log.truncate(0)
                    self._log.seek(0)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        self.log_path.unlink()
            except OSError as exc:
                self._unwritable(exc)

    def _unwritable(self, exc: OSError) -> None:
        self.writable = False
        log.error(
            "cannot write delivery state in %s (%s): delivery continues, but a restart may re-deliver or "
            "miss texts until the folder is writable (check its owner and permissions)",
            self.state_dir,
            exc,
        )
