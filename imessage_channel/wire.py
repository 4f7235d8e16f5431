"""Screening of the JSON-RPC lines that reach the server on stdin, before the MCP SDK sees them.

The SDK's stdio transport (mcp 2.x `mcp.server.stdio.stdio_server`) parses each line with
`jsonrpc_message_adapter.validate_json` and, when that fails, hands the exception to the dispatcher, which
only logs it (`JSONRPCDispatcher._dispatch`): an unparsable line, a batch, a missing method,
`"jsonrpc": "1.0"` or a lone surrogate escape got no answer, and the client waited for its timeout. Worse,
a request whose `id` is not a string or an integer (`true`, `1.5`, `null`, an object) validates as a
*notification* and is silently never answered. Lines were also buffered whole, however long.

`transport.StdinLines` runs every line through `screen` and splits stdin with `LineSplitter`, which caps a
line at `MAX_LINE_BYTES` without buffering the excess. What `screen` returns:
- a valid message (request, notification, response, error) → the line itself, untouched, for the SDK;
- a blank line → nothing (no message; not worth an error);
- anything else → `Rejected`: the JSON-RPC 2.0 error response(s) to write, in the spec's terms
  (jsonrpc.org/specification §5.1): -32700 Parse error for text that is not JSON (not UTF-8, bad
  syntax, a lone surrogate escape: JSON text must be Unicode, RFC 8259 §8.2, and the SDK's parser
  refuses it), -32600 Invalid Request for JSON that is not a valid request object, -32602 Invalid
  params for positional (array) params, which MCP does not use. The error carries the request's `id`
  when one can be read and is usable (a string or an integer, MCP's `RequestId`), else `null`: the spec
  requires `null` only when the id cannot be determined, and an error with the id ends the client's wait
  at once instead of at its timeout.

Decisions, beyond the spec:
- A batch (JSON array) is refused: MCP removed JSON-RPC batching (protocol 2025-06-18) and the SDK cannot
  parse one. Each request in it gets its own -32600 error with its id (clients match responses by id and
  cannot read a batch response); a batch with no request in it gets one error with `id: null`.
- A malformed *response* (an object with `result` or `error` and no `method`) is logged and dropped, not
  answered: nobody waits for it, and answering a response with an error could fail one of the client's
  own requests that happens to share the id.
- Over-long lines get one -32600 error once their end (the next newline) is seen, with the id when
  `IdScanner` finds one at the top level of the discarded text (in any position: Claude Code's
  TypeScript SDK writes `id` after `params`), unless the discarded text is a response (see above).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydantic_core
from mcp_types import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, jsonrpc_message_adapter
from pydantic import ValidationError

log = logging.getLogger("imessage_channel.wire")

MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest line accepted, in bytes (16 MiB). A `reply` is at most 10 parts of 10 000 characters
(`sender.MAX_TEXT_PARTS`), well under 1 MiB even at 4 bytes a character; nothing a client legitimately
sends this server comes near. Longer lines are discarded as they arrive and answered once."""

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BLANK = b" \t\r\n"
_LONE_SURROGATE = "Parse error: a \\u escape encodes a lone surrogate, which is not Unicode text (RFC 8259 §8.2)"


@dataclass(frozen=True)
class Rejected:
    """A line not handed to the SDK: `responses` are the JSON-RPC error lines to write (without newline; may
    be empty, for a malformed response), `reason` says why, for the log."""

    responses: tuple[str, ...]
    reason: str


def error_line(code: int, message: str, request_id: int | str | None) -> str:
    """One JSON-RPC 2.0 error response as a line of JSON (ASCII; no newline):
    `{"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}`."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def usable_id(value: object) -> int | str | None:
    """`value` when it can identify a request (a string, or an integer that is not a bool: MCP's
    `RequestId`), else None."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return None


def _reject(code: int, message: str, request_id: int | str | None) -> Rejected:
    return Rejected((error_line(code, message, request_id),), message)


_UNPARSED = object()


