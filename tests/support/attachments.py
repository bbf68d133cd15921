"""Files for the tests of attachments: refs of them, and PDFs made by hand.

The PDFs, valid with known text or hostile, are written byte by byte (objects, a
cross-reference table, a trailer) rather than with a PDF library, so that a test
controls exactly what a reader is given, down to a page whose content stream is a
decompression bomb.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Sequence

import pypdf

from turnstream.domain.files import FileRef
from turnstream.ids import uuid7


def file_ref(
    name: str,
    media_type: str,
    data: bytes = b"",
    *,
    size: int | None = None,
    width: int | None = None,
    height: int | None = None,
) -> FileRef:
    """A ref of ``data`` as the store would record it (``size`` overrides its length)."""
    return FileRef(
        id=uuid7(),
        name=name,
        media_type=media_type,
        bytes=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
    )


def _literal(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def text_stream(lines: Sequence[str]) -> bytes:
    """A page content stream that shows ``lines`` one under another in Helvetica."""
    shown = b" ".join(_literal(line) + b" '" for line in lines)
    return b"BT /F1 12 Tf 72 720 Td 14 TL " + shown + b" ET"


def make_pdf(
    pages: Sequence[Sequence[str]] = (), *, streams: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """A PDF with a page of text for each entry of ``pages``, then a page for each
    ``(extra dictionary entries, raw stream bytes)`` of ``streams`` (a filter, say)."""
    objects: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    contents = [(b"", text_stream(lines)) for lines in pages] + list(streams)
    kids: list[int] = []
    for extra, data in contents:
        objects.append(b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(data), extra, data))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % len(objects)
        )
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    refs = b" ".join(b"%d 0 R" % kid for kid in kids)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs, len(kids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def deflate_bomb(inflated_bytes: int) -> bytes:
    """Deflate data of a few hundred bytes a megabyte that inflates to
    ``inflated_bytes`` spaces, compressed a megabyte at a time (bounded memory)."""
    compressor = zlib.compressobj(9)
    block = b" " * (1 << 20)
    parts = [compressor.compress(block) for _ in range(inflated_bytes >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


def encrypted(pdf: bytes, user_password: str, *, algorithm: str = "AES-128") -> bytes:
    """``pdf`` encrypted; an empty ``user_password`` opens without one (only the
    owner's permissions are restricted)."""
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf))
    writer.encrypt(user_password, owner_password="owner-secret", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
