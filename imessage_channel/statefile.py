"""State files: how every file in the state dir is written, read, locked and set aside.

Owns the file handling that access.json (`access`), the delivery ledger (`delivery`: delivery.json,
delivered.log) and the outbox (`outbox`: outbox.json) share, so all of them behave alike:

- `atomic_write(path, data)`: a temp file in the same directory (mode 0600), fsync, `os.replace`, then
  fsync of the directory, so a reader sees the old file or the new one, never a mix, and the rename
  survives a power cut. The directory is created 0700 when missing.
- `move_aside(path, now)`: rename to `<name>.corrupt-<UTC YYYYmmddTHHMMSSZ>[-N]`, never replacing an
  existing file; `now` comes from the injected clock (`imessage_channel.clock`).
- `locked(state)`: the exclusive advisory lock `<state>/access.json.lock` (`fcntl.flock`), the one lock
  the server and the CLI take for any read-modify-write or move-aside in the state dir. (The name is
  historical: it predates the other state files, and older CLIs take it under that name.)
- `read(path)`: the bytes, None when there is no file; raises `Unreadable` when the file exists but cannot
  be read (permissions, a directory in its place, EIO). An unreadable file is never moved aside: it is
  not known to be bad, and moving it would lose it for whoever can read it.
- `load(path, parse, …)`: `read` + `parse`; a file that does not parse is moved aside under the lock
  (only if it is still the file that was read) with one log line, and the caller goes on with nothing
  (or with what the parser salvaged, `Salvaged`).
- `unreadable_help(path, error)`: the sentence that tells the user how to fix an unreadable file
  (shared by the server's log line, the CLI and `imessage-channel doctor`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from .clock import Clock

LOCK_FILE = "access.json.lock"
"""The advisory lock file in the state dir (see `locked`)."""

StatKey = tuple[int, int, int, int]
"""`(st_mtime_ns, st_size, st_ino, st_ctime_ns)`: changes whenever the file is rewritten, replaced,
or has its owner or mode changed (chown/chmod change only the ctime)."""

T = TypeVar("T")


class Unreadable(OSError):
    """A state file exists but cannot be read. `cause` is the `OSError` the read raised; `str(err)` names
    the file and the reason, `help` says how to fix it (`unreadable_help`)."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = path
        self.cause = cause

    @property
    def help(self) -> str:
        """The fix, as one sentence for the user."""
        return unreadable_help(self.path, self.cause)

    def __str__(self) -> str:
        return f"cannot read {self.path} ({describe_error(self.cause)})"


class Salvaged(ValueError, Generic[T]):
    """Raised by a `load` parser that found damage but kept what it could: `value` is used and the
    file is still moved aside (so nothing that was in it is lost); `reason` says what was wrong."""

    def __init__(self, value: T, reason: str) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700; tighten an existing one to 0700 when we may.
    Raises `OSError` when it cannot be created (a file in the way, no permission)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(path, 0o700)


