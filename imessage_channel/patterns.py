"""`mentionPatterns`: compiled with RE2, a linear-time regex engine, so no pattern can stall delivery.

Why RE2 and not Python's `re`: `re` backtracks, and a pattern such as `^(a+)+$` takes exponential time on
a text like `"aaaa…b"`; the gate runs every group message through every pattern on the delivery path, so
one such pattern plus one message stalled delivery for everyone. RE2 (google/re2, Python bindings
`google-re2` on PyPI: wheels for Linux x86_64/aarch64 and macOS 13+, CPython 3.11–3.14) guarantees time
linear in the text and bounds each compiled pattern's memory (8 MiB by default: a pattern too large to fit
fails to compile). We chose it over the alternatives:
- a timeout around `re` (a worker thread cannot be interrupted; a worker process per message costs ~10 ms
  and makes the verdict depend on machine load: the same text could match on an idle machine and not on a
  busy one);
- capping the text length (exponential patterns stall on a few dozen characters).

Costs, accepted: RE2 has no look-around and no back-references (a pattern using them is invalid here:
skipped with a log by the gate, refused by `imessage-channel access set`); `\\b`, `\\w` and `\\d` are ASCII,
as in the JavaScript regexes the official plugin compiles. To keep patterns written for the official
plugin (JavaScript) or Python working, `_translate` rewrites `\\uXXXX` and `\\u{X…}` to RE2's `\\x{X…}` and
Python's `\\Z` to RE2's `\\z`.

Matching is case-insensitive (the official server compiles each pattern with the `i` flag).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import re2

_OPTIONS = re2.Options()
_OPTIONS.case_sensitive = False
_OPTIONS.log_errors = False  # RE2 would print parse errors to stderr itself; we log them once, in words

_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_HEX_BRACED = re.compile(r"\{([0-9A-Fa-f]{1,6})\}")


class PatternError(ValueError):
    """A `mentionPatterns` entry RE2 cannot compile; the message says why (RE2's own words)."""


def _translate(pattern: str) -> str:
    """`pattern` with JavaScript/Python escapes RE2 lacks rewritten: `\\uXXXX` and `\\u{X…}` → `\\x{X…}`,
    `\\Z` → `\\z`. Escaped backslashes (`\\\\u`) are left alone: the scan consumes escapes in pairs."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = pattern[i + 1]
        if nxt == "u" and (m := _HEX4.match(pattern, i + 2)):
            out.append(f"\\x{{{m.group()}}}")
            i = m.end()
        elif nxt == "u" and (m := _HEX_BRACED.match(pattern, i + 2)):
            out.append(f"\\x{{{m.group(1)}}}")
            i = m.end()
        elif nxt == "Z":
            out.append("\\z")
            i += 2
        else:
            out.append(pattern[i : i + 2])
            i += 2
    return "".join(out)


class CompiledPattern(Protocol):
    """What this module uses of a compiled RE2 regex (google-re2 ships no type information)."""

    def search(self, data: bytes) -> object | None:
        """The first match in `data` (UTF-8), or None."""
        ...


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> CompiledPattern:
    """The compiled, case-insensitive RE2 regex for one `mentionPatterns` entry.

    Raises `PatternError` (RE2's reason in the message) when RE2 cannot compile it: bad syntax,
    look-around, back-references, a repetition over 1000, or a program over RE2's memory budget.
    Results are cached (256 patterns); errors are not.
    """
    try:
        compiled: CompiledPattern = re2.compile(_translate(pattern), _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(str(reason)) from None
    return compiled


def pattern_error(pattern: str) -> str | None:
    """Why RE2 cannot compile `pattern`, or None when it can (for logs and the CLI)."""
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        return str(exc)
    return None


def any_match(patterns: Sequence[str], text: str) -> bool:
    """True when any of `patterns` matches anywhere in `text`, case-insensitively; patterns that do not
    compile are skipped (`AccessStore` logs them once per file version). Time is linear in `len(text)` for
    each pattern, whatever the pattern.

    Lone surrogates in `text` (possible in data decoded from UTF-16) are matched as U+FFFD: RE2 reads UTF-8.
    """
    data = text.encode("utf-8", "replace")
    for pattern in patterns:
        try:
            compiled = compile_pattern(pattern)
        except PatternError:
            continue
        if compiled.search(data) is not None:
            return True
    return False
