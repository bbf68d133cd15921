"""The built-in offline ``demo`` model: deterministic, paced like a real model, no network.

Offered tools, it calls those the latest user message names (the rule is in
:mod:`turnstream.providers.demo_tools`), and once the results are back it answers with
them. Given files, it describes each attachment of the latest user message (name,
type, size, an image's pixels, a text's first line) before its usual text, so that
attachments can be tried end to end offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Iterator, Sequence

import msgspec

from turnstream.domain.tools import ToolSpec
from turnstream.providers.base import (
    Attachment,
    ChatMessage,
    Chunk,
    Completed,
    ReasoningDelta,
    TextDelta,
    Usage,
    attachment_text,
    attachment_tokens,
)
from turnstream.providers.demo_tools import results_text, tool_calls
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

# Lossless pieces of any text, each about a word long.
_TEXT_PIECE = re.compile(r"\s*\S{1,10}|\s+")

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
        + sum(_attachment_tokens(a) for a in m.attachments)
        + _PER_MESSAGE_TOKENS
        for m in messages
    )


def _attachment_tokens(attachment: Attachment) -> int:
    # A text as the demo counts any text; an image (or a file not loaded) as estimated.
    if attachment.text is not None:
        return len(_TOKEN_RE.findall(attachment_text(attachment)))
    return attachment_tokens(attachment)


def _seed(messages: list[ChatMessage]) -> int:
    # sha256 rather than hash(): hash() is salted per process, and the demo must repeat
    # itself across restarts and nodes. A message's files (by content) are added only
    # when it has some, so the seeds of messages without files stay what they were.
    payload = msgspec.json.encode(
        [
            [m.role, m.content, [a.ref.sha256 for a in m.attachments]]
            if m.attachments
            else [m.role, m.content]
            for m in messages
        ]
    )
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big")


_FIRST_LINE_CHARS = 80


def _first_line(text: str) -> str:
    line = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if len(line) > _FIRST_LINE_CHARS:
        line = line[: _FIRST_LINE_CHARS - 1].rstrip() + "…"
    return line


def _describe(attachment: Attachment) -> str:
    ref = attachment.ref
    facts = [ref.media_type, f"{ref.bytes} bytes"]
    if ref.kind == "image":
        if ref.width and ref.height:
            facts.append(f"{ref.width}x{ref.height} pixels")
    elif attachment.text is not None:
        line = _first_line(attachment.text)
        facts.append(f'first line: "{line}"' if line else "no text")
    return f"- {ref.name}: {', '.join(facts)}."


def attachments_text(messages: list[ChatMessage]) -> str:
    """What the demo says of the latest user message's attachments, or "".

    One line a file, in the order attached: its name, media type and size in bytes,
    then an image's width x height, or the first non-empty line of a text or a PDF
    (whitespace collapsed, at most 80 characters).
    """
    last_user = next((m for m in reversed(messages) if m.role == "user"), None)
    if last_user is None or not last_user.attachments:
        return ""
    count = len(last_user.attachments)
    lines = [f"You attached {count} file{'s' if count != 1 else ''}."]
    lines += [_describe(a) for a in last_user.attachments]
    return "\n".join(lines) + "\n\n"


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
        before its usual text. When the latest user message has attachments, the
        answer begins by describing them. ``model.max_output_tokens``, when set below the answer's
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
        calls = tool_calls(messages, tools)
        finish_reason = "tool_calls" if calls else "stop"
        if calls:
            pieces += calls
        else:
            answer = _TEXT_PIECE.findall(attachments_text(messages) + results_text(messages))
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
