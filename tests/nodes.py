"""Drive `tests/session_node.py` processes: start them, read their stdout lines, wait for what they say.

- `Rows(path)`: the rows table the reader node reads (`add(text, chat=…)` returns the new row's GUID).
- `Cluster(state, rows, logs)`: starts nodes (`start(...)` → `Node`) that share a condition variable, so a
  test waits for anything any node printed (`wait_until(predicate)`), never for a fixed time.
- `Node`: one process; `lines` (every JSON line it printed, with `_at` = `perf_counter()` on arrival),
  `events()` (its "delivered to Claude" lines), `command("go")`, `kill()` (SIGKILL), `quit()`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

NODE = Path(__file__).resolve().with_name("session_node.py")
ROOT = NODE.parents[1]


class Rows:
    """The rows table (`rows(rowid, guid, chat, text)`), in WAL mode, written by the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS rows (rowid INTEGER PRIMARY KEY, guid TEXT, chat TEXT, text TEXT)")
        self.guids: list[str] = []

    def add(self, text: str, chat: str = "iMessage;-;+15555550100") -> str:
        guid = str(uuid.uuid4()).upper()
        self.db.execute("INSERT INTO rows (guid, chat, text) VALUES (?, ?, ?)", (guid, chat, text))
        self.guids.append(guid)
        return guid

    def close(self) -> None:
        self.db.close()


class Node:
    """One `session_node.py` process (see that file for what it prints and understands)."""

    def __init__(self, cluster: Cluster, args: list[str], env: dict[str, str], cwd: Path, label: str) -> None:
        self.cluster = cluster
        self.label = label
        self.stderr_path = cluster.logs / f"{label}.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(NODE), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=cwd,
            )
        self.lines: list[dict[str, Any]] = []
        self.closed = False
        self.killed = False
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.wait_line(lambda m: m.get("op") == "ready")
        self.id: str = ready["id"]
        self.name: str = ready["name"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            msg = json.loads(raw)
            msg["_at"] = time.perf_counter()
            with self.cluster.cond:
                self.lines.append(msg)
                self.cluster.cond.notify_all()
        with self.cluster.cond:
            self.closed = True
            self.cluster.cond.notify_all()

    def wait_line(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first line this node printed that satisfies `predicate` (waiting for it)."""
        return self.cluster.wait_until(lambda: next((m for m in self.lines if predicate(m)), None), timeout)

    def events(self) -> list[dict[str, Any]]:
        with self.cluster.cond:
            return [m for m in self.lines if m.get("jsonrpc")]

    def event_ids(self) -> list[str]:
        return [m["params"]["meta"]["message_id"] for m in self.events() if "meta" in m["params"]]

    def received(self) -> list[str]:
        with self.cluster.cond:
            return [m["id"] for m in self.lines if m.get("op") == "received"]

    def is_reader(self) -> bool:
        with self.cluster.cond:
            return any(m.get("op") == "reader" for m in self.lines)

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL, then reap (after `wait` returns, the kernel has released every lock it held)."""
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.wait_closed()

    def quit(self, timeout: float = 20) -> None:
        """Clean shutdown (`quit` on stdin), wait for the exit and the end of its stdout."""
        self.command("quit")
        assert self.proc.wait(timeout) == 0, self.stderr_path.read_text()
        self.wait_closed()

    def wait_closed(self) -> None:
        self.cluster.wait_until(lambda: self.closed, 10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _message_id(line: dict[str, Any]) -> str | None:
    return line.get("params", {}).get("meta", {}).get("message_id") if line.get("jsonrpc") else None


class Cluster:
    """Nodes sharing one state dir and rows table; `wait_until` waits on what any of them printed."""

    def __init__(self, state: Path, rows: Path, logs: Path) -> None:
        self.state = state
        self.rows = rows
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.cond = threading.Condition()
        self.nodes: list[Node] = []

    def start(
        self,
        name: str | None = None,
        *,
        hold: bool = False,
        lease: bool = True,
        stamp: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Node:
        args = ["--state", str(self.state), "--rows", str(self.rows)]
        args += ["--name", name] if name else []
        args += ["--hold"] if hold else []
        args += [] if lease else ["--no-lease"]
        args += ["--stamp"] if stamp else []
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("IMESSAGE_", "CLAUDE_"))}
        full_env["PYTHONPATH"] = str(ROOT)
        full_env.update(env or {})
        node = Node(self, args, full_env, cwd or ROOT, f"node-{len(self.nodes)}")
        self.nodes.append(node)
        return node

    def wait_until(self, probe: Callable[[], Any], timeout: float = 30) -> Any:
        """Wait until `probe()` (called under the condition) returns something truthy, and return it.
        Raises `AssertionError` with every node's stderr tail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (result := probe()):
                left = deadline - time.monotonic()
                if left <= 0:
                    tails = "\n".join(f"--- {n.label} ({n.name})\n{n.stderr()[-2000:]}" for n in self.nodes)
                    raise AssertionError(f"timed out waiting for {probe}\n{tails}")
                self.cond.wait(left)
            return result

    def reader(self, among: list[Node] | None = None) -> Node:
        """Wait for a node (of `among`, default all live ones) to announce it reads, and return it."""
        pool = among if among is not None else [n for n in self.nodes if not n.closed]
        return self.wait_until(lambda: next((n for n in pool if n.is_reader() and not n.closed), None))

    def delivered(self) -> dict[str, list[str]]:
        """message_id → names of the nodes that wrote it (every node ever started)."""
        out: dict[str, list[str]] = {}
        with self.cond:
            for node in self.nodes:
                for m in node.lines:
                    if m.get("jsonrpc") and "meta" in m["params"]:
                        out.setdefault(m["params"]["meta"]["message_id"], []).append(node.name)
        return out

    def assert_exactly_once(self, guids: list[str]) -> int:
        """Every row in `guids` was delivered, nothing else was, and each exactly once — except the one window
        the ledger documents (`delivery`): a process SIGKILLed after its stdout `write` returned and before its
        `on_written` hook logged the event. Such a repeat is accepted only when one of its writers was killed
        and that event line is the very last line it ever wrote (so its hook cannot have finished). Returns
        how many repeats fell in that window."""
        delivered = self.delivered()
        assert sorted(delivered) == sorted(guids), set(guids) ^ set(delivered)
        window = 0
        for guid, by in delivered.items():
            if len(by) == 1:
                continue
            cut = [n for n in self.nodes if n.killed and n.lines and _message_id(n.lines[-1]) == guid]
            assert len(by) == 2 and cut, f"{guid} delivered by {by}, not explained by a kill mid-write"
            window += 1
        return window

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(10)
