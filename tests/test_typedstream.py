"""The attributedBody typedstream codec: real Ventura blobs, round trips at every length boundary,
pytypedstream as an independent oracle, and fuzzing (decode never raises, damage keeps what was read)."""

from __future__ import annotations

import itertools
import sqlite3
import struct

import pytest
import typedstream as oracle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typedstream.types import foundation as ns

from fixtures import REFERENCE_DB
from imessage_channel import typedstream as ts
from imessage_channel.devtools import typedstream_writer as tw
from imessage_channel.devtools.typedstream_writer import encode_attributed_body
from imessage_channel.typedstream import (
    FILE_TRANSFER_GUID_KEY,
    LINK_KEY,
    MENTION_KEY,
    MESSAGE_PART_KEY,
    AttributedText,
    AttributeRun,
    NSNumberInt,
    decode_attributed_body,
    utf16_len,
)

WRITING_DIRECTION_KEY = "__kIMBaseWritingDirectionAttributeName"

# The two attributedBody blobs of xevg/imessagedb's real Ventura chat.db (MIT), as in
# fixtures/reference/ventura-real.chat.db, embedded so the real-data checks run everywhere.
ROW1_HEX = (  # message.ROWID 1602652: NSMutableAttributedString, one message-part run (NSNumber 'i')
    "040B73747265616D747970656481E803840140848484194E534D757461626C6541747472696275746564537472696E67"
    "008484124E5341747472696275746564537472696E67008484084E534F626A6563740085928484840F4E534D75746162"
    "6C65537472696E67018484084E53537472696E67019584012B2A694D657373616765646220746573743A204C6574E280"
    "99732073657420736F6D657468696E672075702086840269490128928484840C4E5344696374696F6E61727900958401"
    "6901928498981D5F5F6B494D4D657373616765506172744174747269627574654E616D658692848484084E534E756D62"
    "6572008484074E5356616C7565009584012A849B9B00868686"
)
ROW2_HEX = (  # message.ROWID 1602655: NSAttributedString, two attachment runs and a text run ('q')
    "040B73747265616D747970656481E803840140848484124E5341747472696275746564537472696E67008484084E534F"
    "626A656374008592848484084E53537472696E67019484012B1AEFBFBCEFBFBC4974E28099732061206C6F76656C7920"
    "6461792186840269490101928484840C4E5344696374696F6E61727900948401690392849696225F5F6B494D46696C65"
    "5472616E73666572475549444174747269627574654E616D6586928496962444374345424145442D393834342D344232"
    "352D423834312D4637373438454133424341448692849696265F5F6B494D4261736557726974696E6744697265637469"
    "6F6E4174747269627574654E616D658692848484084E534E756D626572008484074E5356616C7565009484012A848401"
    "719DFF86928496961D5F5F6B494D4D657373616765506172744174747269627574654E616D658692849D9C9F9D008686"
    "97020192849899039299928496962442354334393132442D323430312D343834342D393436442D343733423046434646"
    "32313286929B929C92A092849D9C9F9D0186869703129284989902929B929C92A092849D9C9F9D02868686"
)
ROW1 = bytes.fromhex(ROW1_HEX)
ROW2 = bytes.fromhex(ROW2_HEX)
ROW1_TEXT = "iMessagedb test: Let\u2019s set something up "
ROW2_TEXT = "\ufffc\ufffcIt\u2019s a lovely day!"
GUID_1 = "D7CEBAED-9844-4B25-B841-F7748EA3BCAD"
GUID_2 = "B5C4912D-2401-4844-946D-473B0FCFF212"


def q(value: int) -> NSNumberInt:
    return NSNumberInt(value, "q")


ROW2_RUNS = (
    AttributeRun(0, 1, {FILE_TRANSFER_GUID_KEY: GUID_1, WRITING_DIRECTION_KEY: q(-1), MESSAGE_PART_KEY: q(0)}),
    AttributeRun(1, 1, {FILE_TRANSFER_GUID_KEY: GUID_2, WRITING_DIRECTION_KEY: q(-1), MESSAGE_PART_KEY: q(1)}),
    AttributeRun(2, 18, {WRITING_DIRECTION_KEY: q(-1), MESSAGE_PART_KEY: q(2)}),
)

