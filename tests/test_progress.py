"""Progress lines: drawn on a terminal, throttled, erased at the end, and absent everywhere else."""

from __future__ import annotations

import io

from imessage_channel.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_written_when_stderr_is_not_a_terminal():
    pipe = io.StringIO()
    with Progress("catching up", total=1000, stream=pipe) as progress:
        for _ in range(1000):
            progress.advance()
    assert progress.enabled is False
    assert pipe.getvalue() == ""


def test_on_a_terminal_the_line_is_redrawn_at_most_once_per_interval_and_erased():
    term, clock = Terminal(), Clock()
    progress = Progress("reading messages", total=20_000, stream=term, interval=0.1, clock=clock)
    assert progress.enabled is True
    progress.update(500)
    progress.update(900)  # same instant: throttled
    clock.now += 0.25
    progress.update(20_000)
    assert term.getvalue() == "\rreading messages: 500 / 20,000 (2%)\rreading messages: 20,000 / 20,000 (100%)"
    progress.close()
    width = len("reading messages: 20,000 / 20,000 (100%)")
    assert term.getvalue().endswith("\r" + " " * width + "\r")


def test_a_shorter_line_overwrites_the_longer_one_completely():
    term, clock = Terminal(), Clock()
    progress = Progress("rows", stream=term, clock=clock)
    progress.update(123_456)
    clock.now += 1
    progress.update(7)
    assert term.getvalue() == "\rrows: 123,456\rrows: 7      "


def test_a_closed_stream_counts_as_not_a_terminal():
    closed = io.StringIO()
    closed.close()
    assert Progress("x", stream=closed).enabled is False
