"""Attachments made readable for Claude: the files an inbound message carries, as paths Claude's Read tool
can open.

Owns `<state dir>/inbox/` and the one external program the channel runs on images, macOS `sips`:

- **Which images are converted.** Claude reads JPEG, PNG, GIF and WebP (Anthropic vision docs, "supported
  image formats"). Any other `image/*` — above all the HEIC/HEIF photos iPhones send — is converted to JPEG.
  A readable image is downscaled when its file exceeds `MAX_IMAGE_BYTES` or its long side `MAX_IMAGE_SIDE`:
  the API rejects an image whose base64 form exceeds 5 MiB (5 242 880 bytes; the error users of Claude Code
  hit, anthropics/claude-code#2939), i.e. about 3.9 MB of file, and anything over 8000 × 8000 px (vision docs).
  3.75 MB leaves a margin under the first.
- **How.** `sips -s format jpeg -s formatOptions 80 [-Z 2048] <in> --out <tmp>` (`-Z` =
  `--resampleHeightWidthMax`: long side at most N px, aspect kept), in a subprocess with a timeout
  (`SIPS_TIMEOUT_S`), then renamed into place, so a half-written JPEG is never delivered. `-Z` is added only
  when the image is larger than `TARGET_SIDE` or its size cannot be read cheaply (sips also enlarges). 2048 px
  is above the 1568 px long edge the API scales every image down to (vision docs, "evaluate image size"),
  so nothing the model could use is lost, and a 2048 px JPEG at quality 80 stays far below both limits.
  Dimensions come from the file header (PNG IHDR, GIF screen descriptor, JPEG SOFn, HEIF `ispe`), read in
  at most `HEADER_BYTES`.
- **Without sips** (Linux, a stripped-down Mac) nothing is converted: one log line says so, and the original
  path is delivered. No image library is a dependency.
- **Paths in meta are safe to quote.** A file name is chosen by the sender. A path containing `"`, `<`, `>`,
  `&` or a control character would sit inside a tag attribute, so such a file is delivered as a symlink
  `inbox/<attachment GUID><ext>` instead; display names are flattened and cut the same way.
- **Cache and cleanup.** Outputs are named after the attachment GUID, so re-delivering a message reuses
  them; files older than `INBOX_MAX_AGE` are pruned when the inbox is opened.

Everything here blocks (file reads, a subprocess): callers run it on a worker thread, never on the event loop
(the server's delivery loop calls the pipeline through `anyio.to_thread`).
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .chatdb import Attachment
from .clock import SYSTEM, Clock

log = logging.getLogger(__name__)

INBOX = "inbox"
"""Folder under the state dir (`IMESSAGE_STATE_DIR`) for converted images and safe-named links."""

READABLE_IMAGES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
"""Image types Claude reads as they are (Anthropic vision docs)."""

MAX_IMAGE_BYTES = 3_750_000
"""A readable image bigger than this is downscaled (API: ≤ 5 MiB of base64 ≈ 3.93 MB of file)."""

MAX_IMAGE_SIDE = 8000
"""A readable image whose long side exceeds this many pixels is downscaled (API rejects > 8000 px)."""

TARGET_SIDE = 2048
"""Long side of converted images, in pixels (`sips -Z`)."""

JPEG_QUALITY = 80
"""`sips -s formatOptions`: JPEG quality 0–100."""

SIPS_TIMEOUT_S = 30.0
"""A `sips` run taking longer is killed and the original path delivered."""

HEADER_BYTES = 256 * 1024
"""At most this much of a file is read to find an image's dimensions (EXIF can push JPEG SOF past 64 KB)."""

INBOX_MAX_AGE = timedelta(days=7)
"""Inbox files older than this are deleted when the inbox is opened (a session seldom reaches back further)."""

NAME_LIMIT = 120
"""Display names in meta are cut to this many characters."""

_EXTRA_TYPES = {
    ".heic": "image/heic",
    ".heics": "image/heic-sequence",
    ".heif": "image/heif",
    ".caf": "audio/x-caf",
}
"""Extensions `mimetypes` may not know, for attachments whose `mime_type` column is NULL."""