# UTF-8 of these contains 0x86 0x84, the "end of object, new object" pair naive scanners search for.
TRAP_CHARS = "\u2184\u3184\U0001f184"
SPECIAL_TEXTS = [
    TRAP_CHARS,
    "ends with a trap \U0001f184",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family (ZWJ)",
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f1eb\U0001f1f7 flags, \U0001f44d\U0001f3fd skin tone",
    "e\u0301 a\u0308 combining marks \u0915\u094d\u0937",
    "\ufffc",
    "\ufffc\ufffc\ufffc",
    "\x00 nul, \u2028 line separator, \uffff noncharacter",
    "\u0645\u0631\u062d\u0628\u0627 right-to-left",
]


def oracle_decode(blob: bytes) -> AttributedText:
    """Decode with pytypedstream (dgelessus) and rebuild runs per Apple's (number, length) scheme."""
    root = oracle.unarchive_from_data(blob)
    assert root.clazz.name in (b"NSAttributedString", b"NSMutableAttributedString")
    text = root.contents[0].value.value
    runs, known, start, index = [], {}, 0, 1
    while index < len(root.contents):
        number, length = root.contents[index].values
        index += 1
        if number not in known:
            contents = root.contents[index].value.contents
            known[number] = {key.value: oracle_value(value) for key, value in contents.items()}
            index += 1
        runs.append(AttributeRun(start, length, known[number]))
        start += length
    return AttributedText(text, tuple(runs))


def oracle_value(value: object) -> object:
    if isinstance(value, ns.NSString | ns.NSURL):
        return value.value
    if isinstance(value, ns.NSNumber):
        return value.value
    if isinstance(value, ns.NSData):
        return value.data
    raise AssertionError(f"unexpected attribute value {value!r}")


def text_with_utf8_length(size: int) -> str:
    """A text of exactly `size` UTF-8 bytes mixing 1-, 2-, 3- and 4-byte characters (traps included)."""
    pieces, used = [], 0
    cycle = ["a", "\u00e9", "\u2184", "\U0001f184", "b", "\u3184", "\U0001f600"]
    while used < size:
        char = cycle[len(pieces) % len(cycle)]
        if used + len(char.encode()) > size:
            char = "a"
        pieces.append(char)
        used += len(char.encode())
    return "".join(pieces)


def assert_well_formed(result: AttributedText | None) -> None:
    """Whatever decode returns is usable: runs tile a prefix of the text in UTF-16 code units."""
    if result is None:
        return
    assert isinstance(result, AttributedText)
    assert isinstance(result.text, str)
    cursor = 0
    for run in result.runs:
        assert run.start == cursor and run.length >= 0
        cursor += run.length
    assert cursor <= utf16_len(result.text)
    _ = (result.file_transfer_guids, result.mentions, result.links, result.message_parts)


# ------------------------------------------------------------------------------------ real Ventura rows


def test_reference_row1_is_a_mutable_string_with_one_message_part_run():
    decoded = decode_attributed_body(ROW1)

    assert decoded == AttributedText(ROW1_TEXT, (AttributeRun(0, 40, {MESSAGE_PART_KEY: 0}),))
    assert decoded.runs[0].attributes[MESSAGE_PART_KEY].objc_type == "i"
    assert decoded.message_parts == (0,)
    assert decoded.file_transfer_guids == ()


def test_reference_row2_has_two_attachment_runs_then_text():
    decoded = decode_attributed_body(ROW2)

    assert decoded == AttributedText(ROW2_TEXT, ROW2_RUNS)
    assert decoded.file_transfer_guids == (GUID_1, GUID_2)
    assert decoded.message_parts == (0, 1, 2)
    assert decoded.runs[2].attributes[WRITING_DIRECTION_KEY] == -1
    assert [run.attributes[MESSAGE_PART_KEY].objc_type for run in decoded.runs] == ["q", "q", "q"]


def test_encoder_reproduces_reference_row1_byte_for_byte_from_text_alone():
    assert encode_attributed_body(ROW1_TEXT, mutable=True) == ROW1


def test_encoder_reproduces_reference_row2_byte_for_byte():
    assert encode_attributed_body(ROW2_TEXT, ROW2_RUNS) == ROW2


@pytest.mark.parametrize(("blob", "mutable"), [(ROW1, True), (ROW2, False)], ids=["row1", "row2"])
def test_reencoding_a_decoded_reference_row_gives_the_same_bytes(blob, mutable):
    decoded = decode_attributed_body(blob)

    assert encode_attributed_body(decoded.text, decoded.runs, mutable=mutable) == blob


