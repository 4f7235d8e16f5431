"""Reader lease: exactly one channel server at a time reads chat.db and decides every row.

Owns two files in the state dir:

- `reader.lock` — the lease itself: an exclusive `fcntl.flock` on this file, on a descriptor opened with
  `O_CLOEXEC` (an `osascript` child never inherits it). Never deleted (a lock on a file that can be
  unlinked and re-created is two locks). The kernel releases it when the holder's process ends, SIGKILL
  included, so the lease can never be held by the dead.
- `reader.json` — who holds it, for people and `/sessions`: `{"version": 1, "session": "<id>",
  "pid": 4242, "since": <Unix seconds>}`, rewritten atomically by each new holder. Informational only:
  the lock decides, never this file.

Ways to take it: `try_acquire()` (non-blocking), `acquire(timeout)` (blocking; without a timeout the
calling thread sleeps in `flock`), and `watch(on_acquired)`: a daemon thread blocked in
`flock(LOCK_EX)`, which the kernel wakes the moment the holder dies, so a survivor takes over in
milliseconds (`scripts/bench_takeover.py` measures it). The holder keeps the lease until `release()` or its
process ends: there is no hand-back while alive, so a process goes from "waiting" to "reader" once and
never back.

A thread blocked in `flock` cannot be interrupted: `stop_watching()` only tells the watcher to let go at
once should it ever get the lock. That is harmless for a server (it stops watching only to exit) and is
documented for tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from . import statefile
from .clock import SYSTEM, Clock

log = logging.getLogger(__name__)

LEASE_FILE = "reader.lock"
HOLDER_FILE = "reader.json"
POLL_S = 0.01
"""How often `acquire(timeout=…)` retries (a blocking `flock` has no timeout)."""


class ReaderLease:
    """The chat.db reader lease of one state dir (see the module docstring).

    `session` is this process's session id (written to `reader.json`); `clock` stamps `since` and times
    `acquire(timeout)`. Thread-safe."""

    def __init__(self, state_dir: Path, session: str = "", clock: Clock = SYSTEM) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LEASE_FILE
        self.session = session
        self.clock = clock
        self._fd: int | None = None
        self._guard = threading.Lock()
        self._acquired = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lease."""
        return self._fd is not None

    def _open(self) -> int:
        statefile.ensure_private_dir(self.state_dir)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _took(self, fd: int, *, watcher: bool = False) -> bool:
        """Record `fd` (locked) as the lease; False (and `fd` closed) when already held, or when the
        watcher got it after `stop_watching`/`release`."""
        with self._guard:
            if self._fd is not None or (watcher and self._stop.is_set()):
                os.close(fd)
                return False
            self._fd = fd
        self._write_holder()
        self._acquired.set()
        return True

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; never blocks. True when held now (also if already held).
        Raises `OSError` when the lock file cannot be opened."""
        if self.held:
            return True
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        return self._took(fd) or self.held

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lease, waiting for it: forever (`timeout` None: the thread sleeps in `flock`) or at most
        `timeout` seconds (retrying every `POLL_S`). True when held, False at the deadline."""
        if timeout is None:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._took(fd) or self.held
        deadline = self.clock.monotonic() + timeout
        pause = threading.Event()
        while not self.try_acquire():
            if self.clock.monotonic() >= deadline:
                return False
            pause.wait(POLL_S)
        return True

    def watch(self, on_acquired: Callable[[], None] | None = None) -> None:
        """Start a daemon thread that blocks in `flock(LOCK_EX)` until the lease is free, takes it, and calls
        `on_acquired()` (on that thread). Returns at once; a second call does nothing. Use `wait()` to block
        on the outcome instead."""
        with self._guard:
            if self._watcher is not None or self._fd is not None:
                return
            self._watcher = threading.Thread(target=self._watch, args=(on_acquired,), name="lease", daemon=True)
            self._watcher.start()

    def _watch(self, on_acquired: Callable[[], None] | None) -> None:
        try:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            log.error("cannot wait for the chat.db reader lease (%s): this session will only receive", exc)
            return
        if self._took(fd, watcher=True) and on_acquired is not None:
            try:
                on_acquired()
            except Exception:
                log.exception("taking over as the chat.db reader failed")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until this object holds the lease (by any means) or `timeout` seconds pass."""
        return self._acquired.wait(timeout)

    def stop_watching(self) -> None:
        """Let go of the lease the moment a still-blocked watcher gets it (see the module docstring)."""
        self._stop.set()

    def release(self) -> None:
        """Give the lease up (close its descriptor). Call only after the last write of the delivery state:
        the next holder starts from it. Idempotent."""
        self._stop.set()
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _write_holder(self) -> None:
        doc = {"version": 1, "session": self.session, "pid": os.getpid(), "since": self.clock.wall()}
        try:
            statefile.atomic_write(self.state_dir / HOLDER_FILE, json.dumps(doc).encode())
        except OSError as exc:
            log.warning("could not write %s: %s", HOLDER_FILE, exc)


def holder(state_dir: Path) -> dict[str, object] | None:
    """What `reader.json` says (the last holder: it may have died since; check the lock for that).
    None when missing or not a JSON object."""
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((state_dir / HOLDER_FILE).read_bytes())
        if isinstance(doc, dict):
            return doc
    return None


def is_held(state_dir: Path) -> bool:
    """True while some process holds the lease (tries the lock without blocking and lets go at once)."""
    try:
        fd = os.open(state_dir / LEASE_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
