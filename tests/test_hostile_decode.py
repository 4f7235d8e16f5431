"""Nothing a sender writes into chat.db can forge meta, hide a file or be misread as another kind.

Items of the issue "Nothing a sender, a clock or a crash does can blind the channel" proven here:

- 9. Meta from sender-set columns: `thread_originator_guid` and `associated_message_guid` reach `reply_to` /
  `reaction_to` only when GUID-shaped (`chatdb.message_guid`, prefixes `p:N/` and `bp:` stripped); a row whose
  own GUID or chat GUID is not a plain id is not delivered at all (`chatdb.plain_id`). Pure checks, then the
  real server over stdio with hostile values written by the simulator.
- 15. Attachments joined in later commits: the text's U+FFFC count (and the attributedBody's file-transfer
  GUIDs) say how many files to expect; a message with fewer joined files is held for the join grace, and every
  file joined after delivery arrives as a `kind="attachment"` follow-up. Real server over stdio with joins
  committed one by one, then the pipeline with a `ManualClock` where the bounded watch must end.
- 16. Kinds as imessage-exporter classifies them: `associated_message_type` 1000 (a sticker placed on a
  bubble) is a reaction; `item_type` 4/5/6 are location sharing, a kept audio message, SharePlay (not group
  events); typedstream tag 0x87 (an 8-byte NSNumber `q`) decodes instead of ending the parse. Pure
  `classify`/typedstream units, then delivery over stdio and `imessage-channel watch`'s words.
"""

from __future__ import annotations

import pytest

from imessage_channel import typedstream as ts
from imessage_channel.typedstream import (
    FILE_TRANSFER_GUID_KEY,
    MESSAGE_PART_KEY,
    AttributedText,
    AttributeRun,
    NSNumberInt,
    decode_attributed_body,
    encode_attributed_body,
)

# -- 16. typedstream tag 0x87 -------------------------------------------------------------------------------------

NUMBER_INT64 = bytes.fromhex(  # ReagentX/crabstep src/test_data/foundation/NumberInt64: NSNumber q -9 000 000 000
    "040b73747265616d747970656481e803840140848484084e534e756d62657200"
    "8484074e5356616c7565008484084e534f626a656374008584012a8484017197"
    "8700e68ee7fdffffff86"
)
GUID_A = "D7CEBAED-9844-4B25-B841-F7748EA3BCAD"


def test_crabsteps_int64_nsnumber_decodes_to_its_value() -> None:
    root = ts._Parser(NUMBER_INT64).parse_root()
    value = ts._number_of(root)
    assert value == -9_000_000_000 and isinstance(value, NSNumberInt) and value.objc_type == "q"
    assert decode_attributed_body(NUMBER_INT64) is None  # a bare NSNumber is not a message body


@pytest.mark.parametrize(
    ("value", "objc_type", "tag"),
    [
        pytest.param(127, "q", None, id="one byte"),
        pytest.param(-(1 << 15), "q", 0x81, id="int16"),
        pytest.param((1 << 31) - 1, "q", 0x82, id="int32 max"),
        pytest.param(1 << 31, "q", 0x87, id="q just past int32: 8 bytes, not an unsigned int32"),
        pytest.param(-(1 << 31) - 1, "q", 0x87, id="q just below int32"),
        pytest.param(-9_000_000_000, "q", 0x87, id="crabstep's value"),
        pytest.param((1 << 63) - 1, "q", 0x87, id="q max"),
        pytest.param(-(1 << 63), "q", 0x87, id="q min"),
        pytest.param((1 << 32) - 1, "Q", 0x82, id="Q fits unsigned int32"),
        pytest.param((1 << 64) - 1, "Q", 0x87, id="Q max"),
    ],
)
def test_nsnumber_integers_round_trip_with_the_shortest_tag(value: int, objc_type: str, tag: int | None) -> None:
    runs = [AttributeRun(0, 2, {MESSAGE_PART_KEY: 0, "n": NSNumberInt(value, objc_type)})]
    blob = encode_attributed_body("hi", runs)
    if tag is not None:
        assert bytes([tag]) + value.to_bytes({0x81: 2, 0x82: 4, 0x87: 8}[tag], "little", signed=value < 0) in blob
    decoded = decode_attributed_body(blob)
    assert decoded == AttributedText("hi", tuple(runs))
    assert decoded.runs[0].attributes["n"].objc_type == objc_type


@pytest.mark.parametrize(
    ("value", "objc_type"),
    [
        pytest.param(1 << 63, "q", id="q past 64 bits"),
        pytest.param(1 << 64, "Q", id="Q past 64 bits"),
        pytest.param(1 << 40, "i", id="i past 32 bits"),
    ],
)
def test_integers_beyond_their_type_are_refused(value: int, objc_type: str) -> None:
    with pytest.raises(ValueError):
        encode_attributed_body("hi", [AttributeRun(0, 2, {"n": NSNumberInt(value, objc_type)})])


def test_an_int64_before_a_file_run_no_longer_hides_the_file() -> None:
    text = "look\ufffc"
    runs = [
        AttributeRun(0, 4, {MESSAGE_PART_KEY: 0, "__kIMTimestamp": NSNumberInt(1_700_000_000_123, "q")}),
        AttributeRun(4, 1, {MESSAGE_PART_KEY: 1, FILE_TRANSFER_GUID_KEY: GUID_A}),
    ]
    blob = encode_attributed_body(text, runs, mutable=True)
    assert b"\x87" + (1_700_000_000_123).to_bytes(8, "little") in blob
    decoded = decode_attributed_body(blob)
    assert decoded is not None and decoded.file_transfer_guids == (GUID_A,)
    assert decoded.runs == tuple(runs)
