"""A chat's history (``GET /v1/chat/{id}/messages``) against the real AI SDK ``Chat``
(npm package ``ai`` 5.0.0, 6.x, 7.x): the messages the server gives back are the ones
the SDK built from the stream (files, reasoning, text, tool calls), the SDK's own
``validateUIMessages`` takes them (ai >= 6), and a chat started from them goes on.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_tools import WEATHER
from tests.clients.test_aisdk_files import NOTES, run_files, text_of
from tests.support.aisdk import VERSIONS, run_tools
from tests.support.files import png
from tests.support.inprocess import InProcessServer
from tests.support.shared_server import served

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("aisdk_clients")]

FAST = {"TURNSTREAM_DEMO_TOKENS": "12", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}
CLIENT_ONLY = ("providerMetadata", "callProviderMetadata", "id")
"""What the SDK keeps of a stream that the tree does not: none of it is sent here, and
a part's ``id`` (ai >= 6 keeps the stream's reasoning id) is optional."""


@pytest.fixture(scope="module")
def server(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    with served(database_url, nats_url, tmp_path_factory.mktemp("history"), **FAST) as server:
        yield server


def history(server: InProcessServer, chat_id: str, who: str = "alice") -> list[dict[str, Any]]:
    r = httpx.get(
        f"{server.base_url}/v1/chat/{chat_id}/messages", headers=server.headers("acme", who)
    )
    assert r.status_code == 200, r.text
    return list(r.json())


def plain(part: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in part.items() if k not in CLIENT_ONLY}


def content(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's parts but its data parts: the title is the conversation's, not a
    message's (``GET /v1/conversations/{cid}``)."""
    return [plain(p) for p in message["parts"] if not p["type"].startswith("data-")]


def assert_same_answer(given: dict[str, Any], made: dict[str, Any]) -> None:
    """``given`` (the server's) is the answer the SDK ``made`` from the stream."""
    assert (given["id"], given["role"]) == (made["id"], "assistant")
    assert given["parts"] == content(made)
    mine = {k: made["metadata"][k] for k in given["metadata"] if k in made["metadata"]}
    assert given["metadata"] == mine | {"conversation_id": given["metadata"]["conversation_id"]}
    assert set(given["metadata"]) >= {"turn_id", "conversation_id", "model", "status", "usage"}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_history_is_what_the_sdk_made_and_a_chat_goes_on_from_it(
    server: InProcessServer, version: str
) -> None:
    image = png(20, 10)
    chat_id = f"history-{version}-{uuid.uuid4().hex[:8]}"
    files = [
        {"name": "chart.png", "type": "image/png", "base64": base64.b64encode(image).decode()},
        {"name": "notes.md", "type": "text/markdown", "base64": base64.b64encode(NOTES).decode()},
    ]
    out = run_files(server, version, chat_id, [{"text": "What are these?", "files": files}])
    assert not [item["error"] for item in out if "error" in item]
    made = next(item["messages"] for item in out if "messages" in item)

    given = history(server, chat_id)
    assert [m["role"] for m in given] == ["user", "assistant"]
    question, answer = given
    # The user message: the client's id, its files (now this server's URLs), its text.
    assert question["id"] == made[0]["id"]
    parts = question["parts"]
    assert [p["type"] for p in parts] == [p["type"] for p in made[0]["parts"]]
    assert parts[-1] == {"type": "text", "text": "What are these?"}
    assert [(p["mediaType"], p["filename"]) for p in parts[:2]] == [
        ("image/png", "chart.png"),
        ("text/markdown", "notes.md"),
    ]
    for part, content in zip(parts[:2], (image, NOTES), strict=True):
        assert part["url"].startswith("/v1/files/")
        r = httpx.get(server.base_url + part["url"], headers=server.headers())
        assert (r.status_code, r.content) == (200, content)
    assert_same_answer(answer, made[1])
    assert "You attached 2 files." in text_of(answer)

    # A page opened again: the chat starts from the history and goes on.
    out = run_files(server, version, chat_id, [{"text": "And now?"}], initial=given)
    assert not [item["error"] for item in out if "error" in item]
    if version != "ai5":  # ai 5.0.0 has no validateUIMessages
        assert [item["validated"] for item in out if "validated" in item] == [2]
    now = next(item["messages"] for item in out if "messages" in item)
    assert [m["role"] for m in now] == ["user", "assistant", "user", "assistant"]
    (request,) = [item["request"] for item in out if "request" in item]
    assert request["body"]["messages"][:2] == given
    after = history(server, chat_id)
    assert after[:2] == given
    assert_same_answer(after[3], now[3])
    tree = conversation_tree(server, answer["metadata"]["conversation_id"])
    asked = [m for m in tree if m["role"] == "user"]
    assert [len(m["attachments"]) for m in asked] == [2, 0]  # nothing uploaded again


def conversation_tree(server: InProcessServer, cid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_tool_turn_comes_back_with_its_steps_and_its_call(
    server: InProcessServer, version: str
) -> None:
    chat_id = f"history-tools-{version}-{uuid.uuid4().hex[:8]}"
    chat = run_tools(
        version,
        "client-tool",
        base=server.base_url,
        token=server.token("acme", "alice"),
        chat_id=chat_id,
        text="What does get_weather say for Oslo?",
        tools=[WEATHER],
        output={"sky": "clear-7C"},
    )
    assert chat.error is None, f"{chat.error}\n{chat.stderr}"
    given = history(server, chat_id)
    assert [m["id"] for m in given] == [m["id"] for m in chat.messages]
    assert given[0]["parts"] == [plain(p) for p in chat.messages[0]["parts"]]
    assert_same_answer(given[1], chat.last)
    kinds = [p["type"] for p in given[1]["parts"]]
    assert kinds.count("step-start") == 2
    assert "tool-get_weather" in kinds

    out = run_files(server, version, chat_id, [], initial=given)
    assert not [item["error"] for item in out if "error" in item]
    if version != "ai5":
        assert [item["validated"] for item in out if "validated" in item] == [2]


def test_a_chat_of_no_one_or_of_someone_else_is_empty(server: InProcessServer) -> None:
    chat_id = f"history-mine-{uuid.uuid4().hex[:8]}"
    out = run_files(server, "ai5", chat_id, [{"text": "Hello"}])
    assert not [item["error"] for item in out if "error" in item]
    mine = history(server, chat_id)
    assert len(mine) == 2
    cid = mine[1]["metadata"]["conversation_id"]
    assert history(server, chat_id, who="bob") == []
    assert history(server, cid, who="bob") == []  # its conversation's id names nothing either
    assert history(server, cid) == mine  # the owner may name it by the conversation's id
    assert history(server, f"history-new-{uuid.uuid4().hex[:8]}") == []
