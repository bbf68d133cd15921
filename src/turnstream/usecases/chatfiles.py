"""A chat message's ``file`` parts as the turn's attachments: data URLs uploaded on the
fly, files of this server taken as they are.

Everything that can refuse without storing is checked first, for every part: the
number of files, each data URL's form and size, each file id (the caller's, else
``FileNotFound`` as in ``POST …/turns``). Only then are the data URLs uploaded, through
the same :meth:`Files.upload` as ``POST /v1/files`` (its limits, its type checks from
the content). Uploads of a turn that is then refused are deleted again (:func:`forget`):
a refused request leaves no file the user did not ask for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

from turnstream.domain.callers import Caller
from turnstream.domain.chats import ChatFile
from turnstream.domain.errors import FileNotFound, FileTooLarge, TooManyAttachments
from turnstream.files.dataurls import DataUrl, parse_data_url
from turnstream.usecases.files import Files


class Attached(NamedTuple):
    ids: list[UUID]
    """The attachments, in the order of the parts."""
    uploaded: list[UUID]
    """Those uploaded now (to delete again if the turn is refused)."""


async def attach(files: Files, caller: Caller, parts: Sequence[ChatFile]) -> Attached:
    """The files of ``parts`` as file ids (see the module)."""
    if files.per_message and len(parts) > files.per_message:
        raise TooManyAttachments(files.per_message)
    inline: dict[int, DataUrl] = {}
    for n, part in enumerate(parts):
        if part.data_url is not None:
            found = parse_data_url(part.data_url, f"file part {n + 1}")
            if files.max_bytes and (found.size or 0) > files.max_bytes:
                raise FileTooLarge(
                    f"A file has at most {files.max_bytes} bytes.", max_bytes=files.max_bytes
                )
            inline[n] = found
    await files.attachments(caller, [p.file_id for p in parts if p.file_id is not None])
    ids: list[UUID] = []
    uploaded: list[UUID] = []
    try:
        for n, part in enumerate(parts):
            if part.file_id is not None:
                ids.append(part.file_id)
                continue
            view = await files.upload(caller, part.name, inline[n].pieces())
            uploaded.append(view.id)
            ids.append(view.id)
    except BaseException:
        await asyncio.shield(forget(files, caller, uploaded))
        raise
    return Attached(ids, uploaded)


async def forget(files: Files, caller: Caller, uploaded: Sequence[UUID]) -> None:
    """Delete the files a refused turn uploaded (best effort: each is the caller's)."""
    for file_id in uploaded:
        try:
            await files.delete(caller, file_id)
        except FileNotFound:
            continue
