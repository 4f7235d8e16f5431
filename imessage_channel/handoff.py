"""Handoff: routed events travel from the reader to the session that delivers them, exactly once.

Owns the transport between the reader (the lease holder, see `lease`) and the other sessions, and the files
it keeps in `<state dir>/sessions/`:

- `<id>.sock` — each session's `Inbox`, a Unix stream socket (mode 0600 in the 0700 folder). macOS limits
  a socket path to 103 bytes (`sun_path` is 104 with its NUL); a longer path falls back to
  `$TMPDIR/imessage-<uid>/<id>.sock` (created 0700, checked to be ours), and the path is recorded in the
  registry entry (`SessionInfo.address`).
- `<id>.delivered` — each session's delivered log: `<rowid> <event id>` per line, appended (O_APPEND,
  flushed) by that session only, the moment its stdout writer has written the event (`Inbox.written`,
  from `transport.StdoutLines.on_written`) and *before* it acknowledges. Only its owner writes or rotates
  it (atomically, keeping the last `KEEP_LINES`), so no append is ever lost to another process's
  truncation. Each file starts with a `#<nonce>` line, new at each rotation, by which readers notice a
  rotation. The reader reads every log (`DeliveredLogs`) and folds the GUIDs into its delivery ledger;
  a dead session's log is deleted only after that fold.

Protocol (newline-delimited JSON on one connection per reader and session; the reader connects):
`{"op": "hello", "reader": "<id>"}` → the session first waits until every older connection (a dead
reader's) has been read to its end, then answers `{"op": "pending", "events": [...]}`: the events it has
received and not yet written. The reader *adopts* them (they count as in flight at that session).
Then `{"op": "event", "event": {"id", "method", "params", "rowid"}}` → … → `{"op": "ack", "id": …}` once
the event's line is written and logged. A session delivers an event id once: a repeat while pending is
ignored, a repeat after writing is acknowledged at once.

Exactly once, as the ledger (`delivery`) defines it, across reader handovers and session deaths:
- The reader marks each routed row in flight before sending and marks it written only on the ack (or on
  finding its id in the target's log): the persisted watermark never passes an unacknowledged row.
- A session that dies with events pending: the reader sees its connection end, waits until the session's
  lock is free (it is dead: no more writes), reads its log, counts the logged events as delivered and
  hands the rest to `on_orphaned` to be routed again.
- A reader that dies: the next one (`Dispatcher.take_over`) adopts every live session's pending events
  and its own, waits for every live session to answer or be found dead, and only then folds all logs into
  its ledger and starts reading. Rows past the old watermark are then either in a log (written: skipped),
  adopted (in flight: skipped, acknowledged later or re-routed if that session dies) or nowhere (never
  written by anyone alive: decided again). `SeenGuard` gives the pipeline that "seen" test.
- The one window left is the ledger's own: a SIGKILL between a session's `write` to stdout and its log
  append repeats that one event.

Threads: `Inbox` runs an accept thread, one thread per connection and one sender thread; `Dispatcher`
runs two threads per connected session and a short-lived one per lost connection. Callbacks run on those
threads: an anyio server hands them to its loop with `anyio.from_thread.run_sync(..., token=…)`.
Nothing here blocks the caller of `Dispatcher.send`, `Inbox.written` or `Inbox.written_line` on the network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import secrets
import socket
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO, TypeAlias, TypedDict

from . import statefile
from .sessions import Registry, SessionInfo, sessions_dir

log = logging.getLogger(__name__)

SUN_PATH_MAX = 103
"""Longest socket path in bytes (macOS `sun_path` is 104 bytes including the NUL; Linux allows 107)."""

WIRE_MAX = 16 * 1024 * 1024
"""Longest protocol line accepted (bytes); a longer one ends the connection."""

KEEP_LINES = 2000
"""Lines a session's delivered log keeps when it rotates (it rotates at twice this)."""

REMEMBER = 20000
"""Event ids the reader remembers from the delivered logs (`DeliveredLogs.was_written`)."""

DRAIN_S = 5.0
"""How long a session waits for a dead reader's connection to be read to its end before answering a new
reader's hello (the kernel ends it as soon as its buffered data is read; the bound guards against a live
impostor)."""

DEATH_S = 5.0
"""How long the reader waits for a session whose connection ended to die before it reconnects instead."""

