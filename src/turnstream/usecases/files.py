"""Files: upload (checked as it streams in), read back, delete, and attach to turns.

An upload is taken piece by piece: its content decides its type as soon as it can
(``turnstream.files.sniff``), its size is counted against the limit as it arrives,
and its bytes go to the store in chunks, so a 10 MiB upload never sits in memory
whole. Whatever stops it (a limit, a refused type, a client that goes away, a
truncated body) drops what it wrote: no partial file is ever visible or counted.

Files are their owner's: another user's or tenant's file answers ``FileNotFound``
exactly as a missing id does, on every route and in a turn's attachments. An admin may
read (not attach or delete) the files of their own tenant.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from uuid import UUID

import msgspec

from turnstream.domain.attachments import Attachment
from turnstream.domain.callers import Caller
from turnstream.domain.errors import (
    FileNotFound,
    FileTooLarge,
    QuotaExhausted,
    UnsupportedAttachment,
)
from turnstream.domain.files import File, FileRef, check_attachment_ids, clean_name
from turnstream.files.extract import model_attachment
from turnstream.files.sniff import Sniffed, Sniffer
from turnstream.ids import uuid7
from turnstream.providers.base import ChatMessage
from turnstream.settings import LimitSettings, ModelConfig
from turnstream.store.application import TurnstreamApplication
from turnstream.store.files import READ_CHUNKS, FileRow, Refused
from turnstream.store.gateway import StoreGateway

CHUNK_BYTES = 256 * 1024
"""Bytes of an upload written to the store per chunk (and held in memory at most)."""
ORPHAN_GRACE_S = 3600.0
"""Chunks of no finished upload older than this are swept (their process died)."""
MAX_TEXT_CHARS = 1_000_000
"""Characters of a text (or a PDF's text) given to a model without an input limit."""
VISION = "vision"
"""What a model ``supports`` when it takes images."""
RETRY_STORAGE_S = 3600
"""Retry-After of a full storage quota: it frees only when the user deletes files."""


class FileView(msgspec.Struct, frozen=True, kw_only=True):
    """A file as the API shows it."""

    id: UUID
    name: str
    media_type: str
    bytes: int
    sha256: str
    created_at: datetime
    width: int | None = None
    height: int | None = None


def file_view(row: FileRow) -> FileView:
    return FileView(
        id=row.file_id,
        name=row.name,
        media_type=row.media_type,
        bytes=row.bytes,
        sha256=row.sha256,
        created_at=row.created_at,
        width=row.width,
        height=row.height,
    )


class Files:
    def __init__(
        self, *, app: TurnstreamApplication, gateway: StoreGateway, limits: LimitSettings
    ) -> None:
        self.app = app
        self.run = gateway.run
        self.max_bytes = limits.file_bytes
        self.per_message = limits.files_per_message
        self.storage_bytes = limits.storage_bytes
        self.max_pixels = limits.image_pixels

    async def upload(
        self, caller: Caller, name: str | None, pieces: AsyncIterator[bytes]
    ) -> FileView:
        """Store one file from its pieces, in order (see the module)."""
        clean = clean_name(name)
        blob_id = uuid7()
        try:
            size, sha256, sniffed = await self._receive(blob_id, clean, pieces)
            uploaded = File.upload(
                uuid7(),
                tenant=caller.tenant,
                owner=caller.user_id,
                name=clean,
                media_type=sniffed.media_type,
                size=size,
                sha256=sha256,
                width=sniffed.width,
                height=sniffed.height,
            )
            row = FileRow.of(uploaded)
            done = await self.run(
                self.app.store.finish_upload,
                blob_id,
                self.app.encode_row(uploaded),
                row,
                self.storage_bytes,
            )
        except BaseException:
            await asyncio.shield(self._drop(blob_id))
            raise
        if isinstance(done, Refused):
            raise QuotaExhausted(
                f"You store {done.stored_bytes} bytes of files; {self.storage_bytes} are"
                " allowed. Delete files to upload more.",
                retry_after=RETRY_STORAGE_S,
                stored_bytes=done.stored_bytes,
                storage_bytes=self.storage_bytes,
            )
        return file_view(row)

    async def _receive(
        self, blob_id: UUID, name: str, pieces: AsyncIterator[bytes]
    ) -> tuple[int, str, Sniffed]:
        """Check and write the pieces as chunks: the size, SHA-256 and type of the whole."""
        sniffer = Sniffer(name, max_pixels=self.max_pixels)
        digest = hashlib.sha256()
        size = seq = 0
        pending = bytearray()
        async for piece in pieces:
            size += len(piece)
            if self.max_bytes and size > self.max_bytes:
                raise FileTooLarge(
                    f"A file has at most {self.max_bytes} bytes.", max_bytes=self.max_bytes
                )
            sniffer.feed(piece)
            digest.update(piece)
            pending += piece
            while len(pending) >= CHUNK_BYTES:
                chunk, pending = bytes(pending[:CHUNK_BYTES]), pending[CHUNK_BYTES:]
                await self.run(self.app.store.write_chunk, blob_id, seq, chunk)
                seq += 1
        sniffed = sniffer.finish()
        if pending:
            await self.run(self.app.store.write_chunk, blob_id, seq, bytes(pending))
        return size, digest.hexdigest(), sniffed

    async def _drop(self, blob_id: UUID) -> None:
        try:
            await self.run(self.app.store.drop_chunks, blob_id)
        except Exception:
            return  # the sweeper drops them later

    async def row(self, caller: Caller, file_id: UUID, *, read: bool = False) -> FileRow:
        """The caller's file (``read``: an admin also reads their tenant's); else 404."""
        row = await self.run(self.app.store.file_row, file_id)
        if row is None or row.deleted or not caller.may(row.tenant, row.owner, read=read):
            raise FileNotFound(file_id)
        return row

    async def meta(self, caller: Caller, file_id: UUID) -> FileView:
        return file_view(await self.row(caller, file_id, read=True))

    async def content(self, caller: Caller, file_id: UUID) -> tuple[FileRow, AsyncIterator[bytes]]:
        """The file's row and its bytes as they are read, a few chunks at a time."""
        row = await self.row(caller, file_id, read=True)
        return row, self._chunks(row.tenant, row.sha256)

    async def _chunks(self, tenant: str, sha256: str) -> AsyncIterator[bytes]:
        after = -1
        while True:
            page = await self.run(self.app.store.file_page, tenant, sha256, after)
            for _, data in page:
                yield data
            if len(page) < READ_CHUNKS:
                return
            after = page[-1][0]

    async def delete(self, caller: Caller, file_id: UUID) -> None:
        """Hide the caller's file (an admin may delete their tenant's too)."""
        await self.row(caller, file_id, read=True)
        file = await self.run(self.app.file, file_id)
        deleted = file.delete(by=caller.user_id)
        stored = self.app.encode_row(deleted)
        if await self.run(self.app.store.delete_file, file_id, stored, file.version) is None:
            raise FileNotFound(file_id)  # deleted meanwhile

    async def attachments(self, caller: Caller, file_ids: Sequence[UUID]) -> tuple[FileRef, ...]:
        """A message's attachments: the caller's own files, in the order given (404 for
        any other id), at most the limit."""
        ids = check_attachment_ids(list(file_ids), self.per_message)
        if not ids:
            return ()
        rows = {r.file_id: r for r in await self.run(self.app.store.file_rows, ids)}
        refs = []
        for file_id in ids:
            row = rows.get(file_id)
            if row is None or row.deleted or not caller.may(row.tenant, row.owner):
                raise FileNotFound(file_id)
            refs.append(row.ref)
        return tuple(refs)

    def check_model(self, refs: Sequence[FileRef], model: ModelConfig) -> None:
        """UnsupportedAttachment for an image given to a model that takes no images."""
        images = [r.name for r in refs if r.kind == "image"]
        if images and VISION not in model.supports:
            raise UnsupportedAttachment(
                f"The model {model.id!r} does not take images ({', '.join(images)});"
                " choose a model that supports vision.",
                model=model.id,
            )

    async def for_model(self, messages: list[ChatMessage], model: ModelConfig) -> list[ChatMessage]:
        """The messages with their attachments' content loaded, as ``model`` is to see
        them (see :func:`load_for_model`); the same list when none has attachments."""
        if not any(m.attachments for m in messages):
            return messages
        return await self.run(load_for_model, self.app, messages, model)

    async def sweep(self) -> int:
        """Drop the chunks of uploads that never finished (their process died)."""
        return await self.run(self.app.store.sweep_chunks, ORPHAN_GRACE_S)


def load_for_model(
    app: TurnstreamApplication, messages: list[ChatMessage], model: ModelConfig
) -> list[ChatMessage]:
    """Load each attachment's content (on a store thread): an image's bytes, a text's
    text, a PDF's extracted text, each text cut to what the model's input could hold.

    Earlier messages keep their files, so every turn gives the model the whole path
    again, as chat products do. A file deleted since is left out, and an image for a
    model that takes no images (the conversation's model may have changed) too: in
    their place the message says so, so the model knows something was there.
    """
    ids = [a.ref.id for m in messages for a in m.attachments]
    rows = {r.file_id: r for r in app.store.file_rows(ids)}
    max_chars = model.max_input_tokens * 4 if model.max_input_tokens else MAX_TEXT_CHARS
    loaded: dict[tuple[str, str], bytes] = {}
    out: list[ChatMessage] = []
    for message in messages:
        if not message.attachments:
            out.append(message)
            continue
        attachments: list[Attachment] = []
        notes: list[str] = []
        for attachment in message.attachments:
            row = rows.get(attachment.ref.id)
            if row is None or row.deleted:
                notes.append(f"[The attached file {attachment.ref.name} has been deleted.]")
                continue
            ref = row.ref
            if ref.kind == "image" and VISION not in model.supports:
                notes.append(f"[An image, {ref.name}, is left out: this model takes no images.]")
                continue
            key = (row.tenant, row.sha256)
            if key not in loaded:
                loaded[key] = b"".join(app.store.file_bytes(row.tenant, row.sha256))
            attachments.append(model_attachment(ref, loaded[key], max_chars))
        content = "\n\n".join([message.content, *notes]) if notes else message.content
        out.append(
            msgspec.structs.replace(message, content=content, attachments=tuple(attachments))
        )
    return out
