"""The typedstream *writer*: archive text and attribute runs the way Messages writes `message.attributedBody`.

A development tool, not part of the channel's runtime path: the Messages simulator (`devtools.simulator`), the
demo database builder, the tests and the benchmarks use it to write rows as Messages does. It writes the format
`imessage_channel.typedstream` reads (NSArchiver's typedstream, design §4) and shares that module's constants.
`encode_attributed_body` reproduces both real reference blobs of `fixtures/reference` byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..typedstream import (
    _INT_TYPES,
    _LINK_KEYS,
    _REFERENCE_BIAS,
    _STREAMER_VERSION,
    _SYSTEM_VERSION,
    MESSAGE_PART_KEY,
    AttributeRun,
    AttributeValue,
    NSNumberInt,
    utf16_len,
)

# --------------------------------------------------------------------------------------------- writing

_Chain = tuple[tuple[str, int], ...]  # a class chain: (name, version) from the class up to its root

_CHAIN_ATTRIBUTED: Final = (("NSAttributedString", 0), ("NSObject", 0))
_CHAIN_MUTABLE_ATTRIBUTED: Final = (("NSMutableAttributedString", 0), *_CHAIN_ATTRIBUTED)
_CHAIN_STRING: Final = (("NSString", 1), ("NSObject", 0))
_CHAIN_MUTABLE_STRING: Final = (("NSMutableString", 1), *_CHAIN_STRING)
_CHAIN_DICTIONARY: Final = (("NSDictionary", 0), ("NSObject", 0))
_CHAIN_NUMBER: Final = (("NSNumber", 0), ("NSValue", 0), ("NSObject", 0))
_CHAIN_URL: Final = (("NSURL", 0), ("NSObject", 0))
_CHAIN_DATA: Final = (("NSData", 0), ("NSObject", 0))

_HEADER: Final = (
    bytes([_STREAMER_VERSION, len(b"streamtyped")]) + b"streamtyped" + b"\x81" + _SYSTEM_VERSION.to_bytes(2, "little")
)


class _Writer:
    """Writes typed values the way NSArchiver does, keeping the same reference tables a reader builds."""

    def __init__(self) -> None:
        self.out = bytearray(_HEADER)
        self._strings: dict[bytes, int] = {}
        self._entries = 0  # size of the object table (objects, classes, C strings)
        self._classes: dict[str, int] = {}
        self._c_strings: dict[bytes, int] = {}
        self._shared: dict[tuple[Any, ...], int] = {}

    def integer(self, value: int, *, signed: bool = False) -> None:
        """The shortest form of `value`: one byte, or a tag and 2, 4 or 8 bytes. `signed`: the reader
        reads this value as a signed type (an NSNumber `q`), so 4 bytes only hold up to 2**31 - 1."""
        if -110 <= value <= 127:
            self.out.append(value & 0xFF)
        elif -(1 << 15) <= value < (1 << 15):
            self.out.append(0x81)
            self.out += value.to_bytes(2, "little", signed=True)
        elif -(1 << 31) <= value < (1 << (31 if signed else 32)):
            self.out.append(0x82)
            self.out += value.to_bytes(4, "little", signed=value < 0)
        elif -(1 << 63) <= value < (1 << (63 if signed else 64)):
            self.out.append(0x87)
            self.out += value.to_bytes(8, "little", signed=value < 0)
        else:
            raise ValueError(f"integer {value} does not fit a typedstream (64 bits at most)")

    def _reference(self, index: int) -> None:
        self.integer(index + _REFERENCE_BIAS)

    def _shared_string(self, value: bytes) -> None:
        index = self._strings.get(value)
        if index is not None:
            self._reference(index)
            return
        self.out.append(0x84)
        self.integer(len(value))
        self.out += value
        self._strings[value] = len(self._strings)

    def types(self, encoding: bytes) -> None:
        """Start a typed value group."""
        self._shared_string(encoding)

    def c_string(self, value: bytes) -> None:
        index = self._c_strings.get(value)
        if index is not None:
            self._reference(index)
            return
        self.out.append(0x84)
        self._shared_string(value)
        self._c_strings[value] = self._entries
        self._entries += 1

    def begin_object(self, chain: tuple[tuple[str, int], ...], share_as: tuple[Any, ...] | None = None) -> bool:
        """Start an object; if an equal shareable object was written before, write a reference instead
        and return False (the caller then writes no contents)."""
        if share_as is not None:
            index = self._shared.get(share_as)
            if index is not None:
                self._reference(index)
                return False
            self._shared[share_as] = self._entries
        self.out.append(0x84)
        self._entries += 1
        for name, version in chain:
            index = self._classes.get(name)
            if index is not None:
                self._reference(index)
                return True
            self.out.append(0x84)
            self._shared_string(name.encode("ascii"))
            self.integer(version)
            self._classes[name] = self._entries
            self._entries += 1
        self.out.append(0x85)
        return True

    def end_object(self) -> None:
        self.out.append(0x86)

    # -- Foundation objects, each as one `@` group

    def string(self, text: str, *, chain: tuple[tuple[str, int], ...] = _CHAIN_STRING, share: bool = True) -> None:
        self.types(b"@")
        if self.begin_object(chain, ("NSString", text) if share else None):
            self.types(b"+")
            raw = text.encode("utf-8")
            self.integer(len(raw))
            self.out += raw
            self.end_object()

    def number(self, type_code: str, value: int | float) -> None:
        packed = struct.pack("<d", value) if type_code == "d" else int(value)
        self.types(b"@")
        if self.begin_object(_CHAIN_NUMBER, ("NSNumber", type_code, packed)):
            self.types(b"*")
            self.c_string(type_code.encode("ascii"))
            self.types(type_code.encode("ascii"))
            if isinstance(packed, bytes):
                self.out.append(0x83)
                self.out += packed
            elif type_code in ("c", "C"):
                self.out.append(packed & 0xFF)
            else:
                self.integer(packed, signed=type_code.islower())
            self.end_object()

    def url(self, value: str) -> None:
        self.types(b"@")
        self.begin_object(_CHAIN_URL)
        self.types(b"c")
        self.out.append(0)  # not relative to a base URL
        self.string(value, share=False)
        self.end_object()

    def data(self, value: bytes) -> None:
        self.types(b"@")
        self.begin_object(_CHAIN_DATA)
        self.types(b"i")
        self.integer(len(value))
        self.types(b"[%dc]" % len(value))
        self.out += value
        self.end_object()

    def dictionary(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.types(b"@")
        self.begin_object(_CHAIN_DICTIONARY)
        self.types(b"i")
        self.integer(len(attributes))
        for key, value in attributes.items():
            self.string(key)
            self._attribute(key, value)
        self.end_object()

    def _attribute(self, key: str, value: AttributeValue) -> None:
        if isinstance(value, str):
            if key in _LINK_KEYS:
                self.url(value)
            else:
                self.string(value)
        elif isinstance(value, bool):
            self.number("c", int(value))
        elif isinstance(value, int):
            self.number(_int_type(value), int(value))
        elif isinstance(value, float):
            self.number("d", value)
        elif value is not None:  # bytes-like (None is refused by _attributes_key)
            self.data(bytes(value))


def _int_type(value: int) -> str:
    type_code = value.objc_type if isinstance(value, NSNumberInt) else "i"
    low, high = _INT_TYPES[type_code]
    if not low <= value <= high:
        raise ValueError(f"{value} does not fit NSNumber type {type_code!r} in a typedstream")
    return type_code


def _attributes_key(attributes: Mapping[str, AttributeValue]) -> frozenset[tuple[Any, ...]]:
    """A hashable identity for an attribute dictionary, so equal dictionaries share one number.

    Raises TypeError/ValueError for attributes an NSDictionary in a typedstream cannot hold."""
    key: list[tuple[Any, ...]] = []
    for name, value in attributes.items():
        if not isinstance(name, str):
            raise TypeError(f"attribute names must be str, not {type(name).__name__}")
        if value is None:
            raise ValueError(f"attribute {name!r} is None: an NSDictionary cannot hold nil")
        if isinstance(value, str):
            key.append((name, "str", value))
        elif isinstance(value, bool):
            key.append((name, "num", "c", int(value)))
        elif isinstance(value, int):
            key.append((name, "num", _int_type(value), int(value)))
        elif isinstance(value, float):
            key.append((name, "num", "d", struct.pack("<d", value)))
        elif isinstance(value, bytes | bytearray | memoryview):
            key.append((name, "data", bytes(value)))
        else:
            raise TypeError(f"attribute {name!r} has unsupported type {type(value).__name__}")
    return frozenset(key)


def encode_attributed_body(text: str, runs: Sequence[AttributeRun] | None = None, *, mutable: bool = False) -> bytes:
    """Archive `text` and its attribute runs the way Messages writes `message.attributedBody`.

    `runs=None` means one run over the whole text with `{"__kIMMessagePartAttributeName": 0}` (no runs
    for an empty text). Otherwise the runs must tile the text in order: the first starts at 0, each
    starts where the previous ended, none is empty, and together they cover `utf16_len(text)` code units.
    Equal attribute dictionaries share one dictionary number, as Apple's archiver does; equal NSString
    and NSNumber values are written once and referenced afterwards. Values: str -> NSString (NSURL under
    `__kIMLinkAttributeName`/`NSLink`), bool -> NSNumber `c`, int -> NSNumber `i` (an `NSNumberInt` keeps
    its own type code), float -> NSNumber `d`, bytes -> NSData.

    `mutable=True` writes NSMutableAttributedString + NSMutableString (reference row 1, newer macOS);
    the default writes NSAttributedString + NSString (reference row 2).

    Raises ValueError when the runs do not tile the text, a value is None or an integer does not fit its
    NSNumber type (32 bits for `i`, 64 bits for an `NSNumberInt` of type `q`/`Q`, written after the 0x87
    tag), UnicodeEncodeError (a ValueError) for lone surrogates, TypeError for unsupported values.
    """
    total = utf16_len(text)
    if runs is None:
        runs = [AttributeRun(0, total, {MESSAGE_PART_KEY: 0})] if total else []
    writer = _Writer()
    writer.types(b"@")
    writer.begin_object(_CHAIN_MUTABLE_ATTRIBUTED if mutable else _CHAIN_ATTRIBUTED)
    writer.string(text, chain=_CHAIN_MUTABLE_STRING if mutable else _CHAIN_STRING, share=False)
    numbers: dict[frozenset[tuple[Any, ...]], int] = {}
    cursor = 0
    for run in runs:
        if run.start != cursor or run.length <= 0:
            raise ValueError(f"runs must tile the text without gaps or empty runs; got {run} at {cursor}")
        cursor += run.length
        identity = _attributes_key(run.attributes)
        number = numbers.get(identity)
        writer.types(b"iI")
        if number is None:
            number = numbers[identity] = len(numbers) + 1
            writer.integer(number)
            writer.integer(run.length)
            writer.dictionary(run.attributes)
        else:
            writer.integer(number)
            writer.integer(run.length)
    if cursor != total:
        raise ValueError(f"runs cover {cursor} UTF-16 code units but the text has {total}")
    writer.end_object()
    return bytes(writer.out)