@pytest.mark.parametrize("blob", [ROW1, ROW2], ids=["row1", "row2"])
def test_pytypedstream_agrees_on_the_reference_rows(blob):
    assert oracle_decode(blob) == decode_attributed_body(blob)


def test_reference_database_rows_decode():
    with sqlite3.connect(f"file:{REFERENCE_DB}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT attributedBody FROM message ORDER BY ROWID").fetchall()
    connection.close()

    assert [blob for (blob,) in rows] == [ROW1, ROW2]
    assert [decode_attributed_body(blob).text for (blob,) in rows] == [ROW1_TEXT, ROW2_TEXT]


# -------------------------------------------------------------------------------- lengths and characters

LENGTH_BOUNDARIES = [0, 1, 127, 128, 129, 145, 146, 255, 256, 32767, 32768, 65535, 65536, 70_003]


@pytest.mark.parametrize("size", LENGTH_BOUNDARIES)
@pytest.mark.parametrize("mutable", [False, True], ids=["immutable", "mutable"])
def test_round_trip_at_utf8_length_boundaries(size, mutable):
    text = text_with_utf8_length(size)
    assert len(text.encode()) == size

    blob = encode_attributed_body(text, mutable=mutable)
    expected_runs = (AttributeRun(0, utf16_len(text), {MESSAGE_PART_KEY: 0}),) if text else ()

    assert decode_attributed_body(blob) == AttributedText(text, expected_runs)
    assert oracle_decode(blob) == AttributedText(text, expected_runs)


@pytest.mark.parametrize(
    ("size", "length_field"),
    [(127, "7f"), (128, "818000"), (400, "819001"), (32767, "81ff7f"), (32768, "8200800000")],
)
def test_string_length_is_one_byte_up_to_127_then_int16_then_int32(size, length_field):
    blob = encode_attributed_body("a" * size)

    assert bytes.fromhex("84012b" + length_field) + b"aaa" in blob  # '+' type, length, UTF-8 bytes


def test_single_byte_unsigned_lengths_146_to_255_are_read_whole_not_as_references():
    text = "x" * 200
    standard = encode_attributed_body(text)
    compact = standard.replace(bytes.fromhex("84012b81c800"), bytes.fromhex("84012bc8"), 1)

    assert compact != standard
    assert decode_attributed_body(compact).text == text
    assert oracle.unarchive_from_data(compact).contents[0].value.value == text


@pytest.mark.parametrize("text", SPECIAL_TEXTS)
@pytest.mark.parametrize("mutable", [False, True], ids=["immutable", "mutable"])
def test_special_characters_round_trip(text, mutable):
    blob = encode_attributed_body(text, mutable=mutable)

    assert decode_attributed_body(blob).text == text
    assert oracle_decode(blob).text == text


def test_the_0x86_0x84_pair_inside_text_does_not_end_the_string():
    text = f"a{TRAP_CHARS}b{TRAP_CHARS}"
    blob = encode_attributed_body(text)

    assert blob.count(b"\x86\x84") >= 6  # the trap is really in the bytes
    assert decode_attributed_body(blob) == AttributedText(text, (AttributeRun(0, 10, {MESSAGE_PART_KEY: 0}),))


def test_run_lengths_are_utf16_code_units():
    text = "\U0001f184\ufffcx"  # 2 + 1 + 1 UTF-16 code units, 4 + 3 + 1 UTF-8 bytes
    runs = [
        AttributeRun(0, 2, {MESSAGE_PART_KEY: 0}),
        AttributeRun(2, 1, {MESSAGE_PART_KEY: 1, FILE_TRANSFER_GUID_KEY: GUID_1}),
        AttributeRun(3, 1, {MESSAGE_PART_KEY: 2}),
    ]

    decoded = decode_attributed_body(encode_attributed_body(text, runs))

    assert utf16_len(text) == 4
    assert decoded.runs == tuple(runs)
    assert decoded.file_transfer_guids == (GUID_1,)


def test_attachment_placeholders_with_file_transfer_runs_round_trip():
    text = "\ufffc\ufffcphotos \U0001f4f8"
    runs = [
        AttributeRun(0, 1, {FILE_TRANSFER_GUID_KEY: GUID_1, MESSAGE_PART_KEY: 0}),
        AttributeRun(1, 1, {FILE_TRANSFER_GUID_KEY: GUID_2, MESSAGE_PART_KEY: 1}),
        AttributeRun(2, utf16_len(text) - 2, {MESSAGE_PART_KEY: 2}),
    ]

    blob = encode_attributed_body(text, runs, mutable=True)

    assert decode_attributed_body(blob) == AttributedText(text, tuple(runs))
    assert decode_attributed_body(blob).file_transfer_guids == (GUID_1, GUID_2)
    assert oracle_decode(blob) == AttributedText(text, tuple(runs))


