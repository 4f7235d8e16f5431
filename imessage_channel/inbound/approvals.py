"""Pairing confirmations: the `approved/<sender>` files the access skill (or `imessage-channel access pair`)
writes, each answered once with the official "Paired!" text and deleted.

Owns the reading of `approved/` and the check that makes it safe. A file in the state dir is no proof of a
pairing (any program of the user's can drop one), so an approval is honoured only when, now, its sender is in
`allowFrom` and its chat (the file's content, default `iMessage;-;<sender>`) is that sender's one-to-one chat
in chat.db; otherwise it is dropped with one log line and nothing is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import access as access_mod
from ..access import AccessStore
from ..chatdb import ChatDB
from ..handles import normalize_handle
from .actions import Send

log = logging.getLogger("imessage_channel.inbound")


@dataclass
class Approvals:
    """Confirmations for `approved/` files (see the module docstring)."""

    store: AccessStore
    db: ChatDB
    _unreadable: bool = False

    def confirmations(self) -> list[Send]:
        """One `Send` of `access.PAIRED_CONFIRMATION` per honoured approval; each file is deleted once decided.
        Raises `ChatDBError` (the file then stays for the next try)."""
        out: list[Send] = []
        state = self.store.state_dir
        try:
            senders = access_mod.pending_approvals(state)
        except OSError as exc:  # never let an unreadable approved/ stop delivery
            if not self._unreadable:
                where = state / access_mod.APPROVED_DIR
                log.warning("cannot list %s (%s); pairing confirmations wait until it can be read", where, exc)
            self._unreadable = True
            return out
        self._unreadable = False
        access: access_mod.Access | None = None
        for sender in senders:
            try:
                chat = access_mod.read_approval(state, sender) or f"iMessage;-;{sender}"
            except ValueError:
                continue
            access = access or self.store.load()
            refused = self._refused(sender, chat, access)
            access_mod.discard_approval(state, sender)
            if refused:
                log.warning("approved/%s dropped without a confirmation: %s", sender, refused)
                continue
            out.append(Send(chat, access_mod.PAIRED_CONFIRMATION))
        return out

    def _refused(self, sender: str, chat_guid: str, access: access_mod.Access) -> str | None:
        """Why an approval for `sender` in `chat_guid` must not be confirmed, or None when it may."""
        if not access_mod.is_allowed(access.allow_from, sender):
            return f"{sender!r} is not in allowFrom"
        chat = self.db.chat(chat_guid)
        if chat is None:
            return f"chat {chat_guid!r} is not in chat.db"
        participants = self.db.participants(chat_guid)
        wanted = normalize_handle(sender)
        if not chat.is_dm or [normalize_handle(p) for p in participants] != [wanted]:
            return f"chat {chat_guid!r} is not {sender}'s one-to-one chat"
        return None
