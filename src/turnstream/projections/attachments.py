"""The files a user message lists, as the tree holds them and as readers get them.

A turn's ``Started`` carries the refs of its user message's attachments; the tree keeps
what a client shows of each (not the SHA-256: the content's key is the store's business,
and a client reads a file by its id), as a JSON list on the message's row. Rows written
before attachments existed, and messages without any, hold NULL: readers always get a
list, so the turn's admission can hand earlier attachments to the model again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from turnstream.domain.files import FileRef
from turnstream.projections.tree_steps import jsonb

KEYS = ("id", "name", "media_type", "bytes", "width", "height")
"""What a message says of each of its files (``attachments: [{id, name, …}]``)."""

Row = dict[str, Any]


def stored(refs: Iterable[FileRef]) -> Jsonb | None:
    """A message's attachments as its row's ``attachments`` (NULL for none)."""
    listed = [
        {"id": str(r.id), "name": r.name, "media_type": r.media_type, "bytes": r.bytes,
         "width": r.width, "height": r.height}
        for r in refs
    ]  # fmt: skip
    return jsonb(listed) if listed else None


def of_row(value: Any) -> list[Row]:
    """A row's ``attachments`` as readers get them: a list of dicts with :data:`KEYS`,
    ``id`` a UUID (empty for a message without files)."""
    return [{**{k: a.get(k) for k in KEYS}, "id": UUID(a["id"])} for a in value or ()]


def with_attachments(messages: list[Row]) -> list[Row]:
    """``messages`` (the tree's rows), each with its ``attachments`` as :func:`of_row`."""
    for message in messages:
        message["attachments"] = of_row(message.get("attachments"))
    return messages
