"""A fork server for the test harness: `imessage-channel` processes without paying for the imports each time.

Starting the channel costs about 1 s of CPU, nearly all of it importing the MCP SDK (which pulls in pydantic
models for two protocol revisions, starlette, uvicorn and httpx). The suite starts the server about a hundred
times, so on a 2-core machine that import alone would take most of the time budget. This process imports the
package once, then forks a child per request; the child is a real, separate `imessage-channel` process that
talks MCP over real pipes, exactly as one started by `exec` (only the imports were done earlier, by its
parent). Tests that are about start-up itself (the `.mcp.json` command, the demo, the CLI, a dying parent)
still exec a fresh interpreter; `IMESSAGE_TEST_EXEC=1` makes every test do so.

Protocol, over a Unix socket, one connection per child: the client sends one JSON line
`{"argv": [...], "env": {...}, "cwd": "..."}` with three descriptors (stdin, stdout, stderr) attached
(SCM_RIGHTS); the server answers `{"pid": N}` once the child runs and `{"exit": code}` when it ends (`code`
as `subprocess` reports it: negative for a signal). This process is single-threaded, so forking it is safe.

Timing constants: a child whose environment has `IMESSAGE_TEST_CONSTANTS` (a JSON object `{"module.NAME": value}`)
sets those module attributes before it runs (and removes the variable): how the suite shortens a pause that
production code reads from a module constant at run time (see `FAST_CONSTANTS` in tests/zygote_client.py). A name that
does not exist is an error, so a renamed constant fails loudly instead of silently waiting again. Processes started
by `exec` ignore the variable and keep the real values.

Run: `python tests/zygote.py <socket path>`; it prints `ready` once it accepts connections and exits when
its parent (the test process) goes away.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib
import importlib

import imessage_channel.cli
import imessage_channel.server

PARENT_CHECK_S = 1.0
CONSTANTS_VARIABLE = "IMESSAGE_TEST_CONSTANTS"  # zygote_client.CONSTANTS_VARIABLE


def _set_constants(spec: str) -> None:
    """Set each `module.NAME` of the JSON object `spec` to its value (see the module docstring)."""
    for dotted, value in json.loads(spec).items():
        module_name, name = dotted.rsplit(".", 1)
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise AttributeError(f"{CONSTANTS_VARIABLE}: {module_name} has no {name}")
        setattr(module, name, value)


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become `imessage-channel <argv>` with the request's stdio, env and cwd."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        _set_constants(os.environ.pop(CONSTANTS_VARIABLE, None) or "{}")
        os.chdir(request["cwd"])
        sys.argv = ["imessage-channel", *request["argv"]]
        code = imessage_channel.cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def main(path: str) -> None:
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)  # the client waits for this line before it connects
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    conns: list[socket.socket] = []
    owner: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, wake_r, *conns], [], [], PARENT_CHECK_S)
        for item in ready:
            if item is listener:
                conn, _ = listener.accept()
                conns.append(conn)
            elif item == wake_r:
                os.read(wake_r, 4096)
                while True:
                    try:
                        pid, raw = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    conn = owner.pop(pid, None)
                    if conn is not None:
                        with contextlib.suppress(OSError):
                            conn.sendall(json.dumps({"exit": _status(raw)}).encode() + b"\n")
            else:
                conn = item
                data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
                if not data:
                    conns.remove(conn)
                    conn.close()
                    continue
                request = json.loads(data)
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for c in conns:
                        c.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(request, fds)
                for fd in fds:
                    os.close(fd)
                owner[pid] = conn
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


if __name__ == "__main__":
    main(sys.argv[1])
