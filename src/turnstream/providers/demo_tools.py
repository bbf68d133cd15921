"""The demo model's tool calls: which tools a request names, and arguments for them.

Offered tools, the demo calls those the latest user message names, so tool turns can
be tried without a model server: a tool is named when its name appears in the message
in any case, with its ``_`` and ``-`` also written as spaces or the other mark, and not
inside a longer word ("get weather" names ``get_weather``; "get_weathers" does not; of
two names that overlap, the longer wins). Once the results are back it answers with
them. Apart from :mod:`turnstream.providers.demo` so that each stays readable.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from turnstream.domain.tools import ToolSpec
from turnstream.providers.base import ChatMessage, Chunk, ToolCallArguments, ToolCallBegun

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


def tool_calls(messages: list[ChatMessage], tools: Sequence[ToolSpec]) -> list[Chunk]:
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


def results_text(messages: list[ChatMessage]) -> str:
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
