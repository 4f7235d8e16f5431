"""The typedstream decoder's template cache gives exactly what a full parse gives.

`typedstream._Templates` reuses the parse of a blob for later blobs that differ only in the text's bytes
(a speed-up for the reader; see its docstring). These tests compare the cached decoder with a full parse
on blobs built to hit a learned template, and on blobs built to defeat the reasoning behind it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imessage_channel import typedstream as ts
from imessage_channel.devtools import typedstream_writer as tw
from imessage_channel.devtools.typedstream_writer import encode_attributed_body
from imessage_channel.typedstream import AttributedText, AttributeRun, utf16_len

PART = ts.MESSAGE_PART_KEY
TRANSFER = ts.FILE_TRANSFER_GUID_KEY


@pytest.fixture(autouse=True)
def fresh_templates() -> Iterator[None]:
    """Every test starts with an empty cache and leaves the module's own cache alone."""
    saved = ts._TEMPLATES
    ts._TEMPLATES = ts._Templates()
    yield
    ts._TEMPLATES = saved


def full_parse(blob: bytes) -> AttributedText | None:
    """The decoder with an empty cache: always a full parse."""
    saved = ts._TEMPLATES
    ts._TEMPLATES = ts._Templates()
    try:
        return ts._decode(blob)
    finally:
        ts._TEMPLATES = saved


def split(blob: bytes) -> tuple[bytes, bytes]:
    """(prefix before the text's length, suffix after its bytes) of a blob whose first `+` is the text."""
    parser = ts._Parser(blob)
    parser.parse_root()
    assert parser.first_string is not None
    at, end, _ = parser.first_string
    return blob[:at], blob[end:]


def length(size: int, order: str = "little") -> bytes:
    """A typedstream unsigned length: one byte, or 0x81 + int16, or 0x82 + int32."""
    if size < 0x80:
        return bytes([size])
    if size < 1 << 16:
        return b"\x81" + size.to_bytes(2, order)  # type: ignore[arg-type]
    return b"\x82" + size.to_bytes(4, order)  # type: ignore[arg-type]


def with_text(blob: bytes, raw: bytes, order: str = "little") -> bytes:
    prefix, suffix = split(blob)
    return prefix + length(len(raw), order) + raw + suffix


def messages_blob(text: str, *, mutable: bool = True) -> bytes:
    return encode_attributed_body(text, [AttributeRun(0, utf16_len(text), {PART: 0})], mutable=mutable)


def test_a_blob_that_differs_only_in_its_text_is_decoded_from_the_template() -> None:
    learned = messages_blob("x" * 20)
    ts._decode(learned)
    same_shape = messages_blob("Dinner at eight?! 🍝")  # 20 UTF-16 code units: the same run length

    reused = ts._TEMPLATES.decode(same_shape)

    assert reused == AttributedText("Dinner at eight?! 🍝", (AttributeRun(0, 20, {PART: 0}),))
    assert reused == full_parse(same_shape)


def test_a_shorter_text_under_the_same_runs_cuts_them_as_a_full_parse_does() -> None:
    runs = [AttributeRun(0, 3, {PART: 0}), AttributeRun(3, 1, {PART: 1, TRANSFER: "T1"}), AttributeRun(4, 6, {PART: 2})]
    learned = encode_attributed_body("abc\ufffcdefghi", runs, mutable=True)
    ts._decode(learned)

    for raw in (b"", b"ab", b"abcd", b"abcdefghi", "abc\ufffcdefghi".encode(), b"abc\xff\xfe", "😀😀".encode()):
        variant = with_text(learned, raw)
        assert ts._TEMPLATES.decode(variant) is not None
        assert ts._decode(variant) == full_parse(variant)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([True, False]))
