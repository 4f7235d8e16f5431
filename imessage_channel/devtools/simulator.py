"""Messages simulator: writes chat.db rows the way macOS Messages does.

The demo, the tests and the benchmarks need a chat.db that changes under the channel exactly as a real
one does, without a Mac. This module is that writer. It only ever touches the database it was given
(a copy of a fixture), never `~/Library/Messages`.

What it reproduces (design §4, checked against the real Ventura rows in `fixtures/reference`):
- `handle` upserts, unique on `(id, service)`; `chat` with `style` 45 (DM) / 43 (group),
  `chat_handle_join` for members, `account_login` = the owner's `E:` account;
- a `message` row plus its `chat_message_join` (`message_date` copied), written in one transaction —
  or the join later, with `join=False` + `join_chat`, as Messages sometimes does (design §5);
- text in `text` *and* `attributedBody`, or (Ventura+ default, macOS 26 always) only in the
  typedstream `attributedBody`, with one U+FFFC per attachment and file-transfer runs;
- attachments in `attachment` + `message_attachment_join` (whose trigger sets
  `cache_has_attachments`), files written under an attachments folder; joins committed after the message,
  one commit per file if asked (`attachment_joins=False` + `join_attachments(row, 1)`); downloads still in progress
  (`transfer_state` < 5, no file yet) that finish later (`finish_download`); voice messages
  (`is_audio_message`) and stickers (`attachment.is_sticker`);
- tapbacks (`associated_message_type` 2000–2007 / 3000–3007, `p:0/GUID`) and stickers placed on a
  bubble (1000), inline replies
  (`thread_originator_guid`), edits (`date_edited`, `message_summary_info` with `ec` history),
  unsends (`date_retracted`, text cleared), group events and other notices (`item_type` 1–6), receipts
  (whitespace text),
  SMS/RCS rows, sent rows with `account` / `destination_caller_id`, `any;-;` GUIDs (macOS 26).

Only columns present in the target schema are written, so every fixture version works.
"""

from __future__ import annotations

import dataclasses
import os
import plistlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..appletime import to_apple_ns
from ..typedstream import AttributeRun, utf16_len
from .typedstream_writer import encode_attributed_body

PART = "__kIMMessagePartAttributeName"
TRANSFER = "__kIMFileTransferGUIDAttributeName"

REACTION_CODES = {
    "love": 0,
    "like": 1,
    "dislike": 2,
    "laugh": 3,
    "emphasize": 4,
    "question": 5,
    "emoji": 6,
    "sticker": 7,
}


@dataclass(frozen=True, slots=True)
class ChatRef:
    """A chat the simulator created: its ROWID, GUID, style and member handles."""

    rowid: int
    guid: str
    style: int
    members: tuple[str, ...]
    service: str


@dataclass(frozen=True, slots=True)
class RowRef:
    """A message row the simulator wrote: ROWID and GUID."""

    rowid: int
    guid: str


@dataclass(frozen=True, slots=True)
class AttachmentSpec:
    """An attachment to write: file name, MIME type, UTI, content (None: no file on disk, e.g. still
    downloading), and `transfer_state` (5 = finished; 0/1/2/3 = waiting/downloading)."""

    name: str
    mime_type: str
    uti: str
    data: bytes | None = b""
    transfer_state: int = 5
    is_sticker: bool = False


TRIGGER_FUNCTIONS: dict[str, tuple[int, object]] = {
    "delete_attachment_path": (1, None),
    "before_delete_attachment_path": (2, None),
    "after_delete_message_plugin": (2, None),
    "verify_chat": (1, None),
    "is_mic_enabled": (0, 0),
    "guid_for_chat": (3, None),
    "delete_chat_background_before_deleting_chat": (2, None),
}
"""Functions Apple's chat.db triggers call that exist only inside Messages: name → (argument count,
value the stub returns). The first three are in Ventura's schema, the rest in macOS 26's
(`verify_chat_insert` fires on every `INSERT INTO chat`)."""


def register_trigger_stubs(conn: sqlite3.Connection) -> None:
    """Register no-op stubs of `TRIGGER_FUNCTIONS` on a writing connection (per connection)."""
    for name, (n_args, result) in TRIGGER_FUNCTIONS.items():
        conn.create_function(name, n_args, lambda *_args, _r=result: _r, deterministic=True)


