"""Files: upload one, read it back (its bytes or its facts), delete it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from uuid import UUID

from litestar import Request, delete, get, post
from litestar.response import Stream
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from turnstream.domain.callers import Caller
from turnstream.http.uploads import MultipartUpload
from turnstream.usecases.files import FileView
from turnstream.usecases.services import Services


@post(
    "/files",
    tags=["files"],
    summary="Upload a file (multipart/form-data, field 'file'); its content decides its type",
    status_code=HTTP_201_CREATED,
    request_max_body_size=None,  # the upload counts its own bytes, against its own limit
)
async def upload_file(
    request: Request[Any, Any, Any], services: Services, caller: Caller
) -> FileView:
    upload = MultipartUpload(request, max_file_bytes=services.files.max_bytes)
    name = await upload.start()
    return await services.files.upload(caller, name, upload.pieces())


@get("/files/{fid:uuid}/meta", tags=["files"], summary="A file's name, type, size and SHA-256")
async def file_meta(services: Services, caller: Caller, fid: UUID) -> FileView:
    return await services.files.meta(caller, fid)


@get(
    "/files/{fid:uuid}",
    tags=["files"],
    summary="A file's bytes, as an attachment of its type",
)
async def file_content(services: Services, caller: Caller, fid: UUID) -> Stream:
    row, chunks = await services.files.content(caller, fid)
    return Stream(
        chunks,
        media_type=row.media_type,
        headers={
            "Content-Length": str(row.bytes),
            "Content-Disposition": content_disposition(row.name),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=0, must-revalidate",
            "ETag": f'"{row.sha256}"',
        },
    )


@delete(
    "/files/{fid:uuid}",
    tags=["files"],
    summary="Hide a file from its owner (the log keeps the fact)",
    status_code=HTTP_204_NO_CONTENT,
)
async def delete_file(services: Services, caller: Caller, fid: UUID) -> None:
    await services.files.delete(caller, fid)


def content_disposition(name: str) -> str:
    """``attachment`` with the name both as ASCII and as UTF-8 (RFC 6266, RFC 5987)."""
    ascii_name = "".join(c if c.isascii() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


ROUTES = [upload_file, file_meta, file_content, delete_file]
"""The routes of the contract, by what they are about."""
