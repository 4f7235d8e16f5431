"""Scope: the chats the channel may answer and show, and their history as Claude reads it.

Owns one rule, used by the `reply` tool, the `chat_messages` tool and the outbox alike: a chat is in scope
when it is the owner's self-chat (decided from chat.db alone: it never depends on access.json), a DM whose
participant is allowlisted, or a configured group. Blocking (chat.db reads): call from a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .access import AccessStore, is_allowed
from .chatdb import ChatDB, Message
from .gate import find_group
from .render import Names, render_conversation


@dataclass
class Scope:
    """Which chats are in scope (see the module docstring). `is_self_chat(guid)` is the pipeline's cached
    self-chat test; `owner` the owner's normalised handles."""

    db: ChatDB
    store: AccessStore
    owner: frozenset[str]
    is_self_chat: Callable[[str], bool]
    names: Names | None = None
    marks: Callable[[list[Message]], Mapping[int, str]] | None = None
    """Words to put after the owner's messages that failed (`receipts`), given a chat's messages."""

    def may_answer(self, chat_guid: str) -> bool:
        """True for self-chat, a DM whose participant is allowlisted, or a configured group. Raises
        `ChatDBError`."""
        chat = self.db.chat(chat_guid)
        if chat is not None and self.is_self_chat(chat_guid):
            return True
        access = self.store.load()
        if chat is None:
            return find_group(access.groups, chat_guid) is not None
        if chat.is_dm:
            return any(is_allowed(access.allow_from, p) for p in self.db.participants(chat_guid))
        if chat.is_group:
            return find_group(access.groups, chat_guid) is not None
        return False

    def chats(self) -> list[str]:
        """Every chat in scope, self-chat first (for `chat_messages` without a chat). Raises `ChatDBError`."""
        access = self.store.load()
        out: list[str] = []
        for handle in [*sorted(self.owner), *access.allow_from]:
            for chat in self.db.chats_of_handle(handle):
                if chat.guid not in out and self.may_answer(chat.guid):
                    out.append(chat.guid)
        if access.groups:
            for chat in self.db.chats():
                if chat.is_group and chat.guid not in out and find_group(access.groups, chat.guid) is not None:
                    out.append(chat.guid)
        return out

    def history(self, guids: list[str], limit: int) -> str:
        """The last `limit` messages of each chat of `guids`, one block per chat
        (`render.render_conversation`); "No messages." when none. Raises `ChatDBError`."""
        blocks = []
        for guid in guids:
            chat = self.db.chat(guid)
            if chat is None:
                continue
            msgs = self.db.last_messages(guid, limit)
            marks = self.marks(msgs) if self.marks is not None else None
            participants = self.db.participants(guid)
            text = render_conversation(chat, participants, msgs, quote=self.db.text_of, names=self.names, marks=marks)
            blocks.append(text)
        return "\n\n".join(blocks) if blocks else "No messages."
