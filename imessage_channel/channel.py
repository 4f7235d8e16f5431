"""The running channel: its state, its start, and the loops that deliver texts and retry replies.

Owns the life of one channel, apart from the MCP surface (`server`):
- start: open chat.db read-only; when it cannot be read (no Full Disk Access, Messages never opened, a wrong
  path) the channel still runs, says what is missing and the exact fix once as a `kind="status"` event
  (`setup_help`), answers tools with the same words, and looks again every `RECHECK_S` until it can read;
- the delivery loop: `Waker` → `InboundPipeline.poll()` (in a worker thread) → events pushed through the
  server's `Push`, each marked in flight in the delivery ledger before and written after (exactly once),
  the ledger committed after each batch; approvals answered; texts the pipeline asks for sent;
- the outbox loop: queued reply parts retried when due, a reply given up reported as `kind="send_failed"`;
- permission relay: a prompt texted to the self-chat the owner uses now;
- Automation denied (-1743) on a send: said once as a `kind="status"` event with the fix;
- many sessions (`multisession`): only the session holding the reader lease reads chat.db, routes each event
  (`Router`) and pushes it here or hands it to the session it belongs to; every session writes the events
  routed to it (`_received`), and a session that is not the reader takes over the moment the reader ends.

Blocking work (chat.db, AppleScript, sips) runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.to_thread

from .access import AccessStore
from .chatdb import ChatDB, ChatDBError, Message, self_chats
from .clock import SYSTEM, Clock
from .contacts import Contacts
from .delivery import DeliveryLedger
from .echo import EchoFilter
from .handles import PhoneRegion, pick_region
from .handoff import CHANNEL, RoutedEvent
from .inbound import (
    BATCH,
    Action,
    Approvals,
    Deliver,
    InboundPipeline,
    PermissionVerdict,
    RowDecision,
    Send,
    iso_utc,
)
from .media import Inbox
from .multisession import Peers, Router, SharedPermissions, as_action
from .outbox import OUTBOX_FILE, Outbox, Queued
from .reasons import Verdict
from .receipts import Receipts, failed_label, send_errors
from .replies import Outcome, Replies
from .routing import pins_from_access
from .scope import Scope
from .sender import ERR_NOT_AUTHORIZED, Sender, SendError
from .settings import DEFAULT_DB_PATH, Settings
from .setup_help import RECHECK_S, automation, explain_unreadable, host_app
from .waker import SAFETY_POLL_S, Waker

log = logging.getLogger("imessage_channel")

FOLLOW_UP_S = (0.02, 0.08, 0.4, 1.5)
"""Extra reads 20, 100, 500 and 2000 ms after each file event. A WAL commit becomes visible only after the
WAL fsync and a write to the memory-mapped -shm, which raises no file event; a read right after the
-wal event can miss a slow commit, which would then wait for the safety poll. (Found by
scripts/repro_missed_wake.py: ~1 % of lone messages, far more under disk load; the 2 s read was added when
a loaded 2-core machine running the test suite showed fsyncs slower than 500 ms.)"""

ADOPT_OUTBOXES_S = 30.0
"""With several sessions, how often the reader looks for the outbox of a session that ended with replies
still queued (it then retries them itself)."""

Push = Callable[[Deliver | PermissionVerdict, Callable[[], None] | None], None]
"""How the channel hands the server a notification: the event or verdict, and what to call once its line
has been written to stdout (None: nothing)."""


class Unavailable(ChatDBError):
    """chat.db cannot be read yet; the message says what is missing and how to fix it (`setup_help`)."""


class Channel:
    """One running channel (see the module docstring). Build it, then `start()` in a worker thread, then run
    `deliver_forever` and `outbox_forever` once the client listens."""

    def __init__(self, settings: Settings, sender: Sender, clock: Clock = SYSTEM) -> None:
        self.settings = settings
        self.clock = clock
        self.app = host_app(settings.bundle_id, settings.term_program)
        self.region = PhoneRegion(None, "unknown")
        self.store = AccessStore(
            settings.state_dir, static=settings.static_access, clock=clock, region=lambda: self.region.code
        )
        self.echo = EchoFilter(clock=clock.monotonic)
        self.contacts = Contacts(
            settings.addressbook_dir, enabled=settings.contacts, region=lambda: self.region.code, clock=clock
        )
        self.ledger = DeliveryLedger(settings.state_dir, settings.db_path, clock)
        self._push: Push | None = None
        self._held: list[RoutedEvent] = []  # routed here before the client listens
        self._held_lock = threading.Lock()
        self._orphans: queue.SimpleQueue[RoutedEvent] = queue.SimpleQueue()
        self.router: Router | None = None
        self.peers = Peers(settings, self._received, clock)
        self.peers.share_sends(self.echo)
        self.permissions = SharedPermissions(self.peers.registry_asks, self.peers.sid)
        self.outbox = Outbox(settings.state_dir, clock=clock.wall, stamp=clock, path=self.peers.outbox_path())
        self.outbox.load()
        self.replies = Replies(sender, self.store, self.echo, self.outbox, settings.append_signature)
        self.inbox = Inbox.in_state_dir(settings.state_dir, clock)
        self.waker = Waker(settings.db_path)
        self.db: ChatDB | None = None
        self.pipeline: InboundPipeline | None = None
        self.problem: str | None = None
        self._outbox_changed = anyio.Event()
        self._told_automation = False
        self._stopped = False

    # -- start -----------------------------------------------------------------------------------------
    def start(self) -> bool:
        """Open chat.db and take up where the last run left off; False (with `problem` set) when it cannot be
        read yet. Blocking."""
        try:
            db = ChatDB(self.settings.db_path)
        except ChatDBError as exc:
            self.problem = explain_unreadable(self.settings.db_path, DEFAULT_DB_PATH, sys.platform, self.app)
            log.error("%s (%s)", self.problem, exc)
            return False
        self._attach(db)
        if self.peers.claim_reader():
            self.become_reader(handover=False)
        return True

    def _attach(self, db: ChatDB) -> None:
        owner = db.owner_handles()
        self.region = pick_region(owner, db.handle_countries(), self.settings.locales)
        pipeline = InboundPipeline(
            db=db,
            store=self.store,
            owner=owner,
            echo=self.echo,
            permissions=self.permissions,
            allow_sms=self.settings.allow_sms,
            ledger=self.ledger,
            catchup_window=self.settings.catchup_window,
            inbox=self.inbox,
            names=self.contacts.name_for,
            clock=self.clock,
        )
        self.db, self.pipeline, self.problem = db, pipeline, None
        self.scope = Scope(db, self.store, owner, pipeline.is_self_chat, self.contacts.name_for, self._failed)
        self.approvals = Approvals(self.store, db)
        self.receipts = self.replies.receipts = Receipts(db, clock=self.clock)
        # Contacts load in the background: a start never waits for them (the first lookup does, if early).
        threading.Thread(target=self.contacts.refresh, args=(True,), name="contacts", daemon=True).start()
        log.info("owner handles: %s", ", ".join(sorted(owner)) or "none found (self-chat will not be recognised)")
        region = self.region
        log.info(
            "phone numbers without a country code in access.json are read as %s",
            f"{region.code} numbers (from {region.source})" if region.code else "invalid (no region known)",
        )

    def become_reader(self, *, handover: bool) -> None:
        """This session holds the reader lease: load the delivery ledger, take up where the last reader left
        off (exactly there on a `handover` from a session that just ended), adopt what the other sessions
        hold (`Router.take_over`) and save the starting point. Blocking."""
        assert self.pipeline is not None and self.db is not None
        self.pipeline.resume(self.ledger.load(), self.settings.catchup_max, handover=handover)
        self.outbox.move_to(self.settings.state_dir / OUTBOX_FILE)  # the reader's queue, as before sessions
        self.router = Router(self.peers, self.ledger, self._orphaned, self.clock)
        self.router.take_over()
        self.pipeline.ledger = self.router.guard
        # Persist the starting point at once: a crash before the first batch is committed must resume here
        # (with delivered.log naming what was already pushed), not look like a first start that skips it all.
        self.commit()
        log.info("reading %s from ROWID %d (session %r)", self.db.path, self.pipeline.watermark, self.peers.name)

    def _failed(self, msgs: list[Message]) -> dict[int, str]:
        """`(not delivered …)` marks for the owner's messages among `msgs` that Messages marked failed."""
        assert self.db is not None
        return {rowid: failed_label(code) for rowid, code in send_errors(self.db, msgs).items()}

    def require(self) -> tuple[ChatDB, InboundPipeline]:
        """chat.db and the pipeline, refreshed (a replaced or vanished file is noticed here too, by tool calls
        as by the delivery loop). Raises `Unavailable` until chat.db can be read, `ChatDBError`. Blocking."""
        if self.db is None or self.pipeline is None:
            raise Unavailable(self.problem or "chat.db is not open yet")
        self.db.refresh()
        return self.db, self.pipeline

    def commit(self) -> None:
        """Save the delivery state (the pipeline's snapshot); only the reader has one. Blocking."""
        if self.pipeline is not None and self.router is not None:
            self.ledger.commit(self.pipeline.snapshot())

    def stopping(self) -> None:
        """At exit, as soon as it is decided and before the last stdout lines are written: stop reading and
        receiving (`Peers.stop_receiving`; the reader closes its connections, whose events the next reader
        adopts), and cut short a reply waiting for its confirmation. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.waker.stop()
        if self.replies.receipts is not None:
            self.replies.receipts.stop()
        self.peers.stop_receiving()
        if self.router is not None:
            self.router.close()

    def close(self) -> None:
        """At exit, after the last write of the delivery state: leave the sessions, close chat.db."""
        self.waker.stop()
        self.peers.close()
        if self.db is not None:
            self.db.close()

    def is_self_chat(self, chat_guid: str) -> bool:
        """Is `chat_guid` the owner's self-chat? False while chat.db cannot be read. Blocking."""
        try:
            return self.require()[1].is_self_chat(chat_guid)
        except ChatDBError:
            return False

    # -- delivery ----------------------------------------------------------------------------------------
    async def deliver_forever(self, push: Push) -> None:
        """Read, gate and push for as long as the connection lives (the server starts it once the client
        listens). Until chat.db can be read, say why once and look again every `RECHECK_S`; while another
        session reads, write what it routes here and take over when it ends."""
        self._listening(push)
        if self.pipeline is None:
            await self._until_readable(push)
        if self.router is None:
            await self._until_reader(push)
        self.waker.start()
        failing = False
        followups: list[float] = list(FOLLOW_UP_S)  # a commit made as the watch starts raises no event
        async with anyio.create_task_group() as tg:
            while True:
                held = False
                try:
                    for action in await anyio.to_thread.run_sync(self._confirmations):
                        self._execute(action, push, tg)
                    held = await self._drain(push, tg)
                    await self._report_failures(push)
                    if failing:
                        log.info("chat.db is readable again")
                    failing = False
                except ChatDBError as exc:
                    if not failing:
                        log.error("%s", exc)
                    failing = True
                except Exception:  # never let one bad row or state file stop delivery
                    log.exception("delivery step failed; retrying on the next wake")
                timeout = 0.05 if held else 1.0 if failing else (followups.pop(0) if followups else SAFETY_POLL_S)
                if await anyio.to_thread.run_sync(self.waker.wait, timeout, abandon_on_cancel=True):
                    followups = list(FOLLOW_UP_S)

    async def _report_failures(self, push: Push) -> None:
        """Replies of this session that Messages failed to deliver after `reply` returned: `send_failed`."""
        receipts = self.replies.receipts
        if receipts is None:
            return
        for failure in await anyio.to_thread.run_sync(receipts.watch_failures):
            push(Deliver(failure.content, {**failure.meta(), "ts": iso_utc(self.clock.now())}), None)

    async def _until_reader(self, push: Push) -> None:
        """Another session reads chat.db: report this session's failed sends while waiting, and take over the
        moment the reader ends (`Peers.became_reader`, set by the lease watcher)."""
        became = self.peers.became_reader
        while not await anyio.to_thread.run_sync(became.wait, 1.0, abandon_on_cancel=True):
            try:
                await self._report_failures(push)
            except ChatDBError as exc:
                log.debug("send confirmation: %s", exc)
        log.info("session %r takes over reading iMessage", self.peers.name)
        await anyio.to_thread.run_sync(lambda: self.become_reader(handover=True))
        self._outbox_changed.set()  # adopt the queues the old reader left

    # -- routed events (from the reader) -----------------------------------------------------------------
    def _received(self, event: RoutedEvent) -> None:
        """The reader routed `event` here (on an inbox thread): write it, or hold it until the client listens."""
        with self._held_lock:
            push = self._push
            if push is None:
                self._held.append(event)
                return
        self._write_routed(push, event)

    def _listening(self, push: Push) -> None:
        """The client listens: write what was routed here before, and from now on at once."""
        with self._held_lock:
            self._push, held, self._held = push, self._held, []
        for event in held:
            self._write_routed(push, event)

    def _write_routed(self, push: Push, event: RoutedEvent) -> None:
        push(as_action(event), lambda: self.peers.written(event))

    def _orphaned(self, events: list[RoutedEvent]) -> None:
        """A session died with events it never wrote (a dispatcher thread): route them again soon."""
        for event in events:
            self._orphans.put(event)
        self.waker.poke()

    # -- the reader's loop ----------------------------------------------------------------------------
    def _confirmations(self) -> list[Send]:
        self.require()
        return self.approvals.confirmations()

    async def _drain(self, push: Push, tg: anyio.abc.TaskGroup) -> bool:
        """Read until no more rows are waiting; True when a row is held (look again soon)."""
        while True:
            _, pipeline = await anyio.to_thread.run_sync(self.require)
            before = pipeline.watermark
            actions, decisions = await anyio.to_thread.run_sync(self._poll, pipeline)
            for d in decisions:
                if d.verdict is not Verdict.HOLD:
                    log.debug("ROWID %d %s: %s", d.message.rowid, d.verdict.value, d.reason.value)
            for action in actions:
                self._execute(action, push, tg)
            if pipeline.watermark != before:
                await anyio.to_thread.run_sync(self.commit)
            held = bool(decisions) and decisions[-1].verdict is Verdict.HOLD
            if held or len(decisions) < BATCH:
                return held

    def _poll(self, pipeline: InboundPipeline) -> tuple[list[Action], list[RowDecision]]:
        """One read (`InboundPipeline.poll`) with the sessions around it: the other sessions' sends and
        deliveries learnt first, events of sessions that died routed again, and each new event routed: what
        stays here is returned, the rest is handed off. Blocking."""
        router = self.router
        assert router is not None
        router.before_poll(self.echo)
        pins = self._pins()
        actions: list[Action] = []
        while True:
            try:
                orphan = self._orphans.get_nowait()
            except queue.Empty:
                break
            if orphan.method != CHANNEL:
                log.info("a permission verdict for a session that ended was dropped")
                continue
            try:
                chat = str(orphan.params.get("meta", {}).get("chat_id", ""))
                target, again = router.redirect(orphan, chat, pins)
                back = router.deliver(again, target, pins)
            except Exception:  # delivered here rather than lost
                log.exception("could not route again an event of a session that ended; delivering it here")
                back = orphan
            if back is not None:
                actions.append(as_action(back))
        polled, decisions = pipeline.poll(BATCH)
        return actions + self._route(polled, router, pins), decisions

    def _pins(self) -> dict[str, str]:
        """Chats pinned to a session name in access.json (`"routes"`); none when it cannot be read."""
        try:
            return pins_from_access(self.store.load().extra)
        except Exception as exc:  # routing never fails for want of pins
            log.debug("routes in access.json not read: %s", exc)
            return {}

    def _route(self, actions: list[Action], router: Router, pins: dict[str, str]) -> list[Action]:
        """Route the pipeline's actions: events go to their session (those for this one are returned), a
        permission verdict to the session that asked; routing replies (`/sessions`) are added as `Send`s."""
        out: list[Action] = []
        lost_verdict = False
        for action in actions:
            if isinstance(action, PermissionVerdict):
                owner = self.permissions.owner(action.request_id)
                if owner == self.peers.sid:
                    out.append(action)
                elif not router.send_verdict(owner, action):
                    lost_verdict = True
                continue
            if isinstance(action, Send):
                if lost_verdict:  # the acknowledgement that follows a verdict (`inbound.permissions.answer`)
                    action = Send(action.chat_guid, f"{action.text}, but the session that asked has ended")
                    lost_verdict = False
                out.append(action)
                continue
            try:
                out += self._route_one(action, router, pins)
            except Exception:  # one event that cannot be routed is delivered here, never lost
                log.exception("routing failed for %s; delivered in this session", action.meta.get("message_id"))
                out.append(action)
        return out

    def _route_one(self, action: Deliver, router: Router, pins: dict[str, str]) -> list[Action]:
        """One event: what stays in this session (the event, a routing reply); the rest is handed off."""
        routed = router.route(action, pins)
        out: list[Action] = [] if routed.reply is None else [Send(routed.chat, routed.reply)]
        if routed.event is None or routed.target is None:
            log.info("%s: %s", routed.decision.value, routed.decision.description)
            return out
        back = router.hand_off(routed.event, routed.target, pins)
        return out if back is None else [*out, as_action(back)]

    def _execute(self, action: Action, push: Push, tg: anyio.abc.TaskGroup) -> None:
        if isinstance(action, Deliver):
            guid = action.meta["message_id"]
            if action.rowid:
                self.ledger.in_flight(guid, action.rowid)
            push(action, (lambda: self.ledger.written(guid)) if action.rowid else None)
        elif isinstance(action, PermissionVerdict):
            push(action, None)
        else:
            tg.start_soon(self._send_text, action.chat_guid, action.text)

    async def _send_text(self, chat_guid: str, text: str) -> None:
        self_chat = await anyio.to_thread.run_sync(self.is_self_chat, chat_guid)
        try:
            await anyio.to_thread.run_sync(lambda: self.replies.send_text(chat_guid, text, self_chat=self_chat))
        except SendError as exc:
            log.warning("could not text %s: %s", chat_guid, exc)

    async def _until_readable(self, push: Push) -> None:
        told: str | None = None
        while not await anyio.to_thread.run_sync(self.start):
            if self.problem != told:
                told = self.problem
                self.status(
                    push,
                    f"The iMessage channel cannot read the Messages database yet. {told} It looks again every "
                    f"{RECHECK_S:g} s and starts delivering as soon as it can; no restart needed.",
                )
            await anyio.sleep(RECHECK_S)
        if told is not None:
            self.status(push, "The iMessage channel can read the Messages database now: texts arrive from here on.")

    def status(self, push: Push, text: str) -> None:
        """Tell the session something about the channel itself: a `kind="status"` event."""
        push(Deliver(text, {"kind": "status", "ts": iso_utc(self.clock.now())}), None)

    # -- replies ------------------------------------------------------------------------------------------
    async def reply(self, push: Push, chat_id: str, text: str, files: list[str]) -> Outcome:
        """Send a reply (`replies.Replies.send`) and wake the outbox when parts were queued. Raises `SendError`;
        a denied Automation permission is also said once as a status event."""
        self_chat = await anyio.to_thread.run_sync(self.is_self_chat, chat_id)
        try:
            outcome = await anyio.to_thread.run_sync(
                lambda: self.replies.send(chat_id, text, files, self_chat=self_chat)
            )
        except SendError as exc:
            if exc.code == ERR_NOT_AUTHORIZED:
                self._automation_denied(push)
                raise SendError(f"{exc.message}. {automation(self.app)}", code=exc.code) from exc
            raise
        if outcome.queued:
            self._outbox_changed.set()
        return outcome

    def _automation_denied(self, push: Push) -> None:
        if not self._told_automation:
            self._told_automation = True
            self.status(push, f"The iMessage channel cannot make Messages send: {automation(self.app)}")

    async def outbox_forever(self, push: Push) -> None:
        """Retry queued reply parts when due; report replies given up as channel events. The reader also
        takes over the queues of sessions that ended (`Outbox.adopt`), looking every `ADOPT_OUTBOXES_S`."""
        while True:
            if self.router is not None:
                for path in await anyio.to_thread.run_sync(self.peers.ended_outboxes):
                    self.outbox.adopt(path)
            for entry in self.outbox.due():
                await self._retry(entry, push)
            due = self.outbox.next_due()
            delay = max(0.0, due - self.outbox.clock()) if due is not None else math.inf
            if not self.peers.alone:
                delay = min(delay, ADOPT_OUTBOXES_S)
            self._outbox_changed = anyio.Event()
            with anyio.move_on_after(delay):
                await self._outbox_changed.wait()

    async def _retry(self, entry: Queued, push: Push) -> None:
        """Send what is left of `entry`, part by part. The entry is checked against the scope first: the
        outbox file lives in the state dir, which is no proof that its chat is one the channel may answer
        (nor is an answer queued before access was revoked), so one out of scope is dropped with a log line
        and nothing is sent. chat.db unreadable: retried later like a failed send."""
        try:
            allowed = await anyio.to_thread.run_sync(self.may_answer, entry.chat_guid)
        except ChatDBError as exc:
            if not self.outbox.retry_later(entry, str(exc)):
                self._given_up(entry, str(exc), push)
            return
        if not allowed:
            log.warning("outbox: dropped a queued reply to %s: no longer a chat it may answer", entry.chat_guid)
            self.outbox.drop(entry)
            return
        self_chat = await anyio.to_thread.run_sync(self.is_self_chat, entry.chat_guid)
        while not entry.empty:
            texts, files = (entry.parts[:1], []) if entry.parts else ([], entry.files[:1])
            for text in texts:
                self.echo.record(entry.chat_guid, text, self_chat=self_chat)
            try:
                await anyio.to_thread.run_sync(self.replies.sender.send_parts, entry.chat_guid, texts, files)
            except SendError as exc:
                if exc.transient and self.outbox.retry_later(entry, exc.message):
                    log.info("outbox: %s still failing (%s); retry %d", entry.chat_guid, exc.message, entry.attempts)
                    return
                self.outbox.drop(entry)
                self._given_up(entry, exc.message, push)
                return
            self.outbox.part_sent(entry)
        log.info("outbox: delivered the rest of a reply to %s", entry.chat_guid)

    def _given_up(self, entry: Queued, reason: str, push: Push) -> None:
        log.warning("outbox: gave up a reply to %s: %s", entry.chat_guid, reason)
        content = (
            f'Your reply to {entry.chat_guid} starting "{entry.first_words}" could not be sent and was given up: '
            f"{reason}"
        )
        meta = {"chat_id": entry.chat_guid, "kind": "send_failed", "ts": iso_utc(self.clock.now())}
        push(Deliver(content, meta), None)

    # -- permission relay -------------------------------------------------------------------------------
    def self_chat_guid(self) -> str | None:
        """The self-chat permission prompts go to: of the owner's self-chats, the one with the newest message
        (`chatdb.self_chats`); on a tie the one where the owner last answered a prompt. With none in chat.db,
        the DM with the owner's first email address. Raises `ChatDBError`. Blocking."""
        db, pipeline = self.require()
        candidates = self_chats(db, pipeline.owner)
        if candidates:
            newest = db.latest_rowid_in(candidates[0])
            tied = [g for g in candidates if db.latest_rowid_in(g) == newest]
            return pipeline.answered_in if pipeline.answered_in in tied else tied[0]
        emails = sorted(h for h in pipeline.owner if "@" in h)
        return f"iMessage;-;{emails[0]}" if emails else None

    async def relay_permission(self, request_id: str, tool_name: str, description: str, preview: str) -> None:
        """Text a permission prompt to the self-chat; a `yes <id>` / `no <id>` there answers it."""
        if not self.settings.relay_permissions:
            log.info("permission request %s not relayed: IMESSAGE_RELAY_PERMISSIONS is off", request_id)
            return
        self.permissions.add(request_id)
        try:
            target = await anyio.to_thread.run_sync(self.self_chat_guid)
        except ChatDBError as exc:
            log.warning("permission request %s not relayed: %s", request_id, exc)
            return
        if target is None:
            log.warning("permission request %s: no self-chat known, not relayed", request_id)
            return
        prefix = await anyio.to_thread.run_sync(self.peers.prompt_prefix)  # `[name] ` with several sessions
        lines = [f"{prefix}🔐 Claude wants to use {tool_name or 'a tool'}", description, preview[:600]]
        lines.append(f'Reply "yes {request_id}" to allow or "no {request_id}" to deny.')
        await self._send_text(target, "\n".join(line for line in lines if line))

    # -- scope ------------------------------------------------------------------------------------------
    def may_answer(self, chat_guid: str) -> bool:
        """`scope.Scope.may_answer`, chat.db refreshed. Raises `Unavailable`, `ChatDBError`. Blocking."""
        self.require()
        return self.scope.may_answer(chat_guid)

    def history(self, chat_guid: str | None, limit: int) -> str | None:
        """The `chat_messages` text: `chat_guid`'s last `limit` messages, or every chat in scope's; None when
        `chat_guid` is out of scope. Raises `Unavailable`, `ChatDBError`. Blocking."""
        self.require()
        if chat_guid is not None and not self.scope.may_answer(chat_guid):
            return None
        guids = [chat_guid] if chat_guid else self.scope.chats()
        if not guids:
            return "No chats yet: text yourself, or allow someone with `imessage-channel access allow <handle>`."
        return self.scope.history(guids, limit)
