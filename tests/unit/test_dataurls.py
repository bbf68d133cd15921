"""Data URLs decode in bounded pieces to exactly their bytes, and broken ones are refused."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

from turnstream.domain.errors import Invalid
from turnstream.files.dataurls import PIECE_CHARS, parse_data_url


def decoded(url: str) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [piece async for piece in parse_data_url(url, "f").pieces()]

    return asyncio.run(collect())


def test_base64_decodes_in_bounded_pieces() -> None:
    content = os.urandom(PIECE_CHARS)  # several pieces, the last one short and padded
    url = "data:image/png;name=x.png;base64," + base64.b64encode(content).decode()
    pieces = decoded(url)
    assert b"".join(pieces) == content
    assert len(pieces) > 1
    assert max(map(len, pieces)) <= PIECE_CHARS // 4 * 3
    assert parse_data_url(url, "f").size == len(content)


def test_percent_escapes_are_never_cut_in_two() -> None:
    content = "é" * PIECE_CHARS
    url = "data:text/plain," + "".join(f"%{b:02X}" for b in content.encode())
    assert b"".join(decoded(url)).decode() == content


@pytest.mark.parametrize(
    "url", ["data:;base64,QQ=", "data:;base64,QQ==QQ==", "data:;base64,Q Q=", "data:x", "http:,"]
)
def test_a_broken_data_url_is_refused(url: str) -> None:
    with pytest.raises(Invalid):
        parse_data_url(url, "f")
