"""Stdio plumbing for the MCP transport: the process's stdin and stdout, owned so exit and delivery are exact.

The SDK's `stdio_server()` reads stdin and writes stdout through anyio worker threads. Two properties the
channel needs are missing there, so this module provides both streams and hands them to
`stdio_server(stdin=…, stdout=…)`:

- `StdinLines` reads stdin on a *daemon* thread with raw `os.read`, so a server told to stop (SIGTERM, dead
  parent) while stdin is still open can exit: the SDK's reader keeps a non-daemon thread blocked until EOF.
- `StdoutLines` owns file descriptor 1: it moves the real stdout to a private descriptor and points fd 1 at
  stderr, so a stray `print` or a child's output can never corrupt the JSON-RPC stream (design §3). Each
  line is written whole by one writer thread, and `on_written(line)` is called only *after* the line has
  been handed to the kernel: that is the moment a channel event counts as delivered (see `delivery.py`).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.lowlevel


class StdinLines:
    """Lines of the process's stdin, read by a daemon thread and handed to the event loop.

    The SDK's own stdin reader blocks a (non-daemon) worker thread until a line or EOF arrives, so a
    server asked to stop by SIGTERM, or whose parent died while stdin stayed open, could not exit.
    Passing this to `stdio_server(stdin=…)` keeps stdin reading off the exit path. Iterate it with
    `async for`; iteration ends at EOF.
    """

    def __init__(self) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[str](64)
        self._token = anyio.lowlevel.current_token()
        threading.Thread(target=self._pump, name="stdin", daemon=True).start()

    def _pump(self) -> None:
        # Raw os.read on a private descriptor: a daemon thread blocked inside sys.stdin's buffered
        # reader holds its lock and aborts interpreter shutdown ("could not acquire lock").
        fd = os.dup(0)
        pending = b""
        try:
            while chunk := os.read(fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    anyio.from_thread.run(self._send.send, line.decode("utf-8", "replace"), token=self._token)
            if pending:
                anyio.from_thread.run(self._send.send, pending.decode("utf-8", "replace"), token=self._token)
            anyio.from_thread.run_sync(self._send.close, token=self._token)
        except (OSError, RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the event loop is gone: the process is exiting
        finally:
            os.close(fd)

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._recv.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class StdoutLines:
    """The JSON-RPC output stream (duck-types the `anyio.AsyncFile` methods `stdio_server` uses).

    `write()` queues a line for a daemon writer thread and returns; the thread writes it completely
    (looping over partial writes) and then calls `on_written(line)`. Lines are written in order. If the
    reader of our stdout goes away, writes fail silently and the process exits through stdin EOF.
    """

    def __init__(self, on_written: Callable[[str], None] | None = None) -> None:
        sys.stdout.flush()
        self._fd = os.dup(1)
        os.dup2(2, 1)  # fd 1 (and so print/children) now goes to stderr
        self.on_written = on_written
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="stdout", daemon=True)
        self._thread.start()

    async def write(self, data: str) -> None:
        self._queue.put(data)

    async def flush(self) -> None:
        return None

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most `timeout` s), then stop the writer thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _drain(self) -> None:
        broken = False
        while (line := self._queue.get()) is not None:
            if broken:
                continue
            data = memoryview(line.encode("utf-8"))
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                broken = True
                continue
            if self.on_written is not None:
                self.on_written(line)
