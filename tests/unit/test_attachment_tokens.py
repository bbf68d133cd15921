"""How attachments count toward a model's input: images by OpenAI's vision formula,
texts by their text (or their bytes before they are loaded)."""

from __future__ import annotations

import pytest

from tests.support.attachments import file_ref
from turnstream.providers.base import (
    UNKNOWN_IMAGE_TOKENS,
    Attachment,
    ChatMessage,
    attachment_text,
    estimate_tokens,
    estimate_usage,
    image_tokens,
    message_tokens,
)


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        # OpenAI's own examples: 1024x1024 becomes 768x768, four tiles.
        (1024, 1024, 4 * 170 + 85),
        # 2048x4096 fits 2048 as 1024x2048, then 768x1536: 2x3 tiles.
        (2048, 4096, 6 * 170 + 85),
        # Larger than 2048 on a side: scaled down first, so the same as above.
        (4096, 8192, 6 * 170 + 85),
        # Small images are never scaled up: one tile.
        (100, 100, 170 + 85),
        (512, 512, 170 + 85),
        (513, 512, 2 * 170 + 85),
        # A wide strip: 4000x500 fits as 2048x256 (short side already under 768).
        (4000, 500, 4 * 170 + 85),
    ],
    ids=["1024-square", "2048x4096", "4096x8192", "tiny", "one-tile", "two-tiles", "strip"],
)
def test_image_tokens_follow_openais_high_detail_formula(
    width: int, height: int, tokens: int
) -> None:
    assert image_tokens(width, height) == tokens


@pytest.mark.parametrize(("width", "height"), [(None, None), (640, None), (0, 480), (-1, 5)])
def test_an_image_of_unknown_size_counts_as_four_tiles(
    width: int | None, height: int | None
) -> None:
    assert image_tokens(width, height) == UNKNOWN_IMAGE_TOKENS == 765


def test_a_message_counts_its_images_and_texts() -> None:
    image = Attachment(ref=file_ref("a.png", "image/png", b"png", width=1024, height=1024))
    text = Attachment(ref=file_ref("n.txt", "text/plain", b"x" * 40), text="x" * 40)
    plain = ChatMessage("user", "What is this?")
    with_files = ChatMessage("user", "What is this?", attachments=(image, text))

    added = message_tokens(with_files) - message_tokens(plain)

    assert added == 765 + estimate_tokens(attachment_text(text))
    assert estimate_usage([with_files], "").prompt_tokens == message_tokens(with_files)


def test_a_text_not_yet_loaded_counts_four_bytes_a_token() -> None:
    ref = file_ref("big.csv", "text/csv", size=4001)

    unloaded = ChatMessage("user", "", attachments=(Attachment(ref=ref),))

    assert message_tokens(unloaded) == 1001 + 4


def test_the_text_a_model_reads_names_the_file() -> None:
    ref = file_ref("notes.md", "text/markdown", b"# Plan")

    assert attachment_text(Attachment(ref=ref, text="# Plan")) == (
        "Attached file notes.md (text/markdown):\n\n# Plan"
    )
