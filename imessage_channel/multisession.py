"""This server's part among the channel servers of one Mac: many Claude Code sessions, one reader.

Owns, for one process, the use of the multi-session modules (their design: docs/sessions.md):

- `Peers` — what every session has: its entry in the registry (`sessions`), its inbox for events the reader
  routes to it (`handoff.Inbox`), the shared log of sent texts (`sentlog`, so the reader knows every
  session's echoes), the shared permission-request registry (`permission_registry`) and its claim on the
  reader lease (`lease`). When the state dir cannot hold the sessions folder (read-only, full) a session
  runs alone: it reads chat.db itself, as before sessions existed, and says so once in the log.
- `Router` — what only the reader (the lease holder) has: the dispatcher to the other sessions
  (`handoff.Dispatcher`), their delivered logs folded into the delivery ledger, the sticky map
  (`sessions.StickyStore`), and the routing of each event (`routing.decide`), with a bounded map of which
  session got which message, so a reaction, an edit or a late file follows its message.
- `SharedPermissions` — the permission requests this session relayed, in memory and in the registry, with
  the `add`/`take` shape the inbound pipeline uses.

Nothing here reads chat.db or writes stdout: the channel (`channel`) does both and calls in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import routing
from .clock import SYSTEM, Clock
from .delivery import DeliveryLedger
from .echo import EchoFilter
from .handoff import (
    CHANNEL,
    DeliveredLogs,
    Dispatcher,
    Inbox,
    RoutedEvent,
    SeenGuard,
    TargetGone,
    channel_event,
    ledger_fold,
    verdict_event,
)
from .inbound import Deliver, PermissionVerdict
from .inbound.permissions import PendingPermissions
from .lease import ReaderLease, holder, is_held
from .permission_registry import PermissionRegistry
from .sentlog import SentLog, feed
from .sessions import Membership, Registry, SessionInfo, StickyStore, new_session_id, sanitize_name, sessions_dir
from .settings import Settings

log = logging.getLogger("imessage_channel")

ORIGINS = 4096
"""Messages whose session the reader remembers (message GUID → session id), for the events that follow a
message (`routing` rule 4). Not persisted: after a handover, follow-ups go where their chat goes."""

OUTBOX_SUFFIX = ".outbox.json"
"""A session's own outbox file in `sessions/` (`<id>.outbox.json`)."""

REPEAT_NOTICE_S = 60.0
"""The owner is told that an `@name` is not running at most once per chat and text of that notice in this
long: a burst of texts to a session that just ended must not flood the self-chat with the same answer."""

FILES_ONLY = "(files only)"
"""The content of an `@name` text whose only words were the address (its files are in meta)."""


def session_base_name(settings: Settings, cwd: Path) -> str:
    """The name this session asks for: `IMESSAGE_SESSION_NAME`, else the folder of `CLAUDE_PROJECT_DIR`,
    else of the working directory `cwd`; sanitised (`sessions.sanitize_name`: `My Project` → `my-project`)."""
    if settings.session_name:
        return sanitize_name(settings.session_name)
    folder = settings.project_dir or cwd
    return sanitize_name(folder.name or str(folder))


def as_action(event: RoutedEvent) -> Deliver | PermissionVerdict:
    """The notification a routed event asks this session to write: a channel event or a permission verdict."""
    params = event.params
    if event.method == CHANNEL:
        meta = params.get("meta")
        return Deliver(str(params.get("content", "")), dict(meta) if isinstance(meta, dict) else {}, event.rowid)
    return PermissionVerdict(str(params.get("request_id", "")), str(params.get("behavior", "")))


