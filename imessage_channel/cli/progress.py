"""Progress for long operations: one self-rewriting line on stderr when stderr is a terminal.

Owns how progress looks and when it is shown. Catch-up after a restart and large history reads
(`imessage-channel messages --limit 100000`) can take seconds on a big chat.db; a person at a terminal
should see that something is happening, and nothing else should: when stderr is a pipe or a file
(Claude Code reading the server's stderr, a log, a test) `Progress` writes nothing at all. Stdout is
never touched (it is the MCP stream for `serve`, the data for `--json`).

    with Progress("reading messages", total=len(ids)) as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))

Redraws are throttled to one per `interval` seconds; `close()` erases the line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

REDRAW_INTERVAL_S = 0.1
"""Minimum time between two redraws: often enough to look alive, rarely enough to cost nothing."""


class Progress:
    """A progress line labelled `label`, counting up to `total` (None: unknown total).

    `stream` defaults to `sys.stderr`; `enabled` defaults to `stream.isatty()`. `clock` returns
    monotonic seconds (injectable for tests). Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = REDRAW_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_tty(self.stream) if enabled is None else enabled
        self.interval = interval
        self.clock = clock
        self.done = 0
        self._last_draw: float | None = None
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def text(self) -> str:
        """The current line: `label: 1,234 / 10,000 (12%)`, or `label: 1,234` without a total."""
        if self.total:
            pct = min(100, self.done * 100 // self.total)
            return f"{self.label}: {self.done:,} / {self.total:,} ({pct}%)"
        return f"{self.label}: {self.done:,}"

    def update(self, done: int) -> None:
        """Set the count to `done` and redraw if the last redraw is `interval` seconds old."""
        self.done = done
        if not self.enabled:
            return
        now = self.clock()
        if self._last_draw is not None and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        line = self.text()
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def advance(self, n: int = 1) -> None:
        """Add `n` to the count (see `update`)."""
        self.update(self.done + n)

    def close(self) -> None:
        """Erase the line (when anything was drawn); idempotent."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
