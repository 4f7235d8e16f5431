"""Names from the owner's macOS Contacts: handle → name for events, and name → handles for `access allow`.

Owns every read of the Contacts store, the index that answers `name_for` on the delivery hot path, the
resolver behind `access allow "Jane Appleseed"` (`resolve`), and `meta_name`, the one way a contact name
becomes a meta value.

The store (design §8). Contacts keeps Core Data SQLite files, readable with the same Full Disk Access as
chat.db: `~/Library/Application Support/AddressBook/AddressBook-v22.abcddb` ("On My Mac") and one
`Sources/<UUID>/AddressBook-v22.abcddb` per account (iCloud, Google, Exchange…); names are merged from all
of them, main store first, then the sources by folder name. Public readers that rely on this layout: BlueBubbles
(BlueBubblesApp/bluebubbles-server `packages/server/src/server/databases/contacts/index.ts`), contacts-sql-py
(SJFrontinus/contacts-sql-py `contacts.py`), py-abemails (bdesham/py-abemails `py-abemails.py`, the main file).

Exactly these columns are read (`STORE_COLUMNS`), each probed first with `PRAGMA table_info`:
- `ZABCDRECORD`: `Z_PK`, `ZFIRSTNAME`, `ZLASTNAME`, `ZORGANIZATION` — people, and also groups and
  containers, whose name columns are empty (contacts-sql-py `contacts.py` selects people with
  `Z_ENT = 22` and groups with `Z_ENT = 19`, whose name is in `ZNAME`); rows without a name are skipped;
- `ZABCDPHONENUMBER`: `ZOWNER` (→ `ZABCDRECORD.Z_PK`), `ZFULLNUMBER`, the number as typed, in any format
  (BlueBubbles `entity/PhoneNumber.ts`: `ZOWNER`, `ZFULLNUMBER`, `ZLABEL`, `ZLASTFOURDIGITS`, …);
- `ZABCDEMAILADDRESS`: `ZOWNER`, `ZADDRESS` (contacts-sql-py `contacts.py`; BlueBubbles `entity/Email.ts`
  reads its sibling `ZADDRESSNORMALIZED`).
A file lacking one of them gives no names (one log line naming the missing table or column).

Reading: `file:…?mode=ro` (never a write; like chat.db, SQLite may still create the `-wal`/`-shm` side files a
WAL database needs), one short read transaction per load, closed before the load returns, and the connection
closed with it. A locked store waits `BUSY_TIMEOUT_MS` (SQLite's busy timeout), then is skipped for this round:
the names read from it before are kept and the next check reads it again.

Matching. Handles (chat.db's `handle.id`) go through `handles.normalize_handle`. A stored number matches a
handle when `handles.parse_handle(number, region)` gives the same E.164 number, so `(415) 555-0132`,
`+1 415 555 0132` and `4155550132` all name `+14155550132` in region `US`. Numbers `parse_handle` refuses fall
back to `normalize_handle` only when that cannot guess a country wrongly: SMS short codes (6 digits or fewer) and
numbers written with `+`. Parsing costs about 25 µs a number, so a load does not parse: the index files numbers
under their last 7 digits (which every format of a number ends with) and parses a number only when a handle with
those digits is looked up; results are memoised per index. Emails compare case-insensitively.

Freshness. `refresh()` costs a listing of `Sources/` and two `stat`s per store (database and `-wal`: inode,
size, mtime in ns; an empty `-wal` counts as none). A store is re-read only when those changed, and a lookup
checks at most once per `check_interval` seconds of the injected clock. A missing or unreadable store means no
names from it and one log line when that becomes so (not one per lookup); `name_for` never raises.

Threads: lookups never wait for a reload another thread is doing (they use the previous index), except the very
first, which waits for the first load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import stat
import threading
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

from .clock import SYSTEM, Clock
from .handles import HandleError, Region, normalize_handle, parse_handle, valid_region

log = logging.getLogger(__name__)

_Row: TypeAlias = tuple[Any, ...]
"""One fetched row of a Contacts store: SQLite values are typed per row, so each is checked where it is read."""

DEFAULT_ADDRESSBOOK_DIR = Path("~/Library/Application Support/AddressBook")
"""Where Contacts keeps its stores (the main one, and `Sources/<UUID>/` per account)."""

STORE_NAME = "AddressBook-v22.abcddb"
"""The file name of every Contacts store (the schema version is part of the name)."""

SOURCES = "Sources"
"""The folder, under the AddressBook folder, holding one folder per account, each with its own store."""

STORE_COLUMNS: dict[str, tuple[str, ...]] = {
    "ZABCDRECORD": ("Z_PK", "ZFIRSTNAME", "ZLASTNAME", "ZORGANIZATION"),
    "ZABCDPHONENUMBER": ("ZOWNER", "ZFULLNUMBER"),
    "ZABCDEMAILADDRESS": ("ZOWNER", "ZADDRESS"),
}
"""The only tables and columns read (see the module docstring for their sources)."""

BUSY_TIMEOUT_MS = 200
"""How long SQLite waits on a locked store before the read is skipped for this round."""

CHECK_INTERVAL_S = 2.0
"""Lookups check the stores for changes at most this often (seconds on the injected clock)."""

META_NAME_LIMIT = 64
"""The longest `meta_name` result, in code points, the ellipsis included."""

SUFFIX_DIGITS = 7
"""Stored numbers are filed under their last this many digits (all of them when shorter)."""

MEMO_LIMIT = 50_000
"""The per-index memo of looked-up handles is emptied when it reaches this many entries."""

_SHORT_CODE_DIGITS = 6
_NON_DIGITS = re.compile(r"\D+")
_SQLITE_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (sqlite.org/rescode.html)


# --- public records and errors -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contact:
    """A contact as `resolve` returns it: the display name ("First Last", else the organisation) and the
    handles `access allow` accepts for it, in store order: E.164 phone numbers, then lowercased emails."""

    name: str
    handles: tuple[str, ...]

    def describe(self) -> str:
        """`Jane Appleseed (+14155550132, jane@example.com)`, on one line and safe for a terminal."""
        return f"{meta_name(self.name)} ({', '.join(self.handles)})"


class ContactLookupError(ValueError):
    """`resolve` found no single contact. `str(err)` is a paragraph for the user; `query` is what was asked;
    `candidates` the contacts worth showing (the ambiguous ones, or close matches of an unknown name)."""

    def __init__(self, message: str, query: str, candidates: Sequence[Contact] = ()) -> None:
        super().__init__(message)
        self.query = query
        self.candidates = tuple(candidates)


class ContactNotFound(ContactLookupError):
    """No contact with a phone number or email has that name (`candidates`: up to 5 close matches)."""


class AmbiguousContact(ContactLookupError):
    """Several contacts match equally well (`candidates`: all of them)."""


class ContactsUnavailable(ContactLookupError):
    """Contacts lookup is off, or no store can be read."""


# --- meta values -----------------------------------------------------------------------------------------

_KEPT_FORMAT = frozenset("\u200c\u200d")  # ZWNJ (Persian, Indic names), ZWJ (emoji sequences)
_ATTRIBUTE_SAFE = str.maketrans({'"': "\u201d", "'": "\u2019", "<": "\u2039", ">": "\u203a", "`": "\u2019"})
_EXTENDERS = frozenset("\u200d\ufe0e\ufe0f") | {chr(c) for c in range(0x1F3FB, 0x1F400)}


def meta_name(name: str, limit: int = META_NAME_LIMIT) -> str:
    """`name` made safe as a meta value (`user_name="…"` in the `<channel …>` tag Claude reads).

    A contact name is the owner's data but still untrusted text: cards arrive from shared vCards and synced
    accounts. So:
    - control characters (C0/C1, tab and every line break: LF, CR, U+0085, U+2028, U+2029) become spaces, and
      invisible format characters (bidi overrides and isolates, zero-width spaces, BOM) are dropped, keeping
      only ZWJ and ZWNJ, which emoji sequences and some scripts need;
    - characters that could end the attribute or open a tag become typographic look-alikes: `"` → `”`,
      `'` and `` ` `` → `’` (so `O'Brien` reads `O’Brien`), `<` → `‹`, `>` → `›`;
    - white space is collapsed to single spaces and trimmed;
    - longer than `limit` code points → cut to `limit - 1` and `…` appended, never inside a combining sequence,
      an emoji ZWJ sequence or before a variation selector or skin-tone modifier.

    Returns "" when nothing printable is left (the caller then omits the key). Never raises."""
    if name.isprintable() and not any(ch in name for ch in "\"'<>`") and "  " not in name:
        text = name.strip()
    else:
        text = " ".join(_visible(name).translate(_ATTRIBUTE_SAFE).split())
    if len(text) <= limit:
        return text
    cut = max(limit - 1, 1)
    while cut > 1 and (_extends(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    return text[:cut].rstrip() + "…"


def _visible(text: str) -> str:
    out: list[str] = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif cat != "Cf" or ch in _KEPT_FORMAT:
            out.append(ch)
    return "".join(out)


def _extends(ch: str) -> bool:
    """True for a character that belongs to the one before it (combining mark, ZWJ, selector, modifier)."""
    return ch in _EXTENDERS or unicodedata.category(ch) in ("Mn", "Mc", "Me")


# --- one store ---------------------------------------------------------------------------------------------


class _Card(NamedTuple):
    """A named contact with at least one phone number or email, as one store holds it. `phones` are the
    `ZFULLNUMBER` texts as typed (stripped), `emails` normalised (lowercased); `first`/`last`/`org` have their
    white space collapsed ("" when empty). A NamedTuple: a load makes thousands, and a frozen dataclass costs
    three times as much to create."""

    name: str
    first: str
    last: str
    org: str
    phones: tuple[str, ...]
    emails: tuple[str, ...]


class StoreError(Exception):
    """A store gives no names (`str(err)` is the log line: path and reason, never contact data)."""


class StoreBusy(StoreError):
    """A store stayed locked for `BUSY_TIMEOUT_MS`; the names read from it before are kept."""


FileState = tuple[int, int, int, tuple[int, int, int] | None]
"""(inode, size, mtime_ns) of a store, plus the same for its `-wal` file (None when absent or empty)."""


def file_state(path: Path) -> FileState | None:
    """The change signature of the store at `path` (`FileState`), or None when there is no such file.
    Raises OSError when it cannot be looked at (no Full Disk Access: `PermissionError`)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    try:
        wst = os.stat(f"{path}-wal")
        wal = (wst.st_ino, wst.st_size, wst.st_mtime_ns) if wst.st_size else None
    except OSError:
        wal = None
    return (st.st_ino, st.st_size, st.st_mtime_ns, wal)


