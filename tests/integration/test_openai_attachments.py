"""Attachments sent to a real local server speaking the OpenAI API: as the content
parts OpenAI's Chat Completions API documents (``text`` and ``image_url`` parts, an
image inline as a base64 ``data:`` URL)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.attachments import file_ref, make_pdf
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from turnstream.files import model_attachment
from turnstream.providers import ChatMessage, Chunk, Completed, ProviderError
from turnstream.providers.base import Attachment, estimate_usage
from turnstream.providers.openai import OpenAIProvider
from turnstream.settings import ModelConfig

# A real 1x1 PNG (a transparent pixel).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
NOTES = b"\xef\xbb\xbfMilk\nEggs\n"


@pytest.fixture
async def provider() -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider()
    yield provider
    await provider.aclose()


def model_for(server: FakeOpenAI) -> ModelConfig:
    return ModelConfig(
        id="fake-vision", model="fake-vision-7b", base_url=server.base_url, timeout_s=10.0
    )


async def send(provider: OpenAIProvider, server: FakeOpenAI, messages: list[ChatMessage]) -> Any:
    chunks: list[Chunk] = [c async for c in provider.stream(model_for(server), messages)]
    assert isinstance(chunks[-1], Completed)
    [body] = server.requests
    return body


async def test_an_image_and_a_text_are_sent_as_documented_content_parts(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    image = file_ref("dot.png", "image/png", PNG, width=1, height=1)
    notes = file_ref("list.txt", "text/plain", NOTES)
    message = ChatMessage(
        "user",
        "What do these show?",
        attachments=(model_attachment(image, PNG, 1000), model_attachment(notes, NOTES, 1000)),
    )

    body = await send(provider, fake_openai, [ChatMessage("system", "Be brief."), message])

    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What do these show?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
                },
                {"type": "text", "text": "Attached file list.txt (text/plain):\n\nMilk\nEggs\n"},
            ],
        },
    ]
    url = body["messages"][1]["content"][1]["image_url"]["url"]
    assert base64.b64decode(url.removeprefix("data:image/png;base64,")) == PNG


async def test_a_pdf_is_sent_as_its_extracted_text(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    pdf = make_pdf([["Invoice 42", "Total: 7 EUR"]])
    ref = file_ref("invoice.pdf", "application/pdf", pdf)

    body = await send(
        provider,
        fake_openai,
        [ChatMessage("user", "", attachments=(model_attachment(ref, pdf, 1000),))],
    )

    # No leading text part: the message itself had no text.
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "Attached file invoice.pdf (application/pdf):\n\n"
                    "Invoice 42\nTotal: 7 EUR",
                }
            ],
        }
    ]


async def test_messages_without_attachments_stay_plain_strings(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    image = Attachment(ref=file_ref("a.png", "image/png", PNG, width=1, height=1), data=PNG)
    messages = [
        ChatMessage("user", "Look", attachments=(image,)),
        ChatMessage("assistant", "A dot."),
        ChatMessage("user", "Thanks"),
    ]

    body = await send(provider, fake_openai, messages)

    assert isinstance(body["messages"][0]["content"], list)
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "A dot."},
        {"role": "user", "content": "Thanks"},
    ]


async def test_an_estimated_usage_counts_the_images(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(chunks=["A cat."], usage=None)
    ref = file_ref("cat.jpg", "image/jpeg", b"jpeg", width=1024, height=1024)
    messages = [ChatMessage("user", "What?", attachments=(Attachment(ref=ref, data=b"jpeg"),))]

    chunks = [c async for c in provider.stream(model_for(fake_openai), messages)]

    end = chunks[-1]
    assert isinstance(end, Completed)
    assert end.usage == estimate_usage(messages, "A cat.")
    assert end.usage.prompt_tokens > 765


async def test_an_attachment_whose_content_was_not_loaded_is_not_sent(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    ref = file_ref("a.png", "image/png", PNG)
    messages = [ChatMessage("user", "Look", attachments=(Attachment(ref=ref),))]

    with pytest.raises(ProviderError, match="not loaded"):
        await send(provider, fake_openai, messages)

    assert fake_openai.requests == []
