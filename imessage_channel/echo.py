"""Echo filter: recognise our own sends when Messages writes them back into chat.db.

Every text the `reply` tool sends comes back as a row (`is_from_me = 1`, and in self-chat also a
received copy, `is_from_me = 0`), sometimes under another of the owner's aliases, so under a different
chat GUID (design §5). Without this filter Claude's replies in self-chat loop back to it as input.

A sent text is remembered for `ECHO_WINDOW_S` seconds under a key of (conversation, normalised text):
- the conversation is "self" for every self-chat (whatever alias or `any;-;`/`iMessage;-;` GUID form),
  else the chat GUID without its service prefix (`iMessage;-;x` ≡ `any;-;x` ≡ `SMS;-;x`);
- the text is NFC-normalised, U+FFFC removed, runs of white space collapsed, ends stripped.
Each send may absorb at most two rows in self-chat (the sent and the received copy) and one elsewhere,
so a person who deliberately repeats Claude's words later is still heard.
"""

from __future__ import annotations

import os
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from .clock import SYSTEM
from .handles import ChatGuid

ECHO_WINDOW_S = 60.0
"""How long a sent text is recognised as an echo. Messages writes the sent row within a second and
iCloud may deliver the received copy of a self-chat send several seconds later; a minute covers slow
sync without swallowing a deliberate repeat much later."""

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The comparison form of a message text (see module docstring)."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text).replace("\ufffc", "")).strip()


def file_key(names: list[str]) -> str:
    """The echo key of a file-only row: its attachments' names (a text can never hold the NUL it starts with)."""
    return "\0files:" + "\0".join(unicodedata.normalize("NFC", n) for n in names)


def conversation_key(chat_guid: str, *, self_chat: bool) -> str:
    """`"self"` for self-chats, else the chat's identifier without its `service;-;` / `service;+;` prefix
    (`handles.ChatGuid`), lowercased."""
    if self_chat:
        return "self"
    guid = ChatGuid.parse(chat_guid)
    return guid.key[1] if guid is not None else chat_guid.lower()


@dataclass(slots=True)
class _Sent:
    expires: float
    remaining: int


class EchoFilter:
    """Thread-safe memory of recently sent texts. `clock` returns monotonic seconds (default
    `clock.SYSTEM.monotonic`, which reads the system clock at each call, so freezegun freezes it)."""

    def __init__(self, window: float = ECHO_WINDOW_S, clock: Callable[[], float] | None = None) -> None:
        self.window = window
        self.clock = clock or SYSTEM.monotonic
        self._sent: dict[tuple[str, str], _Sent] = {}
        self._lock = threading.Lock()
        self.on_record: Callable[..., None] | None = None
        """Also told of every `record` (`chat_guid, text, self_chat=`): with several sessions, the shared
        sent log (`sentlog.SentLog.append`), so the reader recognises this session's sends too."""

    def record(self, chat_guid: str, text: str, *, self_chat: bool) -> None:
        """Remember that `text` was just sent to `chat_guid` (and tell `on_record`)."""
        self.remember(chat_guid, text, self_chat=self_chat)
        if self.on_record is not None:
            self.on_record(chat_guid, text, self_chat=self_chat)

    def remember(self, chat_guid: str, text: str, *, self_chat: bool) -> None:
        """`record` without telling `on_record`: for sends another session made (`sentlog.feed`)."""
        key = (conversation_key(chat_guid, self_chat=self_chat), normalize_text(text))
        with self._lock:
            self._expire()
            entry = self._sent.get(key)
            extra = 2 if self_chat else 1
            if entry is None:
                self._sent[key] = _Sent(self.clock() + self.window, extra)
            else:
                entry.expires = self.clock() + self.window
                entry.remaining += extra

    def record_file(self, chat_guid: str, path: str, *, self_chat: bool) -> None:
        """Remember that the file at `path` was just sent to `chat_guid` (its row comes back with the file's
        name as the attachment's `transfer_name`, and no text: `is_file_echo`)."""
        self.record(chat_guid, file_key([os.path.basename(path)]), self_chat=self_chat)

    def is_file_echo(self, chat_guid: str, names: list[str], *, self_chat: bool) -> bool:
        """True (and one use consumed) when a row with no text and these attachment names in `chat_guid` is one
        of our file sends coming back."""
        return self.is_echo(chat_guid, file_key(names), self_chat=self_chat)

    def is_echo(self, chat_guid: str, text: str, *, self_chat: bool) -> bool:
        """True (and one use consumed) when `text` in `chat_guid` matches a recent send."""
        key = (conversation_key(chat_guid, self_chat=self_chat), normalize_text(text))
        with self._lock:
            self._expire()
            entry = self._sent.get(key)
            if entry is None:
                return False
            entry.remaining -= 1
            if entry.remaining <= 0:
                del self._sent[key]
            return True

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, v in self._sent.items() if v.expires <= now]:
            del self._sent[key]