def _uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path)) + "?mode=ro"


def read_store(path: Path) -> list[_Card]:
    """The named contacts with a handle in the store at `path`, in `Z_PK` order.

    Opens `file:…?mode=ro`, checks `STORE_COLUMNS` with `PRAGMA table_info`, reads the three tables in one read
    transaction and closes the connection. Raises `StoreBusy` when the store stays locked, `StoreError` for
    anything else (a folder, not SQLite, a missing table or column, an I/O error)."""
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise StoreError(f"{path} is a folder, not a Contacts database: no names from it")
    except OSError as exc:
        raise StoreError(f"cannot see {path} ({exc.strerror or exc}): no names from it") from exc
    try:
        conn = sqlite3.connect(_uri(path), uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path} ({exc}): no names from it") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        conn.execute("PRAGMA query_only = 1")
        missing = _missing_columns(conn)
        if missing:
            raise StoreError(f"{path} has no {', '.join(missing)}: no names from it")
        conn.execute("BEGIN")
        try:
            records = _fetch(conn, "SELECT Z_PK, ZFIRSTNAME, ZLASTNAME, ZORGANIZATION FROM ZABCDRECORD ORDER BY Z_PK")
            phones = _fetch(conn, "SELECT ZOWNER, ZFULLNUMBER FROM ZABCDPHONENUMBER WHERE ZFULLNUMBER IS NOT NULL")
            emails = _fetch(conn, "SELECT ZOWNER, ZADDRESS FROM ZABCDEMAILADDRESS WHERE ZADDRESS IS NOT NULL")
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("COMMIT")
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None) or 0
        if code & 0xFF in _SQLITE_BUSY or "locked" in str(exc):
            raise StoreBusy(f"{path} is locked ({exc}); keeping the names read before, retrying later") from exc
        raise StoreError(f"cannot read {path} ({exc}): no names from it") from exc
    finally:
        conn.close()
    return _cards(records, phones, emails)


