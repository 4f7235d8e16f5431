"""Test harness: run `imessage-channel serve` as a real subprocess and speak MCP to it over stdio.

A deliberately small JSON-RPC client (newline-delimited JSON, as the MCP stdio transport defines it):
every line the server prints is parsed and filed as a response (by id) or a notification, under a
condition variable, so tests wait for events instead of sleeping. The fake `osascript` from
`tests/fakes/bin` is first on `PATH`; its log is read back with `osascript_calls()`.

Servers start through a fork server (`tests/zygote.py`: the package imported once, a real child process per
server, real pipes) unless a test passes its own `argv` or `IMESSAGE_TEST_EXEC=1` is set.

Proving that something was *not* delivered: the server delivers rows in ROWID order, so tests write
the row that must be dropped, then a sentinel self-chat row, and wait for the sentinel: anything
delivered in between would already be in `events()`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imessage_channel.devtools.simulator import MessagesSimulator
from tests.zygote_client import spawn

FAKES_BIN = Path(__file__).resolve().parent / "fakes" / "bin"
CHANNEL = "notifications/claude/channel"
PERMISSION = "notifications/claude/channel/permission"


class ServerProcess:
    """One `imessage-channel serve` subprocess on `db`, with its state dir under `home` (a second
    ServerProcess on the same `home` is a restart: same state dir, same osascript log)."""

    _runs = 0

    def __init__(self, db: Path, home: Path, *, env: dict[str, str] | None = None, osascript_mode: str = "ok") -> None:
        self.db = db
        self.home = home
        self.state = home / "state"
        self.osascript_log = home / "osascript.jsonl"
        ServerProcess._runs += 1
        self.stderr_path = home / f"server-{ServerProcess._runs}.stderr"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "IMESSAGE_DB_PATH": str(db),
            "IMESSAGE_STATE_DIR": str(self.state),
            "IMESSAGE_APPLESCRIPT_BACKEND": "osascript",
            "IMESSAGE_LOG_LEVEL": "DEBUG",
            "FAKE_OSASCRIPT_LOG": str(self.osascript_log),
            "FAKE_OSASCRIPT_MODE": osascript_mode,
            "FAKE_OSASCRIPT_DB": str(db),  # a successful send writes its row, as Messages does
            "PATH": f"{FAKES_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **(env or {}),
        }
        self.proc: Any = None  # subprocess.Popen, or the fork server's look-alike
        self._cond = threading.Condition()
        self._responses: dict[int, dict[str, Any]] = {}
        self._notifications: list[tuple[float, dict[str, Any]]] = []
        self._raw: list[bytes] = []
        self._next_id = 0
        self.listed_at = 0.0  # perf_counter() when the tools/list answer arrived (see `initialize`)
        self._closed = False
        self._pause_after: int | None = None
        self._resume = threading.Event()

    # -- process ---------------------------------------------------------------------------
    def start(self, argv: list[str] | None = None) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        self._stderr = self.stderr_path.open("wb")
        if argv is None:
            self.proc = spawn(["serve"], env=self.env, stderr=self._stderr)
        else:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=self.env
            )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.perf_counter()
            with self._cond:
                self._raw.append(line)
                msg = json.loads(line)  # a non-JSON line on stdout fails here: stdout is MCP only
                if "id" in msg and ("result" in msg or "error" in msg):
                    self._responses[msg["id"]] = msg
                else:
                    self._notifications.append((now, msg))
                self._cond.notify_all()
                paused = self._pause_after is not None and len(self._notifications) >= self._pause_after
            if paused:
                self._resume.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def close_stdin(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()

    def wait_exit(self, timeout: float = 10) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.close_stdin()
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._stderr.close()

    def pause_reading_after(self, notifications: int) -> None:
        """Stop reading stdout once this many notifications arrived, so the server's pipe fills up."""
        self._pause_after = notifications

    def resume_reading(self) -> None:
        self._pause_after = None
        self._resume.set()

    def wait_stdout_pipe_full(self, timeout: float = 30) -> None:
        """Block until the kernel pipe of the server's stdout is nearly full (its writer is blocked)."""
        import fcntl
        import termios

        assert self.proc is not None and self.proc.stdout is not None
        buf = bytearray(4)

        def full() -> bool:
            fcntl.ioctl(self.proc.stdout.fileno(), termios.FIONREAD, buf)  # type: ignore[union-attr]
            return int.from_bytes(buf, sys.byteorder) >= 65536 - 4096

        self._wait(full, timeout, "the server's stdout pipe to fill")

    def wait_closed(self, timeout: float = 15) -> None:
        """Block until the server's stdout reached EOF (after it exited or was killed)."""
        self._wait(lambda: self._closed, timeout, "stdout EOF")

    # -- JSON-RPC ------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def send_raw(self, data: bytes) -> None:
        """Write `data` to the server's stdin exactly as given: malformed, partial or several lines."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def errors(self) -> list[dict[str, Any]]:
        """Every JSON-RPC error response the server wrote, in order (including those with `id: null`)."""
        with self._cond:
            return [m for m in (json.loads(line) for line in self._raw) if "error" in m and "method" not in m]

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15) -> dict[str, Any]:
        """Send a request and return its whole response message (with `result` or `error`)."""
        self._next_id += 1
        rid = self._next_id
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self._wait(lambda: self._responses.get(rid), timeout, f"response to {method}")

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def initialize(self, *, initialized: bool = True) -> dict[str, Any]:
        """The legacy handshake as Claude Code does it: `initialize`, `notifications/initialized`, then
        `tools/list` (the server pushes channel events only after that). Returns the initialize result."""
        result = self.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tests", "version": "0"}},
        )["result"]
        if initialized:
            self.notify("notifications/initialized")
            self.request("tools/list")
            self.listed_at = time.perf_counter()
        return result

    def raw_lines(self) -> list[dict[str, Any]]:
        """Every message the server wrote, in order."""
        with self._cond:
            return [json.loads(line) for line in self._raw]

    def call_tool(self, name: str, arguments: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        """`tools/call`; returns the CallToolResult dict (`content`, `isError`)."""
        response = self.request("tools/call", {"name": name, "arguments": arguments}, timeout=timeout)
        assert "result" in response, response
        return response["result"]

    # -- waiting -------------------------------------------------------------------------------
    def _wait(self, probe: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = probe()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise AssertionError(f"timed out waiting for {what}; server stderr:\n{self.stderr()[-3000:]}")
                self._cond.wait(min(left, 0.05))  # re-probe: some conditions change without a line

    def notifications(self, method: str) -> list[dict[str, Any]]:
        with self._cond:
            return [m["params"] for _, m in self._notifications if m.get("method") == method]

    def events(self) -> list[dict[str, Any]]:
        """Every channel event so far: dicts with `content` and `meta`."""
        return self.notifications(CHANNEL)

    def wait_events(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        """Block until at least `count` channel events arrived; return them all."""
        return self._wait(lambda: (e := self.events()) and len(e) >= count and e, timeout, f"{count} channel events")

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        """Block until a channel event matching `predicate` arrived; return it."""
        return self._wait(lambda: next((e for e in self.events() if predicate(e)), None), timeout, "a matching event")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
        """Block until `condition()` holds (something the server does outside its stdout: a file it writes)."""
        self._wait(condition, timeout, what)

    def wait_log(self, text: str, timeout: float = 15) -> str:
        """Block until the server's stderr contains `text`; return the whole log."""
        return self._wait(lambda: log if text in (log := self.stderr()) else None, timeout, f"{text!r} in the log")

    def wait_notification(self, method: str, timeout: float = 15) -> dict[str, Any]:
        return self._wait(lambda: (n := self.notifications(method)) and n[-1], timeout, method)

    def event_times(self) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            return [(t, m["params"]) for t, m in self._notifications if m.get("method") == CHANNEL]

    # -- osascript fake ------------------------------------------------------------------------
    def osascript_calls(self) -> list[dict[str, Any]]:
        if not self.osascript_log.exists():
            return []
        return [json.loads(line) for line in self.osascript_log.read_text(encoding="utf-8").splitlines()]

    def wait_osascript(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        """Wait until the fake osascript (another process, appending to its log) ran `count` times."""
        return self._wait(
            lambda: len(calls := self.osascript_calls()) >= count and calls, timeout, f"{count} osascript calls"
        )


def sentinel(server: ServerProcess, sim: MessagesSimulator, n: int) -> dict[str, Any]:
    """Write the self-chat text `sentinel <n>`, typed on the Mac, and wait for its event. Events arrive
    in ROWID order, so once it is here nothing written before it is still on its way (module docstring)."""
    text = f"sentinel {n}"
    sim.text_self(text, typed_on="mac")
    return server.wait_event(lambda e: e["content"] == text)


@dataclass(frozen=True)
class DemoRun:
    """One run of `python -m imessage_channel demo` as a user runs it: exit code, stdout, stderr, and the
    bundled demo database's bytes before and after."""

    returncode: int
    stdout: str
    stderr: str
    db_before: bytes
    db_after: bytes
