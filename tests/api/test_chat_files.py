"""The AI SDK's ``file`` parts through ``POST /v1/chat``: data URLs uploaded with the
turn (within the upload's limits), this server's file URLs taken as they are, every
other URL refused, and nothing stored by a refused request.

One server for the module (the demo model describes what it is given), at most two
files per message and 4 KiB per file, so that each limit is cheap to reach.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_chat import chunks_of
from tests.support.files import elf, png
from tests.support.inprocess import InProcessServer
from tests.support.shared_server import count_events, served

NOTES = b"Quarterly notes\nrevenue went up\n"


@pytest.fixture(scope="module")
def server(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    env = {
        "TURNSTREAM_DEMO_TOKENS": "8",
        "TURNSTREAM_DEMO_TOKENS_PER_S": "0",
        "TURNSTREAM_LIMIT_FILES_PER_MESSAGE": "2",
        "TURNSTREAM_LIMIT_FILE_BYTES": "4096",
    }
    with served(database_url, nats_url, tmp_path_factory.mktemp("chatfiles"), **env) as server:
        yield server


def data_url(content: bytes, declared: str = "application/octet-stream") -> str:
    return f"data:{declared};base64,{base64.b64encode(content).decode()}"


def file_part(url: str, filename: str | None = None) -> dict[str, Any]:
    part = {"type": "file", "mediaType": "image/png", "url": url}
    return part | ({"filename": filename} if filename else {})


def user(*parts: dict[str, Any], text: str | None = "What is this?") -> dict[str, Any]:
    texts = [{"type": "text", "text": text}] if text else []
    return {"id": f"u-{uuid.uuid4().hex[:8]}", "role": "user", "parts": [*texts, *parts]}


def chat(
    server: InProcessServer, messages: list[dict[str, Any]], who: str = "alice", **extra: Any
) -> httpx.Response:
    body = {"id": extra.pop("chat_id", f"c-{uuid.uuid4().hex[:8]}"), "messages": messages}
    return httpx.post(
        f"{server.base_url}/v1/chat",
        json=body | extra,
        headers=server.headers("acme", who),
        timeout=60,
    )


def answer_of(r: httpx.Response) -> tuple[str, str]:
    """The streamed answer's text, and its conversation id."""
    assert r.status_code == 200, r.text
    chunks = [c for _, c in chunks_of(r.text) if isinstance(c, dict)]
    text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
    return text, chunks[0]["messageMetadata"]["conversation_id"]


