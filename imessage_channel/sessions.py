"""Session registry: which channel servers (Claude Code sessions) are alive on this Mac, and their names.

Owns the folder `<state dir>/sessions/` (mode 0700) and, in it, per session `<id>` (8 hex digits, random,
never reused):

- `<id>.lock` — an exclusive `fcntl.flock` held by the session's process for its whole life, on a
  descriptor opened with `O_CLOEXEC`. The kernel drops it when the process ends, however it ends (SIGKILL
  included), so "the lock can be taken" *is* "the session is dead"; a pid check is never trusted alone
  (pids are reused).
- `<id>.json` — the entry, written atomically (`statefile.atomic_write`) once the lock is held:
  `{"version": 1, "id": "1f3a9c0e", "name": "proj-2", "seq": 7, "pid": 4242, "started": 1767225600.5,
  "address": "<state>/sessions/1f3a9c0e.sock", "project": "/Users/me/proj"}`. `seq` orders sessions by
  start (1 + the highest seq of any entry present; only its order among live sessions means anything),
  `started` is Unix seconds (`clock.wall()`, for display), `address` the Unix socket of its inbox
  (`handoff.Inbox`), `name` unique among live sessions (case-insensitive).
- `registry.lock` — taken shared to list sessions and exclusive to register, unregister or prune, so a
  name is picked and claimed atomically and a pruner never deletes an entry being written.
- `routes.json` — the sticky map `{"version": 1, "sticky": {"<chat guid>": "<session id>"}}`, written only
  by the reader (the lease holder, see `lease`) through `StickyStore`.

Other modules keep their own files in this folder (`handoff`: `<id>.delivered`, sockets; `sentlog`:
`sent.log`; `permission_registry`: `permissions/`). Pruning removes a dead session's `.json`, `.lock` and
socket, never its `.delivered` log: the reader folds that into its ledger first (see `handoff`).

Session names: `IMESSAGE_SESSION_NAME`, else the name of the folder in `CLAUDE_PROJECT_DIR`, else of the
working directory; sanitised (`sanitize_name`) and made unique among live sessions with `-2`, `-3`, …
(`unique_name`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from . import statefile
from .clock import SYSTEM, Clock

log = logging.getLogger(__name__)

SESSIONS_DIR = "sessions"
REGISTRY_LOCK = "registry.lock"
ROUTES_FILE = "routes.json"
NAME_ENV = "IMESSAGE_SESSION_NAME"
PROJECT_ENV = "CLAUDE_PROJECT_DIR"
MAX_NAME = 32
"""Longest session name (characters). Names are typed on a phone after `@`."""

FALLBACK_NAME = "session"
"""The name of a session whose folder name has no letter or digit left after sanitising."""

DEATH_POLL_S = 0.005
"""How often `Registry.wait_dead` tries a session's lock while it waits."""

_ID = re.compile(r"[0-9a-f]{8}")
_NAME_DROP = re.compile(r"[^\w.-]+")
_DASHES = re.compile(r"-{2,}")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One registry entry (see the module docstring for the fields and their units)."""

    id: str
    name: str
    seq: int
    pid: int = 0
    started: float = 0.0
    address: str = ""
    project: str = ""


def sessions_dir(state_dir: Path) -> Path:
    """`<state dir>/sessions`, the folder every multi-session file lives in."""
    return state_dir / SESSIONS_DIR


def new_session_id() -> str:
    """A fresh random session id: 8 lowercase hex digits (short, for socket paths)."""
    return secrets.token_hex(4)


def sanitize_name(raw: str) -> str:
    """A session name from free text: NFKC, case-folded, white space and anything but letters, digits,
    `_`, `.` and `-` turned into `-`, leading/trailing `-._` removed, at most `MAX_NAME` characters;
    `FALLBACK_NAME` when nothing is left. `"My Project"` → `"my-project"`."""
    text = unicodedata.normalize("NFKC", raw).casefold()
    text = _DASHES.sub("-", _NAME_DROP.sub("-", text)).strip("-._")
    text = text[:MAX_NAME].rstrip("-._")
    return text or FALLBACK_NAME


def base_name(env: Mapping[str, str], cwd: Path) -> str:
    """The name a session asks for: env `IMESSAGE_SESSION_NAME`, else the last component of env
    `CLAUDE_PROJECT_DIR`, else of `cwd`; sanitised (`sanitize_name`)."""
    explicit = env.get(NAME_ENV, "").strip()
    if explicit:
        return sanitize_name(explicit)
    project = env.get(PROJECT_ENV, "").strip()
    folder = Path(project) if project else cwd
    return sanitize_name(folder.name or str(folder))


def unique_name(base: str, taken: Iterable[str]) -> str:
    """`base` if no name in `taken` equals it (case-insensitively), else the first free `base-2`,
    `base-3`, … (the suffix replaces the end of a name already `MAX_NAME` long)."""
    used = {t.casefold() for t in taken}
    if base.casefold() not in used:
        return base
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = base[: MAX_NAME - len(suffix)] + suffix
        if candidate.casefold() not in used:
            return candidate
        n += 1


def parse_entry(data: bytes) -> SessionInfo:
    """Validate `<id>.json` bytes. Raises `ValueError` (incl. JSON errors) unless it is version 1 with
    `id` (8 hex), `name` (non-empty string), `seq`, `pid` (integers), `started` (number), `address`,
    `project` (strings)."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError("not a version-1 session entry")
    sid, name = doc.get("id"), doc.get("name")
    if not isinstance(sid, str) or not _ID.fullmatch(sid):
        raise ValueError(f"id: {sid!r:.40}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: {name!r:.40}")
    ints = [doc.get("seq"), doc.get("pid")]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in ints):
        raise ValueError("seq/pid: not integers")
    started = doc.get("started")
    if isinstance(started, bool) or not isinstance(started, int | float):
        raise ValueError("started: not a number")
    address, project = doc.get("address", ""), doc.get("project", "")
    if not isinstance(address, str) or not isinstance(project, str):
        raise ValueError("address/project: not strings")
    return SessionInfo(sid, name, doc["seq"], doc["pid"], float(started), address, project)


