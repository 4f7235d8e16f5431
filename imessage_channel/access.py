"""access.json: the access-control state, its storage, and pairing (the I/O edge of the gate).

This module owns everything that touches `<state dir>/access.json`, its lock file, and the
`approved/` directory. The decision itself (deliver / drop / pair) is the pure function
`imessage_channel.gate.decide`.

Schema and semantics follow the official Claude Code iMessage plugin (`imessage@claude-plugins-official`,
public repo anthropics/claude-plugins-official: `external_plugins/imessage/server.ts`,
`external_plugins/imessage/ACCESS.md`, `external_plugins/imessage/skills/access/SKILL.md`), so both
servers and the official `/imessage:access` skill can share one file:

```json
{
  "dmPolicy": "allowlist",            // "allowlist" (default) | "pairing" | "disabled"
  "allowFrom": ["+15551234567", "friend@icloud.com"],
  "groups": {"iMessage;+;chat123": {"requireMention": true, "allowFrom": []}},
  "pending": {"a4f91c": {"senderId": "...", "chatId": "...",
                         "createdAt": 1700000000000, "expiresAt": 1700003600000, "replies": 1}},
  "mentionPatterns": ["^claude\\\\b"],  // case-insensitive regexes
  "textChunkLimit": 10000,            // optional, max 10000
  "chunkMode": "length",              // optional, "length" (default) | "newline"
  "appendSignature": true,            // optional, default true (ACCESS.md)
  "signature": "Sent by Claude"       // optional: the line appended to replies (this server only)
}
```

Times in `pending` are milliseconds since the Unix epoch (the official server's `Date.now()`).
A missing file means the defaults: allowlist policy, empty lists (only self-chat passes).

Differences from the official server, all deliberate:
- unknown keys (top level, per group, per pending entry) survive a write; the official server drops them;
- writes are atomic *and* fsynced, file 0600, directory 0700, and read-modify-write holds an advisory
  lock (`locked`) shared with our CLI;
- a corrupt file is moved aside under a UTC-timestamped name that never overwrites an earlier one, and
  "corrupt" also covers a file of the wrong shape (the official server only catches invalid JSON); a file
  that does not parse is judged only once it has been unchanged for `QUIET_S` (it may be mid-write), and
  the last good configuration stays in force meanwhile;
- an unreadable file (permissions, a directory, EIO) is never moved aside nor overwritten;
- handles are compared through `imessage_channel.handles.normalize_handle` and stored normalised; every
  `allowFrom` entry is validated on load (`handles.parse_handle`, phone numbers read in the owner's region
  and kept in E.164): one that is not a handle is ignored with a log line, kept in the file, and the rest
  of the file applies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from imessage_channel import statefile
from imessage_channel.clock import SYSTEM, Clock
from imessage_channel.handles import HandleError, Region, normalize_handle, parse_handle, same_chat
from imessage_channel.patterns import pattern_error
from imessage_channel.statefile import StatKey, stat_key

log = logging.getLogger("imessage_channel.access")

ACCESS_FILE = "access.json"
APPROVED_DIR = "approved"

#: Pairing limits from the official server.ts: a code is 3 random bytes as 6 lowercase hex chars,
#: lives one hour, at most 3 codes are pending at once, and a sender gets at most 2 replies
#: (the code, then one "still pending" reminder) before the server goes silent.
PAIRING_CODE_TTL = timedelta(hours=1)
MAX_PENDING = 3
MAX_PAIRING_REPLIES = 2

#: `textChunkLimit` ceiling and default (official server.ts `MAX_CHUNK_LIMIT`).
MAX_TEXT_CHUNK_LIMIT = 10000

#: The confirmation the server sends when it finds an `approved/<senderId>` file (official wording).
PAIRED_CONFIRMATION = "Paired! Say hi to Claude."


class DmPolicy(StrEnum):
    """`dmPolicy`: what happens to a DM from a sender who is not in `allowFrom` (and not self-chat).

    `allowlist` drops silently (the default: the server reads the owner's personal chat.db, so every
    friend's text reaches the gate); `pairing` answers with a pairing code; `disabled` drops everything
    except self-chat, groups included (official server.ts `gate`).
    """

    ALLOWLIST = "allowlist"
    PAIRING = "pairing"
    DISABLED = "disabled"


class ChunkMode(StrEnum):
    """`chunkMode`: `length` cuts at the limit (default), `newline` prefers paragraph boundaries."""

    LENGTH = "length"
    NEWLINE = "newline"


class AccessShapeError(ValueError):
    """access.json parsed as JSON but does not have the schema's shape (the message says where)."""


class AccessReadOnlyError(RuntimeError):
    """A write was attempted through a static `AccessStore` (IMESSAGE_ACCESS_MODE=static)."""


class PairingError(ValueError):
    """A pairing code could not be approved or denied."""


class UnknownCodeError(PairingError):
    """No pending pairing has this code."""


class ExpiredCodeError(PairingError):
    """The pairing code exists but its one-hour lifetime is over."""


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """`groups[<chat GUID>]`: a group chat the owner opted in.

    `require_mention` (`requireMention`, default true): deliver only texts matching a `mentionPatterns`
    regex. `allow_from` (`allowFrom`, default empty = any member): senders allowed to trigger, as
    `handles.parse_handle` canonicalises them. `invalid`: entries of the file's `allowFrom` that are not
    handles (ignored, but written back so a write never loses them). `extra` keeps keys this version does
    not know, so a write does not lose them.
    """

    require_mention: bool = True
    allow_from: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    invalid: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Pending:
    """`pending[<code>]`: a pairing code sent to `sender_id` in chat `chat_id` (a chat GUID).

    `created_at`/`expires_at` are milliseconds since the Unix epoch; `replies` counts messages sent to
    the sender for this code (1 after the first, missing in the file means 1, as in server.ts).
    """

    sender_id: str
    chat_id: str
    created_at: int
    expires_at: int
    replies: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Access:
    """Typed, read-only view of access.json (treat the mappings as immutable; use `dataclasses.replace`).

    Optional keys the file may omit (`mentionPatterns`, `textChunkLimit`, `chunkMode`,
    `appendSignature`, `signature`) are `None` when absent and are then not written back. `extra` holds unknown
    top-level keys. `allow_from` holds the handles of `allowFrom` in canonical form (`handles.parse_handle`);
    `invalid` the entries that are not handles (never matched, written back as they were); `problems` one
    sentence per such entry, top level or in a group (for the log).
    """

    dm_policy: DmPolicy = DmPolicy.ALLOWLIST
    allow_from: tuple[str, ...] = ()
    groups: Mapping[str, GroupPolicy] = field(default_factory=dict)
    pending: Mapping[str, Pending] = field(default_factory=dict)
    mention_patterns: tuple[str, ...] | None = None
    text_chunk_limit: int | None = None
    chunk_mode: ChunkMode | None = None
    append_signature: bool | None = None
    signature: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    invalid: tuple[object, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def effective_text_chunk_limit(self) -> int:
        """Characters per sent part: `textChunkLimit` when it is 1..10000, 10000 when it is larger (the
        official server.ts clamps it to `MAX_CHUNK_LIMIT`), and the default 10000 when it is absent or
        not positive.

        Deliberately unlike server.ts, which clamps 0 and negatives up to 1 (one character per message:
        `textChunkLimit: -5` turned 40 characters into 33 texts): a value below 1 is a mistake, not a wish
        for one-letter messages, so it is ignored. `AccessStore` logs both corrections once per file version.
        """
        limit = self.text_chunk_limit
        if limit is None or limit < 1:
            return MAX_TEXT_CHUNK_LIMIT
        return min(limit, MAX_TEXT_CHUNK_LIMIT)

    @property
    def effective_chunk_mode(self) -> ChunkMode:
        """`chunkMode`, `length` when absent."""
        return self.chunk_mode or ChunkMode.LENGTH

    @classmethod
    def from_json(cls, data: object, region: Region = None) -> Access:
        """Build an `Access` from parsed access.json; missing keys (or JSON `null`) take defaults.

        Each `allowFrom` entry (top level and per group) is validated with `handles.parse_handle` in
        `region` (national numbers need it): a valid one is kept in canonical form (E.164, lowercased
        email), one that is not a handle (`junk`, `a@b`, a national number with no region, a non-string)
        is ignored and named in `problems`; the rest of the file still applies.

        Raises `AccessShapeError` when a known key has the wrong type or an out-of-schema value
        (e.g. `dmPolicy: "open"`, `allowFrom: "x"`), or when `data` is not an object.
        """
        obj = _obj(data, "access.json")
        problems: list[str] = []
        policy = obj.get("dmPolicy")
        if policy is not None and policy not in DmPolicy._value2member_map_:
            raise AccessShapeError(f"dmPolicy: expected one of allowlist|pairing|disabled, got {policy!r}")
        mode = obj.get("chunkMode")
        if mode is not None and mode not in ChunkMode._value2member_map_:
            raise AccessShapeError(f"chunkMode: expected length|newline, got {mode!r}")
        patterns = obj.get("mentionPatterns")
        limit = obj.get("textChunkLimit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise AccessShapeError(f"textChunkLimit: expected an integer, got {limit!r}")
        signature = obj.get("appendSignature")
        if signature is not None and not isinstance(signature, bool):
            raise AccessShapeError(f"appendSignature: expected a boolean, got {signature!r}")
        signature_text = obj.get("signature")
        if signature_text is not None and not isinstance(signature_text, str):
            raise AccessShapeError(f"signature: expected a string, got {signature_text!r}")
        allow_from, invalid = _handles(obj.get("allowFrom"), "allowFrom", region, problems)
        return cls(
            dm_policy=DmPolicy(policy) if policy is not None else DmPolicy.ALLOWLIST,
            allow_from=allow_from,
            groups={
                guid: _group_from_json(g, f"groups[{guid!r}]", region, problems)
                for guid, g in _obj(obj.get("groups", {}) or {}, "groups").items()
            },
            pending={
                code: _pending_from_json(p, f"pending[{code!r}]")
                for code, p in _obj(obj.get("pending", {}) or {}, "pending").items()
            },
            mention_patterns=None if patterns is None else _strings(patterns, "mentionPatterns"),
            text_chunk_limit=limit,
            chunk_mode=ChunkMode(mode) if mode is not None else None,
            append_signature=signature,
            signature=signature_text,
            extra={k: v for k, v in obj.items() if k not in _KNOWN_KEYS},
            invalid=invalid,
            problems=tuple(problems),
        )

    def to_json(self) -> dict[str, Any]:
        """The access.json object: known keys in the official order, absent optionals omitted,
        unknown keys (top level, per group, per pending entry) kept."""
        out: dict[str, Any] = {
            "dmPolicy": self.dm_policy.value,
            "allowFrom": [*self.allow_from, *self.invalid],
            "groups": {
                guid: {"requireMention": g.require_mention, "allowFrom": [*g.allow_from, *g.invalid], **g.extra}
                for guid, g in self.groups.items()
            },
            "pending": {
                code: {
                    "senderId": p.sender_id,
                    "chatId": p.chat_id,
                    "createdAt": p.created_at,
                    "expiresAt": p.expires_at,
                    "replies": p.replies,
                    **p.extra,
                }
                for code, p in self.pending.items()
            },
        }
        if self.mention_patterns is not None:
            out["mentionPatterns"] = list(self.mention_patterns)
        if self.text_chunk_limit is not None:
            out["textChunkLimit"] = self.text_chunk_limit
        if self.chunk_mode is not None:
            out["chunkMode"] = self.chunk_mode.value
        if self.append_signature is not None:
            out["appendSignature"] = self.append_signature
        if self.signature is not None:
            out["signature"] = self.signature
        out.update(self.extra)
        return out


_KNOWN_KEYS = frozenset(
    {
        "dmPolicy",
        "allowFrom",
        "groups",
        "pending",
        "mentionPatterns",
        "textChunkLimit",
        "chunkMode",
        "appendSignature",
        "signature",
    }
)


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AccessShapeError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AccessShapeError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _number(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AccessShapeError(f"{where}: expected a number, got {value!r}")
    return int(value)


def _handles(
    value: object, where: str, region: Region, problems: list[str]
) -> tuple[tuple[str, ...], tuple[object, ...]]:
    """(valid handles in canonical form, deduplicated; entries that are not handles) of an `allowFrom`
    list; one sentence per invalid entry is appended to `problems`. Raises `AccessShapeError` when
    `value` is not a list (None is an empty one)."""
    if value is None:
        return (), ()
    if not isinstance(value, list):
        raise AccessShapeError(f"{where}: expected a list of handles, got {value!r}")
    valid: dict[str, None] = {}
    invalid: list[object] = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise HandleError(f"{item!r} is not a handle: not a string")
            valid[parse_handle(item, region)] = None
        except HandleError as exc:
            invalid.append(item)
            problems.append(f"{where}: {exc.brief}")
    return tuple(valid), tuple(invalid)


def _group_from_json(value: object, where: str, region: Region, problems: list[str]) -> GroupPolicy:
    obj = _obj(value, where)
    require = obj.get("requireMention")
    if require is not None and not isinstance(require, bool):
        raise AccessShapeError(f"{where}.requireMention: expected a boolean, got {require!r}")
    allow_from, invalid = _handles(obj.get("allowFrom"), f"{where}.allowFrom", region, problems)
    return GroupPolicy(
        require_mention=True if require is None else require,
        allow_from=allow_from,
        extra={k: v for k, v in obj.items() if k not in ("requireMention", "allowFrom")},
        invalid=invalid,
    )


def _pending_from_json(value: object, where: str) -> Pending:
    obj = _obj(value, where)
    sender, chat = obj.get("senderId"), obj.get("chatId")
    if not isinstance(sender, str) or not isinstance(chat, str):
        raise AccessShapeError(f"{where}: senderId and chatId must be strings")
    replies = obj.get("replies")
    return Pending(
        sender_id=sender,
        chat_id=chat,
        created_at=_number(obj.get("createdAt"), f"{where}.createdAt"),
        expires_at=_number(obj.get("expiresAt"), f"{where}.expiresAt"),
        replies=1 if replies is None else _number(replies, f"{where}.replies"),
        extra={k: v for k, v in obj.items() if k not in ("senderId", "chatId", "createdAt", "expiresAt", "replies")},
    )


# --- pure edits ---------------------------------------------------------------------------------


def _ms(now: datetime) -> int:
    """Milliseconds since the Unix epoch; a naive `now` is taken as UTC."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return int(now.timestamp() * 1000)


def is_allowed(handles: Sequence[str], handle: str) -> bool:
    """True when `handle` is in `handles` under `normalize_handle` (emails by case, phones by digits)."""
    wanted = normalize_handle(handle)
    return bool(wanted) and any(normalize_handle(h) == wanted for h in handles)


def group_key(groups: Mapping[str, object], chat_guid: str) -> str | None:
    """The `groups` key naming `chat_guid`: the exact key, else one equal but for the service prefix
    (`iMessage;+;chat1` ~ `any;+;chat1`: `handles.same_chat`). None when no key names it."""
    if chat_guid in groups:
        return chat_guid
    return next((key for key in groups if same_chat(key, chat_guid)), None)


def allow(access: Access, handle: str) -> Access:
    """`access` with `normalize_handle(handle)` added to `allowFrom` unless an equal handle is there."""
    if is_allowed(access.allow_from, handle):
        return access
    return replace(access, allow_from=(*access.allow_from, normalize_handle(handle)))


def disallow(access: Access, handle: str) -> Access:
    """`access` without any `allowFrom` entry equal to `handle` under `normalize_handle`."""
    wanted = normalize_handle(handle)
    return replace(access, allow_from=tuple(h for h in access.allow_from if normalize_handle(h) != wanted))


def prune_expired(access: Access, now: datetime) -> Access:
    """`access` without pending codes whose `expiresAt` is before `now` (a code is still valid at
    exactly `expiresAt`, as in server.ts `pruneExpired`). Returns `access` itself when nothing expired."""
    t = _ms(now)
    kept = {code: p for code, p in access.pending.items() if p.expires_at >= t}
    return access if len(kept) == len(access.pending) else replace(access, pending=kept)


class PairingStatus(StrEnum):
    """What `issue_pairing_code` decided: send a new code, re-send the pending one, or stay silent."""

    ISSUED = "issued"
    RESENT = "resent"
    SILENT = "silent"


@dataclass(frozen=True, slots=True)
class PairingOutcome:
    """Result of `issue_pairing_code`.

    `reason` is a stable slug: `new-code`, `reminder`, `reply-limit` (the sender already had its 2
    replies), `pending-limit` (3 other codes pending). `code` is None only when `status` is SILENT.
    """

    status: PairingStatus
    code: str | None
    reason: str

    @property
    def should_reply(self) -> bool:
        """True when the server should text `message()` to the sender's chat."""
        return self.status is not PairingStatus.SILENT

    def message(self) -> str:
        """The text sent to the sender: the official wording, "Pairing required" for a new code and
        "Still pending" for the reminder, followed by the command the owner runs in Claude Code."""
        if self.code is None:
            raise ValueError("a silent pairing outcome has no message")
        lead = "Still pending" if self.status is PairingStatus.RESENT else "Pairing required"
        return f"{lead} — run in Claude Code:\n\n/imessage:access pair {self.code}"


def issue_pairing_code(
    access: Access,
    sender: str,
    chat_id: str,
    now: datetime,
    rng: Callable[[int], bytes] = secrets.token_bytes,
) -> tuple[Access, PairingOutcome]:
    """Pairing step for a DM from `sender` (a handle) in chat `chat_id` (a chat GUID) at `now`.

    Call it when the gate answered PAIR. Semantics of server.ts `gate` under `dmPolicy: "pairing"`:
    expired codes are pruned first; a sender that already has a pending code gets the same code
    again (replies + 1) until it has had `MAX_PAIRING_REPLIES` (2) replies, then silence; otherwise,
    with fewer than `MAX_PENDING` (3) codes pending, a new code (`rng(3)` as 6 hex chars, expiring
    after one hour, replies = 1) is recorded for the normalised sender. `rng` is injectable for tests.
    Returns the new `Access` (to save) and the outcome.
    """
    access = prune_expired(access, now)
    wanted = normalize_handle(sender)
    for code, p in access.pending.items():
        if normalize_handle(p.sender_id) == wanted:
            if p.replies >= MAX_PAIRING_REPLIES:
                return access, PairingOutcome(PairingStatus.SILENT, None, "reply-limit")
            pending = {**access.pending, code: replace(p, replies=p.replies + 1)}
            return replace(access, pending=pending), PairingOutcome(PairingStatus.RESENT, code, "reminder")
    if len(access.pending) >= MAX_PENDING:
        return access, PairingOutcome(PairingStatus.SILENT, None, "pending-limit")
    code = rng(3).hex()
    while code in access.pending:
        code = rng(3).hex()
    t = _ms(now)
    entry = Pending(
        sender_id=wanted,
        chat_id=chat_id,
        created_at=t,
        expires_at=t + int(PAIRING_CODE_TTL.total_seconds() * 1000),
        replies=1,
    )
    access = replace(access, pending={**access.pending, code: entry})
    return access, PairingOutcome(PairingStatus.ISSUED, code, "new-code")


def approve(access: Access, code: str, now: datetime) -> tuple[Access, Pending]:
    """Approve pairing `code` (surrounding space and case ignored) at `now`.

    As the official access skill's `pair <code>`: the sender is added to `allowFrom` (deduplicated by
    `normalize_handle`) and the code removed. Returns the new `Access` and the approved `Pending`
    entry (its `sender_id` and `chat_id` name the `approved/` file to write, see `write_approval`).
    Raises `UnknownCodeError` when no such code is pending, `ExpiredCodeError` when it expired
    (`expiresAt` before `now`); the access is then unchanged.
    """
    key = code.strip().lower()
    entry = access.pending.get(key)
    if entry is None:
        raise UnknownCodeError(f"no pending pairing with code {key!r}")
    if entry.expires_at < _ms(now):
        raise ExpiredCodeError(f"pairing code {key!r} has expired; the sender must text again for a new one")
    pending = {c: p for c, p in access.pending.items() if c != key}
    return allow(replace(access, pending=pending), entry.sender_id), entry


def deny(access: Access, code: str) -> Access:
    """Discard pairing `code` (expired or not), as the skill's `deny <code>`.

    Raises `UnknownCodeError` when no such code is pending.
    """
    key = code.strip().lower()
    if key not in access.pending:
        raise UnknownCodeError(f"no pending pairing with code {key!r}")
    return replace(access, pending={c: p for c, p in access.pending.items() if c != key})


# --- storage ------------------------------------------------------------------------------------


locked = statefile.locked
"""`statefile.locked`: the advisory lock `<state>/access.json.lock` shared by `AccessStore.update`, the CLI
and every move-aside in the state dir."""


class AccessUnavailableError(RuntimeError):
    """access.json cannot be used right now: it exists but cannot be read (permissions, a directory in its
    place, EIO; `str(err)` names the file, the reason and the fix, `statefile.unreadable_help`), or it changed
    moments ago and does not parse yet (another program may be writing it; try again in a few seconds)."""


QUIET_S = 2.0
"""How long an access.json that does not parse must stay unchanged before it is judged corrupt and moved
aside. An editor that writes the file in place (truncate, then write) is read mid-write now and then; its
write is over within milliseconds, so 2 s of quiet means nobody is writing it any more."""


@dataclass(slots=True)
class _Unsettled:
    """An access.json version (`key`) that failed to parse, first seen at `since` (monotonic seconds)."""

    key: StatKey
    since: float
    logged: bool = False


class AccessStore:
    """access.json in `state` (see `state_dir`), re-read when it changes.

    `load()` is cheap to call per inbound message: the parsed `Access` is cached by the file's
    `statefile.StatKey` (mtime, size, inode, ctime) and parsed again only when that changes (the official
    server re-reads on every message; ACCESS.md: edits apply without a restart).

    With `static=True` (env `IMESSAGE_ACCESS_MODE=static`) the file is read once, here, and never
    re-read or written; as in server.ts, a `pairing` policy is downgraded to `allowlist` (pairing
    needs runtime writes) and pending codes are dropped. `save`/`update` then raise
    `AccessReadOnlyError`.

    A file that is not JSON or not of the schema's shape may be one read mid-write (an editor writing it in
    place). Until it has stayed unchanged for `QUIET_S` (by its mtime, or by how long this version has been
    seen; both from the injected clock) the last good configuration stays in force (the defaults if there
    was none), one warning is logged, and `update()` raises `AccessUnavailableError` rather than replace a
    file someone is writing. A file still invalid once quiet is re-read, then moved aside to
    `access.json.corrupt-<UTC timestamp>` (never over an existing file, `statefile.move_aside`) with a
    warning on logger "imessage_channel.access", and the defaults are used.

    `move_corrupt=False` (the CLI: a view changes nothing) never moves a corrupt file: `load(strict=True)`
    and `update()` raise `AccessUnavailableError` saying how to fix it instead.

    An unreadable file (another owner's 0600 file after `sudo imessage-channel access …`, a directory, EIO)
    is left where it is: `load()` returns the defaults (self-chat needs no access.json; everyone else is
    dropped) and logs one warning naming the fix, and one line when it can be read again; `update()` raises
    `AccessUnavailableError` rather than replace a file it could not read. Regexes in `mentionPatterns` that
    RE2 cannot compile (`imessage_channel.patterns`), a `textChunkLimit` out of 1..10000 and `allowFrom`
    entries that are not handles are logged once per new file version; the gate skips such regexes and
    entries, and `Access.effective_text_chunk_limit` corrects the limit.
    """

    def __init__(
        self,
        state: Path,
        *,
        static: bool = False,
        clock: Clock = SYSTEM,
        region: Region = None,
        move_corrupt: bool = True,
    ) -> None:
        self.state_dir = state
        self.move_corrupt = move_corrupt
        self.clock = clock
        self.region = region
        self.path = state / ACCESS_FILE
        self.static = static
        self._cached: tuple[StatKey | None, Access] | None = None
        self._boot: Access | None = None
        self._unreadable: tuple[int | None, str] | None = None
        self._unsettled: _Unsettled | None = None
        self._stuck: StatKey | None = None
        if static:
            self._try_boot()

    def _try_boot(self) -> Access | None:
        """Static mode: freeze the first configuration read and return it (None while the file is unreadable:
        it is retried at each `load` until it can be read once)."""
        boot, problem = self._examine(holding_lock=False)
        if problem is not None:
            return None
        if boot.dm_policy is DmPolicy.PAIRING:
            log.warning('static mode: dmPolicy "pairing" downgraded to "allowlist"')
            boot = replace(boot, dm_policy=DmPolicy.ALLOWLIST)
        self._boot = replace(boot, pending={})
        return self._boot

    def load(self, *, strict: bool = False) -> Access:
        """The current access (defaults when the file is missing or unreadable); never raises unless
        `strict`, which raises `AccessUnavailableError` instead of returning defaults for an unreadable file
        (for the CLI, which must not show defaults as if they were the file). See the class docstring."""
        if self._boot is not None:
            return self._boot
        if self.static:
            boot = self._try_boot()
            if boot is not None:
                return boot
        access, problem = self._examine(holding_lock=False)
        if strict and problem is not None:
            raise problem
        return access

    def save(self, access: Access) -> None:
        """Write `access` atomically (`statefile.atomic_write`: file 0600, directory 0700), as 2-space
        indented JSON with a trailing newline. Prefer `update` when the write depends on a read."""
        if self.static:
            raise AccessReadOnlyError("access.json is static (IMESSAGE_ACCESS_MODE=static); not writing")
        text = json.dumps(access.to_json(), indent=2, ensure_ascii=False) + "\n"
        statefile.atomic_write(self.path, text.encode("utf-8"))
        self._cached = (stat_key(self.path), access)

    def update(self, fn: Callable[[Access], Access]) -> Access:
        """Read-modify-write under `locked(state_dir)`: `fn(current)` is saved (unless it returns the
        very object it got) and returned. Serialises with other processes using the same lock.
        Raises `AccessUnavailableError` when access.json exists but cannot be read (nothing is written),
        `OSError` when the lock or the write fails."""
        if self.static:
            raise AccessReadOnlyError("access.json is static (IMESSAGE_ACCESS_MODE=static); not writing")
        with locked(self.state_dir):
            current, problem = self._examine(holding_lock=True)
            if problem is not None:
                raise problem
            new = fn(current)
            if new is not current:
                self.save(new)
            return new

    def _read(self, *, holding_lock: bool) -> Access:
        return self._examine(holding_lock=holding_lock)[0]

    def _examine(self, *, holding_lock: bool) -> tuple[Access, AccessUnavailableError | None]:
        """(the access in force, the reason it is the defaults when access.json cannot be read)."""
        for _ in range(3):  # a corrupt file moved aside, then whatever a writer put there meanwhile
            try:
                key = stat_key(self.path)
                cached = self._cached
                if cached is not None and cached[0] == key:
                    return cached[1], None
                data = statefile.read(self.path) if key is not None else None
            except OSError as exc:  # statefile.Unreadable, or the state folder itself is unreadable
                return Access(), self._note_unreadable(exc)
            self._note_readable()
            if data is None:
                access = Access()
            else:
                try:
                    access = Access.from_json(json.loads(data), self.region)
                except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, AccessShapeError
                    assert key is not None
                    if key == self._stuck:  # corrupt, settled, and it could not be moved aside: said so once
                        return Access(), None
                    if not self.move_corrupt:  # a view (the CLI) changes nothing, not even a corrupt file
                        return Access(), AccessUnavailableError(
                            f"{self.path} is not valid access.json ({exc}): fix or delete it (a running channel "
                            "moves a corrupt file aside and uses the defaults)"
                        )
                    if not self._settled(key):
                        return (cached[1] if cached is not None else Access()), self._note_unsettled(exc)
                    self._move_corrupt_aside(key, exc, holding_lock=holding_lock)
                    continue  # now missing, or whatever a writer put there meanwhile
                _log_bad_patterns(access.mention_patterns or ())
                _log_bad_chunk_limit(access.text_chunk_limit)
                for problem in access.problems:
                    log.warning("access.json %s (ignored; the rest of the file applies)", problem)
            self._unsettled = None
            self._cached = (key, access)
            return access, None
        return Access(), None

    def _settled(self, key: StatKey) -> bool:
        """Has the file that failed to parse stayed unchanged for `QUIET_S`? Judged by its mtime against
        the clock's wall time, or, when the mtime is no help (a clock set back, a file copied with its
        times), by how long this very `StatKey` has been seen (monotonic clock)."""
        now = self.clock.monotonic()
        if self._unsettled is None or self._unsettled.key != key:
            logged = self._unsettled.logged if self._unsettled is not None else False
            self._unsettled = _Unsettled(key, now, logged)
        age = self.clock.wall() - key[0] / 1e9
        return age >= QUIET_S or now - self._unsettled.since >= QUIET_S

    def _note_unsettled(self, exc: Exception) -> AccessUnavailableError:
        """Log once per episode that access.json does not parse yet; the error `update` raises for it."""
        assert self._unsettled is not None
        if not self._unsettled.logged:
            self._unsettled.logged = True
            log.warning(
                "access.json does not parse (%s); another program may be writing it: keeping the last good "
                "settings until it has been unchanged for %g s (then it is moved aside if still invalid)",
                exc,
                QUIET_S,
            )
        return AccessUnavailableError(
            f"{self.path} was changed moments ago and does not parse yet ({exc}); another program may be writing "
            f"it. Try again in a few seconds (a file still invalid after {QUIET_S:g} s is moved aside)"
        )

    def _note_unreadable(self, exc: OSError) -> AccessUnavailableError:
        """Log once per kind of failure that access.json cannot be read; the error to raise for it."""
        cause = exc.cause if isinstance(exc, statefile.Unreadable) else exc
        reason, fix = statefile.describe_error(cause), statefile.unreadable_help(self.path, cause)
        signature = (cause.errno, reason)
        if self._unreadable != signature:
            self._unreadable = signature
            log.warning(
                "cannot read %s (%s): self-chat still works, everyone else gets the defaults (dropped) until it "
                "can be read; it is left as it is. Fix: %s",
                self.path,
                reason,
                fix,
            )
        return AccessUnavailableError(f"cannot read {self.path} ({reason}). Fix: {fix}")

    def _note_readable(self) -> None:
        if self._unreadable is not None:
            self._unreadable = None
            log.warning("%s can be read again; its settings apply", self.path)

    def _move_corrupt_aside(self, key: StatKey, exc: Exception, *, holding_lock: bool) -> None:
        """Move the corrupt (and settled) file aside, under the lock and only if it is still the file we
        parsed (a writer may have replaced it meanwhile). When it cannot be moved, say so once and use the
        defaults for as long as it stays this file."""
        self._unsettled = None
        try:
            aside = statefile.move_aside_if_unchanged(self.path, key, self.clock.now(), holding_lock=holding_lock)
        except OSError as move_error:
            self._stuck = key
            log.warning(
                "access.json is corrupt (%s) and cannot be moved aside (%s); using the defaults until it is fixed",
                exc,
                statefile.describe_error(move_error),
            )
            return
        if aside is not None:
            log.warning(
                "access.json is corrupt (%s) and stayed so for %g s; moved aside to %s, using the defaults",
                exc,
                QUIET_S,
                aside.name,
            )


def _log_bad_chunk_limit(limit: int | None) -> None:
    """Warn when `textChunkLimit` is out of range (see `Access.effective_text_chunk_limit`)."""
    if limit is None:
        return
    if limit < 1:
        log.warning(
            "textChunkLimit %d is not a positive number of characters; ignoring it (using %d)",
            limit,
            MAX_TEXT_CHUNK_LIMIT,
        )
    elif limit > MAX_TEXT_CHUNK_LIMIT:
        log.warning("textChunkLimit %d is over the maximum; using %d", limit, MAX_TEXT_CHUNK_LIMIT)


def _log_bad_patterns(patterns: tuple[str, ...]) -> None:
    """Warn about each `mentionPatterns` entry the gate will skip (RE2 cannot compile it)."""
    for pattern in patterns:
        if (reason := pattern_error(pattern)) is not None:
            log.warning("mentionPatterns: skipping invalid regex %r (%s)", pattern, reason)


# --- approved/ ----------------------------------------------------------------------------------


def _approval_path(state: Path, sender: str) -> Path:
    if not sender or sender in (".", "..") or "/" in sender or "\0" in sender or sender.startswith("."):
        raise ValueError(f"not a usable sender id for approved/: {sender!r}")
    return state / APPROVED_DIR / sender


def write_approval(state: Path, sender: str, chat_id: str) -> None:
    """Write `approved/<sender>` containing `chat_id`, as the access skill does after `pair`.

    The running server answers it with `PAIRED_CONFIRMATION` in that chat. Raises `ValueError` for a
    sender id that cannot be a plain file name (contains `/`, NUL, or starts with `.`).
    """
    path = _approval_path(state, sender)
    statefile.atomic_write(path, chat_id.encode("utf-8"))


def pending_approvals(state: Path) -> list[str]:
    """Sender ids with an `approved/<senderId>` file, sorted; empty when the directory is missing.
    Dot-files (our temp files) are skipped. Raises `OSError` when `approved/` cannot be listed."""
    try:
        names = os.listdir(state / APPROVED_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if not n.startswith("."))


def read_approval(state: Path, sender: str) -> str | None:
    """The chat GUID `approved/<sender>` holds (stripped), or None when the file is empty, unreadable or
    gone. Leaves the file in place (see `discard_approval`). Raises `ValueError` for a sender id that
    cannot be a plain file name."""
    path = _approval_path(state, sender)
    try:
        chat = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        chat = ""
    return chat or None


def discard_approval(state: Path, sender: str) -> None:
    """Delete `approved/<sender>` (missing is fine). Raises `ValueError` for an unusable sender id."""
    with contextlib.suppress(FileNotFoundError):
        _approval_path(state, sender).unlink()
