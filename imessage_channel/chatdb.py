"""Read-only access to the Messages database (`~/Library/Messages/chat.db`).

This module owns every SQL statement the channel runs against chat.db and turns rows into typed
`Message`, `Chat` and `Attachment` records. It never writes: the database is opened with
`file:…?mode=ro` (never `immutable=1`, which would hide rows Messages commits later, design §4), in
autocommit mode, and every query is fully fetched before the call returns, so no read transaction
stays open between calls and Messages' WAL checkpoints are never held back.

Columns are probed once with `PRAGMA table_info` and selected by name; a column a macOS release lacks
is read as NULL (treated like 0). That keeps Monterey (12) through Tahoe (26) working from one code
path: Ventura added `date_edited`/`date_retracted`, Sequoia `associated_message_emoji`, Tahoe lets the
date columns be NULL (design §4, BlueBubbles' per-release sample databases).

Every query is bounded (a LIMIT) and served by one of Apple's own indexes:
- rows after a watermark: the `message` ROWID primary key;
- last N of a chat: `chat_message_join_idx_message_date_id_chat_id (chat_id, message_date, message_id)`;
- chats of a handle / participants of a chat: `chat_handle_join` and its `handle_id` index;
- edit/unsend states of delivered rows and attachments still downloading: the `message` / `attachment`
  ROWID primary keys (`edit_states`, `attachments_by_rowid`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

from .appletime import APPLE_EPOCH, from_apple
from .handles import STYLE_DM, STYLE_GROUP, normalize_handle, strip_account_prefix
from .typedstream import decode_attributed_body

log = logging.getLogger(__name__)

Row: TypeAlias = tuple[Any, ...]
"""One fetched row: SQLite values are typed per row, not per column, so each value is read with a check or a
coercion where it is used."""

OBJECT_REPLACEMENT = "\ufffc"
"""U+FFFC: the placeholder Messages puts in the text for each attachment (and each inline sticker)."""

OWNER_SCAN_ROWS = 20_000
"""How many of the newest `message` rows owner detection reads. Owner aliases in use show up in
recent sent rows; scanning a fixed window keeps start-up O(1) in the size of the history."""


_SQLITE_NOTADB = 26
"""SQLite's result code for "file is not a database" (sqlite.org/rescode.html#notadb)."""

BUSY_TIMEOUT_MS = 250
"""SQLite's own wait on a locked database before returning SQLITE_BUSY."""

BUSY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)
"""Pauses between retries of a statement that got SQLITE_BUSY (about 2 s with the busy timeouts)."""


class ChatDBError(Exception):
    """chat.db cannot be opened or read. `str(err)` is a paragraph meant for the user."""


FULL_DISK_ACCESS_HELP = (
    "macOS protects ~/Library/Messages: the program that runs imessage-channel needs Full Disk "
    "Access. Open System Settings → Privacy & Security → Full Disk Access, add your terminal "
    "(Terminal, iTerm, …) or the app that starts Claude Code, switch it on, and restart that app. "
    "To read another database, pass --db PATH or set IMESSAGE_DB_PATH."
)


class Kind(StrEnum):
    """What a `message` row is, as the channel sees it (first match wins, in this order).

    The `associated_message_type` and `item_type` values are imessage-exporter's classification
    (imessage-database `tables/messages/message.rs`: `Message::variant`, `get_announcement`,
    `is_kept_audio_message`, `started_sharing_location`, `is_shareplay`; `GroupAction::from_message`)."""

    UNSEND = "unsend"  # date_retracted set: the sender took the message back (Ventura+)
    EDIT = "edit"  # date_edited set: the text was edited after sending (Ventura+)
    TAPBACK = "tapback"  # associated_message_type 2000–2007, or 1000: a sticker placed on a bubble
    TAPBACK_REMOVAL = "tapback_removal"  # associated_message_type 3000–3007
    GROUP_EVENT = "group_event"  # item_type 1 member added/removed, 2 renamed, 3 left / photo changed
    LOCATION_SHARING = "location_sharing"  # item_type 4: started (share_status 0) or stopped sharing location
    AUDIO_KEPT = "audio_kept"  # item_type 5: someone kept an audio message (which would otherwise expire)
    SHAREPLAY = "shareplay"  # item_type 6: a SharePlay / FaceTime session in the chat
    OTHER_EVENT = "other_event"  # any other item_type ≠ 0: a notice of a kind this version does not know
    REPLY = "reply"  # thread_originator_guid set: an inline reply
    TEXT = "text"  # an ordinary message with text and/or attachments
    RECEIPT = "receipt"  # no text, no attachment: whitespace-only rows Messages writes for receipts
    UNREADABLE = "unreadable"  # the row could not be decoded (logged once): never delivered, never blocking


STICKER_PLACED = 1000
"""`associated_message_type` of a sticker dragged onto a message bubble: a reaction to that message, delivered
like the iOS 18 sticker tapback (2007) with `reaction="sticker"`; the row carries the sticker as an attachment
(`is_sticker`). imessage-exporter: `1000 => Variant::Tapback(…, TapbackAction::Added, Tapback::Sticker)`."""

ITEM_KINDS: dict[int, Kind] = {
    1: Kind.GROUP_EVENT,
    2: Kind.GROUP_EVENT,
    3: Kind.GROUP_EVENT,
    4: Kind.LOCATION_SHARING,
    5: Kind.AUDIO_KEPT,
    6: Kind.SHAREPLAY,
}
"""`message.item_type` → `Kind` (see `Kind` for the source); other non-zero values are `Kind.OTHER_EVENT`."""

TAPBACKS: dict[int, tuple[str, str]] = {
    0: ("love", "❤️"),
    1: ("like", "👍"),
    2: ("dislike", "👎"),
    3: ("laugh", "😂"),
    4: ("emphasize", "‼️"),
    5: ("question", "❓"),
    6: ("emoji", ""),  # iOS 18 / macOS 15: any emoji, in message.associated_message_emoji
    7: ("sticker", ""),  # iOS 18 / macOS 15: a sticker placed as a reaction
}
"""`associated_message_type` − 2000 (add) or − 3000 (remove) → (reaction name, emoji).
Source: design §4; imessage-exporter's `Tapback` variants."""


