"""Apple timestamps: chat.db dates ↔ UTC `datetime`.

chat.db stores `message.date` (and `date_read`, `date_delivered`, `date_edited`, `date_retracted`)
relative to the Apple/Cocoa reference date, 2001-01-01 00:00:00 UTC. Since macOS 10.13 High Sierra
the unit is nanoseconds; older databases (and rows migrated from them) hold seconds. The two are told
apart by magnitude: any value ≥ 1e15 is nanoseconds (1e15 ns is only 11.6 days past the epoch, while
1e15 s is 31 million years). Source: design.md §4; Apple's `NSDate` reference date documentation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

APPLE_EPOCH = datetime(2001, 1, 1, tzinfo=UTC)
"""The Cocoa reference date: 2001-01-01T00:00:00Z."""

NS_THRESHOLD = 10**15
"""Values at or above this are nanoseconds since `APPLE_EPOCH`; below, seconds."""


def from_apple(value: int | float | None) -> datetime | None:
    """Convert a chat.db date (Apple epoch, ns or legacy s) to an aware UTC `datetime`.

    Returns None for NULL and for 0, which chat.db uses for "never" (e.g. an unread `date_read`).
    Negative values (before 2001) are converted as seconds/ns all the same. Never raises for ints
    in SQLite's 64-bit range.
    """
    if value is None or value == 0:
        return None
    v = int(value)
    if abs(v) >= NS_THRESHOLD:
        return APPLE_EPOCH + timedelta(microseconds=v // 1000)
    return APPLE_EPOCH + timedelta(seconds=v)


def to_apple_ns(when: datetime) -> int:
    """Convert an aware `datetime` to Apple-epoch nanoseconds (the unit macOS 10.13+ writes).

    Raises ValueError for a naive datetime (chat.db dates are UTC; guessing a zone loses data).
    """
    if when.tzinfo is None:
        raise ValueError("to_apple_ns needs an aware datetime")
    delta = when - APPLE_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
