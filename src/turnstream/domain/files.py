"""Files: what a user uploads to attach to messages, as facts of their own.

A file is its own aggregate (its own stream of events): ``Uploaded`` says who owns it,
what it is (its media type decided from its content, never from its name) and which
bytes it holds (their SHA-256; the bytes themselves are stored once per tenant by the
store, outside the log). ``Deleted`` hides it from its owner; the log keeps both facts.

A message refers to files by :class:`FileRef`: the turn's ``Started`` event carries the
refs of its user message's attachments, so the tree, the conversation list and the
model input are all derived from the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

from turnstream.domain.errors import FileNotFound, TooManyAttachments
from turnstream.domain.events import DomainEvent, utcnow

FileKind = Literal["image", "text", "pdf"]

MEDIA_KINDS: dict[str, FileKind] = {
    "image/png": "image",
    "image/jpeg": "image",
    "image/webp": "image",
    "image/gif": "image",
    "text/plain": "text",
    "text/markdown": "text",
    "text/csv": "text",
    "application/json": "text",
    "application/pdf": "pdf",
}
"""The media types a file may have, and how a model is given each: images as image
parts, text as text, PDFs as their extracted text."""

NAME_MAX = 255
"""Characters of a file's name (after cleaning)."""


def kind_of(media_type: str) -> FileKind:
    return MEDIA_KINDS[media_type]


def clean_name(name: str | None) -> str:
    """A file name safe to store and to show: its last path segment, without control
    characters, at most :data:`NAME_MAX` characters; ``file`` when nothing is left."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if c.isprintable()).strip()
    return cleaned[:NAME_MAX] or "file"


class FileRef(msgspec.Struct, frozen=True, kw_only=True):
    """A file as a message refers to it: enough to show it and to give it to a model."""

    id: UUID
    name: str
    media_type: str
    bytes: int
    sha256: str
    width: int | None = None
    """An image's width in pixels (None for other files)."""
    height: int | None = None

    @property
    def kind(self) -> FileKind:
        return kind_of(self.media_type)


class FileEvent(DomainEvent, frozen=True, kw_only=True):
    """An event of a file."""


class File:
    """The state of a file, folded from its events."""

    class Uploaded(FileEvent, frozen=True, kw_only=True):
        TOPIC = "turnstream.file.uploaded.v1"

        tenant: str
        owner: str
        name: str
        media_type: str
        bytes: int
        sha256: str
        """The content's SHA-256 (hex): the key of its bytes in the tenant's store."""
        width: int | None = None
        height: int | None = None

    class Deleted(FileEvent, frozen=True, kw_only=True):
        """Hidden from its owner: no longer listed, read or attachable. The bytes stay
        while another file of the tenant holds them."""

        TOPIC = "turnstream.file.deleted.v1"

        tenant: str
        owner: str
        sha256: str
        bytes: int
        by: str
        """Who deleted it (the owner, or an admin of the tenant)."""

    def __init__(self, uploaded: File.Uploaded) -> None:
        self.id = uploaded.originator_id
        self.version = uploaded.originator_version
        self.tenant = uploaded.tenant
        self.owner = uploaded.owner
        self.name = uploaded.name
        self.media_type = uploaded.media_type
        self.bytes = uploaded.bytes
        self.sha256 = uploaded.sha256
        self.width = uploaded.width
        self.height = uploaded.height
        self.created_at: datetime = uploaded.timestamp
        self.deleted = False

    def apply(self, event: FileEvent) -> None:
        self.version = event.originator_version
        if isinstance(event, File.Deleted):
            self.deleted = True

    @classmethod
    def fold(cls, events: Iterable[FileEvent]) -> File | None:
        file: File | None = None
        for event in events:
            if file is None:
                assert isinstance(event, File.Uploaded)
                file = cls(event)
            else:
                file.apply(event)
        return file

    @property
    def ref(self) -> FileRef:
        return FileRef(
            id=self.id,
            name=self.name,
            media_type=self.media_type,
            bytes=self.bytes,
            sha256=self.sha256,
            width=self.width,
            height=self.height,
        )

    # Commands.

    @staticmethod
    def upload(
        file_id: UUID,
        *,
        tenant: str,
        owner: str,
        name: str | None,
        media_type: str,
        size: int,
        sha256: str,
        width: int | None = None,
        height: int | None = None,
    ) -> File.Uploaded:
        if media_type not in MEDIA_KINDS:
            msg = f"media type {media_type!r} is not one a file may have"
            raise ValueError(msg)
        return File.Uploaded(
            originator_id=file_id,
            originator_version=1,
            timestamp=utcnow(),
            tenant=tenant,
            owner=owner,
            name=clean_name(name),
            media_type=media_type,
            bytes=size,
            sha256=sha256,
            width=width,
            height=height,
        )

    def delete(self, by: str) -> File.Deleted:
        if self.deleted:
            raise FileNotFound(self.id)
        return File.Deleted(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=utcnow(),
            tenant=self.tenant,
            owner=self.owner,
            sha256=self.sha256,
            bytes=self.bytes,
            by=by,
        )


def check_attachment_ids(file_ids: list[UUID], limit: int) -> list[UUID]:
    """A message's attachments: distinct ids in the order given, at most ``limit``
    (0: no limit)."""
    unique = list(dict.fromkeys(file_ids))
    if limit and len(unique) > limit:
        raise TooManyAttachments(limit)
    return unique


def refs_of(items: Iterable[Mapping[str, Any]] | None) -> tuple[FileRef, ...]:
    """The refs a read model's message lists (``attachments``; its ``sha256`` may be
    left out: the store's row of the file has it)."""
    return tuple(
        FileRef(
            id=item["id"] if isinstance(item["id"], UUID) else UUID(str(item["id"])),
            name=str(item["name"]),
            media_type=str(item["media_type"]),
            bytes=int(item["bytes"]),
            sha256=str(item.get("sha256") or ""),
            width=item.get("width"),
            height=item.get("height"),
        )
        for item in items or ()
    )