_ID = re.compile(r"[\x21-\x7e]{1,200}")
"""An event id: printable ASCII without spaces (message GUIDs, or `x-<hex>` for events without a row)."""

CHANNEL = "notifications/claude/channel"
PERMISSION = "notifications/claude/channel/permission"


def _guarded(callback: Callable[..., None], *args: Any) -> None:
    """Run an integrator's callback on one of our threads; an exception is logged, never raised (it must not
    end a connection thread, nor the stdout writer that calls `Inbox.written`)."""
    try:
        callback(*args)
    except Exception:
        log.exception("handoff: callback %s failed", getattr(callback, "__name__", callback))


class WireEvent(TypedDict):
    """A `RoutedEvent` on the socket (`RoutedEvent.to_wire`)."""

    id: str
    method: str
    params: dict[str, Any]
    rowid: int


class _Hello(TypedDict):
    op: Literal["hello"]
    reader: str


class _Pending(TypedDict):
    op: Literal["pending"]
    events: list[WireEvent]


class _Event(TypedDict):
    op: Literal["event"]
    event: WireEvent


class _Ack(TypedDict):
    op: Literal["ack"]
    id: str


_Outgoing: TypeAlias = _Hello | _Pending | _Event | _Ack
"""The messages either side writes (see the module docstring); what arrives is checked field by field."""


class TargetGone(RuntimeError):
    """`Dispatcher.send` to a session known to be dead: route the event elsewhere."""


@dataclass(frozen=True, slots=True)
class RoutedEvent:
    """One notification for a session to write to its stdout: JSON-RPC `method` with `params`.

    `id`: the message GUID for an event from a chat.db row (`rowid` > 0), so every reader names it alike;
    `x-<16 hex>` otherwise (`new_id`). `rowid`: the chat.db row it comes from, 0 for none."""

    id: str
    method: str
    params: dict[str, Any]
    rowid: int = 0

    def to_wire(self) -> WireEvent:
        """The event as it travels on the socket (`from_wire` reads it back)."""
        return {"id": self.id, "method": self.method, "params": self.params, "rowid": self.rowid}

    @classmethod
    def from_wire(cls, obj: object) -> RoutedEvent:
        """Parse `to_wire` output. Raises `ValueError` for anything else."""
        if not isinstance(obj, dict):
            raise ValueError("event: not an object")
        eid, method, params, rowid = obj.get("id"), obj.get("method"), obj.get("params"), obj.get("rowid", 0)
        if not isinstance(eid, str) or not _ID.fullmatch(eid):
            raise ValueError(f"event id: {eid!r:.40}")
        if not isinstance(method, str) or not isinstance(params, dict):
            raise ValueError("event: method/params")
        if isinstance(rowid, bool) or not isinstance(rowid, int) or rowid < 0:
            raise ValueError(f"event rowid: {rowid!r:.20}")
        return cls(eid, method, params, rowid)


def new_id() -> str:
    """An id for an event that has no chat.db row (a late file, an edit, a verdict…)."""
    return "x-" + secrets.token_hex(8)


def channel_event(content: str, meta: dict[str, str], rowid: int = 0) -> RoutedEvent:
    """A `notifications/claude/channel` event. Its id is `meta["message_id"]` when it comes from a row
    (`rowid` > 0), else `new_id()`. Raises `ValueError` for a row event without a usable message_id."""
    eid = meta.get("message_id", "") if rowid else new_id()
    if not _ID.fullmatch(eid):
        raise ValueError(f"message_id unusable as an event id: {eid!r:.40}")
    return RoutedEvent(eid, CHANNEL, {"content": content, "meta": dict(meta)}, rowid)


def verdict_event(request_id: str, behavior: str) -> RoutedEvent:
    """A `notifications/claude/channel/permission` event `{request_id, behavior}` ("allow" | "deny")."""
    return RoutedEvent(new_id(), PERMISSION, {"request_id": request_id, "behavior": behavior})


# -- socket paths and framing ----------------------------------------------------------------------
def _short_dir() -> Path:
    """A private folder for sockets whose state-dir path is too long: `$TMPDIR/imessage-<uid>`, else
    `/tmp/imessage-<uid>` (each must be a directory we own, mode tightened to 0700), else a fresh
    `mkdtemp`."""
    for base in (Path(tempfile.gettempdir()), Path("/tmp")):
        folder = base / f"imessage-{os.getuid()}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            st = os.lstat(folder)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                os.chmod(folder, 0o700)
                if len(os.fsencode(folder)) + 14 <= SUN_PATH_MAX:
                    return folder
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="imsg-"))


