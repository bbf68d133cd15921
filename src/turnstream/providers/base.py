"""What a model provider is: an async stream of reasoning, text and tool-call deltas,
then an end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol

import msgspec

from turnstream.domain.tools import ToolSpec
from turnstream.settings import ModelConfig


class ToolCallRequest(msgspec.Struct, frozen=True):
    """A call the model made in an earlier step, as the model is shown it again."""

    call_id: str
    name: str
    arguments: str
    """The arguments' JSON text."""


class ChatMessage(msgspec.Struct, frozen=True):
    """One message the model sees, in order: system prompt first.

    An assistant message of a step that called tools carries the calls; each call's
    result follows as a ``tool`` message naming its ``tool_call_id``.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


class TextDelta(msgspec.Struct, frozen=True):
    """A piece of the answer (one or more tokens)."""

    text: str


class ReasoningDelta(msgspec.Struct, frozen=True):
    """A piece of the model's reasoning, shown apart from the answer."""

    text: str


class ToolCallBegun(msgspec.Struct, frozen=True):
    """The model began a tool call (its id and the tool's name)."""

    call_id: str
    name: str


class ToolCallArguments(msgspec.Struct, frozen=True):
    """A piece of a begun call's arguments (JSON text)."""

    call_id: str
    text: str


class Completed(msgspec.Struct, frozen=True, kw_only=True):
    """The model finished. ``usage`` is None when the server did not report it."""

    finish_reason: str = "stop"
    usage: Usage | None = None


Chunk = TextDelta | ReasoningDelta | ToolCallBegun | ToolCallArguments | Completed


class ProviderError(Exception):
    """The provider failed (unreachable, refused, broke off). The message is safe to show."""

    def __init__(self, message: str, *, code: str = "provider_error") -> None:
        super().__init__(message)
        self.code = code


class Provider(Protocol):
    """Streams one model step. Ends with exactly one :class:`Completed` or raises
    ProviderError. With ``tools``, the model may call them (``ToolCallBegun`` then its
    ``ToolCallArguments``; ``finish_reason`` "tool_calls")."""

    def stream(
        self, model: ModelConfig, messages: list[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[Chunk]: ...


def tool_param(tool: ToolSpec) -> dict[str, Any]:
    """A tool as an OpenAI-compatible server takes it."""
    return msgspec.to_builtins(tool)  # type: ignore[no-any-return]


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for when a server reports none."""
    return max(1, (len(text) + 3) // 4) if text else 0


def message_tokens(message: ChatMessage) -> int:
    """A message's rough token count, with its calls' arguments."""
    calls = sum(estimate_tokens(c.name + c.arguments) for c in message.tool_calls)
    return estimate_tokens(message.content) + calls + 4


def estimate_usage(messages: list[ChatMessage], answer: str, reasoning: str = "") -> Usage:
    prompt = sum(message_tokens(m) for m in messages)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=estimate_tokens(answer) + estimate_tokens(reasoning),
        estimated=True,
    )