@dataclass(frozen=True, slots=True)
class Tapback:
    """A reaction row. `target_guid` is the reacted-to message's GUID with the `p:N/` or `bp:`
    prefix removed, or "" when the column does not hold a GUID-shaped value (`message_guid`);
    `target_part` is N (the message part, 0 for the text) or None."""

    reaction: str
    emoji: str
    target_guid: str
    target_part: int | None
    removed: bool


TRANSFER_FINISHED = 5
"""`attachment.transfer_state` of a file that is completely on disk; lower values are waiting or
downloading (imessage-exporter's and BlueBubbles' readers treat 5 as finished)."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """One row of `attachment` joined to a message. `path` has `~` expanded (chat.db stores
    `~/Library/Messages/Attachments/…`); it may not exist yet while `transfer_state` ≠ 5 (finished)."""

    rowid: int
    guid: str
    path: str | None
    mime_type: str | None
    uti: str | None
    transfer_name: str | None
    transfer_state: int
    total_bytes: int
    is_sticker: bool = False

    @property
    def is_image(self) -> bool:
        """True for `image/*` MIME types (HEIC included)."""
        return bool(self.mime_type and self.mime_type.startswith("image/"))

    @property
    def is_audio(self) -> bool:
        """True for `audio/*` MIME types and Core Audio files (`.caf`, UTI `com.apple.coreaudio-format`),
        the format of Messages' voice messages."""
        return bool(
            (self.mime_type and self.mime_type.startswith("audio/"))
            or self.uti == "com.apple.coreaudio-format"
            or self.name.lower().endswith(".caf")
        )

    @property
    def finished(self) -> bool:
        """True when the transfer is complete (`transfer_state` = `TRANSFER_FINISHED`)."""
        return self.transfer_state == TRANSFER_FINISHED

    @property
    def name(self) -> str:
        """A display name: the transfer name, else the file name, else the GUID."""
        if self.transfer_name:
            return self.transfer_name
        if self.path:
            return os.path.basename(self.path)
        return self.guid


@dataclass(frozen=True, slots=True)
class Chat:
    """A row of `chat`. `style` is 43 (group), 45 (DM) or something unknown."""

    rowid: int
    guid: str
    style: int | None
    chat_identifier: str
    service_name: str | None
    display_name: str | None

    @property
    def is_group(self) -> bool:
        return self.style == STYLE_GROUP

    @property
    def is_dm(self) -> bool:
        return self.style == STYLE_DM


@dataclass(frozen=True, slots=True)
class Message:
    """One `message` row, decoded.

    - `rowid`: message.ROWID (monotonic per database; the watermark).
    - `chat_guid`/`chat_style`: from the row's `chat_message_join`; None while Messages
      has not written the join yet (a row can be visible before its join, design §5).
    - `handle`: `handle.id` of `message.handle_id` — the sender of an inbound row, the other party of a
      sent DM row, None when handle_id is 0.
    - `sender`: who wrote it: `handle` for inbound rows; for sent rows the owner's address from
      `account` (prefix stripped, normalised), or None when unknown.
    - `date`: UTC; from ns or legacy seconds. `text`: from `text`, else from the decoded
      `attributedBody`, with U+FFFC attachment placeholders removed and ends stripped.
    - `is_audio_message`: `message.is_audio_message` (a voice message recorded in Messages).
    - `share_status`: `message.share_status`; for `Kind.LOCATION_SHARING` True means sharing stopped.
    - `placeholders`: U+FFFC characters in the raw text (before `clean_text`), one per file; 0 for an app
      balloon (`balloon_bundle_id` set), whose U+FFFC stands for the balloon (imessage-exporter `Message::body`).
    - `transfer_guids`: the attributedBody's `__kIMFileTransferGUIDAttributeName` values (= `attachment.guid`).
    - `reply_to`: `thread_originator_guid` when GUID-shaped (`message_guid`), else None — also for a reply
      (`kind` REPLY) whose sender's client wrote something else there.
    """

    rowid: int
    guid: str
    chat_guid: str | None
    chat_style: int | None
    handle: str | None
    sender: str | None
    service: str
    is_from_me: bool
    date: datetime | None
    text: str
    kind: Kind
    attachments: tuple[Attachment, ...] = ()
    tapback: Tapback | None = None
    reply_to: str | None = None
    item_type: int = 0
    group_action_type: int = 0
    group_title: str | None = None
    share_status: bool = False
    date_edited: datetime | None = None
    transfer_guids: tuple[str, ...] = ()
    is_audio_message: bool = False
    placeholders: int = 0

    @property
    def files_missing(self) -> int:
        """How many of the message's files are not joined yet: Messages can commit the message row before
        its `message_attachment_join` rows, and those one by one. Two signals, the larger wins: the text's
        U+FFFC count (`placeholders`, one per file, design §4) beyond the files joined, and file-transfer
        GUIDs in the attributedBody with no joined `attachment` of that GUID. Both are written by the sender's
        client, so a caller that waits on this must bound the wait."""
        joined = {a.guid for a in self.attachments}
        return max(self.placeholders - len(self.attachments), len(set(self.transfer_guids) - joined), 0)

    @property
    def attachments_pending(self) -> bool:
        """True when some of the message's files are not joined yet (`files_missing`)."""
        return self.files_missing > 0

    @property
    def is_dm(self) -> bool:
        return self.chat_style == STYLE_DM

    @property
    def is_group(self) -> bool:
        return self.chat_style == STYLE_GROUP


# --------------------------------------------------------------------------------------------------
# Pure decoding helpers


def parse_associated_guid(value: str | None) -> tuple[str, int | None] | None:
    """Split `associated_message_guid` into (target GUID, part index).

    Forms seen in chat.db: `p:0/GUID` (part 0 of GUID), `bp:GUID` (a balloon/plugin message), and a
    bare `GUID` (older releases). Returns None for NULL/empty.
    """
    if not value:
        return None
    if value.startswith("p:") and "/" in value:
        head, _, guid = value.partition("/")
        try:
            return guid, int(head[2:])
        except ValueError:
            return guid, None
    if value.startswith("bp:"):
        return value[3:], None
    return value, None


