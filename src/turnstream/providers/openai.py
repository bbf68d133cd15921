"""Any OpenAI-compatible chat completions server (OpenAI, vLLM, llama.cpp, Ollama, ...)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from turnstream.providers.base import (
    ChatMessage,
    Chunk,
    Completed,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Usage,
    estimate_usage,
)
from turnstream.settings import ModelConfig

# Local servers accept any key, but the SDK refuses to build a client without one.
PLACEHOLDER_API_KEY = "not-needed"

# Servers disagree on where reasoning goes: DeepSeek and vLLM use ``reasoning_content``,
# Ollama and OpenRouter use ``reasoning``. Neither is in the SDK's typed model.
_REASONING_FIELDS = ("reasoning_content", "reasoning")

# Long enough for a real server's explanation, short enough for a chat bubble.
_MAX_SERVER_MESSAGE_CHARS = 300


def _to_param(message: ChatMessage) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return {"role": "assistant", "content": message.content}
    return {"role": "user", "content": message.content}


def _reasoning_of(delta: ChoiceDelta) -> str | None:
    extra = delta.model_extra or {}
    for field in _REASONING_FIELDS:
        value = extra.get(field, getattr(delta, field, None))
        if isinstance(value, str) and value:
            return value
    return None


def _server_message(body: object) -> str | None:
    """The ``message`` of an OpenAI-style error body, if the server sent one."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message")
            if isinstance(message, str) and message.strip():
                return " ".join(message.split())
    return None


def _redact(text: str, api_key: str) -> str:
    # Some servers echo the key they refused (OpenAI masks it, others may not).
    if api_key and api_key != PLACEHOLDER_API_KEY:
        text = text.replace(api_key, "***")
    if len(text) > _MAX_SERVER_MESSAGE_CHARS:
        text = text[: _MAX_SERVER_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


def _provider_error(
    exc: Exception, *, model: ModelConfig, api_key: str, streaming: bool
) -> ProviderError:
    """Turn any SDK failure into a message fit for the user: no key, no traceback."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(
            f"the model server did not answer within {model.timeout_s:g}s",
            code="provider_timeout",
        )
    if isinstance(exc, openai.APIStatusError):
        message = f"the model server answered HTTP {exc.status_code}"
        detail = _server_message(exc.body)
        if detail:
            message += ": " + _redact(detail, api_key)
        return ProviderError(message)
    if isinstance(exc, openai.APIConnectionError):
        if streaming:
            return ProviderError("the connection to the model server broke off mid-answer")
        return ProviderError("the model server could not be reached")
    if isinstance(exc, openai.APIError):
        # An error event inside an otherwise healthy stream.
        detail = _server_message(exc.body) or exc.message
        return ProviderError("the model server failed: " + _redact(detail, api_key))
    return ProviderError("the model server sent a malformed answer")


class OpenAIProvider:
    """Streams from OpenAI-compatible servers through the ``openai`` SDK.

    One ``AsyncOpenAI`` client (and so one connection pool) is kept per
    ``(base_url, api_key)``. Retries are off by default: a failed turn is shown to the
    user, who can retry, rather than silently billed several times.

    Args:
        max_retries: How often the SDK retries a request that failed before streaming.
    """

    def __init__(self, *, max_retries: int = 0) -> None:
        self._max_retries = max_retries
        self._clients: dict[tuple[str, str], AsyncOpenAI] = {}

    def _client(self, model: ModelConfig) -> tuple[AsyncOpenAI, str]:
        if not model.base_url:
            raise ProviderError(f"model {model.id!r} has no base_url configured")
        api_key = PLACEHOLDER_API_KEY
        if model.api_key_env:
            api_key = os.environ.get(model.api_key_env) or PLACEHOLDER_API_KEY
        key = (model.base_url, api_key)
        client = self._clients.get(key)
        if client is None:
            client = AsyncOpenAI(
                base_url=model.base_url, api_key=api_key, max_retries=self._max_retries
            )
            self._clients[key] = client
        return client, api_key

    async def stream(self, model: ModelConfig, messages: list[ChatMessage]) -> AsyncIterator[Chunk]:
        """Stream one answer from the model's server.

        Args:
            model: Which server and model to ask, with its limits and timeout.
            messages: The conversation, system prompt first.

        Yields:
            ReasoningDelta and TextDelta as they arrive, then exactly one Completed, whose
            usage is the server's or, when it reported none, an estimate.

        Raises:
            ProviderError: The server was unreachable, refused, timed out or broke off.
        """
        client, api_key = self._client(model)
        answer: list[str] = []
        reasoning: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        streaming = False
        try:
            response = await client.chat.completions.create(
                model=model.provider_model,
                messages=[_to_param(m) for m in messages],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=(
                    model.max_output_tokens if model.max_output_tokens is not None else openai.omit
                ),
                temperature=model.temperature if model.temperature is not None else openai.omit,
                timeout=model.timeout_s,
            )
            streaming = True
            async with response:
                async for chunk in response:
                    if chunk.usage is not None:
                        usage = Usage(
                            prompt_tokens=chunk.usage.prompt_tokens,
                            completion_tokens=chunk.usage.completion_tokens,
                            estimated=False,
                        )
                    for piece in _pieces(chunk):
                        if isinstance(piece, ReasoningDelta):
                            reasoning.append(piece.text)
                        else:
                            answer.append(piece.text)
                        yield piece
                    finish_reason = _finish_reason(chunk) or finish_reason
        except (openai.OpenAIError, ValueError) as exc:
            # ValueError: a server that sends something other than JSON in a data line.
            raise _provider_error(exc, model=model, api_key=api_key, streaming=streaming) from None

        if usage is None:
            usage = estimate_usage(messages, "".join(answer), "".join(reasoning))
        # A stream that ended cleanly without saying why is treated as a normal stop.
        yield Completed(finish_reason=finish_reason or "stop", usage=usage)

    async def complete(self, model: ModelConfig, messages: list[ChatMessage]) -> str:
        """Ask for one answer and return its text (reasoning dropped).

        Args:
            model: Which server and model to ask.
            messages: The conversation, system prompt first.

        Returns:
            The answer text.

        Raises:
            ProviderError: As for :meth:`stream`.
        """
        parts: list[str] = []
        async for chunk in self.stream(model, messages):
            if isinstance(chunk, TextDelta):
                parts.append(chunk.text)
        return "".join(parts)

    async def aclose(self) -> None:
        """Close every cached client and its connection pool."""
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.close()


def _pieces(chunk: ChatCompletionChunk) -> list[TextDelta | ReasoningDelta]:
    pieces: list[TextDelta | ReasoningDelta] = []
    for choice in chunk.choices:
        # We ask for one answer (n=1); a server that sends more gets only the first read.
        if choice.index != 0:
            continue
        reasoning = _reasoning_of(choice.delta)
        if reasoning:
            pieces.append(ReasoningDelta(reasoning))
        if choice.delta.content:
            pieces.append(TextDelta(choice.delta.content))
    return pieces


def _finish_reason(chunk: ChatCompletionChunk) -> str | None:
    for choice in chunk.choices:
        if choice.index == 0 and choice.finish_reason:
            return str(choice.finish_reason)
    return None
