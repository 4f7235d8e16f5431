"""Handoff between sessions: acknowledged only after the target wrote, re-routed when the target dies,
adopted when the reader dies, and exactly once across any number of handovers.

The reader is either this test process (a real `Dispatcher` against node processes) or a node itself
(`tests/session_node.py`, the reference integration). Every wait is for something a process printed or a
callback fired; processes are killed with SIGKILL.
"""

from __future__ import annotations

import queue
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imessage_channel.delivery import DeliveryLedger, Snapshot
from imessage_channel.handoff import (
    SUN_PATH_MAX,
    DeliveredLog,
    DeliveredLogs,
    Dispatcher,
    Inbox,
    RoutedEvent,
    SeenGuard,
    TargetGone,
    channel_event,
    ledger_fold,
    parse_delivered,
    socket_path,
    verdict_event,
)
from imessage_channel.sessions import Registry, new_session_id
from tests.nodes import Cluster, Rows

CHAT = "iMessage;-;+15555550100"


class Reader:
    """This test process as the reader: registered, with a Dispatcher whose callbacks are recorded."""

    def __init__(self, state: Path) -> None:
        self.registry = Registry(state)
        self.me = self.registry.register(new_session_id(), "tester")
        self.logs = DeliveredLogs(state, self.registry.is_live)
        self.acked: list[str] = []
        self.log_at_ack: dict[str, list[tuple[str, int]]] = {}
        self.orphans: queue.SimpleQueue[tuple[list[RoutedEvent], str]] = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.dispatcher = Dispatcher(
            self.registry, self.me.info.id, self.logs, on_ack=self._ack, on_orphaned=self._orphaned, death_timeout=10
        )

    def _ack(self, event: RoutedEvent) -> None:
        sid = self.dispatcher.pending()[event.id]
        path = self.registry.dir / f"{sid}.delivered"
        with self.cond:
            self.log_at_ack[event.id] = parse_delivered(path.read_bytes()) if path.exists() else []
            self.acked.append(event.id)
            self.cond.notify_all()

    def _orphaned(self, events: list[RoutedEvent], session) -> None:
        self.orphans.put((events, session.id))

    def wait_acked(self, ids: list[str], timeout: float = 30) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: all(i in self.acked for i in ids), timeout), (ids, self.acked)

    def session(self, node):
        info = self.registry.get(node.id)
        assert info is not None
        return info

    def close(self) -> None:
        self.dispatcher.close()
        self.me.close()


def event(n: int, text: str = "") -> RoutedEvent:
    return channel_event(text or f"text {n}", {"message_id": f"GUID-{n}", "chat_id": CHAT}, rowid=n)


@pytest.fixture
def cluster(tmp_path):
    rows = Rows(tmp_path / "rows.db")
    c = Cluster(tmp_path / "state", rows.path, tmp_path / "logs")
    c.table = rows  # type: ignore[attr-defined]
    yield c
    c.stop_all()
    rows.close()


@pytest.fixture
def reader(cluster):
    r = Reader(cluster.state)
    yield r
    r.close()


# -- one event, one target -----------------------------------------------------------------------------
def test_the_ack_comes_only_after_the_target_wrote_and_logged_the_event(cluster, reader):
    target = cluster.start("t", hold=True, lease=False)
    ev = event(1, "hello")
    reader.dispatcher.send(reader.session(target), ev)
    target.wait_line(lambda m: m == {**m, "op": "received", "id": ev.id})
    # Received but held (not written): still pending, not acknowledged, not in the target's log.
    assert reader.dispatcher.is_pending(ev.id)
    assert reader.acked == []
    target.command(f"go {ev.id}")
    reader.wait_acked([ev.id])
    assert reader.log_at_ack[ev.id] == [(ev.id, 1)]  # logged before the acknowledgement was sent
    line = target.wait_line(lambda m: bool(m.get("jsonrpc")))
    assert line["method"] == "notifications/claude/channel"
    assert line["params"] == {"content": "hello", "meta": {"message_id": "GUID-1", "chat_id": CHAT}}
    assert not reader.dispatcher.is_pending(ev.id)


