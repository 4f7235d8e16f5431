"""Stdio plumbing for the MCP transport: the process's stdin and stdout, owned so exit and delivery are exact.

The SDK's `stdio_server()` reads stdin and writes stdout through anyio worker threads. Two properties the
channel needs are missing there, so this module provides both streams and hands them to
`stdio_server(stdin=…, stdout=…)`:

- `StdinLines` reads stdin on a *daemon* thread with raw `os.read`, so a server told to stop (SIGTERM, dead
  parent) while stdin is still open can exit: the SDK's reader keeps a non-daemon thread blocked until EOF.
  It also screens every line (`wire.screen`, lines capped by `wire.LineSplitter`): the SDK drops a line it
  cannot parse without answering, so malformed JSON-RPC is answered here, with its JSON-RPC 2.0 error
  written through `StdoutLines`, and only valid messages reach the SDK, untouched.
- `StdoutLines` owns file descriptor 1: it moves the real stdout to a private descriptor and points fd 1 at
  stderr, so a stray `print` or a child's output can never corrupt the JSON-RPC stream (design §3). Each
  line is written whole by one writer thread, and the callback given to `send` runs only *after* the line has
  been handed to the kernel: that is the moment a channel event counts as delivered (see `delivery.py`).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.lowlevel

from .wire import MAX_LINE_BYTES, LineSplitter, Oversized, Rejected, screen

log = logging.getLogger("imessage_channel.transport")


class StdinLines:
    """Valid JSON-RPC lines of the process's stdin (or of descriptor `fd`), read by a daemon thread and
    handed to the event loop.

    The SDK's own stdin reader blocks a (non-daemon) worker thread until a line or EOF arrives, so a
    server asked to stop by SIGTERM, or whose parent died while stdin stayed open, could not exit.
    Passing this to `stdio_server(stdin=…)` keeps stdin reading off the exit path. Iterate it with
    `async for`; iteration ends at EOF.

    Each line is screened on the reading thread (`wire.screen`; parsing a long line never blocks the event
    loop) and lines over `max_line_bytes` are discarded as they arrive (`wire.LineSplitter`). Only valid
    messages are yielded, as they came; blank lines are skipped; for every other line the JSON-RPC error
    response(s) are written to `replies` (the server's `StdoutLines`, so they share its one writer and its
    order) when the iteration reaches that line, and a warning is logged.
    """

    def __init__(
        self, replies: StdoutLines | None = None, *, fd: int = 0, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self._replies = replies
        self._fd = fd
        self._cap = max_line_bytes
        self._send, self._recv = anyio.create_memory_object_stream[str | Rejected](64)
        self._token = anyio.lowlevel.current_token()
        threading.Thread(target=self._pump, name="stdin", daemon=True).start()

    def _pump(self) -> None:
        # Raw os.read on a private descriptor: a daemon thread blocked inside sys.stdin's buffered
        # reader holds its lock and aborts interpreter shutdown ("could not acquire lock").
        fd = os.dup(self._fd)
        splitter = LineSplitter(self._cap)
        try:
            while chunk := os.read(fd, 65536):
                for line in splitter.feed(chunk):
                    self._forward(line)
            for line in splitter.close():
                self._forward(line)
            anyio.from_thread.run_sync(self._send.close, token=self._token)
        except (OSError, RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the event loop is gone: the process is exiting
        finally:
            os.close(fd)

    def _forward(self, line: bytes | Oversized) -> None:
        verdict = line.rejected(self._cap) if isinstance(line, Oversized) else screen(line)
        if verdict is None:
            return
        if isinstance(verdict, Rejected):
            log.warning("stdin: refused a line: %s", verdict.reason)
        anyio.from_thread.run(self._send.send, verdict, token=self._token)

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        while True:
            try:
                item = await self._recv.receive()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            if isinstance(item, str):
                return item
            if self._replies is not None:
                for response in item.responses:
                    await self._replies.write(response + "\n")


class StdoutLines:
    """The JSON-RPC output stream (duck-types the `anyio.AsyncFile` methods `stdio_server` uses).

    `write()` (the SDK's responses) and `send()` (the channel's own notifications) queue a line for a daemon
    writer thread and return; the thread writes each line completely (looping over partial writes), in
    order, and only then calls the callback given to `send`: that is the moment a channel event counts as
    delivered (`delivery`), known without parsing what was written. If the reader of our stdout goes away,
    writes fail silently (no callback) and the process exits through stdin EOF.
    """

    def __init__(self) -> None:
        sys.stdout.flush()
        self._fd = os.dup(1)
        os.dup2(2, 1)  # fd 1 (and so print/children) now goes to stderr
        self._queue: queue.SimpleQueue[tuple[str, Callable[[], None] | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="stdout", daemon=True)
        self._thread.start()

    async def write(self, data: str) -> None:
        self._queue.put((data, None))

    def send(self, line: str, on_written: Callable[[], None] | None = None) -> None:
        """Queue `line` (one JSON-RPC message, newline included); `on_written()` runs on the writer thread
        once the whole line is in the pipe."""
        self._queue.put((line, on_written))

    async def flush(self) -> None:
        return None

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most `timeout` s), then stop the writer thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _drain(self) -> None:
        broken = False
        while (item := self._queue.get()) is not None:
            line, on_written = item
            if broken:
                continue
            data = memoryview(line.encode("utf-8", "replace"))  # a lone surrogate must not stop the writer
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                broken = True
                continue
            if on_written is not None:
                on_written()