class Peers:
    """This session among the live ones (see the module docstring). Blocking methods touch the state dir.

    `on_routed(event)` runs on an inbox thread for each event the reader routes here; it must only queue the
    event (see `channel.Channel._received`)."""

    def __init__(self, settings: Settings, on_routed: Callable[[RoutedEvent], None], clock: Clock = SYSTEM) -> None:
        self.state_dir = settings.state_dir
        self.clock = clock
        self.sid = new_session_id()
        self.reading = False
        self.registry = Registry(self.state_dir, clock)
        self.inbox: Inbox | None = None
        self.me: Membership | None = None
        self.sent: SentLog | None = None
        self.lease: ReaderLease | None = None
        self.registry_asks: PermissionRegistry | None = None
        try:
            self.inbox = Inbox(self.state_dir, self.sid, on_event=on_routed)
            self.me = self.registry.register(
                self.sid,
                session_base_name(settings, Path.cwd()),
                address=self.inbox.address,
                project=str(settings.project_dir or ""),
            )
            self.inbox.start()
            self.sent = SentLog(self.state_dir, self.sid, clock)
            self.registry_asks = PermissionRegistry(self.state_dir, self.sid, clock)
            self.lease = ReaderLease(self.state_dir, self.sid, clock)
        except (OSError, ValueError) as exc:
            log.warning("cannot join the other sessions (%s); this session reads iMessage alone", exc)
            self.close()
            self.inbox, self.me, self.sent, self.lease = None, None, None, None
        self.reading = self.lease is None
        """True once this session is the reader (always, when alone)."""
        self.became_reader = threading.Event()
        if self.reading:
            self.became_reader.set()

    @property
    def alone(self) -> bool:
        """True when this session could not join the sessions folder (it then reads chat.db itself)."""
        return self.me is None

    @property
    def name(self) -> str:
        return self.me.info.name if self.me is not None else "this session"

    @property
    def info(self) -> SessionInfo:
        """This session's registry entry (a stand-in when alone)."""
        return self.me.info if self.me is not None else SessionInfo(self.sid, self.name, 0)

    def live(self) -> list[SessionInfo]:
        """The live sessions, oldest first; just this one when alone or when the registry cannot be read."""
        if self.me is None:
            return [self.info]
        try:
            live = self.registry.live()
        except OSError as exc:
            log.warning("cannot list the sessions: %s", exc)
            live = []
        return live if any(s.id == self.sid for s in live) else [*live, self.info]

    def claim_reader(self) -> bool:
        """Take the reader lease now if it is free (True), else wait for it in the background:
        `became_reader` is set the moment the holder ends (its process, SIGKILL included)."""
        if self.lease is None:
            return True
        if self.lease.try_acquire():
            self.reading = True
            self.became_reader.set()
            return True
        log.info("session %r: another session reads iMessage; waiting to take over if it ends", self.name)
        self.lease.watch(on_acquired=self._acquired)
        return False

    def _acquired(self) -> None:
        self.reading = True
        self.became_reader.set()

    def outbox_path(self) -> Path | None:
        """Where this session keeps its queue of unsent reply parts: `sessions/<id>.outbox.json` (None when
        alone: the state dir's `outbox.json`, as before sessions existed)."""
        return None if self.me is None else sessions_dir(self.state_dir) / f"{self.sid}{OUTBOX_SUFFIX}"

    def ended_outboxes(self) -> list[Path]:
        """The queues of sessions that are no longer live, for the reader to take over (its own queue is the
        state dir's `outbox.json`)."""
        if self.me is None:
            return []
        found = []
        try:
            names = os.listdir(sessions_dir(self.state_dir))
        except OSError:
            names = []
        for name in sorted(names):
            sid = name[: -len(OUTBOX_SUFFIX)]
            if name.endswith(OUTBOX_SUFFIX) and sid != self.sid and not self.registry.is_live(sid):
                found.append(sessions_dir(self.state_dir) / name)
        return [p for p in found if p.exists()]

    def share_sends(self, echo: EchoFilter) -> None:
        """Every send this session records in `echo` is also appended to the shared sent log, for the reader."""
        if self.sent is not None:
            echo.on_record = self.sent.append

    def prompt_prefix(self) -> str:
        """`[name] ` in front of a permission prompt when more than one session is live (`routing`)."""
        if self.me is None:
            return ""
        return routing.permission_prompt_prefix(self.name, len(self.live()))

    def written(self, event: RoutedEvent) -> None:
        """A routed event's line is on stdout: log and acknowledge it (`handoff.Inbox.written`)."""
        if self.inbox is not None:
            self.inbox.written(event.id)

    def stop_receiving(self) -> None:
        """At exit, before the last stdout lines: stop waiting for the lease and stop receiving (what this
        session still holds is routed elsewhere by the reader once this process has ended)."""
        if self.lease is not None and not self.reading:
            self.lease.stop_watching()
        if self.inbox is not None and not self.reading:
            self.inbox.stop()

    def close(self) -> None:
        """At exit, after the last write of the delivery state: give up the lease, leave the registry, close
        the inbox. Idempotent; never raises."""
        for step in (
            self.lease.release if self.lease is not None and self.reading else None,
            self.me.close if self.me is not None else None,
            self.inbox.close if self.inbox is not None else None,
        ):
            if step is not None:
                try:
                    step()
                except Exception:
                    log.exception("leaving the sessions: %s failed", getattr(step, "__name__", step))


