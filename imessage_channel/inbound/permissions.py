"""Permission relay, the inbound half: which requests are open, and a self-chat text that answers one.

Owns the request ids Claude Code asked about (relayed to self-chat by the server) and the reading of an
answer: `yes abcde` / `no abcde` typed in self-chat over iMessage (an SMS "from yourself" can be spoofed)
becomes a `PermissionVerdict` plus an acknowledgement, not a chat message (Claude Code channels reference:
request ids are 5 letters a–z without `l`).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from typing import Protocol

from ..chatdb import Message
from ..gate import IMESSAGE_SERVICES
from .actions import Action, PermissionVerdict, Send

PERMISSION_REPLY = re.compile(r"^\s*(y|yes|n|no)\s+([a-km-z]{5})\s*$", re.IGNORECASE)
"""A permission verdict typed in self-chat."""


class PendingPermissions:
    """Request ids relayed to self-chat and not answered yet (thread-safe, the newest `limit` kept)."""

    def __init__(self, limit: int = 64) -> None:
        self._ids: deque[str] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        with self._lock:
            if request_id.lower() not in self._ids:
                self._ids.append(request_id.lower())

    def take(self, request_id: str) -> bool:
        """Remove and return True when `request_id` is pending."""
        with self._lock:
            rid = request_id.lower()
            if rid in self._ids:
                self._ids.remove(rid)
                return True
            return False



class Requests(Protocol):
    """Where open permission requests are kept: `PendingPermissions`, or with several sessions
    `multisession.SharedPermissions` (every session's requests, in the state dir)."""

    def add(self, request_id: str) -> None: ...

    def take(self, request_id: str) -> bool: ...


def answer(msg: Message, requests: Requests) -> list[Action] | None:
    """The verdict and acknowledgement when `msg` (a self-chat row: the caller checks) answers a request open
    in `requests`, else None. The request is consumed: a second `yes abcde` is an ordinary text."""
    if msg.service.lower() not in IMESSAGE_SERVICES or msg.chat_guid is None:
        return None
    m = PERMISSION_REPLY.match(msg.text)
    if not m or not requests.take(m.group(2)):
        return None
    allow = m.group(1).lower().startswith("y")
    rid = m.group(2).lower()
    ack = f"{'✅ Allowed' if allow else '❌ Denied'} ({rid})"
    return [PermissionVerdict(rid, "allow" if allow else "deny"), Send(msg.chat_guid, ack)]