def test_any_text_bytes_in_a_learned_shape_decode_as_a_full_parse(raw: bytes, mutable: bool) -> None:
    learned = encode_attributed_body(
        "hello there\ufffc",
        [AttributeRun(0, 11, {PART: 0}), AttributeRun(11, 1, {PART: 1, TRANSFER: "GUID-1"})],
        mutable=mutable,
    )
    ts._decode(learned)
    variant = with_text(learned, raw)

    assert ts._decode(variant) == full_parse(variant)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_blobs_decode_as_a_full_parse_after_learning(data: st.DataObject) -> None:
    learned = messages_blob("a typical text of thirty chars")
    ts._decode(learned)
    variant = bytearray(with_text(learned, data.draw(st.binary(max_size=60))))
    for _ in range(data.draw(st.integers(0, 3))):
        variant[data.draw(st.integers(0, len(variant) - 1))] = data.draw(st.integers(0, 255))

    assert ts._decode(bytes(variant)) == full_parse(bytes(variant))


def test_a_bare_string_archive_is_reused_with_no_runs() -> None:
    writer = tw._Writer()
    writer.string("just a string", share=False)
    learned = bytes(writer.out)
    assert ts._decode(learned) == AttributedText("just a string", ())

    variant = with_text(learned, b"another one, longer than before")

    assert ts._TEMPLATES.decode(variant) == AttributedText("another one, longer than before", ())


def test_an_attribute_that_references_the_text_object_is_never_templated() -> None:
    # A dictionary whose value is a reference to the NSString holding the text: its value is the text.
    writer = tw._Writer()
    writer.types(b"@")
    writer.begin_object(tw._CHAIN_ATTRIBUTED)
    string_index = writer._entries
    writer.string("secret", share=False)
    writer.types(b"iI")
    writer.integer(1)
    writer.integer(6)
    writer.types(b"@")
    writer.begin_object(tw._CHAIN_DICTIONARY)
    writer.types(b"i")
    writer.integer(1)
    writer.string("echo")
    writer.types(b"@")
    writer.integer(string_index - 110)  # object reference to the text's NSString
    writer.end_object()
    writer.end_object()
    learned = bytes(writer.out)
    assert ts._decode(learned) == AttributedText("secret", (AttributeRun(0, 6, {"echo": "secret"}),))

    variant = with_text(learned, b"public")

    assert ts._TEMPLATES.decode(variant) is None
    assert ts._decode(variant) == AttributedText("public", (AttributeRun(0, 6, {"echo": "public"}),))


def test_a_damaged_blob_teaches_nothing() -> None:
    learned = messages_blob("cut short")[:-3]
    assert ts._decode(learned) is not None

    assert ts._TEMPLATES.decode(learned) is None


def test_big_endian_lengths_are_read_in_the_stream_byte_order() -> None:
    little = messages_blob("short")
    big = little.replace(b"streamtyped", b"typedstream", 1)
    ts._decode(big)
    raw = b"y" * 300  # a 0x81 length, big-endian in this stream

    variant = with_text(big, raw, order="big")

    assert ts._TEMPLATES.decode(variant) is not None
    assert ts._decode(variant) == full_parse(variant)
    assert ts._decode(variant).text == "y" * 300


def test_the_cache_stays_bounded() -> None:
    for i in range(ts._MAX_TEMPLATES + 50):
        ts._decode(
            encode_attributed_body("\ufffc", [AttributeRun(0, 1, {PART: 0, TRANSFER: f"guid-{i}"})], mutable=True)
        )

    assert len(ts._TEMPLATES._templates) == ts._MAX_TEMPLATES


def test_a_shorter_blob_that_runs_out_of_value_budget_is_parsed_in_full() -> None:
    # `!` values take no bytes; a group of 200 of them, referenced ten times, spends ~2 000 values from a
    # budget of twice the blob's length. With a long text it fits; with a short one the parse stops early.
    writer = tw._Writer()
    writer.types(b"@")
    writer.begin_object(tw._CHAIN_ATTRIBUTED)
    writer.types(b"@")
    writer.begin_object(tw._CHAIN_STRING)
    writer.types(b"+")
    writer.integer(1000)
    writer.out += b"x" * 1000
    for _ in range(10):
        writer.types(b"!" * 200)
    writer.end_object()
    writer.types(b"iI")
    writer.integer(1)
    writer.integer(1)
    writer.dictionary({PART: 0})
    writer.end_object()
    learned = bytes(writer.out)
    assert ts._decode(learned).runs == (AttributeRun(0, 1, {PART: 0}),)

    variant = with_text(learned, b"short")

    assert ts._decode(variant) == full_parse(variant) == AttributedText("short", ())
