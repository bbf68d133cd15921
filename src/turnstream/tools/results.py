"""What the model reads of an MCP tool result: text, bounded in UTF-8 bytes.

A tool may answer with anything (megabytes of text, images, embedded resources, JSON);
the turn keeps, and the model is sent, at most ``tool_output_max_bytes`` of it. The cut
says so, and how much there was, so neither the model nor a person reading the
conversation mistakes a cut answer for the whole one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from mcp import types

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


class ToolOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """A server tool's result, as the turn records it and the model sees it."""

    output: Any
    """Text, or the tool's structured content (JSON) when it sent no content blocks."""
    is_error: bool = False


def failure(message: str) -> ToolOutcome:
    """An error result whose message is safe to show (no traceback, path or secret)."""
    return ToolOutcome(output=message, is_error=True)


def human_size(n: int) -> str:
    """``1536`` → ``1.5 KiB``: sizes in a cut note, readable at a glance."""
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            if unit == "bytes":
                return f"{n} bytes"
            return f"{size:.1f}".removesuffix(".0") + f" {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8, without encoding the common (ASCII) case."""
    return len(text) if text.isascii() else len(text.encode())


def cut_note(total: int, bound: int) -> str:
    return f"\n… [cut: {human_size(total)} of output exceeds the {human_size(bound)} bound]"


def bounded(parts: Sequence[str], max_bytes: int, sep: str = "\n") -> str:
    """The parts joined by ``sep``, or as much of their start as fits in ``max_bytes``
    UTF-8 bytes with the cut note (the note counts toward the bound).

    Only the kept head is ever copied: a 10 MB part costs a slice of the bound's size,
    not another 10 MB string.
    """
    sizes = [utf8_size(part) for part in parts]
    total = sum(sizes) + len(sep.encode()) * max(len(parts) - 1, 0)
    if total <= max_bytes:
        return sep.join(parts)
    note = cut_note(total, max_bytes)
    room = max_bytes - utf8_size(note)
    if room <= 0:
        return _head(note.lstrip("\n"), max_bytes)
    head: list[str] = []
    for index, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        piece, piece_size = (part, size) if index == 0 else (sep + part, size + len(sep.encode()))
        if piece_size > room:
            head.append(_head(piece, room))
            break
        head.append(piece)
        room -= piece_size
    return "".join(head) + note


def _head(text: str, max_bytes: int) -> str:
    """The longest start of ``text`` within ``max_bytes`` UTF-8 bytes (whole characters)."""
    # A character is at least one byte: the first max_bytes characters suffice.
    return text[:max_bytes].encode()[:max_bytes].decode("utf-8", errors="ignore")


def _base64_size(data: str) -> int:
    """The decoded size of base64 ``data``, without decoding it."""
    data = data.strip()
    return max(len(data) * 3 // 4 - data[-2:].count("="), 0)


def describe(block: types.ContentBlock) -> str:
    """One content block as text: text as it is, binary content described."""
    from mcp import types  # loaded already: a result comes from a connection

    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return f"[{block.mime_type}, {_base64_size(block.data)} bytes]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return f"[resource {resource.uri}]\n{resource.text}"
        kind = resource.mime_type or "binary"
        return f"[resource {resource.uri}, {kind}, {_base64_size(resource.blob)} bytes]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link {block.uri}" + (f": {block.name}]" if block.name else "]")
    return f"[{getattr(block, 'type', 'unknown')} content]"


def outcome_of(result: types.CallToolResult, max_bytes: int) -> ToolOutcome:
    """The result as the model reads it, within ``max_bytes``.

    Content blocks are what the model reads (servers also put structured content there
    as text, per the spec). Structured content is the output only when there are no
    blocks: as JSON when it fits, else its JSON text, cut.
    """
    if result.content:
        output: Any = bounded([describe(block) for block in result.content], max_bytes)
    elif result.structured_content is not None:
        output = result.structured_content
        try:
            text = msgspec.json.encode(output).decode()
        except (TypeError, msgspec.EncodeError):
            text = str(output)
            output = text
        if utf8_size(text) > max_bytes:
            output = bounded([text], max_bytes)
    else:
        output = ""
    return ToolOutcome(output=output, is_error=bool(result.is_error))