GUID_SHAPE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
"""What a message GUID in chat.db looks like: a UUID in its 8-4-4-4-12 hex form, 36 ASCII characters.

Sources: every `message.guid` and `attachment.guid` of the real Ventura chat.db in `fixtures/reference`
(uppercase, e.g. `D7CEBAED-9844-4B25-B841-F7748EA3BCAD`); imessage-exporter's `Message::clean_associated_guid`
(imessage-database `tables/messages/message.rs`), which keeps exactly 36 characters after a `p:N/` or `bp:`
prefix, with tests on `p:1/A44CE9D7-AAAA-BBBB-CCCC-23C54E1A9B6A` and `bp:…` that reject `FAKE_GUID`.
BlueBubbles' server (`databases/imessage/entity/Message.ts`) hands the column to its clients unparsed; no
other form turned up there. Lowercase hex is accepted as well (it cannot carry anything harmful); nothing
else is: no braces, no dashless form, no suffix."""

PLAIN_ID_LIMIT = 320
"""Longest `plain_id`: a chat GUID is a service prefix (`iMessage;-;`, `any;+;`) plus a handle or group id;
an email address is at most 254 characters."""

_PLAIN_ID = re.compile(rf"[!#-;=?-\[\]-~]{{1,{PLAIN_ID_LIMIT}}}")
"""Printable ASCII (0x21–0x7E) except `"` (0x22), `<` (0x3C), `>` (0x3E) and `\\` (0x5C)."""


def message_guid(value: object) -> str | None:
    """The message GUID named by a sender-set column, or None when it is not GUID-shaped.

    For `thread_originator_guid` (an inline reply's target) and `associated_message_guid` (a reaction's
    target): the sender's client chooses these values and Messages stores them as received, so they reach
    meta (`reply_to`, `reaction_to`) only through this check. The `p:N/` and `bp:` prefixes are stripped
    (`parse_associated_guid`); what remains must match `GUID_SHAPE` exactly. A value that is not a `str`
    (a BLOB, NULL) gives None. Never raises.
    """
    if not isinstance(value, str):
        return None
    parsed = parse_associated_guid(value)
    if parsed is None or not GUID_SHAPE.fullmatch(parsed[0]):
        return None
    return parsed[0]


def plain_id(value: object) -> str | None:
    """`value` when it is a plain identifier that can stand in a meta value as it is, else None.

    For `message.guid` (`message_id`) and `chat.guid` (`chat_id`): Messages writes them, but from what the
    sending device sent (the message's UUID, a group's id), so they are checked too — more loosely than
    `message_guid`, since chat GUIDs hold handles (`iMessage;-;+15551234567`, `any;+;chat123…`,
    `iMessage;-;o'brien@example.com`). Plain: 1 to `PLAIN_ID_LIMIT` printable ASCII characters, none of
    them white space or `"` `<` `>` `\\` (which could end an attribute, open a tag or start an escape where
    Claude Code renders meta as `key="value"`). A row failing this is not delivered (its `chat_id` could
    not be answered safely anyway). Never raises.
    """
    return value if isinstance(value, str) and _PLAIN_ID.fullmatch(value) else None


def tapback_of(assoc_type: int, guid: str | None, emoji: str | None) -> Tapback | None:
    """Build a `Tapback` from `associated_message_type` (2000–2007 add, 3000–3007 remove, `STICKER_PLACED`
    a sticker placed on the bubble, read as the sticker tapback), the associated GUID and
    `associated_message_emoji` (Sequoia+). None when the type is not a reaction. `target_guid` is ""
    (and `target_part` None) unless the associated GUID is GUID-shaped (`message_guid`): the sender's
    client sets that column."""
    if assoc_type == STICKER_PLACED:
        removed, code = False, 7
    elif 2000 <= assoc_type <= 2007:
        removed, code = False, assoc_type - 2000
    elif 3000 <= assoc_type <= 3007:
        removed, code = True, assoc_type - 3000
    else:
        return None
    parsed = parse_associated_guid(guid)
    target = parsed if parsed is not None and message_guid(guid) is not None else ("", None)
    name, default_emoji = TAPBACKS[code]
    return Tapback(name, emoji or default_emoji, target[0], target[1], removed)


def clean_text(text: str | None) -> str:
    """Remove U+FFFC attachment placeholders and surrounding white space."""
    if not text:
        return ""
    return text.replace(OBJECT_REPLACEMENT, "").strip()


def classify(
    *,
    text: str,
    has_attachments: bool,
    assoc_type: int,
    item_type: int,
    thread_originator_guid: str | None,
    date_edited: int | None,
    date_retracted: int | None,
) -> Kind:
    """Decide a row's `Kind` from its columns (NULL passed as 0/None). Order matters: an unsent
    reply is an unsend; a tapback is never a text even when older releases fill `text` with
    "Liked “…”". `has_attachments`: files joined, or announced by the text (U+FFFC) or the
    attributedBody (transfer GUIDs) and not joined yet — such a row is never a receipt. See `Kind` for the
    meaning of each."""
    if date_retracted:
        return Kind.UNSEND
    if date_edited:
        return Kind.EDIT
    if assoc_type == STICKER_PLACED or 2000 <= assoc_type <= 2007:
        return Kind.TAPBACK
    if 3000 <= assoc_type <= 3007:
        return Kind.TAPBACK_REMOVAL
    if item_type:
        return ITEM_KINDS.get(item_type, Kind.OTHER_EVENT)
    if not text and not has_attachments:
        return Kind.RECEIPT
    if thread_originator_guid:
        return Kind.REPLY
    return Kind.TEXT


# --------------------------------------------------------------------------------------------------
# The reader

_OPTIONAL_MESSAGE_COLUMNS = (
    "text",
    "attributedBody",
    "handle_id",
    "service",
    "is_from_me",
    "date",
    "account",
    "associated_message_guid",
    "associated_message_type",
    "associated_message_emoji",
    "thread_originator_guid",
    "item_type",
    "group_action_type",
    "group_title",
    "share_status",
    "date_edited",
    "date_retracted",
    "cache_has_attachments",
    "is_audio_message",
    "balloon_bundle_id",
)


def _uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path)) + "?mode=ro"