# ------------------------------------------------------------------------------------------ attributes


def test_mentions_links_and_other_values_round_trip_with_their_foundation_classes():
    text = "hey @Sam see https://example.com/a?b=1 now"
    runs = [
        AttributeRun(0, 4, {MESSAGE_PART_KEY: 0}),
        AttributeRun(4, 4, {MESSAGE_PART_KEY: 0, MENTION_KEY: "+15555550123"}),
        AttributeRun(8, 5, {MESSAGE_PART_KEY: 0}),
        AttributeRun(13, 25, {MESSAGE_PART_KEY: 0, LINK_KEY: "https://example.com/a?b=1"}),
        AttributeRun(
            38,
            4,
            {MESSAGE_PART_KEY: 0, "__kIMTextBoldAttributeName": True, "height": 312.5, "blob": b"\x00bplist"},
        ),
    ]

    blob = encode_attributed_body(text, runs)
    decoded = decode_attributed_body(blob)

    assert decoded == AttributedText(text, tuple(runs))
    assert decoded.mentions == ("+15555550123",)
    assert decoded.links == ("https://example.com/a?b=1",)
    assert decoded.message_parts == (0,)
    archived_values = [
        value
        for group in oracle.unarchive_from_data(blob).contents[1:]
        if isinstance(group, oracle.TypedValue)
        for value in group.value.contents.values()
    ]
    assert any(isinstance(value, ns.NSURL) for value in archived_values)  # links are NSURL, as Apple writes
    assert oracle_decode(blob) == decoded


def test_equal_attribute_dictionaries_are_written_once_and_referenced_by_number():
    attachment = {FILE_TRANSFER_GUID_KEY: GUID_1, MESSAGE_PART_KEY: 0}
    runs = [
        AttributeRun(0, 1, attachment),
        AttributeRun(1, 3, {MESSAGE_PART_KEY: 1}),
        AttributeRun(4, 1, dict(attachment)),
    ]

    blob = encode_attributed_body("\ufffcabc\ufffc", runs)

    assert blob.count(GUID_1.encode()) == 1
    assert decode_attributed_body(blob).runs == tuple(runs)
    assert decode_attributed_body(blob).file_transfer_guids == (GUID_1, GUID_1)


def test_convenience_properties_merge_adjacent_runs_with_the_same_value():
    runs = (
        AttributeRun(0, 2, {MENTION_KEY: "a@example.com", "__kIMTextBoldAttributeName": 1}),
        AttributeRun(2, 2, {MENTION_KEY: "a@example.com"}),
        AttributeRun(4, 1, {}),
        AttributeRun(5, 2, {MENTION_KEY: "a@example.com", "NSLink": "https://x.test/"}),
    )

    text = AttributedText("abcdefg", runs)

    assert text.mentions == ("a@example.com", "a@example.com")
    assert text.links == ("https://x.test/",)
    assert text.message_parts == ()


def test_default_run_is_message_part_zero_and_empty_text_has_no_runs():
    assert decode_attributed_body(encode_attributed_body("")) == AttributedText("", ())
    assert decode_attributed_body(encode_attributed_body("hi")).runs == (AttributeRun(0, 2, {MESSAGE_PART_KEY: 0}),)


@pytest.mark.parametrize(
    ("runs", "error"),
    [
        ([AttributeRun(1, 3, {})], ValueError),  # does not start at 0
        ([AttributeRun(0, 2, {}), AttributeRun(3, 1, {})], ValueError),  # gap
        ([AttributeRun(0, 3, {}), AttributeRun(2, 2, {})], ValueError),  # overlap
        ([AttributeRun(0, 0, {}), AttributeRun(0, 4, {})], ValueError),  # empty run
        ([AttributeRun(0, 3, {})], ValueError),  # does not cover the text
        ([], ValueError),  # no runs for a non-empty text
        ([AttributeRun(0, 4, {"k": None})], ValueError),  # NSDictionary cannot hold nil
        ([AttributeRun(0, 4, {"k": 1 << 40})], ValueError),  # typedstream integers are 32-bit at most
        ([AttributeRun(0, 4, {"k": NSNumberInt(300, "c")})], ValueError),
        ([AttributeRun(0, 4, {"k": [1, 2]})], TypeError),
        ([AttributeRun(0, 4, {1: "v"})], TypeError),
    ],
)
def test_encoder_rejects_runs_messages_cannot_contain(runs, error):
    with pytest.raises(error):
        encode_attributed_body("abcd", runs)


