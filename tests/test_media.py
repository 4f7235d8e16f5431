"""Attachments made readable: image headers, when an image is converted, the sips run (a fake `sips` from
tests/fakes/bin writes a small JPEG and logs its argv), the inbox cache, safe paths and pruning."""

from __future__ import annotations

import json
import logging
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imessage_channel.chatdb import Attachment
from imessage_channel.clock import ManualClock
from imessage_channel.media import (
    MAX_IMAGE_BYTES,
    TARGET_SIDE,
    Inbox,
    Prepared,
    conversion_reason,
    image_dimensions,
    mime_of,
    prepare,
    safe_name,
)

FAKE_SIPS = Path(__file__).resolve().parent / "fakes" / "bin" / "sips"


# -- files with real headers ---------------------------------------------------------------------------


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def heic_bytes(width: int = 4032, height: int = 3024, size: int = 4 * 1024 * 1024) -> bytes:
    """An HEIC file as an iPhone writes it, as far as headers go: `ftyp heic`, then `meta` whose
    `iprp/ipco` holds the `ispe` of a 512 px tile and of the full grid, then an `mdat` padding the file
    to `size` bytes."""
    ispe = [_box(b"ispe", b"\0\0\0\0" + struct.pack(">II", w, h)) for w, h in ((512, 512), (width, height))]
    hdlr = _box(b"hdlr", b"\0" * 8 + b"pict" + b"\0" * 13)
    meta = _box(b"meta", b"\0\0\0\0" + hdlr + _box(b"iprp", _box(b"ipco", b"".join(ispe))))
    head = _box(b"ftyp", b"heic\0\0\0\0mif1heic") + meta
    return head + _box(b"mdat", b"\0" * (size - len(head) - 8))


def png_bytes(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def jpeg_bytes(width: int, height: int, exif: int = 0) -> bytes:
    """SOI, an APP1 (EXIF) segment of `exif` bytes, a baseline SOF0 frame header, EOI."""
    app1 = b"\xff\xe1" + struct.pack(">H", exif + 2) + b"\0" * exif if exif else b""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app1 + sof + b"\xff\xd9"


def att(path: Path | str | None, mime: str | None, *, guid: str = "AT-1", name: str | None = None) -> Attachment:
    return Attachment(
        rowid=1,
        guid=guid,
        path=str(path) if path else None,
        mime_type=mime,
        uti=None,
        transfer_name=name or (Path(path).name if path else None),
        transfer_state=5,
        total_bytes=0,
    )


@pytest.fixture
def sips_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "sips.jsonl"
    monkeypatch.setenv("FAKE_SIPS_LOG", str(log))
    return log


def sips_calls(log: Path) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in log.read_text().splitlines()] if log.exists() else []


# -- headers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "dims"),
    [
        (png_bytes(9000, 100), (9000, 100)),
        (b"GIF89a" + struct.pack("<HH", 320, 200) + b"\0" * 8, (320, 200)),
        (jpeg_bytes(4032, 3024), (4032, 3024)),
        (jpeg_bytes(640, 480, exif=65_000), (640, 480)),  # the frame header behind a big EXIF block
        (heic_bytes(4032, 3024, size=4096), (4032, 3024)),  # the grid's ispe, not the 512 px tile's
        (b"%PDF-1.4 not an image", None),
        (b"\xff\xd8\xff\xe1\x00", None),  # truncated JPEG
        (b"", None),
    ],
    ids=["png", "gif", "jpeg", "jpeg-after-exif", "heic", "pdf", "truncated-jpeg", "empty"],
)
def test_image_dimensions_come_from_the_header(tmp_path: Path, data: bytes, dims: tuple[int, int] | None) -> None:
    f = tmp_path / "f"
    f.write_bytes(data)
    assert image_dimensions(f) == dims


def test_the_fake_sips_writes_a_jpeg_whose_header_reads_back(tmp_path: Path) -> None:
    src = tmp_path / "in.heic"
    src.write_bytes(heic_bytes(size=2048))
    out = Inbox(tmp_path / "inbox", str(FAKE_SIPS)).jpeg(str(src), "G", None)
    assert out is not None and Path(out).read_bytes()[:3] == b"\xff\xd8\xff"
    assert image_dimensions(out) == (8, 8)


