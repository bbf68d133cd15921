"""A real local HTTP server that speaks the OpenAI chat completions API, scripted per test.

It streams ``chat.completion.chunk`` objects as SSE over chunked transfer encoding, just
as OpenAI, vLLM or llama.cpp do, so the ``openai`` SDK under test runs its real HTTP,
SSE and error paths. Every request body it receives is recorded.

Usage::

    with FakeOpenAI() as server:
        server.script(chunks=["Hel", "lo"], reasoning=["hmm"], usage=(10, 3))
        ...  # point a client at server.base_url
        assert server.requests[0]["messages"] == [...]

or take the ``fake_openai`` pytest fixture. Tool calls stream as ``delta.tool_calls``
entries with an ``index``, the way OpenAI and vLLM send them; a turn of several steps
is scripted one request at a time::

    server.queue(
        Script(tool_calls=[ToolCallScript(id="call_a", name="get_weather",
                                          arguments_chunks=['{"ci', 'ty": "Oslo"}'])],
               finish_reason="tool_calls"),
        Script(chunks=["Sunny."]),
    )
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest

__all__ = ["FakeOpenAI", "Script", "ToolCallScript", "fake_openai"]


@dataclass(frozen=True, kw_only=True)
class ToolCallScript:
    """One tool call the fake streams.

    Streamed as OpenAI does: a first entry with ``index``, ``id``, ``type`` and the
    name (or its first piece) with empty arguments, an entry per further name piece,
    then one entry per argument chunk carrying only ``index`` and the chunk.

    Attributes:
        name: The tool's name.
        arguments_chunks: The arguments' JSON text, one entry each.
        id: The call's id; None sends none (some servers omit it).
        name_chunks: The name split over entries (must join to ``name``); None sends
            it whole in the first entry.
        index: The entries' ``index``; None uses the call's place in the list.
        arguments_in_first_entry: Send the first argument chunk in the first entry
            (servers that send a whole call in one entry, such as Ollama).
        repeat_header: Repeat the id, type and name in every argument entry (some
            proxies do).
    """

    name: str
    arguments_chunks: Sequence[str] = ()
    id: str | None = None
    name_chunks: Sequence[str] | None = None
    index: int | None = None
    arguments_in_first_entry: bool = False
    repeat_header: bool = False

    def entries(self, position: int) -> list[dict[str, Any]]:
        """The ``delta.tool_calls`` entries of this call, in order."""
        index = position if self.index is None else self.index
        names = list(self.name_chunks) if self.name_chunks is not None else [self.name]
        assert "".join(names) == self.name, "name_chunks must join to name"
        chunks = list(self.arguments_chunks)
        header: dict[str, Any] = {"index": index}
        if self.id is not None:
            header["id"] = self.id
        header["type"] = "function"
        first_arguments = chunks.pop(0) if self.arguments_in_first_entry and chunks else ""
        entries = [{**header, "function": {"name": names[0], "arguments": first_arguments}}]
        entries += [{"index": index, "function": {"name": piece}} for piece in names[1:]]
        for chunk in chunks:
            if self.repeat_header:
                entries.append({**header, "function": {"name": self.name, "arguments": chunk}})
            else:
                entries.append({"index": index, "function": {"arguments": chunk}})
        return entries


@dataclass(frozen=True, kw_only=True)
class Script:
    """How the fake server answers the next requests.

    Attributes:
        chunks: The answer, one ``delta.content`` per chunk.
        reasoning: Reasoning pieces sent before the answer, one chunk each.
        tool_calls: Calls streamed after the answer, one ``delta.tool_calls`` entry per
            chunk; set ``finish_reason="tool_calls"`` as a real server would.
        interleave: Send the calls' entries in turn (first of each, second of each,
            ...), as parallel calls may arrive, rather than one call after another.
        reasoning_field: The delta field carrying reasoning: ``reasoning_content``
            (DeepSeek, vLLM) or ``reasoning`` (Ollama, OpenRouter).
        usage: ``(prompt_tokens, completion_tokens)`` sent in a final usage chunk when
            the client asked for it, or None to send no usage at all.
        finish_reason: Sent in the last choice chunk; None sends no finish reason.
        delay_s: Pause before each streamed chunk.
        status: An HTTP status >= 400 answers with an OpenAI-style error body instead.
        error_message: The ``error.message`` of that body.
        retry_after: A ``Retry-After`` header sent with that error, when set.
        break_after: Drop the connection mid-body after this many reasoning, answer
            or tool-call chunks (no terminating chunk, so the client sees a broken
            stream).
        done: Whether to end with ``data: [DONE]``.
    """

    chunks: Sequence[str] = ("Hello", " from", " the", " fake", ".")
    reasoning: Sequence[str] = ()
    tool_calls: Sequence[ToolCallScript] = ()
    interleave: bool = False
    reasoning_field: str = "reasoning_content"
    usage: tuple[int, int] | None = (11, 7)
    finish_reason: str | None = "stop"
    delay_s: float = 0.0
    status: int = 200
    error_message: str = "Something went wrong on the fake server."
    retry_after: str | None = None
    break_after: int | None = None
    done: bool = True

    def tool_call_entries(self) -> list[dict[str, Any]]:
        """Every call's entries in the order they are streamed."""
        per_call = [call.entries(position) for position, call in enumerate(self.tool_calls)]
        if not self.interleave:
            return [entry for entries in per_call for entry in entries]
        rounds = itertools.zip_longest(*per_call)
        return [entry for entries in rounds for entry in entries if entry is not None]


