"""Events: what a delivered row (or a later change to it) looks like to Claude.

Owns the shape of `notifications/claude/channel` events: the content and the meta of a message, a reaction,
a reply, an edit, an unsend, and files that arrived after their message. Untrusted text only ever lands in
`content`; meta values come from chat.db columns, and those a sender's client can choose are checked before
(reply and reaction targets must be GUID-shaped, `chatdb.message_guid`; file names are flattened by
`media.safe_name`).

- *attachments*: every file on disk is listed in `attachments` (JSON `{path, mime, name, size[, original]}`,
  prepared by `media.prepare`: HEIC and oversized images become an inbox JPEG), the first image is
  `image_path`, `attachment_count` counts them all (joined and still announced), `attachments_pending` the
  ones still downloading or not joined yet (they follow in `kind="attachment"` events);
- *reactions* (tapbacks, and stickers placed on a bubble) read as `👍 liked your message "Done: 3 files…"`
  (`render.whose_message`); *replies* get `reply_to` and a first line `↩ reply to your message "…"` in the
  content (never meta: the quote is someone's text);
- *edits* arrive as `kind="edit"` with the new text, *unsends* as `kind="unsend"`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..appletime import from_apple
from ..chatdb import Attachment, ChatDB, Kind, Message
from ..clock import Clock
from ..contacts import meta_name
from ..media import Inbox, Prepared, prepare
from ..render import Names, attachment_label, first_words, quote_of, reaction_phrase, whose_message
from .actions import Deliver, iso_utc

FILE_KINDS = frozenset({Kind.TEXT, Kind.REPLY, Kind.EDIT})
"""Kinds whose files are waited for and followed (a reaction's sticker is not)."""


@dataclass(frozen=True, slots=True)
class Files:
    """The files of a message sorted for its event: `delivered` (prepared for Claude), `labels` (words for
    the content), `downloading` (not finished yet: the caller watches them)."""

    delivered: list[Prepared]
    labels: list[str]
    downloading: list[Attachment]


@dataclass(slots=True)
class Tracked:
    """A delivered message watched for edits and unsends (see `inbound.followups`)."""

    guid: str
    chat_guid: str
    user: str
    self_chat: bool
    text: str
    edited_ns: int
    until: datetime


@dataclass
class Events:
    """Builds events. `db` answers what a reply or reaction points at; `inbox` converts images for Claude
    (None: files are delivered as they are); `clock` stamps the events the channel makes itself."""

    db: ChatDB
    clock: Clock
    inbox: Inbox | None = None
    names: Names | None = None
    """The sender's contact name (`contacts.Contacts.name_for`), for `user_name`; None: no names."""

    def base_meta(self, msg: Message, self_chat: bool) -> dict[str, str]:
        """`chat_id`, `message_id`, `user`, `ts` (the official plugin's meta), `self_chat` when it is one, and
        `user_name` when the sender is a contact (the owner's data, yet flattened and capped like any value:
        `contacts.meta_name`)."""
        assert msg.chat_guid is not None
        meta = {
            "chat_id": msg.chat_guid,
            "message_id": msg.guid,
            "user": (msg.sender or "me") if msg.is_from_me else (msg.handle or "unknown"),
            "ts": iso_utc(msg.date or self.clock.now()),
        }
        if self_chat:
            meta["self_chat"] = "true"
        if not msg.is_from_me and msg.handle and self.names is not None:
            name = meta_name(self.names(msg.handle) or "")
            if name:
                meta["user_name"] = name
        return meta

    def message(self, msg: Message, self_chat: bool, missing: int) -> tuple[Deliver, list[Attachment]]:
        """The event for a row the gate let through, and its files still downloading (for the caller to
        watch); `missing` files are announced but not joined yet."""
        meta = self.base_meta(msg, self_chat)
        content, downloading = msg.text, []
        if msg.attachments or missing:
            files = self.files(msg, msg.attachments)
            downloading = files.downloading
            labels = [*files.labels, *([arriving_label(missing, more=bool(msg.attachments))] if missing else [])]
            attachment_meta(meta, files.delivered, len(msg.attachments) + missing)
            if len(downloading) + missing:
                meta["attachments_pending"] = str(len(downloading) + missing)
            kind_meta(meta, msg, msg.attachments)
            content = content or " ".join(labels)
        if msg.reply_to or msg.kind is Kind.REPLY:
            if msg.reply_to:  # GUID-shaped only (chatdb.message_guid): the sender's client wrote it
                meta["reply_to"] = msg.reply_to
            content = f"↩ reply to {self._target(msg, msg.reply_to)}\n{content}"
        if msg.kind is Kind.EDIT:
            meta["edited"] = "true"
        if msg.tapback is not None:
            content = f"{reaction_phrase(msg.tapback)} {self._target(msg, msg.tapback.target_guid)}"
            meta["kind"] = "reaction"
            meta["reaction"] = msg.tapback.reaction
            if msg.tapback.target_guid:  # "" unless GUID-shaped (chatdb.tapback_of)
                meta["reaction_to"] = msg.tapback.target_guid
            if msg.tapback.removed:
                meta["reaction_removed"] = "true"
        typed = msg.text if msg.tapback is None and content.endswith(msg.text) else None
        return Deliver(content, meta, msg.rowid, typed), downloading

    def _target(self, msg: Message, guid: str | None) -> str:
        """`your message "Done: 3 files…"`: whose message `guid` is and its first words (one lookup by
        the unique `message.guid`), or `a message` when it is not in chat.db or there is no GUID."""
        target = self.db.message_by_guid(guid) if guid else None
        quoted = quote_of(target) if target is not None else ""
        return f'{whose_message(target, msg)} "{quoted}"' if quoted else whose_message(target, msg)

    def files(self, msg: Message, atts: Sequence[Attachment]) -> Files:
        """Sort `atts` of `msg`. A file is delivered when it is on disk and finished (`transfer_state` 5) — or,
        for a row sent from this Mac (`is_from_me`), simply on disk: the original is local. A finished file
        that is not on disk (storage optimised away, deleted) is labelled `not on this Mac`."""
        out = Files([], [], [])
        for att in atts:
            label = attachment_label(att, audio_message=msg.is_audio_message)
            on_disk = bool(att.path) and os.path.isfile(att.path or "")
            if on_disk and (att.finished or msg.is_from_me):
                ready = prepare(att, self.inbox)
                if ready is not None:
                    out.delivered.append(ready)
                    out.labels.append(label)
                else:
                    out.labels.append(label[:-1] + ", unavailable]")
            elif not att.finished:  # not there yet, or partly written
                out.downloading.append(att)
                out.labels.append(label[:-1] + ", still downloading]")
            else:
                out.labels.append(label[:-1] + ", not on this Mac]")
        return out

    def later_files(
        self, msg: Message, self_chat: bool, atts: Sequence[Attachment], files: Files, still: int, how: str
    ) -> Deliver:
        """`kind="attachment"`: files `atts` of an earlier message (`message_id`) that arrived now (`how`:
        `finished downloading` or `arrived later`); `still` more are on their way."""
        meta = self.base_meta(msg, self_chat)
        meta["ts"] = iso_utc(self.clock.now())
        meta["kind"] = "attachment"
        attachment_meta(meta, files.delivered, len(atts))
        if still:
            meta["attachments_pending"] = str(still)
        kind_meta(meta, msg, atts)
        return Deliver(f"{how} for an earlier message: {' '.join(files.labels)}", meta)

    @staticmethod
    def edit(tracked: Tracked, text: str, edited_ns: int) -> Deliver:
        """`kind="edit"`: the message `edited_from` now reads `text`."""
        meta = _tracked_meta(tracked, edited_ns, "edit")
        meta["edited_from"] = tracked.guid
        return Deliver(text, meta)

    @staticmethod
    def unsend(tracked: Tracked, retracted_ns: int) -> Deliver:
        """`kind="unsend"`: the sender took back a message Claude received; quote its first words."""
        quoted = f' "{first_words(tracked.text, 60)}"' if tracked.text else ""
        return Deliver(f"unsent their message{quoted}; disregard it", _tracked_meta(tracked, retracted_ns, "unsend"))


def _tracked_meta(tracked: Tracked, apple_ns: int, kind: str) -> dict[str, str]:
    changed = from_apple(apple_ns)
    assert changed is not None
    meta = {"chat_id": tracked.chat_guid, "message_id": tracked.guid, "user": tracked.user}
    meta |= {"ts": iso_utc(changed), "kind": kind}
    if tracked.self_chat:
        meta["self_chat"] = "true"
    return meta


def kind_meta(meta: dict[str, str], msg: Message, atts: Sequence[Attachment]) -> None:
    """`audio_message` for a voice recording, `sticker` for a sticker, from the message and these files."""
    if msg.is_audio_message or any(a.is_audio for a in atts):
        meta["audio_message"] = "true"
    if any(a.is_sticker for a in atts):
        meta["sticker"] = "true"


def arriving_label(count: int, *, more: bool) -> str:
    """`[1 attachment still arriving]`, `[2 more attachments still arriving]`: files a message announced
    (U+FFFC, transfer runs) that Messages has not joined to it yet."""
    return f"[{count}{' more' if more else ''} attachment{'s' if count != 1 else ''} still arriving]"


def attachment_meta(meta: dict[str, str], delivered: list[Prepared], count: int) -> None:
    """`attachment_count`, `attachments` (JSON of `Prepared.as_json`) and `image_path` (first image)."""
    if count:
        meta["attachment_count"] = str(count)
    if delivered:
        meta["attachments"] = json.dumps([p.as_json() for p in delivered], ensure_ascii=False)
        image = next((p for p in delivered if p.is_image), None)
        if image is not None:
            meta["image_path"] = image.path
