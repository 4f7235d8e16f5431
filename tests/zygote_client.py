"""Client of the fork server (`tests/zygote.py`): `spawn()` returns a `subprocess.Popen` look-alike.

One fork server per test process (per xdist worker), started on first use in a private temporary folder and
ended with the test process. `spawn` falls back to a plain `subprocess.Popen` of
`python -m imessage_channel …` when `IMESSAGE_TEST_EXEC=1` is set or the platform has no `fork`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

ZYGOTE = Path(__file__).resolve().parent / "zygote.py"
FRONT_END = Path(__file__).resolve().parent / "zygote_exec.py"
ZYGOTE_VARIABLE = "IMESSAGE_TEST_ZYGOTE"
"""The fork server's socket path, for `zygote_exec.py` (see `command`)."""

CONSTANTS_VARIABLE = "IMESSAGE_TEST_CONSTANTS"
"""`{"module.NAME": value}` (JSON) that a forked child sets before it runs (see tests/zygote.py)."""

FAST_CONSTANTS: dict[str, float] = {
    "imessage_channel.server.LISTEN_GRACE_S": 0.05,
    "imessage_channel.channel.RECHECK_S": 0.1,
    "imessage_channel.channel.SAFETY_POLL_S": 0.5,
}
"""Pauses that servers forked for tests take shorter, so that no test waits them out in full: the 300 ms grace
after `tools/list` (about 170 server starts per run), the 3 s between looks at an unreadable chat.db, and the
5 s safety poll. Tests write their first row as soon as `tools/list` is answered; a commit that lands just as
the server starts watching chat.db (its WAL frames written before the watch, its -shm update after the first
read began: a slow fsync on a busy machine) raises no file event and is found only by the safety poll. The
50 ms grace makes that rare, the 0.5 s poll makes it cheap. Nothing a test checks depends on these lengths.
tests/conftest.py sets them for the whole session (`constants()`); servers started by `exec` keep the real ones."""


def constants(*, real: tuple[str, ...] = (), more: dict[str, object] | None = None) -> dict[str, str]:
    """The environment entry that gives forked servers `FAST_CONSTANTS`, but the real value of each constant
    named in `real` (`"LISTEN_GRACE_S"`: for a test about that pause), and `more` (`{"module.NAME": value}`:
    for a test that would otherwise wait out a pause it does not check)."""
    chosen = {name: value for name, value in FAST_CONSTANTS.items() if name.rsplit(".", 1)[1] not in real}
    return {CONSTANTS_VARIABLE: json.dumps({**chosen, **(more or {})})}


_lock = threading.Lock()
_server: tuple[subprocess.Popen[bytes], str] | None = None


def _socket_path() -> str:
    """The fork server's socket, started on first use."""
    global _server
    with _lock:
        if _server is not None and _server[0].poll() is None:
            return _server[1]
        folder = tempfile.mkdtemp(prefix="imc-zygote-")
        path = os.path.join(folder, "sock")
        proc = subprocess.Popen([sys.executable, str(ZYGOTE), path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the test fork server did not start")

        def stop() -> None:
            proc.kill()
            proc.wait()
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
        _server = (proc, path)
        return path


class ForkedProcess:
    """The parts of `subprocess.Popen` the harness uses, for a child of the fork server."""

    def __init__(self, conn: socket.socket, pid: int, stdin: IO[bytes], stdout: IO[bytes], buffered: bytes) -> None:
        self._conn = conn
        self._buf = buffered  # what the fork server sent after the pid line
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None
        self._exited = threading.Event()
        threading.Thread(target=self._await_exit, daemon=True).start()

    def _await_exit(self) -> None:
        buf = self._buf
        try:
            while b"\n" not in buf:
                chunk = self._conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
            self.returncode = int(json.loads(buf.split(b"\n", 1)[0])["exit"])
        except (OSError, ValueError, KeyError):
            self.returncode = -1
        finally:
            self._conn.close()
            self._exited.set()

    def poll(self) -> int | None:
        return self.returncode if self._exited.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(["imessage-channel (forked)"], timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if not self._exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _forking() -> bool:
    return os.environ.get("IMESSAGE_TEST_EXEC") != "1" and hasattr(os, "fork")


def command() -> tuple[list[str], dict[str, str]]:
    """`(argv prefix, environment additions)` of a command that runs `imessage-channel …` through the fork server,
    for code under test that starts the server itself: `python tests/zygote_exec.py` with `ZYGOTE_VARIABLE` set,
    or `python -m imessage_channel` and nothing when `spawn` would not fork."""
    if not _forking():
        return [sys.executable, "-m", "imessage_channel"], {}
    return [sys.executable, str(FRONT_END)], {ZYGOTE_VARIABLE: _socket_path()}


def spawn(argv: list[str], *, env: dict[str, str], stderr: IO[bytes], cwd: str | None = None) -> Any:
    """Start `imessage-channel <argv>` with pipes for stdin/stdout and `stderr` (a file); see the module."""
    if not _forking():
        return subprocess.Popen(
            [sys.executable, "-m", "imessage_channel", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=cwd,
        )
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_socket_path())
        request = {"argv": argv, "env": env, "cwd": cwd or os.getcwd()}
        socket.send_fds(conn, [json.dumps(request).encode()], [in_r, out_w, stderr.fileno()])
        buf = b""
        while b"\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                raise RuntimeError("the test fork server closed the connection")
            buf += chunk
        line, rest = buf.split(b"\n", 1)
        pid = int(json.loads(line)["pid"])
    except BaseException:
        conn.close()
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        raise
    os.close(in_r)
    os.close(out_w)
    return ForkedProcess(conn, pid, os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb"), rest)
