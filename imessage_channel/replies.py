"""Replies: what the `reply` tool sends, and what happens when Messages cannot take it now.

Owns the path from "Claude answers chat G with text T and files F" to `sender.Sender`: the parts (chunked as
access.json says, the signature on the last), the echo filter told before anything is sent (so Messages
writing the reply back into chat.db never reaches Claude as input), the size limits (refused whole, before
any send), a transient failure's unsent parts queued in the outbox (`outbox.Outbox`) instead of lost, and
the answer confirmed from the rows Messages writes (`receipts`): "sent" only when they are there without
an error.
Blocking: call from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from .access import Access, AccessStore
from .echo import EchoFilter
from .outbox import RETRY_FOR_S, Outbox
from .receipts import Outcome as ReceiptOutcome
from .receipts import Receipts
from .render import first_words
from .sender import DEFAULT_SIGNATURE, Sender, SendError, check_reply_size, text_parts


def reply_signature(access: Access, append: bool | None) -> str | None:
    """The text appended to the last part of each reply, or None for none.

    Whether: `append` (`Settings.append_signature`, env `IMESSAGE_APPEND_SIGNATURE`, which wins when set, as in
    the official plugin), else access.json `appendSignature`, else yes. What: access.json `signature` on a line
    of its own (blank: none), else `sender.DEFAULT_SIGNATURE` ("Sent by Claude")."""
    if append is None:
        append = access.append_signature if access.append_signature is not None else True
    if not append:
        return None
    if access.signature is not None:
        text = access.signature.strip()
        return "\n" + text if text else None
    return DEFAULT_SIGNATURE


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a reply: `text` for Claude (the tool result); `queued` when parts wait in the outbox;
    `failed` when Messages marked a part not delivered (the tool answers it as an error)."""

    text: str
    queued: bool = False
    failed: bool = False


@dataclass
class Replies:
    """Sends replies (see the module docstring). `append_signature` is `Settings.append_signature`."""

    sender: Sender
    store: AccessStore
    echo: EchoFilter
    outbox: Outbox
    append_signature: bool | None
    receipts: Receipts | None = None
    """Send confirmation (`receipts`): set once chat.db is open; None answers "sent" when AppleScript returns."""

    def send(self, chat_id: str, text: str, files: list[str], *, self_chat: bool) -> Outcome:
        """Send `text` then `files` to `chat_id` (in scope: the caller checked). Raises `SendError` for a reply
        refused whole (too many parts or files) or a permanent failure (its message says what was sent)."""
        access = self.store.load()
        limit, mode = access.effective_text_chunk_limit, access.effective_chunk_mode.value
        check_reply_size(0, len(files))
        parts = text_parts(text, limit, mode, reply_signature(access, self.append_signature))
        for part in parts:
            self.echo.record(chat_id, part, self_chat=self_chat)
        for file in files:
            self.echo.record_file(chat_id, file, self_chat=self_chat)
        pending = self.receipts.expect(chat_id, parts, files=files) if self.receipts is not None else None
        try:
            result = self.sender.send_parts(chat_id, parts, files)
        except SendError as exc:
            if not exc.transient:
                raise
            k = exc.sent_parts
            self.outbox.add(chat_id, parts[k:], files[max(0, k - len(parts)) :], exc.message, first_words(text, 40))
            return Outcome(
                f"{exc.message}. The unsent part(s) are queued and will be retried for up to "
                f"{RETRY_FOR_S / 60:.0f} minutes; a channel event will tell you if they are given up. Do not resend.",
                queued=True,
            )
        if pending is not None and self.receipts is not None:  # look for the rows Messages writes
            confirmation = self.receipts.confirm(pending)
            return Outcome(confirmation.description, failed=confirmation.outcome is ReceiptOutcome.FAILED)
        total = result.parts_total
        return Outcome("sent" if total == 1 else f"sent {total} parts")

    def send_text(self, chat_guid: str, text: str, *, self_chat: bool) -> None:
        """Text the channel sends itself (a pairing code, a confirmation, a prompt): recorded as an echo, sent
        as one message. Raises `SendError`."""
        self.echo.record(chat_guid, text, self_chat=self_chat)
        self.sender.send(chat_guid, text)