def test_an_event_sent_twice_is_written_once(cluster, reader):
    target = cluster.start("t", lease=False)
    info = reader.session(target)
    ev = event(1)
    reader.dispatcher.send(info, ev)
    reader.wait_acked([ev.id])
    reader.dispatcher.send(info, ev)  # a new reader re-sending what the old one sent
    with reader.cond:
        assert reader.cond.wait_for(lambda: reader.acked.count(ev.id) == 2, 30)  # acknowledged again at once
    verdict = verdict_event("abcde", "allow")
    reader.dispatcher.send(info, verdict)
    reader.wait_acked([verdict.id])
    cluster.wait_until(lambda: len(target.events()) == 2)
    assert target.event_ids() == ["GUID-1"]
    assert [m["params"] for m in target.events() if m["method"].endswith("/permission")] == [
        {"request_id": "abcde", "behavior": "allow"}
    ]


# -- target death ----------------------------------------------------------------------------------------
def test_a_target_killed_with_events_pending_has_them_rerouted(cluster, reader):
    held = cluster.start("held", hold=True, lease=False)
    other = cluster.start("other", lease=False)
    held_info, other_info = reader.session(held), reader.session(other)
    events = [event(n) for n in range(1, 6)]
    for ev in events:
        reader.dispatcher.send(held_info, ev)
    cluster.wait_until(lambda: len(held.received()) == 5)
    held.command("go GUID-1")
    held.command("go GUID-2")
    reader.wait_acked(["GUID-1", "GUID-2"])
    held.kill()
    orphans, dead = reader.orphans.get(timeout=30)
    assert dead == held_info.id
    assert [e.id for e in orphans] == ["GUID-3", "GUID-4", "GUID-5"]
    assert all(not reader.dispatcher.is_pending(e.id) for e in orphans)
    with pytest.raises(TargetGone):
        reader.dispatcher.send(held_info, event(6))
    for ev in orphans:
        reader.dispatcher.send(other_info, ev)
    reader.wait_acked(["GUID-3", "GUID-4", "GUID-5"])
    cluster.wait_until(lambda: len(other.events()) == 3)  # acknowledged means written; our reading may lag
    assert held.event_ids() == ["GUID-1", "GUID-2"]
    assert other.event_ids() == ["GUID-3", "GUID-4", "GUID-5"]


def test_a_target_that_quits_with_events_pending_has_them_rerouted(cluster, reader):
    held = cluster.start("held", hold=True, lease=False)
    info = reader.session(held)
    for n in (1, 2):
        reader.dispatcher.send(info, event(n))
    cluster.wait_until(lambda: len(held.received()) == 2)
    held.command("go GUID-1")
    reader.wait_acked(["GUID-1"])
    held.quit()  # a clean exit does not write what it holds: the reader must route it again
    orphans, _ = reader.orphans.get(timeout=30)
    assert [e.id for e in orphans] == ["GUID-2"]


def test_a_dead_target_found_at_send_time_is_orphaned_not_lost(cluster, reader):
    gone = cluster.start("gone", lease=False)
    info = reader.session(gone)
    gone.kill()
    reader.dispatcher.send(info, event(1))  # its entry is still there; the connection fails
    orphans, dead = reader.orphans.get(timeout=30)
    assert ([e.id for e in orphans], dead) == (["GUID-1"], info.id)


# -- reader death: adoption ------------------------------------------------------------------------------
def rows_of(cluster: Cluster) -> Rows:
    return cluster.table  # type: ignore[attr-defined]


