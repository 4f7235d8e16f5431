"""Shared sent-texts log: every session's sends, so the reader's echo filter knows them all.

Owns `<state dir>/sessions/sent.log` and its lock `sent.lock`. With several sessions, the one that sends a
reply is often not the reader, yet the reader is the one that sees the reply come back as a chat.db row and
must recognise it as an echo (`echo.EchoFilter`). So each session appends what it sends here *before*
sending it, and the reader feeds the records of other sessions into its own `EchoFilter.record` before each
poll (`SentLog.poll`).

Format: one JSON object per line, `{"id": "<session id>:<n>", "t": <Unix seconds>, "chat": "<chat guid>",
"self": true|false, "text": "<the text as sent>"}`. Appends hold `sent.lock` (`fcntl.flock`), so lines of
any length never interleave; readers need no lock: they keep a partial last line until its newline
arrives. The file is bounded: an append that finds it over `MAX_BYTES` rewrites it atomically with only the
records of the last `2 × window` seconds. Each generation of the file starts with a `#<nonce>` line; a
reader that finds another nonce reads the new file from the start, skipping ids it already knows. A reader
starting fresh (a new reader after a crash) takes the records younger than `window` from the file, so a
reply sent just before the handover is still known.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from . import statefile
from .clock import SYSTEM, Clock
from .echo import ECHO_WINDOW_S, EchoFilter
from .sessions import sessions_dir

log = logging.getLogger(__name__)

SENT_FILE = "sent.log"
SENT_LOCK = "sent.lock"
MAX_BYTES = 256 * 1024
"""Size at which an append rotates the log (bytes)."""

REMEMBER = 4096
"""Record ids a reader remembers (to skip repeats after a rotation)."""


@dataclass(frozen=True, slots=True)
class SentText:
    """One send by another session: feed it to `EchoFilter.record(chat, text, self_chat=self_chat)`."""

    chat: str
    text: str
    self_chat: bool
    session: str
    at: float
    """Unix seconds (`clock.wall()` of the sender)."""


def _header() -> bytes:
    """The first line of each generation of the file: `#` and a random nonce. Readers tell a rotated file
    by it (an inode number can be reused by the next rotation's file)."""
    return f"#{secrets.token_hex(8)}\n".encode()


def _parse(line: bytes) -> tuple[str, SentText] | None:
    """(record id, record) of one line, or None when it is not a well-formed record."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    rid, at, chat, own, text = doc.get("id"), doc.get("t"), doc.get("chat"), doc.get("self"), doc.get("text")
    if not (isinstance(rid, str) and isinstance(chat, str) and isinstance(text, str) and isinstance(own, bool)):
        return None
    if isinstance(at, bool) or not isinstance(at, int | float):
        return None
    return rid, SentText(chat, text, own, rid.split(":", 1)[0], float(at))


class SentLog:
    """One session's handle on the shared log: `append` its own sends, `poll` the others'.

    `session` is this session's id; `clock.wall()` stamps and ages records; `window` is the echo window
    (seconds). Not thread-safe: call `poll` from one thread (the reader's loop); `append` may run on any
    one thread at a time (it is serialised across processes by the file lock)."""

    def __init__(
        self,
        state_dir: Path,
        session: str,
        clock: Clock = SYSTEM,
        window: float = ECHO_WINDOW_S,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.dir = sessions_dir(state_dir)
        self.path = self.dir / SENT_FILE
        self.session = session
        self.clock = clock
        self.window = window
        self.max_bytes = max_bytes
        self._counter = itertools.count(1)
        self._header = b""
        self._offset = 0
        self._partial = b""
        self._seen: OrderedDict[str, None] = OrderedDict()

    def append(self, chat: str, text: str, *, self_chat: bool) -> None:
        """Record a send (call before sending). Errors are logged and swallowed: a lost record only risks
        one echo being delivered, never a lost send."""
        record = {
            "id": f"{self.session}:{next(self._counter)}",
            "t": self.clock.wall(),
            "chat": chat,
            "self": self_chat,
            "text": text,
        }
        line = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            statefile.ensure_private_dir(self.dir)
            lock = os.open(self.dir / SENT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    os.write(fd, (_header() if size == 0 else b"") + line)
                finally:
                    os.close(fd)
                if size + len(line) > self.max_bytes:
                    self._rotate()
            finally:
                os.close(lock)
        except OSError as exc:
            log.warning("could not record a send in %s: %s", self.path, exc)

    def _rotate(self) -> None:
        """With `sent.lock` held: keep only records younger than 2 × window, in a new file."""
        horizon = self.clock.wall() - 2 * self.window
        keep = []
        for line in self.path.read_bytes().splitlines():
            parsed = _parse(line)
            if parsed is not None and parsed[1].at >= horizon:
                keep.append(line + b"\n")
        statefile.atomic_write(self.path, _header() + b"".join(keep))

    def poll(self) -> list[SentText]:
        """Records appended by other sessions since the last poll (on the first poll: those younger than
        the window), oldest first. Never raises: an unreadable log is logged and read as empty."""
        try:
            with open(self.path, "rb") as fh:
                header = fh.readline(64)
                if not header.endswith(b"\n"):
                    return []  # empty, or its first write is under way
                if header != self._header:
                    self._header, self._offset, self._partial = header, 0, b""
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return []
        self._offset += len(data)
        data, self._partial = self._partial + data, b""
        if not data.endswith(b"\n"):
            data, _, self._partial = data.rpartition(b"\n")
        horizon = self.clock.wall() - self.window
        out = []
        for line in data.splitlines():
            parsed = _parse(line)
            if parsed is None or parsed[0] in self._seen:
                continue
            rid, sent = parsed
            self._remember(rid)
            if sent.session != self.session and sent.at >= horizon:
                out.append(sent)
        return out

    def _remember(self, rid: str) -> None:
        self._seen[rid] = None
        while len(self._seen) > REMEMBER:
            self._seen.popitem(last=False)


def feed(echo: EchoFilter, sent: list[SentText]) -> None:
    """Record each of `sent` in `echo`: what the reader does with `SentLog.poll()` before each poll."""
    for item in sent:
        echo.remember(item.chat, item.text, self_chat=item.self_chat)
