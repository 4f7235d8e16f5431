"""Fake `applescript` module (py-applescript's API) for testing `AppleScriptBackend` off macOS.

Mirrors the parts of rdhyee/py-applescript that the sender uses: `AppleScript(source)` compiles
(here: records the source in `compiled`) and `.run(*args)` runs the `run` handler (here: records
`(source, args)` in `runs` and calls `handler(source, args)` when a test set one; its return value
is the result). `ScriptError` carries `.message` and `.number` like the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

compiled: list[str] = []
runs: list[tuple[str, tuple[Any, ...]]] = []
handler: Callable[[str, tuple[Any, ...]], Any] | None = None


class ScriptError(Exception):
    """An AppleScript compile or run error with `message` and `number` (int or None)."""

    def __init__(self, message: str, number: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.number = number


class AppleScript:
    """A "compiled" script."""

    def __init__(self, source: str) -> None:
        self.source = source
        compiled.append(source)

    def run(self, *args: Any) -> Any:
        runs.append((self.source, args))
        return handler(self.source, args) if handler is not None else None
