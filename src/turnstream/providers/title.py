"""Conversation titles: a model-written one when configured, else a heuristic."""

from __future__ import annotations

import re

from turnstream.providers.base import ChatMessage, Provider, ProviderError, TextDelta
from turnstream.settings import ModelConfig

FALLBACK_TITLE = "New conversation"
MAX_TITLE_CHARS = 60
_MAX_HEURISTIC_WORDS = 8
# A title needs the gist, not a 100k-character paste; this also keeps the title call cheap.
_MAX_PROMPT_CHARS = 2000

TITLE_INSTRUCTION = (
    "Write a title for the conversation that starts with the user's message below. "
    "Reply with the title only: at most 6 words, no quotes, no trailing punctuation."
)

_FENCED_BLOCK = re.compile(r"(```|~~~)[^\n]*\n?(.*?)(?:\1|\Z)", re.DOTALL)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINE_MARKUP = re.compile(r"^\s{0,3}(?:#{1,6}\s+|>\s?|[-*+]\s+|\d+[.)]\s+)", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__|\*|`+|~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_TITLE_PREFIX = re.compile(r"^\s*title\s*:\s*", re.IGNORECASE)
# Escaped: typographic quotes and dashes look like ASCII ones in review.
_DASHES = "-\u2013\u2014"
_EDGE_NOISE = "\"'`*_#\u201c\u201d\u2018\u2019\u00ab\u00bb\u300c\u300d .,;:!?" + _DASHES


def _strip_markdown(text: str) -> str:
    outside = _FENCED_BLOCK.sub(" ", text)
    # Code alone (a pasted traceback, a snippet) is still better than no title.
    if not outside.strip():
        text = _FENCED_BLOCK.sub(lambda m: " " + m.group(2) + " ", text)
    else:
        text = outside
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _LINE_MARKUP.sub("", text)
    return _EMPHASIS.sub("", text)


def _cap(text: str, limit: int = MAX_TITLE_CHARS) -> str:
    """Cut at a word boundary and mark the cut with an ellipsis."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if " " in head and not text[limit - 1].isspace():
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:" + _DASHES) + "…"


def heuristic_title(first_message: str) -> str:
    """A title from the first message alone: its first sentence or first few words.

    Args:
        first_message: What the user wrote first, markdown and all.

    Returns:
        At most 60 characters, cut at a word boundary with "…" when cut; never empty.
    """
    text = " ".join(_strip_markdown(first_message).split())
    if not text:
        return FALLBACK_TITLE
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    words = sentence.split(" ")
    cut = len(words) > _MAX_HEURISTIC_WORDS
    title = " ".join(words[:_MAX_HEURISTIC_WORDS])
    # A closing period adds nothing to a title; a question mark does.
    title = title.rstrip(" .,;:" + _DASHES)
    if not title:
        return FALLBACK_TITLE
    if cut and len(title) < MAX_TITLE_CHARS:
        return title + "…"
    return _cap(title)


def clean_title(reply: str) -> str:
    """Tidy a model's title reply: one line, no quotes or markup, at most 60 characters.

    Args:
        reply: The raw model reply.

    Returns:
        The cleaned title, or "" when nothing usable is left.
    """
    text = _THINK_BLOCK.sub("", reply)
    line = next((ln for ln in text.splitlines() if ln.strip(_EDGE_NOISE)), "")
    line = _TITLE_PREFIX.sub("", _EMPHASIS.sub("", line))
    line = " ".join(line.split()).strip(_EDGE_NOISE)
    return _cap(line) if line else ""


async def llm_title(provider: Provider, model: ModelConfig, first_message: str) -> str:
    """Ask a model for a short title, falling back to :func:`heuristic_title`.

    Args:
        provider: The provider that serves ``model``.
        model: The title model.
        first_message: What the user wrote first.

    Returns:
        The cleaned model title, or the heuristic title when the model failed or
        replied with nothing usable.
    """
    messages = [
        ChatMessage("system", TITLE_INSTRUCTION),
        ChatMessage("user", first_message[:_MAX_PROMPT_CHARS]),
    ]
    parts: list[str] = []
    try:
        async for chunk in provider.stream(model, messages):
            if isinstance(chunk, TextDelta):
                parts.append(chunk.text)
    except ProviderError:
        return heuristic_title(first_message)
    return clean_title("".join(parts)) or heuristic_title(first_message)
