"""The ``file`` parts of a chat's last user message, as the files they name.

The AI SDK's file part is ``{type: "file", mediaType, url, filename?}``: ``useChat``'s
``sendMessage({text, files})`` makes a data URL of each file of a ``FileList``; an app
may as well name a file it uploaded (``POST /v1/files``) by its URL. So a part's URL is
either a data URL (uploaded with the turn) or one of this server's
``/v1/files/{id}`` (relative, or absolute on this server's host, under any prefix a
proxy adds). Any other URL is refused: the server never fetches what a client points
it at (no SSRF). The part's ``mediaType`` is not believed: the content decides.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit
from uuid import UUID

from litestar import Request

from turnstream.domain.chats import ChatFile
from turnstream.domain.errors import Invalid
from turnstream.files.dataurls import is_data_url
from turnstream.http.uimessages import UiMessage

_OWN_FILE = re.compile(r"(?:/.*)?/v1/files/([0-9a-fA-F-]{36})/?")


def chat_files(request: Request[Any, Any, Any], message: UiMessage) -> tuple[ChatFile, ...]:
    """The files ``message``'s file parts name, in order (400 for any other URL)."""
    found: list[ChatFile] = []
    for n, part in enumerate(message.parts):
        if part.type != "file":
            continue
        field = f"message.parts[{n}].url"
        if not part.url:
            raise Invalid(f"{field}: a file part needs its 'url'.", field=field)
        if is_data_url(part.url):
            found.append(ChatFile(data_url=part.url, name=part.filename))
        else:
            found.append(ChatFile(file_id=own_file(request, part.url, field), name=part.filename))
    return tuple(found)


def own_file(request: Request[Any, Any, Any], url: str, field: str) -> UUID:
    """The id of the file of this server that ``url`` names (resolved against the
    request's own URL, so relative forms work); 400 for any other URL."""
    here = urlsplit(str(request.url))
    there = urlsplit(urljoin(str(request.url), url))
    same_host = there.scheme in ("http", "https") and there.netloc.lower() == here.netloc.lower()
    match = _OWN_FILE.fullmatch(there.path) if same_host and not there.query else None
    if match is not None:
        try:
            return UUID(match.group(1))
        except ValueError:
            pass
    raise Invalid(
        f"{field}: a file part's url is a data: URL or one of this server's files"
        " (/v1/files/{id}); no other URL is fetched.",
        field=field,
    )
