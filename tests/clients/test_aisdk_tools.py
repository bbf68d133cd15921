"""Tools with the real AI SDK ``Chat`` (npm package ``ai`` 5.0.0, 6.x, 7.x), unmodified:
``tests/clients/aisdk/tools.mjs`` makes an ``AbstractChat`` with a plain state, as the
React and Vue bindings do, and answers as an app would.

A client tool, against the real server and the demo model: the app declares it in the
transport's ``body``, ``onToolCall`` answers with ``addToolResult`` / ``addToolOutput``,
``sendAutomaticallyWhen`` re-posts the messages, and the turn goes on: one assistant
message, one stored turn.

Approvals need a server (MCP) tool, which no server of these tests has yet: the clients
are checked against a stub that answers with turnstream's own UI stream encoder over a
turn the domain makes, and reads their re-post with the chat route's own parser.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest

from tests.api.test_tools import WEATHER
from tests.support.aisdk import VERSIONS, ToolChat, run_tools
from tests.support.inprocess import InProcessServer
from tests.support.shared_server import served
from tests.support.toolturns import Script
from turnstream.domain.turn import TurnEvent
from turnstream.http.uimessages import UiMessage, answers
from turnstream.http.uistream import ui_frames
from turnstream.usecases.tooluse import Approval

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("aisdk_clients")]

ASK = "What does get_weather say for Oslo?"
OUTPUT = {"sky": "clear-7C"}
APPROVALS = {"X-Turnstream-Tool-Approvals": "1"}


@pytest.fixture(scope="module")
def fast(
    database_url: str, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    env = {"TURNSTREAM_DEMO_TOKENS": "12", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}
    with served(database_url, nats_url, tmp_path_factory.mktemp("tools"), **env) as server:
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


# Approvals, against a stub that speaks through turnstream's own encoder and parser.


class Stub(ThreadingHTTPServer):
    script: Script
    posts: list[tuple[bool, Any]]
    decided: list[Approval]


class Handler(BaseHTTPRequestHandler):
    server: Stub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        approvals = self.headers.get("x-turnstream-tool-approvals") == "1"
        self.server.posts.append((approvals, body))
        script = self.server.script
        message = msgspec.convert(body["messages"][-1], UiMessage)
        after = settled = 0
        if message.calls_tools:  # as the chat route takes the answers
            turn = script.turn()
            pending = {c.call_id: w for c in turn.steps.last_calls if (w := c.waits_for)}
            found = answers(message, pending)
            self.server.decided += found.approvals
            after = script.paused_at
            for approval in found.approvals:
                script.decide(approval.call_id, approved=approval.approved, reason=approval.reason)
            settled = len(script.events)
            if all(a.approved for a in found.approvals):
                script.add(script.go_on().result("s1", {"deleted": "a.txt"}, is_error=False))
            script.finish("Done.")
        frames = asyncio.run(read(script.events, after=after, settled=settled, approvals=approvals))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-vercel-ai-ui-message-stream", "v1")
        self.end_headers()
        self.wfile.write(frames)
        self.close_connection = True


async def read(events: list[TurnEvent], **options: Any) -> bytes:
    async def each() -> AsyncIterator[TurnEvent]:
        for event in list(events):
            yield event

    return b"".join([f async for f in ui_frames(each(), padding=True, **options)])


@pytest.fixture
def stub() -> Iterator[Stub]:
    """A turn that called a server tool which needs a person's approval, and waits."""
    server = Stub(("127.0.0.1", 0), Handler)
    script = Script(tools=())
    script.call("s1", "delete_file", '{"path": "a.txt"}', kind="server")
    server.script = script.add(script.progress.approval_requested("s1")).pause()
    server.posts, server.decided = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def on_stub(stub: Stub, version: str, **spec: Any) -> ToolChat:
    host, port = stub.server_address[:2]
    return run_tools(
        version, "approval", base=f"http://{host!s}:{port}", token="t", chat_id="c", **spec
    )


@pytest.mark.parametrize("version", ["ai6", "ai7"])
@pytest.mark.parametrize("approve", [True, False])
def test_a_person_decides_with_addToolApprovalResponse_and_the_turn_goes_on(
    stub: Stub, version: str, approve: bool
) -> None:
    chat = on_stub(
        stub, version, text="Delete a.txt", approve=approve, reason="ok?", headers=APPROVALS
    )
    assert_clean(chat, requests=2)
    asked, decided = chat.exchanges
    assert "tool-approval-request" in asked.types
    assert [approvals for approvals, _ in stub.posts] == [True, True]
    assert stub.decided == [Approval(call_id="s1", approved=approve, reason="ok?")]
    assert decided.chunks[0]["messageId"] == asked.chunks[0]["messageId"]

    _, answer = chat.messages
    (part,) = tool_parts(answer)
    assert part["type"] == "dynamic-tool"  # shown, never run by the client
    assert part["state"] == ("output-available" if approve else "output-denied")
    if approve:
        assert part["output"] == {"deleted": "a.txt"}
    assert part["approval"]["approved"] is approve
    assert [p["text"] for p in answer["parts"] if p["type"] == "text"] == ["Done."]
    assert answer["metadata"]["status"] == "completed"


def test_ai5_is_sent_no_approval_chunks_unless_it_says_it_knows_them(stub: Stub) -> None:
    plain = on_stub(stub, "ai5", text="Delete a.txt")
    assert_clean(plain, requests=1)  # it shows the call, waiting; the app decides by REST
    (part,) = tool_parts(plain.last)
    assert (part["type"], part["state"]) == ("dynamic-tool", "input-available")
    assert plain.last["metadata"]["waiting"]["reason"] == "approval"
    # Why the opt-in: 5.0.0's strict parser refuses the chunk.
    told = on_stub(stub, "ai5", text="Delete a.txt", headers=APPROVALS)
    assert told.error is not None
    assert "tool-approval-request" in told.error
