"""Files for the upload tests, made here (never checked in): real images, PDFs, bombs."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image


def png(width: int = 4, height: int = 3, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg(width: int = 4, height: int = 3) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 10)).save(out, "JPEG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_bomb(side: int = 100_000) -> bytes:
    """A valid PNG header for side x side pixels, with a few bytes of compressed data:
    decoding it would need tens of GB."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 65536, 9))
        + _chunk(b"IEND", b"")
    )


def zip_bomb(expanded: int = 1 << 28) -> bytes:
    """A zip whose one member expands to ``expanded`` bytes of zeros (about 1 MiB for a
    GiB): the classic decompression bomb."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z,
        z.open("zeros.txt", "w", force_zip64=True) as member,
    ):
        block = b"\0" * (1 << 20)
        for _ in range(expanded // len(block)):
            member.write(block)
    return out.getvalue()


def elf() -> bytes:
    """The start of an ELF executable (what `file` calls one)."""
    return b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + bytes(range(256)) * 8


def multipart(
    content: bytes, name: str = "f.bin", *, field: str = "file", boundary: str = "tsb0undary"
) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its content type."""
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}";'
            f' filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"
