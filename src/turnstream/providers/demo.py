"""The built-in offline ``demo`` model: deterministic, paced like a real model, no network.

Offered tools, it calls those the latest user message names, so tool turns can be
tried without a model server: a tool is named when its name appears in the message in
any case, with its ``_`` and ``-`` also written as spaces or the other mark, and not
inside a longer word ("get weather" names ``get_weather``; "get_weathers" does not; of
two names that overlap, the longer wins). Once the results are back it answers with
them.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import msgspec

from turnstream.domain.tools import ToolSpec
from turnstream.providers.base import (
    ChatMessage,
    Chunk,
    Completed,
    ReasoningDelta,
    TextDelta,
    ToolCallArguments,
    ToolCallBegun,
    Usage,
)
from turnstream.settings import ModelConfig

# Pre-split so the opening sentence streams in word pieces like a real tokenizer would.
_OPENING: tuple[str, ...] = (
    "This",
    " is",
    " the",
    " turn",
    "stream",
    " demo",
    " model",
    ".",
)

_REASONING_OPENERS: tuple[str, ...] = ("Reading", "Considering", "Looking at", "Weighing")
_REASONING_TAILS: tuple[str, ...] = (
    " the question",
    " the message",
    " what was asked",
    " the request",
)
_REASONING_ENDS: tuple[str, ...] = (
    " and drafting a reply.",
    ", then answering.",
    " before writing.",
    " to find an answer.",
)

# One string: a word a line would make the table sixty lines long.
_WORDS: tuple[str, ...] = tuple(
    (  # noqa: SIM905
        "a an and answer as at backend because buffer but can chat client conversation data "
        "deterministic each event every example for from history in is it latency message model "
        "network not of offline on order output placeholder reader reply resume same server shows "
        "so store stream streaming than that the this through to token turn useful when while "
        "with without words you"
    ).split()
)

# Roughly how a BPE tokenizer counts: words and single punctuation marks.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

# Real chat formats add a few tokens of framing per message.
_PER_MESSAGE_TOKENS = 4


def count_prompt_tokens(messages: list[ChatMessage]) -> int:
    """Count prompt tokens the way the demo model reports them.

    Args:
        messages: The messages the model sees.

    Returns:
        Words plus punctuation marks of every message and its calls, plus a small
        per-message overhead.
    """
    return sum(
        len(_TOKEN_RE.findall(m.content))
        + sum(len(_TOKEN_RE.findall(f"{c.name} {c.arguments}")) for c in m.tool_calls)
        + _PER_MESSAGE_TOKENS
        for m in messages
    )


def _seed(messages: list[ChatMessage]) -> int:
    # sha256 rather than hash(): hash() is salted per process, and the demo must repeat
    # itself across restarts and nodes.
    payload = msgspec.json.encode([[m.role, m.content] for m in messages])
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big")


def _word_pieces(word: str, rng: random.Random) -> list[str]:
    """Split a long word in two the way subword tokenizers do, so lengths vary."""
    # Words past ten letters are always split so no token exceeds about a dozen chars.
    if len(word) <= 7 or (len(word) <= 10 and rng.random() < 0.4):
        return [word]
    cut = rng.randint(3, len(word) - 3)
    return [word[:cut], word[cut:]]


def _reasoning_tokens(rng: random.Random) -> list[str]:
    text = (
        rng.choice(_REASONING_OPENERS) + rng.choice(_REASONING_TAILS) + rng.choice(_REASONING_ENDS)
    )
    return re.findall(r"\s?\w+|[^\w\s]", text)


def _filler_tokens(rng: random.Random) -> Iterator[str]:
    """Endless sentences of English-ish filler, one token at a time."""
    sentences_in_paragraph = 0
    new_paragraph = False
    while True:
        length = rng.randint(6, 14)
        comma_at = rng.randint(3, length - 2) if rng.random() < 0.35 else -1
        for i in range(length):
            word = rng.choice(_WORDS)
            if i == 0:
                word = word.capitalize()
            pieces = _word_pieces(word, rng)
            if not new_paragraph:
                pieces[0] = " " + pieces[0]
            new_paragraph = False
            yield from pieces
            if i == comma_at:
                yield ","
        yield "?" if rng.random() < 0.1 else "."
        sentences_in_paragraph += 1
        if sentences_in_paragraph >= 2 and rng.random() < 0.3:
            sentences_in_paragraph = 0
            new_paragraph = True
            yield "\n\n"


def _answer_tokens(rng: random.Random, count: int) -> list[str]:
    tokens = list(_OPENING[:count])
    filler = _filler_tokens(rng)
    while len(tokens) < count:
        tokens.append(next(filler))
    return tokens


# Words of a request that make poor argument values ("call get_weather for Oslo": Oslo).
_FILLER_WORDS = frozenset(
    (  # noqa: SIM905
        "a an and are ask call calling can check could do does for from get give how in is "
        "it me my of on or please run show tell that the this to tool tools use using what "
        "whats when where which who why will with would you"
    ).split()
)
_MAX_SCHEMA_DEPTH = 16
_ARGUMENT_PIECE = re.compile(r".{1,8}", re.DOTALL)
# Lossless pieces of any text, each about a word long.
_TEXT_PIECE = re.compile(r"\s*\S{1,10}|\s+")
_MAX_QUOTED_CHARS = 200


def _name_pattern(name: str) -> re.Pattern[str] | None:
    parts = [part for part in re.split(r"[_-]+", name) if part]
    if not parts:
        return None
    body = r"[\s_-]+".join(re.escape(part) for part in parts)
    return re.compile(rf"(?<![\w-]){body}(?![\w-])", re.IGNORECASE)


def _named_tools(text: str, tools: Sequence[ToolSpec]) -> list[ToolSpec]:
    """The tools ``text`` names (the module's rule), each once, in the order named."""
    spans: list[tuple[int, int, int]] = []
    for position, tool in enumerate(tools):
        pattern = _name_pattern(tool.name)
        if pattern is not None:
            spans += [(m.start(), -m.end(), position) for m in pattern.finditer(text)]
    chosen: list[ToolSpec] = []
    covered = 0
    for start, negative_end, position in sorted(spans):
        if start >= covered:
            covered = -negative_end
            if tools[position] not in chosen:
                chosen.append(tools[position])
    return chosen


def _value_words(text: str, named: Sequence[ToolSpec]) -> list[str]:
    name_parts = {p.lower() for t in named for p in re.split(r"[\W_]+", t.name) if p}
    words: list[str] = []
    for word in re.findall(r"[^\W_]+", text):
        low = word.lower()
        fit = len(word) > 1 and low not in _FILLER_WORDS and low not in name_parts
        if fit and word not in words:
            words.append(word)
    return words


class _Arguments:
    """Arguments a tool's JSON Schema accepts, made of the user's own words.

    An object gets its required properties and those with a default; a ``default``,
    ``const`` or the first ``enum`` value wins; otherwise by type: a string is the next
    word of the request (cycling, "demo" when there is none) fitted to its length
    bounds, a number 1 moved into its bounds, a boolean true, an array ``minItems``
    items (one when it describes its items), ``anyOf``/``oneOf``/``allOf`` their first
    schema, a local ``$ref`` what it points to. ``pattern`` and ``format`` are ignored.
    """

    def __init__(self, root: dict[str, Any], words: list[str]) -> None:
        self._root = root
        self._words = words
        self._used = 0

    def value(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
            return None
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            return self.value(self._resolve(ref), depth + 1)
        for key in ("default", "const"):
            if key in schema:
                return schema[key]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf", "allOf"):
            if schema.get(key):
                return self.value(schema[key][0], depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        if kind == "object":
            properties: dict[str, Any] = schema.get("properties") or {}
            required: list[str] = schema.get("required") or []
            keys = [k for k, s in properties.items() if k in required or "default" in s]
            keys += [k for k in required if k not in properties]
            return {k: self.value(properties.get(k, {}), depth + 1) for k in keys}
        if kind == "array":
            items = schema.get("items")
            count: int = schema.get("minItems") or (1 if isinstance(items, dict) else 0)
            count = min(count, schema.get("maxItems", count))
            item = items if isinstance(items, dict) else {}
            return [self.value(item, depth + 1) for _ in range(count)]
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema)

    def _string(self, schema: dict[str, Any]) -> str:
        word = self._words[self._used % len(self._words)] if self._words else "demo"
        self._used += 1
        word = word.ljust(schema.get("minLength", 0), "o")
        return word[: schema["maxLength"]] if "maxLength" in schema else word

    def _resolve(self, ref: str) -> Any:
        target: Any = self._root
        for part in ref.lstrip("#").split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        return target


def _number(schema: dict[str, Any], *, integer: bool) -> float:
    value: float = 1
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        value = max(value, math.floor(schema["exclusiveMinimum"]) + 1)
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        value = min(value, math.ceil(schema["exclusiveMaximum"]) - 1)
    return math.ceil(value) if integer else value


def _tool_calls(messages: list[ChatMessage], tools: Sequence[ToolSpec]) -> list[Chunk]:
    """One call to each tool the latest user message names, unless results came after
    it (the demo has called already). An id hashes the conversation and the tool."""
    last_user = next(
        (i for i in reversed(range(len(messages))) if messages[i].role == "user"), None
    )
    if not tools or last_user is None:
        return []
    if any(m.role == "tool" for m in messages[last_user + 1 :]):
        return []
    request = messages[last_user].content
    named = _named_tools(request, tools)
    words = _value_words(request, named)
    conversation = msgspec.json.encode(messages)
    pieces: list[Chunk] = []
    for tool in named:
        digest = hashlib.sha256(conversation + b"\0" + tool.name.encode()).hexdigest()
        call_id = "call_" + digest[:24]
        schema = tool.function.parameters
        text = msgspec.json.encode(_Arguments(schema, words).value(schema)).decode()
        pieces.append(ToolCallBegun(call_id, tool.name))
        pieces += [ToolCallArguments(call_id, p) for p in _ARGUMENT_PIECE.findall(text)]
    return pieces


def _results_text(messages: list[ChatMessage]) -> str:
    """What the demo says of the results that end the conversation, or ""."""
    first = len(messages)
    while first > 0 and messages[first - 1].role == "tool":
        first -= 1
    names = {c.call_id: c.name for m in messages[:first] for c in m.tool_calls}
    sentences = []
    for message in messages[first:]:
        output = " ".join(message.content.split())
        if len(output) > _MAX_QUOTED_CHARS:
            output = output[: _MAX_QUOTED_CHARS - 1] + "…"
        name = names.get(message.tool_call_id or "", "tool")
        sentences.append(f"The tool {name} answered: {output}.")
    return " ".join(sentences) + "\n\n" if sentences else ""


class DemoProvider:
    """The offline ``demo`` model.

    The same messages always produce the same reasoning, answer and usage, so tests and
    demos are reproducible; different messages produce different filler.

    Args:
        tokens_per_s: Pace of the stream; ``<= 0`` streams as fast as possible.
        tokens: How many answer tokens each reply has (the reasoning comes on top).
    """

    def __init__(self, tokens_per_s: float, tokens: int) -> None:
        self.tokens_per_s = tokens_per_s
        self.tokens = tokens

    async def stream(
        self, model: ModelConfig, messages: list[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[Chunk]:
        """Stream a short reasoning part, then the answer or the calls, then one
        :class:`Completed`.

        With ``tools`` that the latest user message names, the step calls them
        (``finish_reason="tool_calls"``); after their results, the answer quotes them
        before its usual text. ``model.max_output_tokens``, when set below the answer's
        length, cuts the answer short with ``finish_reason="length"`` as a real server
        would (calls are never cut).

        Args:
            model: The model entry (only ``max_output_tokens`` is used).
            messages: The conversation; it seeds the output.
            tools: The tools the model may call.

        Yields:
            ReasoningDelta tokens, TextDelta tokens or tool-call pieces, then one
            Completed with exact usage.
        """
        rng = random.Random(_seed(messages))
        pieces: list[Chunk] = [ReasoningDelta(t) for t in _reasoning_tokens(rng)]
        calls = _tool_calls(messages, tools)
        finish_reason = "tool_calls" if calls else "stop"
        if calls:
            pieces += calls
        else:
            answer = _TEXT_PIECE.findall(_results_text(messages))
            answer += _answer_tokens(rng, max(0, self.tokens))
            if model.max_output_tokens is not None and model.max_output_tokens < len(answer):
                answer = answer[: max(0, model.max_output_tokens)]
                finish_reason = "length"
            pieces += [TextDelta(t) for t in answer]

        loop = asyncio.get_running_loop()
        interval = 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        start = loop.time()
        for index, piece in enumerate(pieces):
            if interval:
                # An absolute schedule: a late wake-up shortens the next wait instead of
                # pushing every later token back.
                delay = start + (index + 1) * interval - loop.time()
                await asyncio.sleep(max(0.0, delay))
            else:
                # Still yield to the loop so other turns progress and cancellation lands.
                await asyncio.sleep(0)
            yield piece

        yield Completed(
            finish_reason=finish_reason,
            usage=Usage(
                prompt_tokens=count_prompt_tokens(messages),
                completion_tokens=len(pieces),
                estimated=False,
            ),
        )