class SharedPermissions:
    """Permission requests relayed to self-chat: this session's (in memory) and every session's (the shared
    registry), with the `add`/`take` shape `inbound.permissions` uses. Thread-safe."""

    def __init__(self, registry: PermissionRegistry | None, me: str) -> None:
        self.registry = registry
        self.me = me
        self.local = PendingPermissions()
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, request_id: str) -> None:
        """This session asked `request_id`."""
        self.local.add(request_id)
        if self.registry is not None:
            self.registry.add(request_id)

    def take(self, request_id: str) -> bool:
        """True when some session asked `request_id` and nobody took it yet; `owner` then says which."""
        rid = request_id.lower()
        owner = self.registry.claim(rid) if self.registry is not None else None
        mine = self.local.take(rid)
        if owner is None and not mine:
            return False
        with self._lock:
            self._owners[rid] = owner or self.me
        return True

    def owner(self, request_id: str) -> str:
        """The session that asked a request `take` returned True for (this one when unknown)."""
        with self._lock:
            return self._owners.pop(request_id.lower(), self.me)


@dataclass(frozen=True, slots=True)
class Routed:
    """What to do with one event: push `event` here (`local`) or hand it to `target`; text `reply` back in
    `chat` (None: nothing); `decision` for logs. `event` is None when nothing is delivered (`/sessions`)."""

    decision: routing.Decision
    event: Deliver | None
    target: SessionInfo | None
    chat: str
    reply: str | None = None


def routed_content(action: Deliver, route: routing.Route) -> str:
    """`action.content` with the typed text replaced by what routing delivers (`@name` removed, a note in
    front); the content ends with the typed text (`inbound.Deliver.typed`), so the rest (a reply quote) stays."""
    typed = action.typed
    if not typed:
        return f"{route.note}\n{action.content}" if route.note else action.content
    head = action.content[: len(action.content) - len(typed)]
    return head + (route.text or FILES_ONLY)