def test_a_new_reader_adopts_what_another_session_holds(cluster):
    rows = rows_of(cluster)
    first = cluster.start("first")
    assert cluster.reader() is first
    held = cluster.start("held", hold=True, lease=False)  # never reads: the next reader is `spare`
    spare = cluster.start("spare")
    guids = [rows.add(f"@held job {n}") for n in range(3)]
    cluster.wait_until(lambda: len(held.received()) == 3)
    first.kill()
    assert cluster.reader([spare]).wait_line(lambda m: m.get("op") == "reader")["adopted"] == 3
    held.command("go")
    cluster.wait_until(lambda: len(held.events()) == 3)
    late = rows.add("@spare after the handover")
    cluster.wait_until(lambda: late in cluster.delivered())
    spare.quit()  # commits: the adopted events were acknowledged to spare, so its ledger knows them
    last = cluster.start("last")
    cluster.reader([last])
    sentinel = rows.add("sentinel")
    cluster.wait_until(lambda: sentinel in cluster.delivered())
    for node in (held, last):
        node.quit()
    assert {g: len(by) for g, by in cluster.delivered().items()} == dict.fromkeys([*guids, late, sentinel], 1)


def test_a_session_that_becomes_the_reader_adopts_its_own_pending_events(cluster):
    rows = rows_of(cluster)
    first = cluster.start("first")
    assert cluster.reader() is first
    held = cluster.start("held", hold=True)
    guids = [rows.add(f"@held job {n}") for n in range(3)]
    cluster.wait_until(lambda: len(held.received()) == 3)
    first.kill()
    assert cluster.reader([held]).wait_line(lambda m: m.get("op") == "reader")["adopted"] == 3
    held.command("go")
    cluster.wait_until(lambda: len(held.events()) == 3)
    held.quit()
    last = cluster.start("last")
    cluster.reader([last])
    sentinel = rows.add("sentinel")
    cluster.wait_until(lambda: sentinel in cluster.delivered())
    last.quit()
    assert {g: len(by) for g, by in cluster.delivered().items()} == dict.fromkeys([*guids, sentinel], 1)


def test_a_reader_that_dies_before_writing_its_adopted_events_leaves_them_to_the_next(cluster):
    rows = rows_of(cluster)
    first = cluster.start("first")
    assert cluster.reader() is first
    held = cluster.start("held", hold=True)
    guids = [rows.add(f"@held job {n}") for n in range(2)]
    cluster.wait_until(lambda: len(held.received()) == 2)
    first.kill()
    cluster.reader([held])
    spare = cluster.start("spare")
    held.kill()  # the new reader dies holding its adopted, unwritten events
    cluster.reader([spare])
    cluster.wait_until(lambda: all(g in cluster.delivered() for g in guids))
    spare.quit()
    assert {g: len(by) for g, by in cluster.delivered().items()} == dict.fromkeys(guids, 1)
    assert set(cluster.delivered()[guids[0]]) == {"spare"}


def test_a_reader_that_quits_cleanly_hands_its_routed_events_to_the_next(cluster):
    rows = rows_of(cluster)
    first = cluster.start("first")
    assert cluster.reader() is first
    held = cluster.start("held", hold=True, lease=False)
    spare = cluster.start("spare")
    guids = [rows.add(f"@held job {n}") for n in range(3)]
    cluster.wait_until(lambda: len(held.received()) == 3)
    first.quit()  # commits with the three still in flight: its watermark stays below them
    assert cluster.reader([spare]).wait_line(lambda m: m.get("op") == "reader")["adopted"] == 3
    held.command("go")
    sentinel = rows.add("@spare sentinel")
    cluster.wait_until(lambda: sentinel in cluster.delivered() and len(held.events()) == 3)
    for node in (held, spare):
        node.quit()
    assert {g: len(by) for g, by in cluster.delivered().items()} == dict.fromkeys([*guids, sentinel], 1)


