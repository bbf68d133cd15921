"""What a model provider is: an async stream of reasoning and text deltas, then an end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol

import msgspec

from turnstream.settings import ModelConfig


class ChatMessage(msgspec.Struct, frozen=True):
    """One message the model sees, in order: system prompt first."""

    role: Literal["system", "user", "assistant"]
    content: str


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


class Completed(msgspec.Struct, frozen=True, kw_only=True):
    """The model finished. ``usage`` is None when the server did not report it."""

    finish_reason: str = "stop"
    usage: Usage | None = None


Chunk = TextDelta | ReasoningDelta | Completed


class ProviderError(Exception):
    """The provider failed (unreachable, refused, broke off). The message is safe to show."""

    def __init__(self, message: str, *, code: str = "provider_error") -> None:
        super().__init__(message)
        self.code = code


class Provider(Protocol):
    """Streams one answer. Ends with exactly one :class:`Completed` or raises ProviderError."""

    def stream(self, model: ModelConfig, messages: list[ChatMessage]) -> AsyncIterator[Chunk]: ...


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for when a server reports none."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimate_usage(messages: list[ChatMessage], answer: str, reasoning: str = "") -> Usage:
    prompt = sum(estimate_tokens(m.content) + 4 for m in messages)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=estimate_tokens(answer) + estimate_tokens(reasoning),
        estimated=True,
    )
