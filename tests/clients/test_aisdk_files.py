"""Files with the real AI SDK ``Chat`` (npm package ``ai`` 5.0.0, 6.x, 7.x), unmodified:
``tests/clients/aisdk/files.mjs`` calls ``sendMessage({text, files})`` with a FileList
(the SDK makes data URLs of it itself, as in a browser) and then with a file part that
names a file uploaded before; the demo model describes what it was given.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.aisdk import VERSIONS, run_script
from tests.support.files import png
from tests.support.inprocess import InProcessServer
from tests.support.shared_server import served

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("aisdk_clients")]

FAST = {"TURNSTREAM_DEMO_TOKENS": "12", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}
NOTES = b"Quarterly notes\nrevenue went up\n"


@pytest.fixture(scope="module")
def server(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    with served(database_url, nats_url, tmp_path_factory.mktemp("files"), **FAST) as server:
        yield server


def run_files(
    server: InProcessServer, version: str, chat_id: str, sends: list[Any], **extra: Any
) -> list[Any]:
    """files.mjs's printed items; ``extra``: more of its spec (``initial``)."""
    payload = extra | {
        "version": version,
        "base": server.base_url,
        "token": server.token("acme", "alice"),
        "chatId": chat_id,
        "sends": sends,
    }
    done = run_script("files.mjs", payload, timeout=60)
    return [json.loads(line) for line in done.stdout.splitlines()]


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


@pytest.mark.parametrize("version", VERSIONS)
def test_send_message_with_files_attaches_them(server: InProcessServer, version: str) -> None:
    image = png(24, 12)
    r = httpx.post(
        f"{server.base_url}/v1/files",
        files={"file": ("later.md", NOTES, "application/octet-stream")},
        headers=server.headers(),
    )
    assert r.status_code == 201, r.text
    later = r.json()["id"]
    chat_id = f"files-{version}-{uuid.uuid4().hex[:8]}"
    own = {"type": "file", "mediaType": "text/markdown", "url": f"/v1/files/{later}"}
    sends = [
        {
            "text": "What are these?",
            "files": [
                {
                    "name": "chart.png",
                    "type": "image/png",
                    "base64": base64.b64encode(image).decode(),
                },
                {
                    "name": "notes.md",
                    "type": "text/markdown",
                    "base64": base64.b64encode(NOTES).decode(),
                },
            ],
        },
        {"text": "And this one?", "parts": [own]},
    ]
    out = run_files(server, version, chat_id, sends)
    errors = [item["error"] for item in out if "error" in item]
    assert not errors, errors
    messages = next(item["messages"] for item in out if "messages" in item)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    # The SDK made data URLs of the FileList; the message keeps them as file parts.
    files = [p for p in messages[0]["parts"] if p["type"] == "file"]
    assert [(p["mediaType"], p["filename"]) for p in files] == [
        ("image/png", "chart.png"),
        ("text/markdown", "notes.md"),
    ]
    assert files[0]["url"] == "data:image/png;base64," + base64.b64encode(image).decode()
    first = text_of(messages[1])
    assert "You attached 2 files." in first
    assert f"chart.png: image/png, {len(image)} bytes, 24x12 pixels" in first
    assert '"Quarterly notes"' in first
    second = text_of(messages[3])
    assert "You attached 1 file." in second
    assert "later.md: text/markdown" in second
    # The second request carried the first message's data URLs again; they were not
    # uploaded again: the tree's first question keeps its two files, the second has one.
    requests = [item["request"] for item in out if "request" in item]
    assert len(requests) == 2
    assert requests[1]["body"]["messages"][0]["parts"] == messages[0]["parts"]
    meta = messages[1]["metadata"]
    tree = httpx.get(
        f"{server.base_url}/v1/conversations/{meta['conversation_id']}",
        headers=server.headers(),
    ).json()["messages"]
    asked = [m for m in tree if m["role"] == "user"]
    assert [[a["name"] for a in m["attachments"]] for m in asked] == [
        ["chart.png", "notes.md"],
        ["later.md"],
    ]
    assert asked[1]["attachments"][0]["id"] == later