# -- exactly once across handovers -----------------------------------------------------------------------
def test_exactly_once_across_reader_handovers_and_target_deaths(cluster):
    rows = rows_of(cluster)
    for _ in range(3):
        cluster.start("n")
    reader = cluster.reader()
    for round_no in range(4):
        live = [n for n in cluster.nodes if not n.closed]
        names = [n.name for n in live]
        batch = []
        for i in range(30):
            choice = i % (len(names) + 1)
            text = f"round {round_no} row {i}"
            batch.append(rows.add(f"@{names[choice]} {text}" if choice < len(names) else text, chat=f"chat-{i % 4}"))
        # Kill the reader while the batch is still being routed (a third of it seen by anyone).
        cluster.wait_until(lambda b=batch: sum(g in cluster.delivered() for g in b) >= 10)
        reader.kill()
        if round_no == 2:  # and, once, a session that is not the reader: its pending events are re-routed
            next(n for n in live if n is not reader).kill()
        cluster.start("n")
        reader = cluster.reader()
    cluster.wait_until(lambda: all(g in cluster.delivered() for g in rows.guids), 60)
    for node in cluster.nodes:
        if not node.closed:
            node.quit()
    cluster.assert_exactly_once(rows.guids)


def test_exactly_once_strictly_when_every_event_is_handed_off(cluster):
    """Readers that deliver nothing themselves (every row is addressed to one of two pure targets) are
    killed mid-stream, three times: no process dies between a write and its log append, so there is no
    window at all and every row must arrive exactly once, through adoption, logs and re-sends."""
    rows = rows_of(cluster)
    targets = [cluster.start("t", lease=False), cluster.start("t", lease=False)]
    cluster.start("r")
    reader = cluster.reader()
    for round_no in range(3):
        batch = [rows.add(f"@{targets[i % 2].name} round {round_no} row {i}") for i in range(40)]
        cluster.wait_until(lambda b=batch: sum(g in cluster.delivered() for g in b) >= 10)
        reader.kill()
        cluster.start("r")
        reader = cluster.reader()
    cluster.wait_until(lambda: all(g in cluster.delivered() for g in rows.guids), 60)
    for node in cluster.nodes:
        if not node.closed:
            node.quit()
    assert {g: len(by) for g, by in cluster.delivered().items()} == dict.fromkeys(rows.guids, 1)
    assert {n for by in cluster.delivered().values() for n in by} == {"t", "t-2"}


# -- pieces ---------------------------------------------------------------------------------------------
def test_socket_path_falls_back_to_a_short_folder_for_a_long_state_dir(tmp_path):
    state = tmp_path / ("x" * 120)
    sid = new_session_id()
    path = socket_path(state, sid)
    assert len(path.encode()) <= SUN_PATH_MAX
    assert path.endswith(f"{sid}.sock")
    assert socket_path(tmp_path, sid) == str(tmp_path / "sessions" / f"{sid}.sock")
    # A working inbox there, found through its registry entry.
    registry = Registry(state)
    got: queue.SimpleQueue[RoutedEvent] = queue.SimpleQueue()
    inbox = Inbox(state, sid, on_event=got.put)
    me = registry.register(sid, "long", address=inbox.address)
    inbox.start()
    reader_me = registry.register(new_session_id(), "reader")
    acked = threading.Event()
    dispatcher = Dispatcher(
        registry,
        reader_me.info.id,
        DeliveredLogs(state, registry.is_live),
        on_ack=lambda e: acked.set(),
        on_orphaned=lambda events, s: None,
    )
    try:
        dispatcher.send(registry.get(sid), event(1))  # type: ignore[arg-type]
        received = got.get(timeout=10)
        assert inbox.written_line(
            '{"jsonrpc":"2.0","method":"notifications/claude/channel","params":'
            '{"meta":{"message_id":"GUID-1","chat_id":"' + CHAT + '"},"content":"text 1"}}'
        )
        assert acked.wait(10)
        assert received.id == "GUID-1"
    finally:
        dispatcher.close()
        inbox.close()
        me.close()
        reader_me.close()
    assert not Path(path).exists()


def test_written_line_matches_only_a_pending_event(tmp_path):
    got: list[RoutedEvent] = []
    inbox = Inbox(tmp_path, new_session_id(), on_event=got.append)
    try:
        assert not inbox.written_line("not json")
        assert not inbox.written(event(1).id)  # nothing pending
    finally:
        inbox.close()


