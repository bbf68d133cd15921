"""A ``multipart/form-data`` upload read as it arrives: its one ``file`` field's pieces.

Litestar's own form parsing reads the whole body into memory first; an upload of
several MiB would then sit there whole (and several at once, several times over).
Here the body is fed to ``python-multipart``'s streaming parser chunk by chunk and
the file's data handed on as it is parsed, so memory stays at a chunk or two.
A body that ends before its closing boundary is a truncated upload: 400, and the use
case drops whatever it wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from turnstream.domain.errors import FileTooLarge, Invalid, UnsupportedMediaType

FIELD = "file"
"""The form field that holds the file."""
OVERHEAD = 64 * 1024
"""Bytes a body may have beyond its file's limit (boundaries, part headers, fields)."""
MAX_PARTS = 16


class MultipartUpload:
    """Reads one upload: :meth:`start` until the file's part begins (its name), then
    :meth:`pieces` its data."""

    def __init__(self, request: Request[Any, Any, Any], *, max_file_bytes: int) -> None:
        media, options = parse_options_header(request.headers.get("content-type", ""))
        if media != b"multipart/form-data":
            raise UnsupportedMediaType(
                "Upload a file as multipart/form-data, in a field named 'file'."
            )
        boundary = options.get(b"boundary")
        if not boundary:
            raise Invalid("The multipart body has no boundary.")
        self.max_body = max_file_bytes + OVERHEAD if max_file_bytes else 0
        announced = request.headers.get("content-length")
        if self.max_body and announced and announced.isdigit() and int(announced) > self.max_body:
            raise FileTooLarge(
                f"A file has at most {max_file_bytes} bytes.", max_bytes=max_file_bytes
            )
        self.max_file_bytes = max_file_bytes
        self._body = request.stream()
        self._received = 0
        self._parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._in_file = False
        self._seen_file = False
        self._file_started = False
        self.filename: str | None = None
        self._out: list[bytes] = []
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._field,
                "on_header_value": self._value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    async def start(self) -> str | None:
        """Read until the file's part begins; its file name (as the client gave it)."""
        while not self._file_started:
            if not await self._feed_next():
                raise Invalid(f"The multipart body has no field named {FIELD!r}.")
        return self.filename

    async def pieces(self) -> AsyncIterator[bytes]:
        """The file's data, piece by piece, until its part ends."""
        while True:
            out, self._out = self._out, []
            for piece in out:
                yield piece
            if not self._in_file and self._seen_file:
                break
            if not await self._feed_next():
                break
        # Read the rest of the body, so that a truncated one is told apart.
        while await self._feed_next():
            pass
        if not self._ended:
            raise Invalid("The multipart body ended before its closing boundary.")

    async def _feed_next(self) -> bool:
        """Feed the next chunk of the body to the parser; False at its end."""
        if self._ended:
            return False
        try:
            chunk = await anext(self._body)
        except StopAsyncIteration:
            return False
        if not chunk:
            return False
        self._received += len(chunk)
        if self.max_body and self._received > self.max_body:
            raise FileTooLarge(
                f"A file has at most {self.max_file_bytes} bytes.", max_bytes=self.max_file_bytes
            )
        try:
            self._parser.write(chunk)
        except FormParserError:
            raise Invalid("The multipart body is malformed.") from None
        return True

    # The parser's callbacks.

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise Invalid(f"A multipart upload has at most {MAX_PARTS} parts.")
        self._disposition = b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != FIELD.encode():
            return
        if self._seen_file:
            raise Invalid(f"A multipart upload has one field named {FIELD!r}.")
        self._seen_file = self._in_file = self._file_started = True
        filename = options.get(b"filename")
        self.filename = filename.decode("utf-8", "replace") if filename is not None else None

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and end > start:
            self._out.append(bytes(data[start:end]))

    def _part_end(self) -> None:
        self._in_file = False

    def _end(self) -> None:
        self._ended = True