class ChatDB:
    """A read-only connection to one chat.db.

    Thread-safe (one lock around the connection): the watcher thread and tool handlers share it.
    Raises `ChatDBError` with a user-facing explanation when the file is missing or unreadable
    (on macOS that is almost always missing Full Disk Access).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._ino = 0
        self.generation = 0
        """Counts the connections opened: it changes whenever `refresh` (from any caller) reopened the file,
        so a reader that keeps per-file state (ROWIDs it watches) can tell it now reads another file."""
        self._handles: dict[str, list[int]] = {}
        self._handles_key: tuple[int, int] | None = None
        with self._lock:
            self._connect_locked()

    # -- connection ----------------------------------------------------------------------------
    def _connect_locked(self) -> None:
        """(Re)open the connection and re-probe the schema (a rebuilt chat.db may differ)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise ChatDBError(
                f"No Messages database at {self.path}. On a Mac, Messages creates it the first time "
                f"it runs; if it exists but is hidden from this program, that is Full Disk Access. "
                + FULL_DISK_ACCESS_HELP
            ) from None
        except OSError as exc:
            raise ChatDBError(f"Cannot see {self.path} ({exc}). " + FULL_DISK_ACCESS_HELP) from exc
        if stat.S_ISDIR(st.st_mode):
            raise ChatDBError(
                f"{self.path} is a folder, not a database file: give the path of chat.db itself "
                "(--db ~/Library/Messages/chat.db or IMESSAGE_DB_PATH)."
            )
        try:
            conn = sqlite3.connect(_uri(self.path), uri=True, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = 1")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) == _SQLITE_NOTADB or "not a database" in str(exc):
                raise ChatDBError(f"{self.path} is not an SQLite database ({exc}): check the path.") from exc
            raise ChatDBError(
                f"Cannot read the Messages database at {self.path} ({exc}). " + FULL_DISK_ACCESS_HELP
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise ChatDBError(
                f"Cannot read the Messages database at {self.path} ({exc}). " + FULL_DISK_ACCESS_HELP
            ) from exc
        self._conn, self._ino = conn, st.st_ino
        self._told_lenient = False
        self.generation += 1
        self._columns = self._probe_locked("message")
        self._attachment_columns = self._probe_locked("attachment")
        self._select = self._build_select()

    def _drop_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None

    def refresh(self) -> bool:
        """Reopen when chat.db was replaced (a new inode: Messages rebuilt or restored it) or a previous
        error closed the connection. Returns True when it reopened (`generation` then changed). Raises
        `ChatDBError` when the file is gone or unreadable; the next call tries again. Costs one `stat`:
        the delivery loop calls it before each read and the tools before each call, so both always read
        the same file."""
        with self._lock:
            try:
                ino = self.path.stat().st_ino
            except OSError:
                self._drop_locked()
                raise ChatDBError(
                    f"The Messages database at {self.path} is gone (Messages may be rebuilding it)."
                ) from None
            if self._conn is not None and ino == self._ino:
                return False
            self._drop_locked()
            self._connect_locked()
            return True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._drop_locked()

    def __enter__(self) -> ChatDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run one statement and fetch every row (so no read transaction outlives the call).

        `SQLITE_BUSY`/locked is retried with backoff for about two seconds in all (on top of the
        connection's busy timeout). A TEXT value that is not valid UTF-8 (a sender's client can write one)
        fails the whole statement in Python's sqlite3, so the statement is run again with invalid bytes
        decoded as U+FFFD (`_lenient`): one bad value never hides the rows around it. Other errors close
        the connection, so the next call reopens it. Raises `ChatDBError`."""
        with self._lock:
            for delay in (*BUSY_BACKOFF_S, None):
                try:
                    if self._conn is None:
                        self._connect_locked()
                    assert self._conn is not None
                    return self._conn.execute(sql, params).fetchall()
                except sqlite3.OperationalError as exc:
                    if str(exc).startswith("Could not decode to UTF-8"):
                        return self._lenient_locked(sql, params)
                    busy = "locked" in str(exc) or "busy" in str(exc)
                    if busy and delay is not None:
                        time.sleep(delay)
                        continue
                    self._drop_locked()
                    raise ChatDBError(f"Reading {self.path} failed: {exc}") from exc
                except sqlite3.DatabaseError as exc:
                    self._drop_locked()
                    raise ChatDBError(f"Reading {self.path} failed: {exc}") from exc
            raise AssertionError("unreachable")

    def _lenient_locked(self, sql: str, params: Sequence[object]) -> list[Row]:
        """Run `sql` with TEXT values decoded leniently (invalid UTF-8 → U+FFFD); said once per connection."""
        assert self._conn is not None
        if not self._told_lenient:
            self._told_lenient = True
            log.warning("chat.db holds text that is not valid UTF-8; reading it with replacement characters")
        self._conn.text_factory = _lenient
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            self._drop_locked()
            raise ChatDBError(f"Reading {self.path} failed: {exc}") from exc
        finally:
            if self._conn is not None:
                self._conn.text_factory = str

    def _probe_locked(self, table: str) -> frozenset[str]:
        assert self._conn is not None
        rows = self._conn.execute(f"PRAGMA table_info({table})").fetchall()
        if not rows:
            raise ChatDBError(f"{self.path} has no `{table}` table: it is not a Messages database.")
        return frozenset(r[1] for r in rows)

    @property
    def message_columns(self) -> frozenset[str]:
        """Column names of `message` in this database (as probed at open)."""
        return self._columns

    def data_version(self) -> int:
        """`PRAGMA data_version`: changes whenever another connection commits (cheap change test)."""
        return int(self._query("PRAGMA data_version")[0][0])

    # -- messages ------------------------------------------------------------------------------
    def _build_select(self) -> str:
        cols = [f"m.{c}" if c in self._columns else f"NULL AS {c}" for c in _OPTIONAL_MESSAGE_COLUMNS]
        return (
            "SELECT m.ROWID, m.guid, h.id, c.guid, c.style, " + ", ".join(cols) + " FROM message m"
            " LEFT JOIN handle h ON h.ROWID = m.handle_id"
            " LEFT JOIN chat c ON c.ROWID ="
            " (SELECT chat_id FROM chat_message_join WHERE message_id = m.ROWID ORDER BY chat_id LIMIT 1)"
        )

    def max_rowid(self) -> int:
        """`MAX(message.ROWID)`, 0 for an empty table (the start-up watermark)."""
        return int(self._query("SELECT COALESCE(MAX(ROWID), 0) FROM message")[0][0])

    def messages_after(self, rowid: int, limit: int = 500) -> list[Message]:
        """Rows with ROWID > `rowid`, oldest first, at most `limit` (primary-key range scan)."""
        rows = self._query(self._select + " WHERE m.ROWID > ? ORDER BY m.ROWID LIMIT ?", (rowid, limit))
        return self._decode_rows(rows)

    def anchor(self, rowid: int) -> tuple[int, str | None]:
        """`(sequence, guid)`: the highest `message` ROWID ever handed out (`sqlite_sequence`: `message` is
        `INTEGER PRIMARY KEY AUTOINCREMENT` in every release, so deleting rows never lowers it; a rebuilt or
        restored file can), and the GUID of the row `rowid` (None when that row was deleted). Falls back to
        `MAX(ROWID)` where `sqlite_sequence` has no `message` entry. One statement, two primary-key lookups:
        the reader runs it before each read to notice a file rebuilt, renumbered or restored in place."""
        ((seq, top, guid),) = self._query(
            "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'message'), (SELECT MAX(ROWID) FROM message),"
            " (SELECT guid FROM message WHERE ROWID = ?)",
            (rowid,),
        )
        return max(int(seq or 0), int(top or 0)), (str(guid) if guid is not None else None)

    def rowid_of(self, guid: str) -> int | None:
        """The ROWID of the message with this GUID (`message.guid` is UNIQUE), or None."""
        row = self._query("SELECT ROWID FROM message WHERE guid = ?", (guid,))
        return int(row[0][0]) if row else None

    def first_rowid_since(self, apple_ns: int) -> int | None:
        """The lowest ROWID dated at or after `apple_ns` (Apple epoch ns), via `message_idx_date`."""
        row = self._query("SELECT MIN(ROWID) FROM message WHERE date >= ?", (apple_ns,))
        return int(row[0][0]) if row and row[0][0] is not None else None

    def catchup_start(self, after: int, upto: int, since_ns: int, limit: int) -> int:
        """Where catching up after a restart begins: the lowest ROWID among the newest `limit` rows in
        (`after`, `upto`] dated at or after `since_ns`; `upto + 1` when there are none. One backward
        primary-key scan from `upto`, stopping after `limit` matches."""
        if limit <= 0:
            return upto + 1
        rows = self._query(
            "SELECT ROWID FROM message WHERE ROWID > ? AND ROWID <= ? AND date >= ? ORDER BY ROWID DESC LIMIT ?",
            (after, upto, since_ns, limit),
        )
        return int(rows[-1][0]) if rows else upto + 1

    def messages_by_rowid(self, rowids: Iterable[int], on_batch: Callable[[int], None] | None = None) -> list[Message]:
        """The rows with these ROWIDs, in ROWID order (missing ones are skipped), read 500 at a time;
        `on_batch(n)` is called after each batch."""
        ids = sorted(set(rowids))
        out: list[Message] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out += self._decode_rows(self._query(self._select + f" WHERE m.ROWID IN ({marks}) ORDER BY m.ROWID", chunk))
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def recent(self, limit: int = 20, on_batch: Callable[[int], None] | None = None) -> list[Message]:
        """The newest `limit` rows of the whole database, oldest first (primary-key scan backwards).
        `on_batch(n)` is called after each batch of n decoded rows (progress display)."""
        ids = self._query("SELECT ROWID FROM message ORDER BY ROWID DESC LIMIT ?", (limit,))
        return self.messages_by_rowid((r[0] for r in ids), on_batch)

    def message_by_guid(self, guid: str) -> Message | None:
        """The row with this GUID (`message.guid` is UNIQUE), or None."""
        found = self._decode_rows(self._query(self._select + " WHERE m.guid = ?", (guid,)))
        return found[0] if found else None

    def last_messages(
        self, chat_guid: str, limit: int = 50, on_batch: Callable[[int], None] | None = None
    ) -> list[Message]:
        """The newest `limit` messages of a chat, returned oldest first.

        Uses `chat_message_join (chat_id, message_date, message_id)`."""
        chat_ids = [r[0] for r in self._query("SELECT ROWID FROM chat WHERE guid = ?", (chat_guid,))]
        if not chat_ids or limit <= 0:
            return []
        marks = ",".join("?" * len(chat_ids))
        ids = self._query(
            f"SELECT message_id FROM chat_message_join WHERE chat_id IN ({marks})"
            " ORDER BY message_date DESC, message_id DESC LIMIT ?",
            (*chat_ids, limit),
        )
        msgs = self.messages_by_rowid((r[0] for r in ids), on_batch)
        msgs.sort(key=lambda m: (m.date or APPLE_EPOCH, m.rowid))
        return msgs

    def _decode_rows(self, rows: list[Row]) -> list[Message]:
        attachments = self._attachments_for(
            [r[0] for r in rows if r[_LEAD + _IDX["cache_has_attachments"]] or r[_LEAD + _IDX["attributedBody"]]]
        )
        out: list[Message] = []
        for r in rows:
            try:
                out.append(self._decode_row(r, attachments.get(r[0], ())))
            except Exception as exc:  # one row a sender (or a bug) made undecodable never stops the others
                log.warning("message ROWID %s cannot be decoded (%s: %s); skipping it", r[0], type(exc).__name__, exc)
                out.append(_unreadable(r))
        return out

    def _decode_row(self, r: Row, attachments: tuple[Attachment, ...]) -> Message:
        rowid, guid, handle, chat_guid, chat_style = r[:_LEAD]
        col = r[_LEAD:]

        def get(name: str) -> Any:
            """The value of one `_OPTIONAL_MESSAGE_COLUMNS` column, as SQLite stored it (of any type)."""
            return col[_IDX[name]]

        raw, transfers = _raw_text(get("text"), get("attributedBody"))
        text = clean_text(raw)
        placeholders = raw.count(OBJECT_REPLACEMENT) if raw and not get("balloon_bundle_id") else 0
        is_from_me = bool(get("is_from_me"))
        sender = _sender_of(get("account")) if is_from_me else handle
        assoc_type = int(get("associated_message_type") or 0)
        item_type = int(get("item_type") or 0)
        thread = get("thread_originator_guid") or None
        date_edited = get("date_edited")
        date_retracted = get("date_retracted")
        kind = classify(
            text=text,
            has_attachments=bool(attachments) or placeholders > 0 or bool(transfers),
            assoc_type=assoc_type,
            item_type=item_type,
            thread_originator_guid=thread,
            date_edited=date_edited,
            date_retracted=date_retracted,
        )
        emoji = get("associated_message_emoji")
        return Message(
            rowid=rowid,
            guid=guid,
            chat_guid=chat_guid,
            chat_style=chat_style,
            handle=handle,
            sender=sender,
            service=str(get("service") or ""),
            is_from_me=is_from_me,
            date=from_apple(get("date")),
            text=text,
            kind=kind,
            attachments=attachments,
            tapback=tapback_of(assoc_type, get("associated_message_guid"), emoji),
            reply_to=message_guid(thread),
            item_type=item_type,
            group_action_type=int(get("group_action_type") or 0),
            group_title=get("group_title") or None,
            share_status=bool(get("share_status")),
            date_edited=from_apple(date_edited),
            transfer_guids=transfers,
            is_audio_message=bool(get("is_audio_message")),
            placeholders=placeholders,
        )

    def _attachments_for(self, message_ids: list[int]) -> dict[int, tuple[Attachment, ...]]:
        if not message_ids:
            return {}
        out: dict[int, list[Attachment]] = {}
        for i in range(0, len(message_ids), 500):
            chunk = message_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT j.message_id, {self._attachment_cols()} FROM message_attachment_join j"
                f" JOIN attachment a ON a.ROWID = j.attachment_id WHERE j.message_id IN ({marks})"
                " ORDER BY j.message_id, a.ROWID",
                chunk,
            )
            for mid, *cols in rows:
                out.setdefault(mid, []).append(_attachment(cols))
        return {k: tuple(v) for k, v in out.items()}

    def attachments_of(self, message_rowids: Iterable[int]) -> dict[int, tuple[Attachment, ...]]:
        """`{message ROWID: its joined attachments in attachment ROWID order}` for these messages (messages
        without any are left out), read 500 at a time through an index of `message_attachment_join` on
        `message_id`. Used to see files Messages joins to a message after it was delivered."""
        return self._attachments_for(sorted(set(message_rowids)))

    def _attachment_cols(self) -> str:
        sticker = "a.is_sticker" if "is_sticker" in self._attachment_columns else "0"
        return (
            "a.ROWID, a.guid, a.filename, a.mime_type, a.uti, a.transfer_name, a.transfer_state, a.total_bytes,"
            f" {sticker}"
        )

    def attachments_by_rowid(self, rowids: Iterable[int]) -> list[Attachment]:
        """The `attachment` rows with these ROWIDs, in ROWID order (missing ones are skipped): one
        primary-key lookup per id, in chunks of 500. Used to see downloads finish."""
        ids = sorted(set(rowids))
        out: list[Attachment] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT {self._attachment_cols()} FROM attachment a WHERE a.ROWID IN ({marks}) ORDER BY a.ROWID", chunk
            )
            out += [_attachment(r) for r in rows]
        return out

    def edit_states(self, rowids: Iterable[int]) -> dict[int, tuple[str, int, int]]:
        """`{ROWID: (guid, date_edited, date_retracted)}` (Apple epoch ns, NULL read as 0) for these
        message rows: one primary-key lookup per id. Edits and unsends change a row in place (Ventura+), so a
        watermark never sees them. Empty before Ventura (no such columns) and for missing rows."""
        if "date_edited" not in self._columns or "date_retracted" not in self._columns:
            return {}
        ids = sorted(set(rowids))
        out: dict[int, tuple[str, int, int]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for rowid, guid, edited, retracted in self._query(
                f"SELECT ROWID, guid, date_edited, date_retracted FROM message WHERE ROWID IN ({marks})", chunk
            ):
                out[int(rowid)] = (str(guid), int(edited or 0), int(retracted or 0))
        return out

    # -- chats and handles ---------------------------------------------------------------------
    _CHAT_SELECT = "SELECT ROWID, guid, style, chat_identifier, service_name, display_name FROM chat"

    def chat(self, guid: str) -> Chat | None:
        """The chat with this GUID (the lowest ROWID if several), or None."""
        rows = self._query(self._CHAT_SELECT + " WHERE guid = ? ORDER BY ROWID LIMIT 1", (guid,))
        return Chat(*rows[0]) if rows else None

    def chats(self, limit: int = 1000) -> list[Chat]:
        """All chats, by ROWID, at most `limit`."""
        return [Chat(*r) for r in self._query(self._CHAT_SELECT + " ORDER BY ROWID LIMIT ?", (limit,))]

    def latest_rowid_in(self, chat_guid: str) -> int:
        """The highest message ROWID joined to the chat(s) with this GUID, 0 when none: ROWIDs grow in the
        order Messages writes rows on this Mac, so unlike `date` (the sender's clock) they say which chat
        was used last. One primary-key lookup (`chat_message_join (chat_id, message_id)`) per chat row."""
        rows = self._query(
            "SELECT MAX(j.message_id) FROM chat c JOIN chat_message_join j ON j.chat_id = c.ROWID WHERE c.guid = ?",
            (chat_guid,),
        )
        return int(rows[0][0] or 0) if rows else 0

    def participants(self, chat_guid: str) -> list[str]:
        """`handle.id` of every member of the chat(s) with this GUID (the owner is not listed)."""
        rows = self._query(
            "SELECT DISTINCT h.id FROM chat c JOIN chat_handle_join j ON j.chat_id = c.ROWID"
            " JOIN handle h ON h.ROWID = j.handle_id WHERE c.guid = ? ORDER BY h.id LIMIT 1000",
            (chat_guid,),
        )
        return [r[0] for r in rows]

    def chats_of_handle(self, handle: str, limit: int = 100) -> list[Chat]:
        """Chats the handle belongs to, compared with `normalize_handle` (email case, phone digits).

        `handle` is small (one row per address and service), so normalising it in Python is cheap;
        the chat lookup then uses the `chat_handle_join_idx_handle_id` index."""
        ids = self._handle_index().get(normalize_handle(handle), [])
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._query(
            "SELECT DISTINCT c.ROWID, c.guid, c.style, c.chat_identifier, c.service_name, c.display_name"
            f" FROM chat_handle_join j JOIN chat c ON c.ROWID = j.chat_id WHERE j.handle_id IN ({marks})"
            " ORDER BY c.ROWID LIMIT ?",
            (*ids, limit),
        )
        return [Chat(*r) for r in rows]

    def _handle_index(self) -> dict[str, list[int]]:
        """normalised handle → `handle` ROWIDs, rebuilt only when the table changed (its row count or
        highest ROWID moved): `chats_of_handle` is called once per allowed handle per history read."""
        (key,) = self._query("SELECT COUNT(*), COALESCE(MAX(ROWID), 0) FROM handle")
        if self._handles_key != key:
            index: dict[str, list[int]] = {}
            for hid, value in self._query("SELECT ROWID, id FROM handle"):
                index.setdefault(normalize_handle(str(value)), []).append(int(hid))
            self._handles, self._handles_key = index, key
        return self._handles

    def text_of(self, guid: str) -> str | None:
        """The text of the message with this GUID (from `text`, else the decoded attributedBody,
        placeholders removed), or None. Reads two columns only: for quoting reply and tapback targets."""
        body = "attributedBody" if "attributedBody" in self._columns else "NULL"
        rows = self._query(f"SELECT text, {body} FROM message WHERE guid = ?", (guid,))
        if not rows:
            return None
        text, blob = rows[0]
        if not text and blob:
            decoded = decode_attributed_body(bytes(blob))
            text = decoded.text if decoded else None
        return clean_text(text)

    def owner_handles(self, scan_rows: int = OWNER_SCAN_ROWS) -> frozenset[str]:
        """The owner's own addresses, normalised (design §5).

        Sources: `account` of sent rows (`is_from_me = 1`) and `destination_caller_id` (the address a
        row was received on or sent from) among the newest `scan_rows` messages, plus
        `chat.account_login`. Never `chat.last_addressed_handle`, which SMS short codes pollute.
        Cost: one primary-key range scan of `scan_rows` rows, whatever the database size.
        """
        top = self.max_rowid()
        cols = self._columns
        acct = "account" if "account" in cols else "NULL"
        dest = "destination_caller_id" if "destination_caller_id" in cols else "NULL"
        rows = self._query(
            f"SELECT DISTINCT CASE WHEN is_from_me = 1 THEN {acct} END, {dest} FROM message WHERE ROWID > ?",
            (top - scan_rows,),
        )
        found: set[str] = set()
        for account, destination in rows:
            for value in (account, destination):
                if value and strip_account_prefix(str(value)):
                    found.add(normalize_handle(str(value)))
        for (login,) in self._query("SELECT DISTINCT account_login FROM chat LIMIT 100"):
            if login and strip_account_prefix(str(login)):
                found.add(normalize_handle(str(login)))
        return frozenset(found)

    def handle_countries(self, limit: int = 5) -> list[str]:
        """Values of `handle.country` (the country Messages filed each address under: `us`, `gb`, … in
        real databases, case varies), most frequent first, at most `limit`. One scan of the small `handle`
        table (the column exists in every release since Monterey). Raises `ChatDBError`."""
        rows = self._query(
            "SELECT country FROM handle WHERE country IS NOT NULL AND country != ''"
            " GROUP BY lower(country) ORDER BY COUNT(*) DESC, country LIMIT ?",
            (limit,),
        )
        return [str(r[0]) for r in rows]

    def iter_all(self, batch: int = 1000) -> Iterator[Message]:
        """Every message in ROWID order, fetched in bounded batches (for tools and scripts)."""
        last = 0
        while True:
            page = self.messages_after(last, batch)
            if not page:
                return
            yield from page
            last = page[-1].rowid

    # -- send confirmation (receipts.py) ---------------------------------------------------------
    def _send_state_cols(self, alias: str) -> str:
        """`error, is_sent, is_delivered, date_delivered` of `alias`, each NULL-safe; a column the release
        lacks reads as 0 (all four exist from Monterey to Tahoe in the fixtures' schemas)."""
        cols = ("error", "is_sent", "is_delivered", "date_delivered")
        return ", ".join(f"COALESCE({alias}.{c}, 0)" if c in self._columns else "0" for c in cols)

    def sent_rows(
        self, chat_guids: Sequence[str], after_rowid: int, limit: int = 200
    ) -> list[tuple[int, str, str, str, int, bool, bool, int, int]]:
        """The owner's rows (`is_from_me = 1`) joined to the chat(s) with any of these GUIDs, with ROWID >
        `after_rowid`, oldest first, at most `limit`: the rows Messages writes for what we sent.

        Each is `(rowid, guid, chat_guid, text, error, is_sent, is_delivered, date_delivered, date)`: `text` from
        `text`, else the decoded attributedBody (macOS 26 leaves `text` NULL on sent rows, openclaw/imsg#249),
        U+FFFC placeholders removed and ends stripped (`clean_text`); `error` is `message.error` (0 = none;
        non-zero is the red "Not Delivered"); `date_delivered` and `date` are Apple epoch ns (0 when unset).
        NULL reads as 0/False.

        Index: `chat.guid` (UNIQUE) finds the chat rows, then the primary key of `chat_message_join`
        `(chat_id, message_id)` is range-scanned from `after_rowid` for each, and each `message` row is one
        ROWID lookup; only rows written since `after_rowid` in those chats are visited (and sorted, a handful, in a
        temporary B-tree: EXPLAIN QUERY PLAN on the Monterey and Tahoe schemas). A row whose
        `chat_message_join` is not committed yet (design §5), or still `is_from_me = 0` (Messages inserts a
        sent row with 0 and updates it to 1 shortly after, openclaw/imsg#87), shows up in a later call."""
        guids = list(dict.fromkeys(chat_guids))
        if not guids or limit <= 0:
            return []
        marks = ",".join("?" * len(guids))
        text = "m.text" if "text" in self._columns else "NULL"
        body = "m.attributedBody" if "attributedBody" in self._columns else "NULL"
        date = "COALESCE(m.date, 0)" if "date" in self._columns else "0"
        rows = self._query(
            f"SELECT m.ROWID, m.guid, c.guid, {text}, {body}, {self._send_state_cols('m')}, {date}"
            " FROM chat c JOIN chat_message_join j ON j.chat_id = c.ROWID JOIN message m ON m.ROWID = j.message_id"
            f" WHERE c.guid IN ({marks}) AND j.message_id > ? AND m.is_from_me = 1 ORDER BY j.message_id LIMIT ?",
            (*guids, after_rowid, limit),
        )
        return [self._sent_row(r) for r in rows]

    @staticmethod
    def _sent_row(r: Row) -> tuple[int, str, str, str, int, bool, bool, int, int]:
        """One `sent_rows` result from its selected columns (text decoded; a value of an unexpected type,
        which only a damaged file holds, reads as 0 / "")."""
        rowid, guid, chat_guid, text, blob, error, is_sent, delivered, date_delivered, when = r
        if not (isinstance(text, str) and text) and isinstance(blob, bytes):
            decoded = decode_attributed_body(blob)
            text = decoded.text if decoded else None
        num = [v if isinstance(v, int) else 0 for v in (error, is_sent, delivered, date_delivered, when)]
        return (
            int(rowid),
            str(guid),
            str(chat_guid),
            clean_text(text if isinstance(text, str) else None),
            num[0],
            bool(num[1]),
            bool(num[2]),
            num[3],
            num[4],
        )

    def send_states(self, rowids: Iterable[int]) -> dict[int, tuple[int, bool, bool, int]]:
        """`{ROWID: (error, is_sent, is_delivered, date_delivered)}` for these message rows (missing ones are
        left out; NULL reads as 0/False; `date_delivered` in Apple epoch ns). Messages updates these columns in
        place after a send (`error` turns non-zero when a send fails, BlueBubbles' `outgoingMessageListener`
        re-reads rows by ROWID for that), so a watermark never sees the change. Index: the `message` ROWID
        primary key, one lookup per id, 500 per statement."""
        ids = sorted(set(rowids))
        out: dict[int, tuple[int, bool, bool, int]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for rowid, *cols in self._query(
                f"SELECT m.ROWID, {self._send_state_cols('m')} FROM message m WHERE m.ROWID IN ({marks})", chunk
            ):
                error, is_sent, delivered, date_delivered = (v if isinstance(v, int) else 0 for v in cols)
                out[int(rowid)] = (error, bool(is_sent), bool(delivered), date_delivered)
        return out


_LEAD = 5
"""Columns `ChatDB._build_select` puts before `_OPTIONAL_MESSAGE_COLUMNS`: message ROWID and GUID, handle, chat
GUID and style."""

_IDX = {name: i for i, name in enumerate(_OPTIONAL_MESSAGE_COLUMNS)}


def _raw_text(text: Any, body: Any) -> tuple[str | None, tuple[str, ...]]:
    """A row's text before `clean_text` (the `text` column, else the decoded `attributedBody`; None when neither
    has any) and the attributedBody's file-transfer GUIDs."""
    raw = text if isinstance(text, str) and text else None
    if not body:
        return raw, ()
    decoded = decode_attributed_body(bytes(body))
    if decoded is None:
        return raw, ()
    return (decoded.text if raw is None else raw), decoded.file_transfer_guids


def _sender_of(account: Any) -> str | None:
    """Who wrote a sent row: the owner's address in its `account` (service prefix stripped, normalised), or
    None when that holds none. (A sent row's `handle` is the other party, never its sender.)"""
    acct = strip_account_prefix(str(account)) if account else ""
    return normalize_handle(acct) if acct else None


def _attachment(cols: Sequence[Any]) -> Attachment:
    """An `Attachment` from the columns `ChatDB._attachment_cols` selects."""
    arow, aguid, fname, mime, uti, tname, tstate, size, is_sticker = cols
    return Attachment(
        rowid=int(arow),
        guid=str(aguid),
        path=os.path.expanduser(str(fname)) if fname else None,
        mime_type=mime,
        uti=uti,
        transfer_name=tname,
        transfer_state=int(tstate or 0),
        total_bytes=int(size or 0),
        is_sticker=bool(is_sticker),
    )


def _lenient(raw: bytes) -> str:
    """sqlite3 `text_factory`: UTF-8 with invalid bytes replaced by U+FFFD."""
    return raw.decode("utf-8", "replace")


def _unreadable(r: Row) -> Message:
    """The stand-in for a row `_decode_row` could not decode: its ROWID (so the watermark moves past it), its
    GUID and chat if they are plain values, kind `UNREADABLE`."""
    rowid, guid, _handle, chat_guid, chat_style = r[:_LEAD]
    return Message(
        rowid=int(rowid),
        guid=guid if isinstance(guid, str) else f"unreadable-{rowid}",
        chat_guid=chat_guid if isinstance(chat_guid, str) else None,
        chat_style=chat_style if isinstance(chat_style, int) else None,
        handle=None,
        sender=None,
        service="",
        is_from_me=False,
        date=None,
        text="",
        kind=Kind.UNREADABLE,
    )


def is_self_chat(chat: Chat | None, participants: Sequence[str], owner: frozenset[str]) -> bool:
    """True when `chat` is a DM with the owner: its identifier or every participant is one of the
    owner's handles (email or phone number, design §5). `any;-;` GUIDs count like `iMessage;-;`."""
    if chat is None or not chat.is_dm or not owner:
        return False
    if normalize_handle(chat.chat_identifier) in owner:
        return True
    return bool(participants) and all(normalize_handle(p) in owner for p in participants)


def self_chats(db: ChatDB, owner: frozenset[str]) -> list[str]:
    """The owner's self-chat GUIDs (DMs with one of their handles: one per address they text themself on,
    e.g. an email and a phone number), the one in use first: by the newest message ROWID in each (ROWIDs
    grow in the order this Mac writes rows; `date` is a sender's clock), then by GUID. Empty when there is
    none. Raises `ChatDBError`."""
    found = {
        chat.guid
        for handle in sorted(owner)
        for chat in db.chats_of_handle(handle)
        if is_self_chat(chat, db.participants(chat.guid), owner)
    }
    return sorted(found, key=lambda guid: (-db.latest_rowid_in(guid), guid))
