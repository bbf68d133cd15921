"""Tools with the real AI SDK ``Chat`` (npm package ``ai`` 5.0.0, 6.x, 7.x), unmodified:
``tests/clients/aisdk/tools.mjs`` makes an ``AbstractChat`` with a plain state, as the
React and Vue bindings do, and answers as an app would.

A client tool, against the real server and the demo model: the app declares it in the
transport's ``body``, ``onToolCall`` answers with ``addToolResult`` / ``addToolOutput``,
``sendAutomaticallyWhen`` re-posts the messages, and the turn goes on: one assistant
message, one stored turn.

Approvals (ai >= 6, opted in with ``X-Turnstream-Tool-Approvals: 1``): a server tool of
a real MCP server (``tests/support/mcp_server.py``) that needs a person's approval; the
app answers with ``addToolApprovalResponse`` and ``sendAutomaticallyWhen`` re-posts.
ai 5.0.0 gets no approval chunk unless it asks (its strict parser refuses them).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_tools import WEATHER
from tests.support.aisdk import VERSIONS, ToolChat, run_tools
from tests.support.inprocess import InProcessServer
from tests.support.mcp_server import models_entry
from tests.support.shared_server import served

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("aisdk_clients")]

ASK = "What does get_weather say for Oslo?"
OUTPUT = {"sky": "clear-7C"}
APPROVALS = {"X-Turnstream-Tool-Approvals": "1"}
FAST = {"TURNSTREAM_DEMO_TOKENS": "12", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}


@pytest.fixture(scope="module")
def fast(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    with served(database_url, nats_url, tmp_path_factory.mktemp("tools"), **FAST) as server:
        yield server


@pytest.fixture(scope="module")
def mcp(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    """The demo model with the test MCP server's tools; ``weather`` needs approval."""
    folder = tmp_path_factory.mktemp("mcp")
    models = folder / "models.toml"
    models.write_text(
        models_entry("tools", ["weather"])
        + """
[[models]]
id = "demo"
provider = "demo"
default = true
mcp_servers = ["tools"]
"""
    )
    env = FAST | {"TURNSTREAM_MODELS": str(models)}
    with served(database_url, nats_url, folder, **env) as server:
        yield server


def chat_id() -> str:
    return f"tools-{uuid.uuid4().hex[:12]}"


def tool_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p for p in message["parts"] if p["type"].startswith("tool-") or p["type"] == "dynamic-tool"
    ]


def assert_clean(chat: ToolChat, requests: int) -> None:
    assert chat.error is None, f"{chat.error}\n{chat.stderr}"
    assert chat.status == "ready"
    assert len(chat.exchanges) == requests, [e.types for e in chat.exchanges]
    assert {e.status for e in chat.exchanges} == {200}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_client_tool_is_run_by_the_app_and_the_same_turn_answers_with_its_result(
    fast: InProcessServer, version: str
) -> None:
    cid = chat_id()
    chat = run_tools(
        version,
        "client-tool",
        base=fast.base_url,
        token=fast.token("acme", "alice"),
        chat_id=cid,
        text=ASK,
        tools=[WEATHER],
        output=OUTPUT,
    )
    assert_clean(chat, requests=2)  # the question, then the result: no third request
    asked, answered = chat.exchanges
    assert asked.body["tools"] == [WEATHER]
    assert asked.types[-2:] == ["finish-step", "finish"]
    assert asked.chunks[-1]["messageMetadata"]["status"] == "waiting"
    (call,) = chat.tool_calls
    assert call["toolName"] == "get_weather"

    # The re-post: the assistant message, its tool part answered.
    reposted = answered.body["messages"][-1]
    assert reposted["role"] == "assistant"
    (part,) = tool_parts(reposted)
    assert (part["toolCallId"], part["state"], part["output"]) == (
        call["toolCallId"],
        "output-available",
        OUTPUT,
    )
    start = answered.chunks[0]
    assert start["messageId"] == asked.chunks[0]["messageId"] == reposted["id"]

    # One assistant message: the answered call, then text that uses its result.
    user, answer = chat.messages
    assert (user["role"], answer["role"], answer["id"]) == ("user", "assistant", reposted["id"])
    kinds = [p["type"] for p in answer["parts"]]
    tool_at = kinds.index("tool-get_weather")
    assert answer["parts"][tool_at]["state"] == "output-available"
    assert answer["parts"][tool_at]["output"] == OUTPUT
    assert "step-start" in kinds[tool_at:]  # the answer is the next step
    text = "".join(p["text"] for p in answer["parts"][tool_at:] if p["type"] == "text")
    assert "clear-7C" in text
    assert answer["metadata"]["status"] == "completed"
    assert answer["metadata"]["waiting"] is None

    # The server has one turn, its seq gapless across both streams.
    meta = answer["metadata"]
    assert asked.chunks[0]["messageMetadata"]["turn_id"] == meta["turn_id"]
    turn_url = f"/v1/conversations/{meta['conversation_id']}/turns/{meta['turn_id']}/events"
    with httpx.stream(
        "GET", fast.base_url + turn_url, headers=fast.headers("acme", "alice"), timeout=30
    ) as r:
        ids = [int(line[4:]) for line in r.iter_lines() if line.startswith("id: ")]
    assert ids == list(range(1, len(ids) + 1))
    view = httpx.get(
        f"{fast.base_url}/v1/conversations/{meta['conversation_id']}",
        headers=fast.headers("acme", "alice"),
    ).json()
    assert [m["id"] for m in view["messages"] if m["role"] == "assistant"] == [answer["id"]]
    assert "clear-7C" in view["messages"][-1]["content"]