_UNSAFE = re.compile(r'["<>&\x00-\x1f\x7f-\x9f\u2028\u2029]')
"""Characters a path or a name in a meta value must not contain (attribute quoting, line breaks)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """One attachment as delivered: `path` is the file Claude should Read (it exists), `mime` its type,
    `name` a display name (the sender's file name, flattened), `size` the bytes of `path`, and
    `original` the file as received when `path` is a converted copy or a link (else None)."""

    path: str
    mime: str
    name: str
    size: int
    original: str | None = None

    @property
    def is_image(self) -> bool:
        return self.mime.startswith("image/")

    def as_json(self) -> dict[str, object]:
        """`{path, mime, name, size}` plus `original` when there is one (the `attachments` meta entries)."""
        out: dict[str, object] = {"path": self.path, "mime": self.mime, "name": self.name, "size": self.size}
        if self.original:
            out["original"] = self.original
        return out


def mime_of(att: Attachment) -> str:
    """`attachment.mime_type`, else a guess from the file name, else `application/octet-stream`."""
    if att.mime_type:
        return att.mime_type.lower()
    ext = os.path.splitext(att.name)[1].lower()
    return _EXTRA_TYPES.get(ext) or mimetypes.guess_type(att.name)[0] or "application/octet-stream"


def safe_name(name: str) -> str:
    """`name` with quote/markup/control characters replaced by `_`, cut to `NAME_LIMIT` characters."""
    flat = _UNSAFE.sub("_", name)
    return flat if len(flat) <= NAME_LIMIT else flat[: NAME_LIMIT - 1] + "…"


def image_dimensions(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) in pixels from the header of a PNG, GIF, JPEG or HEIF/HEIC file, or None when the
    format is another one or the header is not within the first `HEADER_BYTES`. Never raises on bad data
    (OSError from opening the file propagates)."""
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return w, h
        if head[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", head[6:10])
            return w, h
        if head.startswith(b"\xff\xd8"):
            return _jpeg_dimensions(head)
        if head[4:8] == b"ftyp":
            return _heif_dimensions(head)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments to the first SOFn (C0–CF except C4 DHT, C8 JPG, CC DAC)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        i += 2 + length
    return None


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """ISO BMFF boxes in data[start:end] as (type, payload start, box end)."""
    out: list[tuple[bytes, int, int]] = []
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8 : i + 16])[0], 16
        elif size == 0:
            size = end - i
        if size < header:
            break
        out.append((kind, i + header, min(i + size, end)))
        i += size
    return out


def _heif_dimensions(data: bytes) -> tuple[int, int] | None:
    """The largest `ispe` (image spatial extents) property in `meta/iprp/ipco` (ISO/IEC 23008-12). An
    iPhone HEIC is a grid of 512 px tiles whose grid item carries the full size, so the largest wins."""
    best: tuple[int, int] | None = None
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"meta":
            continue
        for k2, s2, e2 in _boxes(data, start + 4, end):  # meta is a full box: 4 bytes version/flags
            if k2 != b"iprp":
                continue
            for k3, s3, e3 in _boxes(data, s2, e2):
                if k3 != b"ipco":
                    continue
                for k4, s4, _e4 in _boxes(data, s3, e3):
                    if k4 == b"ispe":
                        w, h = struct.unpack(">II", data[s4 + 4 : s4 + 12])
                        if best is None or w * h > best[0] * best[1]:
                            best = (w, h)
    return best


def conversion_reason(mime: str, size: int, dims: tuple[int, int] | None) -> str | None:
    """Why an image must be converted before Claude reads it, or None: `format` (not JPEG/PNG/GIF/WebP),
    `bytes` (over `MAX_IMAGE_BYTES`), `pixels` (long side over `MAX_IMAGE_SIDE`). SVG is text and is
    never converted; non-images return None."""
    if not mime.startswith("image/") or mime == "image/svg+xml":
        return None
    if mime not in READABLE_IMAGES:
        return "format"
    if size > MAX_IMAGE_BYTES:
        return "bytes"
    if dims and max(dims) > MAX_IMAGE_SIDE:
        return "pixels"
    return None


