"""Any OpenAI-compatible chat completions server (OpenAI, vLLM, llama.cpp, Ollama, ...)."""

from __future__ import annotations

import email.utils
import hashlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import msgspec
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionToolUnionParam
from openai.types.chat.chat_completion_chunk import ChoiceDelta, ChoiceDeltaToolCall

from turnstream.domain.tools import ToolSpec
from turnstream.providers.base import (
    ChatMessage,
    Chunk,
    Completed,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolCallArguments,
    ToolCallBegun,
    Usage,
    estimate_tokens,
    estimate_usage,
    tool_param,
)
from turnstream.providers.parts import message_param
from turnstream.settings import ModelConfig

# Local servers accept any key, but the SDK refuses to build a client without one.
PLACEHOLDER_API_KEY = "not-needed"

# Servers disagree on where reasoning goes: DeepSeek and vLLM use ``reasoning_content``,
# Ollama and OpenRouter use ``reasoning``. Neither is in the SDK's typed model.
_REASONING_FIELDS = ("reasoning_content", "reasoning")

# Long enough for a real server's explanation, short enough for a chat bubble.
_MAX_SERVER_MESSAGE_CHARS = 300


def _reasoning_of(delta: ChoiceDelta) -> str | None:
    extra = delta.model_extra or {}
    for name in _REASONING_FIELDS:
        value = extra.get(name, getattr(delta, name, None))
        if isinstance(value, str) and value:
            return value
    return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a server asked for: ``retry-after-ms`` (OpenAI's), else ``retry-after``
    in seconds or as an HTTP date; None when it asked for none (or nonsense)."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(float(ms) / 1000, 0.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    except (ValueError, TypeError, OverflowError):
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
            retryable=True,
        )
    if isinstance(exc, openai.APIStatusError):
        message = f"the model server answered HTTP {exc.status_code}"
        detail = _server_message(exc.body)
        if detail:
            message += ": " + _redact(detail, api_key)
        busy = exc.status_code in (408, 409, 429) or exc.status_code >= 500
        return ProviderError(
            message, retryable=busy, retry_after_s=retry_after(exc.response.headers)
        )
    if isinstance(exc, openai.APIConnectionError):
        if streaming:
            return ProviderError(
                "the connection to the model server broke off mid-answer", retryable=True
            )
        return ProviderError("the model server could not be reached", retryable=True)
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

    async def stream(
        self, model: ModelConfig, messages: list[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[Chunk]:
        """Stream one model step from the model's server.

        Args:
            model: Which server and model to ask, with its limits and timeout.
            messages: The conversation, system prompt first.
            tools: The tools the model may call; none sends no ``tools`` at all (some
                servers refuse an empty list).

        Yields:
            ReasoningDelta, TextDelta, ToolCallBegun and ToolCallArguments as they
            arrive, then exactly one Completed, whose usage is the server's or, when it
            reported none, an estimate.

        Raises:
            ProviderError: The server was unreachable, refused, timed out or broke off.
        """
        client, api_key = self._client(model)
        answer: list[str] = []
        reasoning: list[str] = []
        calls = _ToolCalls(model, messages)
        params = [cast(ChatCompletionToolUnionParam, tool_param(t)) for t in tools]
        finish_reason: str | None = None
        usage: Usage | None = None
        streaming = False
        try:
            response = await client.chat.completions.create(
                model=model.provider_model,
                messages=[message_param(m) for m in messages],
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=(
                    model.max_output_tokens if model.max_output_tokens is not None else openai.omit
                ),
                temperature=model.temperature if model.temperature is not None else openai.omit,
                tools=params or openai.omit,
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
                    for piece in _pieces(chunk, calls):
                        if isinstance(piece, ReasoningDelta):
                            reasoning.append(piece.text)
                        elif isinstance(piece, TextDelta):
                            answer.append(piece.text)
                        yield piece
                    ended = _finish_reason(chunk)
                    if ended:
                        finish_reason = ended
                        # The step is over: no call's name can grow any more.
                        for piece in calls.flush():
                            yield piece
        except (openai.OpenAIError, ValueError) as exc:
            # ValueError: a server that sends something other than JSON in a data line.
            raise _provider_error(exc, model=model, api_key=api_key, streaming=streaming) from None

        for piece in calls.flush():
            yield piece
        if usage is None:
            usage = estimate_usage(messages, "".join(answer), "".join(reasoning))
            usage = msgspec.structs.replace(
                usage, completion_tokens=usage.completion_tokens + calls.estimated_tokens()
            )
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


def _pieces(chunk: ChatCompletionChunk, calls: _ToolCalls) -> list[Chunk]:
    pieces: list[Chunk] = []
    for choice in chunk.choices:
        # We ask for one answer (n=1); a server that sends more gets only the first read.
        if choice.index != 0:
            continue
        reasoning = _reasoning_of(choice.delta)
        if reasoning:
            pieces.append(ReasoningDelta(reasoning))
        if choice.delta.content:
            pieces.append(TextDelta(choice.delta.content))
        if choice.delta.tool_calls:
            pieces.extend(calls.feed(choice.delta.tool_calls))
    return pieces


def _finish_reason(chunk: ChatCompletionChunk) -> str | None:
    for choice in chunk.choices:
        if choice.index == 0 and choice.finish_reason:
            return str(choice.finish_reason)
    return None


def _starts_another(call: _Call, server_id: str | None, name: str) -> bool:
    if server_id and call.server_id and server_id != call.server_id:
        return True
    return call.call_id is not None and bool(name) and name != call.name


@dataclass
class _Call:
    """One call of the step as its deltas arrive."""

    ordinal: int
    server_id: str | None
    name: str = ""
    call_id: str | None = None  # set once begun
    pending: list[str] = field(default_factory=list)  # arguments that came before that
    arguments: list[str] = field(default_factory=list)


class _ToolCalls:
    """Turns a step's ``delta.tool_calls`` into ToolCallBegun and ToolCallArguments.

    Servers stream each call as entries with an ``index``; calls may interleave. The
    first entry of a call usually carries its ``id`` and whole ``function.name`` (OpenAI,
    vLLM, llama.cpp), but a name may come split over entries, and some servers repeat
    the id and name in every entry. So a call is begun only once its name is complete:

    - the name is complete when an entry for the call carries no name, or carries
      arguments, or repeats the name so far (a repeat is not appended), or when another
      call appears at the same index, or the step ends;
    - another call appears at an index when an entry brings a different ``id``, or a
      different name once the call was begun (servers that send every call at index
      0); the call's own name again is ignored;
    - argument pieces that arrived before the call was begun are sent, joined, right
      after its ToolCallBegun.

    A call's id is the server's, unless the server sent none or one already used in
    this conversation or step (servers that number calls per request, ``call_0`` in
    every step); then it is ``call_<n>_<digest>``, where ``n`` is the call's place in
    the step (its index on a well-behaved server) and ``digest`` hashes the model and
    the messages, which differ from step to step. The same request so gives the same
    ids, and no two calls of one turn share one.
    """

    def __init__(self, model: ModelConfig, messages: list[ChatMessage]) -> None:
        self._messages = messages
        self._model = model.provider_model
        self._digest: str | None = None
        self._calls: list[_Call] = []
        self._at: dict[int, _Call] = {}
        self._taken = {c.call_id for m in messages for c in m.tool_calls}
        self._taken.update(m.tool_call_id for m in messages if m.tool_call_id)

    def feed(self, deltas: list[ChoiceDeltaToolCall]) -> list[Chunk]:
        out: list[Chunk] = []
        for position, delta in enumerate(deltas):
            index = getattr(delta, "index", None)
            index = index if isinstance(index, int) else position
            piece = (delta.function.name if delta.function else None) or ""
            arguments = (delta.function.arguments if delta.function else None) or ""
            call = self._at.get(index)
            if call is None or _starts_another(call, delta.id, piece):
                if call is not None:
                    out.extend(self._begin(call))
                call = self._at[index] = _Call(ordinal=len(self._calls), server_id=delta.id)
                self._calls.append(call)
            elif delta.id and not call.server_id and call.call_id is None:
                call.server_id = delta.id
            if arguments:
                call.arguments.append(arguments)
            if call.call_id is not None:
                if arguments:
                    out.append(ToolCallArguments(call.call_id, arguments))
                continue
            repeat = bool(piece) and piece == call.name
            if piece and not repeat:
                call.name += piece
            if arguments:
                call.pending.append(arguments)
            if call.name and (not piece or repeat or arguments):
                out.extend(self._begin(call))
        return out

    def flush(self) -> list[Chunk]:
        """Begin every call not yet begun (the step ended), in the order they came."""
        out: list[Chunk] = []
        for call in self._calls:
            out.extend(self._begin(call))
        return out

    def estimated_tokens(self) -> int:
        """The calls' rough token count, counted as :func:`message_tokens` counts them."""
        return sum(estimate_tokens(c.name + "".join(c.arguments)) for c in self._calls)

    def _begin(self, call: _Call) -> list[Chunk]:
        if call.call_id is not None:
            return []
        call_id = call.server_id
        if not call_id or call_id in self._taken:
            call_id = f"call_{call.ordinal}_{self._request_digest()}"
            while call_id in self._taken:
                call_id += "x"
        self._taken.add(call_id)
        call.call_id = call_id
        out: list[Chunk] = [ToolCallBegun(call_id, call.name)]
        if call.pending:
            out.append(ToolCallArguments(call_id, "".join(call.pending)))
            call.pending.clear()
        return out

    def _request_digest(self) -> str:
        if self._digest is None:
            payload = msgspec.json.encode([self._model, self._messages])
            self._digest = hashlib.sha256(payload).hexdigest()[:16]
        return self._digest
