"""`imessage-channel access …`: show and change access.json from a shell.

Owns the access verbs and their output. The verbs, their arguments and their meaning are those of the
official `/imessage:access` skill (anthropics/claude-plugins-official,
`external_plugins/imessage/skills/access/SKILL.md`), so people who know that skill know these:

| verb                                             | effect                                                  |
|--------------------------------------------------|---------------------------------------------------------|
| (none)                                           | status: policy, allowlist, pending codes with age, groups |
| `pair <code>`                                    | allow the code's sender, drop the code, write `approved/<sender>` |
| `deny <code>`                                    | drop the pending code                                   |
| `allow <handle>` / `remove <handle>`             | add to / remove from `allowFrom`                        |
| `allow "<name>"` / `remove "<name>"`             | the same for every handle of that contact (this server's own) |
| `policy pairing\\|allowlist\\|disabled`            | set `dmPolicy`                                          |
| `group add <guid> [--no-mention] [--allow a,b]`  | opt a group chat in                                     |
| `group rm <guid>`                                | opt it out                                              |
| `set textChunkLimit\\|chunkMode\\|mentionPatterns\\|appendSignature <value>` | delivery settings  |
| `route add <chat guid> <session>` / `route rm <chat guid>` | pin a chat to a session name (`routes`, ours) |

Every change is a read-modify-write through `AccessStore.update`, under the advisory lock
`access.locked` that the server takes too, so a pairing code the server records while the CLI edits is
never lost. The file stays 2-space indented JSON (written by `AccessStore.save`). Handles are checked and
stored as `handles.parse_handle` makes them (phone numbers in E.164, read in the owner's region when typed
without a country code, see `owner_region`; emails lowercased), the same check the server applies to
access.json when it loads it (entries that fail it are ignored there, listed by `status`). Values are checked before
anything is written; a bad one raises `AccessCLIError`, which `run` prints as one paragraph on stderr
with exit status 2. `--json` prints machine-readable results on stdout.

Names come from the owner's Contacts (`contacts.Contacts`, read-only; `IMESSAGE_CONTACTS=off` turns them off):
the status shows a name beside each handle it knows, and `allow`/`remove` take a contact's name where a handle
does not parse, acting on all of that contact's handles. An ambiguous or unknown name is refused, with the
candidates, and nothing is written.

The status also lists the live sessions (many Claude Code sessions on one Mac, `multisession.overview`):
which one reads iMessage, which is the default, and the chats pinned to a session name.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import access as access_mod
from .. import handles, statefile
from ..access import (
    MAX_TEXT_CHUNK_LIMIT,
    Access,
    AccessStore,
    AccessUnavailableError,
    ChunkMode,
    DmPolicy,
    GroupPolicy,
    PairingError,
    Pending,
    group_key,
)
from ..chatdb import ChatDB, ChatDBError
from ..clock import SYSTEM
from ..contacts import Contact, ContactLookupError, Contacts, ContactsUnavailable, meta_name
from ..handles import ChatGuid, HandleError, PhoneRegion, Region, pick_region
from ..multisession import overview
from ..patterns import pattern_error
from ..routing import pins_from_access
from ..sessions import sanitize_name
from ..settings import Settings

MAX_SIGNATURE = 200
"""Longest `signature` line `access set signature` takes (characters): a phone shows it under every reply."""

SET_KEYS = ("textChunkLimit", "chunkMode", "mentionPatterns", "appendSignature", "signature")
"""Keys `set` accepts (the official skill's list)."""

POLICY_MEANING = {
    DmPolicy.ALLOWLIST: "only self-chat and the allowed handles reach Claude; everyone else is dropped silently",
    DmPolicy.PAIRING: "anyone not yet allowed who texts you is sent a pairing code to give you",
    DmPolicy.DISABLED: "only self-chat reaches Claude; allowed handles and groups are ignored",
}


class AccessCLIError(ValueError):
    """A value or request the CLI refuses; `str(err)` is the paragraph shown to the user."""


# --- validation ---------------------------------------------------------------------------------


def parse_handle(value: str, region: Region = None) -> str:
    """The canonical handle for `value` (`handles.parse_handle`, the one validation the server applies to
    access.json too), or `AccessCLIError` saying why it is none.

    Accepted: an email (`Friend@Example.com` → `friend@example.com`) or a phone number, stored in E.164:
    with its country code in any notation (`+1 (555) 123-4567` → `+15551234567`), or national
    (`(479) 123-4567` → `+14791234567`) when the owner's region is known (`region`, see `owner_region`);
    without one a national number is refused with a request for the country code. A chat GUID
    (`iMessage;-;+1555…`) is refused with the handle it contains as a hint: access is granted to people,
    not chats.
    """
    raw = value.strip()
    guid = ChatGuid.parse(raw)
    if guid is not None and guid.is_dm:
        raise AccessCLIError(
            f"{raw!r} is a chat GUID, not a handle. Access is granted to a sender: "
            f"use `imessage-channel access allow {guid.identifier}`."
        )
    if guid is not None and guid.is_group:
        raise AccessCLIError(
            f"{raw!r} is a group chat GUID, not a handle. Opt the group in with "
            f"`imessage-channel access group add '{raw}'`."
        )
    try:
        return handles.parse_handle(raw, region)
    except HandleError as exc:
        raise AccessCLIError(str(exc)) from None


def owner_region(settings: Settings) -> PhoneRegion:
    """The region national phone numbers are read in (`handles.pick_region`): the owner's own number or
    the contacts' country in chat.db (`Settings.db_path`) when it can be read, else the locale. `run`
    computes it at most once, and only when a national number needs it."""
    owner: frozenset[str] = frozenset()
    countries: list[str] = []
    try:
        with ChatDB(settings.db_path) as db:
            owner, countries = db.owner_handles(), db.handle_countries()
    except ChatDBError:
        pass  # no Full Disk Access from this terminal, or no Messages: the locale decides
    return pick_region(owner, countries, settings.locales)


def parse_group_guid(value: str) -> str:
    """`value` stripped, when it is a group chat GUID (`iMessage;+;chat123…`, `any;+;…`); else
    `AccessCLIError` (a DM GUID gets a hint to allow the person instead)."""
    guid = value.strip()
    parsed = ChatGuid.parse(guid)
    if parsed is not None and parsed.is_group and not any(c.isspace() for c in guid):
        return guid
    if parsed is not None and parsed.is_dm:
        raise AccessCLIError(
            f"{guid!r} is a one-to-one chat, not a group. Allow the person instead: "
            f"`imessage-channel access allow {parsed.identifier}`."
        )
    raise AccessCLIError(
        f"{guid!r} is not a group chat GUID. Group GUIDs look like 'iMessage;+;chat123456789'; "
        "`imessage-channel messages` shows them in each group's header."
    )


def parse_setting(key: str, value: str) -> Callable[[Access], Access]:
    """The edit that `set <key> <value>` makes, after checking the value (`AccessCLIError` if bad).

    - `textChunkLimit`: an integer 1–10000 (characters per message part; official maximum 10000);
    - `chunkMode`: `length` (cut at the limit) or `newline` (prefer paragraph breaks);
    - `mentionPatterns`: a JSON array of regex strings (the official form, `[]` clears them), or one
      regex; each must compile with RE2 (`imessage_channel.patterns`: linear time, no look-around or
      back-references; case-insensitive at match time);
    - `appendSignature`: `true` or `false`;
    - `signature`: the line appended to replies (this server's own key; empty: no signature line).
    """
    if key == "textChunkLimit":
        try:
            limit = int(value.strip())
        except ValueError:
            raise AccessCLIError(
                f"textChunkLimit must be a whole number of characters (1–{MAX_TEXT_CHUNK_LIMIT}), got {value!r}."
            ) from None
        if not 1 <= limit <= MAX_TEXT_CHUNK_LIMIT:
            raise AccessCLIError(f"textChunkLimit must be between 1 and {MAX_TEXT_CHUNK_LIMIT}, got {limit}.")
        return lambda a: replace(a, text_chunk_limit=limit)
    if key == "chunkMode":
        mode = value.strip().lower()
        if mode not in ChunkMode._value2member_map_:
            raise AccessCLIError(
                f"chunkMode must be `length` (cut at the limit) or `newline` (prefer paragraph breaks), got {value!r}."
            )
        return lambda a: replace(a, chunk_mode=ChunkMode(mode))
    if key == "mentionPatterns":
        patterns = _parse_patterns(value)
        return lambda a: replace(a, mention_patterns=patterns)
    if key == "appendSignature":
        flag = value.strip().lower()
        if flag not in ("true", "false"):
            raise AccessCLIError(f"appendSignature must be `true` or `false`, got {value!r}.")
        return lambda a: replace(a, append_signature=flag == "true")
    if key == "signature":
        text = value.strip()
        if "\n" in text or len(text) > MAX_SIGNATURE:
            raise AccessCLIError(f"signature must be one line of at most {MAX_SIGNATURE} characters, got {value!r}.")
        return lambda a: replace(a, signature=text)
    raise AccessCLIError(f"Unknown setting {key!r}. Settings: {', '.join(SET_KEYS)}.")


def _parse_patterns(value: str) -> tuple[str, ...]:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AccessCLIError(
                f'mentionPatterns: {value!r} is not a JSON array ({exc.msg}). Example: \'["^claude\\\\b", "@claude"]\'.'
            ) from None
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise AccessCLIError("mentionPatterns must be a JSON array of strings, e.g. '[\"^claude\\\\b\"]'.")
        patterns = tuple(parsed)
    else:
        patterns = (value,)
    for pattern in patterns:
        if not pattern:
            raise AccessCLIError("mentionPatterns: an empty pattern would match every message; remove it.")
        if (reason := pattern_error(pattern)) is not None:
            raise AccessCLIError(
                f"mentionPatterns: {pattern!r} is not a valid regular expression ({reason}). Patterns run on RE2: "
                "no look-around or back-references."
            )
    return patterns


# --- output helpers -----------------------------------------------------------------------------


def _now() -> datetime:
    return SYSTEM.now()


def _ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


def format_duration(seconds: float) -> str:
    """`"just now"`, `"5 min"`, `"2 h 3 min"`, `"3 d 4 h"` for a non-negative number of seconds."""
    s = int(max(0, seconds))
    if s < 60:
        return "just now" if s < 5 else f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _pending_json(code: str, p: Pending, now_ms: int) -> dict[str, Any]:
    return {
        "code": code,
        "senderId": p.sender_id,
        "chatId": p.chat_id,
        "ageSeconds": max(0, (now_ms - p.created_at) // 1000),
        "expiresInSeconds": (p.expires_at - now_ms) // 1000,
        "expired": p.expires_at < now_ms,
    }


Names = Callable[[str], "str | None"]
"""handle → the contact's name, or None (`Contacts.name_for`)."""


def _no_names(handle: str) -> str | None:
    return None


def _named(handle: str, names: Names) -> str:
    """`Jane Appleseed (+14155550132)`, as `chat_messages` shows senders, or the handle alone when no contact has
    it. The name is made terminal-safe (`meta_name`)."""
    name = names(handle)
    return f"{meta_name(name)} ({handle})" if name else handle


def _group_line(guid: str, group: GroupPolicy, names: Names) -> str:
    mention = "mention required" if group.require_mention else "every message"
    who = ", ".join(_named(h, names) for h in group.allow_from) if group.allow_from else "any member"
    return f"  {guid}  ({mention}; from {who})"


def status_text(access: Access, path: str, now: datetime, names: Names = _no_names) -> str:
    """The human status block: policy and its meaning, allowlist, pending codes with age, groups,
    delivery settings (defaults marked). `names` puts a contact's name beside each handle it knows."""
    now_ms = _ms(now)
    lines = [
        f"access.json: {path}",
        f"DM policy: {access.dm_policy.value} — {POLICY_MEANING[access.dm_policy]}",
        f"Allowed ({len(access.allow_from)}): "
        + (", ".join(_named(h, names) for h in access.allow_from) or "nobody yet (self-chat always works)"),
    ]
    if access.problems:
        fix = "fix them in the file, or remove them with `imessage-channel access remove '<entry>'`"
        lines.append(f"Ignored, not handles ({len(access.problems)}): {fix}")
        lines += [f"  {p}" for p in access.problems]
    lines.append(f"Pending pairings ({len(access.pending)})" + (":" if access.pending else ""))
    for code, p in sorted(access.pending.items(), key=lambda kv: kv[1].created_at):
        info = _pending_json(code, p, now_ms)
        when = "expired" if info["expired"] else f"expires in {format_duration(info['expiresInSeconds'])}"
        who = _named(p.sender_id, names)
        age = format_duration(info["ageSeconds"])
        lines.append(f"  {code}  {who}  asked {age if age == 'just now' else age + ' ago'}, {when}")
    lines.append(f"Groups ({len(access.groups)})" + (":" if access.groups else ""))
    lines += [_group_line(guid, g, names) for guid, g in access.groups.items()]
    patterns = access.mention_patterns
    lines.append(
        "Mention patterns: " + (", ".join(patterns) if patterns else "none (groups that need a mention stay silent)")
    )
    limit = f"{access.text_chunk_limit}" if access.text_chunk_limit is not None else f"{MAX_TEXT_CHUNK_LIMIT} (default)"
    mode = access.chunk_mode.value if access.chunk_mode is not None else "length (default)"
    signature = ("on" if access.append_signature else "off") if access.append_signature is not None else "on (default)"
    lines.append(f"Replies: parts of at most {limit} characters, chunk mode {mode}, signature {signature}")
    return "\n".join(lines)


# --- the verbs ----------------------------------------------------------------------------------


class _Result:
    """What a verb did: a sentence for people, extra JSON fields, and the access after it."""

    def __init__(self, message: str, access: Access, *, changed: bool, **extra: Any) -> None:
        self.message = message
        self.access = access
        self.changed = changed
        self.extra = extra


def _update(store: AccessStore, fn: Callable[[Access], Access]) -> tuple[Access, Access]:
    """Run `fn` under the lock; return (before, after)."""
    seen: list[Access] = []

    def step(current: Access) -> Access:
        seen.append(current)
        return fn(current)

    after = store.update(step)
    return seen[-1], after


def cmd_pair(store: AccessStore, code: str, now: datetime) -> _Result:
    """`pair <code>`: approve the pending code (`access.approve`), then write `approved/<sender>` so
    the running server texts the sender its confirmation."""
    box: list[Pending] = []

    def step(a: Access) -> Access:
        new, entry = access_mod.approve(a, code, now)
        try:
            sender = parse_handle(entry.sender_id, store.region)
        except AccessCLIError as exc:
            raise AccessCLIError(
                f"The pairing code {code.strip().lower()} was issued to {entry.sender_id!r}, which cannot be "
                f"allowed: {exc} Drop it with `imessage-channel access deny {code.strip().lower()}`."
            ) from None
        box.append(replace(entry, sender_id=sender))
        return new

    try:
        _, after = _update(store, step)
    except access_mod.UnknownCodeError:
        raise AccessCLIError(_unknown_code(store, code)) from None
    entry = box[-1]
    try:
        access_mod.write_approval(store.state_dir, entry.sender_id, entry.chat_id)
    except ValueError as exc:  # a sender id that cannot be a file name: allowed, but no confirmation text
        return _Result(
            f"Allowed {entry.sender_id}; no confirmation will be texted ({exc}).",
            after,
            changed=True,
            approved={"senderId": entry.sender_id, "chatId": entry.chat_id},
        )
    return _Result(
        f"Paired {entry.sender_id}: they are allowed now, and the channel will text them "
        f"“{access_mod.PAIRED_CONFIRMATION}”.",
        after,
        changed=True,
        approved={"senderId": entry.sender_id, "chatId": entry.chat_id},
    )


def _unknown_code(store: AccessStore, code: str) -> str:
    """What `pair` and `deny` say about a code nobody was given: the pending ones, and what a code is."""
    pending = store.load().pending
    known = ", ".join(f"{c} ({p.sender_id})" for c, p in pending.items()) or "none"
    return (
        f"No pending pairing has the code {code.strip().lower()!r}. Pending codes: {known}. "
        "Codes are the 6 characters the channel texted to the person who asked."
    )


def cmd_deny(store: AccessStore, code: str) -> _Result:
    """`deny <code>`: drop the pending code (expired or not)."""
    try:
        before, after = _update(store, lambda a: access_mod.deny(a, code))
    except access_mod.UnknownCodeError:
        raise AccessCLIError(_unknown_code(store, code)) from None
    sender = before.pending[code.strip().lower()].sender_id
    return _Result(f"Denied pairing {code.strip().lower()} from {sender}.", after, changed=True, senderId=sender)


_NOT_IN_NAMES = frozenset("@;:/\\<>")


def _looks_like_name(value: str) -> bool:
    """True for text that may be a contact's name: it has a letter and none of `@ ; : / \\ < >` (an email, a
    chat GUID or a path gets the handle parser's own error)."""
    text = value.strip()
    return any(ch.isalpha() for ch in text) and not _NOT_IN_NAMES.intersection(text)


def find_contact(contacts: Contacts | None, value: str, not_a_handle: AccessCLIError) -> Contact:
    """The one contact `value` names (`Contacts.resolve`). Else `AccessCLIError` with the resolver's paragraph
    (the candidates of an ambiguous name, close matches of an unknown one), or, when names cannot be looked up,
    `not_a_handle` (why `value` is no handle) and why not."""
    if contacts is None:
        raise not_a_handle
    try:
        return contacts.resolve(value)
    except ContactsUnavailable as exc:
        raise AccessCLIError(f"{not_a_handle} A contact's name works too, but not here: {exc}") from None
    except ContactLookupError as exc:
        raise AccessCLIError(str(exc)) from None


def cmd_allow(store: AccessStore, handle: str, contacts: Contacts | None = None) -> _Result:
    """`allow <handle>`: add the normalised handle to `allowFrom` (deduplicated). `allow "<name>"`: the
    same for every handle of the one contact with that name (`find_contact`)."""
    try:
        h = parse_handle(handle, store.region)
    except AccessCLIError as exc:
        if not _looks_like_name(handle):
            raise
        return _allow_contact(store, find_contact(contacts, handle, exc))
    before, after = _update(store, lambda a: access_mod.allow(a, h))
    if after is before:
        return _Result(f"{h} is already allowed.", after, changed=False, handle=h)
    return _Result(f"Allowed {h}.", after, changed=True, handle=h)


def _allow_contact(store: AccessStore, contact: Contact) -> _Result:
    def step(a: Access) -> Access:
        for h in contact.handles:
            a = access_mod.allow(a, h)
        return a

    before, after = _update(store, step)
    added = [h for h in contact.handles if not access_mod.is_allowed(before.allow_from, h)]
    kept = [h for h in contact.handles if h not in added]
    name = meta_name(contact.name)
    extra = {"contact": contact.name, "handles": list(contact.handles), "added": added}
    if not added:
        return _Result(f"{name} is already allowed: {', '.join(kept)}.", after, changed=False, **extra)
    also = f" ({', '.join(kept)} already was)" if kept else ""
    return _Result(f"Allowed {name}: {', '.join(added)}{also}.", after, changed=True, **extra)


def _remove_contact(store: AccessStore, contact: Contact) -> _Result:
    def step(a: Access) -> Access:
        for h in contact.handles:
            if access_mod.is_allowed(a.allow_from, h):
                a = access_mod.disallow(a, h)
        return a

    before, after = _update(store, step)
    removed = [h for h in contact.handles if access_mod.is_allowed(before.allow_from, h)]
    name = meta_name(contact.name)
    extra = {"contact": contact.name, "handles": list(contact.handles), "removed": removed}
    if not removed:
        listed = ", ".join(contact.handles)
        return _Result(f"{name} ({listed}) was not in the allowlist; nothing changed.", after, changed=False, **extra)
    return _Result(f"Removed {name} from the allowlist: {', '.join(removed)}.", after, changed=True, **extra)


def cmd_remove(store: AccessStore, handle: str, contacts: Contacts | None = None) -> _Result:
    """`remove <handle>`: remove every `allowFrom` entry equal to the handle (emails by case, phones
    by digits). An entry the file holds that is not a handle (ignored by the channel) is removed when
    typed exactly as it is in the file; otherwise a name removes every handle of that contact."""
    try:
        h = parse_handle(handle, store.region)
    except AccessCLIError as exc:
        raw = handle.strip()
        if raw not in store.load(strict=True).invalid:
            if _looks_like_name(raw):
                return _remove_contact(store, find_contact(contacts, raw, exc))
            raise
        _, after = _update(store, lambda a: replace(a, invalid=tuple(x for x in a.invalid if x != raw)))
        return _Result(f"Removed {raw!r} (not a handle) from the allowlist.", after, changed=True, handle=raw)

    def step(a: Access) -> Access:
        return access_mod.disallow(a, h) if access_mod.is_allowed(a.allow_from, h) else a

    before, after = _update(store, step)
    if after is before:
        return _Result(f"{h} was not in the allowlist; nothing changed.", after, changed=False, handle=h)
    return _Result(f"Removed {h} from the allowlist.", after, changed=True, handle=h)


def cmd_policy(store: AccessStore, mode: str) -> _Result:
    """`policy <mode>`: set `dmPolicy` to `allowlist`, `pairing` or `disabled`."""
    value = mode.strip().lower()
    if value not in DmPolicy._value2member_map_:
        raise AccessCLIError(
            f"Unknown policy {mode!r}. Policies: allowlist ({POLICY_MEANING[DmPolicy.ALLOWLIST]}); "
            f"pairing ({POLICY_MEANING[DmPolicy.PAIRING]}); disabled ({POLICY_MEANING[DmPolicy.DISABLED]})."
        )
    policy = DmPolicy(value)
    before, after = _update(store, lambda a: a if a.dm_policy is policy else replace(a, dm_policy=policy))
    changed = after is not before
    return _Result(
        f"DM policy {'set to' if changed else 'is already'} {policy.value}: {POLICY_MEANING[policy]}.",
        after,
        changed=changed,
    )


def cmd_group_add(store: AccessStore, guid: str, *, no_mention: bool, allow: str) -> _Result:
    """`group add <guid> [--no-mention] [--allow a,b]`: set `groups[guid]` (keeping keys this
    version does not know). `--allow` restricts who in the group may trigger Claude."""
    key = parse_group_guid(guid)
    members = _members(allow, store.region)

    def step(a: Access) -> Access:
        existing = group_key(a.groups, key)
        extra = a.groups[existing].extra if existing else {}
        groups = {k: g for k, g in a.groups.items() if k != existing}
        groups[key] = GroupPolicy(require_mention=not no_mention, allow_from=members, extra=extra)
        return replace(a, groups=groups)

    _, after = _update(store, step)
    note = ""
    if not no_mention and not after.mention_patterns:
        note = (
            " Note: no mentionPatterns are set, so nothing in this group will reach Claude yet; set some with "
            "`imessage-channel access set mentionPatterns '[\"^claude\\\\b\"]'` (or add the group with --no-mention)."
        )
    mention = "messages matching mentionPatterns" if not no_mention else "every message"
    who = ", ".join(members) if members else "any member"
    return _Result(f"Group {key} enabled: {mention} from {who}.{note}", after, changed=True, guid=key)


def _members(allow: str, region: Region) -> tuple[str, ...]:
    """The handles of `--allow a,b,…` (empty items, as after a trailing comma, are skipped; duplicates
    kept once). Every item is checked; all bad ones are named in one `AccessCLIError`."""
    members: dict[str, None] = {}
    bad: list[HandleError] = []
    for item in (i.strip() for i in allow.split(",")):
        if not item:
            continue
        try:
            members[handles.parse_handle(item, region)] = None
        except HandleError as exc:
            bad.append(exc)
    if len(bad) == 1:
        raise AccessCLIError(f"--allow: {bad[0]}")
    if bad:
        raise AccessCLIError("--allow: " + " ".join(e.brief for e in bad) + " " + handles.HANDLE_HINT)
    return tuple(members)


def cmd_group_rm(store: AccessStore, guid: str) -> _Result:
    """`group rm <guid>`: remove the group (also when it was added under another service prefix)."""
    key = guid.strip()

    def step(a: Access) -> Access:
        existing = group_key(a.groups, key)
        if existing is None:
            return a
        return replace(a, groups={k: g for k, g in a.groups.items() if k != existing})

    before, after = _update(store, step)
    if after is before:
        return _Result(f"Group {key} was not enabled; nothing changed.", after, changed=False, guid=key)
    return _Result(f"Group {key} disabled.", after, changed=True, guid=key)


def parse_chat_guid(value: str) -> str:
    """`value` stripped, when it is a chat GUID (`iMessage;-;+15551234567`, `iMessage;+;chat123…`); else
    `AccessCLIError`."""
    guid = value.strip()
    if ChatGuid.parse(guid) is None or any(c.isspace() for c in guid):
        raise AccessCLIError(
            f"{guid!r} is not a chat GUID. They look like 'iMessage;-;+15551234567' or 'iMessage;+;chat123456789'; "
            "`imessage-channel messages` shows them in each chat's header, and events carry them as chat_id."
        )
    return guid


def _routes(a: Access) -> dict[str, str]:
    return pins_from_access(a.extra)


def cmd_route_add(store: AccessStore, guid: str, session: str) -> _Result:
    """`route add <chat guid> <session>`: texts in that chat go to the live session of that name (stored
    sanitised, as session names are: `My Project` → `my-project`)."""
    key, name = parse_chat_guid(guid), sanitize_name(session)

    def step(a: Access) -> Access:
        routes = {g: n for g, n in _routes(a).items() if g != key}
        return replace(a, extra={**a.extra, "routes": {**routes, key: name}})

    _, after = _update(store, step)
    message = f"Chat {key} now goes to the session {name!r} while it runs."
    return _Result(message, after, changed=True, guid=key, session=name)


def cmd_route_rm(store: AccessStore, guid: str) -> _Result:
    """`route rm <chat guid>`: unpin the chat (it goes where unaddressed texts go)."""
    key = guid.strip()

    def step(a: Access) -> Access:
        routes = _routes(a)
        if key not in routes:
            return a
        rest = {g: n for g, n in routes.items() if g != key}
        extra = {k: v for k, v in a.extra.items() if k != "routes"} | ({"routes": rest} if rest else {})
        return replace(a, extra=extra)

    before, after = _update(store, step)
    if after is before:
        return _Result(f"Chat {key} was not pinned; nothing changed.", after, changed=False, guid=key)
    return _Result(f"Chat {key} is no longer pinned to a session.", after, changed=True, guid=key)


def sessions_lines(state_dir: Path, access: Access, now: float) -> list[str]:
    """The sessions block of the status: live sessions, the reader, the default, and pinned chats."""
    try:
        lines = overview(state_dir).lines(now)
    except OSError as exc:
        lines = [f"Sessions: cannot be read ({statefile.describe_error(exc)})"]
    routes = _routes(access)
    lines.append(f"Pinned chats ({len(routes)})" + (":" if routes else ""))
    lines += [f"  {guid} → {name}" for guid, name in sorted(routes.items())]
    return lines


def cmd_set(store: AccessStore, key: str, value: str) -> _Result:
    """`set <key> <value>`: one delivery setting (see `parse_setting`)."""
    edit = parse_setting(key, value)
    _, after = _update(store, edit)
    shown = json.dumps(after.to_json().get(key), ensure_ascii=False)
    return _Result(f"{key} = {shown}", after, changed=True, key=key)


# --- entry point --------------------------------------------------------------------------------


def _dispatch(args: argparse.Namespace, store: AccessStore, now: datetime, contacts: Contacts) -> _Result | None:
    verb = getattr(args, "verb", None)
    if verb is None:
        return None
    if verb == "pair":
        return cmd_pair(store, args.code, now)
    if verb == "deny":
        return cmd_deny(store, args.code)
    if verb == "allow":
        return cmd_allow(store, args.handle, contacts)
    if verb == "remove":
        return cmd_remove(store, args.handle, contacts)
    if verb == "policy":
        return cmd_policy(store, args.mode)
    if verb == "group" and args.group_verb == "add":
        return cmd_group_add(store, args.guid, no_mention=args.no_mention, allow=args.allow)
    if verb == "group" and args.group_verb == "rm":
        return cmd_group_rm(store, args.guid)
    if verb == "set":
        return cmd_set(store, args.key, args.value)
    if verb == "route" and args.route_verb == "add":
        return cmd_route_add(store, args.guid, args.session)
    if verb == "route" and args.route_verb == "rm":
        return cmd_route_rm(store, args.guid)
    raise AccessCLIError(f"unknown access verb {verb!r}")


def _names_json(access: Access, contacts: Contacts) -> dict[str, str]:
    """handle → contact name, for every handle the status shows that a contact has."""
    shown = [*access.allow_from, *(p.sender_id for p in access.pending.values())]
    shown += [h for g in access.groups.values() for h in g.allow_from]
    return {h: name for h in dict.fromkeys(shown) if (name := contacts.name_for(h))}


def _sessions_json(state_dir: Path) -> dict[str, object]:
    try:
        return overview(state_dir).to_json()
    except OSError as exc:
        return {"sessions": None, "sessions_error": statefile.describe_error(exc)}


def _print_status(store: AccessStore, settings: Settings, contacts: Contacts, now: datetime, *, as_json: bool) -> None:
    """The status (no verb): for people, or as JSON. Raises what `AccessStore.load(strict=True)` raises."""
    access = store.load(strict=True)
    if not as_json:
        print(status_text(access, str(store.path), now, contacts.name_for))
        print("\n".join(sessions_lines(settings.state_dir, access, now.timestamp())))
        return
    now_ms = _ms(now)
    out = {
        "path": str(store.path),
        "static": settings.static_access,
        "access": access.to_json(),
        "pending": [_pending_json(c, p, now_ms) for c, p in access.pending.items()],
        "ignored": list(access.problems),
        "names": _names_json(access, contacts),
        **_sessions_json(settings.state_dir),
    }
    print(json.dumps(out, indent=2, ensure_ascii=False))


def run(args: argparse.Namespace) -> int:
    """Run `imessage-channel access [verb …]` (parsed by `cli.build_parser`). Returns the exit status:
    0 done (also when nothing needed changing), 2 refused (message on stderr, nothing written)."""
    as_json = bool(getattr(args, "json", False))
    settings: Settings = args.settings
    if settings.state_dir.exists() and not settings.state_dir.is_dir():
        print(
            f"imessage-channel access: the state directory {settings.state_dir} is a file, not a folder: point "
            "IMESSAGE_STATE_DIR at a folder (default ~/.claude/channels/imessage).",
            file=sys.stderr,
        )
        return 2
    region = functools.cache(lambda: owner_region(settings).code)
    store = AccessStore(settings.state_dir, region=region, move_corrupt=False)
    contacts = Contacts(settings.addressbook_dir, enabled=settings.contacts, region=region)
    now = _now()
    try:
        result = _dispatch(args, store, now, contacts)
        if result is None:
            _print_status(store, settings, contacts, now, as_json=as_json)
            return 0
    except (AccessCLIError, PairingError) as exc:
        print(f"imessage-channel access: {exc}", file=sys.stderr)
        return 2
    except AccessUnavailableError as exc:
        print(f"imessage-channel access: {exc}. Nothing was changed.", file=sys.stderr)
        return 2
    except OSError as exc:
        where = Path(exc.filename) if exc.filename and os.path.lexists(exc.filename) else store.state_dir
        print(
            f"imessage-channel access: cannot update {store.path}: {where} ({statefile.describe_error(exc)}). "
            f"Fix: {statefile.unreadable_help(where, exc)}. `imessage-channel doctor` checks the state directory.",
            file=sys.stderr,
        )
        return 2
    if as_json:
        out = {"changed": result.changed, "message": result.message, **result.extra, "access": result.access.to_json()}
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(result.message)
    if result.changed and settings.static_access:
        print(
            "note: IMESSAGE_ACCESS_MODE=static: a running server read access.json when it started; restart it "
            "to apply this change.",
            file=sys.stderr,
        )
    return 0