def _lenient(text: str) -> Any:
    """`text` parsed by Python's json, which also takes lone surrogate escapes and NaN (to find out what a
    line the strict parser refused was, and its id); `_UNPARSED` when even that fails."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _UNPARSED


def _top_id(value: Any) -> int | str | None:
    return usable_id(value.get("id")) if isinstance(value, dict) else None


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def screen(raw: bytes) -> str | Rejected | None:
    """Judge one line of stdin (`raw`, without its newline): the line as text when it is a valid JSON-RPC
    message to hand to the SDK unchanged, None when it is blank, else `Rejected` (see the module docstring
    for the codes and ids). Never raises."""
    if not raw.strip(_BLANK):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        rid = _top_id(_lenient(raw.decode("utf-8", "replace")))
        return _reject(PARSE_ERROR, f"Parse error: the line is not UTF-8 (invalid byte at offset {exc.start})", rid)
    try:
        value = pydantic_core.from_json(text)  # the parser the SDK uses, so both agree on what is JSON
    except ValueError as exc:
        lenient = _lenient(text)
        if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(lenient):
            return _reject(PARSE_ERROR, _LONE_SURROGATE, _top_id(lenient))
        return _reject(PARSE_ERROR, f"Parse error: {exc}", _top_id(lenient))
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):  # defensive: the parser refuses them today
        return _reject(PARSE_ERROR, _LONE_SURROGATE, _top_id(value))
    if isinstance(value, list):
        return _batch(value)
    if not isinstance(value, dict):
        return _reject(INVALID_REQUEST, "Invalid Request: a JSON-RPC message is a JSON object", None)
    problem = _envelope_problem(value)
    is_response = "method" not in value and ("result" in value or "error" in value)
    if problem is None:
        try:
            jsonrpc_message_adapter.validate_json(text, by_name=False)  # exactly what the SDK will run
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in first["loc"][1:]) or "message"
            problem = INVALID_REQUEST, f"Invalid Request: {where}: {first['msg']}"
        else:
            return text
    if is_response:
        return Rejected((), f"malformed response dropped ({problem[1]})")
    code, message = problem
    return _reject(code, message, _top_id(value))


def _envelope_problem(msg: dict[str, Any]) -> tuple[int, str] | None:
    """(code, message) for what makes `msg` not a valid JSON-RPC 2.0 message of MCP's shape, or None."""
    if msg.get("jsonrpc") != "2.0":
        return INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be exactly "2.0"'
    if "id" in msg and usable_id(msg["id"]) is None:
        return INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer'
    if "method" in msg:
        if not isinstance(msg["method"], str):
            return INVALID_REQUEST, 'Invalid Request: "method" must be a string'
        params = msg.get("params")
        if isinstance(params, list):
            return INVALID_PARAMS, 'Invalid params: MCP "params" are an object, not an array'
        if params is not None and not isinstance(params, dict):
            return INVALID_REQUEST, 'Invalid Request: "params" must be an object'
        return None
    if "result" in msg or "error" in msg:
        return None  # a response: the SDK's validation judges the rest
    return INVALID_REQUEST, 'Invalid Request: no "method"'


def _batch(items: list[Any]) -> Rejected:
    message = "Invalid Request: batches are not supported (MCP removed JSON-RPC batching); send one message a line"
    ids = [
        usable_id(item.get("id"))
        for item in items
        if isinstance(item, dict) and "method" in item and usable_id(item.get("id")) is not None
    ]
    if not ids:
        return _reject(INVALID_REQUEST, message if items else "Invalid Request: empty batch", None)
    return Rejected(tuple(error_line(INVALID_REQUEST, message, rid) for rid in ids), message)


# --- over-long lines ---------------------------------------------------------------------------------


