"""What a file is, decided from its content as it streams in, never from its name.

A PNG named ``a.pdf`` is a PNG; an executable named ``cat.png`` is refused. Binary
types are recognised by their magic bytes (``puremagic``), images are then opened by
Pillow from their header alone to read their size (so a decompression bomb is refused
before a single pixel is decoded), and anything else is text only if it is UTF-8
without NUL bytes all the way through. A name only tells text files apart (Markdown,
CSV, JSON), never makes a file another kind.

Everything here works on the pieces of an upload as they arrive, so an upload is
refused as soon as its content says so, in bounded memory.
"""

from __future__ import annotations

import codecs
import io
from typing import NamedTuple

import puremagic
from PIL import Image, UnidentifiedImageError

from turnstream.domain.errors import ImageTooLarge, UnsupportedMediaType
from turnstream.domain.files import MEDIA_KINDS

HEAD = 8192
"""Bytes the magic numbers are looked for in (they sit in the first few dozen)."""
IMAGE_HEAD_MAX = 1 << 20
"""Bytes of an image within which its size must be readable (a JPEG's may follow its
metadata); beyond, it is refused as unreadable."""

BINARY = {"image/png", "image/jpeg", "image/webp", "image/gif", "application/pdf"}
"""The allowed types that magic bytes tell."""
PILLOW_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}
TEXT_BY_SUFFIX = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".csv": "text/csv",
    ".json": "application/json",
}
ALLOWED = ", ".join(sorted(MEDIA_KINDS))


class Sniffed(NamedTuple):
    media_type: str
    width: int | None = None
    height: int | None = None


class Sniffer:
    """Fed an upload's pieces in order; refuses it (``UnsupportedMediaType``,
    ``ImageTooLarge``) as soon as its content does not qualify, and says at the end
    what it is."""

    def __init__(self, name: str, *, max_pixels: int) -> None:
        self.name = name
        self.max_pixels = max_pixels
        self._head = bytearray()
        self._family: str | None = None
        """The binary media type, or "text", once the head has been seen."""
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._size: tuple[int, int] | None = None
        self._next_try = 0
        self._json = False
        """Whether a text starts as JSON does (``{`` or ``[``)."""

    def feed(self, data: bytes) -> None:
        if self._family is None:
            self._head += data
            if len(self._head) < HEAD:
                return
            head = bytes(self._head)
            self._decide(head)
            if self._family == "text":
                self._check_text(head)
            elif self._family in PILLOW_FORMATS:
                self._try_image(final=False)
            return
        if self._family == "text":
            self._check_text(data)
        elif self._family in PILLOW_FORMATS and self._size is None:
            room = IMAGE_HEAD_MAX - len(self._head)
            if room > 0:
                self._head += data[:room]
            self._try_image(final=False)

    def finish(self) -> Sniffed:
        if self._family is None:
            self._decide(bytes(self._head))
            if self._family == "text":
                self._check_text(bytes(self._head))
        if self._family == "text":
            self._check_text(b"", final=True)
            return Sniffed(self._text_type())
        assert self._family is not None
        if self._family in PILLOW_FORMATS:
            if self._size is None:
                self._try_image(final=True)
            assert self._size is not None
            return Sniffed(self._family, *self._size)
        return Sniffed(self._family)

    # The steps.

    def _decide(self, head: bytes) -> None:
        if not head:
            raise UnsupportedMediaType("The file is empty.")
        found = _magic(head)
        if found in BINARY:
            self._family = found
            self._head = (
                bytearray(head[:IMAGE_HEAD_MAX]) if found in PILLOW_FORMATS else bytearray()
            )
            return
        if _looks_like_text(head):
            self._family = "text"
            self._json = head.lstrip()[:1] in (b"{", b"[")
            return
        if found in MEDIA_KINDS:
            raise UnsupportedMediaType(f"The file looks like {found} but is not UTF-8.")
        what = f" ({found})" if found else ""
        raise UnsupportedMediaType(
            f"The file's content is not of an allowed type{what}; allowed: {ALLOWED}.",
        )

    def _check_text(self, data: bytes, *, final: bool = False) -> None:
        try:
            text = self._text.decode(data, final=final)
        except UnicodeDecodeError:
            raise UnsupportedMediaType(
                f"The file is neither text (UTF-8) nor of an allowed type; allowed: {ALLOWED}."
            ) from None
        if "\x00" in text:
            raise UnsupportedMediaType("The file holds NUL bytes: it is not text.")

    def _try_image(self, *, final: bool) -> None:
        """Read the image's size from its header, at doubling lengths of it."""
        assert self._family is not None
        if not final and len(self._head) < self._next_try and len(self._head) < IMAGE_HEAD_MAX:
            return
        self._next_try = len(self._head) * 2
        try:
            with Image.open(io.BytesIO(self._head), formats=[PILLOW_FORMATS[self._family]]) as im:
                width, height = im.size
        except Image.DecompressionBombError:
            raise ImageTooLarge(
                "The image has too many pixels to be read safely.", max_pixels=self.max_pixels
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            if final or len(self._head) >= IMAGE_HEAD_MAX:
                raise UnsupportedMediaType(
                    f"The file starts as {self._family} but is not a readable image."
                ) from None
            return
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"The image is {width}x{height} pixels; at most {self.max_pixels} are allowed.",
                max_pixels=self.max_pixels,
            )
        self._size = (width, height)
        self._head = bytearray()

    def _text_type(self) -> str:
        suffix = "." + self.name.rsplit(".", 1)[-1].lower() if "." in self.name else ""
        by_name = TEXT_BY_SUFFIX.get(suffix)
        if by_name is None or by_name == "application/json":
            return "application/json" if self._json else "text/plain"
        return by_name


def _magic(head: bytes) -> str:
    """The media type the magic bytes tell ("" when none, or one without a type)."""
    try:
        matches = puremagic.magic_string(head)
    except puremagic.PureError:
        return ""
    for match in matches:
        if match.mime_type in BINARY:
            return str(match.mime_type)
    return str(matches[0].mime_type) if matches else ""


def _looks_like_text(head: bytes) -> bool:
    """Whether the head is UTF-8 without NUL (an incomplete last character allowed)."""
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True
