"""Time: the one clock every part of the channel reads.

Owns the three readings the channel takes of time, so tests (and the suite run with the system clock a
year off) control all of them at once:

- `now()`: an aware UTC `datetime` — ages of rows, pairing-code expiry, `ts` of events the channel makes
  itself, names of files moved aside;
- `wall()`: Unix seconds — the outbox's retry times, ages of files by their mtime;
- `monotonic()`: seconds that never go back — grace periods, echo windows, download waits.

Nothing else in the package calls `datetime.now`, `time.time` or `time.monotonic`. `SystemClock` looks the
functions up at each call, so `freezegun` (which patches them) freezes every reading together; a test that
needs a clock of its own passes a `ManualClock`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """The readings of time the channel takes (see the module docstring)."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...

    def wall(self) -> float:
        """The current time in seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...


class SystemClock:
    """The machine's clock. Each reading calls the standard library afresh (freezegun-friendly)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()
"""The clock a running channel uses."""


class ManualClock:
    """A clock that moves only when told to (`advance`): for tests that step through time by hand.

    `start` is an aware datetime (default: the system's now, so rows written "now" by other code are not
    years away from it). `monotonic()` starts at 0 and advances with `advance`.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs an aware start time")
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def wall(self) -> float:
        return self._now.timestamp()

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float | timedelta) -> None:
        """Move every reading forward by `seconds` (a number or a `timedelta`)."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        self._now += timedelta(seconds=step)
        self._mono += step
