"""Outbound iMessages: AppleScript backends, text chunking, signature, file staging, GUID fallbacks.

This module owns everything between "the `reply` tool wants to say X in chat G" and Messages.app:

- `SEND_SCRIPT` and friends: AppleScripts with `on run argv`. Text (or a file path) is `item 1` and
  the chat GUID (or handle) is `item 2`; user content travels only as arguments, never spliced into
  script source (design.md §6; the official plugin's `sendText` in anthropics/claude-plugins-official
  `external_plugins/imessage/server.ts` does the same through `osascript - text guid`).
- Backends that run a script: `OsascriptBackend` (a subprocess per call, killed on timeout) and
  `AppleScriptBackend` (py-applescript in-process on macOS, each script compiled once).
- `chunk_text` / `with_signature`: the official plugin's `textChunkLimit` / `chunkMode` and
  `IMESSAGE_APPEND_SIGNATURE` semantics, made safe for grapheme clusters.
- `Sender`: validates files, stages them under `~/Library/Messages`, sends text parts then files in
  order, retries alternative chat GUID forms on macOS 26, and explains errors (-1743, timeouts,
  partial sends) in words a user can act on.

Nothing here writes to stdout (stdout is the MCP stream); subprocesses never inherit our stdin.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from types import ModuleType
from typing import Protocol

from imessage_channel.clock import SYSTEM, Clock
from imessage_channel.handles import CHAT_SERVICES, ChatGuid, is_email

log = logging.getLogger(__name__)

# --- scripts -----------------------------------------------------------------------------------

SEND_SCRIPT = """on run argv
\ttell application "Messages" to send (item 1 of argv) to chat id (item 2 of argv)
end run
"""
"""Send text `item 1 of argv` to the chat whose GUID is `item 2 of argv` (design.md §6)."""

SEND_FILE_SCRIPT = """on run argv
\tset theFile to POSIX file (item 1 of argv)
\ttell application "Messages" to send theFile to chat id (item 2 of argv)
end run
"""
"""Send the file at POSIX path `item 1 of argv` to the chat whose GUID is `item 2 of argv`.

The path is turned into a file reference outside the `tell` block, so AppleScript (not Messages)
resolves it."""

SEND_PARTICIPANT_SCRIPT = """on run argv
\ttell application "Messages"
\t\tset targetAccount to 1st account whose service type = iMessage
\t\tsend (item 1 of argv) to participant (item 2 of argv) of targetAccount
\tend tell
end run
"""
"""Last-resort DM send: text `item 1` to handle `item 2` through the iMessage account.

