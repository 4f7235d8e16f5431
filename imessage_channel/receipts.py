"""Send confirmation: what became of a reply after AppleScript handed it to Messages.

AppleScript's `send` returns as soon as Messages accepts the command; whether anything was sent shows only
in chat.db. After a send Messages writes one `is_from_me = 1` row per part (each text chunk and each file is
its own message) into the chat, and updates that row in place as the send proceeds:

- `message.error`: 0, or a failure code; non-zero is the red "Not Delivered" in Messages (design §8). Readers
  that act on it: BlueBubbles' server (`outgoingMessageListener.ts`: rows `is_from_me = 1` with `error > 0`
  become its `message-send-error` event; rows with `is_sent = 0` and no error are re-read by ROWID until they
  are sent or fail), openclaw/imsg (`MessageSendStatus.state`: `error ≠ 0` → failed, before delivered or
  sent), AirMessage's server (`DatabaseConverter.mapMessageErrorCode`: 3 network, 22 unregistered).
- `is_sent`: Messages has sent the row (BlueBubbles' "sent" bucket; AirMessage's `State.sent`).
- `is_delivered` / `date_delivered` (Apple epoch ns): the recipient's device acknowledged it ("Delivered";
  imessage-exporter's `Message.date_delivered`, "the date a message was delivered"). openclaw/imsg#239 treats
  `is_sent = 1, is_delivered = 0` as delivery unknown. We report "sent" without waiting for delivery (an
  offline phone acknowledges hours later); `SentRow.is_delivered` carries it for callers that care.

openclaw/imsg waits up to 8 s for the sent row after an AppleScript send and reports "may have completed"
otherwise (design §8); its matcher once read only `text`, which macOS 26 leaves NULL on sent rows, and so
reported every send as unconfirmed (openclaw/imsg#249): rows here are compared by their decoded text
(`ChatDB.sent_rows`), normalised as the echo filter does (`echo.normalize_text`).

The server drives one `Receipts`:
1. before a send: `pending = receipts.expect(chat_guid, parts, files=names)` (reads `db.max_rowid()`: only rows
   written after it count, so an identical older text never confirms a new send);
2. after AppleScript returned: `receipts.confirm(pending)` in a worker thread (blocking, polls chat.db with a
   short backoff for up to `CONFIRM_TIMEOUT_S`) → `Confirmation`, whose `description` is the tool's answer;
3. on each wake of the delivery loop: `receipts.watch_failures()` → `Failure`s to push as `kind="send_failed"`
   events: parts whose `error` turned non-zero after `confirm` returned (each reported once), within
   `WATCH_WINDOW_S` of the send and for at most `MAX_WATCHED` rows.
Time comes from the injected `Clock` (monotonic readings) and waiting from the injected `sleep`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .chatdb import Attachment, ChatDB, ChatDBError, Message, plain_id
from .clock import SYSTEM, Clock
from .echo import normalize_text
from .render import first_words

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 5.0
"""How long `confirm` waits for the sent rows, in seconds. Messages writes a sent row within a second of the
script returning (echo.py relies on the same); openclaw/imsg waits 8 s, and the false "may have completed"
reports its users filed came from a matcher that missed rows which were there (openclaw/imsg#249), not from
slow writes. 5 s is several times the usual delay while keeping the `reply` call, which Claude waits on, short.
`confirm` returns as soon as every part is sent (or one failed), so a healthy send costs well under a second."""

POLL_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.5)
"""Pauses between `confirm`'s looks at chat.db; the last repeats. Early looks are quick (the row is usually
there after the first pause), later ones sparse: at most about 13 reads in `CONFIRM_TIMEOUT_S`."""

WATCH_WINDOW_S = 120.0
"""How long after a send `watch_failures` keeps checking its rows, in seconds. A send Messages cannot make
fails within seconds (error 22, the address has no iMessage, is written with the row); a later failure means
Messages gave up retrying. No public source gives Messages' retry time, so this is a bound of our choosing:
two minutes keeps a late failure tied to the conversation Claude is having, and the watch cheap."""

MAX_WATCHED = 50
"""Most rows (and sends whose rows were not seen yet) watched at once: five replies of ten parts. Past it the
oldest are dropped. One primary-key lookup statement of at most this many ids per wake."""

SENT_ROWS_LIMIT = 200
"""Most sent rows read per look: a reply has at most 20 parts (10 texts, 10 files); the rest is headroom for
the owner typing in the same chat meanwhile."""

DM_SERVICES = ("any", "iMessage", "SMS", "RCS")
"""Service prefixes one chat's GUID may carry: Messages can file a send to `any;-;x` under `iMessage;-;x` and
back (macOS 26; sender.py `_targets`), or under `SMS;-;x` when it falls back to SMS (design §4)."""

ERROR_WORDS: Mapping[int, str] = {
    3: "Messages could not reach the iMessage service (a network error)",
    22: "the recipient is not registered with iMessage",
}
"""`message.error` codes with known meanings. AirMessage's server (`DatabaseConverter.mapMessageErrorCode`) maps
3 → network and 22 → unregistered (its clients: "Couldn't connect to iMessage server", "This recipient is not
registered with iMessage"); BlueBubbles' app shows 22 as "The recipient is not registered with iMessage!"
(`message_holder.dart`, bluebubbles-app#486). Other codes are reported by number."""


def error_text(code: int) -> str:
    """User-facing words for a non-zero `message.error`: `"the recipient is not registered with iMessage
    (Messages error 22, Not Delivered)"` for a known code, `"Messages reports error N (Not Delivered)"`
    otherwise."""
    words = ERROR_WORDS.get(code)
    return (
        f"{words} (Messages error {code}, Not Delivered)" if words else f"Messages reports error {code} (Not Delivered)"
    )


def failed_label(code: int) -> str:
    """The mark `chat_messages` puts after an owner's message whose `error` is `code` (non-zero):
    `(not delivered: the recipient is not registered with iMessage (Messages error 22, Not Delivered))`."""
    return f"(not delivered: {error_text(code)})"


def chat_guid_forms(chat_guid: str) -> tuple[str, ...]:
    """`chat_guid` and the same chat under every other service prefix of `DM_SERVICES` (`iMessage;-;x`,
    `any;-;x`, `SMS;-;x`, `RCS;-;x`; groups keep `;+;`). A GUID not of the `service;-;id` / `service;+;id`
    shape is returned alone."""
    parts = chat_guid.split(";", 2)
    if len(parts) != 3 or parts[1] not in ("-", "+") or not parts[2]:
        return (chat_guid,)
    _, sep, ident = parts
    return (chat_guid, *(f"{s};{sep};{ident}" for s in DM_SERVICES if f"{s};{sep};{ident}" != chat_guid))


class Outcome(Enum):
    """What `confirm` found, each with its user-facing words (`description`)."""

    SENT = ("sent", "sent")
    """Every part's row is in chat.db, marked sent, with no error."""
    FAILED = ("failed", "not delivered")
    """A part's row carries a non-zero `error` (see `Confirmation.error`)."""
    PENDING = ("pending", "handed to Messages, not sent yet")
    """Every part's row is there without an error, but Messages had not marked them all sent (`is_sent = 0`)
    when the wait ended: queued in Messages (BlueBubbles keeps such rows in its "notSent" list until they are
    sent or fail). `watch_failures` keeps watching them."""
    NOT_SEEN = ("not_seen", "handed to Messages, not yet seen in chat.db")
    """Not every part's row showed up in time: the send may still happen, or may have been dropped (openclaw/imsg
    reports this as "may have completed; retry is not safe"). `watch_failures` keeps looking for them."""

    def __init__(self, key: str, description: str) -> None:
        self.key = key
        self.description = description


@dataclass(frozen=True, slots=True)
class SentRow:
    """One `ChatDB.sent_rows` result: a row the owner sent. `text` is decoded and cleaned (`clean_text`);
    `error` is `message.error` (0 = none); `date_delivered`/`date` are Apple epoch ns (0 when unset)."""

    rowid: int
    guid: str
    chat_guid: str
    text: str
    error: int
    is_sent: bool
    is_delivered: bool
    date_delivered: int
    date: int


@dataclass(frozen=True, slots=True)
class Pending:
    """A send about to happen (`Receipts.expect`): `texts` (the text parts, in order) and `files` (the file
    names, as sent) to find among rows of `chat_guids` (every GUID form of `chat_guid`) with ROWID >
    `before_rowid`. `generation` is `ChatDB.generation` then (a reopened chat.db renumbers nothing we can
    trust); `started` is the clock's monotonic reading; `id` is unique per `Receipts`."""

    id: int
    chat_guid: str
    chat_guids: tuple[str, ...]
    texts: tuple[str, ...]
    files: tuple[str, ...]
    before_rowid: int
    generation: int
    started: float

    @property
    def parts(self) -> int:
        """How many rows the send should produce: one per text part and one per file."""
        return len(self.texts) + len(self.files)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What `confirm` found. `rows[i]` is the row of part i+1 (texts, then files), None when not seen;
    `error` is the first non-zero `message.error` among them (0 when none) and `failed_part` its 1-based part
    number (0 when none). `description` is the sentence for the `reply` tool's result."""

    outcome: Outcome
    rows: tuple[SentRow | None, ...]
    error: int = 0
    failed_part: int = 0

    @property
    def seen(self) -> int:
        """How many parts' rows were found."""
        return sum(r is not None for r in self.rows)

    @property
    def description(self) -> str:
        """`sent` / `sent 3 parts`; `not delivered: <error_text>` (`part 2 of 3 not delivered: …`); `handed to
        Messages, not sent yet`; `handed to Messages, not yet seen in chat.db` (`… (1 of 3 parts seen)`)."""
        n = len(self.rows)
        if self.outcome is Outcome.SENT:
            return "sent" if n == 1 else f"sent {n} parts"
        if self.outcome is Outcome.FAILED:
            which = f"part {self.failed_part} of {n} " if n > 1 else ""
            return f"{which}{Outcome.FAILED.description}: {error_text(self.error)}"
        if self.outcome is Outcome.NOT_SEEN and self.seen:
            return f"{self.outcome.description} ({self.seen} of {n} parts seen)"
        return self.outcome.description


@dataclass(frozen=True, slots=True)
class Failure:
    """A sent part Messages marked failed after `confirm` returned: for a `kind="send_failed"` channel event.
    `chat_guid` is the chat the reply was addressed to (as Claude knows it), `words` the part's first words
    (`[file NAME]` for a file)."""

    chat_guid: str
    rowid: int
    guid: str
    error: int
    words: str

    @property
    def content(self) -> str:
        """The event's body, in the words of the outbox's give-up event."""
        start = f' starting "{self.words}"' if self.words else ""
        return f"Your reply to {self.chat_guid}{start} was not delivered: {error_text(self.error)}"

    def meta(self) -> dict[str, str]:
        """Event meta (the server adds `ts`): `chat_id`, `kind="send_failed"`, `message_id` (the failed row's
        GUID, when a plain id) and `error` (the code). The text's words stay in `content`, never in meta."""
        meta = {"chat_id": self.chat_guid, "kind": "send_failed"}
        if plain_id(self.guid):
            meta["message_id"] = self.guid
        meta["error"] = str(self.error)
        return meta


@dataclass(slots=True)
class _Watched:
    """A found row still watched: the reply's chat, the part's first words, when the send started."""

    chat_guid: str
    guid: str
    words: str
    started: float


@dataclass(slots=True)
class _Unseen:
    """A send whose rows were not all found by `confirm`: looked for again by `watch_failures`."""

    pending: Pending
    claimed: set[int] = field(default_factory=set)
    found: list[bool] = field(default_factory=list)


def send_errors(db: ChatDB, messages: Iterable[Message]) -> dict[int, int]:
    """`{ROWID: error}` for the owner's messages among `messages` whose `message.error` is non-zero: for
    `chat_messages` to mark them (`failed_label`). One `ChatDB.send_states` read; raises `ChatDBError`."""
    mine = [m.rowid for m in messages if m.is_from_me]
    return {rowid: state[0] for rowid, state in db.send_states(mine).items() if state[0]} if mine else {}


def match_rows(
    pending: Pending,
    rows: Sequence[SentRow],
    attachments: Mapping[int, Sequence[Attachment]] | None = None,
    claimed: Iterable[int] = (),
    found: Sequence[bool] = (),
) -> list[SentRow | None]:
    """Each part of `pending` paired with its row (texts first, then files), None where none fits. Pure.

    A text part takes the first unclaimed row (ROWID order) whose text equals it after `normalize_text`; a file
    part the first unclaimed row with no text whose joined attachments (`attachments[rowid]`) include one named
    like the file (NFC). Each row serves one part, so a text sent twice needs two rows. `claimed` rows are taken
    already and parts with `found[k]` true are skipped (None): both from an earlier look."""
    taken = set(claimed)
    files = attachments or {}
    wanted: list[tuple[str, bool]] = [(t, False) for t in pending.texts] + [(f, True) for f in pending.files]
    out: list[SentRow | None] = []
    for k, (want, is_file) in enumerate(wanted):
        row = None
        if not (k < len(found) and found[k]):
            row = next((r for r in rows if r.rowid not in taken and _fits(r, want, is_file, files)), None)
        out.append(row)
        if row is not None:
            taken.add(row.rowid)
    return out


def _fits(row: SentRow, want: str, is_file: bool, attachments: Mapping[int, Sequence[Attachment]]) -> bool:
    """Whether `row` is the row of a text part `want` (normalised), or of the file named `want` (NFC)."""
    if not is_file:
        return normalize_text(row.text) == want
    return not row.text and any(
        _nfc(a.transfer_name or _basename(a.path)) == want for a in attachments.get(row.rowid, ())
    )


def _basename(path: str | None) -> str:
    """The last component of `path` ("" for None)."""
    return path.rsplit("/", 1)[-1] if path else ""


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def settle(rows: Sequence[SentRow | None]) -> Confirmation:
    """The `Confirmation` for parts paired with these rows (`match_rows`). Pure. A row with an error makes it
    FAILED (whatever else is missing); else a missing row NOT_SEEN; else a row not yet `is_sent` PENDING; else
    SENT."""
    for k, row in enumerate(rows, start=1):
        if row is not None and row.error:
            return Confirmation(Outcome.FAILED, tuple(rows), row.error, k)
    if any(r is None for r in rows):
        return Confirmation(Outcome.NOT_SEEN, tuple(rows))
    if not all(r is not None and r.is_sent for r in rows):
        return Confirmation(Outcome.PENDING, tuple(rows))
    return Confirmation(Outcome.SENT, tuple(rows))


class Receipts:
    """Confirms sends against chat.db and watches sent rows for late failures (see the module docstring).

    `db` is the server's `ChatDB` (thread-safe). `clock` gives monotonic seconds (`Clock.monotonic`); `sleep`
    waits that many seconds (tests pass one that advances a `ManualClock`; the default wait ends at `stop()`).
    `confirm` may run in any worker thread while `watch_failures` runs in another: the watch lists are guarded
    by a lock and no query runs under it. Bounds: `confirm_timeout` (`CONFIRM_TIMEOUT_S`), `watch_window`
    (`WATCH_WINDOW_S`), `max_watched` (`MAX_WATCHED`)."""

    def __init__(
        self,
        db: ChatDB,
        *,
        clock: Clock = SYSTEM,
        sleep: Callable[[float], None] | None = None,
        confirm_timeout: float = CONFIRM_TIMEOUT_S,
        watch_window: float = WATCH_WINDOW_S,
        max_watched: int = MAX_WATCHED,
        backoff: Sequence[float] = POLL_BACKOFF_S,
    ) -> None:
        self.db = db
        self.clock = clock
        self._stopping = threading.Event()
        self.sleep = sleep or self._stopping.wait
        self.confirm_timeout = confirm_timeout
        self.watch_window = watch_window
        self.max_watched = max_watched
        self.backoff = tuple(backoff) or (0.5,)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._rows: dict[int, _Watched] = {}
        self._unseen: dict[int, _Unseen] = {}
        self._generation = db.generation

    # -- before and after a send -------------------------------------------------------------------
    def expect(
        self, chat_guid: str, parts: Sequence[str], before_rowid: int | None = None, *, files: Sequence[str] = ()
    ) -> Pending:
        """Note a send about to happen: text `parts` exactly as they will be sent (`sender.text_parts`) and the
        names (or paths) of `files` as sent (the staged copy keeps the file's name). Call it right BEFORE the
        send, with `before_rowid = db.max_rowid()` read then (None: read it here, one query; raises `ChatDBError`).
        Cheap otherwise: no query. Raises ValueError when there is nothing to expect."""
        texts = tuple(t for t in (normalize_text(p) for p in parts) if t)  # a blank part has no row to find
        if not texts and not files:
            raise ValueError("a send with no text part and no file has no row to confirm")
        top = self.db.max_rowid() if before_rowid is None else before_rowid
        return Pending(
            id=next(self._ids),
            chat_guid=chat_guid,
            chat_guids=chat_guid_forms(chat_guid),
            texts=texts,
            files=tuple(_nfc(_basename(f)) for f in files),
            before_rowid=top,
            generation=self.db.generation,
            started=self.clock.monotonic(),
        )

    def confirm(self, pending: Pending, timeout: float | None = None) -> Confirmation:
        """Wait (blocking; run it in a worker thread) until every part's row is in chat.db and sent, or one
        carries an error, or `timeout` seconds (default `confirm_timeout`) pass; then settle (`settle`). Looks
        at chat.db after each pause of `backoff` (the last repeats), and once more at the deadline. Rows found
        without an error, and parts not found, are handed to `watch_failures`. A chat.db that cannot be read
        counts as nothing seen (logged); never raises `ChatDBError`."""
        deadline = self.clock.monotonic() + (self.confirm_timeout if timeout is None else timeout)
        pauses = itertools.chain(self.backoff, itertools.repeat(self.backoff[-1]))
        while True:
            result = settle(self._look(pending))
            if result.outcome in (Outcome.SENT, Outcome.FAILED):
                break
            left = deadline - self.clock.monotonic()
            if left <= 0 or self._stopping.is_set():
                break
            self.sleep(min(next(pauses), left))
        self._track(pending, result)
        return result

    def stop(self) -> None:
        """The channel is exiting: a `confirm` under way returns at once with what it has seen (Claude Code
        stops a server with SIGINT and kills it ~100 ms later; a reply waiting for its row must not hold that
        up)."""
        self._stopping.set()

    def _look(self, pending: Pending, claimed: Iterable[int] = (), found: Sequence[bool] = ()) -> list[SentRow | None]:
        """Read the chat's sent rows after `pending.before_rowid` and pair them with its parts (`match_rows`)."""
        try:
            rows = [SentRow(*r) for r in self.db.sent_rows(pending.chat_guids, pending.before_rowid, SENT_ROWS_LIMIT)]
            bare = [r.rowid for r in rows if not r.text] if pending.files else []
            attachments = self.db.attachments_of(bare) if bare else {}
        except ChatDBError as exc:
            log.warning("send confirmation: chat.db could not be read: %s", exc)
            rows, attachments = [], {}
        return match_rows(pending, rows, attachments, claimed, found)

    def _track(self, pending: Pending, result: Confirmation) -> None:
        """Hand what `confirm` found to the watch: rows without an error; the send itself if parts are
        missing (a row with an error was just reported in the result, so it is not watched)."""
        with self._lock:
            if pending.generation != self.db.generation:
                return
            for k, row in enumerate(result.rows):
                if row is not None and not row.error:
                    words = _part_words(pending, k)
                    self._rows[row.rowid] = _Watched(pending.chat_guid, row.guid, words, pending.started)
            self._unseen.pop(pending.id, None)  # a send confirmed again: this result replaces the last one
            if result.outcome is Outcome.NOT_SEEN:
                found = [r is not None for r in result.rows]
                claimed = {r.rowid for r in result.rows if r is not None}
                self._unseen[pending.id] = _Unseen(pending, claimed, found)
            self._bound_locked(self.clock.monotonic())

    # -- after a send ----------------------------------------------------------------------------
    def watch_failures(self) -> list[Failure]:
        """Sent parts whose `error` turned non-zero since they were last checked, each reported once: call on
        each wake of the delivery loop (blocking: a worker thread). Re-reads the watched rows' states (one
        primary-key read) and looks again for parts `confirm` did not see (one `sent_rows` read per such send).
        Drops entries older than `watch_window` and beyond `max_watched`, and everything when chat.db was
        reopened (`ChatDB.generation` changed: ROWIDs may mean other rows). Cheap when nothing is watched (no
        query). A chat.db that cannot be read yields [] (logged); never raises `ChatDBError`."""
        with self._lock:
            if self.db.generation != self._generation:
                self._generation = self.db.generation
                self._rows.clear()
                self._unseen.clear()
            self._bound_locked(self.clock.monotonic())
            unseen = list(self._unseen.values())
        failures = [f for entry in unseen for f in self._look_again(entry)]
        with self._lock:
            ids = list(self._rows)
        if not ids:
            return failures
        try:
            states = self.db.send_states(ids)
        except ChatDBError as exc:
            log.warning("send watch: chat.db could not be read: %s", exc)
            return failures
        with self._lock:
            for rowid, (error, *_rest) in states.items():
                watched = self._rows.get(rowid)
                if error and watched is not None:
                    del self._rows[rowid]
                    failures.append(Failure(watched.chat_guid, rowid, watched.guid, error, watched.words))
        return failures

    def _look_again(self, entry: _Unseen) -> list[Failure]:
        """Look for the parts of a send `confirm` did not see; rows found join the watch, or are failures."""
        pending = entry.pending
        rows = self._look(pending, entry.claimed, entry.found)
        failures: list[Failure] = []
        with self._lock:
            if self._unseen.get(pending.id) is not entry:
                return []  # dropped meanwhile (bounds, generation)
            for k, row in enumerate(rows):
                if row is None or entry.found[k]:
                    continue
                entry.found[k] = True
                entry.claimed.add(row.rowid)
                words = _part_words(pending, k)
                if row.rowid in self._rows:
                    continue  # watched already
                if row.error:
                    failures.append(Failure(pending.chat_guid, row.rowid, row.guid, row.error, words))
                else:
                    self._rows[row.rowid] = _Watched(pending.chat_guid, row.guid, words, pending.started)
            if all(entry.found):
                del self._unseen[pending.id]
            self._bound_locked(self.clock.monotonic())
        return failures

    def _bound_locked(self, now: float) -> None:
        """Drop watch entries older than `watch_window`, then the oldest beyond `max_watched` (rows and unseen
        sends together, oldest send first)."""
        cutoff = now - self.watch_window
        self._rows = {k: v for k, v in self._rows.items() if v.started > cutoff}
        self._unseen = {k: v for k, v in self._unseen.items() if v.pending.started > cutoff}
        excess = len(self._rows) + len(self._unseen) - max(self.max_watched, 0)
        if excess <= 0:
            return
        entries = [(v.started, 0, k) for k, v in self._rows.items()]
        entries += [(v.pending.started, 1, k) for k, v in self._unseen.items()]
        for _, kind, key in sorted(entries)[:excess]:
            if kind == 0:
                del self._rows[key]
            else:
                del self._unseen[key]

    def watched(self) -> tuple[int, int]:
        """(rows watched, sends whose rows are still looked for): for logs and tests."""
        with self._lock:
            return len(self._rows), len(self._unseen)


def _part_words(pending: Pending, k: int) -> str:
    """How a failure event names part `k` (0-based) of `pending`: the first words of a text part (as sent,
    normalised), `[file NAME]` for a file part."""
    if k < len(pending.texts):
        return first_words(pending.texts[k], 40)
    return f"[file {pending.files[k - len(pending.texts)]}]"