def test_encoder_rejects_lone_surrogates_which_utf8_cannot_carry():
    with pytest.raises(UnicodeEncodeError):
        encode_attributed_body("\ud800")


def test_utf16_len_counts_code_units():
    assert [utf16_len(s) for s in ["", "a", "\u00e9", "\ufffc", "\U0001f184", TRAP_CHARS]] == [0, 1, 1, 1, 2, 4]


# ----------------------------------------------------------------------------- property-based round trips

GUIDS = st.uuids().map(lambda value: str(value).upper())
HANDLES = st.sampled_from(["+15555550123", "friend@example.com", "owner@example.com"])
URLS = st.sampled_from(["https://example.com/", "tel:0123456789", "mailto:friend@example.com"])
PART_NUMBERS = st.one_of(
    st.integers(0, 300),
    st.builds(NSNumberInt, st.integers(-(1 << 31), (1 << 31) - 1), st.sampled_from("iq")),
)
ATTRIBUTES = st.fixed_dictionaries(
    {MESSAGE_PART_KEY: PART_NUMBERS},
    optional={
        FILE_TRANSFER_GUID_KEY: GUIDS,
        MENTION_KEY: HANDLES,
        LINK_KEY: URLS,
        WRITING_DIRECTION_KEY: st.just(q(-1)),
        "__kIMTextBoldAttributeName": st.booleans(),
        "__kIMDataDetectedAttributeName": st.binary(max_size=300),
        "__kIMInlineMediaHeightAttributeName": st.floats(allow_nan=False),
        "custom": st.text(st.characters(codec="utf-8"), max_size=30),
    },
)
TEXTS = st.text(
    st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRAP_CHARS + "\ufffc\u200d\u0301")), max_size=300
)


@st.composite
def texts_with_runs(draw: st.DrawFn) -> tuple[str, list[AttributeRun]]:
    text = draw(TEXTS)
    total = utf16_len(text)
    if total == 0:
        return text, []
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, total - 1)), max_size=6)))) if total > 1 else []
    palette = draw(st.lists(ATTRIBUTES, min_size=1, max_size=3))  # few dictionaries, so numbers get reused
    bounds = [0, *cuts, total]
    runs = [
        AttributeRun(start, end - start, draw(st.sampled_from(palette))) for start, end in itertools.pairwise(bounds)
    ]
    return text, runs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts_with_runs(), st.booleans())
def test_round_trip_text_and_runs(sample, mutable):
    text, runs = sample

    blob = encode_attributed_body(text, runs, mutable=mutable)
    decoded = decode_attributed_body(blob)

    assert decoded == AttributedText(text, tuple(runs))
    assert encode_attributed_body(decoded.text, decoded.runs, mutable=mutable) == blob


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts_with_runs(), st.booleans())
def test_pytypedstream_oracle_reads_what_the_encoder_writes(sample, mutable):
    text, runs = sample

    blob = encode_attributed_body(text, runs, mutable=mutable)

    assert oracle_decode(blob) == AttributedText(text, tuple(runs))


# ------------------------------------------------------------------------------------------- fuzzing

MULTI_RUN_BLOB = encode_attributed_body(
    "\ufffcsee https://example.com \U0001f184",
    [
        AttributeRun(0, 1, {FILE_TRANSFER_GUID_KEY: GUID_1, MESSAGE_PART_KEY: 0}),
        AttributeRun(1, 4, {MESSAGE_PART_KEY: 1}),
        AttributeRun(5, 19, {MESSAGE_PART_KEY: 1, LINK_KEY: "https://example.com", "h": 2.5, "d": b"\x01"}),
        AttributeRun(24, 3, {MESSAGE_PART_KEY: 1}),
    ],
    mutable=True,
)
VALID_BLOBS = [ROW1, ROW2, MULTI_RUN_BLOB]


@pytest.mark.parametrize("blob", [None, b"", b"\x04", b"streamtyped", b"\x00" * 64, b"\xff" * 64, "text"])
def test_not_a_typedstream_decodes_to_none(blob):
    assert decode_attributed_body(blob) is None


