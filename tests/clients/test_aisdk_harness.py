"""The AI SDK harness itself (chat.mjs, run_chat) against a stub of the chat routes that
replays fixed frames: each action, and that the clients' chunk parsers are what the real
tests rely on (5.0.0 refuses a field it does not know; 7 lets it through)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.aisdk import VERSIONS, run_chat, uimessage
from tests.support.node import node_version

pytestmark = [pytest.mark.node, pytest.mark.usefixtures("aisdk_clients")]

MESSAGE_ID = "4b1c7a0e-0000-4000-8000-000000000001"
CHUNKS: list[dict[str, Any]] = [
    {"type": "start", "messageId": MESSAGE_ID, "messageMetadata": {"turn_id": "t"}},
    {"type": "start-step"},
    {"type": "reasoning-start", "id": "r"},
    {"type": "reasoning-delta", "id": "r", "delta": "Thinking."},
    {"type": "reasoning-end", "id": "r"},
    {"type": "text-start", "id": "x"},
    {"type": "text-delta", "id": "x", "delta": "Hello "},
    {"type": "text-delta", "id": "x", "delta": "world"},
    {"type": "text-end", "id": "x"},
    {"type": "data-title", "data": {"title": "Greeting"}},
    {"type": "finish-step"},
    {"type": "finish", "messageMetadata": {"status": "complete"}},
]


class Stub(ThreadingHTTPServer):
    chunks: list[dict[str, Any]] = CHUNKS
    requests: list[tuple[str, str, Any]]
    stream_running = False


class Handler(BaseHTTPRequestHandler):
    server: Stub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, body: bytes = b"", kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def refuse_unless_authorized(self) -> bool:
        if self.headers.get("authorization") == "Bearer good":
            return False
        problem = {"status": 401, "title": "unauthorized", "detail": "bad token"}
        self.answer(401, json.dumps(problem).encode(), "application/problem+json")
        return True

    def stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-vercel-ai-ui-message-stream", "v1")
        self.end_headers()
        for chunk in self.server.chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        self.server.requests.append(("POST", self.path, body))
        if self.refuse_unless_authorized():
            return
        if self.path == "/v1/chat":
            self.stream()
        elif self.path.endswith("/stop"):
            self.answer(202, b"{}")
        else:
            self.answer(404)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None))
        if self.refuse_unless_authorized():
            return
        if self.server.stream_running:
            self.stream()
        else:
            self.answer(204)


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def base(stub: Stub) -> str:
    host, port = stub.server_address[:2]
    return f"http://{host!s}:{port}"


def test_the_wheels_node_is_new_enough_for_every_client(aisdk_clients: Path) -> None:
    assert node_version() >= (22,)
    for version in VERSIONS:
        assert (aisdk_clients / "node_modules" / version / "package.json").is_file()


@pytest.mark.parametrize("version", VERSIONS)
def test_send_records_every_chunk_and_the_assembled_message(stub: Stub, version: str) -> None:
    user = uimessage("hi")
    result = run_chat(
        version,
        "send",
        base=base(stub),
        token="good",
        chat_id="c1",
        messages=[user],
        body={"model": "demo"},
    )
    assert result.error is None, result.error
    assert result.chunks == CHUNKS
    assert result.message is not None
    assert result.message["id"] == MESSAGE_ID
    assert result.message["role"] == "assistant"
    assert result.text() == "Hello world"
    assert result.reasoning() == "Thinking."
    assert result.message["metadata"] == {"turn_id": "t", "status": "complete"}
    (request,) = stub.requests
    assert request[:2] == ("POST", "/v1/chat")
    assert request[2] == {
        "model": "demo",
        "id": "c1",
        "messages": [user],
        "trigger": "submit-message",
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_reconnect_with_no_running_turn_is_none(stub: Stub, version: str) -> None:
    result = run_chat(version, "reconnect", base=base(stub), token="good", chat_id="c1")
    assert result.none
    assert (result.chunks, result.message, result.error) == ([], None, None)
    assert stub.requests == [("GET", "/v1/chat/c1/stream", None)]


def test_reconnect_to_a_running_turn_reads_it(stub: Stub) -> None:
    stub.stream_running = True
    result = run_chat("ai5", "reconnect", base=base(stub), token="good", chat_id="c1")
    assert not result.none
    assert result.chunks == CHUNKS
    assert result.text() == "Hello world"


def test_send_and_stop_posts_stop_after_the_first_text_delta(stub: Stub) -> None:
    result = run_chat(
        "ai6", "send-and-stop", base=base(stub), token="good", chat_id="c1", messages=[]
    )
    assert result.stop == 202
    assert [r[:2] for r in stub.requests] == [("POST", "/v1/chat"), ("POST", "/v1/chat/c1/stop")]
    assert result.chunks == CHUNKS, "it reads on to the end"


def test_send_and_drop_ends_after_the_first_text_delta(stub: Stub) -> None:
    result = run_chat(
        "ai7", "send-and-drop", base=base(stub), token="good", chat_id="c1", messages=[]
    )
    assert result.error is None, result.error
    assert result.types[-1] == "text-delta"
    assert result.text() == "Hello "


@pytest.mark.parametrize("version", VERSIONS)
def test_a_refusal_is_the_clients_error_with_the_body(stub: Stub, version: str) -> None:
    result = run_chat(version, "send", base=base(stub), token="bad", chat_id="c1", messages=[])
    assert result.message is None
    assert result.error is not None
    assert json.loads(result.error)["title"] == "unauthorized"


def test_ai5_refuses_a_field_it_does_not_know_and_ai7_does_not(stub: Stub) -> None:
    """What makes the strict 5.0.0 parser the proof of the real tests' chunks."""
    stub.chunks = [*CHUNKS[:-1], {"type": "finish", "finishReason": "stop"}]
    strict = run_chat("ai5", "send", base=base(stub), token="good", chat_id="c", messages=[])
    assert strict.error is not None
    assert "finishReason" in strict.error
    assert "finish" not in strict.types
    loose = run_chat("ai7", "send", base=base(stub), token="good", chat_id="c", messages=[])
    assert loose.error is None, loose.error
    assert loose.types[-1] == "finish"
