"""A real local HTTP server that speaks the OpenAI chat completions API, scripted per test.

It streams ``chat.completion.chunk`` objects as SSE over chunked transfer encoding, just
as OpenAI, vLLM or llama.cpp do, so the ``openai`` SDK under test runs its real HTTP,
SSE and error paths. Every request body it receives is recorded.

Usage::

    with FakeOpenAI() as server:
        server.script(chunks=["Hel", "lo"], reasoning=["hmm"], usage=(10, 3))
        ...  # point a client at server.base_url
        assert server.requests[0]["messages"] == [...]

or take the ``fake_openai`` pytest fixture.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest

__all__ = ["FakeOpenAI", "Script", "fake_openai"]


@dataclass(frozen=True, kw_only=True)
class Script:
    """How the fake server answers the next requests.

    Attributes:
        chunks: The answer, one ``delta.content`` per chunk.
        reasoning: Reasoning pieces sent before the answer, one chunk each.
        reasoning_field: The delta field carrying reasoning: ``reasoning_content``
            (DeepSeek, vLLM) or ``reasoning`` (Ollama, OpenRouter).
        usage: ``(prompt_tokens, completion_tokens)`` sent in a final usage chunk when
            the client asked for it, or None to send no usage at all.
        finish_reason: Sent in the last choice chunk; None sends no finish reason.
        delay_s: Pause before each streamed chunk.
        status: An HTTP status >= 400 answers with an OpenAI-style error body instead.
        error_message: The ``error.message`` of that body.
        break_after: Drop the connection mid-body after this many reasoning/answer
            chunks (no terminating chunk, so the client sees a broken stream).
        done: Whether to end with ``data: [DONE]``.
    """

    chunks: Sequence[str] = ("Hello", " from", " the", " fake", ".")
    reasoning: Sequence[str] = ()
    reasoning_field: str = "reasoning_content"
    usage: tuple[int, int] | None = (11, 7)
    finish_reason: str | None = "stop"
    delay_s: float = 0.0
    status: int = 200
    error_message: str = "Something went wrong on the fake server."
    break_after: int | None = None
    done: bool = True


@dataclass
class _State:
    script: Script = field(default_factory=Script)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small SSE writes must leave at once, not wait for Nagle.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_POST(self) -> None:
        """Answer ``/v1/chat/completions`` as scripted; anything else is a 404."""
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        state = self.server.state
        try:
            body: dict[str, Any] = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsable": raw.decode("utf-8", "replace")}
        with state.lock:
            state.requests.append(body)
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            script = state.script

        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_error(404, f"Unknown path {self.path}")
            return
        if script.status >= 400:
            self._send_error(script.status, script.error_message)
            return
        try:
            if body.get("stream"):
                self._stream(body, script)
            else:
                self._complete(body, script)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test); nothing left to say.
            self.close_connection = True

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str) -> None:
        error_type = _ERROR_TYPES.get(status, "server_error")
        self._send_json(
            status,
            {"error": {"message": message, "type": error_type, "param": None, "code": None}},
        )

    def _complete(self, body: dict[str, Any], script: Script) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(script.chunks)}
        if script.reasoning:
            message[script.reasoning_field] = "".join(script.reasoning)
        payload: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": script.finish_reason}],
        }
        if script.usage is not None:
            payload["usage"] = _usage(script.usage)
        self._send_json(200, payload)

    def _stream(self, body: dict[str, Any], script: Script) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        model = str(body.get("model", "fake"))
        created = int(time.time())

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if usage is not None:
                chunk["usage"] = usage
            self._write_sse(json.dumps(chunk), script.delay_s)

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        # Real servers open with the role and an empty content.
        event([choice({"role": "assistant", "content": ""})])
        deltas = [{script.reasoning_field: text} for text in script.reasoning]
        deltas += [{"content": text} for text in script.chunks]
        for sent, delta in enumerate(deltas):
            if script.break_after is not None and sent >= script.break_after:
                self._break_connection()
                return
            event([choice(delta)])
        if script.break_after is not None and script.break_after <= len(deltas):
            self._break_connection()
            return
        if script.finish_reason is not None:
            event([choice({}, script.finish_reason)])
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if script.usage is not None and wants_usage:
            event([], _usage(script.usage))
        if script.done:
            self._write_sse("[DONE]", 0.0)
        self._write_chunk(b"")

    def _write_sse(self, data: str, delay_s: float) -> None:
        if delay_s > 0:
            time.sleep(delay_s)
        self._write_chunk(f"data: {data}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _break_connection(self) -> None:
        # No terminating zero-length chunk: the client must see a truncated body, not a
        # clean end of stream.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class FakeOpenAI:
    """A scripted OpenAI-compatible server on ``127.0.0.1`` and a free port.

    Attributes:
        base_url: The URL to configure as a model's ``base_url`` (ends in ``/v1``).
    """

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State()
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}/v1"
        # A short poll interval: shutdown() waits up to one interval, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-openai",
            daemon=True,
        )

    def start(self) -> FakeOpenAI:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def script(
        self,
        *,
        chunks: Sequence[str] = Script.chunks,
        reasoning: Sequence[str] = Script.reasoning,
        reasoning_field: str = Script.reasoning_field,
        usage: tuple[int, int] | None = Script.usage,
        finish_reason: str | None = Script.finish_reason,
        delay_s: float = Script.delay_s,
        status: int = Script.status,
        error_message: str = Script.error_message,
        break_after: int | None = Script.break_after,
        done: bool = Script.done,
    ) -> Script:
        """Set how every following request is answered (until the next call).

        Args:
            chunks: The answer, one ``delta.content`` per chunk.
            reasoning: Reasoning pieces sent before the answer.
            reasoning_field: ``reasoning_content`` or ``reasoning``.
            usage: ``(prompt_tokens, completion_tokens)``, or None to send none.
            finish_reason: The finish reason, or None to send none.
            delay_s: Pause before each streamed chunk.
            status: An HTTP error status to fail with (>= 400).
            error_message: The error body's ``error.message``.
            break_after: Drop the connection after this many reasoning/answer chunks.
            done: Whether to end the stream with ``data: [DONE]``.

        Returns:
            The script now in force.
        """
        new = Script(
            chunks=tuple(chunks),
            reasoning=tuple(reasoning),
            reasoning_field=reasoning_field,
            usage=usage,
            finish_reason=finish_reason,
            delay_s=delay_s,
            status=status,
            error_message=error_message,
            break_after=break_after,
            done=done,
        )
        with self._server.state.lock:
            self._server.state.script = new
        return new

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request body received so far, parsed, oldest first."""
        with self._server.state.lock:
            return list(self._server.state.requests)

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers of every request received so far (names lower-cased)."""
        with self._server.state.lock:
            return list(self._server.state.headers)


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running :class:`FakeOpenAI`, stopped after the test."""
    with FakeOpenAI() as server:
        yield server
