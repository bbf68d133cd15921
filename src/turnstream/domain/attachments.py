"""An attachment as a model is given it: a file's ref with its content loaded.

It lives in the domain, not with the providers, because two sibling parts build and
read it and may not import each other: ``turnstream.files`` makes one from a file's
bytes (decoding a text, extracting a PDF's text) and the providers send it. Both only
know the domain. ``turnstream.providers.base`` re-exports it.
"""

from __future__ import annotations

import msgspec

from turnstream.domain.files import FileRef


class Attachment(msgspec.Struct, frozen=True, kw_only=True):
    """A file of a user message as a model is given it.

    The ref says what the file is; the content is loaded only when the model is to see
    it (an image's bytes, a text's text, a PDF's extracted text), so a message can be
    counted and described without reading the store.
    """

    ref: FileRef
    data: bytes | None = None
    """An image's bytes (None for other files, or when not loaded)."""
    text: str | None = None
    """A text file's text, or a PDF's extracted text (None for images, or when not
    loaded)."""
