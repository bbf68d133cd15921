"""What a model provider is: an async stream of reasoning, text and tool-call deltas,
then an end."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol

import msgspec

# Re-exported: the providers' callers build messages with attachments from here.
from turnstream.domain.attachments import Attachment as Attachment
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
    result follows as a ``tool`` message naming its ``tool_call_id``. A user message
    may carry the files attached to it.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str | None = None
    attachments: tuple[Attachment, ...] = ()


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
    """The provider failed (unreachable, refused, broke off). The message is safe to show.

    ``retryable``: the same request may well succeed later (a timeout, a broken
    connection, HTTP 429 or 5xx), as opposed to a refusal of the request itself.
    ``retry_after_s``: how long the server asked to be left alone, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "provider_error",
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after_s = retry_after_s


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


# OpenAI's documented cost of an image at high detail: it is scaled to fit a square of
# _IMAGE_FIT pixels, then its shortest side down to _IMAGE_SHORT_SIDE; each _IMAGE_TILE
# pixel square tile costs _TOKENS_PER_TILE, plus _IMAGE_BASE_TOKENS once.
_IMAGE_FIT = 2048
_IMAGE_SHORT_SIDE = 768
_IMAGE_TILE = 512
_TOKENS_PER_TILE = 170
_IMAGE_BASE_TOKENS = 85
UNKNOWN_IMAGE_TOKENS = 765
"""An image whose size is unknown counts as a 1024x1024 one (four tiles)."""


def image_tokens(width: int | None, height: int | None) -> int:
    """An image's tokens by OpenAI's formula for high detail.

    High detail is what ``auto`` may choose, so counting it never undercounts what a
    server bills; other servers tile differently, but the budget only needs a bound of
    the right size.
    """
    if not width or not height or width <= 0 or height <= 0:
        return UNKNOWN_IMAGE_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > _IMAGE_FIT:
        scale = _IMAGE_FIT / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > _IMAGE_SHORT_SIDE:
        scale = _IMAGE_SHORT_SIDE / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / _IMAGE_TILE) * math.ceil(h / _IMAGE_TILE)
    return _TOKENS_PER_TILE * tiles + _IMAGE_BASE_TOKENS


def attachment_text(attachment: Attachment) -> str:
    """A text or PDF attachment as the model reads it: introduced by its name and type,
    so the model can tell several files apart and knows where one ends."""
    ref = attachment.ref
    return f"Attached file {ref.name} ({ref.media_type}):\n\n{attachment.text or ''}"


def attachment_tokens(attachment: Attachment) -> int:
    """An attachment's rough token count: an image by its size, a text by its text (or,
    not yet loaded, by its bytes: about four a token)."""
    if attachment.ref.kind == "image":
        return image_tokens(attachment.ref.width, attachment.ref.height)
    if attachment.text is None:
        return max(1, (attachment.ref.bytes + 3) // 4)
    return estimate_tokens(attachment_text(attachment))


def message_tokens(message: ChatMessage) -> int:
    """A message's rough token count, with its calls' arguments and its attachments."""
    calls = sum(estimate_tokens(c.name + c.arguments) for c in message.tool_calls)
    files = sum(attachment_tokens(a) for a in message.attachments)
    return estimate_tokens(message.content) + calls + files + 4


def estimate_usage(messages: list[ChatMessage], answer: str, reasoning: str = "") -> Usage:
    prompt = sum(message_tokens(m) for m in messages)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=estimate_tokens(answer) + estimate_tokens(reasoning),
        estimated=True,
    )
