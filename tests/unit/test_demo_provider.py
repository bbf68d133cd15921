"""The built-in demo model: deterministic, paced, cancellable."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from turnstream.providers import (
    ChatMessage,
    Chunk,
    Completed,
    DemoProvider,
    ReasoningDelta,
    TextDelta,
)
from turnstream.providers.demo import count_prompt_tokens
from turnstream.settings import DEMO_MODEL

MESSAGES = [
    ChatMessage("system", "You are helpful."),
    ChatMessage("user", "What is event sourcing?"),
]


async def collect(provider: DemoProvider, messages: list[ChatMessage]) -> list[Chunk]:
    return [chunk async for chunk in provider.stream(DEMO_MODEL, messages)]


def answer_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


async def test_the_same_messages_give_the_same_stream() -> None:
    provider = DemoProvider(tokens_per_s=0, tokens=60)

    first = await collect(provider, MESSAGES)
    second = await collect(provider, list(MESSAGES))

    assert first == second


async def test_a_different_prompt_gives_a_different_answer() -> None:
    provider = DemoProvider(tokens_per_s=0, tokens=60)
    other = [MESSAGES[0], ChatMessage("user", "Tell me about NATS JetStream.")]

    assert answer_of(await collect(provider, MESSAGES)) != answer_of(await collect(provider, other))


async def test_the_answer_says_it_comes_from_the_demo_model() -> None:
    chunks = await collect(DemoProvider(tokens_per_s=0, tokens=40), MESSAGES)

    assert answer_of(chunks).startswith("This is the turnstream demo model.")


async def test_reasoning_comes_before_the_answer() -> None:
    chunks = await collect(DemoProvider(tokens_per_s=0, tokens=30), MESSAGES)
    kinds = [type(c) for c in chunks]

    first_text = kinds.index(TextDelta)
    assert ReasoningDelta in kinds[:first_text]
    assert ReasoningDelta not in kinds[first_text:]


async def test_the_answer_has_exactly_the_configured_number_of_tokens() -> None:
    chunks = await collect(DemoProvider(tokens_per_s=0, tokens=57), MESSAGES)

    assert sum(isinstance(c, TextDelta) for c in chunks) == 57


async def test_token_lengths_vary_like_real_tokens() -> None:
    chunks = await collect(DemoProvider(tokens_per_s=0, tokens=120), MESSAGES)
    lengths = {len(c.text) for c in chunks if isinstance(c, TextDelta)}

    assert len(lengths) >= 5
    assert min(lengths) >= 1
    assert max(lengths) <= 12


async def test_the_stream_ends_with_one_completed_with_exact_usage() -> None:
    chunks = await collect(DemoProvider(tokens_per_s=0, tokens=25), MESSAGES)

    completed = [c for c in chunks if isinstance(c, Completed)]
    assert completed == [chunks[-1]]
    end = chunks[-1]
    assert isinstance(end, Completed)
    assert end.finish_reason == "stop"
    assert end.usage is not None
    assert end.usage.estimated is False
    assert end.usage.completion_tokens == len(chunks) - 1
    assert end.usage.prompt_tokens == count_prompt_tokens(MESSAGES)
    assert end.usage.prompt_tokens > 0


async def test_max_output_tokens_cuts_the_answer_with_finish_reason_length() -> None:
    model = msgspec.structs.replace(DEMO_MODEL, max_output_tokens=10)
    provider = DemoProvider(tokens_per_s=0, tokens=50)

    chunks = [c async for c in provider.stream(model, MESSAGES)]

    assert sum(isinstance(c, TextDelta) for c in chunks) == 10
    end = chunks[-1]
    assert isinstance(end, Completed)
    assert end.finish_reason == "length"


async def test_the_stream_is_paced_at_the_configured_speed() -> None:
    provider = DemoProvider(tokens_per_s=200, tokens=20)
    loop = asyncio.get_running_loop()

    started = loop.time()
    await collect(provider, MESSAGES)
    elapsed = loop.time() - started

    # Lower bound only: a slow machine may take longer, never less.
    assert elapsed >= 0.08


async def test_cancelling_mid_stream_raises_cancelled_error() -> None:
    provider = DemoProvider(tokens_per_s=50, tokens=200)
    received: list[Chunk] = []

    async def consume() -> None:
        async for chunk in provider.stream(DEMO_MODEL, MESSAGES):
            received.append(chunk)

    task = asyncio.create_task(consume())
    while len(received) < 3:
        await asyncio.sleep(0.01)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(isinstance(c, Completed) for c in received)
