"""A file's content as a model reads it: a text file's text, a PDF's extracted text.

Files come from users, so nothing here trusts them: text is decoded without ever
failing (invalid bytes become U+FFFD), and a PDF is read within bounds that a hostile
one cannot push: every stream pypdf decompresses is capped (a "zip bomb" stream of a
few hundred kilobytes that inflates to gigabytes stops at the cap and the PDF is
refused), pages past :data:`PDF_MAX_PAGES` are not read, and extraction stops as soon
as the model's share of characters is reached. A PDF that cannot be read (malformed,
encrypted with a password, over a cap) is an :class:`UnsupportedAttachment`, with a
detail fit for the user.

Extracting a PDF is CPU-bound and synchronous: call it in a worker thread
(``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import codecs
import io
import logging
from typing import TYPE_CHECKING

from turnstream.domain.attachments import Attachment
from turnstream.domain.errors import UnsupportedAttachment
from turnstream.domain.files import FileRef

if TYPE_CHECKING:
    import pypdf

PDF_STREAM_MAX_BYTES = 8 * 1024 * 1024
"""The most bytes any one stream of a PDF may decompress to. A page's text content is
rarely more than a few hundred kilobytes; pypdf's own default (75 MB) would let a
10 MiB upload hold a hundred such streams."""

PDF_MAX_PAGES = 1000
"""Pages of a PDF that are read; the rest are ignored (the text would not fit a model's
input anyway, and each page costs time)."""

TRUNCATED_NOTE = "\n\n[The file is longer: only its first {chars} characters are given.]"
"""Appended to a text cut at the model's share, so the model does not take a part for
the whole."""

# pypdf logs every oddity of a malformed file as a warning; a hostile upload could
# flood the log with them. Errors still surface as exceptions.
logging.getLogger("pypdf").setLevel(logging.ERROR)

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def text_of(data: bytes) -> str:
    """A text file's text: UTF-8 (or UTF-16 when it starts with that BOM), the BOM
    dropped, invalid bytes replaced by U+FFFD so that no file fails to decode."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    return data.decode("utf-8", errors="replace")


def _clean(text: str) -> str:
    # PDFs may map glyphs to NULs or lone surrogates, which JSON encoders refuse.
    return text.replace("\x00", "").encode("utf-8", errors="replace").decode("utf-8")


def _limits() -> pypdf.Configuration:
    import pypdf

    return pypdf.get_configuration().with_overwrites(
        zlib_maximum_output_length=PDF_STREAM_MAX_BYTES,
        lzw_maximum_output_length=PDF_STREAM_MAX_BYTES,
        run_length_maximum_output_length=PDF_STREAM_MAX_BYTES,
        brotli_maximum_output_length=PDF_STREAM_MAX_BYTES,
        jbig2_maximum_output_length=PDF_STREAM_MAX_BYTES,
        array_based_stream_maximum_output_length=PDF_STREAM_MAX_BYTES,
        image_maximum_buffer_size=PDF_STREAM_MAX_BYTES,
        stream_decoding_work_maximum_length=4 * PDF_STREAM_MAX_BYTES,
        # Text extraction never needs an external decoder; never run one on user input.
        jbig2dec_binary=None,
    )


def _read_pdf(data: bytes, max_chars: int) -> tuple[str, bool]:
    """The PDF's text, at most ``max_chars`` characters (0: no limit), and whether there
    was more."""
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(data))
    # Many PDFs are "encrypted" only to restrict printing, with an empty password.
    if reader.is_encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
        msg = "The PDF is protected by a password, so its text cannot be read."
        raise UnsupportedAttachment(msg)
    pieces: list[str] = []
    total = 0
    more = False
    for number, page in enumerate(reader.pages):
        if number >= PDF_MAX_PAGES:
            more = True
            break
        text = _clean(page.extract_text()).strip()
        if not text:
            continue
        if pieces:
            text = "\n\n" + text
        if max_chars and total + len(text) > max_chars:
            pieces.append(text[: max_chars - total])
            more = True
            break
        pieces.append(text)
        total += len(text)
    return "".join(pieces), more


def _pdf_text(data: bytes, max_chars: int) -> tuple[str, bool]:
    # pypdf is loaded with the first PDF: most processes (the relay, the projections,
    # a node that is sent no PDF) never need its tenth of a second.
    import pypdf
    from pypdf.errors import LimitReachedError

    try:
        with pypdf.apply_configuration(_limits()):
            return _read_pdf(data, max_chars)
    except UnsupportedAttachment:
        raise
    except LimitReachedError:
        msg = "The PDF holds more data than can be read (a stream is too large)."
        raise UnsupportedAttachment(msg) from None
    except MemoryError:
        raise
    except Exception:
        # pypdf raises many kinds of error on malformed input (its own, but also
        # KeyError, ValueError, TypeError, RecursionError...): all mean "unreadable".
        msg = "The PDF is damaged or not a PDF its text can be read from."
        raise UnsupportedAttachment(msg) from None


def pdf_text(data: bytes, max_chars: int) -> str:
    """A PDF's text, page after page, at most ``max_chars`` characters (0: no limit).

    Raises:
        UnsupportedAttachment: The PDF is malformed, needs a password, or holds a
            stream over :data:`PDF_STREAM_MAX_BYTES` decompressed.
    """
    return _pdf_text(data, max_chars)[0]


def _bounded(text: str, max_chars: int) -> str:
    if max_chars and len(text) > max_chars:
        return text[:max_chars] + TRUNCATED_NOTE.format(chars=max_chars)
    return text


def model_attachment(ref: FileRef, data: bytes, max_chars: int) -> Attachment:
    """A file as a model is given it, from its ref and its bytes.

    An image keeps its bytes (the provider encodes them); a text file becomes its text
    and a PDF its extracted text, each cut at ``max_chars`` characters (0: no limit)
    with a note saying so.

    Raises:
        UnsupportedAttachment: A PDF that cannot be read (see :func:`pdf_text`).
    """
    kind = ref.kind
    if kind == "image":
        return Attachment(ref=ref, data=data)
    if kind == "pdf":
        text, more = _pdf_text(data, max_chars)
        if more:
            text += TRUNCATED_NOTE.format(chars=len(text))
        return Attachment(ref=ref, text=text)
    return Attachment(ref=ref, text=_bounded(text_of(data), max_chars))