def _try_lock(path: Path) -> bool | None:
    """Try `flock(LOCK_EX | LOCK_NB)` on `path` and let go at once. True: taken (nobody holds it), False:
    held by someone, None: no such file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)
    return True


class Membership:
    """This process's place in the registry: its entry and the lock that proves it alive.

    Keep it for the life of the process; `close()` (clean shutdown) removes the entry and lets go of the
    lock. After a crash the kernel lets go of the lock and the next `Registry.prune` removes the files."""

    def __init__(self, registry: Registry, info: SessionInfo, lock_fd: int) -> None:
        self.registry = registry
        self.info = info
        self._fd: int | None = lock_fd
        self._guard = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Unregister: delete `<id>.json` and `<id>.lock` under the registry lock, then close the lock's
        descriptor (which releases it). Idempotent; file errors are logged, never raised."""
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with self.registry.locked(exclusive=True):
                self.registry.remove_files(self.info, keep_socket=False)
        except OSError as exc:
            log.warning("could not remove session %s from the registry: %s", self.info.name, exc)
        finally:
            os.close(fd)


class Registry:
    """The live sessions of one state dir. Thread-safe (every operation takes `registry.lock`).

    `clock` stamps `started` (`wall()`) and times `wait_dead` (`monotonic()`)."""

    def __init__(self, state_dir: Path, clock: Clock = SYSTEM) -> None:
        self.state_dir = state_dir
        self.dir = sessions_dir(state_dir)
        self.clock = clock

    # -- files ---------------------------------------------------------------------------------
    def entry_path(self, sid: str) -> Path:
        return self.dir / f"{sid}.json"

    def lock_path(self, sid: str) -> Path:
        return self.dir / f"{sid}.lock"

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold `registry.lock` (shared or exclusive; blocks). Creates the folder (0700) when missing.
        Raises `OSError` when it cannot be created or opened."""
        statefile.ensure_private_dir(self.dir)
        fd = os.open(self.dir / REGISTRY_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def remove_files(self, info: SessionInfo, *, keep_socket: bool) -> None:
        """Delete a session's entry, lock file and (unless `keep_socket`) its socket when it is one.
        Call with the registry lock held exclusively. Never touches its `.delivered` log."""
        for path in (self.entry_path(info.id), self.lock_path(info.id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if info.address and not keep_socket:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(info.address).st_mode):
                    os.unlink(info.address)

    # -- reading -------------------------------------------------------------------------------
    def _entries(self) -> list[SessionInfo]:
        """Every readable entry in the folder, live or not (unreadable or malformed ones skipped)."""
        out = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or not _ID.fullmatch(name[:-5]):
                continue
            try:
                out.append(parse_entry((self.dir / name).read_bytes()))
            except (OSError, ValueError) as exc:
                log.debug("session entry %s skipped: %s", name, exc)
        return out

    def is_live(self, sid: str) -> bool:
        """True while the process of session `sid` holds its lock."""
        return _try_lock(self.lock_path(sid)) is False

    def live(self) -> list[SessionInfo]:
        """The live sessions, oldest first (by `seq`). About 20 µs per entry."""
        with self.locked(exclusive=False):
            entries = self._entries()
        return sorted((e for e in entries if self.is_live(e.id)), key=lambda e: e.seq)

    def get(self, sid: str) -> SessionInfo | None:
        """The entry of live session `sid`, else None."""
        return next((e for e in self.live() if e.id == sid), None)

    def wait_dead(self, info: SessionInfo, timeout: float) -> bool:
        """Wait up to `timeout` seconds for session `info` to end (its lock to become free). True when it
        is dead (or its lock file is gone), False when it still lives at the deadline."""
        deadline = self.clock.monotonic() + timeout
        pause = threading.Event()
        while self.is_live(info.id):
            if self.clock.monotonic() >= deadline:
                return False
            pause.wait(DEATH_POLL_S)
        return True

    # -- writing -------------------------------------------------------------------------------
    def register(
        self, sid: str, base: str, *, address: str = "", project: str = "", pid: int | None = None
    ) -> Membership:
        """Join the registry as session `sid` (from `new_session_id`) asking for name `base`.

        Under the exclusive registry lock: prune dead entries, create and lock `<sid>.lock`, pick a name
        unique among live sessions (`unique_name`), and write `<sid>.json` atomically. Returns the
        `Membership` that holds the lock. Raises `ValueError` for a malformed or taken `sid`, `OSError`
        when the folder is not writable."""
        if not _ID.fullmatch(sid):
            raise ValueError(f"not a session id: {sid!r}")
        with self.locked(exclusive=True):
            entries = self._prune_locked()
            try:
                fd = os.open(self.lock_path(sid), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                raise ValueError(f"session id {sid} is taken") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                info = SessionInfo(
                    id=sid,
                    name=unique_name(base, (e.name for e in entries)),
                    seq=max((e.seq for e in entries), default=0) + 1,
                    pid=os.getpid() if pid is None else pid,
                    started=self.clock.wall(),
                    address=address,
                    project=project,
                )
                statefile.atomic_write(self.entry_path(sid), json.dumps({"version": 1, **asdict(info)}).encode())
            except BaseException:
                with contextlib.suppress(OSError):
                    self.lock_path(sid).unlink()
                os.close(fd)
                raise
        return Membership(self, info, fd)

    def prune(self) -> list[SessionInfo]:
        """Remove the files of dead sessions (see `remove_files`). Returns the entries removed."""
        with self.locked(exclusive=True):
            before = self._entries()
            live = {e.id for e in self._prune_locked()}
        return [e for e in before if e.id not in live]

    def _prune_locked(self) -> list[SessionInfo]:
        """With the lock held: delete dead sessions' files and stray unheld lock files; return the live
        entries."""
        live = []
        for entry in self._entries():
            if self.is_live(entry.id):
                live.append(entry)
            else:
                self.remove_files(entry, keep_socket=False)
        known = {e.id for e in live}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                sid = name[:-5]
                stray = name.endswith(".lock") and _ID.fullmatch(sid) and sid not in known
                if stray and _try_lock(self.dir / name):
                    with contextlib.suppress(FileNotFoundError):
                        (self.dir / name).unlink()
        return live


def parse_routes(data: bytes) -> dict[str, str]:
    """Validate `routes.json` bytes: version 1 with `sticky` an object of string → session id. Raises
    `ValueError` otherwise."""
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError("not a version-1 routes file")
    sticky = doc.get("sticky", {})
    if not isinstance(sticky, dict):
        raise ValueError("sticky: not an object")
    for chat, sid in sticky.items():
        if not isinstance(sid, str) or not _ID.fullmatch(sid):
            raise ValueError(f"sticky[{chat!r:.40}]: not a session id")
    return dict(sticky)


class StickyStore:
    """`sessions/routes.json`: the reader's sticky map (chat GUID → session id), so a reader that takes
    over keeps every chat where it was. Only the lease holder writes it; `save` is atomic and skips
    unchanged maps. A corrupt file is moved aside (`statefile.load`) and read as empty."""

    def __init__(self, state_dir: Path, clock: Clock = SYSTEM) -> None:
        self.path = sessions_dir(state_dir) / ROUTES_FILE
        self.clock = clock
        self._last: dict[str, str] | None = None

    def load(self) -> dict[str, str]:
        """The saved map; empty when missing, unreadable or corrupt. Never raises."""
        loaded = statefile.load(self.path, parse_routes, clock=self.clock, log=log, then="chats start unstuck")
        self._last = dict(loaded.value or {})
        return dict(self._last)

    def save(self, sticky: Mapping[str, str]) -> None:
        """Write `sticky` unless it equals what was last loaded or saved. Errors are logged, not raised
        (the map is a convenience: losing it only un-sticks chats)."""
        current = dict(sticky)
        if current == self._last:
            return
        try:
            statefile.atomic_write(self.path, json.dumps({"version": 1, "sticky": current}).encode())
            self._last = current
        except OSError as exc:
            log.warning("could not save %s: %s", self.path, exc)