def stat_key(path: Path) -> StatKey | None:
    """The file's `StatKey`, or None when it does not exist (or a parent is not a directory).
    Other `OSError`s (EACCES on a parent, EIO) propagate."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def describe_error(error: OSError) -> str:
    """A short reason for an `OSError`: `is a directory`, `Permission denied`, `Input/output error`."""
    if isinstance(error, IsADirectoryError):
        return "it is a directory"
    return error.strerror or type(error).__name__


def unreadable_help(path: Path, error: OSError) -> str:
    """How to fix `path` (a state file, or the state folder) that `error` made unusable: a sentence with the
    command to run.

    A directory where a file belongs (`IsADirectoryError`): move it out of the way. Permission denied:
    `sudo chown` when another user (typically root, after `sudo imessage-channel …`) owns it, else `chmod`.
    Anything else (EIO): the disk failed to read it; move it away so a new one is written."""
    quoted = f"'{path}'"
    if isinstance(error, IsADirectoryError):
        return f"a directory is in the way: move it aside (mv {quoted} '{path}.dir'), then try again"
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        try:
            st = path.stat()
            owner, folder = st.st_uid, stat.S_ISDIR(st.st_mode)
        except OSError:
            owner, folder = os.getuid(), False
        mode = "700" if folder else "600"
        if owner != os.getuid():
            recursive = "-R " if folder else ""
            return (
                f"it belongs to another user (uid {owner}), likely from running a command with sudo: "
                f'sudo chown {recursive}"$USER" {quoted} && chmod {mode} {quoted}'
            )
        return f"chmod {mode} {quoted}"
    return (
        f"the disk could not read it ({describe_error(error)}): copy what you can, then move it away "
        f"(mv {quoted} '{path}.bad') so a new one is written; check the disk with Disk Utility"
    )


def read(path: Path) -> bytes | None:
    """The file's bytes; None when it does not exist. Raises `Unreadable` when it exists but cannot be
    read (a directory, permissions, EIO)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Unreadable(path, exc) from exc


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (see the module docstring). File mode 0600, the
    directory 0700 (created when missing). Raises `OSError` when the directory is not writable; the temp
    file is removed then."""
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def move_aside(path: Path, now: datetime) -> Path:
    """Rename `path` to `<name>.corrupt-<UTC YYYYmmddTHHMMSSZ>[-N]` and return the new path.

    Never replaces an existing file: a hard link is made under the first free name (a link fails rather
    than overwrite), then `path` is unlinked; where hard links are unsupported, check then rename. `now`
    is the injected clock's `now()` (a naive value is taken as UTC). Raises `OSError` (e.g. a read-only
    directory)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in itertools.count():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{n}" if n else ""))
        try:
            os.link(path, aside)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise
        except OSError:  # hard links unsupported here
            if aside.exists():
                continue
            os.rename(path, aside)
            return aside
        os.unlink(path)
        return aside
    raise AssertionError("unreachable")


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """Hold the exclusive advisory lock `<state>/access.json.lock` (blocks until it is free).

    Not re-entrant: a second `locked` on the same state dir in the same process while the first is held
    deadlocks (flock locks belong to the open file). Creates the directory (0700) and the lock file (0600)
    when missing. Raises `OSError` when the lock file cannot be opened."""
    ensure_private_dir(state)
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def move_aside_if_unchanged(
    path: Path, key: StatKey | None, now: datetime, *, holding_lock: bool = False
) -> Path | None:
    """Move `path` aside (`move_aside`) under `locked(path.parent)`, but only while its `stat_key` is
    still `key` (another writer may have replaced it with a good file meanwhile). Returns the new path,
    or None when the file changed or vanished. When the lock cannot be taken (its file unopenable) the
    move goes ahead without it. Raises `OSError` when the rename fails."""
    with contextlib.ExitStack() as stack:
        if not holding_lock:
            # Best effort: without the lock, the stat check below still guards against a replaced file.
            with contextlib.suppress(OSError):
                stack.enter_context(locked(path.parent))
        if stat_key(path) != key:
            return None
        try:
            return move_aside(path, now)
        except FileNotFoundError:
            return None


class LoadState(StrEnum):
    """How `load` went: the file was `ok`, `missing`, `unreadable` (left in place), `corrupt` (moved
    aside, nothing kept) or `salvaged` (moved aside, the parser's partial value kept)."""

    OK = "ok"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    CORRUPT = "corrupt"
    SALVAGED = "salvaged"


@dataclass(frozen=True, slots=True)
class Loaded(Generic[T]):
    """What `load` found: `value` (None unless OK or SALVAGED), `state`, where the file went (`aside`),
    and the `reason` it was set aside or could not be read."""

    value: T | None
    state: LoadState
    aside: Path | None = None
    reason: str = ""


def load(
    path: Path,
    parse: Callable[[bytes], T],
    *,
    clock: Clock,
    log: logging.Logger,
    then: str,
    then_unreadable: str | None = None,
) -> Loaded[T]:
    """Read and parse one state file; never raises.

    `parse(data)` returns the value, raises `ValueError` (including `UnicodeDecodeError`,
    `json.JSONDecodeError`; `TypeError` and `KeyError` count too) for a bad file, or `Salvaged` to keep a
    partial value. A bad file is moved aside (`move_aside_if_unchanged`, stamped by `clock.now()`) and one
    warning is logged on `log`: `<path> is corrupt (<reason>); moved aside to <name>; <then>`. An unreadable
    file is left where it is, with one warning naming the fix (`unreadable_help`) and `then_unreadable`
    (default `then`): what the caller does without the file."""
    try:
        key = stat_key(path)
        data = read(path)
    except OSError as exc:
        error = exc.cause if isinstance(exc, Unreadable) else exc
        reason = describe_error(error)
        fix = unreadable_help(path, error)
        log.warning("cannot read %s (%s); left where it is; %s. Fix: %s", path, reason, then_unreadable or then, fix)
        return Loaded(None, LoadState.UNREADABLE, reason=reason)
    if data is None:
        return Loaded(None, LoadState.MISSING)
    try:
        return Loaded(parse(data), LoadState.OK)
    except Salvaged as exc:
        value: T | None = exc.value  # what `parse` kept: a Salvaged[T] for this parse's T
        state, reason = LoadState.SALVAGED, exc.reason
    except (ValueError, TypeError, KeyError) as exc:
        value, state, reason = None, LoadState.CORRUPT, _reason(exc)
    try:
        aside = move_aside_if_unchanged(path, key, clock.now())
    except OSError as exc:
        log.warning("%s is corrupt (%s) and could not be moved aside (%s); %s", path, reason, describe_error(exc), then)
        return Loaded(value, state, None, reason)
    where = f"moved aside to {aside.name}" if aside is not None else "it has been replaced since"
    log.warning("%s is corrupt (%s); %s; %s", path, reason, where, then)
    return Loaded(value, state, aside, reason)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text at byte {exc.start}"
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    return str(exc) or type(exc).__name__