class Router:
    """The reader's routing (see the module docstring). Built when this session becomes the reader, after the
    ledger is loaded; `take_over()` before the first read. The delivery loop's thread calls `route`,
    `hand_off` and `before_poll`; dispatcher threads call back `on_orphaned(events)`."""

    def __init__(
        self,
        peers: Peers,
        ledger: DeliveryLedger,
        on_orphaned: Callable[[list[RoutedEvent]], None],
        clock: Clock = SYSTEM,
    ) -> None:
        self.peers = peers
        self.ledger = ledger
        self.sticky_store = StickyStore(peers.state_dir, clock) if not peers.alone else None
        self.sticky: dict[str, str] = self.sticky_store.load() if self.sticky_store is not None else {}
        self.origins: OrderedDict[str, str] = OrderedDict()
        self.logs = DeliveredLogs(peers.state_dir, peers.registry.is_live, fold=ledger_fold(ledger))
        self.dispatcher = Dispatcher(
            peers.registry,
            peers.sid,
            self.logs,
            on_ack=lambda e: ledger.written(e.id) if e.rowid else None,
            on_adopt=lambda e: ledger.in_flight(e.id, e.rowid) if e.rowid else None,
            on_orphaned=lambda events, dead: on_orphaned(events),
        )
        self.guard = SeenGuard(ledger, self.dispatcher)
        """The ledger as the pipeline must see it: a row in flight at another session is seen."""
        self._live: list[SessionInfo] | None = None
        self.clock = clock
        self._told: dict[tuple[str, str], float] = {}

    def take_over(self) -> int:
        """Adopt every live session's undelivered events (and this one's own), fold every delivered log into
        the ledger. Blocking (each live session answers within milliseconds, or is found dead). Returns how
        many events were adopted."""
        if self.peers.alone or self.peers.inbox is None:
            return 0
        adopted = self.dispatcher.take_over(self.peers.inbox)
        if adopted:
            log.info("took over %d undelivered event(s) from the previous reader's sessions", len(adopted))
        return len(adopted)

    def before_poll(self, echo: EchoFilter) -> None:
        """Before each read of chat.db: learn the other sessions' sends (echoes) and their deliveries."""
        self._live = None  # listed again for this read's events (`route`)
        if self.peers.alone:
            return
        if self.peers.sent is not None:
            feed(echo, self.peers.sent.poll())
        self.logs.poll()

    def route(self, action: Deliver, pins: Mapping[str, str]) -> Routed:
        """Where one event from the pipeline goes (`routing.decide`); updates and saves the sticky map."""
        chat = action.meta.get("chat_id", "")
        if self._live is None:
            self._live = self.peers.live()
        live = self._live
        follows = self._follows(action)
        route = routing.decide(
            action.typed or "",
            chat,
            live,
            sticky=self.sticky,
            pins=pins,
            self_chat=action.meta.get("self_chat") == "true",
            follows=follows,
            attachments="attachments" in action.meta or "attachments_pending" in action.meta,
            reader=self.peers.sid,
        )
        self._stick(route.sticky)
        reply = route.reply
        if reply is not None and route.decision is routing.Decision.UNKNOWN_NAME and self._told_lately(chat, reply):
            reply = None
        if not route.decision.delivers or route.target is None:
            return Routed(route.decision, None, None, chat, reply)
        content = routed_content(action, route) if action.typed is not None or route.note else action.content
        meta = {k: v for k, v in action.meta.items() if k != "session"} | route.meta
        message_id = action.meta.get("message_id")
        if message_id and action.rowid:
            self.origins[message_id] = route.target.id
            self.origins.move_to_end(message_id)
            while len(self.origins) > ORIGINS:
                self.origins.popitem(last=False)
        event = Deliver(content, meta, action.rowid)
        return Routed(route.decision, event, route.target, chat, reply)

    def _told_lately(self, chat: str, notice: str) -> bool:
        """True when `notice` went to `chat` within `REPEAT_NOTICE_S` (else remember it now)."""
        now = self.clock.monotonic()
        self._told = {k: t for k, t in self._told.items() if now - t < REPEAT_NOTICE_S}
        if (chat, notice) in self._told:
            return True
        self._told[(chat, notice)] = now
        return False

    def _follows(self, action: Deliver) -> str | None:
        """The session that got the message this event is about (a reaction, an edit, a late file)."""
        meta = action.meta
        for key in ("reaction_to", "edited_from"):
            if meta.get(key) in self.origins:
                return self.origins[meta[key]]
        if not action.rowid and meta.get("message_id") in self.origins:
            return self.origins[meta["message_id"]]
        return None

    def _stick(self, sticky: dict[str, str]) -> None:
        self.sticky = sticky
        if self.sticky_store is not None:
            self.sticky_store.save(sticky)

    def hand_off(self, action: Deliver, target: SessionInfo, pins: Mapping[str, str]) -> RoutedEvent | None:
        """Send `action` to session `target`, marked in flight in the ledger until it is acknowledged
        (`deliver`). Returns the event when it ends up with this session (push it here), else None."""
        event = channel_event(action.content, action.meta, action.rowid)
        if action.rowid:
            self.ledger.in_flight(event.id, action.rowid)
        return self.deliver(event, target, pins)

    def deliver(self, event: RoutedEvent, target: SessionInfo, pins: Mapping[str, str]) -> RoutedEvent | None:
        """Hand `event` to `target`; while the target is gone, route it again among the live sessions
        (`redirect`). Returns the event (its `session` meta updated) when it ends up with this session."""
        chat = str(event.params.get("meta", {}).get("chat_id", ""))
        while target.id != self.peers.sid:
            try:
                self.dispatcher.send(target, event)
                return None
            except TargetGone:
                target, event = self.redirect(event, chat, pins)
        return event

    def redirect(self, event: RoutedEvent, chat: str, pins: Mapping[str, str]) -> tuple[SessionInfo, RoutedEvent]:
        """Where an event goes when its session died before writing it: the chat's session among the live
        ones, its `session` meta updated (removed with one live session)."""
        self._live = None
        route = routing.redirect(chat, self.peers.live(), sticky=self.sticky, pins=pins)
        self._stick(route.sticky)
        assert route.target is not None
        meta = event.params.get("meta", {})
        meta = {k: v for k, v in meta.items() if k != "session"} | route.meta
        return route.target, RoutedEvent(event.id, event.method, {**event.params, "meta": meta}, event.rowid)

    def send_verdict(self, owner: str, verdict: PermissionVerdict) -> bool:
        """Hand a permission verdict to the live session `owner` that asked it. False when it has ended."""
        target = next((s for s in self.peers.live() if s.id == owner), None)
        if target is None:
            return False
        try:
            self.dispatcher.send(target, verdict_event(verdict.request_id, verdict.behavior))
        except TargetGone:
            return False
        return True

    def close(self) -> None:
        """At exit: close the connections (their pending events stay with the sessions, for the next reader)."""
        self.dispatcher.close()