@dataclass
class _State:
    script: Script = field(default_factory=Script)
    queued: deque[Script] = field(default_factory=deque)
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
            script = state.queued.popleft() if state.queued else state.script

        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_error(404, f"Unknown path {self.path}")
            return
        if script.status >= 400:
            self._send_error(script.status, script.error_message, script.retry_after)
            return
        try:
            if body.get("stream"):
                self._stream(body, script)
            else:
                self._complete(body, script)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test); nothing left to say.
            self.close_connection = True

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, retry_after: str | None = None) -> None:
        error_type = _ERROR_TYPES.get(status, "server_error")
        self._send_json(
            status,
            {"error": {"message": message, "type": error_type, "param": None, "code": None}},
            {"Retry-After": retry_after} if retry_after is not None else None,
        )

    def _complete(self, body: dict[str, Any], script: Script) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(script.chunks)}
        if script.tool_calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments_chunks)},
                }
                for call in script.tool_calls
            ]
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
        deltas += [{"tool_calls": [entry]} for entry in script.tool_call_entries()]
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
        tool_calls: Sequence[ToolCallScript] = Script.tool_calls,
        interleave: bool = Script.interleave,
        reasoning_field: str = Script.reasoning_field,
        usage: tuple[int, int] | None = Script.usage,
        finish_reason: str | None = Script.finish_reason,
        delay_s: float = Script.delay_s,
        status: int = Script.status,
        error_message: str = Script.error_message,
        retry_after: str | None = Script.retry_after,
        break_after: int | None = Script.break_after,
        done: bool = Script.done,
    ) -> Script:
        """Set how every following request is answered (until the next call), once
        the scripts :meth:`queue` holds are used up.

        Args:
            chunks: The answer, one ``delta.content`` per chunk.
            reasoning: Reasoning pieces sent before the answer.
            tool_calls: Calls streamed after the answer.
            interleave: Send the calls' entries in turn rather than call after call.
            reasoning_field: ``reasoning_content`` or ``reasoning``.
            usage: ``(prompt_tokens, completion_tokens)``, or None to send none.
            finish_reason: The finish reason, or None to send none.
            delay_s: Pause before each streamed chunk.
            status: An HTTP error status to fail with (>= 400).
            error_message: The error body's ``error.message``.
            retry_after: A ``Retry-After`` header sent with the error.
            break_after: Drop the connection after this many streamed chunks.
            done: Whether to end the stream with ``data: [DONE]``.

        Returns:
            The script now in force.
        """
        new = Script(
            chunks=tuple(chunks),
            reasoning=tuple(reasoning),
            tool_calls=tuple(tool_calls),
            interleave=interleave,
            reasoning_field=reasoning_field,
            usage=usage,
            finish_reason=finish_reason,
            delay_s=delay_s,
            status=status,
            error_message=error_message,
            retry_after=retry_after,
            break_after=break_after,
            done=done,
        )
        with self._server.state.lock:
            self._server.state.script = new
        return new

    def queue(self, *scripts: Script) -> None:
        """Answer the next requests with ``scripts``, one each and in order (a turn of
        several steps); requests after them get the script set by :meth:`script`.

        Args:
            scripts: One script per request.
        """
        with self._server.state.lock:
            self._server.state.queued.extend(scripts)

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