class IdScanner:
    """Finds the top-level `"id"` of a JSON object fed to it in pieces, in constant memory.

    Fed the text of an over-long line as it is discarded, it tracks nesting and strings (regex jumps to
    the next structural byte, so a 64 MB string costs a few dozen C-level searches) and captures only
    top-level keys (≤ 64 bytes) and the value after a top-level `"id"` key (≤ 256 bytes). `request_id` is
    the usable id found (the first one), else None; `is_response` is True when the object has a top-level
    `result` or `error` key and no `method`. Malformed text just yields no id.
    """

    _OUTSIDE = re.compile(rb'[{}\[\]",:]')
    _INSIDE = re.compile(rb'["\\]')
    _MAX_KEY = 64
    _MAX_VALUE = 256

    def __init__(self) -> None:
        self.size = 0
        self.request_id: int | str | None = None
        self._keys: set[str] = set()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._expect_key = False
        self._key: bytearray | None = None  # the top-level key being read
        self._last_key: str | None = None
        self._value: bytearray | None = None  # the raw value after a top-level "id":
        self._found = False
        self._dead = False  # not an object, or past its end

    @property
    def is_response(self) -> bool:
        """True when the object seen so far has top-level `result` or `error` and no `method`."""
        return "method" not in self._keys and bool(self._keys & {"result", "error"})

    def feed(self, data: bytes) -> None:
        """Scan the next piece of the line."""
        self.size += len(data)
        pos, end = 0, len(data)
        while pos < end and not self._dead:
            if self._in_string:
                if self._escape:
                    self._keep(data[pos : pos + 1])
                    self._escape = False
                    pos += 1
                    continue
                m = self._INSIDE.search(data, pos)
                stop = end if m is None else m.start()
                self._keep(data[pos:stop])
                if m is None:
                    return
                self._keep(data[stop : stop + 1])
                pos = stop + 1
                if data[stop] == ord("\\"):
                    self._escape = True
                else:
                    self._in_string = False
                    self._string_closed()
                continue
            m = self._OUTSIDE.search(data, pos)
            stop = end if m is None else m.start()
            self._keep(data[pos:stop])
            if m is None:
                if self._depth == 0 and data[pos:stop].strip(_BLANK):
                    self._dead = True  # text before any object: not an object
                return
            self._structural(data[stop])
            pos = stop + 1

    def _keep(self, piece: bytes) -> None:
        if not piece:
            return
        if self._key is not None:
            self._key += piece[: self._MAX_KEY + 1 - len(self._key)]
        if self._value is not None:
            self._value += piece
            if len(self._value) > self._MAX_VALUE:
                self._value = None
                self._found = True  # an id too long to be one we could echo

    def _string_closed(self) -> None:
        if self._key is None:
            return
        key = None
        if len(self._key) <= self._MAX_KEY:
            try:
                key = json.loads(bytes(self._key))
            except ValueError:
                key = None
        self._key = None
        self._last_key = key if isinstance(key, str) else None
        if self._last_key is not None:
            self._keys.add(self._last_key)

    def _structural(self, byte: int) -> None:
        ch = chr(byte)
        top = self._depth == 1
        if ch == '"':
            self._in_string = True
            if top and self._expect_key:
                self._key = bytearray(b'"')
            elif self._value is not None:
                self._value += b'"'
        elif ch in "{[":
            if self._depth == 0 and ch == "[":
                self._dead = True
                return
            if top and self._value is not None:
                self._value, self._found = None, True  # an object or array as the id: unusable
            self._depth += 1
            if self._depth == 1:
                self._expect_key = True
        elif ch in "}]":
            if top:
                self._finish_value()
            self._depth -= 1
            if self._depth <= 0:
                self._dead = True
        elif ch == ",":
            if top:
                self._finish_value()
                self._expect_key = True
            elif self._value is not None:
                self._value += b","
        elif ch == ":":
            if top:
                self._expect_key = False
                if self._last_key == "id" and not self._found:
                    self._value = bytearray()
            elif self._value is not None:
                self._value += b":"

    def _finish_value(self) -> None:
        if self._value is None:
            return
        raw, self._value, self._found = bytes(self._value), None, True
        try:
            self.request_id = usable_id(json.loads(raw))
        except ValueError:
            self.request_id = None


@dataclass(frozen=True)
class Oversized:
    """A line longer than the cap, discarded: its total `size` in bytes and what `IdScanner` found in it."""

    size: int
    request_id: int | str | None
    is_response: bool

    def rejected(self, cap: int = MAX_LINE_BYTES) -> Rejected:
        """The -32600 error to answer it with (none for a response; see the module docstring)."""
        message = f"Invalid Request: the message is {self.size} bytes, over the limit of {cap} bytes; discarded"
        if self.is_response:
            return Rejected((), f"over-long response dropped ({self.size} bytes)")
        return _reject(INVALID_REQUEST, message, self.request_id)


class LineSplitter:
    """Splits a byte stream into lines (newline-delimited, as MCP's stdio transport frames messages),
    holding at most `cap` bytes of one line. Past the cap the line is not kept: its bytes go through an
    `IdScanner` until the newline, and an `Oversized` comes out in its place. A line is held as the list of
    pieces read (no buffer grown by copying), joined once when its newline arrives."""

    def __init__(self, cap: int = MAX_LINE_BYTES) -> None:
        self.cap = cap
        self._pieces: list[bytes] = []
        self._size = 0
        self._scanner: IdScanner | None = None

    def feed(self, chunk: bytes) -> Iterator[bytes | Oversized]:
        """The lines (without their newline) and over-long lines completed by `chunk`, in order."""
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if self._scanner is not None:
                self._scanner.feed(piece)
            elif self._size + len(piece) > self.cap:
                self._scanner = IdScanner()
                for held in self._pieces:
                    self._scanner.feed(held)
                self._scanner.feed(piece)
                self._pieces, self._size = [], 0  # release what was held now, not at the newline
            elif piece:
                self._pieces.append(piece)
                self._size += len(piece)
            if nl < 0:
                return
            yield self._take()
            start = nl + 1

    def close(self) -> Iterator[bytes | Oversized]:
        """At end of input: the last line if it had no newline."""
        if self._scanner is not None or self._pieces:
            yield self._take()

    def _take(self) -> bytes | Oversized:
        if self._scanner is not None:
            scanner, self._scanner = self._scanner, None
            return Oversized(scanner.size, scanner.request_id, scanner.is_response)
        line = b"".join(self._pieces)
        self._pieces, self._size = [], 0
        return line