@pytest.mark.parametrize("blob", VALID_BLOBS, ids=["row1", "row2", "multi-run"])
def test_every_truncation_keeps_the_text_and_a_prefix_of_the_runs(blob):
    complete = decode_attributed_body(blob)
    text_end = blob.index(complete.text.encode()) + len(complete.text.encode())

    for cut in range(len(blob)):
        partial = ts._decode(blob[:cut])  # the strict decoder: no last-resort guard hiding a bug
        if cut < text_end:
            assert partial is None
        else:
            assert partial is not None and partial.text == complete.text
            assert partial.runs == complete.runs[: len(partial.runs)]


def test_a_blob_cut_inside_its_last_attribute_dictionary_keeps_the_text_and_the_earlier_runs():
    cut_before_last_dictionary_end = ROW2[:-2]

    assert decode_attributed_body(cut_before_last_dictionary_end) == AttributedText(ROW2_TEXT, ROW2_RUNS[:2])


@pytest.mark.parametrize("blob", VALID_BLOBS, ids=["row1", "row2", "multi-run"])
def test_every_single_byte_mutation_to_a_tag_or_edge_value_decodes_safely(blob):
    for position in range(len(blob)):
        for value in (0x00, 0x01, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x91, 0x92, 0xFF):
            mutated = bytearray(blob)
            mutated[position] = value
            assert_well_formed(ts._decode(bytes(mutated)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_BLOBS), st.data())
def test_random_single_byte_mutations_decode_safely(blob, data):
    position = data.draw(st.integers(0, len(blob) - 1))
    mutated = bytearray(blob)
    mutated[position] = data.draw(st.integers(0, 255))

    assert_well_formed(ts._decode(bytes(mutated)))
    assert_well_formed(decode_attributed_body(bytes(mutated)))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda tail: ROW2[:17] + tail)))
def test_random_bytes_decode_safely(blob):
    assert_well_formed(ts._decode(blob))
    assert_well_formed(decode_attributed_body(blob))


def _root_then(body: bytes) -> bytes:
    """A header, the `@` type, a new object of class NSAttributedString, then `body`."""
    return ROW2[: ROW2.index(b"\x85") + 1] + body


def test_deeply_nested_objects_are_refused_without_recursion_error():
    nested = b"\x92\x84\x94" * 5000  # '@' group, new object of class NSObject (reference), repeated
    assert ts._decode(_root_then(nested)) is None


def test_deeply_nested_type_encodings_are_refused():
    encoding = b"[1" * 200 + b"i" + b"]" * 200
    assert ts._decode(_root_then(b"\x84" + bytes([0x81]) + struct.pack("<h", len(encoding)) + encoding)) is None


def test_huge_array_counts_and_cyclic_class_chains_are_refused():
    assert ts._decode(_root_then(b"\x84\x0c[999999999i]" + b"\x00" * 16)) is None
    # a class chain whose superclass is a class of the same chain: new object, classes A, B, then A again
    cyclic = ROW2[:17] + b"\x84\x01@\x84\x84\x84\x01A\x00\x84\x84\x01B\x00\x93"
    assert ts._decode(cyclic) is None


def _shared_dictionary_blob(count: int, entries: dict[str, int]) -> bytes:
    """An attributed string of `count` one-character runs that all reference one attributes dictionary."""
    writer = tw._Writer()
    writer.types(b"@")
    writer.begin_object(tw._CHAIN_ATTRIBUTED)
    writer.string("x" * count, share=False)
    writer.types(b"iI")
    writer.integer(1)
    writer.integer(1)
    dictionary_index = writer._entries
    writer.dictionary(entries)
    for number in range(2, count + 1):  # a new run number each time, the dictionary by object reference
        writer.types(b"iI")
        writer.integer(number)
        writer.integer(1)
        writer.types(b"@")
        writer.integer(dictionary_index - 110)
    writer.end_object()
    return bytes(writer.out)


def test_a_large_dictionary_referenced_by_many_runs_is_interpreted_once():
    count, entries = 3000, {f"k{i}": i for i in range(1500)}
    decoded = decode_attributed_body(_shared_dictionary_blob(count, entries))
    assert len(decoded.runs) == count
    assert all(run.attributes == entries for run in decoded.runs)
    # The oracle re-reads the dictionary for every reference (4.4 s at full size): it checks the same
    # structure, by-reference dictionaries in every run, at a tenth of the size.
    small, few = 300, {f"k{i}": i for i in range(150)}
    blob = _shared_dictionary_blob(small, few)
    assert oracle_decode(blob).runs == decode_attributed_body(blob).runs
