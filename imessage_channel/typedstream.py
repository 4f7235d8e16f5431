"""The typedstream codec for chat.db `message.attributedBody`.

This module owns reading and writing the NSArchiver ("streamtyped") archives that Messages stores in
`message.attributedBody`: an `NSAttributedString` or `NSMutableAttributedString` whose string is an
`NSString` / `NSMutableString`, followed by attribute runs, each an `NSDictionary` of attributes such as
`__kIMMessagePartAttributeName` or `__kIMFileTransferGUIDAttributeName`.

It is a structured parser, not a byte-pattern scanner: it reads the header, every typed value group,
class chains with versions, and both reference tables (shared strings; objects, classes and C strings).
Facts it rests on, re-checkable in public sources:

- Format: python-typedstream by dgelessus (`typedstream/stream.py`, `archiving.py`), itself derived from
  Apple's `typedstream.m` in Darwin 0.1 (objc-1). Header: streamer version 4, an 11-byte signature
  (`streamtyped` = little-endian), system version (1000 on macOS). Integers: one signed byte unless a tag
  (0x81 int16 follows, 0x82 int32 follows, 0x87 int64 follows, 0x83 a float/double follows); 0x84 new,
  0x85 nil, 0x86 end of object; bytes 0x80-0x91 are tags; a reference is an integer `n` naming table entry
  `n + 110`, so 0x92 is entry 0. Lengths (`+` strings, run lengths) are unsigned: a single byte 0x92-0xFF
  there means 146-255.
- Runs: after the string, `NSAttributedString` archives groups typed `iI` = (attribute dictionary number,
  run length in UTF-16 code units). Dictionaries are numbered from 1 in order of first use; a number seen
  before reuses that dictionary and no dictionary object follows. Run starts are implicit: each run
  begins where the previous one ended. (ReagentX/imessage-exporter `imessage-database/src/tables/
  messages/body.rs` and its crabstep test data; checked against two real Ventura blobs from
  xevg/imessagedb, kept in `tests/test_typedstream.py`.)
- `0x87`: NSArchiver writes an 8-byte little-endian integer after it for an NSNumber `q`/`Q` whose value
  does not fit 32 bits (ReagentX/crabstep `deserializer/constants.rs` `I_64` and its
  `test_data/foundation/NumberInt64`, which archives -9 000 000 000). python-typedstream does not know the tag;
  a reader without it stops at the first such number and loses every run after it.
- The string's bytes are UTF-8 and their length is in UTF-8 bytes; it is never found by searching for
  0x86 0x84, a pair that occurs inside the UTF-8 of U+2184, U+3184 and U+1F184.

Public API: `AttributeRun`, `AttributedText`, `NSNumberInt`, `decode_attributed_body` (never raises;
returns None for anything that is not an archived attributed string), `encode_attributed_body` (writes
the bytes Messages writes), `utf16_len`.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

_log = logging.getLogger(__name__)

AttributeValue = str | int | float | bytes | None
"""What an attribute value decodes to: NSString/NSURL -> str, NSNumber -> int (an `NSNumberInt`) or
float, NSData -> bytes, anything else (nested dictionaries, arrays, NSValue structs, nil) -> None."""

MESSAGE_PART_KEY: Final = "__kIMMessagePartAttributeName"
FILE_TRANSFER_GUID_KEY: Final = "__kIMFileTransferGUIDAttributeName"
MENTION_KEY: Final = "__kIMMentionConfirmedMention"
LINK_KEY: Final = "__kIMLinkAttributeName"
_LINK_KEYS: Final = (LINK_KEY, "NSLink")

# Tags, as signed byte values (the format reads head bytes signed).
_TAG_INT16: Final = -127  # 0x81
_TAG_INT32: Final = -126  # 0x82
_TAG_FLOAT: Final = -125  # 0x83
_TAG_NEW: Final = -124  # 0x84
_TAG_NIL: Final = -123  # 0x85
_TAG_END: Final = -122  # 0x86
_TAG_INT64: Final = -121  # 0x87
_FIRST_TAG: Final = -128  # 0x80
_LAST_TAG: Final = -111  # 0x91
_REFERENCE_BIAS: Final = -110  # 0x92: the head byte of reference number 0

_SIGNATURES: Final[dict[bytes, Literal["little", "big"]]] = {b"streamtyped": "little", b"typedstream": "big"}
_STREAMER_VERSION: Final = 4
_SYSTEM_VERSION: Final = 1000

_MAX_DEPTH: Final = 48  # nesting of objects, arrays and structs; attributedBody needs about 5
_MAX_CLASS_CHAIN: Final = 16  # classes from an archived class up to its root; Foundation's are <= 4
_MAX_TABLE: Final = 1 << 20  # entries per reference table; a blob cannot hold more than it has bytes anyway

_INT_TYPES: Final = {
    "c": (-(1 << 7), (1 << 7) - 1),
    "C": (0, (1 << 8) - 1),
    "s": (-(1 << 15), (1 << 15) - 1),
    "S": (0, (1 << 16) - 1),
    "i": (-(1 << 31), (1 << 31) - 1),
    "I": (0, (1 << 32) - 1),
    "l": (-(1 << 31), (1 << 31) - 1),
    "L": (0, (1 << 32) - 1),
    "q": (-(1 << 63), (1 << 63) - 1),  # beyond 32 bits: the 0x87 tag and 8 bytes (crabstep NumberInt64)
    "Q": (0, (1 << 64) - 1),
}


class NSNumberInt(int):
    """An `int` that remembers the Objective-C type code of the NSNumber it came from or goes to.

    Messages archives integer attributes as NSNumber with type `i` (e.g. the message part in reference
    row 1) or `q` (e.g. message parts and `__kIMBaseWritingDirectionAttributeName` = -1 in row 2). The
    decoder returns every NSNumber integer as an `NSNumberInt` so that re-encoding reproduces the blob;
    it compares and hashes like the plain int. `objc_type` is one of `c C s S i I l L q Q`; raises
    ValueError for another code.
    """

    objc_type: str

    def __new__(cls, value: int, objc_type: str = "i") -> NSNumberInt:
        """Wrap `value` with its Objective-C type code (default `i`, a 32-bit int)."""
        if objc_type not in _INT_TYPES:
            raise ValueError(f"not an NSNumber integer type code: {objc_type!r}")
        self = super().__new__(cls, value)
        self.objc_type = objc_type
        return self

    def __repr__(self) -> str:
        return f"NSNumberInt({int(self)}, {self.objc_type!r})"


_ABSENT: Final = object()  # "no such value", distinct from None


@dataclass(frozen=True, slots=True)
class AttributeRun:
    """One attribute run of an attributed string.

    `start` and `length` are in UTF-16 code units (NSString indexing), not Python characters: an emoji
    outside the BMP counts 2. `attributes` maps attribute names (`__kIMMessagePartAttributeName`, …) to
    values (see `AttributeValue`).
    """

    start: int
    length: int
    attributes: Mapping[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class AttributedText:
    """A decoded `attributedBody`: the message text and its attribute runs, in order.

    Each attachment occupies one U+FFFC in `text` and has a run carrying its transfer GUID.
    """

    text: str
    runs: tuple[AttributeRun, ...]

    def _values(self, keys: tuple[str, ...], kind: type) -> list[Any]:
        """Values of the first of `keys` present in each run, one per stretch of adjacent equal values."""
        found: list[Any] = []
        previous: object = _ABSENT
        for run in self.runs:
            value = next((run.attributes[key] for key in keys if key in run.attributes), _ABSENT)
            if isinstance(value, kind) and not isinstance(value, bool) and value != previous:
                found.append(value)
            previous = value
        return found

    @property
    def file_transfer_guids(self) -> tuple[str, ...]:
        """Attachment transfer GUIDs (`__kIMFileTransferGUIDAttributeName`) in text order."""
        return tuple(self._values((FILE_TRANSFER_GUID_KEY,), str))

    @property
    def mentions(self) -> tuple[str, ...]:
        """Confirmed mentions (`__kIMMentionConfirmedMention`, the mentioned handle) in text order."""
        return tuple(self._values((MENTION_KEY,), str))

    @property
    def links(self) -> tuple[str, ...]:
        """Link targets (`__kIMLinkAttributeName`, or AppKit's `NSLink`) as URL strings, in text order."""
        return tuple(self._values(_LINK_KEYS, str))

    @property
    def message_parts(self) -> tuple[int, ...]:
        """Message part numbers (`__kIMMessagePartAttributeName`) in text order, e.g. `(0, 1, 2)`."""
        return tuple(int(value) for value in self._values((MESSAGE_PART_KEY,), int))


def utf16_len(text: str) -> int:
    """Length of `text` in UTF-16 code units, the unit of NSString lengths and of run lengths."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --------------------------------------------------------------------------------------------- reading


class _Malformed(Exception):
    """The bytes are not a well-formed typedstream here. Internal: never escapes the module."""


class _Class:
    __slots__ = ("name", "names", "version")

    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version
        self.names: tuple[str, ...] = (name,)  # this class, then its superclasses; set when linked


class _Object:
    __slots__ = ("cls", "complete", "groups")

    def __init__(self) -> None:
        self.cls: _Class | None = None
        self.groups: list[tuple[tuple[bytes, ...], list[Any]]] = []  # (type encodings, values read so far)
        self.complete = False  # the end-of-object tag has been read

    def is_a(self, class_name: str) -> bool:
        return self.cls is not None and class_name in self.cls.names


class _CString:
    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value


class _Parser:
    """Reads one typedstream into `_Object`s, appending each value to its container as soon as it starts,
    so that whatever was read before damage stays visible. Every read is bounds-checked; nesting depth,
    table sizes and the number of values read are bounded, so any input ends quickly."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.order: Literal["little", "big"] = "little"
        self._strings: list[bytes] = []
        self._objects: list[_Object | _Class | _CString] = []
        self._depth = 0
        self._budget = self._initial_budget = 2 * len(data) + 64  # values left to read; each but '!' takes >= 1 byte
        # What `_Templates` needs to know to reuse this parse for blobs that differ only in the text:
        self.clean = False  # the root value was read to its end without damage
        self.first_string: tuple[int, int, list[Any]] | None = None  # (head position, end, sink) of 1st `+`
        self.referenced: set[int] = set()  # ids of objects that were referenced, not just written
        self.budget_needed = 0  # the smallest initial budget with which this parse succeeds

    # -- low level

    def _take(self, count: int) -> bytes:
        end = self._pos + count
        if count < 0 or end > len(self._data):
            raise _Malformed("truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def _head(self) -> int:
        if self._pos >= len(self._data):
            raise _Malformed("truncated")
        byte = self._data[self._pos]
        self._pos += 1
        return byte - 256 if byte > 127 else byte

    def _integer(self, head: int, *, signed: bool) -> int:
        if head == _TAG_INT16:
            return int.from_bytes(self._take(2), self.order, signed=signed)
        if head == _TAG_INT32:
            return int.from_bytes(self._take(4), self.order, signed=signed)
        if head == _TAG_INT64:
            return int.from_bytes(self._take(8), self.order, signed=signed)
        if _FIRST_TAG <= head <= _LAST_TAG:
            raise _Malformed(f"tag {head & 0xFF:#x} where an integer belongs")
        return head if signed else head & 0xFF

    def _float(self, head: int, fmt: str) -> float:
        if head == _TAG_FLOAT:
            layout = struct.Struct(("<" if self.order == "little" else ">") + fmt)
            return float(layout.unpack(self._take(layout.size))[0])
        return float(self._integer(head, signed=True))

    def _reference(self, head: int) -> object:
        index = self._integer(head, signed=True) - _REFERENCE_BIAS
        if not 0 <= index < len(self._objects):
            raise _Malformed("dangling reference")
        return self._objects[index]

    def _register(self, entry: _Object | _Class | _CString) -> None:
        if len(self._objects) >= _MAX_TABLE:
            raise _Malformed("object table too large")
        self._objects.append(entry)

    def _spend(self) -> None:
        self._budget -= 1
        if self._budget < 0:
            raise _Malformed("more values than the data can hold")

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise _Malformed("nested too deeply")

    # -- strings, classes, objects

    def _unshared_string(self, head: int) -> bytes | None:
        if head == _TAG_NIL:
            return None
        return self._take(self._integer(head, signed=False))

    def _shared_string(self, head: int) -> bytes | None:
        if head == _TAG_NIL:
            return None
        if head == _TAG_NEW:
            value = self._unshared_string(self._head())
            if value is None:
                raise _Malformed("nil literal shared string")
            if len(self._strings) >= _MAX_TABLE:
                raise _Malformed("string table too large")
            self._strings.append(value)
            return value
        index = self._integer(head, signed=True) - _REFERENCE_BIAS
        if not 0 <= index < len(self._strings):
            raise _Malformed("dangling shared-string reference")
        return self._strings[index]

    def _c_string(self, head: int) -> bytes | None:
        if head == _TAG_NIL:
            return None
        if head == _TAG_NEW:
            value = self._shared_string(self._head())
            if value is None:
                raise _Malformed("nil literal C string")
            self._register(_CString(value))
            return value
        entry = self._reference(head)
        if not isinstance(entry, _CString):
            raise _Malformed("C-string reference to something else")
        return entry.value

    def _class(self, head: int) -> _Class | None:
        literals: list[_Class] = []
        while head == _TAG_NEW:
            name = self._shared_string(self._head())
            if name is None:
                raise _Malformed("nil class name")
            cls = _Class(name.decode("ascii", "replace"), self._integer(self._head(), signed=True))
            self._register(cls)
            literals.append(cls)
            if len(literals) > _MAX_CLASS_CHAIN:
                raise _Malformed("class chain too long")
            head = self._head()
        superclass: _Class | None = None
        if head != _TAG_NIL:
            entry = self._reference(head)
            if not isinstance(entry, _Class) or any(cls is entry for cls in literals):
                raise _Malformed("class reference to something else, or a cycle")
            superclass = entry
        for cls in reversed(literals):  # each literal class is followed by its superclass
            if superclass is not None:
                cls.names = (cls.name, *superclass.names)
            superclass = cls
        if superclass is not None and len(superclass.names) > _MAX_CLASS_CHAIN:
            raise _Malformed("class chain too long")
        return superclass

    def _object(self, head: int, sink: list[Any]) -> None:
        if head == _TAG_NIL:
            sink.append(None)
            return
        if head != _TAG_NEW:
            entry = self._reference(head)
            if not isinstance(entry, _Object):
                raise _Malformed("object reference to something else")
            self.referenced.add(id(entry))
            sink.append(entry)
            return
        self._enter()
        obj = _Object()
        self._register(obj)  # numbered before its class, as the writer does
        sink.append(obj)
        obj.cls = self._class(self._head())
        if obj.cls is None:
            raise _Malformed("object of nil class")
        head = self._head()
        while head != _TAG_END:
            self._group(head, obj.groups)
            head = self._head()
        obj.complete = True
        self._depth -= 1

    # -- typed values

    def _split(self, encoding: bytes) -> tuple[bytes, ...]:
        cached = _ENCODINGS.get(encoding)
        if cached is None:
            cached = _split_encodings(encoding)
            if len(_ENCODINGS) < _MAX_ENCODINGS:
                _ENCODINGS[encoding] = cached
        return cached

    def _group(self, head: int, sink: list[tuple[tuple[bytes, ...], list[Any]]]) -> None:
        encoding = self._shared_string(head)
        if not encoding:
            raise _Malformed("nil or empty type encoding")
        types = self._split(encoding)
        values: list[Any] = []
        sink.append((types, values))
        for type_code in types:
            self._value(type_code, values)

    def _value(self, type_code: bytes, sink: list[Any]) -> None:
        self._spend()
        code = type_code[:1]
        if code in (b"c", b"C", b"B"):  # chars and bools are stored literally, without tags
            byte = self._take(1)[0]
            if code == b"c":
                sink.append(byte - 256 if byte > 127 else byte)
            elif code == b"C":
                sink.append(byte)
            else:
                sink.append(bool(byte))
        elif code in (b"s", b"i", b"l", b"q"):
            sink.append(self._integer(self._head(), signed=True))
        elif code in (b"S", b"I", b"L", b"Q"):
            sink.append(self._integer(self._head(), signed=False))
        elif code == b"f":
            sink.append(self._float(self._head(), "f"))
        elif code == b"d":
            sink.append(self._float(self._head(), "d"))
        elif code == b"+":
            at = self._pos
            value = self._unshared_string(self._head())
            if self.first_string is None and value is not None:
                self.first_string = (at, self._pos, sink)
            sink.append(value)
        elif code in (b"%", b":"):
            sink.append(self._shared_string(self._head()))
        elif code == b"*":
            sink.append(self._c_string(self._head()))
        elif code == b"#":
            sink.append(self._class(self._head()))
        elif code == b"@":
            self._object(self._head(), sink)
        elif code == b"!":
            sink.append(None)
        elif code == b"[":
            count, element = _parse_array_encoding(type_code)
            if count > self._budget:
                raise _Malformed("array longer than the data can hold")
            self.budget_needed = max(self.budget_needed, count + self._initial_budget - self._budget)
            if element in (b"c", b"C"):
                sink.append(self._take(count))
            else:
                self._compound([element] * count, sink)
        elif code == b"{":
            self._compound(_parse_struct_encoding(type_code), sink)
        else:
            raise _Malformed(f"unsupported type encoding {type_code!r}")

    def _compound(self, types: Sequence[bytes], sink: list[Any]) -> None:
        self._enter()
        items: list[Any] = []
        sink.append(items)
        for type_code in types:
            self._value(type_code, items)
        self._depth -= 1

    # -- entry point

    def parse_root(self) -> _Object:
        """Read the header and the first top-level value; return the root object, possibly incomplete.

        Raises `_Malformed` only when not even the root object could be started."""
        version = self._take(1)[0]
        signature = self._take(self._take(1)[0])
        if version != _STREAMER_VERSION or signature not in _SIGNATURES:
            raise _Malformed("not a streamtyped archive")
        self.order = _SIGNATURES[signature]
        self._integer(self._head(), signed=False)  # system version, 1000 on macOS
        top: list[tuple[tuple[bytes, ...], list[Any]]] = []
        with contextlib.suppress(_Malformed):  # keep what was read; the caller decides if it is enough
            self._group(self._head(), top)
            self.clean = True
            self.budget_needed = max(self.budget_needed, self._initial_budget - self._budget)
        if top and top[0][0] == (b"@",) and top[0][1] and isinstance(top[0][1][0], _Object):
            return top[0][1][0]
        raise _Malformed("the root value is not an object")


def _encoding_end(encoding: bytes, start: int) -> int:
    """Index just past the single type encoding that starts at `start`."""
    depth = 0
    for index in range(start, len(encoding)):
        byte = encoding[index : index + 1]
        if byte in b"[{(":
            depth += 1
        elif byte in b"]})":
            depth -= 1
            if depth < 0:
                raise _Malformed("unbalanced type encoding")
        if depth == 0:
            return index + 1
    raise _Malformed("incomplete type encoding")


_ENCODINGS: dict[bytes, tuple[bytes, ...]] = {}
"""Type encodings already split, shared by all parsers (a handful in practice: `@`, `+`, `iI`, `i`, `*`)."""
_MAX_ENCODINGS: Final = 256


def _split_encodings(encoding: bytes) -> tuple[bytes, ...]:
    types: list[bytes] = []
    start = 0
    while start < len(encoding):
        end = _encoding_end(encoding, start)
        types.append(encoding[start:end])
        start = end
    return tuple(types)


def _parse_array_encoding(encoding: bytes) -> tuple[int, bytes]:
    """`b"[12c]"` -> `(12, b"c")`."""
    digits = 1
    while digits < len(encoding) and encoding[digits : digits + 1].isdigit():
        digits += 1
    element = encoding[digits:-1]
    if not 1 < digits <= 10 or not encoding.endswith(b"]") or len(_split_encodings(element)) != 1:
        raise _Malformed(f"bad array encoding {encoding!r}")
    return int(encoding[1:digits]), element


def _parse_struct_encoding(encoding: bytes) -> tuple[bytes, ...]:
    """Field encodings of `b"{name=fields}"` (the name is optional)."""
    if not encoding.endswith(b"}"):
        raise _Malformed(f"bad struct encoding {encoding!r}")
    body = encoding[1:-1]
    nested = body.find(b"{")
    equals = body.find(b"=", 0, nested if nested >= 0 else len(body))
    return _split_encodings(body[equals + 1 :] if equals >= 0 else body)


# ----------------------------------------------------------------------------------------- interpreting


def _single(group: tuple[tuple[bytes, ...], list[Any]], type_code: bytes) -> Any:
    """The value of a one-value group of the given type, or `_ABSENT`."""
    types, values = group
    return values[0] if types == (type_code,) and len(values) == 1 else _ABSENT


def _field(obj: _Object, index: int, type_code: bytes) -> Any:
    """The value of the object's `index`-th group if it is a one-value group of that type, or `_ABSENT`."""
    return _single(obj.groups[index], type_code) if index < len(obj.groups) else _ABSENT


_T = TypeVar("_T")


def _memoized(memo: dict[int, _T], obj: _Object, compute: Callable[[_Object], _T]) -> _T:
    """`compute(obj)`, computed once per object for this `memo`."""
    key = id(obj)
    if key not in memo:
        memo[key] = compute(obj)
    return memo[key]


class _Interpreter:
    """Turns parsed objects into Python values. Each object is interpreted at most once per kind, so a
    blob that references one large object many times costs no more than the object itself."""

    def __init__(self) -> None:
        # keyed by id(): parsed objects stay alive in the parser's table, so ids are stable
        self._strings: dict[int, str | None] = {}
        self._values: dict[int, AttributeValue] = {}
        self._attributes: dict[int, Mapping[str, AttributeValue] | None] = {}

    def string(self, obj: object) -> str | None:
        """An NSString / NSMutableString: one `+` group of UTF-8 bytes."""
        if not isinstance(obj, _Object) or not obj.is_a("NSString"):
            return None
        return _memoized(self._strings, obj, _string_of)

    def value(self, obj: object) -> AttributeValue:
        """An attribute value object (see `AttributeValue`)."""
        if not isinstance(obj, _Object):
            return None
        return _memoized(self._values, obj, self._value_of)

    def _value_of(self, obj: _Object, url_depth: int = 0) -> AttributeValue:
        if obj.is_a("NSString"):
            return self.string(obj)
        if obj.is_a("NSNumber"):
            return _number_of(obj)
        if obj.is_a("NSData"):  # `i` length, then `[Nc]` bytes
            raw = _field(obj, 1, obj.groups[1][0][0]) if len(obj.groups) > 1 else _ABSENT
            return raw if isinstance(raw, bytes) else None
        if obj.is_a("NSURL") and url_depth < 4:  # `c` 1 if relative, [base NSURL,] NSString
            relative = _field(obj, 0, b"c")
            text = self.string(_field(obj, 2 if relative else 1, b"@"))
            base = _field(obj, 1, b"@") if relative else None
            base_url = self._value_of(base, url_depth + 1) if isinstance(base, _Object) else None
            if text is None or not isinstance(base_url, str):
                return text
            try:
                return urllib.parse.urljoin(base_url, text)
            except ValueError:
                return text
        return None

    def attributes(self, obj: object) -> Mapping[str, AttributeValue] | None:
        """A complete NSDictionary (`i` count, then key and value objects) as a read-only mapping."""
        if not isinstance(obj, _Object) or not obj.complete or not obj.is_a("NSDictionary"):
            return None
        return _memoized(self._attributes, obj, self._attributes_of)

    def _attributes_of(self, obj: _Object) -> Mapping[str, AttributeValue] | None:
        count = _field(obj, 0, b"i")
        if type(count) is not int or len(obj.groups) != 1 + 2 * count:
            return None
        attributes: dict[str, AttributeValue] = {}
        for index in range(1, len(obj.groups), 2):
            key_obj, value_obj = _field(obj, index, b"@"), _field(obj, index + 1, b"@")
            if key_obj is _ABSENT or value_obj is _ABSENT:
                return None
            key = self.string(key_obj)
            if key is not None:
                attributes[key] = self.value(value_obj)
        return MappingProxyType(attributes)

    def runs(self, groups: list[tuple[tuple[bytes, ...], list[Any]]], total: int) -> list[AttributeRun]:
        """Attribute runs from the groups that follow the string; stops at the first damaged one.

        Each run is an `iI` group (dictionary number, length in UTF-16 code units), followed by the
        dictionary object the first time its number appears."""
        runs: list[AttributeRun] = []
        known: dict[int, Mapping[str, AttributeValue]] = {}
        start = 0
        index = 0
        while index < len(groups):
            types, values = groups[index]
            index += 1
            if len(types) != 2 or len(values) != 2 or not all(type(v) is int for v in values):
                break
            number, length = values
            attributes = known.get(number)
            if attributes is None:
                if index >= len(groups):
                    break
                attributes = self.attributes(_single(groups[index], b"@"))
                index += 1
                if attributes is None:
                    break
                known[number] = attributes
            if length < 0 or start + length > total:
                break
            runs.append(AttributeRun(start, length, attributes))
            start += length
        return runs


def _string_of(obj: _Object) -> str | None:
    raw = _field(obj, 0, b"+") if obj.groups else _ABSENT
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None


def _number_of(obj: _Object) -> AttributeValue:
    """NSNumber archives its type code as a C string (`*`), then one value of that type."""
    type_code = _field(obj, 0, b"*")
    if not isinstance(type_code, bytes) or len(obj.groups) < 2:
        return None
    value = _field(obj, 1, type_code)
    code = type_code.decode("ascii", "replace")
    if isinstance(value, bool):
        return int(value)
    if type(value) is int and code in _INT_TYPES:
        return NSNumberInt(value, code)
    if isinstance(value, float):
        return value
    return None


def _decode(blob: bytes) -> AttributedText | None:
    """`decode_attributed_body` without its last-resort guard: only `_Malformed` is expected inside."""
    reused = _TEMPLATES.decode(blob)
    if reused is not None:
        return reused
    parser = _Parser(blob)
    try:
        root = parser.parse_root()
    except _Malformed:
        return None
    interpreter = _Interpreter()
    if root.is_a("NSString"):  # a bare string archive: text without runs
        text = interpreter.string(root)
        if text is not None:
            _TEMPLATES.learn(blob, parser, root, interpreter, None)
        return None if text is None else AttributedText(text, ())
    if not root.is_a("NSAttributedString") or not root.groups:
        return None
    string = _single(root.groups[0], b"@")
    text = interpreter.string(string)
    if text is None:
        return None
    _TEMPLATES.learn(blob, parser, string, interpreter, root.groups[1:])
    return AttributedText(text, tuple(interpreter.runs(root.groups[1:], utf16_len(text))))


@dataclass(frozen=True, slots=True)
class _Template:
    """What a parse of `prefix + <length> + <text bytes> + suffix` yields for any text: the runs as read
    with no bound on their total length (`runs` is None for a bare NSString archive), and the initial
    value budget the parse needs."""

    runs: tuple[AttributeRun, ...] | None
    budget_needed: int


class _Templates:
    """Reuses parses of blobs that differ only in the bytes of their text.

    Messages writes the same archive around every text: only the string's bytes, its length and the
    run lengths change. The parser treats a `+` string's bytes as opaque, so two blobs that are equal
    before the text's length (the *prefix*) and after its bytes (the *suffix*) parse to the same
    objects, tables and runs; only the text differs, and the runs are then cut where they would run
    past its UTF-16 length, exactly as `_Interpreter.runs` cuts them. A parse is reused only when that
    reasoning holds: the root was read without damage, the text is the first `+` string of the stream
    and group 0 of its NSString, no reference points back at that NSString (an attribute could
    otherwise hold the text), and the new blob leaves the parser at least the value budget the first
    parse needed. Bounded (`_MAX_PREFIXES` prefixes, `_MAX_TEMPLATES` suffixes of at most 1 KiB: a few
    MiB at worst), first in first out; thread-safe. Decoding a typical Messages blob drops from ~50 µs to
    ~2 µs (docs/performance.md)."""

    def __init__(self) -> None:
        self._prefixes: tuple[tuple[bytes, Literal["little", "big"]], ...] = ()  # (prefix, byte order)
        self._templates: dict[tuple[bytes, bytes], _Template] = {}
        self._lock = threading.Lock()

    def decode(self, blob: bytes) -> AttributedText | None:
        """The decoded blob if a known template covers it, else None (then parse it)."""
        for prefix, order in self._prefixes:
            if not blob.startswith(prefix):
                continue
            at = len(prefix)
            head = blob[at] if at < len(blob) else 0x85
            if head == 0x81 or head == 0x82:
                width = 2 if head == 0x81 else 4
                size = int.from_bytes(blob[at + 1 : at + 1 + width], order) if at + 1 + width <= len(blob) else -1
                start = at + 1 + width
            elif 0x80 <= head <= 0x91:
                continue
            else:
                size, start = head, at + 1
            end = start + size
            if size < 0 or end > len(blob):
                continue
            template = self._templates.get((prefix, blob[end:]))
            if template is None or template.budget_needed > 2 * len(blob) + 64:
                continue
            raw = blob[start:end]
            if raw.isascii():
                text, total = raw.decode("ascii"), size
            else:
                text = raw.decode("utf-8", "replace")
                total = utf16_len(text)
            if template.runs is None:
                return AttributedText(text, ())
            runs = template.runs
            for index, run in enumerate(runs):
                if run.start + run.length > total:
                    runs = runs[:index]
                    break
            return AttributedText(text, runs)
        return None

    def learn(
        self,
        blob: bytes,
        parser: _Parser,
        string: _Object,
        interpreter: _Interpreter,
        run_groups: list[tuple[tuple[bytes, ...], list[Any]]] | None,
    ) -> None:
        """Remember the parse of `blob` whose text came from `string` (see the class docstring)."""
        found = parser.first_string
        if not parser.clean or found is None or id(string) in parser.referenced:
            return
        at, end, sink = found
        if not string.groups or string.groups[0][1] is not sink or at > 1024 or len(blob) - end > 1024:
            return
        runs = None if run_groups is None else tuple(interpreter.runs(run_groups, _UNBOUNDED))
        prefix = blob[:at]
        template = _Template(runs, parser.budget_needed)
        with self._lock:
            known = (prefix, parser.order)
            if known not in self._prefixes:
                self._prefixes = (*self._prefixes[-(_MAX_PREFIXES - 1) :], known)
            if len(self._templates) >= _MAX_TEMPLATES:
                del self._templates[next(iter(self._templates))]
            self._templates[(prefix, blob[end:])] = template


_UNBOUNDED: Final = 1 << 62
_MAX_PREFIXES: Final = 16
_MAX_TEMPLATES: Final = 2048
_TEMPLATES = _Templates()


def decode_attributed_body(blob: bytes | None) -> AttributedText | None:
    """Decode a `message.attributedBody` blob into its text and attribute runs.

    Accepts bytes (or bytearray/memoryview). Returns None for None, b"", non-typedstream data, or an
    archive whose root is not an attributed string (a bare NSString archive yields its text with no
    runs). If the string decodes but the runs are damaged or truncated, returns the text with the runs
    decoded before the damage. Invalid UTF-8 in the string becomes U+FFFD. Never raises.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        return None
    try:
        return _decode(bytes(blob))
    except Exception:  # last resort: a reader of untrusted rows must not crash the channel
        _log.debug("attributedBody could not be decoded", exc_info=True)
        return None
