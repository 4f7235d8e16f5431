"""A miniature channel session for the multi-session tests and benchmarks.

It is the reference use of `sessions`, `lease`, `routing` and `handoff` — what `server.py` does once
integrated — without MCP and chat.db: rows come from a small SQLite table, and "Claude" is whoever reads this
process's stdout. Every session registers, listens on its inbox and watches the reader lease; the one that
holds the lease reads the rows past its watermark (persisted by the real `delivery.DeliveryLedger`), routes
each one (`routing.decide`) and pushes it locally or hands it to another session (`handoff.Dispatcher`).

Rows table (`--rows FILE`): `rows(rowid INTEGER PRIMARY KEY, guid TEXT, chat TEXT, text TEXT)`.

stdout, one JSON object per line, all through one writer thread (like `transport.StdoutLines`: a line's
`on_written` runs after its `write` returned):
- `{"op": "ready", "id": …, "name": …}` once registered and listening;
- `{"op": "reader", "id": …, "t_lease": …, "t_ready": …, "adopted": N}` when it took over as the reader
  (`perf_counter` when the lease was taken and when reading starts: after adoption and the log fold);
- `{"op": "received", "id": …}` when an event arrives from the reader (`--hold` keeps it unwritten until `go`);
- `{"op": "reply", "chat": …, "text": …}` for a routing reply (`/sessions`, switches);
- `{"jsonrpc": "2.0", "method": …, "params": …, "by": <name>}`: an event delivered to "Claude".

stdin commands: `go` (write every held event), `go <id>` (one), `quit` (clean shutdown, held events unwritten).
Options: `--name` (else `base_name` of the environment and working directory), `--hold`, `--no-lease`
(never reads), `--stamp` (the reader adds `meta.t0` = `perf_counter()` at the routing decision).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imessage_channel import routing
from imessage_channel.delivery import DeliveryLedger, Snapshot
from imessage_channel.handoff import (
    DeliveredLogs,
    Dispatcher,
    Inbox,
    RoutedEvent,
    SeenGuard,
    TargetGone,
    channel_event,
    ledger_fold,
)
from imessage_channel.lease import ReaderLease
from imessage_channel.sessions import Registry, SessionInfo, StickyStore, base_name, new_session_id

POLL_S = 0.005


class Stdout:
    """Lines to fd 1 in order, on one thread; `on_written(line)` after each write returned."""

    def __init__(self, on_written: Callable[[str], None]) -> None:
        self.on_written = on_written
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def write(self, obj: dict[str, Any]) -> None:
        self._queue.put(json.dumps(obj, separators=(",", ":")))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _drain(self) -> None:
        while (line := self._queue.get()) is not None:
            data = memoryview((line + "\n").encode())
            while data:
                data = data[os.write(1, data) :]
            self.on_written(line)


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state = Path(args.state)
        self.rows = Path(args.rows)
        self.registry = Registry(self.state)
        self.sid = new_session_id()
        self.out = Stdout(self._written)
        self.lock = threading.Lock()
        self.held: dict[str, RoutedEvent] = {}
        self.ledger: DeliveryLedger | None = None
        self.dispatcher: Dispatcher | None = None
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.orphans: queue.SimpleQueue[RoutedEvent] = queue.SimpleQueue()
        # Start-up order: listen first, then register (an entry always has a live socket), then the lease.
        self.inbox = Inbox(self.state, self.sid, on_event=self._received)
        name = args.name or base_name(os.environ, Path.cwd())
        self.me = self.registry.register(self.sid, name, address=self.inbox.address)
        self.inbox.start()
        self.out.write({"op": "ready", "id": self.sid, "name": self.me.info.name})
        self.lease = ReaderLease(self.state, self.sid)
        if not args.no_lease:
            self.lease.watch(self._become_reader)

    # -- every session -------------------------------------------------------------------------
    def _received(self, event: RoutedEvent) -> None:
        self.out.write({"op": "received", "id": event.id})
        with self.lock:
            if self.args.hold:
                self.held[event.id] = event
                return
        self.push(event)

    def push(self, event: RoutedEvent) -> None:
        self.out.write({"jsonrpc": "2.0", "method": event.method, "params": event.params, "by": self.me.info.name})

    def release(self, event_id: str | None) -> None:
        with self.lock:
            ids = list(self.held) if event_id is None else [event_id]
            events = [self.held.pop(i) for i in ids if i in self.held]
        for event in events:
            self.push(event)

    def _written(self, line: str) -> None:
        """The stdout writer's `on_written`: what `Channel._written` does, plus the inbox's acknowledgement."""
        if not line.startswith('{"jsonrpc"'):
            return
        self.inbox.written_line(line)
        ledger = self.ledger
        if ledger is not None:
            meta = json.loads(line)["params"].get("meta", {})
            if "message_id" in meta:
                ledger.written(meta["message_id"])

    # -- the reader ----------------------------------------------------------------------------
    def _become_reader(self) -> None:
        t_lease = time.perf_counter()
        ledger = DeliveryLedger(self.state, self.rows)
        self.wm = ledger.load().rowid or 0
        logs = DeliveredLogs(self.state, self.registry.is_live, fold=ledger_fold(ledger))
        self.dispatcher = Dispatcher(
            self.registry,
            self.sid,
            logs,
            on_ack=lambda e: ledger.written(e.id) if e.rowid else None,
            on_orphaned=self._orphaned,
            on_adopt=lambda e: ledger.in_flight(e.id, e.rowid) if e.rowid else None,
        )
        self.ledger = ledger
        adopted = self.dispatcher.take_over(self.inbox)  # adopts, then folds every delivered log
        self.logs = logs
        self.guard = SeenGuard(ledger, self.dispatcher)
        self.sticky_store = StickyStore(self.state)
        self.sticky = self.sticky_store.load()
        self.out.write(
            {
                "op": "reader",
                "id": self.sid,
                "t_lease": t_lease,
                "t_ready": time.perf_counter(),
                "adopted": len(adopted),
            }
        )
        try:
            self._read_forever()
        finally:
            self.done.set()

    def _orphaned(self, events: list[RoutedEvent], dead: SessionInfo) -> None:
        for event in events:
            self.orphans.put(event)
        self.wake.set()

    def _read_forever(self) -> None:
        db = sqlite3.connect(f"file:{self.rows}?mode=ro", uri=True, check_same_thread=False)
        while not self.stopping.is_set():
            self._reroute()
            self.logs.poll()
            rows = db.execute(
                "SELECT rowid, guid, chat, text FROM rows WHERE rowid > ? ORDER BY rowid LIMIT 200", (self.wm,)
            ).fetchall()
            for rowid, guid, chat, text in rows:
                if not self.guard.is_seen(guid):
                    self._route_row(rowid, guid, chat, text)
                self.wm = rowid
            if rows:
                self.ledger.commit(Snapshot(self.wm, None, datetime.now(UTC), ()))  # type: ignore[union-attr]
            self.wake.wait(POLL_S)
            self.wake.clear()

    def _route_row(self, rowid: int, guid: str, chat: str, text: str) -> None:
        live = self.registry.live()
        route = routing.decide(text, chat, live, sticky=self.sticky, reader=self.sid)
        self.sticky = route.sticky
        self.sticky_store.save(self.sticky)
        if route.reply is not None:
            self.out.write({"op": "reply", "chat": chat, "text": route.reply})
        if not route.decision.delivers or route.target is None:
            return
        meta = {"message_id": guid, "chat_id": chat, **route.meta}
        if self.args.stamp:
            meta["t0"] = repr(time.perf_counter())
        event = channel_event(route.text, meta, rowid)
        self.ledger.in_flight(guid, rowid)  # type: ignore[union-attr]
        self._deliver(event, route.target)

    def _deliver(self, event: RoutedEvent, target: SessionInfo) -> None:
        if target.id != self.sid:
            try:
                self.dispatcher.send(target, event)  # type: ignore[union-attr]
                return
            except TargetGone:
                pass
        self.push(event)

    def _reroute(self) -> None:
        while True:
            try:
                event = self.orphans.get_nowait()
            except queue.Empty:
                return
            chat = event.params.get("meta", {}).get("chat_id", "")
            route = routing.redirect(chat, self.registry.live(), sticky=self.sticky)
            meta = {k: v for k, v in event.params["meta"].items() if k != "session"} | route.meta
            again = RoutedEvent(event.id, event.method, {**event.params, "meta": meta}, event.rowid)
            self._deliver(again, route.target)  # type: ignore[arg-type]

    # -- shutdown ------------------------------------------------------------------------------
    def quit(self) -> None:
        """Clean shutdown, in the order the server must follow."""
        if self.lease.held:
            self.stopping.set()
            self.wake.set()
            self.done.wait(5)
            self.dispatcher.close()  # type: ignore[union-attr]
            self.out.close()  # last lines written (and acknowledged / recorded)
            self.ledger.commit(Snapshot(self.wm, None, datetime.now(UTC), ()))  # type: ignore[union-attr]
            self.lease.release()  # only after the last write of the delivery state
        else:
            self.lease.stop_watching()
            self.inbox.stop()  # the reader sees the connection end and waits for this process to die
            self.out.close()
        self.me.close()
        self.inbox.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--name")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--no-lease", action="store_true")
    parser.add_argument("--stamp", action="store_true")
    node = Node(parser.parse_args())
    for raw in sys.stdin:
        command = raw.split()
        if command[:1] == ["go"]:
            node.release(command[1] if len(command) > 1 else None)
        elif command[:1] == ["quit"]:
            break
    node.quit()
    os._exit(0)


if __name__ == "__main__":
    main()