def _key(guid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", guid)[:100] or "attachment"


class Inbox:
    """`<state dir>/inbox/`: JPEG copies made by `sips` and safe-named links. `sips` is the program's path,
    or None where there is none (nothing is converted; said once in the log). Used from one thread."""

    def __init__(
        self, folder: Path, sips: str | None, *, timeout: float = SIPS_TIMEOUT_S, clock: Clock = SYSTEM
    ) -> None:
        self.folder = folder
        self.clock = clock
        self.sips = sips
        self.timeout = timeout
        self._told_no_sips = False

    @classmethod
    def in_state_dir(cls, state_dir: Path, clock: Clock = SYSTEM) -> Inbox:
        """The inbox of this state dir, with `sips` looked up on PATH (macOS: `/usr/bin/sips`); prunes
        files older than `INBOX_MAX_AGE` (by their mtime against `clock.wall()`)."""
        inbox = cls(state_dir / INBOX, shutil.which("sips"), clock=clock)
        inbox.prune()
        return inbox

    def _ensure(self) -> bool:
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create %s (%s); attachments are delivered as they are", self.folder, exc)
            return False
        return True

    def prune(self, max_age: timedelta = INBOX_MAX_AGE) -> int:
        """Delete inbox files not modified within `max_age`; returns how many. Errors are ignored."""
        cutoff = self.clock.wall() - max_age.total_seconds()
        removed = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def jpeg(self, src: str, guid: str, dims: tuple[int, int] | None) -> str | None:
        """A JPEG of `src` (long side ≤ `TARGET_SIDE`) at `inbox/<guid>.jpg`, made by sips unless it is
        already there; None when there is no sips, or sips failed or timed out (logged)."""
        if self.sips is None:
            if not self._told_no_sips:
                self._told_no_sips = True
                log.warning(
                    "sips not found: HEIC photos and oversized images are delivered as they are "
                    "(Claude may be unable to read them)"
                )
            return None
        out = self.folder / f"{_key(guid)}.jpg"
        with contextlib.suppress(OSError):
            if out.stat().st_size > 0:
                return str(out)
        if not self._ensure():
            return None
        tmp = self.folder / f".{_key(guid)}.{os.getpid()}.tmp.jpg"
        argv = [self.sips, "-s", "format", "jpeg", "-s", "formatOptions", str(JPEG_QUALITY)]
        if dims is None or max(dims) > TARGET_SIDE:
            argv += ["-Z", str(TARGET_SIDE)]
        argv += [src, "--out", str(tmp)]
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=self.timeout, check=False, stdin=subprocess.DEVNULL
            )
            if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
                detail = done.stderr.decode(errors="replace").strip()[:300]
                log.warning("sips could not convert %s (exit %d): %s", src, done.returncode, detail)
                return None
            os.replace(tmp, out)
        except subprocess.TimeoutExpired:
            log.warning("sips took over %.0f s on %s; delivering the original", self.timeout, src)
            return None
        except OSError as exc:
            log.warning("converting %s failed: %s", src, exc)
            return None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return str(out)

    def link(self, src: str, guid: str) -> str | None:
        """A symlink `inbox/<guid><ext>` → `src` (for paths unsafe to quote), or None on failure."""
        ext = _UNSAFE.sub("", os.path.splitext(src)[1])[:16]
        out = self.folder / f"{_key(guid)}{ext}"
        if os.path.lexists(out) and os.path.realpath(out) == os.path.realpath(src):
            return str(out)
        if not self._ensure():
            return None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            os.symlink(src, out)
        except OSError as exc:
            log.warning("cannot link %s into the inbox: %s", src, exc)
            return None
        return str(out)


def prepare(att: Attachment, inbox: Inbox | None) -> Prepared | None:
    """The attachment as Claude should get it, or None when its file is not on disk.

    Images that need it (`conversion_reason`) become an inbox JPEG when `inbox` can convert; otherwise,
    and for every other file, the original path is delivered — through a safe-named inbox link when the
    path holds characters unsafe in a meta value (without an inbox such a file is left out: None).
    Blocking (reads headers, may run sips)."""
    path = att.path
    if not path or not os.path.isfile(path):
        return None
    mime = mime_of(att)
    name = safe_name(att.name)
    try:
        size = os.path.getsize(path)
        dims = image_dimensions(path) if mime.startswith("image/") else None
    except OSError:
        return None
    reason = conversion_reason(mime, size, dims)
    if reason and inbox is not None:
        out = inbox.jpeg(path, att.guid, dims)
        if out is not None:
            log.debug("converted %s (%s) to %s", path, reason, out)
            original = None if _UNSAFE.search(path) else path
            return Prepared(out, "image/jpeg", name, os.path.getsize(out), original=original)
    if _UNSAFE.search(path):
        link = inbox.link(path, att.guid) if inbox is not None else None
        if link is None:
            log.warning("attachment path %r cannot be quoted safely; not delivered", path)
            return None
        return Prepared(link, mime, name, size, original=None)
    return Prepared(path, mime, name, size)