def socket_path(state_dir: Path, sid: str) -> str:
    """Where session `sid`'s inbox listens: `<state>/sessions/<sid>.sock`, or in `_short_dir()` when that
    path is longer than `SUN_PATH_MAX` bytes."""
    path = sessions_dir(state_dir) / f"{sid}.sock"
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return str(path)
    return str(_short_dir() / f"{sid}.sock")


def _encode(obj: _Outgoing) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n"


def _messages(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """The JSON objects arriving on `sock`, one per line, until EOF or an error. A malformed line is
    skipped with a log line; a partial last line (the peer died mid-write) is dropped; a line over
    `WIRE_MAX` ends the stream."""
    buf = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line, buf = bytes(buf[:end]), buf[end + 1 :]
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("handoff: skipped a malformed line (%d bytes)", len(line))
                continue
            if isinstance(msg, dict):
                yield msg
        if len(buf) > WIRE_MAX:
            log.warning("handoff: a line over %d bytes; closing the connection", WIRE_MAX)
            return


# -- delivered logs --------------------------------------------------------------------------------
def parse_delivered(data: bytes) -> list[tuple[str, int]]:
    """`(event id, rowid)` for each complete, well-formed line of a delivered log (others skipped)."""
    out = []
    for raw in data.split(b"\n"):
        parts = raw.split(b" ")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        with contextlib.suppress(UnicodeDecodeError):
            eid = parts[1].decode("ascii")
            if _ID.fullmatch(eid):
                out.append((eid, int(parts[0])))
    return out


def _header() -> str:
    """The first line of every delivered log file: `#` and a random nonce. Readers tell a rotated file
    from the one they were reading by it (an inode number alone can be reused by the file system)."""
    return f"#{secrets.token_hex(8)}\n"


class DeliveredLog:
    """One session's own delivered log (`<id>.delivered`): append-only for its owner, rotated by it.
    Not thread-safe: `Inbox` calls it under its lock."""

    def __init__(self, path: Path, keep: int = KEEP_LINES) -> None:
        self.path = path
        self.keep = keep
        self._fh: TextIO | None = None
        self._lines = 0
        self.failed = False

    def append(self, event_id: str, rowid: int) -> None:
        """Append `<rowid> <event id>` and flush it to the OS. Errors are logged once and swallowed (the
        log only matters if the reader dies before it reads the acknowledgement)."""
        try:
            if self._fh is None:
                statefile.ensure_private_dir(self.path.parent)
                self._fh = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - lives as long as the session
                if self._fh.tell() == 0:
                    self._fh.write(_header())
            self._fh.write(f"{rowid} {event_id}\n")
            self._fh.flush()
            self._lines += 1
            if self._lines >= 2 * self.keep:
                self._rotate()
        except OSError as exc:
            if not self.failed:
                log.error("cannot write %s (%s): a reader crash may repeat an event", self.path, exc)
            self.failed = True

    def _rotate(self) -> None:
        """Keep the last `keep` lines: written atomically to a new file that replaces the old one."""
        data = self.path.read_bytes()
        lines = [line for line in data.splitlines(keepends=True) if not line.startswith(b"#")][-self.keep :]
        statefile.atomic_write(self.path, _header().encode() + b"".join(lines))
        if self._fh is not None:  # always open here: `append` rotates after writing
            self._fh.close()
        self._fh = open(self.path, "a", encoding="ascii")  # noqa: SIM115
        self._lines = len(lines)

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


@dataclass(slots=True)
class _Tail:
    header: bytes
    offset: int


class DeliveredLogs:
    """The reader's view of every session's delivered log: reads what is new (`poll`), remembers the last
    `REMEMBER` ids (`was_written`), hands each new entry to `fold` (typically `ledger_fold(ledger)`), and
    deletes a dead session's log once read to its end and folded. Thread-safe.

    `is_live(session id)` says whether a session still lives (`Registry.is_live`). Without `fold` no log
    is ever deleted."""

    def __init__(
        self,
        state_dir: Path,
        is_live: Callable[[str], bool],
        fold: Callable[[str, int], None] | None = None,
    ) -> None:
        self.dir = sessions_dir(state_dir)
        self.is_live = is_live
        self.fold = fold
        self._tails: dict[str, _Tail] = {}
        self._known: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def was_written(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._known

    def poll(self) -> list[tuple[str, str, int]]:
        """Read every log's new lines: `[(session id, event id, rowid)]` for ids not seen before."""
        with self._lock:
            try:
                names = sorted(n for n in os.listdir(self.dir) if n.endswith(".delivered"))
            except OSError:  # no sessions folder (yet), or not a folder: nothing to read
                return []
            out: list[tuple[str, str, int]] = []
            for name in names:
                out += self._read(name[: -len(".delivered")])
            return out

    def _read(self, sid: str) -> list[tuple[str, str, int]]:
        path = self.dir / f"{sid}.delivered"
        dead = not self.is_live(sid)  # before reading: a dead session appends nothing more
        try:
            with open(path, "rb") as fh:
                header = fh.readline(64)
                tail = self._tails.get(sid)
                if tail is None or tail.header != header or not header.endswith(b"\n"):
                    tail = self._tails[sid] = _Tail(header, 0)
                fh.seek(tail.offset)
                data = fh.read()
        except FileNotFoundError:
            self._tails.pop(sid, None)
            return []
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            return []
        complete = data[: data.rfind(b"\n") + 1]
        tail.offset += len(complete)
        new = []
        for eid, rowid in parse_delivered(complete):
            if eid not in self._known:
                self._remember(eid)
                new.append((sid, eid, rowid))
                if self.fold is not None:
                    self.fold(eid, rowid)
        if dead and self.fold is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self._tails.pop(sid, None)
        return new

    def _remember(self, eid: str) -> None:
        self._known[eid] = None
        while len(self._known) > REMEMBER:
            self._known.popitem(last=False)


class LedgerLike(Protocol):
    """What handoff needs of `delivery.DeliveryLedger`."""

    def is_seen(self, guid: str) -> bool: ...
    def written(self, guid: str) -> None: ...
    def in_flight(self, guid: str, rowid: int) -> None: ...


def ledger_fold(ledger: LedgerLike) -> Callable[[str, int], None]:
    """A `DeliveredLogs.fold` that records row events (rowid > 0) another session wrote as delivered in
    `ledger` (`written`: seen-set + the ledger's own delivered.log), skipping those already seen."""

    def fold(event_id: str, rowid: int) -> None:
        if rowid > 0 and not ledger.is_seen(event_id):
            ledger.written(event_id)

    return fold


# -- the receiving side ----------------------------------------------------------------------------
class Inbox:
    """A session's receiving end: listens on `address`, hands each new event to `on_event(event)` (on a
    connection thread), and acknowledges it when the session reports it written (`written`,
    `written_line`). Start with `start()`; see the module docstring for the protocol.

    Integration: `on_event` queues the event for the session's MCP loop, which sends `event.method` with
    `event.params`; the stdout writer's `on_written(line)` calls `written_line(line)`."""

    def __init__(
        self,
        state_dir: Path,
        session_id: str,
        on_event: Callable[[RoutedEvent], None],
        *,
        drain_timeout: float = DRAIN_S,
    ) -> None:
        self.session_id = session_id
        self.address = socket_path(state_dir, session_id)
        self.log = DeliveredLog(sessions_dir(state_dir) / f"{session_id}.delivered")
        self.on_event = on_event
        self.on_local_written: Callable[[RoutedEvent], None] | None = None
        self.drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: OrderedDict[str, RoutedEvent] = OrderedDict()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._conns: set[socket.socket] = set()
        self._current: socket.socket | None = None
        self._local = False
        self._stopping = False
        self._out: queue.SimpleQueue[tuple[socket.socket, _Outgoing] | None] = queue.SimpleQueue()
        statefile.ensure_private_dir(sessions_dir(state_dir))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.address)
        os.chmod(self.address, 0o600)
        self._listener.listen(16)

    def start(self) -> None:
        """Start accepting connections and sending acknowledgements (daemon threads)."""
        threading.Thread(target=self._accept, name="inbox-accept", daemon=True).start()
        threading.Thread(target=self._send, name="inbox-send", daemon=True).start()

    # -- state ---------------------------------------------------------------------------------
    def pending(self) -> list[RoutedEvent]:
        """Events received and not yet written, oldest first."""
        with self._lock:
            return list(self._pending.values())

    def is_pending(self, event_id: str) -> bool:
        with self._lock:
            return event_id in self._pending

    def written(self, event_id: str) -> bool:
        """Event `event_id` has been written to stdout: log it, then acknowledge it to the reader (or,
        after `take_over`, tell `on_local_written`). False when no such event is pending."""
        with self._lock:
            event = self._pending.pop(event_id, None)
            if event is None:
                return False
            self.log.append(event.id, event.rowid)
            self._recent[event_id] = None
            while len(self._recent) > REMEMBER:
                self._recent.popitem(last=False)
            local, conn = self._local, self._current
            if conn is not None and not local:
                self._out.put((conn, {"op": "ack", "id": event_id}))
        if local and self.on_local_written is not None:
            _guarded(self.on_local_written, event)
        return True

    def written_line(self, line: str) -> bool:
        """`written` for the pending event a stdout line carries: the oldest whose method matches and
        whose params all appear in the line's params. Cheap when nothing is pending. False when the line
        is not one of ours (or not JSON)."""
        with self._lock:
            if not self._pending:
                return False
            candidates = list(self._pending.values())
        try:
            msg = json.loads(line)
        except ValueError:
            return False
        if not isinstance(msg, dict) or not isinstance(msg.get("params"), dict):
            return False
        params = msg["params"]
        for event in candidates:
            if event.method == msg.get("method") and all(params.get(k) == v for k, v in event.params.items()):
                return self.written(event.id)
        return False

    # -- network -------------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="inbox-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            for msg in _messages(conn):
                op = msg.get("op")
                if op == "hello":
                    self._hello(conn)
                elif op == "event":
                    try:
                        self._receive(RoutedEvent.from_wire(msg.get("event")))
                    except ValueError as exc:
                        log.warning("inbox: refused an event: %s", exc)
        finally:
            with self._cond:
                self._conns.discard(conn)
                if self._current is conn:
                    self._current = None
                self._cond.notify_all()
            conn.close()

    def _hello(self, conn: socket.socket) -> None:
        """A reader connects: let every older connection end (its data read), then make this one current
        and answer with the pending events (queued before any later acknowledgement)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._conns <= {conn}, self.drain_timeout):
                log.warning("inbox: an earlier reader's connection is still open; answering the new reader anyway")
            self._current = conn
            events = [e.to_wire() for e in self._pending.values()]
            self._out.put((conn, {"op": "pending", "events": events}))

    def _receive(self, event: RoutedEvent) -> None:
        with self._lock:
            if event.id in self._pending or self._local:
                return
            if event.id in self._recent:
                if self._current is not None:
                    self._out.put((self._current, {"op": "ack", "id": event.id}))
                return
            self._pending[event.id] = event
        _guarded(self.on_event, event)

    def _send(self) -> None:
        while (item := self._out.get()) is not None:
            conn, msg = item
            with contextlib.suppress(OSError):
                conn.sendall(_encode(msg))

    # -- endings -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop receiving: close the listener (and remove its socket file) and every connection. Events
        already received stay pending and can still be `written` (and logged); the reader re-routes the
        rest once this process is dead. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            conns = list(self._conns)
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
            poke.connect(self.address)  # wakes the accept thread, which sees `_stopping`
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """`stop()`, end the sender thread and close the log: call last, after the stdout writer is done."""
        self.stop()
        self._out.put(None)
        with self._lock:
            self.log.close()

    def take_over(self, adopt: Callable[[RoutedEvent], None], timeout: float = DRAIN_S) -> list[RoutedEvent]:
        """This session became the reader: stop listening, wait (up to `timeout` s) for the old reader's
        connection to be read to its end, then call `adopt(event)` for each pending event, under the lock
        that `written` takes (so none is written between its snapshot and its adoption). From then on
        `written` calls `on_local_written` instead of acknowledging. Returns the adopted events."""
        self.stop()
        with self._cond:
            if not self._cond.wait_for(lambda: not self._conns, timeout):
                log.warning("inbox: the old reader's connection did not end within %.0f s", timeout)
            self._local = True
            events = list(self._pending.values())
            for event in events:
                adopt(event)
        return events


# -- the sending side ------------------------------------------------------------------------------
class _Link:
    """The reader's connection to one session: a reader thread (hello, then acknowledgements) and a
    writer thread (events, in order)."""

    def __init__(self, owner: Dispatcher, target: SessionInfo) -> None:
        self.owner = owner
        self.target = target
        self.out: queue.SimpleQueue[RoutedEvent | None] = queue.SimpleQueue()
        self.sock: socket.socket | None = None
        threading.Thread(target=self._run, name=f"link-{target.name}", daemon=True).start()

    def send(self, event: RoutedEvent) -> None:
        self.out.put(event)

    def close(self) -> None:
        self.out.put(None)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.target.address)
            self.sock = sock
            sock.sendall(_encode({"op": "hello", "reader": self.owner.self_id}))
            messages = _messages(sock)
            first = next(messages, None)
            if first is None or first.get("op") != "pending" or not isinstance(first.get("events"), list):
                raise ConnectionError("no answer to hello")
            self.owner._adopt(self.target, [RoutedEvent.from_wire(e) for e in first["events"]])
            threading.Thread(target=self._write, args=(sock,), name=f"link-w-{self.target.name}", daemon=True).start()
            for msg in messages:
                if msg.get("op") == "ack" and isinstance(msg.get("id"), str):
                    self.owner._acked(self.target.id, msg["id"])
        except (OSError, ValueError) as exc:
            log.debug("link to %s ended: %s", self.target.name, exc)
        finally:
            self.out.put(None)
            sock.close()
            self.owner._broken(self)

    def _write(self, sock: socket.socket) -> None:
        while (event := self.out.get()) is not None:
            try:
                sock.sendall(_encode({"op": "event", "event": event.to_wire()}))
            except OSError:
                return


@dataclass(slots=True)
class _Target:
    link: _Link | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    dead: bool = False


class Dispatcher:
    """The reader's sending end: routes events to other sessions and keeps each one pending until its
    acknowledgement (see the module docstring for the guarantees).

    Callbacks (on dispatcher threads): `on_adopt(event)` for each event adopted from a session (mark it in
    flight: `ledger.in_flight(event.id, event.rowid)` for a row event); `on_ack(event)` when an event is
    written (`ledger.written(event.id)` for a row event), always before the event stops being pending;
    `on_orphaned(events, session)` with the events a dead session never wrote: route them again
    (`send` to another session, or push them locally). `logs` is the reader's `DeliveredLogs`."""

    def __init__(
        self,
        registry: Registry,
        self_id: str,
        logs: DeliveredLogs,
        *,
        on_ack: Callable[[RoutedEvent], None],
        on_orphaned: Callable[[list[RoutedEvent], SessionInfo], None],
        on_adopt: Callable[[RoutedEvent], None] | None = None,
        death_timeout: float = DEATH_S,
    ) -> None:
        self.registry = registry
        self.self_id = self_id
        self.logs = logs
        self.on_ack = on_ack
        self.on_orphaned = on_orphaned
        self.on_adopt = on_adopt
        self.death_timeout = death_timeout
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[RoutedEvent, str]] = {}
        self._targets: dict[str, _Target] = {}
        self.closed = False

    # -- public --------------------------------------------------------------------------------
    def take_over(self, inbox: Inbox | None, timeout: float = DRAIN_S) -> list[RoutedEvent]:
        """Become the reader: adopt this process's own pending events (`inbox`) and those of every other
        live session, waiting (at most `timeout` s each) until each has answered or been found dead, then
        fold every delivered log (`logs.poll()`). Call it after loading the ledger and before the first
        read of chat.db. Returns the adopted events (each already passed to `on_adopt`)."""
        adopted: list[RoutedEvent] = []
        if inbox is not None:
            inbox.on_local_written = self._local_written

            def adopt(event: RoutedEvent) -> None:
                self._adopt_one(event, self.self_id)
                adopted.append(event)

            inbox.take_over(adopt, timeout)
        others = [s for s in self.registry.live() if s.id != self.self_id]
        for session in others:
            self._connect(session)
        for session in others:
            if not self._target(session.id).ready.wait(timeout):
                log.warning("session %s neither answered nor died within %.0f s", session.name, timeout)
        with self._lock:
            adopted += [e for e, t in self._pending.values() if t != self.self_id]
        self.logs.poll()  # after every adoption: what was written before its snapshot is in a log
        return adopted

    def send(self, target: SessionInfo, event: RoutedEvent) -> None:
        """Queue `event` for session `target` (never blocks on the network); it stays pending until
        acknowledged. Raises `TargetGone` when `target` is known to be dead, `ValueError` for this
        session itself (push those locally)."""
        if target.id == self.self_id:
            raise ValueError("the reader delivers its own events itself")
        with self._lock:
            state = self._target(target.id)
            if state.dead:
                raise TargetGone(target.name)
            self._pending[event.id] = (event, target.id)
            link = state.link
        if link is None:
            link = self._connect(target)
        link.send(event)

    def is_pending(self, event_id: str) -> bool:
        """True while `event_id` is routed (or adopted) and not yet acknowledged."""
        with self._lock:
            return event_id in self._pending

    def pending(self) -> dict[str, str]:
        """Event id → session id of every pending event."""
        with self._lock:
            return {eid: sid for eid, (_, sid) in self._pending.items()}

    def close(self) -> None:
        """Close every connection (at exit). Pending events stay with the sessions: the next reader
        adopts them."""
        with self._lock:
            self.closed = True
            links = [t.link for t in self._targets.values() if t.link is not None]
        for link in links:
            link.close()

    # -- internals -----------------------------------------------------------------------------
    def _target(self, sid: str) -> _Target:
        """The state of session `sid` (created on first use). Callers hold the lock or tolerate races on a
        dict insert (atomic in CPython)."""
        return self._targets.setdefault(sid, _Target())

    def _connect(self, target: SessionInfo) -> _Link:
        with self._lock:
            state = self._target(target.id)
            if state.link is None:
                state.link = _Link(self, target)
            return state.link

    def _adopt_one(self, event: RoutedEvent, sid: str) -> None:
        with self._lock:
            if event.id in self._pending:
                return
            if self.on_adopt is not None:
                _guarded(self.on_adopt, event)
            self._pending[event.id] = (event, sid)

    def _adopt(self, target: SessionInfo, events: list[RoutedEvent]) -> None:
        for event in events:
            self._adopt_one(event, target.id)
        self._target(target.id).ready.set()

    def _settle(self, event_id: str, sid: str) -> None:
        """`on_ack`, then forget the event (in that order: it is always seen or pending)."""
        with self._lock:
            entry = self._pending.get(event_id)
        if entry is None or entry[1] != sid:
            return
        _guarded(self.on_ack, entry[0])
        with self._lock:
            self._pending.pop(event_id, None)

    def _acked(self, sid: str, event_id: str) -> None:
        self._settle(event_id, sid)

    def _local_written(self, event: RoutedEvent) -> None:
        self._settle(event.id, self.self_id)

    def _broken(self, link: _Link) -> None:
        if not self.closed:
            threading.Thread(target=self._resolve, args=(link,), name="link-resolve", daemon=True).start()

    def _resolve(self, link: _Link) -> None:
        """A connection ended: wait for the session to die, then settle what it logged and hand the rest to
        `on_orphaned`; if it still lives after `death_timeout`, reconnect and send its pending events
        again (it ignores repeats)."""
        target = link.target
        dead = self.registry.wait_dead(target, self.death_timeout)
        if dead:
            self.logs.poll()  # its last lines (the log is final: the process is gone)
        with self._lock:
            state = self._target(target.id)
            mine = [e for e, sid in self._pending.values() if sid == target.id]
            state.link = None
            state.dead = dead
        if not dead:
            log.warning("session %s lost its connection but still runs; reconnecting", target.name)
            fresh = self._connect(target)
            for event in mine:
                fresh.send(event)
            return
        orphans = []
        for event in mine:
            if self.logs.was_written(event.id):
                self._settle(event.id, target.id)
            else:
                orphans.append(event)
        with self._lock:
            for event in orphans:
                self._pending.pop(event.id, None)
        state.ready.set()
        if orphans:
            log.info("session %s ended with %d undelivered event(s): routing them again", target.name, len(orphans))
            _guarded(self.on_orphaned, orphans, target)


class SeenGuard:
    """The delivery ledger as the reader's pipeline should see it: `is_seen` is also true for events in
    flight at another session (`Dispatcher.is_pending`), so a row adopted from a session is not decided
    again. Everything else is the ledger's."""

    def __init__(self, ledger: LedgerLike, dispatcher: Dispatcher) -> None:
        self._ledger = ledger
        self._dispatcher = dispatcher

    def is_seen(self, guid: str) -> bool:
        return self._ledger.is_seen(guid) or self._dispatcher.is_pending(guid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)