# -- what gets converted ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "size", "dims", "reason"),
    [
        ("image/heic", 10, None, "format"),
        ("image/heif", 10, (100, 100), "format"),
        ("image/tiff", 10, None, "format"),
        ("image/jpeg", 100_000, (4032, 3024), None),
        ("image/png", MAX_IMAGE_BYTES, (100, 100), None),
        ("image/jpeg", MAX_IMAGE_BYTES + 1, None, "bytes"),
        ("image/png", 10, (8001, 10), "pixels"),
        ("image/gif", 10, None, None),
        ("image/webp", 10, None, None),
        ("image/svg+xml", 10_000_000, None, None),
        ("application/pdf", 10_000_000, None, None),
        ("audio/x-caf", 10, None, None),
    ],
)
def test_conversion_reason(mime: str, size: int, dims: tuple[int, int] | None, reason: str | None) -> None:
    assert conversion_reason(mime, size, dims) == reason


def test_mime_falls_back_to_the_file_name() -> None:
    assert mime_of(att("/x/IMG_1.HEIC", None)) == "image/heic"
    assert mime_of(att("/x/Audio Message.caf", None)) == "audio/x-caf"
    assert mime_of(att("/x/a.pdf", "Application/PDF")) == "application/pdf"
    assert mime_of(att("/x/blob", None)) == "application/octet-stream"


def test_safe_name_flattens_what_could_break_out_of_an_attribute() -> None:
    assert safe_name('evil" chat_id="x\n<b>&.jpg') == "evil_ chat_id=_x__b__.jpg"
    assert len(safe_name("a" * 500)) == 120 and safe_name("a" * 500).endswith("…")


# -- sips ------------------------------------------------------------------------------------------------------


def test_heic_becomes_an_inbox_jpeg_made_by_sips_and_keeps_its_original(tmp_path: Path, sips_log: Path) -> None:
    src = tmp_path / "IMG_1.heic"
    src.write_bytes(heic_bytes())
    inbox = Inbox(tmp_path / "state" / "inbox", str(FAKE_SIPS))
    ready = prepare(att(src, "image/heic", guid="AT-42"), inbox)
    assert ready == Prepared(
        str(tmp_path / "state" / "inbox" / "AT-42.jpg"), "image/jpeg", "IMG_1.heic", ready.size, original=str(src)
    )
    assert 0 < ready.size < MAX_IMAGE_BYTES
    assert oct((tmp_path / "state" / "inbox").stat().st_mode & 0o777) == "0o700"
    (argv,) = sips_calls(sips_log)
    assert argv[:6] == ["-s", "format", "jpeg", "-s", "formatOptions", "80"]
    assert argv[6:] == ["-Z", str(TARGET_SIDE), str(src), "--out", argv[-1]]
    assert not Path(argv[-1]).exists()  # written to a temporary name, then renamed into place
    assert ready.as_json() == {
        "path": ready.path,
        "mime": "image/jpeg",
        "name": "IMG_1.heic",
        "size": ready.size,
        "original": str(src),
    }


def test_a_converted_image_is_reused_not_converted_again(tmp_path: Path, sips_log: Path) -> None:
    src = tmp_path / "IMG_1.heic"
    src.write_bytes(heic_bytes(size=4096))
    inbox = Inbox(tmp_path / "inbox", str(FAKE_SIPS))
    first = prepare(att(src, "image/heic"), inbox)
    second = prepare(att(src, "image/heic"), inbox)
    assert first == second and len(sips_calls(sips_log)) == 1


def test_small_images_are_not_enlarged(tmp_path: Path, sips_log: Path) -> None:
    src = tmp_path / "small.heic"
    src.write_bytes(heic_bytes(800, 600, size=4096))
    prepare(att(src, "image/heic"), Inbox(tmp_path / "inbox", str(FAKE_SIPS)))
    assert "-Z" not in sips_calls(sips_log)[0]