def _missing_columns(conn: sqlite3.Connection) -> list[str]:
    missing: list[str] = []
    for table, columns in STORE_COLUMNS.items():
        have = {str(row[1]).upper() for row in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            missing.append(f"table {table}")
        else:
            missing.extend(f"column {table}.{col}" for col in columns if col not in have)
    return missing


def _fetch(conn: sqlite3.Connection, sql: str) -> list[_Row]:
    """All rows of `sql`; TEXT that is not valid UTF-8 is read with U+FFFD instead of failing the statement."""
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("Could not decode to UTF-8"):
            raise
    conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.text_factory = str


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _text(value: object) -> str:
    """A column value as stripped text with its white space collapsed ("" for NULL)."""
    if value is None:
        return ""
    if type(value) is not str:
        value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(value.split())


def display_name(first: str, last: str, org: str) -> str:
    """The display name: "First Last" (either alone when the other is empty), else the organisation, else ""."""
    return f"{first} {last}".strip() or org


def _cards(records: Iterable[_Row], phones: Iterable[_Row], emails: Iterable[_Row]) -> list[_Card]:
    """Join the three tables' rows into `_Card`s, in `records` order (the loader sorts by `Z_PK`). Written for
    speed (the load of a 5 000-contact store is mostly this): no call per value for plain TEXT, and name parts
    are only cleaned for records that own a handle."""
    held: dict[object, tuple[list[str], list[str]]] = {}
    for owner, number in phones:
        text = number.strip() if type(number) is str else _text(number)
        if text:
            (held.get(owner) or held.setdefault(owner, ([], [])))[0].append(text)
    for owner, address in emails:
        email = address.strip().lower() if type(address) is str else _text(address).lower()
        if ":" in email:
            email = normalize_handle(email)  # `mailto:` and account prefixes
        if "@" in email:
            (held.get(owner) or held.setdefault(owner, ([], [])))[1].append(email)
    cards: list[_Card] = []
    for pk, first, last, org in records:
        entry = held.get(pk)
        if entry is None:
            continue
        f, la, o = _text(first), _text(last), _text(org)
        if name := display_name(f, la, o):
            numbers, addresses = entry
            cards.append(_Card(name, f, la, o, _unique(numbers), _unique(addresses)))
    return cards


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(values) if len(values) < 2 else tuple(dict.fromkeys(values))


# --- the index ---------------------------------------------------------------------------------------------


def _digits(text: str) -> str:
    digits = _NON_DIGITS.sub("", text)
    return digits if digits.isascii() else "".join(str(int(ch)) for ch in digits)


class _Index:
    """Handles → names for one version of the stores. Built once per change; lookups are dict hits.

    `_phones`: last `SUFFIX_DIGITS` digits → [(number as typed, name)], store order; `_emails`: email → name
    (first card wins); `_names`: memo of `name_for` per handle as given; `_keys`: memo of `phone_key`."""

    def __init__(self, cards: Sequence[_Card], region: str | None) -> None:
        self.cards = tuple(cards)
        self.region = region
        self._phones: dict[str, list[tuple[str, str]]] = {}
        self._emails: dict[str, str] = {}
        self._names: dict[str, str | None] = {}
        self._keys: dict[str, tuple[str | None, bool]] = {}
        phones, emails, strip = self._phones, self._emails, _NON_DIGITS.sub
        for card in self.cards:
            name = card.name
            for number in card.phones:
                digits = strip("", number)
                if not digits.isascii():
                    digits = _digits(digits)
                if digits:
                    suffix = digits[-SUFFIX_DIGITS:]
                    bucket = phones.get(suffix)
                    if bucket is None:
                        phones[suffix] = [(number, name)]
                    else:
                        bucket.append((number, name))
            for email in card.emails:
                emails.setdefault(email, name)
        self.handle_count = sum(len(v) for v in self._phones.values()) + len(self._emails)

    def name_for(self, handle: str) -> str | None:
        try:
            return self._names[handle]
        except KeyError:
            pass
        name = self._find(normalize_handle(handle))
        if len(self._names) >= MEMO_LIMIT:
            self._names.clear()
        self._names[handle] = name
        return name

    def _find(self, key: str) -> str | None:
        if "@" in key:
            return self._emails.get(key)
        digits = key[1:]
        if not key.startswith("+") or not digits.isdecimal() or not digits.isascii():
            return None
        for number, name in self._phones.get(digits[-SUFFIX_DIGITS:], ()):
            if self.phone_key(number)[0] == key:
                return name
        return None

    def phone_key(self, number: str) -> tuple[str | None, bool]:
        """(handle the stored `number` matches or None, whether `parse_handle` accepted it), memoised."""
        found = self._keys.get(number)
        if found is None:
            found = self._keys[number] = _phone_key(number, self.region)
        return found

    def contact(self, card: _Card) -> Contact:
        """`card` as a `Contact` with the handles `parse_handle` accepts (what `access allow` takes)."""
        handles = [key for key, valid in map(self.phone_key, card.phones) if valid and key]
        for email in card.emails:
            with contextlib.suppress(HandleError):
                handles.append(parse_handle(email))
        return Contact(card.name, tuple(dict.fromkeys(handles)))


def _phone_key(number: str, region: str | None) -> tuple[str | None, bool]:
    try:
        return parse_handle(number, region), True
    except HandleError:
        pass
    if number.lstrip().startswith("+") or len(_digits(number)) <= _SHORT_CODE_DIGITS:
        key = normalize_handle(number)
        return (key if key.startswith("+") and key[1:].isdecimal() else None), False
    return None, False


# --- the resolver ---------------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def _resolve(index: _Index, query: str) -> Contact:
    """The one contact `query` names (see `Contacts.resolve` for the rules)."""
    wanted = _fold(query)
    if not wanted:
        raise ContactNotFound("Give a contact's name (it is empty).", query)
    levels: tuple[Callable[[_Card], bool], ...] = (
        lambda c: _fold(c.name) == wanted or _fold(f"{c.last} {c.first}") == wanted,
        lambda c: _fold(c.org) == wanted,
        lambda c: wanted in (_fold(c.first), _fold(c.last)),
    )
    for matches in levels:
        found = list(dict.fromkeys(index.contact(c) for c in index.cards if matches(c)))
        found = [c for c in found if c.handles]
        if len(found) == 1:
            return found[0]
        if found:
            listed = "; ".join(c.describe() for c in found[:10])
            more = f" and {len(found) - 10} more" if len(found) > 10 else ""
            raise AmbiguousContact(
                f"{meta_name(query)!r} matches {len(found)} contacts: {listed}{more}. Type the full name as Contacts "
                "shows it, or one of the handles.",
                query,
                found,
            )
    close = [index.contact(c) for c in index.cards if wanted in _fold(f"{c.name} {c.org}")]
    close = list(dict.fromkeys(c for c in close if c.handles))[:5]
    hint = f" Close matches: {'; '.join(c.describe() for c in close)}." if close else ""
    raise ContactNotFound(
        f"No contact named {meta_name(query)!r} with a phone number or email in your Contacts.{hint} "
        "Give the handle instead (+15551234567 or friend@icloud.com).",
        query,
        close,
    )


# --- the stores ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What one store gave at one `FileState`."""

    state: FileState
    cards: tuple[_Card, ...]


UNREADABLE_HELP = (
    "On a Mac, the program that runs imessage-channel needs Full Disk Access to read Contacts (the same as for "
    "chat.db); set IMESSAGE_ADDRESSBOOK_DIR to read another folder, or IMESSAGE_CONTACTS=off to stop trying."
)


class Contacts:
    """The owner's Contacts, read-only: `name_for(handle)` for events, `resolve(name)` for `access allow`.

    `directory`: the AddressBook folder (default `DEFAULT_ADDRESSBOOK_DIR`, `~` expanded); `enabled`: False
    turns every lookup off (`IMESSAGE_CONTACTS=off`); `region`: the region national numbers in the store are
    read in (`handles.Region`: a code like "US", None, or a callable, called once at the first load);
    `clock`: whose `monotonic()` spaces the change checks `check_interval` seconds apart.

    Nothing is read until the first lookup or `refresh()`. Thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        enabled: bool = True,
        region: Region = None,
        clock: Clock = SYSTEM,
        check_interval: float = CHECK_INTERVAL_S,
    ) -> None:
        self.directory = Path(directory if directory is not None else DEFAULT_ADDRESSBOOK_DIR).expanduser()
        self.enabled = enabled
        self._region_source = region
        self._region: str | None = None
        self._clock = clock
        self._interval = check_interval
        self._lock = threading.Lock()
        self._index: _Index | None = None
        self._checked_at: float | None = None
        self._stores: dict[Path, _Loaded] = {}
        self._failed: dict[Path, tuple[FileState, str]] = {}
        self._told: dict[str, str] = {}
        self._lookup_failed = False
        self.generation = 0
        """How many times the index was built (changes whenever the names may have)."""

    # -- lookups ------------------------------------------------------------------------------------------
    def name_for(self, handle: str) -> str | None:
        """The display name of the contact owning `handle` (a chat.db handle: `+14155550132`,
        `Jane@Example.com`, `E:…`/`p:…` prefixes allowed), or None: no such contact, lookups off, no store
        readable. Checks the stores for changes first (at most once per `check_interval`). Microseconds when
        nothing changed; never raises (an unexpected error is logged once and gives None). The name is raw
        owner data: pass it through `meta_name` before it goes into meta."""
        if not self.enabled:
            return None
        try:
            self.refresh()
            index = self._index
            return index.name_for(handle) if index is not None else None
        except Exception:  # a display nicety must never break delivery
            if not self._lookup_failed:
                self._lookup_failed = True
                log.exception("Contacts: a lookup failed unexpectedly; sender names may be missing")
            return None

    def resolve(self, query: str) -> Contact:
        """The one contact `query` names, with its handles, for `access allow "Jane Appleseed"`.

        Matching is case-insensitive with white space collapsed, in this order, the first rule with any match
        deciding: (1) the full name, "First Last" or "Last First" (or the organisation of a card with no person
        name); (2) the organisation; (3) the first name alone or the last name alone. Contacts without a handle
        `parse_handle` accepts are ignored; identical cards (same name and handles, e.g. one person in two
        accounts) count once. Raises `AmbiguousContact` (several match: `candidates` lists them with their
        handles), `ContactNotFound` (none: `candidates` holds up to 5 close matches) or `ContactsUnavailable`
        (lookups off, or no store readable)."""
        if not self.enabled:
            raise ContactsUnavailable(
                "Contacts lookup is off (IMESSAGE_CONTACTS=off): give the handle instead (+15551234567 or "
                "friend@icloud.com).",
                query,
            )
        self.refresh()
        index = self._index
        if index is None or (not index.cards and self._told):
            problems = "; ".join(self._told.values()) or f"nothing readable in {self.directory}"
            raise ContactsUnavailable(f"Cannot read your Contacts: {problems}. {UNREADABLE_HELP}", query)
        return _resolve(index, query)

    def describe(self) -> str:
        """One line for `doctor` and logs: how many stores, contacts and handles, or why there are none."""
        if not self.enabled:
            return "Contacts lookup is off (IMESSAGE_CONTACTS=off)"
        self.refresh()
        index = self._index
        contacts = len(index.cards) if index else 0
        handles = index.handle_count if index else 0
        stores = len(self._stores)
        line = (
            f"{_count(contacts, 'contact')} with {_count(handles, 'handle')} from "
            f"{_count(stores, 'Contacts store')} in {self.directory}"
        )
        if self._told:
            line += f" (problems: {'; '.join(self._told.values())})"
        return line

    @property
    def problems(self) -> tuple[str, ...]:
        """Why some or all names are missing, as of the last check: one sentence per store or folder (empty when
        every store was read, or lookups are off)."""
        return tuple(self._told.values())

    @property
    def contact_count(self) -> int:
        """How many named contacts the index holds (0 before the first load)."""
        return len(self._index.cards) if self._index is not None else 0

    # -- change detection ------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Re-read the stores that changed since the last check; True when the index was rebuilt.

        Without `force` it does nothing when the last check was less than `check_interval` seconds ago, or when
        another thread is checking (except before the first load, which every caller waits for). Never raises
        for a missing or unreadable store: that store gives no names, said once in the log."""
        if not self.enabled:
            return False
        now = self._clock.monotonic()
        if not force and self._recent(now):
            return False
        if not self._lock.acquire(blocking=force or self._index is None):
            return False
        try:
            if not force and self._recent(now):  # another thread checked while this one waited
                return False
            self._checked_at = now
            return self._refresh_locked()
        finally:
            self._lock.release()

    def _recent(self, now: float) -> bool:
        return self._index is not None and self._checked_at is not None and now - self._checked_at < self._interval

    def _refresh_locked(self) -> bool:
        problems: dict[str, str] = {}
        loaded: dict[Path, _Loaded] = {}
        reread = False
        for path in self._store_paths(problems):
            try:
                state = file_state(path)
            except OSError as exc:
                problems[str(path)] = f"cannot see {path} ({exc.strerror or exc}): no names from it"
                continue
            if state is None:
                continue
            old = self._stores.get(path)
            if old is not None and old.state == state:
                loaded[path] = old
                continue
            failed = self._failed.get(path)
            if failed is not None and failed[0] == state:
                problems[str(path)] = failed[1]
                continue
            try:
                loaded[path] = _Loaded(state, tuple(read_store(path)))
                self._failed.pop(path, None)
                reread = True
            except StoreBusy as exc:
                problems[str(path)] = str(exc)
                if old is not None:
                    loaded[path] = old
            except StoreError as exc:
                problems[str(path)] = str(exc)
                self._failed[path] = (state, str(exc))
        if not loaded and not problems:
            problems[str(self.directory)] = f"no {STORE_NAME} in {self.directory} or its {SOURCES} folder: no names"
        changed = reread or loaded.keys() != self._stores.keys() or self._index is None
        self._stores = loaded
        self._report(problems)
        if changed:
            cards = [card for store in loaded.values() for card in store.cards]
            self._index = _Index(cards, self._region_code())
            self.generation += 1
        return changed

    def _store_paths(self, problems: dict[str, str]) -> list[Path]:
        """The main store, then `Sources/<name>/AddressBook-v22.abcddb` by folder name (existing or not)."""
        paths = [self.directory / STORE_NAME]
        sources = self.directory / SOURCES
        try:
            names = sorted(os.listdir(sources))
        except FileNotFoundError:
            if not self.directory.exists():
                problems[str(self.directory)] = f"no Contacts folder at {self.directory}: no names"
            return paths
        except OSError as exc:
            problems[str(sources)] = f"cannot list {sources} ({exc.strerror or exc}): no names from its accounts"
            return paths
        return paths + [sources / name / STORE_NAME for name in names]

    def _region_code(self) -> str | None:
        if self._region_source is not None:
            source, self._region_source = self._region_source, None
            self._region = valid_region(source() if callable(source) else source)
        return self._region

    def _report(self, problems: dict[str, str]) -> None:
        """Log each problem once, when it appears or changes, and once more when it is gone."""
        for key, message in problems.items():
            if self._told.get(key) != message:
                self._told[key] = message
                # No Contacts folder at all (not a Mac, or Contacts never used) is no fault: said at INFO.
                level = logging.INFO if message.startswith("no Contacts folder") else logging.WARNING
                log.log(level, "Contacts: %s (said once, until this changes).", message)
        for key in [k for k in self._told if k not in problems]:
            del self._told[key]
            log.info("Contacts: %s is readable again", key)
