"""The OpenAI-compatible provider against a real local server speaking the OpenAI API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest

from tests.support.fake_openai import FakeOpenAI, Script, ToolCallScript
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from turnstream.domain.tools import FunctionSpec, ToolSpec
from turnstream.providers import (
    ChatMessage,
    Chunk,
    Completed,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Usage,
    estimate_tokens,
    estimate_usage,
    llm_title,
)
from turnstream.providers.base import ToolCallArguments, ToolCallBegun, ToolCallRequest
from turnstream.providers.openai import OpenAIProvider
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


# Tool calls, streamed the way OpenAI and vLLM stream them.

WEATHER = ToolSpec(
    function=FunctionSpec(
        name="get_weather",
        description="The weather in a city.",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    )
)
TIME = ToolSpec(function=FunctionSpec(name="get_time", description="The time in a city."))
OSLO = ['{"ci', 'ty": ', '"Oslo"}']


async def step(
    provider: OpenAIProvider,
    model: ModelConfig,
    messages: list[ChatMessage] = MESSAGES,
    tools: Sequence[ToolSpec] = (WEATHER, TIME),
    into: list[Chunk] | None = None,
) -> list[Chunk]:
    """Every chunk of one model step offered ``tools``."""
    received = [] if into is None else into
    async for chunk in provider.stream(model, messages, tools):
        received.append(chunk)
    return received


def calls_of(chunks: list[Chunk]) -> dict[str, tuple[str, str]]:
    """Each call's name and reassembled arguments, by id, checking that every call is
    begun once and before any of its arguments."""
    calls: dict[str, tuple[str, str]] = {}
    for chunk in chunks:
        if isinstance(chunk, ToolCallBegun):
            assert chunk.call_id not in calls, f"{chunk.call_id} begun twice"
            calls[chunk.call_id] = (chunk.name, "")
        elif isinstance(chunk, ToolCallArguments):
            assert chunk.call_id in calls, f"arguments of {chunk.call_id} before it began"
            name, text = calls[chunk.call_id]
            calls[chunk.call_id] = (name, text + chunk.text)
    return calls


async def test_a_tool_call_is_begun_then_streams_its_arguments_and_finishes_with_tool_calls(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=(),
        tool_calls=[ToolCallScript(id="call_a", name="get_weather", arguments_chunks=OSLO)],
        finish_reason="tool_calls",
    )

    chunks = await step(provider, model_for(fake_openai))

    assert chunks == [
        ToolCallBegun("call_a", "get_weather"),
        ToolCallArguments("call_a", '{"ci'),
        ToolCallArguments("call_a", 'ty": '),
        ToolCallArguments("call_a", '"Oslo"}'),
        Completed(finish_reason="tool_calls", usage=Usage(prompt_tokens=11, completion_tokens=7)),
    ]


async def test_text_before_a_call_streams_first(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=["Let me", " check."],
        tool_calls=[ToolCallScript(id="call_a", name="get_weather", arguments_chunks=OSLO)],
        finish_reason="tool_calls",
    )

    chunks = await step(provider, model_for(fake_openai))

    assert chunks[:3] == [
        TextDelta("Let me"),
        TextDelta(" check."),
        ToolCallBegun("call_a", "get_weather"),
    ]
    assert calls_of(chunks) == {"call_a": ("get_weather", '{"city": "Oslo"}')}


async def test_a_name_split_over_entries_is_begun_once_whole(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=(),
        tool_calls=[
            ToolCallScript(
                id="call_a",
                name="get_weather",
                name_chunks=["get", "_wea", "ther"],
                arguments_chunks=OSLO,
            )
        ],
        finish_reason="tool_calls",
    )

    chunks = await step(provider, model_for(fake_openai))

    assert [c for c in chunks if isinstance(c, ToolCallBegun)] == [
        ToolCallBegun("call_a", "get_weather")
    ]
    assert calls_of(chunks) == {"call_a": ("get_weather", '{"city": "Oslo"}')}


async def test_a_split_name_whose_arguments_never_come_is_begun_at_the_end(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=(),
        tool_calls=[ToolCallScript(id="call_t", name="get_time", name_chunks=["get_", "time"])],
        finish_reason="tool_calls",
    )

    chunks = await step(provider, model_for(fake_openai))

    assert chunks[0] == ToolCallBegun("call_t", "get_time")
    assert len(chunks) == 2
    assert isinstance(chunks[1], Completed)


async def test_arguments_in_the_entry_that_names_the_call_follow_its_begun(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    # Ollama sends a whole call in one entry: name and arguments together.
    fake_openai.script(
        chunks=(),
        tool_calls=[
            ToolCallScript(
                id="call_a",
                name="get_weather",
                arguments_chunks=['{"city": "Oslo"}'],
                arguments_in_first_entry=True,
            )
        ],
        finish_reason="tool_calls",
    )

    chunks = await step(provider, model_for(fake_openai))

    assert chunks[:2] == [
        ToolCallBegun("call_a", "get_weather"),
        ToolCallArguments("call_a", '{"city": "Oslo"}'),
    ]


async def test_a_server_repeating_id_and_name_in_every_entry_gives_one_call(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=(),
        tool_calls=[
            ToolCallScript(
                id="call_a", name="get_weather", arguments_chunks=OSLO, repeat_header=True
            )
        ],
        finish_reason="tool_calls",
    )

    chunks = await step(provider, model_for(fake_openai))

    assert calls_of(chunks) == {"call_a": ("get_weather", '{"city": "Oslo"}')}


async def test_two_parallel_calls_interleaved_reassemble_apart(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=(),
        tool_calls=[
            ToolCallScript(
                id="call_a",
                name="get_weather",
                name_chunks=["get_", "weather"],
                arguments_chunks=OSLO,
            ),
            ToolCallScript(id="call_b", name="get_time", arguments_chunks=['{"ci', 'ty": "Lima"}']),
        ],
        interleave=True,
        finish_reason="tool_calls",
    )

    chunks = await step(provider, model_for(fake_openai))

    assert calls_of(chunks) == {
        "call_a": ("get_weather", '{"city": "Oslo"}'),
        "call_b": ("get_time", '{"city": "Lima"}'),
    }
    # Really interleaved: the second call began before the first one's arguments ended.
    begun_b = chunks.index(ToolCallBegun("call_b", "get_time"))
    assert chunks.index(ToolCallArguments("call_a", '"Oslo"}')) > begun_b
    end = chunks[-1]
    assert isinstance(end, Completed)
    assert end.finish_reason == "tool_calls"


async def test_calls_without_ids_get_distinct_ids_that_repeat_for_the_same_request(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=(),
        tool_calls=[
            ToolCallScript(name="get_weather", arguments_chunks=OSLO),
            ToolCallScript(name="get_time", arguments_chunks=["{}"]),
        ],
        interleave=True,
        finish_reason="tool_calls",
    )
    model = model_for(fake_openai)
    other = [*MESSAGES, ChatMessage("assistant", "Louder."), ChatMessage("user", "More.")]

    first = calls_of(await step(provider, model))
    again = calls_of(await step(provider, model))
    elsewhere = calls_of(await step(provider, model, other))

    assert sorted(first.values()) == [("get_time", "{}"), ("get_weather", '{"city": "Oslo"}')]
    weather, time = first
    assert weather.startswith("call_0_")
    assert time.startswith("call_1_")
    assert again == first
    assert set(elsewhere).isdisjoint(first)


@pytest.mark.parametrize("with_ids", [True, False])
async def test_calls_all_sent_at_index_0_are_still_told_apart(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, with_ids: bool
) -> None:
    # Some servers number every call 0: a new id, or a new name after the arguments
    # began, is a new call.
    fake_openai.script(
        chunks=(),
        tool_calls=[
            ToolCallScript(
                id="call_a" if with_ids else None,
                name="get_weather",
                arguments_chunks=OSLO,
                index=0,
            ),
            ToolCallScript(
                id="call_b" if with_ids else None,
                name="get_time",
                arguments_chunks=["{}"],
                index=0,
            ),
        ],
        finish_reason="tool_calls",
    )

    calls = calls_of(await step(provider, model_for(fake_openai)))

    assert list(calls.values()) == [("get_weather", '{"city": "Oslo"}'), ("get_time", "{}")]
    if with_ids:
        assert list(calls) == ["call_a", "call_b"]


async def test_a_server_id_already_used_in_the_conversation_is_replaced(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    # Servers that number calls per request send call_0 in every step.
    earlier = [
        ChatMessage("user", "Weather?"),
        ChatMessage("assistant", "", tool_calls=(ToolCallRequest("call_0", "get_time", "{}"),)),
        ChatMessage("tool", "12:00", tool_call_id="call_0"),
    ]
    fake_openai.script(
        chunks=(),
        tool_calls=[ToolCallScript(id="call_0", name="get_weather", arguments_chunks=OSLO)],
        finish_reason="tool_calls",
    )

    calls = calls_of(await step(provider, model_for(fake_openai), earlier))

    [call_id] = calls
    assert call_id != "call_0"
    assert call_id.startswith("call_0_")
    assert calls[call_id] == ("get_weather", '{"city": "Oslo"}')


async def test_tools_are_sent_only_when_given(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    model = model_for(fake_openai)

    await step(provider, model, tools=())
    await step(provider, model, tools=[WEATHER])

    without, with_tools = fake_openai.requests
    assert "tools" not in without
    assert with_tools["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]


async def test_calls_and_their_results_are_sent_back_in_openai_format(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    messages = [
        ChatMessage("user", "Weather and time in Oslo?"),
        ChatMessage(
            "assistant",
            "",
            tool_calls=(
                ToolCallRequest("call_a", "get_weather", '{"city": "Oslo"}'),
                ToolCallRequest("call_b", "get_time", "{}"),
            ),
        ),
        ChatMessage("tool", '{"sky": "clear"}', tool_call_id="call_a"),
        ChatMessage("tool", "12:00", tool_call_id="call_b"),
        ChatMessage(
            "assistant",
            "Checking once more.",
            tool_calls=(ToolCallRequest("call_c", "get_time", "{}"),),
        ),
        ChatMessage("tool", "12:01", tool_call_id="call_c"),
    ]

    await step(provider, model_for(fake_openai), messages)

    [body] = fake_openai.requests
    assert body["messages"] == [
        {"role": "user", "content": "Weather and time in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
        {
            "role": "assistant",
            "content": "Checking once more.",
            "tool_calls": [
                {
                    "id": "call_c",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_c", "content": "12:01"},
    ]


async def test_a_two_step_turn_sends_the_calls_and_results_back_then_gets_the_answer(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.queue(
        Script(
            chunks=(),
            tool_calls=[ToolCallScript(id="call_a", name="get_weather", arguments_chunks=OSLO)],
            finish_reason="tool_calls",
        ),
        Script(chunks=["Clear", " skies", " in Oslo."]),
    )
    model = model_for(fake_openai)
    messages = [ChatMessage("user", "Weather in Oslo?")]

    first = await step(provider, model, messages)
    # What the runner does between the steps: the calls, then one result each.
    [(call_id, (name, arguments))] = calls_of(first).items()
    messages += [
        ChatMessage("assistant", "", tool_calls=(ToolCallRequest(call_id, name, arguments),)),
        ChatMessage("tool", '{"sky": "clear"}', tool_call_id=call_id),
    ]
    second = await step(provider, model, messages)

    assert text_of(second) == "Clear skies in Oslo."
    end = second[-1]
    assert isinstance(end, Completed)
    assert end.finish_reason == "stop"
    first_body, second_body = fake_openai.requests
    assert len(first_body["messages"]) == 1
    assert second_body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"sky": "clear"}'},
    ]


async def test_an_estimated_usage_counts_the_calls(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=["Checking."],
        tool_calls=[ToolCallScript(id="call_a", name="get_weather", arguments_chunks=OSLO)],
        finish_reason="tool_calls",
        usage=None,
    )

    end = (await step(provider, model_for(fake_openai)))[-1]

    assert isinstance(end, Completed)
    text_only = estimate_usage(MESSAGES, "Checking.")
    assert end.usage == Usage(
        prompt_tokens=text_only.prompt_tokens,
        completion_tokens=text_only.completion_tokens
        + estimate_tokens('get_weather{"city": "Oslo"}'),
        estimated=True,
    )


async def test_a_stream_broken_before_a_call_is_named_whole_begins_no_call(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=(),
        tool_calls=[
            ToolCallScript(
                id="call_a",
                name="get_weather",
                name_chunks=["get_", "weather"],
                arguments_chunks=OSLO,
            )
        ],
        break_after=2,
    )
    received: list[Chunk] = []

    with pytest.raises(ProviderError):
        await step(provider, model_for(fake_openai), into=received)

    assert received == []


async def test_complete_returns_only_the_text_of_a_step_that_called_tools(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    fake_openai.script(
        chunks=["Let me check."],
        tool_calls=[ToolCallScript(id="call_a", name="get_weather", arguments_chunks=OSLO)],
        finish_reason="tool_calls",
    )

    assert await provider.complete(model_for(fake_openai), MESSAGES) == "Let me check."
