"""A file's content as a model reads it: text decoded, a PDF's text extracted within
bounds a hostile PDF cannot push."""

from __future__ import annotations

import tracemalloc

import pytest

from tests.support.attachments import deflate_bomb, encrypted, file_ref, make_pdf
from turnstream.domain.errors import UnsupportedAttachment
from turnstream.files import model_attachment, pdf_text, text_of
from turnstream.files.extract import PDF_STREAM_MAX_BYTES, TRUNCATED_NOTE

TWO_PAGES = make_pdf([["Quarterly report", "Revenue (up) 12%"], ["Page two"]])


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"plain", "plain"),
        ("h\u00e9llo".encode(), "h\u00e9llo"),
        (b"\xef\xbb\xbfwith bom", "with bom"),
        (b"bad \xff\xfe byte", "bad \ufffd\ufffd byte"),
        (b"\xff\xfe" + "utf16".encode("utf-16-le"), "utf16"),
        (b"\xfe\xff" + "be".encode("utf-16-be"), "be"),
        (b"", ""),
    ],
    ids=["ascii", "utf8", "bom", "invalid", "utf16le", "utf16be", "empty"],
)
def test_text_of_decodes_any_bytes(data: bytes, text: str) -> None:
    assert text_of(data) == text


def test_pdf_text_reads_every_page_in_order() -> None:
    assert pdf_text(TWO_PAGES, 0) == "Quarterly report\nRevenue (up) 12%\n\nPage two"


def test_pdf_text_stops_at_max_chars() -> None:
    assert pdf_text(TWO_PAGES, 9) == "Quarterly"


def test_pdf_text_stops_reading_once_it_has_enough() -> None:
    # The second page would be refused if read: extraction stopped before it.
    pdf = make_pdf(
        [["First page text"]], streams=[(b"/Filter /FlateDecode", deflate_bomb(64 << 20))]
    )

    assert pdf_text(pdf, 5) == "First"
    with pytest.raises(UnsupportedAttachment):
        pdf_text(pdf, 0)


def test_a_pdf_that_needs_a_password_is_unsupported() -> None:
    with pytest.raises(UnsupportedAttachment, match="password"):
        pdf_text(encrypted(TWO_PAGES, "secret"), 100)


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128"])
def test_a_pdf_encrypted_with_an_empty_password_is_read(algorithm: str) -> None:
    assert pdf_text(encrypted(TWO_PAGES, "", algorithm=algorithm), 16) == "Quarterly report"


@pytest.mark.parametrize(
    "data",
    [b"", b"%PDF-1.4\nnot really", TWO_PAGES[:150], b"\x89PNG\r\n\x1a\n" + bytes(64)],
    ids=["empty", "garbage", "truncated", "png"],
)
def test_a_malformed_pdf_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedAttachment, match="damaged"):
        pdf_text(data, 100)


def test_a_deflate_bomb_is_refused_in_bounded_memory() -> None:
    # 64 MiB of spaces in about 64 KB: under pypdf's own 75 MB cap, so only the cap set
    # here refuses it; without that cap the peak would pass 64 MiB.
    bomb = deflate_bomb(64 << 20)
    pdf = make_pdf(streams=[(b"/Filter /FlateDecode", bomb)])
    assert len(pdf) < 200_000

    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedAttachment, match="too large"):
            pdf_text(pdf, 1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 * PDF_STREAM_MAX_BYTES < 64 << 20


def test_model_attachment_keeps_an_images_bytes() -> None:
    data = b"\x89PNG\r\n\x1a\nfake"
    ref = file_ref("cat.png", "image/png", data, width=2, height=2)

    attachment = model_attachment(ref, data, 10)

    assert (attachment.ref, attachment.data, attachment.text) == (ref, data, None)


def test_model_attachment_decodes_a_text_and_notes_a_cut() -> None:
    data = b"\xef\xbb\xbfline one\nline two"
    ref = file_ref("a.txt", "text/plain", data)

    whole = model_attachment(ref, data, 0)
    cut = model_attachment(ref, data, 8)

    assert (whole.data, whole.text) == (None, "line one\nline two")
    assert cut.text == "line one" + TRUNCATED_NOTE.format(chars=8)


def test_model_attachment_extracts_a_pdfs_text() -> None:
    ref = file_ref("report.pdf", "application/pdf", TWO_PAGES)

    whole = model_attachment(ref, TWO_PAGES, 0)
    cut = model_attachment(ref, TWO_PAGES, 9)

    assert whole.text == "Quarterly report\nRevenue (up) 12%\n\nPage two"
    assert cut.text == "Quarterly" + TRUNCATED_NOTE.format(chars=9)


def test_model_attachment_refuses_an_unreadable_pdf() -> None:
    ref = file_ref("x.pdf", "application/pdf", b"%PDF-junk")

    with pytest.raises(UnsupportedAttachment):
        model_attachment(ref, b"%PDF-junk", 100)