def tree(server: InProcessServer, cid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


def upload(server: InProcessServer, content: bytes, name: str, who: str = "alice") -> str:
    r = httpx.post(
        f"{server.base_url}/v1/files",
        files={"file": (name, content, "application/octet-stream")},
        headers=server.headers("acme", who),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def refused(server: InProcessServer, status: int, code: str, *parts: dict[str, Any]) -> None:
    """The chat refuses the message with ``parts``, and stores nothing at all (on a chat
    made before: a chat's first request makes its conversation, whatever follows)."""
    answer_of(chat(server, [user(text="Hello")], chat_id="refusals"))
    before = count_events(server.database_url, server.schema)
    r = chat(server, [user(*parts)], chat_id="refusals")
    assert r.status_code == status, r.text
    assert r.json()["code"] == code, r.text
    assert count_events(server.database_url, server.schema) == before


def test_a_data_url_is_uploaded_with_the_turn_and_the_tree_lists_it(
    server: InProcessServer,
) -> None:
    image = png(32, 16)
    # The declared type is not believed: the content is a PNG.
    r = chat(server, [user(file_part(data_url(image, "text/plain"), "chart.png"))])
    text, cid = answer_of(r)
    assert "You attached 1 file." in text
    assert f"chart.png: image/png, {len(image)} bytes, 32x16 pixels" in text
    question = tree(server, cid)[0]
    assert question["content"] == "What is this?"
    [attached] = question["attachments"]
    assert (attached["name"], attached["media_type"], attached["bytes"]) == (
        "chart.png",
        "image/png",
        len(image),
    )
    got = httpx.get(f"{server.base_url}/v1/files/{attached['id']}", headers=server.headers())
    assert got.content == image


def test_a_message_of_only_files_and_this_servers_own_file_urls(
    server: InProcessServer,
) -> None:
    notes = upload(server, NOTES, "notes.md")
    other = upload(server, b"second file\n", "b.txt")
    parts = [
        file_part(f"/v1/files/{notes}"),  # relative
        file_part(f"{server.base_url}/v1/files/{other}"),  # absolute, this server
    ]
    text, cid = answer_of(chat(server, [user(*parts, text=None)]))
    assert "You attached 2 files." in text
    assert '"Quarterly notes"' in text
    question = tree(server, cid)[0]
    assert question["content"] == ""
    assert [a["id"] for a in question["attachments"]] == [notes, other]


def test_only_the_last_user_message_s_files_count_and_a_resend_uploads_nothing(
    server: InProcessServer,
) -> None:
    first = user(file_part(data_url(NOTES), "n.txt"))
    _, cid = answer_of(chat(server, [first], chat_id="resend"))
    answer = {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "ok"}]}
    # The whole history again with a new question: the earlier file is not uploaded
    # again, and its bad URL (were it read) would be refused.
    stale = first | {"parts": [*first["parts"], file_part("https://example.com/x.png")]}
    answer_of(chat(server, [stale, answer, user(text="And now?")], chat_id="resend"))
    # The same last message again is a retry of its answer: no new user message, no upload.
    before = count_events(server.database_url, server.schema)
    answer_of(chat(server, [first], chat_id="resend"))
    messages = tree(server, cid)
    assert [m["role"] for m in messages].count("user") == 2
    assert [len(m["attachments"]) for m in messages if m["role"] == "user"] == [1, 0]
    assert count_events(server.database_url, server.schema) > before  # the retry's turn


def test_another_users_file_is_not_found(server: InProcessServer) -> None:
    bobs = upload(server, NOTES, "bob.txt", who="bob")
    refused(server, 404, "file_not_found", file_part(f"/v1/files/{bobs}"))
    missing = "01900000-0000-7000-8000-000000000000"
    refused(
        server, 404, "file_not_found", file_part(data_url(NOTES)), file_part(f"/v1/files/{missing}")
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "https://example.com/v1/files/01900000-0000-7000-8000-000000000000",
        "/v1/files/not-a-uuid",
        "/v1/conversations",
        "",
    ],
)
def test_any_other_url_is_refused_and_never_fetched(server: InProcessServer, url: str) -> None:
    refused(server, 400, "invalid_request", file_part(data_url(NOTES)), file_part(url))


@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64,iVBORw0KGgo=!!", "data:image/png;base64,abc", "data:no-comma"],
)
def test_a_bad_data_url_is_refused(server: InProcessServer, url: str) -> None:
    refused(server, 400, "invalid_request", file_part(data_url(NOTES)), file_part(url))


def test_the_upload_limits_hold(server: InProcessServer) -> None:
    three = [file_part(data_url(NOTES)) for _ in range(3)]
    refused(server, 400, "too_many_attachments", *three)
    refused(server, 413, "file_too_large", file_part(data_url(b"x" * 5000)))
    # A renamed executable is refused by its content; the first file, uploaded
    # already, is deleted again (its two events), and the chat has no new message.
    before = count_events(server.database_url, server.schema)
    parts = [file_part(data_url(NOTES)), file_part(data_url(elf()), "c.png")]
    r = chat(server, [user(*parts)], chat_id="refusals")
    assert r.status_code == 415, r.text
    assert r.json()["code"] == "unsupported_media_type"
    assert count_events(server.database_url, server.schema) == before + 2


def test_a_percent_encoded_data_url_works_too(server: InProcessServer) -> None:
    text, _ = answer_of(chat(server, [user(file_part("data:,hello%20there%0A", "hi.txt"))]))
    assert '"hello there"' in text