Uses the Ventura+ Messages dictionary (`account`, `participant`), as BlueBubbles' AppleScript
fallback does (BlueBubblesApp/bluebubbles-server#777 quotes it)."""

SEND_FILE_PARTICIPANT_SCRIPT = """on run argv
\tset theFile to POSIX file (item 1 of argv)
\ttell application "Messages"
\t\tset targetAccount to 1st account whose service type = iMessage
\t\tsend theFile to participant (item 2 of argv) of targetAccount
\tend tell
end run
"""
"""File variant of `SEND_PARTICIPANT_SCRIPT`: file at POSIX path `item 1` to handle `item 2`."""

# --- constants ---------------------------------------------------------------------------------

TRANSIENT_CODES = frozenset({-600, -609})
"""AppleScript errors after which nothing was sent and a later retry can work: -600 "Application isn't
running", -609 "Connection is invalid" (Messages quit while we talked to it). Apple's Apple Event
Manager result codes (MacErrors.h)."""

ERR_NOT_FOUND = -1728
"""AppleScript errAENoSuchObject: "Can't get chat id …" when Messages does not know a GUID form."""

ERR_NOT_AUTHORIZED = -1743
"""errAEEventNotPermitted: the calling app lacks the Automation permission for Messages."""

AUTOMATION_HELP = (
    "Messages is not allowed to be controlled: grant Automation permission: System Settings → "
    "Privacy & Security → Automation → (your terminal / Claude) → Messages"
)

DEFAULT_TIMEOUT = 30.0
"""Seconds one AppleScript call may take before we give up on it."""

MAX_CHUNK_LIMIT = 10_000
"""Largest and default `textChunkLimit`, in characters (official server.ts `MAX_CHUNK_LIMIT`)."""

DEFAULT_CHUNK_LIMIT = MAX_CHUNK_LIMIT

DEFAULT_CHUNK_MODE = "length"
"""Official default `chunkMode`; the other mode is `"newline"`."""

DEFAULT_SIGNATURE = "\nSent by Claude"
"""Appended to the last text part unless `IMESSAGE_APPEND_SIGNATURE=false` (official server.ts)."""

MAX_FILE_BYTES = 100 * 1024 * 1024
"""Attachment cap: 100 MiB, as the official plugin's `MAX_ATTACHMENT_BYTES`. Checked on the open
descriptor and enforced again while copying (a file that grows past it is refused)."""

MAX_TEXT_PARTS = 10
"""Most text messages one reply may become. Each part is a separate bubble, a separate notification on
the recipient's phone and a separate AppleScript call (up to `DEFAULT_TIMEOUT` each, holding the sender):
ten bubbles of up to `MAX_CHUNK_LIMIT` characters (100 000 characters) is already more than anyone reads on
a phone, while a 1 MB reply used to become 100 sends. A longer reply is refused whole, before anything
is sent, with an error saying so."""

MAX_FILES = 10
"""Most files one reply may carry, for the same reasons: each is its own message and AppleScript call
(200 files used to be 200 sends), and ten photos is a generous album on a phone. More is refused whole,
before anything is sent."""

_CHUNK_BYTES = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

STAGING_NAME = "imessage-channel-staging"
"""Staging folder under the Messages directory; each staged file gets its own `<uuid>/` folder."""

DEFAULT_STAGE_TTL = 600.0
"""Seconds a staged copy is kept: Messages uploads asynchronously after the script returns."""

MESSAGES_DIR = Path("Library") / "Messages"
"""Where Messages keeps its files, relative to the home folder (resolved when a `Sender` is made)."""

_PHONE = re.compile(r"\+?\d+")
_OSA_POSITION = re.compile(r"^\d+:\d+:\s*")
_OSA_ERROR_NUMBER = re.compile(r"\((-?\d+)\)\s*$")


# --- errors and results ------------------------------------------------------------------------


class SendError(Exception):
    """A send failed; `message` says in plain words what was and wasn't sent.

    `code` is the AppleScript error number when one is known (-1728 chat not found, -1743 not
    authorized), else None (timeouts, refused files, a crash of osascript). `sent_parts` counts the
    parts (text chunks, then files) delivered to Messages before the failure. `transient` is True
    when the failed part certainly was not sent and trying again later may work (Messages not running,
    a call given up on before it started): such parts may go to the outbox.
    """

    def __init__(
        self, message: str, *, code: int | None = None, sent_parts: int = 0, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.sent_parts = sent_parts
        self.transient = (code in TRANSIENT_CODES) if transient is None else transient

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class SendResult:
    """Outcome of `Sender.send`: every part was handed to Messages (a failure raises `SendError`).
    `parts_total` counts them, texts and files."""

    parts_total: int


# --- backends ----------------------------------------------------------------------------------


class Backend(Protocol):
    """Runs one AppleScript with `argv` and returns its result as text.

    Raises `SendError` (with `code` = the AppleScript error number when there is one) on any
    failure, including when `timeout` seconds pass without an answer.
    """

    def run(self, script: str, args: Sequence[str], timeout: float) -> str: ...


def parse_osascript_error(stderr: str) -> tuple[int | None, str]:
    """Split osascript's stderr into (error number, message).

    osascript reports runtime errors as `START:END: execution error: MESSAGE (NUMBER)`, e.g.
    `45:94: execution error: Messages got an error: Can't get chat id "any;-;x". (-1728)` (quoted
    in anthropics/claude-plugins-official#1012). The position prefix is dropped from the message.
    Returns (None, text) when no number is present.
    """
    text = stderr.strip()
    last = text.splitlines()[-1] if text else ""
    match = _OSA_ERROR_NUMBER.search(last)
    message = _OSA_POSITION.sub("", last) if match else text
    return (int(match.group(1)) if match else None), message


def _megabytes(size: int) -> str:
    """`size` bytes as "N MB" (MiB, one decimal unless whole): "100 MB", "150.0 MB"."""
    mb = size / 1024 / 1024
    return f"{mb:.0f} MB" if mb == int(mb) else f"{mb:.1f} MB"


def _timeout_text(timeout: float) -> str:
    return f"AppleScript timed out after {timeout:g} s"


class OsascriptBackend:
    """Runs scripts as `osascript - ARG…` with the script on stdin.

    The osascript(1) manual: a script read from standard input takes arguments only when `-` is
    given as the script name; the arguments reach the `run` handler as a list of strings. BSD
    getopt stops at that first operand, so an argument starting with `-` is not read as an option.
    Our stdin (the MCP stream) is never inherited: stdin is a pipe carrying the script. On timeout
    the process group is killed and `SendError` is raised.
    """

    def __init__(self, executable: str = "osascript") -> None:
        self._executable = executable

    def run(self, script: str, args: Sequence[str], timeout: float) -> str:
        """Run `script` with `args`; return stdout without its trailing newline."""
        argv = [self._executable, "-", *args]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise SendError(f"osascript not found ({exc.filename}): sending iMessages needs macOS") from exc
        except (OSError, ValueError) as exc:
            raise SendError(f"cannot run osascript: {exc}") from exc
        try:
            out, err = proc.communicate(script.encode("utf-8"), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise SendError(
                f"{_timeout_text(timeout)} (osascript killed); Messages did not answer, it may be "
                "stuck or waiting on a permission prompt, and the part may or may not have been sent"
            ) from None
        if proc.returncode != 0:
            code, message = parse_osascript_error(err.decode("utf-8", "replace"))
            raise SendError(message or f"osascript exited with status {proc.returncode}", code=code)
        return out.decode("utf-8", "replace").rstrip("\n")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


@dataclass(eq=False)
class _Job:
    script: str
    args: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    cancelled: bool = False
    result: str = ""
    error: SendError | None = None


class _CompiledScript(Protocol):
    """What `AppleScriptBackend` uses of a py-applescript `AppleScript` (the module ships no type information)."""

    def run(self, *args: str) -> object:
        """Run the script's `run` handler with `args`; its result."""
        ...


class AppleScriptBackend:
    """Runs scripts in-process with py-applescript (`applescript.AppleScript(source).run(*args)`).

    py-applescript (rdhyee/py-applescript `applescript/__init__.py`) compiles in the constructor
    and raises `applescript.ScriptError`, whose `.number` (int or None) and `.message` we map to
    `SendError`. `run(*args)` passes the arguments as the `run` handler's list. Each distinct
    script is compiled once and cached. AppleScript is not thread-safe, so every compile and run
    happens on one daemon worker thread, one at a time; the caller waits at most `timeout`
    seconds. A call given up on before it started is skipped (never sent late); one already
    running cannot be interrupted and finishes on its own (Apple events time out after 2 minutes
    by default). `applescript` is imported lazily, so this class can exist on any platform.
    """

    def __init__(self) -> None:
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._compiled: dict[str, _CompiledScript] = {}
        self._module: ModuleType | None = None
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()

    def run(self, script: str, args: Sequence[str], timeout: float) -> str:
        """Run `script` with `args` on the worker thread; return its result as text."""
        job = _Job(script, tuple(args))
        self._ensure_worker()
        self._jobs.put(job)
        job.done.wait(timeout)
        with job.lock:
            if not job.done.is_set():
                job.cancelled = True
                if job.started:
                    raise SendError(
                        f"{_timeout_text(timeout)}; Messages did not answer and the part may or may not have been sent"
                    )
                raise SendError(
                    f"{_timeout_text(timeout)} waiting for an earlier AppleScript call that is still "
                    "running; this part was not sent",
                    transient=True,
                )
        if job.error is not None:
            raise job.error
        return job.result

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="applescript-worker", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            with job.lock:
                if job.cancelled:
                    continue
                job.started = True
            result, error = "", None
            try:
                result = self._execute(job.script, job.args)
            except SendError as exc:
                error = exc
            except Exception as exc:
                error = SendError(f"AppleScript failed: {exc!r}")
            with job.lock:
                job.result, job.error = result, error
                job.done.set()

    def _execute(self, script: str, args: tuple[str, ...]) -> str:
        if self._module is None:
            try:
                self._module = importlib.import_module("applescript")
            except ImportError as exc:
                raise SendError(f"py-applescript is not importable ({exc}); use the osascript backend") from exc
        module = self._module
        try:
            compiled = self._compiled.get(script)
            if compiled is None:
                compiled = self._compiled[script] = module.AppleScript(script)
            result = compiled.run(*args)
        except module.ScriptError as exc:
            raise SendError(str(getattr(exc, "message", exc)), code=getattr(exc, "number", None)) from exc
        return "" if result is None else str(result)


def default_backend() -> Backend:
    """`AppleScriptBackend` when the `applescript` module (py-applescript, macOS) imports, else
    `OsascriptBackend`."""
    try:
        importlib.import_module("applescript")
    except ImportError:
        return OsascriptBackend()
    return AppleScriptBackend()


def backend_for(choice: str) -> Backend:
    """The backend `Settings.backend` names: `osascript`, `applescript`, or `auto` (`default_backend`)."""
    if choice == "osascript":
        return OsascriptBackend()
    if choice == "applescript":
        return AppleScriptBackend()
    return default_backend()


# --- text --------------------------------------------------------------------------------------

_ZWJ = "\u200d"


def _joins_previous(ch: str) -> bool:
    """True for code points that extend the grapheme cluster before them (a cut before them is bad)."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me")  # combining marks, incl. variation selectors
        or ch == _ZWJ
        or 0xDC00 <= cp <= 0xDFFF  # low surrogate (only present in unpaired str data)
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tag characters (subdivision flags)
        or 0x1160 <= cp <= 0x11FF  # Hangul medial vowels and final consonants
    )


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _can_cut(text: str, i: int) -> bool:
    """Whether a chunk may end between `text[i-1]` and `text[i]` (0 < i < len(text)).

    A conservative approximation of Unicode grapheme cluster boundaries (UAX #29): never before a
    combining mark, ZWJ, skin-tone modifier, tag or Hangul jamo continuation; never after a ZWJ or
    a high surrogate; never between the two regional indicators of a flag. (CR LF needs no rule:
    white space at a cut is dropped.)
    """
    prev, nxt = text[i - 1], text[i]
    if _joins_previous(nxt) or prev == _ZWJ or 0xD800 <= ord(prev) <= 0xDBFF:
        return False
    if _is_regional_indicator(prev) and _is_regional_indicator(nxt):
        run = 0
        j = i - 1
        while j >= 0 and _is_regional_indicator(text[j]):
            run += 1
            j -= 1
        return run % 2 == 0
    return True


def _length_cut(text: str, limit: int) -> int:
    for i in range(limit, 0, -1):
        if _can_cut(text, i):
            return i
    return limit  # one cluster longer than the limit: cut it by code point


def _newline_cut(text: str, limit: int) -> int:
    """Where to cut `text` in `"newline"` mode.

    The official preference order: the last blank line if it starts past half the limit, else the
    last line break past half the limit, else the last space, else a hard cut (`_length_cut`).
    """
    for sep, floor in (("\n\n", limit / 2), ("\n", limit / 2), (" ", 0)):
        idx = text.rfind(sep, 0, limit + len(sep))
        while idx > floor:
            after = idx + len(sep)
            if _can_cut(text, idx) and (after >= len(text) or _can_cut(text, after)):
                return idx
            idx = text.rfind(sep, 0, idx + len(sep) - 1)
    return _length_cut(text, limit)


_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def _indentation(gap: str) -> str:
    """The white space after the last line break in `gap`, or "" when `gap` has no line break."""
    for i in range(len(gap) - 1, -1, -1):
        if gap[i] in _LINE_BREAKS:
            return gap[i + 1 :]
    return ""


def chunk_text(
    text: str, limit: int = DEFAULT_CHUNK_LIMIT, mode: str = DEFAULT_CHUNK_MODE, *, max_parts: int | None = None
) -> list[str]:
    """Split `text` into message-sized parts of at most `limit` characters (Python code points).

    Semantics follow the official plugin's `chunk()` (`textChunkLimit`, `chunkMode` in access.json):
    - a text of at most `limit` characters comes back unchanged as `[text]` (even if empty);
    - mode `"newline"`: cut at the last blank line past half the limit, else the last line break
      past half the limit, else the last space, else hard; any other mode (official default
      `"length"`) cuts as late as possible.
    Safer than the original: no cut inside a grapheme cluster where it can be avoided (combining
    marks, ZWJ emoji, flags, skin tones; surrogate pairs cannot be split), and the run of
    white space around each cut is dropped, except the indentation after its last line break,
    which starts the next part. White-space-only parts are not returned, so a long
    all-white-space text yields `[]`. Hence: re-inserting white space at the boundaries of the
    parts gives back `text`, and every part has 1..limit characters.
    With `max_parts`, chunking stops as soon as a part beyond `max_parts` is found, and the
    `max_parts + 1` parts found so far come back: enough to tell the text does not fit, at a cost
    bounded by `max_parts`, not by the text's length.
    Raises ValueError when `limit` < 1.
    """
    if limit < 1:
        raise ValueError(f"chunk limit must be at least 1, got {limit}")
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _newline_cut(rest, limit) if mode == "newline" else _length_cut(rest, limit)
        head, tail = rest[:cut], rest[cut:]
        piece, body = head.rstrip(), tail.lstrip()
        if piece:
            parts.append(piece)
            if max_parts is not None and len(parts) > max_parts:
                return parts
        gap = head[len(piece) :] + tail[: len(tail) - len(body)]
        rest = _indentation(gap) + body
    if rest.strip():
        parts.append(rest)
    return parts


def with_signature(text: str, signature: str | None) -> str:
    """`text` followed by `signature` (e.g. `DEFAULT_SIGNATURE`, `"\\nSent by Claude"`), or `text`
    unchanged when `signature` is None or empty. The official plugin appends it to the last part."""
    return text + signature if signature else text


def _clean_text(text: str) -> str:
    """Join surrogate pairs, replace lone surrogates with U+FFFD (JSON can carry them; argv and
    Apple events cannot), and drop NUL (argv cannot hold it)."""
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined.replace("\x00", "")


# --- targets (chat GUID forms) -----------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where one script sends: a chat GUID (`chat id`) or, for DMs, a handle (`participant`)."""

    value: str
    participant: bool = False

    @property
    def label(self) -> str:
        return f"participant:{self.value}" if self.participant else self.value


def _targets(chat_guid: str) -> list[_Target]:
    """The GUID forms to try, in order, for `chat_guid`.

    chat.db on macOS 26 (and some Sequoia setups) stores `any;-;X` / `any;+;X`, which Messages'
    AppleScript does not always accept: "Can't get chat id" (-1728) for `any;-;` DMs
    (anthropics/claude-code#46747, anthropics/claude-plugins-official#1012) and for `any;+;`
    groups (openclaw/imsg#90); BlueBubbles' helper rewrites between `iMessage;-;`, `SMS;-;` and
    `any;-;` (BlueBubblesApp/bluebubbles-helper#48). So: the given form, then the others of
    `any`, `iMessage`, `SMS` in that order, keeping `-` (DM) or `+` (group). A group is never
    tried as `;-;` (openclaw/imsg#90: it "sends" and is never delivered). For a DM whose
    identifier is a handle (email or phone), finally `participant X of (1st account whose service
    type = iMessage)`, for chats that exist in chat.db but not in Messages' live list
    (openclaw/imsg#244).
    """
    guid = ChatGuid.parse(chat_guid)
    if guid is not None:
        others = [guid.with_service(s) for s in CHAT_SERVICES if s.lower() != guid.service.lower()]
        targets = [_Target(form) for form in [chat_guid, *others]]
        if guid.is_dm and _looks_like_handle(guid.identifier):
            targets.append(_Target(guid.identifier, participant=True))
        return targets
    targets = [_Target(chat_guid)]
    if _looks_like_handle(chat_guid):
        targets.append(_Target(chat_guid, participant=True))
    return targets


def _looks_like_handle(ident: str) -> bool:
    return is_email(ident) or bool(_PHONE.fullmatch(ident))


def _script(file: bool, participant: bool) -> str:
    if participant:
        return SEND_FILE_PARTICIPANT_SCRIPT if file else SEND_PARTICIPANT_SCRIPT
    return SEND_FILE_SCRIPT if file else SEND_SCRIPT


# --- sender ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    payload: str  # the text, or the staged copy's path
    file: Path | None = None  # the staged copy, for file parts


def sqlite_files(db: Path) -> tuple[Path, ...]:
    """`db` and its `-wal` and `-shm` companions (SQLite's WAL-mode file names): the files of chat.db
    that `Sender(protected=…)` must never send."""
    return (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))


def check_reply_size(texts: int, files: int) -> None:
    """Refuse a reply of more than `MAX_TEXT_PARTS` text parts or `MAX_FILES` files.

    `texts` and `files` are counts. Raises `SendError` (not transient, `sent_parts` 0) whose message says
    the limit and that nothing was sent.
    """
    if texts > MAX_TEXT_PARTS:
        raise SendError(
            f"reply too long: it would be {texts} text messages; a reply may be at most {MAX_TEXT_PARTS} "
            "(it lands on a phone). Nothing was sent: shorten it.",
            transient=False,
        )
    if files > MAX_FILES:
        raise SendError(
            f"too many files: {files}; a reply may carry at most {MAX_FILES}. Nothing was sent.", transient=False
        )


def _file_ids(path: Path) -> set[tuple[int, int]]:
    """`(st_dev, st_ino)` of `path` and, for a symlink, of its target; empty when neither exists."""
    ids = set()
    for follow in (False, True):
        try:
            st = os.stat(path, follow_symlinks=follow)
        except (OSError, ValueError):
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


def _check_kind(st: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise SendError(f"cannot send a directory: {name}")
    if stat.S_ISLNK(st.st_mode):
        raise SendError(f"{name} was replaced by a symbolic link while being checked; not sent")
    if not stat.S_ISREG(st.st_mode):
        raise SendError(f"not a regular file: {name}")


class Sender:
    """Sends one reply (text parts, then files) to one chat through a `Backend`.

    `state_dir` is the channel's state (`IMESSAGE_STATE_DIR`): no file in it is ever sent, whatever path
    reaches it (see `check_file`). `protected` names more files never to send, by identity (device and
    inode): the server passes chat.db and its -wal/-shm (`sqlite_files`).
    `messages_dir` is where staged copies go (`<messages_dir>/imessage-channel-staging/<uuid>/`; default
    `~/Library/Messages`). `max_file_bytes` caps each file (default `MAX_FILE_BYTES`, 100 MiB).
    `timeout` bounds each AppleScript call, in seconds. Calls to `send` are serialised.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        state_dir: Path,
        messages_dir: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock = SYSTEM,
        protected: Sequence[Path] = (),
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._state_dir = Path(state_dir).expanduser()
        self._protected = tuple(Path(p).expanduser() for p in protected)
        self._max_file_bytes = max_file_bytes
        self.staging = Path(messages_dir or Path.home() / MESSAGES_DIR).expanduser() / STAGING_NAME
        self._timeout = timeout
        self._resolved: dict[str, _Target] = {}
        self._lock = threading.Lock()

    def send(
        self,
        chat_guid: str,
        text: str,
        files: Sequence[str] = (),
        *,
        chunk_limit: int = DEFAULT_CHUNK_LIMIT,
        chunk_mode: str = DEFAULT_CHUNK_MODE,
        signature: str | None = None,
    ) -> SendResult:
        """Send `text` (split by `chunk_text`, `signature` appended to the last part) and then each
        of `files` as its own message, in order.

        `chunk_limit` is clamped to 1..`MAX_CHUNK_LIMIT` (as the official plugin does). When a
        signature would push the last part over the limit, that part is split again so the
        signature fits. A white-space-only `text` sends no text part (and no signature).
        Every file is checked and staged before anything is sent (see `send_parts`). Staged copies
        older than `DEFAULT_STAGE_TTL` are cleaned up first.

        Raises `SendError` as `send_parts` does.
        """
        return self.send_parts(chat_guid, text_parts(text, chunk_limit, chunk_mode, signature), files)

    def send_parts(self, chat_guid: str, texts: Sequence[str], files: Sequence[str] = ()) -> SendResult:
        """Send `texts` exactly as given (already chunked and signed: see `text_parts`), then each of
        `files`, in order. Callers that must know the parts before sending (the echo filter, the
        outbox) compute them once and call this.

        Files first: each one is opened once, checked on the open descriptor and copied from it under
        `~/Library/Messages` (`_stage`) before any text is sent, so a file swapped, grown or replaced by a
        link after the check changes nothing that is sent, and a refused file means nothing was sent. When
        a part fails, the copies of the files not yet handed to Messages are removed at once; copies
        already handed over stay until `cleanup_staged` (Messages uploads them after the script returns).

        Raises `SendError`: nothing to send, an invalid chat id, more than `MAX_TEXT_PARTS` texts or
        `MAX_FILES` files, a refused file ("sent 0 of N parts; part k (file x) failed: …", `sent_parts` 0),
        or part k of N failing: "sent k-1 of N parts; part k failed: …" with `sent_parts` = k-1.
        """
        with self._lock:
            self.cleanup_staged(DEFAULT_STAGE_TTL)
            if not chat_guid.strip() or "\x00" in chat_guid:
                raise SendError(f"invalid chat id {chat_guid!r}")
            check_reply_size(len(texts), len(files))
            total = len(texts) + len(files)
            if not total:
                raise SendError("nothing to send: the text is empty and no files were given")
            staged = self._stage_all(files, first=len(texts) + 1, total=total)
            parts = [_Part(t) for t in texts] + [_Part(str(p), p) for p in staged]
            for k, part in enumerate(parts, start=1):
                try:
                    self._deliver(chat_guid, part.payload, file=part.file is not None)
                except SendError as exc:
                    self._discard([p.file for p in parts[k:] if p.file is not None])
                    what = f"part {k} (file {part.file.name})" if part.file is not None else f"part {k}"
                    noun = "part" if total == 1 else "parts"
                    raise SendError(
                        f"sent {k - 1} of {total} {noun}; {what} failed: {exc.message}",
                        code=exc.code,
                        sent_parts=k - 1,
                        transient=exc.transient,
                    ) from exc
            return SendResult(total)

    def check_file(self, name: str) -> Path:
        """Check that `name` may be sent now; return its resolved path. Raises `SendError` if not.

        The same checks `send_parts` makes, on the same kind of descriptor (see `_open_checked`), which is
        closed again: a later send checks afresh, on the descriptor it copies from.
        """
        fd, real = self._open_checked(name)
        os.close(fd)
        return real

    def _open_checked(self, name: str) -> tuple[int, Path]:
        """Open the file `name` names for reading and check the open descriptor; return (fd, resolved path).

        Path rules, decided here: `name` must be absolute after `~` expansion (a relative path would
        resolve against the server's working directory, which the caller cannot see). Symbolic links,
        in the folders of the path and as its last component, are resolved once (`Path.resolve`), as a
        shell would: `/tmp` is a link on macOS, and linking a file to share it is ordinary. The resolved
        path is then opened with `O_NOFOLLOW`, so a last component swapped for a link after resolving
        fails to open instead of being followed; a folder swapped for a link would still be followed,
        which is why nothing below trusts the path: every check is on the descriptor.

        Refused with `SendError`: a relative or missing path; a path inside the state dir (fast, by
        name, after resolving); a directory, FIFO, device or socket (judged by `lstat` before opening,
        so a FIFO or device is never opened, then by `fstat`; the open is non-blocking besides); a file
        over `max_file_bytes` (by `fstat`); a file that *is* one of the state dir's files or a protected
        file, by device and inode, which also catches hard links, bind mounts and other spellings of the
        same path (case-insensitive APFS: `…/IMESSAGE/access.json`). The official server's
        `assertSendable` refuses the state dir by path only.
        """
        path = Path(name).expanduser()
        if not path.is_absolute():
            raise SendError(f"not an absolute path: {name} (give files as absolute paths)")
        try:
            real = path.resolve(strict=True)
            before = os.lstat(real)
        except FileNotFoundError:
            raise SendError(f"file not found: {name}") from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise SendError(f"cannot read file {name}: {exc}") from None
        if real.is_relative_to(self._state_dir.resolve()):
            raise SendError(f"refusing to send channel state: {name}")
        _check_kind(before, name)
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise SendError(f"file not found: {name} (it disappeared while being checked)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SendError(f"{name} was replaced by a symbolic link while being checked; not sent") from None
            raise SendError(f"cannot read file {name}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            _check_kind(st, name)
            if st.st_size > self._max_file_bytes:
                raise SendError(
                    f"file too large: {name} ({_megabytes(st.st_size)}, max {_megabytes(self._max_file_bytes)})"
                )
            if (st.st_dev, st.st_ino) in self._protected_ids():
                raise SendError(f"refusing to send channel state: {name} is the same file as one of the channel's own")
        except BaseException:
            os.close(fd)
            raise
        return fd, real

    def _protected_ids(self) -> set[tuple[int, int]]:
        """`(st_dev, st_ino)` of every entry under the state dir (and of the targets of links there: an
        access.json kept elsewhere and linked in is still access.json) and of the `protected` files."""
        ids: set[tuple[int, int]] = set()
        for path in self._protected:
            ids |= _file_ids(path)
        for root, dirs, names in os.walk(self._state_dir):
            for entry in (*dirs, *names):
                ids |= _file_ids(Path(root) / entry)
        return ids

    def cleanup_staged(self, older_than: float = DEFAULT_STAGE_TTL, *, now: float | None = None) -> int:
        """Delete staged copies whose folder is more than `older_than` seconds old (by mtime,
        against `now`, default the clock's `wall()`). Returns how many entries were removed; never raises.

        Staged copies are not deleted right after sending because Messages uploads them after the
        script returns (the official plugin waits 30 s; we keep them 10 minutes by default).
        """
        current = self._clock.wall() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.staging))
        except OSError:
            return 0
        for entry in entries:
            try:
                if current - entry.stat(follow_symlinks=False).st_mtime <= older_than:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            except OSError as exc:
                log.debug("could not remove staged %s: %s", entry.path, exc)
        return removed

    def _stage_all(self, files: Sequence[str], *, first: int, total: int) -> list[Path]:
        """Stage each of `files` (`_stage`), all or none: on a failure the copies made so far are removed
        and `SendError` says which part failed ("sent 0 of `total` parts; part k (file x) failed: …";
        the first file is part `first`)."""
        staged: list[Path] = []
        for k, name in enumerate(files, start=first):
            try:
                staged.append(self._stage(name))
            except SendError as exc:
                self._discard(staged)
                shown = Path(name).name or name
                raise SendError(
                    f"sent 0 of {total} parts; part {k} (file {shown}) failed: {exc.message}",
                    sent_parts=0,
                    transient=False,
                ) from exc
        return staged

    def _stage(self, name: str) -> Path:
        """Open and check `name` (`_open_checked`), then copy from that descriptor to
        `outbox/<uuid>/<name>`: Messages is sandboxed and silently drops files outside `~/Library/Messages`
        (anthropics/claude-plugins-official#1113, design.md §6). The copy stops, and is removed, past
        `max_file_bytes` (a file growing while copied). Returns the copy's path. Raises `SendError`."""
        fd, real = self._open_checked(name)
        folder = self.staging / uuid.uuid4().hex
        try:
            try:
                folder.mkdir(parents=True, mode=0o700)
                staged = folder / real.name
                self._copy(fd, staged, name)
            except OSError as exc:
                raise SendError(f"could not stage {real.name} under {self.staging}: {exc}") from None
        except SendError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            os.close(fd)
        return staged

    def _copy(self, fd: int, dest: Path, name: str) -> None:
        """Copy what `fd` reads into the new file `dest` (0600, never through a link), at most
        `max_file_bytes`; raises `SendError` when there is more, `OSError` on I/O errors."""
        cap = self._max_file_bytes
        out = os.open(dest, _CREATE_FLAGS, 0o600)
        try:
            copied = 0
            while chunk := os.read(fd, min(_CHUNK_BYTES, cap + 1 - copied)):
                copied += len(chunk)
                if copied > cap:
                    raise SendError(f"file too large: {name} grew past {_megabytes(cap)} while being copied")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
        finally:
            os.close(out)

    def _discard(self, staged: Sequence[Path]) -> None:
        """Remove the staging folders of copies that will not be handed to Messages; never raises."""
        for copy in staged:
            shutil.rmtree(copy.parent, ignore_errors=True)

    def _deliver(self, chat_guid: str, payload: str, *, file: bool) -> None:
        """Run the send script for `payload` against each GUID form until one is accepted;
        remember the accepted form for this chat."""
        candidates = _targets(chat_guid)
        known = self._resolved.get(chat_guid)
        if known is not None:
            candidates = [known] + [t for t in candidates if t != known]
        tried: list[str] = []
        last: SendError | None = None
        for target in candidates:
            try:
                self._backend.run(_script(file, target.participant), [payload, target.value], self._timeout)
            except SendError as exc:
                if exc.code == ERR_NOT_FOUND:
                    tried.append(target.label)
                    last = exc
                    continue
                if exc.code == ERR_NOT_AUTHORIZED:
                    raise SendError(AUTOMATION_HELP, code=ERR_NOT_AUTHORIZED) from exc
                raise
            self._resolved[chat_guid] = target
            return
        detail = last.message if last is not None else ""
        raise SendError(
            f"Messages cannot find chat {chat_guid} (tried {', '.join(tried)}): {detail}",
            code=ERR_NOT_FOUND,
        )


def text_parts(
    text: str, limit: int, mode: str, signature: str | None, *, max_parts: int | None = MAX_TEXT_PARTS
) -> list[str]:
    """The exact texts `Sender.send` sends for `text`, in order: cleaned, chunked by `limit` and `mode`,
    `signature` appended to the last part (which is split again when the signature would not fit). Empty
    for white-space-only text. The server feeds these to the echo filter before sending, so echoes are
    recognised part by part.

    `limit` is characters per part: above `MAX_CHUNK_LIMIT` it is clamped (as the official plugin does),
    below 1 it is ignored and `MAX_CHUNK_LIMIT` used (as `Access.effective_text_chunk_limit` does).
    Raises `SendError` (nothing sent) when the text would be more than `max_parts` parts (default
    `MAX_TEXT_PARTS`; None: no cap), after chunking no more of the text than it takes to know."""
    text = _clean_text(text)
    if not text.strip():
        return []
    limit = MAX_CHUNK_LIMIT if limit < 1 else min(limit, MAX_CHUNK_LIMIT)
    parts = chunk_text(text, limit, mode, max_parts=max_parts)
    if signature:
        signature = _clean_text(signature)
        if len(parts[-1]) + len(signature) > limit and limit > len(signature):
            parts[-1:] = chunk_text(parts[-1], limit - len(signature), mode)
        parts[-1] = with_signature(parts[-1], signature)
    if max_parts is not None and len(parts) > max_parts:
        raise SendError(
            f"reply too long: {len(text)} characters would be more than {max_parts} text messages of at most "
            f"{limit} characters (textChunkLimit); a reply may be at most {max_parts} (it lands on a phone). "
            "Nothing was sent: shorten it.",
            transient=False,
        )
    return parts
