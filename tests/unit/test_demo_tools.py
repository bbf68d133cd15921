"""The demo model with tools: it calls the tools a message names, then answers with
their results, deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import jsonschema
import msgspec
import pytest

from turnstream.domain.tools import FunctionSpec, ToolSpec, parse_arguments
from turnstream.providers import (
    ChatMessage,
    Chunk,
    Completed,
    DemoProvider,
    ReasoningDelta,
    TextDelta,
)
from turnstream.providers.base import ToolCallArguments, ToolCallBegun, ToolCallRequest
from turnstream.providers.demo import count_prompt_tokens
from turnstream.settings import DEMO_MODEL


def tool(name: str, parameters: dict[str, Any] | None = None) -> ToolSpec:
    if parameters is None:
        return ToolSpec(function=FunctionSpec(name=name))
    return ToolSpec(function=FunctionSpec(name=name, parameters=parameters))


WEATHER = tool(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 3},
            "verbose": {"type": "boolean"},
        },
        "required": ["city", "unit"],
    },
)
TIME = tool("get_time")
SEARCH = tool(
    "web-search",
    {
        "type": "object",
        "$defs": {"filters": {"type": "object", "properties": {"safe": {"type": "boolean"}}}},
        "properties": {
            "query": {"type": "string", "minLength": 8, "maxLength": 20},
            "limit": {"type": "integer", "minimum": 5},
            "ratio": {"type": "number", "exclusiveMaximum": 0.5},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "lang": {"type": ["string", "null"], "default": "en"},
            "options": {
                "type": "object",
                "properties": {
                    "depth": {"anyOf": [{"type": "integer", "minimum": 2}, {"type": "null"}]},
                    "filters": {"$ref": "#/$defs/filters"},
                },
                "required": ["depth", "filters"],
            },
        },
        "required": ["query", "limit", "ratio", "tags", "options"],
        "additionalProperties": False,
    },
)
TOOLS = (WEATHER, TIME, SEARCH)


def asking(text: str) -> list[ChatMessage]:
    return [ChatMessage("system", "You are helpful."), ChatMessage("user", text)]


async def collect(
    messages: list[ChatMessage],
    tools: Sequence[ToolSpec] = TOOLS,
    provider: DemoProvider | None = None,
) -> list[Chunk]:
    provider = provider or DemoProvider(tokens_per_s=0, tokens=30)
    return [chunk async for chunk in provider.stream(DEMO_MODEL, messages, tools)]


def calls_of(chunks: list[Chunk]) -> list[tuple[str, str, str]]:
    """Each call as (id, name, arguments text), in the order begun."""
    calls: dict[str, tuple[str, str]] = {}
    for chunk in chunks:
        if isinstance(chunk, ToolCallBegun):
            calls[chunk.call_id] = (chunk.name, "")
        elif isinstance(chunk, ToolCallArguments):
            name, text = calls[chunk.call_id]
            calls[chunk.call_id] = (name, text + chunk.text)
    return [(call_id, name, text) for call_id, (name, text) in calls.items()]


def arguments_of(chunks: list[Chunk]) -> Any:
    [(_, _, text)] = calls_of(chunks)
    return msgspec.json.decode(text)


def answer_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


def end_of(chunks: list[Chunk]) -> Completed:
    end = chunks[-1]
    assert isinstance(end, Completed)
    assert sum(isinstance(c, Completed) for c in chunks) == 1
    return end


async def test_a_named_tool_is_called_after_the_reasoning_and_the_step_ends_with_tool_calls() -> (
    None
):
    chunks = await collect(asking("What is the weather in Oslo? Use get_weather."))

    [(call_id, name, _)] = calls_of(chunks)
    assert name == "get_weather"
    assert call_id.startswith("call_")
    kinds = [type(c) for c in chunks]
    begun = kinds.index(ToolCallBegun)
    assert kinds[0] is ReasoningDelta
    assert set(kinds[:begun]) == {ReasoningDelta}
    assert set(kinds[begun + 1 : -1]) == {ToolCallArguments}
    assert kinds.count(ToolCallArguments) >= 2  # streamed in pieces, not at once
    assert TextDelta not in kinds
    end = end_of(chunks)
    assert end.finish_reason == "tool_calls"
    assert end.usage is not None
    assert end.usage.completion_tokens == len(chunks) - 1
    assert end.usage.estimated is False


@pytest.mark.parametrize("spec", TOOLS, ids=lambda t: t.name)
async def test_the_arguments_are_valid_against_the_tools_schema(spec: ToolSpec) -> None:
    chunks = await collect(asking(f"Please call {spec.name} about Lisbon"))

    [(_, name, text)] = calls_of(chunks)
    assert name == spec.name
    arguments, problem = parse_arguments(text)
    assert problem is None
    jsonschema.validate(arguments, spec.function.parameters)


async def test_arguments_take_the_users_words_enums_and_defaults() -> None:
    chunks = await collect(asking("Call get_weather for Oslo"))

    # city: a word of the message that is not the tool's; unit: the first enum value;
    # days: its default; verbose (optional, no default) is left out.
    assert arguments_of(chunks) == {"city": "Oslo", "unit": "celsius", "days": 3}


async def test_a_string_without_a_word_to_take_is_demo() -> None:
    chunks = await collect(asking("get_weather"))

    assert arguments_of(chunks)["city"] == "demo"


async def test_nested_bounds_refs_and_unions_are_respected() -> None:
    chunks = await collect(asking("web search Lisbon"))

    assert arguments_of(chunks) == {
        "query": "Lisbonoo",
        "limit": 5,
        "ratio": 0,
        "tags": ["Lisbon", "Lisbon"],
        "lang": "en",
        "options": {"depth": 2, "filters": {}},
    }


@pytest.mark.parametrize(
    "text", ["GET WEATHER in Oslo", "get-weather for Oslo", "use get weather", "(get_weather)"]
)
async def test_a_name_may_be_written_in_any_case_with_spaces_or_hyphens(text: str) -> None:
    [(_, name, _)] = calls_of(await collect(asking(text)))

    assert name == "get_weather"


@pytest.mark.parametrize(
    "text", ["get_weathers in Oslo", "forget_weather", "budget weather", "getweather", "weather"]
)
async def test_a_name_inside_a_longer_word_or_only_in_part_is_no_call(text: str) -> None:
    chunks = await collect(asking(text))

    assert calls_of(chunks) == []
    assert end_of(chunks).finish_reason == "stop"


async def test_of_two_overlapping_names_the_longer_is_called() -> None:
    tools = (tool("get"), WEATHER)

    chunks = await collect(asking("get weather in Oslo"), tools)

    assert [name for _, name, _ in calls_of(chunks)] == ["get_weather"]


async def test_several_named_tools_are_called_in_one_step_in_the_order_named() -> None:
    chunks = await collect(asking("First get_time, then get_weather for Oslo, then get_time."))

    calls = calls_of(chunks)
    assert [name for _, name, _ in calls] == ["get_time", "get_weather"]
    assert len({call_id for call_id, _, _ in calls}) == 2
    assert end_of(chunks).finish_reason == "tool_calls"


async def test_the_same_conversation_gives_the_same_call_and_another_a_new_id() -> None:
    messages = asking("Weather in Oslo? get_weather")

    first = await collect(messages)
    again = await collect([*messages])
    elsewhere = await collect([ChatMessage("system", "Be brief."), messages[1]])

    assert first == again
    [(first_id, _, first_args)] = calls_of(first)
    [(other_id, _, other_args)] = calls_of(elsewhere)
    assert other_id != first_id
    assert other_args == first_args


async def test_after_the_results_it_answers_with_them_and_calls_nothing_more() -> None:
    messages = asking("First get_time, then get_weather for Oslo.")
    calls = calls_of(await collect(messages))
    outputs = {"get_time": "12:00", "get_weather": '{"sky": "clear",\n "wind": 3}'}
    messages += [
        ChatMessage("assistant", "", tool_calls=tuple(ToolCallRequest(*call) for call in calls)),
        *(ChatMessage("tool", outputs[name], tool_call_id=i) for i, name, _ in calls),
    ]
    provider = DemoProvider(tokens_per_s=0, tokens=30)

    chunks = await collect(messages, provider=provider)

    assert calls_of(chunks) == []
    lead = 'The tool get_time answered: 12:00. The tool get_weather answered: {"sky": "clear", '
    lead += '"wind": 3}.\n\n'
    assert answer_of(chunks).startswith(lead + "This is the turnstream demo model.")
    kinds = [type(c) for c in chunks]
    assert kinds[0] is ReasoningDelta
    end = end_of(chunks)
    assert end.finish_reason == "stop"
    assert end.usage is not None
    assert end.usage.completion_tokens == len(chunks) - 1
    assert end.usage.prompt_tokens == count_prompt_tokens(messages)
    # The usual answer length follows the results.
    plain = await collect(asking("hi"), provider=provider)
    text_tokens = sum(isinstance(c, TextDelta) for c in chunks)
    assert text_tokens > sum(isinstance(c, TextDelta) for c in plain) == 30


async def test_max_output_tokens_cuts_an_answer_after_results_with_length() -> None:
    messages = [
        *asking("get_time"),
        ChatMessage("assistant", "", tool_calls=(ToolCallRequest("call_1", "get_time", "{}"),)),
        ChatMessage("tool", "12:00", tool_call_id="call_1"),
    ]
    model = msgspec.structs.replace(DEMO_MODEL, max_output_tokens=4)

    provider = DemoProvider(tokens_per_s=0, tokens=30)
    chunks = [c async for c in provider.stream(model, messages, TOOLS)]

    assert answer_of(chunks) == "The tool get_time answered:"
    assert end_of(chunks).finish_reason == "length"


@pytest.mark.parametrize("tools", [(), TOOLS], ids=["no tools", "tools offered"])
async def test_without_a_named_tool_it_answers_exactly_as_without_tools(
    tools: Sequence[ToolSpec],
) -> None:
    messages = asking("What is event sourcing?")
    provider = DemoProvider(tokens_per_s=0, tokens=40)
    before = [c async for c in provider.stream(DEMO_MODEL, messages)]

    chunks = await collect(messages, tools, provider)

    assert chunks == before
    assert answer_of(chunks).startswith("This is the turnstream demo model.")


async def test_a_named_tool_that_is_not_offered_is_not_called() -> None:
    chunks = await collect(asking("Use get_weather for Oslo"), (TIME,))

    assert calls_of(chunks) == []


async def test_the_prompt_count_includes_earlier_calls() -> None:
    call = ToolCallRequest("call_1", "get_weather", '{"city": "Oslo"}')
    bare = [ChatMessage("assistant", "")]

    assert count_prompt_tokens([ChatMessage("assistant", "", tool_calls=(call,))]) > (
        count_prompt_tokens(bare)
    )


async def test_a_call_step_is_paced_like_an_answer() -> None:
    provider = DemoProvider(tokens_per_s=200, tokens=20)
    loop = asyncio.get_running_loop()

    started = loop.time()
    chunks = await collect(asking("get_weather for Oslo"), provider=provider)
    elapsed = loop.time() - started

    # Lower bound only: each piece waits for its slot on an absolute schedule.
    pieces = len(chunks) - 1
    assert pieces >= 10
    assert elapsed >= (pieces - 1) / 200