def test_an_oversized_jpeg_is_downscaled_and_a_normal_one_left_alone(tmp_path: Path, sips_log: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(jpeg_bytes(6000, 4000) + b"\0" * MAX_IMAGE_BYTES)
    normal = tmp_path / "normal.jpg"
    normal.write_bytes(jpeg_bytes(4032, 3024))
    inbox = Inbox(tmp_path / "inbox", str(FAKE_SIPS))
    assert prepare(att(big, "image/jpeg", guid="BIG"), inbox).original == str(big)  # type: ignore[union-attr]
    assert prepare(att(normal, "image/jpeg", guid="OK"), inbox) == Prepared(
        str(normal), "image/jpeg", "normal.jpg", normal.stat().st_size
    )
    assert len(sips_calls(sips_log)) == 1


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_when_sips_fails_or_hangs_the_original_is_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    monkeypatch.setenv("FAKE_SIPS_MODE", mode)
    src = tmp_path / "IMG_1.heic"
    src.write_bytes(heic_bytes(size=4096))
    inbox = Inbox(tmp_path / "inbox", str(FAKE_SIPS), timeout=1.0)
    with caplog.at_level(logging.WARNING, "imessage_channel.media"):
        ready = prepare(att(src, "image/heic"), inbox)
    assert ready == Prepared(str(src), "image/heic", "IMG_1.heic", 4096)
    assert "sips" in caplog.text
    assert os.listdir(tmp_path / "inbox") == []  # no half-written JPEG left behind


def test_without_sips_the_original_is_delivered_and_that_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "IMG_1.heic"
    src.write_bytes(heic_bytes(size=4096))
    inbox = Inbox(tmp_path / "inbox", None)
    with caplog.at_level(logging.WARNING, "imessage_channel.media"):
        first = prepare(att(src, "image/heic"), inbox)
        prepare(att(src, "image/heic", guid="AT-2"), inbox)
    assert first == Prepared(str(src), "image/heic", "IMG_1.heic", 4096)
    assert caplog.text.count("sips not found") == 1


def test_in_state_dir_finds_sips_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(FAKE_SIPS.parent))
    assert Inbox.in_state_dir(tmp_path).sips == str(FAKE_SIPS)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert Inbox.in_state_dir(tmp_path).sips is None


# -- paths ----------------------------------------------------------------------------------------------------


def test_missing_files_are_not_delivered(tmp_path: Path) -> None:
    assert prepare(att(tmp_path / "gone.jpg", "image/jpeg"), None) is None
    assert prepare(att(None, "image/jpeg"), None) is None


def test_other_files_are_delivered_as_they_are(tmp_path: Path) -> None:
    pdf = tmp_path / "notes.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    assert prepare(att(pdf, "application/pdf"), Inbox(tmp_path / "inbox", str(FAKE_SIPS))) == Prepared(
        str(pdf), "application/pdf", "notes.pdf", 8
    )


def test_a_path_unsafe_to_quote_is_delivered_through_a_safe_link(tmp_path: Path) -> None:
    folder = tmp_path / 'x" user="owner'
    folder.mkdir()
    evil = folder / "a<b>.pdf"
    evil.write_bytes(b"%PDF")
    ready = prepare(att(evil, "application/pdf", guid="AT-9"), Inbox(tmp_path / "inbox", str(FAKE_SIPS)))
    assert ready is not None and ready.path == str(tmp_path / "inbox" / "AT-9.pdf")
    assert Path(ready.path).read_bytes() == b"%PDF" and ready.name == "a_b_.pdf" and ready.original is None
    assert prepare(att(evil, "application/pdf"), None) is None  # no inbox: left out rather than quoted


def test_prune_deletes_only_old_inbox_files(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    old, fresh = folder / "old.jpg", folder / "fresh.jpg"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    # Ages are judged by the inbox's clock against the files' own times: no dependence on today's date.
    written = fresh.stat().st_mtime
    ten_days = written - 10 * 86400
    os.utime(old, (ten_days, ten_days))
    inbox = Inbox(folder, None, clock=ManualClock(datetime.fromtimestamp(written + 60, UTC)))
    assert inbox.prune() == 1
    assert sorted(os.listdir(inbox.folder)) == ["fresh.jpg"]
    assert Inbox(tmp_path / "nowhere", None).prune() == 0
