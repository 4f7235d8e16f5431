"""The access gate: one pure decision (deliver / drop / pair) per inbound chat.db message row.

No I/O and no clock: the caller reads access.json (`imessage_channel.access.AccessStore`), computes
self-chat from the owner's handles, and acts on the `Decision` (for PAIR: `access.issue_pairing_code`).

Semantics are those of the official Claude Code iMessage plugin (anthropics/claude-plugins-official,
`external_plugins/imessage/server.ts`: `handleInbound`, `gate`, `isMentioned`; `ACCESS.md`), in this
order:

| # | condition                                                  | verdict | reason                   |
|---|------------------------------------------------------------|---------|--------------------------|
| 1 | service is not iMessage/iMessageLite and not `allow_sms`   | DROP    | `sms`                    |
| 2 | self-chat                                                  | DELIVER | `self-chat`              |
| 3 | `is_from_me`                                               | DROP    | `own-message`            |
| 4 | no sender handle                                           | DROP    | `no-sender`              |
| 5 | chat style neither 45 (DM) nor 43 (group), or NULL         | DROP    | `unknown-chat-style`     |
| 6 | `dmPolicy` is `disabled` (DMs *and* groups)                | DROP    | `dm-disabled`            |
| 7 | DM, sender in `allowFrom`                                  | DELIVER | `allowlisted`            |
| 8 | DM, policy `pairing`                                       | PAIR    | `pairing`                |
| 9 | DM, policy `allowlist`                                     | DROP    | `not-allowlisted`        |
|10 | group not in `groups`                                      | DROP    | `group-not-enabled`      |
|11 | group `allowFrom` non-empty, sender not in it              | DROP    | `not-in-group-allowlist` |
|12 | group `requireMention: false`                              | DELIVER | `group-open`             |
|13 | group, a `mentionPatterns` regex matches the text          | DELIVER | `mentioned`              |
|14 | group, no match (or no patterns at all)                    | DROP    | `no-mention`             |

Notes on the choices:
- Rule 6: as in server.ts, `disabled` closes configured groups too ("drop everything except
  self-chat", ACCESS.md).
- Rule 1 comes before self-chat, as in server.ts: SMS sender IDs are spoofable, so an SMS "from" the
  owner's own number must not get the self-chat bypass (and with it the permission relay). With
  `allow_sms` (env `IMESSAGE_ALLOW_SMS=true`) a self-chat over SMS does bypass, as in the official
  plugin. Unlike server.ts (which keeps only `service == "iMessage"`), `iMessageLite` (iMessage via
  satellite, still Apple-ID-authenticated) counts as iMessage; services compare case-insensitively.
- Rule 2: self-chat bypasses the gate, including the owner's own `is_from_me` rows there (on macOS 26
  a self-chat text typed on the Mac may exist only as such a row; server.ts drops them). Filtering our
  own sends (the echo filter) is the caller's job. Set `is_self_chat` only for DMs.
- Handles compare through `normalize_handle` (emails by case, phones by digits); server.ts compares
  exact strings. DMs are gated on the sender, never on the chat GUID.
- Rule 14: with `requireMention` and no patterns nothing matches, so the group stays silent (ACCESS.md:
  "Set at least one pattern before opting a group in, or no message will ever match").
- Rule 5: server.ts routes any non-43, non-NULL style through the DM gate; we never do (a group
  misread as a DM could leak a pairing code). macOS 26 GUIDs (`any;-;…`, `any;+;…`) need nothing
  special: the gate reads `chat_style`, not the GUID prefix.
- Group lookup: `groups` is keyed by chat GUID; a group configured as `iMessage;+;chat123` also matches
  `any;+;chat123` (and vice versa): the service prefix is ignored when there is no exact key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imessage_channel.access import Access, DmPolicy, GroupPolicy, group_key, is_allowed
from imessage_channel.handles import STYLE_DM, STYLE_GROUP
from imessage_channel.patterns import any_match
from imessage_channel.reasons import Reason, Verdict

#: Services whose sender is authenticated by Apple ID (compared lowercased).
IMESSAGE_SERVICES = frozenset({"imessage", "imessagelite"})


@dataclass(frozen=True, slots=True)
class Inbound:
    """What the gate needs to know about one inbound message row.

    `sender`: the sender's handle (`handle.id`), None for `is_from_me` rows. `chat_guid`: `chat.guid`.
    `chat_style`: `chat.style` (45 DM, 43 group, anything else unknown). `service`: `message.service`
    (`iMessage`, `SMS`, `RCS`/`rcs`, `iMessageLite`, …). `is_self_chat`: computed by the caller from the
    owner's handles (a DM whose other participant is the owner).
    """

    sender: str | None
    chat_guid: str
    chat_style: int | None
    service: str
    text: str
    is_from_me: bool
    is_self_chat: bool


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and the reason that decided it (see the module table; `reasons` words both)."""

    verdict: Verdict
    reason: Reason