@pytest.mark.parametrize("version", ["ai6", "ai7"])
@pytest.mark.parametrize("approve", [True, False])
def test_a_server_tool_waits_for_addToolApprovalResponse_and_the_turn_goes_on(
    mcp: InProcessServer, version: str, approve: bool
) -> None:
    chat = run_tools(
        version,
        "approval",
        base=mcp.base_url,
        token=mcp.token("acme", "alice"),
        chat_id=chat_id(),
        text="Ask the weather tool about Oslo",
        approve=approve,
        reason="fine" if approve else "not now",
        headers=APPROVALS,
    )
    assert_clean(chat, requests=2)
    asked, decided = chat.exchanges
    request = next(c for c in asked.chunks if c["type"] == "tool-approval-request")
    assert asked.chunks[-1]["messageMetadata"]["waiting"]["reason"] == "approval"
    (part,) = tool_parts(decided.body["messages"][-1])
    assert part["state"] == "approval-responded"
    assert part["approval"]["id"] == request["approvalId"]

    _, answer = chat.messages
    (part,) = tool_parts(answer)
    assert (part["type"], part["toolName"], part["providerExecuted"]) == (
        "dynamic-tool",
        "weather",
        True,
    )  # shown, never run by the client
    text = "".join(p["text"] for p in answer["parts"] if p["type"] == "text")
    if approve:
        assert part["state"] == "output-available"
        assert "°C, clear" in part["output"]  # the MCP server's answer
        assert part["output"] in text
    else:
        assert part["state"] == "output-denied"
        assert "not now" in text  # the model was told why
    assert answer["metadata"]["status"] == "completed"
    assert decided.chunks[0]["messageMetadata"]["turn_id"] == answer["metadata"]["turn_id"]


def test_ai5_is_sent_no_approval_chunks_unless_it_says_it_knows_them(mcp: InProcessServer) -> None:
    spec: dict[str, Any] = {"base": mcp.base_url, "token": mcp.token("acme", "alice")}
    spec["text"] = "Ask the weather tool about Oslo"
    plain = run_tools("ai5", "approval", chat_id=chat_id(), **spec)
    assert_clean(plain, requests=1)  # it shows the call, waiting; the app decides by REST
    (part,) = tool_parts(plain.last)
    assert (part["type"], part["state"]) == ("dynamic-tool", "input-available")
    assert plain.last["metadata"]["waiting"]["reason"] == "approval"
    # Why the opt-in: 5.0.0's strict parser refuses the chunk.
    told = run_tools("ai5", "approval", chat_id=chat_id(), headers=APPROVALS, **spec)
    assert told.error is not None
    assert "tool-approval-request" in told.error