def test_delivered_log_rotates_and_the_reader_follows(tmp_path):
    registry = Registry(tmp_path)
    me = registry.register(new_session_id(), "writer")
    path = registry.dir / f"{me.info.id}.delivered"
    own = DeliveredLog(path, keep=4)
    folded: list[tuple[str, int]] = []
    logs = DeliveredLogs(tmp_path, registry.is_live, fold=lambda e, r: folded.append((e, r)))

    def append(*numbers: int) -> None:
        for n in numbers:
            own.append(f"G{n}", n)

    def polled() -> list[str]:
        return [e for _, e, _ in logs.poll()]

    append(1, 2, 3)
    assert [(e, r) for _, e, r in logs.poll()] == [("G1", 1), ("G2", 2), ("G3", 3)]
    append(4, 5, 6, 7)
    assert polled() == ["G4", "G5", "G6", "G7"]
    append(8, 9)  # the 8th line rotates: a new file (new header) with G5..G8, then G9
    assert parse_delivered(path.read_bytes()) == [(f"G{n}", n) for n in (5, 6, 7, 8, 9)]
    assert polled() == ["G8", "G9"]  # nothing repeated, nothing lost
    append(*range(10, 22))  # two more rotations between polls: the last `keep` lines are still seen
    assert polled()[-4:] == ["G18", "G19", "G20", "G21"]
    assert logs.was_written("G1") and logs.was_written("G21")
    assert path.exists()  # a live session's log is never deleted
    own.close()
    me.close()
    logs.poll()
    assert not path.exists()  # dead, read to its end and folded: deleted
    assert [e for e, _ in folded][:9] == [f"G{n}" for n in range(1, 10)]


def test_parse_delivered_skips_damaged_lines():
    data = b"#0011\n1 GUID-1\nnot a line\n2 GUID 2\nx GUID-3\n3 GUID-4\n4 GUID-5"
    assert parse_delivered(data) == [("GUID-1", 1), ("GUID-4", 3), ("GUID-5", 4)]


def test_ledger_fold_and_seen_guard(tmp_path):
    ledger = DeliveryLedger(tmp_path, tmp_path / "chat.db")
    ledger.load()
    fold = ledger_fold(ledger)
    ledger.in_flight("GUID-1", 1)
    fold("GUID-1", 1)
    fold("x-0011223344556677", 0)  # an event without a row is not the ledger's business
    assert ledger.is_seen("GUID-1") and not ledger.is_seen("x-0011223344556677")
    assert ledger.safe_watermark(5) == 5  # no longer in flight
    registry = Registry(tmp_path)
    me = registry.register(new_session_id(), "r")
    dispatcher = Dispatcher(
        registry, me.info.id, DeliveredLogs(tmp_path, registry.is_live), on_ack=print, on_orphaned=print
    )
    guard = SeenGuard(ledger, dispatcher)
    dispatcher._adopt_one(event(2), "bbbb0002")  # as adopted from another session at takeover
    assert guard.is_seen("GUID-1") and guard.is_seen("GUID-2") and not guard.is_seen("GUID-3")
    assert guard.safe_watermark(9) == 9  # everything else is the ledger's
    ledger.commit(Snapshot(3, None, datetime.now(UTC), ()))
    me.close()


def test_channel_event_ids():
    assert event(7).id == "GUID-7"
    loose = channel_event("late file", {"message_id": "GUID-7"})
    assert loose.id.startswith("x-") and loose.rowid == 0
    with pytest.raises(ValueError):
        channel_event("x", {"message_id": "has space"}, rowid=3)
    assert RoutedEvent.from_wire(event(7).to_wire()) == event(7)
    for bad in ({}, {"id": "a b", "method": "m", "params": {}}, {"id": "a", "method": "m", "params": {}, "rowid": -1}):
        with pytest.raises(ValueError):
            RoutedEvent.from_wire(bad)