def _deliver(reason: Reason) -> Decision:
    return Decision(Verdict.DELIVER, reason)


def _drop(reason: Reason) -> Decision:
    return Decision(Verdict.DROP, reason)


def decide(msg: Inbound, access: Access, *, allow_sms: bool) -> Decision:
    """Decide what to do with `msg` under `access`; `allow_sms` is env `IMESSAGE_ALLOW_SMS=true`.

    Pure; the rules and their order are the module docstring's table. Never raises.
    """
    if not allow_sms and msg.service.lower() not in IMESSAGE_SERVICES:
        return _drop(Reason.SMS)
    if msg.is_self_chat:
        return _deliver(Reason.SELF_CHAT)
    if msg.is_from_me:
        return _drop(Reason.OWN_MESSAGE)
    if not msg.sender:
        return _drop(Reason.NO_SENDER)
    if msg.chat_style not in (STYLE_DM, STYLE_GROUP):
        return _drop(Reason.UNKNOWN_CHAT_STYLE)
    if access.dm_policy is DmPolicy.DISABLED:
        return _drop(Reason.DM_DISABLED)
    if msg.chat_style == STYLE_DM:
        if is_allowed(access.allow_from, msg.sender):
            return _deliver(Reason.ALLOWLISTED)
        if access.dm_policy is DmPolicy.PAIRING:
            return Decision(Verdict.PAIR, Reason.PAIRING)
        return _drop(Reason.NOT_ALLOWLISTED)
    group = find_group(access.groups, msg.chat_guid)
    if group is None:
        return _drop(Reason.GROUP_NOT_ENABLED)
    if group.allow_from and not is_allowed(group.allow_from, msg.sender):
        return _drop(Reason.NOT_IN_GROUP_ALLOWLIST)
    if not group.require_mention:
        return _deliver(Reason.GROUP_OPEN)
    if mentioned(msg.text, access.mention_patterns or ()):
        return _deliver(Reason.MENTIONED)
    return _drop(Reason.NO_MENTION)


def find_group(groups: Mapping[str, GroupPolicy], chat_guid: str) -> GroupPolicy | None:
    """The `groups` entry for `chat_guid` (`access.group_key`: the exact key, else one equal but for the
    service prefix, as macOS 26 writes GUIDs). None when not configured."""
    key = group_key(groups, chat_guid)
    return groups[key] if key is not None else None


def mentioned(text: str, patterns: Sequence[str]) -> bool:
    """True when any of `patterns` matches anywhere in `text`, case-insensitively.

    iMessage has no structured mentions (ACCESS.md), so `mentionPatterns` regexes are the only trigger.
    Patterns run on RE2 (`imessage_channel.patterns`): time linear in the text whatever the pattern, so a
    pathological entry such as `^(a+)+$` cannot stall delivery. A pattern RE2 cannot compile (bad syntax,
    look-around, back-references) is skipped; `AccessStore` logs it when it loads the file.
    """
    return any_match(patterns, text)
