"""``data:`` URLs (RFC 2397) as upload pieces: how a chat client sends a file inline.

The AI SDK's ``useChat`` turns the files of a ``FileList`` into ``file`` parts whose
``url`` is a data URL (``FileReader.readAsDataURL``: base64). The whole URL is in
memory already (it came in the JSON body), so it is decoded in bounded slices, each
handed on as one piece of an upload, never as a second copy of the whole file.

The URL's declared media type is ignored: the content decides, as for every upload.
A URL that is not one (no comma, broken base64) is refused before anything is stored.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from turnstream.domain.errors import Invalid

PIECE_CHARS = 256 * 1024
"""Characters of the URL decoded at once (a multiple of 4: whole base64 quanta)."""
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@dataclass(frozen=True)
class DataUrl:
    """A checked data URL: its payload and how it is encoded."""

    payload: str
    base64: bool

    @property
    def size(self) -> int | None:
        """The bytes a base64 payload decodes to (None for a percent-encoded one), so
        that a file over the limit is refused before anything is stored."""
        if not self.base64:
            return None
        padding = 2 if self.payload.endswith("==") else 1 if self.payload.endswith("=") else 0
        return len(self.payload) // 4 * 3 - padding

    async def pieces(self) -> AsyncIterator[bytes]:
        """The decoded bytes, a slice of at most :data:`PIECE_CHARS` characters at a time."""
        payload, start = self.payload, 0
        while start < len(payload):
            end = min(start + PIECE_CHARS, len(payload))
            if not self.base64:
                # Never cut a %XX escape in two.
                cut = payload.rfind("%", max(start, end - 2), end)
                if cut != -1 and end < len(payload):
                    end = cut
                yield unquote_to_bytes(payload[start:end])
            else:
                yield base64.b64decode(payload[start:end])
            start = end


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def parse_data_url(url: str, field: str) -> DataUrl:
    """The data URL ``url`` checked whole (400 ``invalid_request`` naming ``field``)."""
    comma = url.find(",")
    if not is_data_url(url) or comma == -1:
        raise Invalid(f"{field}: a data URL is 'data:[<type>][;base64],<data>'.", field=field)
    params = [p.strip().lower() for p in url[5:comma].split(";")]
    encoded = params[-1] == "base64"
    payload = url[comma + 1 :]
    if encoded and (len(payload) % 4 or _BASE64.fullmatch(payload) is None):
        raise Invalid(f"{field}: the data URL's base64 is malformed.", field=field)
    return DataUrl(payload=payload, base64=encoded)
