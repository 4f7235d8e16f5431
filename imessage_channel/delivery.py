"""Delivery ledger: what has been delivered, persisted so restarts and crashes never lose or repeat a text.

Owns two files in the state dir (`IMESSAGE_STATE_DIR`):

- `delivery.json` — rewritten atomically (temp + fsync + rename) after each delivery batch:
  `{"version": 1, "db": <chat.db path>, "rowid": W, "edge_guid": <GUID of row W>, "last_active": <Apple ns>,
  "seen": [GUID…],
  "recent": [[sender, chat, text hash, Apple ns, GUID]…]}`. `rowid` is the watermark: every row ≤ W has been
  decided (delivered, or dropped for a reason). `seen` holds the last `SEEN_LIMIT` delivered GUIDs.
- `delivered.log` — one GUID per line, appended the moment an event's line has been written to stdout
  (`transport.StdoutLines.on_written`), and folded into `delivery.json` at the next commit.

Exactly-once works like this: before an event is pushed its (GUID, ROWID) is marked *in flight*; once the
line is written the GUID moves to the seen-set (and the log). A commit never moves the persisted watermark
past the oldest row still in flight. After a crash, rows past the watermark are read again and those whose
GUID was written are recognised as seen, so each is delivered once: the only window left is the few
microseconds between the `write` system call returning and the log append (a SIGKILL exactly there repeats
one event).

If the state dir is not writable, the ledger says so once on stderr and keeps everything in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = "delivery.json"
LOG_FILE = "delivered.log"
SEEN_LIMIT = 5000
"""Delivered GUIDs remembered across restarts. A restart re-reads at most the rows past the watermark,
which is never more than a batch or two behind, so a few thousand is ample."""

RECENT_LIMIT = 200
"""Fingerprints of recent deliveries kept for the iCloud double-write check (see `inbound`)."""


@dataclass
class Resume:
    """What the ledger knew at start. `rowid` None: no usable file (first start, or a corrupt one:
    `corrupt` True)."""

    rowid: int | None
    last_active: int | None
    edge_guid: str | None = None
    seen: list[str] = field(default_factory=list)
    recent: list[tuple[str, str, str, int, str]] = field(default_factory=list)
    corrupt: bool = False


class DeliveryLedger:
    """Thread-safe: `written()` runs on the stdout writer thread, the rest on the delivery loop's."""

    def __init__(self, state_dir: Path, db_path: Path) -> None:
        self.state_dir = state_dir
        self.db_path = str(db_path)
        self.path = state_dir / STATE_FILE
        self.log_path = state_dir / LOG_FILE
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, int] = {}
        self._log: object | None = None
        self.writable = True

    # -- start -------------------------------------------------------------------------------------
    def load(self) -> Resume:
        """Read `delivery.json` and `delivered.log`. Never raises: a missing file is a first start; an
        unreadable or malformed one is logged, moved aside (`delivery.json.corrupt`), and reported with
        `corrupt=True`. A file written for another chat.db is treated as a first start."""
        resume = Resume(rowid=None, last_active=None)
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            log.warning("cannot read %s (%s); starting as if for the first time", self.path, exc)
            raw = None
        if raw is not None:
            try:
                data = json.loads(raw)
                if not isinstance(data, dict) or data.get("version") != 1:
                    raise ValueError("not a version-1 delivery file")
                if data.get("db") == self.db_path:
                    resume.rowid = int(data["rowid"])
                    # `newest_date` (a row's date) was written before `last_active` (the local clock) existed
                    active = data.get("last_active", data.get("newest_date"))
                    resume.last_active = int(active) if active is not None else None
                    resume.edge_guid = data.get("edge_guid")
                resume.seen = [str(g) for g in data.get("seen", [])]
                resume.recent = [(str(a), str(b), str(c), int(d), str(e)) for a, b, c, d, e in data.get("recent", [])]
            except (ValueError, TypeError, KeyError) as exc:
                aside = self.path.with_name(STATE_FILE + ".corrupt")
                log.warning("%s is corrupt (%s); moved to %s, catching up from the last day", self.path, exc, aside)
                with contextlib.suppress(OSError):
                    os.replace(self.path, aside)
                resume = Resume(rowid=None, last_active=None, corrupt=True)
        with contextlib.suppress(OSError):
            resume.seen += [
                line.strip() for line in self.log_path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
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
                    self._log.write(guid + "\n")  # type: ignore[attr-defined]
                    self._log.flush()  # type: ignore[attr-defined]
                except OSError as exc:
                    self._unwritable(exc)

    # -- per batch -----------------------------------------------------------------------------------
    def safe_watermark(self, processed: int) -> int:
        """`processed`, or just below the oldest row still in flight."""
        with self._lock:
            return min([processed, *(r - 1 for r in self._inflight.values())])

    def commit(
        self,
        processed: int,
        edge_guid: str | None,
        last_active: int | None,
        recent: deque[tuple[str, str, str, int, str]],
    ) -> None:
        """Persist the watermark (never past an in-flight row), the GUID of the row at the watermark
        (`edge_guid`, to detect renumbering), the seen-set and `recent` atomically, then empty
        `delivered.log`. Errors make the ledger memory-only, with one log line."""
        if not self.writable:
            return
        with self._lock:
            rowid = min([processed, *(r - 1 for r in self._inflight.values())])
            data = {
                "version": 1,
                "db": self.db_path,
                "rowid": rowid,
                "edge_guid": edge_guid if rowid == processed else None,
                "last_active": last_active,
                "seen": list(self._seen),
                "recent": [list(r) for r in recent],
            }
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".delivery-", suffix=".tmp")
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(data, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
                if self._log is not None:
                    self._log.truncate(0)  # type: ignore[attr-defined]
                    self._log.seek(0)  # type: ignore[attr-defined]
                else:
                    with contextlib.suppress(FileNotFoundError):
                        self.log_path.unlink()
            except OSError as exc:
                with contextlib.suppress(Exception):
                    os.unlink(tmp)  # type: ignore[possibly-undefined]
                self._unwritable(exc)

    def _unwritable(self, exc: OSError) -> None:
        self.writable = False
        log.error(
            "cannot write delivery state in %s (%s): delivery continues, but a restart may re-deliver or "
            "miss texts until the folder is writable (check its owner and permissions)",
            self.state_dir,
            exc,
        )
