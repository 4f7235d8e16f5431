"""Permission-request registry: which session asked which permission request, across processes.

Owns `<state dir>/sessions/permissions/`: one file per relayed request, named by its request id (5 letters
of `[a-km-z]`, Claude Code's alphabet, lower-cased), holding `{"session": "<session id>", "t": <Unix
seconds>}`, written atomically. Each session relays its own permission prompts to self-chat, but only the
reader sees the owner's `yes abcde`; this registry tells it which session the verdict belongs to.

- `add(request_id)`: this session asked (call when relaying the prompt);
- `take(request_id)`: the reader found a verdict; True when *some* session asked it and it was not taken
  before. The claim is an atomic `rename`, so two processes can never both take one request. The owner is
  then `taken_by(request_id)`. `add`/`take` have the shape of `inbound.PendingPermissions`, so the
  registry can stand in for it in the reader's pipeline;
- requests older than `TTL_S` are dropped on `add`, and at most `LIMIT` are kept (oldest dropped first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from . import statefile
from .clock import SYSTEM, Clock
from .sessions import sessions_dir

log = logging.getLogger(__name__)

PERMISSIONS_DIR = "permissions"
REQUEST_ID = re.compile(r"[a-km-z]{5}")
TTL_S = 24 * 3600.0
"""How long an unanswered request is kept (seconds): Claude Code's terminal dialog can wait that long."""

LIMIT = 256
"""Most requests kept at once (all sessions together)."""


class PermissionRegistry:
    """The shared registry as seen from session `session` (see the module docstring). Thread-safe.

    `clock.wall()` stamps and ages requests."""

    def __init__(self, state_dir: Path, session: str, clock: Clock = SYSTEM, ttl: float = TTL_S) -> None:
        self.dir = sessions_dir(state_dir) / PERMISSIONS_DIR
        self.session = session
        self.clock = clock
        self.ttl = ttl
        self._taken: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def _path(self, request_id: str) -> Path | None:
        rid = request_id.lower()
        return self.dir / rid if REQUEST_ID.fullmatch(rid) else None

    def add(self, request_id: str) -> None:
        """Record that this session asked `request_id` (ignored unless 5 letters of `[a-km-z]`). Errors are
        logged: the prompt still goes out, but its verdict will not find this session."""
        path = self._path(request_id)
        if path is None:
            log.warning("permission request id %r is not 5 letters a-z (no l); not registered", request_id[:20])
            return
        try:
            self._prune()
            doc = {"session": self.session, "t": self.clock.wall()}
            statefile.atomic_write(path, json.dumps(doc).encode())
        except OSError as exc:
            log.warning("could not register permission request %s: %s", request_id, exc)

    def owner(self, request_id: str) -> str | None:
        """The session that asked `request_id` and is still waiting, or None."""
        path = self._path(request_id)
        return None if path is None else self._read(path)

    def claim(self, request_id: str) -> str | None:
        """Take `request_id` out of the registry and return the id of the session that asked; None when
        nobody asked it or it was already taken (by this or another process)."""
        path = self._path(request_id)
        if path is None:
            return None
        claimed = path.with_name(f".{path.name}.claimed-{secrets.token_hex(4)}")
        try:
            os.rename(path, claimed)  # atomic: exactly one claimant succeeds
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("could not take permission request %s: %s", request_id, exc)
            return None
        try:
            return self._read(claimed)
        finally:
            with contextlib.suppress(OSError):
                claimed.unlink()

    def take(self, request_id: str) -> bool:
        """`claim`, keeping the owner for `taken_by`. True when the request was pending (shape of
        `inbound.PendingPermissions.take`)."""
        sid = self.claim(request_id)
        if sid is None:
            return False
        with self._lock:
            self._taken[request_id.lower()] = sid
            while len(self._taken) > LIMIT:
                self._taken.popitem(last=False)
        return True

    def taken_by(self, request_id: str) -> str | None:
        """The session that asked a request this object `take`-ed (forgotten once returned)."""
        with self._lock:
            return self._taken.pop(request_id.lower(), None)

    def _read(self, path: Path) -> str | None:
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        sid = doc.get("session") if isinstance(doc, dict) else None
        return sid if isinstance(sid, str) else None

    def _prune(self) -> None:
        """Drop requests older than the TTL (by their `t`), then the oldest beyond `LIMIT`."""
        try:
            names = [n for n in os.listdir(self.dir) if REQUEST_ID.fullmatch(n)]
        except FileNotFoundError:
            return
        now = self.clock.wall()
        ages = []
        for name in names:
            try:
                at = json.loads((self.dir / name).read_bytes()).get("t", 0.0)
            except (OSError, ValueError, AttributeError):
                at = 0.0
            ages.append((at if isinstance(at, int | float) else 0.0, name))
        ages.sort()
        drop = [n for at, n in ages if now - at > self.ttl]
        keep = [n for at, n in ages if now - at <= self.ttl]
        drop += keep[: max(0, len(keep) - LIMIT + 1)]
        for name in drop:
            with contextlib.suppress(OSError):
                (self.dir / name).unlink()