def _attributed_body(text: str, att_guids: Sequence[str], *, transfer_runs: bool) -> tuple[str, bytes | None]:
    """A message's full text (one U+FFFC per file, then `text`) and its attributedBody as Messages writes it:
    a run per file (its part number and, with `transfer_runs`, its transfer GUID), then one for the text. The
    body is None when the message has neither."""
    full = "\ufffc" * len(att_guids) + text
    runs = [AttributeRun(i, 1, {PART: i, **({TRANSFER: g} if transfer_runs else {})}) for i, g in enumerate(att_guids)]
    if text:
        runs.append(AttributeRun(len(att_guids), utf16_len(text), {PART: len(att_guids)}))
    return full, (encode_attributed_body(full, runs, mutable=True) if full else None)


def _associated(target_guid: str, part: int, code: int) -> dict[str, object]:
    """The columns of a row that acts on part `part` of message `target_guid` (`associated_message_type` `code`:
    a tapback, its removal, a placed sticker)."""
    return {
        "associated_message_guid": f"p:{part}/{target_guid}",
        "associated_message_type": code,
        "associated_message_range_location": 0,
        "associated_message_range_length": 1,
    }


def _guid() -> str:
    return str(uuid.uuid4()).upper()


class MessagesSimulator:
    """Write rows into a chat.db as Messages would.

    `owner` is the owner's iMessage account (written as `E:<owner>` in `account`), `owner_phone` an
    optional phone alias. `clock` returns the aware datetime stamped on rows (default: now, UTC).
    Each write commits on its own unless inside `with sim.batch():`, which commits once at the end
    (e.g. 10 000 rows in one commit).
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        owner: str = "owner@example.com",
        owner_phone: str | None = None,
        attachments_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = Path(db_path)
        self.owner = owner
        self.owner_phone = owner_phone
        self.attachments_dir = Path(attachments_dir) if attachments_dir else self.path.parent / "Attachments"
        self.clock = clock or (lambda: datetime.now(UTC))
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        register_trigger_stubs(self.conn)
        self._cols = {t: self._columns(t) for t in ("message", "chat", "handle", "attachment", "chat_message_join")}
        self._depth = 0
        self._unjoined: dict[int, list[int]] = {}

    def _columns(self, table: str) -> frozenset[str]:
        return frozenset(r[1] for r in self.conn.execute(f"PRAGMA table_info({table})"))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> MessagesSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group writes into one transaction (one commit, one WAL frame set, one watcher wake)."""
        self._begin()
        try:
            yield
        except BaseException:
            self._depth = 0
            self.conn.execute("ROLLBACK")
            raise
        self._end()

    def _begin(self) -> None:
        if self._depth == 0:
            self.conn.execute("BEGIN IMMEDIATE")
        self._depth += 1

    def _end(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.conn.execute("COMMIT")

    def _insert(self, table: str, values: dict[str, object]) -> int:
        cols = [c for c in values if c in self._cols[table]]
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        return int(self.conn.execute(sql, [values[c] for c in cols]).lastrowid or 0)

    def _update(self, table: str, rowid: int, values: dict[str, object]) -> None:
        cols = [c for c in values if c in self._cols[table]]
        sets = ", ".join(f"{c} = ?" for c in cols)
        self.conn.execute(f"UPDATE {table} SET {sets} WHERE ROWID = ?", [*[values[c] for c in cols], rowid])

    # -- handles and chats --------------------------------------------------------------------
    def handle(self, address: str, service: str = "iMessage") -> int:
        """Upsert a `handle` row (unique on id+service) and return its ROWID."""
        self._begin()
        try:
            row = self.conn.execute(
                "SELECT ROWID FROM handle WHERE id = ? AND service = ?", (address, service)
            ).fetchone()
            if row:
                return int(row[0])
            digits = "".join(ch for ch in address if ch.isdigit()) if "@" not in address else None
            return self._insert(
                "handle",
                {
                    "id": address,
                    "country": "us",
                    "service": service,
                    "uncanonicalized_id": digits,
                    "person_centric_id": None,
                },
            )
        finally:
            self._end()

    def _chat(
        self, guid: str, style: int, identifier: str, members: Sequence[str], service: str, name: str | None
    ) -> ChatRef:
        self._begin()
        try:
            row = self.conn.execute("SELECT ROWID FROM chat WHERE guid = ?", (guid,)).fetchone()
            if row:
                rowid = int(row[0])
            else:
                rowid = self._insert(
                    "chat",
                    {
                        "guid": guid,
                        "style": style,
                        "state": 3,
                        "account_id": _guid(),
                        "chat_identifier": identifier,
                        "service_name": service,
                        "room_name": identifier if style == 43 else None,
                        "account_login": f"E:{self.owner}",
                        "display_name": name or "",
                        "group_id": _guid(),
                        "last_addressed_handle": self.owner_phone or self.owner,
                    },
                )
                for member in members:
                    hid = self.handle(member, service if service != "any" else "iMessage")
                    self.conn.execute(
                        "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?, ?)",
                        (rowid, hid),
                    )
            return ChatRef(rowid, guid, style, tuple(members), service)
        finally:
            self._end()

    def dm(self, address: str, service: str = "iMessage", *, any_guid: bool = False) -> ChatRef:
        """A one-to-one chat (style 45) with `address`; `any_guid=True` uses macOS 26's `any;-;` form."""
        prefix = "any" if any_guid else service
        return self._chat(f"{prefix};-;{address}", 45, address, [address], service, None)

    def self_chat(self, address: str | None = None, *, any_guid: bool = False) -> ChatRef:
        """The owner's chat with themself, over `address` (default: the owner's account)."""
        return self.dm(address or self.owner, any_guid=any_guid)

    def group(
        self,
        members: Sequence[str],
        *,
        name: str | None = None,
        service: str = "iMessage",
        any_guid: bool = False,
    ) -> ChatRef:
        """A group chat (style 43) with `members` (the owner is implicit, as in chat.db)."""
        ident = "chat" + str(uuid.uuid4().int)[:18]
        prefix = "any" if any_guid else service
        return self._chat(f"{prefix};+;{ident}", 43, ident, members, service, name)

    # -- messages -----------------------------------------------------------------------------
    def _message(
        self,
        chat: ChatRef | None,
        *,
        text: str,
        handle: str | None,
        is_from_me: bool,
        service: str | None = None,
        body_only: bool = True,
        attachments: Sequence[AttachmentSpec] = (),
        date: datetime | None = None,
        join: bool = True,
        attachment_joins: bool = True,
        transfer_runs: bool = True,
        extra: Mapping[str, object] | None = None,
    ) -> RowRef:
        service = service or (chat.service if chat and chat.service != "any" else "iMessage")
        when = date or self.clock()
        ns = to_apple_ns(when)
        guid = _guid()
        att_guids = [_guid() for _ in attachments]
        full, body = _attributed_body(text, att_guids, transfer_runs=transfer_runs)
        self._begin()
        try:
            handle_id = self.handle(handle, service) if handle else 0
            values: dict[str, object] = {
                "guid": guid,
                "text": None if body_only else (full or None),
                "attributedBody": body,
                "handle_id": handle_id,
                "service": service,
                "account": f"E:{self.owner}" if is_from_me else None,
                "account_guid": _guid(),
                "date": ns,
                "date_read": 0 if is_from_me else ns,
                "date_delivered": ns if is_from_me else 0,
                "is_from_me": int(is_from_me),
                "is_sent": int(is_from_me),
                "is_delivered": 1,
                "is_finished": 1,
                "is_read": int(not is_from_me),
                "destination_caller_id": self.owner_phone or self.owner,
                "part_count": max(1, len(attachments) + bool(text)),
                "date_edited": 0,
                "date_retracted": 0,
                **(extra or {}),
            }
            rowid = self._insert("message", values)
            if chat is not None and join:
                self.join_chat(rowid, chat, ns)
            att_rowids = [
                self._attachment(spec, g, ns, is_from_me) for spec, g in zip(attachments, att_guids, strict=True)
            ]
            self._join_or_hold(rowid, att_rowids, join=attachment_joins)
            return RowRef(rowid, guid)
        finally:
            self._end()

    def _join_or_hold(self, rowid: int, att_rowids: list[int], *, join: bool) -> None:
        """Join the new message's attachments now, or hold them back for `join_attachments` (a late join)."""
        if join:
            self._join_attachments(rowid, att_rowids)
        else:
            self._unjoined[rowid] = att_rowids

    def join_chat(self, message_rowid: int, chat: ChatRef, message_date: int | None = None) -> None:
        """Write the `chat_message_join` row for a message (separately, to simulate late joins)."""
        if message_date is None:
            message_date = int(
                self.conn.execute("SELECT date FROM message WHERE ROWID = ?", (message_rowid,)).fetchone()[0]
            )
        self._begin()
        try:
            self.conn.execute(
                "INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?, ?, ?)",
                (chat.rowid, message_rowid, message_date),
            )
        finally:
            self._end()

    def join_attachments(self, row: RowRef, count: int | None = None) -> int:
        """Write the `message_attachment_join` rows held back with `attachment_joins=False`, in one commit:
        all of them, or only the next `count` (call again for the rest, as Messages commits joins one by
        one). Returns how many are still held back."""
        held = self._unjoined.get(row.rowid, [])
        now, rest = (held, []) if count is None else (held[:count], held[count:])
        self._begin()
        try:
            self._join_attachments(row.rowid, now)
        finally:
            self._end()
        if rest:
            self._unjoined[row.rowid] = rest
        else:
            self._unjoined.pop(row.rowid, None)
        return len(rest)

    def _join_attachments(self, message_rowid: int, attachment_rowids: Sequence[int]) -> None:
        for att in attachment_rowids:
            self.conn.execute(
                "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?, ?)", (message_rowid, att)
            )

    def finish_download(self, row: RowRef, data: bytes, index: int = 0) -> None:
        """The `index`-th attachment of `row` finishes downloading: its file is written and its
        `attachment` row updated in place (`transfer_state` 5, `total_bytes`), as Messages does when
        a transfer that was still in progress when the message row was committed completes."""
        att_id, filename = self.conn.execute(
            "SELECT a.ROWID, a.filename FROM message_attachment_join j JOIN attachment a ON a.ROWID = j.attachment_id"
            " WHERE j.message_id = ? ORDER BY a.ROWID LIMIT 1 OFFSET ?",
            (row.rowid, index),
        ).fetchone()
        path = Path(filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self._begin()
        try:
            self._update("attachment", att_id, {"transfer_state": 5, "total_bytes": len(data)})
        finally:
            self._end()

    def _attachment(self, spec: AttachmentSpec, guid: str, ns: int, outgoing: bool) -> int:
        folder = self.attachments_dir / guid[:2].lower() / guid[2:4].lower() / guid
        path = folder / spec.name
        if spec.data is not None:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(spec.data)
        att = self._insert(
            "attachment",
            {
                "guid": guid,
                "original_guid": guid,
                "created_date": ns // 10**9,
                "start_date": 0,
                "filename": str(path),
                "uti": spec.uti,
                "mime_type": spec.mime_type,
                "transfer_state": spec.transfer_state,
                "is_outgoing": int(outgoing),
                "transfer_name": spec.name,
                "total_bytes": len(spec.data or b""),
                "is_sticker": int(spec.is_sticker),
            },
        )
        return att

    def receive(
        self,
        chat: ChatRef,
        sender: str,
        text: str,
        *,
        service: str | None = None,
        body_only: bool = True,
        attachments: Sequence[AttachmentSpec] = (),
        reply_to: str | None = None,
        date: datetime | None = None,
        join: bool = True,
        attachment_joins: bool = True,
        transfer_runs: bool = True,
        audio_message: bool = False,
    ) -> RowRef:
        """An inbound message from `sender` in `chat` (`is_from_me = 0`). `body_only` keeps `text`
        NULL (Ventura+ behaviour); `reply_to` makes it an inline reply to that GUID; `join=False` /
        `attachment_joins=False` hold back its chat / attachment joins (see `join_chat`,
        `join_attachments`), as Messages sometimes commits them later; `transfer_runs=False` leaves the
        file-transfer GUIDs out of the attributedBody (only the U+FFFC count announces the files);
        `audio_message=True` sets `is_audio_message` (a voice message recorded in Messages; attach its
        `.caf` file)."""
        extra: dict[str, object] = {}
        if reply_to:
            extra = {"thread_originator_guid": reply_to, "thread_originator_part": "0:0:0"}
        if audio_message:
            extra["is_audio_message"] = 1
        return self._message(
            chat,
            text=text,
            handle=sender,
            is_from_me=False,
            service=service,
            body_only=body_only,
            attachments=attachments,
            date=date,
            join=join,
            attachment_joins=attachment_joins,
            transfer_runs=transfer_runs,
            extra=extra,
        )

    def send(
        self,
        chat: ChatRef,
        text: str,
        *,
        attachments: Sequence[AttachmentSpec] = (),
        date: datetime | None = None,
        body_only: bool = True,
    ) -> RowRef:
        """A row the owner sent (`is_from_me = 1`, `account = E:<owner>`). In a DM `handle_id` is the
        other party, as in chat.db; in a group it is 0."""
        handle = chat.members[0] if chat.style == 45 and chat.members else None
        return self._message(
            chat,
            text=text,
            handle=handle,
            is_from_me=True,
            attachments=attachments,
            date=date,
            body_only=body_only,
        )

    def text_self(self, text: str, chat: ChatRef | None = None, *, typed_on: str = "phone") -> list[RowRef]:
        """The owner texting themself. From the phone Messages writes the sent copy (`is_from_me=1`)
        and the received copy (`is_from_me=0`, handle = the owner's address); typed on a macOS 26
        Mac only the `is_from_me=1` row exists (design §4)."""
        chat = chat or self.self_chat()
        with self.batch():
            rows = [self.send(chat, text)]
            if typed_on == "phone":
                rows.append(self.receive(chat, chat.members[0], text))
        return rows

    def tapback(
        self,
        chat: ChatRef,
        sender: str | None,
        target_guid: str,
        reaction: str = "like",
        *,
        removed: bool = False,
        emoji: str | None = None,
        part: int = 0,
        date: datetime | None = None,
    ) -> RowRef:
        """A tapback on `target_guid` (`p:<part>/GUID`), or its removal. `sender=None`: the owner's."""
        code = REACTION_CODES[reaction] + (3000 if removed else 2000)
        extra = {**_associated(target_guid, part, code), "associated_message_emoji": emoji}
        verb = {"love": "Loved", "like": "Liked", "dislike": "Disliked", "laugh": "Laughed at"}.get(
            reaction, "Reacted to"
        )
        return self._message(
            chat, text=f"{verb} a message", handle=sender, is_from_me=sender is None, date=date, extra=extra
        )

    def place_sticker(
        self,
        chat: ChatRef,
        sender: str | None,
        target_guid: str,
        sticker: AttachmentSpec,
        *,
        part: int = 0,
        date: datetime | None = None,
    ) -> RowRef:
        """A sticker dragged onto the bubble of `target_guid`: `associated_message_type` 1000 with
        `p:<part>/GUID`, the sticker as the row's attachment (one U+FFFC in the text), as imessage-exporter
        reads such rows. `sender=None`: the owner's."""
        extra = _associated(target_guid, part, 1000)
        spec = dataclasses.replace(sticker, is_sticker=True)
        return self._message(
            chat, text="", handle=sender, is_from_me=sender is None, attachments=[spec], date=date, extra=extra
        )

    def notice(self, chat: ChatRef, actor: str, item_type: int, *, share_status: bool = False) -> RowRef:
        """A notice row Messages writes with `item_type` (no text): 4 location sharing (`share_status`
        False started / True stopped), 5 an audio message kept, 6 SharePlay/FaceTime; `group_event` writes
        1–3."""
        extra = {"item_type": item_type, "share_status": int(share_status), "other_handle": 0}
        return self._message(chat, text="", handle=actor, is_from_me=False, extra=extra)

    def receipt(self, chat: ChatRef, sender: str) -> RowRef:
        """A whitespace-only row, as written for some delivery/read receipts."""
        return self._message(chat, text=" ", handle=sender, is_from_me=False, body_only=False)

    def group_event(
        self, chat: ChatRef, actor: str, *, item_type: int = 1, action: int = 0, title: str | None = None
    ) -> RowRef:
        """A group event: `item_type` 1 member change (action 0 add / 1 remove), 2 rename (`title`),
        3 left/photo change. No text, as in chat.db."""
        extra = {"item_type": item_type, "group_action_type": action, "group_title": title, "other_handle": 0}
        return self._message(chat, text="", handle=actor, is_from_me=False, extra=extra)

    def sms(self, sender: str, text: str, service: str = "SMS", *, date: datetime | None = None) -> RowRef:
        """An inbound SMS (or `service="RCS"`) in the sender's SMS DM (`SMS;-;<sender>`)."""
        chat = self.dm(sender, service=service)
        return self.receive(chat, sender, text, service=service, body_only=False, date=date)

    def edit(self, row: RowRef, new_text: str, *, date: datetime | None = None) -> None:
        """Edit a row in place (Ventura+): new text/body, `date_edited`, and the previous body kept in
        `message_summary_info` → `ec` → part 0, as Messages does."""
        old = self.conn.execute("SELECT attributedBody, date FROM message WHERE ROWID = ?", (row.rowid,)).fetchone()
        when = to_apple_ns(date or self.clock())
        history = {"ec": {"0": [{"d": old[1], "t": old[0] or b""}]}, "otr": {}}
        body = encode_attributed_body(new_text, [AttributeRun(0, utf16_len(new_text), {PART: 0})], mutable=True)
        self._begin()
        try:
            self._update(
                "message",
                row.rowid,
                {
                    "attributedBody": body,
                    "text": None,
                    "date_edited": when,
                    "message_summary_info": plistlib.dumps(history, fmt=plistlib.FMT_BINARY),
                },
            )
        finally:
            self._end()

    def unsend(self, row: RowRef, *, date: datetime | None = None) -> None:
        """Unsend a row in place (Ventura+): text and body cleared, `date_retracted` set, part 0 listed
        in `message_summary_info` → `rp`."""
        when = to_apple_ns(date or self.clock())
        info = plistlib.dumps({"rp": [0], "otr": {}}, fmt=plistlib.FMT_BINARY)
        self._begin()
        try:
            self._update(
                "message",
                row.rowid,
                {"attributedBody": None, "text": None, "date_retracted": when, "message_summary_info": info},
            )
        finally:
            self._end()

    # -- send results (receipts) ----------------------------------------------------------------
    def chat_ref(self, guid: str) -> ChatRef | None:
        """The existing chat with this GUID as a `ChatRef` (members from `chat_handle_join`), or None. For
        writers that only know a chat by its GUID, such as the fake `osascript` answering a send."""
        row = self.conn.execute(
            "SELECT ROWID, guid, style, COALESCE(service_name, 'iMessage') FROM chat WHERE guid = ? ORDER BY ROWID",
            (guid,),
        ).fetchone()
        if row is None:
            return None
        members = self.conn.execute(
            "SELECT h.id FROM chat_handle_join j JOIN handle h ON h.ROWID = j.handle_id WHERE j.chat_id = ?"
            " ORDER BY h.ROWID",
            (row[0],),
        ).fetchall()
        return ChatRef(int(row[0]), str(row[1]), int(row[2] or 0), tuple(m[0] for m in members), str(row[3]))

    def send_result(
        self,
        chat: ChatRef,
        text: str,
        *,
        error: int = 0,
        sent: bool = True,
        delivered: bool = True,
        attachments: Sequence[AttachmentSpec] = (),
        date: datetime | None = None,
    ) -> RowRef:
        """A row the owner sent, with its send state as Messages records it: `error` (`message.error`, 0 = none;
        22 = the recipient is not registered with iMessage), `is_sent`, `is_delivered` and `date_delivered`
        (the row's date when delivered, else 0). With the defaults it writes what `send` writes."""
        handle = chat.members[0] if chat.style == 45 and chat.members else None
        when = date or self.clock()
        extra: dict[str, object] = {
            "error": error,
            "is_sent": int(sent),
            "is_delivered": int(delivered),
            "date_delivered": to_apple_ns(when) if delivered else 0,
        }
        return self._message(
            chat, text=text, handle=handle, is_from_me=True, attachments=attachments, date=when, extra=extra
        )

    def fail_send(self, row: RowRef, error: int = 22) -> None:
        """A sent row turns red ("Not Delivered") after the fact: Messages updates it in place with a non-zero
        `error`, `is_delivered` 0 and no `date_delivered` (how BlueBubbles' outgoing-message listener sees a
        failure: the same ROWID re-read with `error` > 0)."""
        self._begin()
        try:
            self._update("message", row.rowid, {"error": error, "is_delivered": 0, "date_delivered": 0})
        finally:
            self._end()
