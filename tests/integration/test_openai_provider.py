"""The OpenAI-compatible provider against a real local server speaking the OpenAI API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from turnstream.providers import (
    ChatMessage,
    Chunk,
    Completed,
    OpenAIProvider,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    estimate_usage,
    llm_title,
)
from turnstream.settings import ModelConfig

API_KEY_ENV = "TURNSTREAM_TEST_FAKE_KEY"
SECRET_KEY = "sk-test-0123456789abcdef-very-secret"

MESSAGES = [
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "Say hello."),
    ChatMessage("assistant", "Hello."),
    ChatMessage("user", "Again, louder!"),
]


@pytest.fixture
async def provider() -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider()
    yield provider
    await provider.aclose()


def model_for(server: FakeOpenAI, **overrides: Any) -> ModelConfig:
    model = ModelConfig(
        id="fake-chat", model="fake-model-7b", base_url=server.base_url, timeout_s=10.0
    )
    return msgspec.structs.replace(model, **overrides)


async def collect(
    provider: OpenAIProvider, model: ModelConfig, into: list[Chunk] | None = None
) -> list[Chunk]:
    """Every chunk of one stream; ``into`` keeps what arrived before an error."""
    received = [] if into is None else into
    async for chunk in provider.stream(model, MESSAGES):
        received.append(chunk)
    return received


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


def reasoning_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, ReasoningDelta))


async def test_text_deltas_concatenate_to_the_scripted_answer(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(chunks=["Hel", "lo", ",", " wor", "ld", "!"])

    chunks = await collect(provider, model_for(fake_openai))

    texts = [c.text for c in chunks if isinstance(c, TextDelta)]
    assert texts == ["Hel", "lo", ",", " wor", "ld", "!"]
    assert isinstance(chunks[-1], Completed)
    assert chunks[-1].finish_reason == "stop"
    assert sum(isinstance(c, Completed) for c in chunks) == 1


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_arrive_before_the_answer_for_either_field_name(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, field: str
) -> None:
    fake_openai.script(reasoning=["Let me", " think."], reasoning_field=field, chunks=["Yes."])

    chunks = await collect(provider, model_for(fake_openai))

    assert reasoning_of(chunks) == "Let me think."
    assert text_of(chunks) == "Yes."
    kinds = [type(c) for c in chunks]
    assert kinds.index(TextDelta) > max(i for i, k in enumerate(kinds) if k is ReasoningDelta)


async def test_usage_comes_from_the_server_when_it_sends_it(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(usage=(42, 9))

    end = (await collect(provider, model_for(fake_openai)))[-1]

    assert isinstance(end, Completed)
    assert end.usage is not None
    assert (end.usage.prompt_tokens, end.usage.completion_tokens) == (42, 9)
    assert end.usage.estimated is False


async def test_usage_is_estimated_when_the_server_sends_none(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(chunks=["An answer", " of some length."], reasoning=["Hmm."], usage=None)

    end = (await collect(provider, model_for(fake_openai)))[-1]

    assert isinstance(end, Completed)
    assert end.usage == estimate_usage(MESSAGES, "An answer of some length.", "Hmm.")
    assert end.usage.estimated is True


async def test_the_request_asks_for_a_stream_with_usage_and_carries_the_exact_messages(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    model = model_for(fake_openai, max_output_tokens=256, temperature=0.3)

    await collect(provider, model)

    [body] = fake_openai.requests
    assert body["model"] == "fake-model-7b"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again, louder!"},
    ]
    assert body["max_tokens"] == 256
    assert body["temperature"] == 0.3


async def test_unset_limits_are_not_sent(fake_openai: FakeOpenAI, provider: OpenAIProvider) -> None:
    await collect(provider, model_for(fake_openai))

    [body] = fake_openai.requests
    assert "max_tokens" not in body
    assert "temperature" not in body


async def test_the_api_key_is_read_from_the_configured_variable(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_ENV, SECRET_KEY)

    await collect(provider, model_for(fake_openai, api_key_env=API_KEY_ENV))
    await collect(provider, model_for(fake_openai))

    assert fake_openai.headers[0]["authorization"] == f"Bearer {SECRET_KEY}"
    assert fake_openai.headers[1]["authorization"] == "Bearer not-needed"


async def test_a_stream_without_finish_reason_or_done_still_completes_with_stop(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(chunks=["partial", " but clean"], finish_reason=None, done=False)

    chunks = await collect(provider, model_for(fake_openai))

    assert text_of(chunks) == "partial but clean"
    end = chunks[-1]
    assert isinstance(end, Completed)
    assert end.finish_reason == "stop"


async def test_the_servers_finish_reason_is_passed_on(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(finish_reason="length")

    end = (await collect(provider, model_for(fake_openai)))[-1]

    assert isinstance(end, Completed)
    assert end.finish_reason == "length"


@pytest.mark.parametrize("status", [500, 401])
async def test_an_http_error_becomes_a_provider_error_with_the_status_and_no_key(
    fake_openai: FakeOpenAI,
    provider: OpenAIProvider,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
) -> None:
    monkeypatch.setenv(API_KEY_ENV, SECRET_KEY)
    # Some servers echo the refused key back; it must not reach the user.
    fake_openai.script(status=status, error_message=f"Incorrect API key provided: {SECRET_KEY}")

    with pytest.raises(ProviderError) as caught:
        await collect(provider, model_for(fake_openai, api_key_env=API_KEY_ENV))

    message = str(caught.value)
    assert str(status) in message
    assert "Incorrect API key provided" in message
    assert SECRET_KEY not in message
    assert "Traceback" not in message
    assert caught.value.code == "provider_error"
    # No silent retries: one failed turn is one request.
    assert len(fake_openai.requests) == 1


async def test_an_unreachable_server_is_a_provider_error(provider: OpenAIProvider) -> None:
    with FakeOpenAI() as server:
        model = model_for(server)
    # The server is gone now, so its port refuses connections.

    with pytest.raises(ProviderError) as caught:
        await collect(provider, model)

    assert caught.value.code == "provider_error"
    assert "could not be reached" in str(caught.value)


async def test_a_connection_broken_mid_stream_raises_after_the_first_deltas(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        reasoning=["Thinking"], chunks=["one", " two", " three", " four"], break_after=3
    )
    received: list[Chunk] = []

    with pytest.raises(ProviderError) as caught:
        await collect(provider, model_for(fake_openai), into=received)

    assert received == [ReasoningDelta("Thinking"), TextDelta("one"), TextDelta(" two")]
    assert caught.value.code == "provider_error"
    assert "broke off" in str(caught.value)


async def test_a_silent_server_times_out_with_provider_timeout(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(chunks=["slow"], delay_s=1.0)

    with pytest.raises(ProviderError) as caught:
        await collect(provider, model_for(fake_openai, timeout_s=0.2))

    assert caught.value.code == "provider_timeout"


async def test_complete_returns_the_answer_text_without_reasoning(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(reasoning=["hidden"], chunks=["The", " answer"])

    assert await provider.complete(model_for(fake_openai), MESSAGES) == "The answer"


async def test_llm_title_returns_the_cleaned_reply(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(chunks=['"Event', " sourcing", ' basics."', "\n"])

    title = await llm_title(provider, model_for(fake_openai), "What is event sourcing?")

    assert title == "Event sourcing basics"
    [body] = fake_openai.requests
    assert body["messages"][0]["role"] == "system"
    assert "6 words" in body["messages"][0]["content"]
    assert body["messages"][1] == {"role": "user", "content": "What is event sourcing?"}


async def test_llm_title_falls_back_to_the_heuristic_when_the_server_fails(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(status=503, error_message="overloaded")

    title = await llm_title(provider, model_for(fake_openai), "Plan a trip to Lisbon. Three days.")

    assert title == "Plan a trip to Lisbon"
