"""The waker: file-system events on the folder holding chat.db wake the reader; its own reads do not."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from watchdog.events import FileCreatedEvent, FileModifiedEvent, FileMovedEvent

from fixtures.chatdb_builder import create_chatdb
from imessage_channel.chatdb import ChatDB
from imessage_channel.devtools.simulator import MessagesSimulator
from imessage_channel.waker import Waker, _Handler


@pytest.mark.parametrize(
    ("event", "wakes"),
    [
        (FileModifiedEvent("/m/chat.db-wal"), True),
        (FileModifiedEvent("/m/chat.db"), True),
        (FileCreatedEvent("/m/chat.db-wal"), True),
        (FileCreatedEvent("/m/chat.db-shm"), True),
        (FileMovedEvent("/m/tmp123", "/m/chat.db"), True),
        (FileModifiedEvent("/m/chat.db-shm"), False),  # readers write read-marks here: no self-wake
        (FileModifiedEvent("/m/other.db-wal"), False),
        (FileModifiedEvent("/m/chat.db-journal"), False),
    ],
)
def test_which_events_wake_the_reader(event: object, wakes: bool) -> None:
    flag = threading.Event()
    _Handler("chat.db", flag).dispatch(event)  # type: ignore[arg-type]
    assert flag.is_set() is wakes


def test_a_commit_by_messages_wakes_a_real_observer(tmp_path: Path) -> None:
    db = create_chatdb(tmp_path / "chat.db", "ventura")
    sim = MessagesSimulator(db)
    me = sim.self_chat()
    waker = Waker(db, debounce=0)
    waker.start()
    try:
        sim.send(me, "wake up")
        assert waker.wait(timeout=10) is True
    finally:
        waker.stop()


def test_a_replaced_wal_file_still_wakes_the_observer(tmp_path: Path) -> None:
    db = create_chatdb(tmp_path / "chat.db", "ventura")
    waker = Waker(db, debounce=0)
    waker.start()
    try:
        wal = Path(f"{db}-wal")
        wal.unlink(missing_ok=True)
        waker.wait(timeout=0)  # drain whatever the unlink produced
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.commit()
        conn.close()
        assert waker.wait(timeout=10) is True
    finally:
        waker.stop()


def test_reading_alone_does_not_keep_waking(tmp_path: Path) -> None:
    db = create_chatdb(tmp_path / "chat.db", "ventura")
    sim = MessagesSimulator(db)
    sim.send(sim.self_chat(), "x")
    sim.close()
    reader = ChatDB(db)
    waker = Waker(db, debounce=0)
    waker.start()
    try:
        reader.messages_after(0)
        waker.wait(timeout=0.2)  # at most one wake from anything pending
        reader.messages_after(0)
        assert waker.wait(timeout=0.5) is False, "a read woke the reader: this would spin at idle"
    finally:
        waker.stop()
        reader.close()


def test_stop_releases_a_waiting_reader(tmp_path: Path) -> None:
    db = create_chatdb(tmp_path / "chat.db", "ventura")
    waker = Waker(db)
    waker.stop()
    assert waker.wait(timeout=30) is True
    assert os.path.exists(db)