@dataclass(frozen=True, slots=True)
class Overview:
    """The sessions of one state dir as `imessage-channel access` and `doctor` show them: the live ones
    (oldest first) and the id of the one holding the reader lease (None: nobody reads chat.db now)."""

    live: list[SessionInfo]
    reader: str | None

    def lines(self, now: float) -> list[str]:
        """`Sessions (2): alpha (reads iMessage), beta (default)` and one line per session with its pid,
        project and age (`now`: Unix seconds)."""
        if not self.live:
            return ["Sessions: none running (each Claude Code session with this channel starts one)"]
        lines = [f"Sessions ({len(self.live)}): " + ", ".join(self._label(s) for s in self.live)]
        for s in self.live:
            age = max(0.0, now - s.started)
            where = f", {s.project}" if s.project else ""
            lines.append(f"  {s.name}: pid {s.pid}{where}, started {_ago(age)}")
        if self.reader is None:
            lines.append("  nobody reads iMessage right now (a session takes over within seconds)")
        return lines

    def _label(self, s: SessionInfo) -> str:
        marks = [m for m, on in (("reads iMessage", s.id == self.reader), ("default", s is self.live[-1])) if on]
        return s.name + (f" ({', '.join(marks)})" if marks else "")

    def to_json(self) -> dict[str, object]:
        return {
            "sessions": [
                {"id": s.id, "name": s.name, "pid": s.pid, "started": s.started, "project": s.project}
                for s in self.live
            ],
            "reader": self.reader,
            "default": self.live[-1].id if self.live else None,
        }


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def overview(state_dir: Path) -> Overview:
    """The live sessions and the lease holder of `state_dir`, read without changing anything (no folder is
    created). Raises `OSError` when the sessions folder exists but cannot be read."""
    if not sessions_dir(state_dir).is_dir():
        return Overview([], None)
    live = Registry(state_dir).live()
    doc = holder(state_dir) if is_held(state_dir) else None
    sid = doc.get("session") if doc is not None else None
    reader = sid if isinstance(sid, str) and any(s.id == sid for s in live) else None
    return Overview(live, reader)
