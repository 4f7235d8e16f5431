"""Wake-ups: file-system events on the folder holding chat.db, plus a slow safety poll.

This module owns *when* the reader looks at chat.db, nothing else. A `watchdog` observer (FSEvents on
macOS, inotify on Linux) watches the *directory* holding chat.db — not the files: checkpoints and
Messages restarts replace `chat.db-wal` / `chat.db-shm`, which silences watches placed on the files
themselves (design §4). Relevant events set a `threading.Event`; `Waker.wait()` returns when it is
set, after a few milliseconds of debounce so a burst of writes (one commit touches -wal several times)
costs one read, or when the safety poll interval runs out (events can be missed: FSEvents coalesces,
inotify queues overflow).

Which events count:
- `chat.db` and `chat.db-wal`: any change (a commit appends WAL frames; a checkpoint rewrites chat.db);
- `chat.db-shm`: only creation, deletion or replacement. Readers (we are one) write read-marks into
  the -shm file, so reacting to its modifications would make every read wake the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.003
"""Quiet time gathered after the first event before reading: a few ms, so one commit's several
file events cost one read without adding visible latency."""

SAFETY_POLL_S = 5.0
"""Upper bound between two reads when no event arrives (missed events, network home folders)."""


class _Handler(FileSystemEventHandler):
    def __init__(self, db_name: str, wake: threading.Event) -> None:
        self._any_change = {db_name, db_name + "-wal"}
        self._shm = db_name + "-shm"
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        names = {Path(str(event.src_path)).name}
        dest = getattr(event, "dest_path", "")
        if dest:
            names.add(Path(str(dest)).name)
        if event.event_type in ("opened", "closed_no_write"):
            return
        if names & self._any_change or (self._shm in names and event.event_type != "modified"):
            self._wake.set()


class Waker:
    """Tells the reader when chat.db may have new rows.

    `start()` begins watching `db_path.parent`; `wait(timeout)` blocks until an event (plus
    `DEBOUNCE_S`) or `timeout` seconds, and returns True when woken by an event; `poke()` wakes it by hand
    (events of a session that died, to route again at once); `stop()` releases it.
    If the observer cannot start (e.g. the folder is unreadable), the waker logs it and falls back to the
    safety poll alone.
    """

    def __init__(self, db_path: Path, *, debounce: float = DEBOUNCE_S) -> None:
        self.db_path = db_path
        self.debounce = debounce
        self._event = threading.Event()
        self._observer: BaseObserver | None = None
        self.stopped = False

    def start(self) -> None:
        """Start the observer thread (idempotent)."""
        if self._observer is not None:
            return
        observer = Observer()
        observer.daemon = True
        observer.schedule(_Handler(self.db_path.name, self._event), str(self.db_path.parent), recursive=False)
        try:
            observer.start()
        except OSError as exc:
            log.warning(
                "cannot watch %s (%s); falling back to polling every %.0f s",
                self.db_path.parent,
                exc,
                SAFETY_POLL_S,
            )
            return
        self._observer = observer

    def poke(self) -> None:
        """Wake `wait()` now (from any thread)."""
        self._event.set()

    def wait(self, timeout: float = SAFETY_POLL_S) -> bool:
        """Block until woken (True) or `timeout` seconds pass (False); then re-arm."""
        woke = self._event.wait(timeout)
        if woke and self.debounce > 0 and not self.stopped:
            time.sleep(self.debounce)
        self._event.clear()
        return woke

    def stop(self) -> None:
        """Stop the observer and release any waiter."""
        self.stopped = True
        self._event.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
