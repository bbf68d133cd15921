"""The real AI SDK client (npm package ``ai``) from Python: one action of
``tests/clients/aisdk/chat.mjs`` per call, its JSON lines parsed into a ChatResult.

``npm ci`` must have run in CLIENTS first (the ``aisdk_clients`` fixture does).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.support.node import NODE

CLIENTS = Path(__file__).resolve().parents[1] / "clients" / "aisdk"
VERSIONS = ("ai5", "ai6", "ai7")
Action = Literal["send", "reconnect", "send-and-stop", "send-and-drop"]


@dataclass
class ChatResult:
    """What the client printed: each chunk its transport yielded, the message that
    readUIMessageStream assembled, errors (thrown or reported), and for reconnect
    whether there was no stream (204); ``stop`` the stop request's status."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    message: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    none: bool = False
    stop: int | None = None
    stderr: str = ""

    @property
    def error(self) -> str | None:
        return "\n".join(self.errors) if self.errors else None

    @property
    def types(self) -> list[str]:
        return [chunk["type"] for chunk in self.chunks]

    def first(self, kind: str) -> dict[str, Any]:
        return next(chunk for chunk in self.chunks if chunk["type"] == kind)

    def text(self) -> str:
        """The assembled message's text parts, joined."""
        return parts_text(self.message, "text")

    def reasoning(self) -> str:
        return parts_text(self.message, "reasoning")


def parts_text(message: dict[str, Any] | None, kind: str) -> str:
    assert message is not None, "the client assembled no message"
    return "".join(p["text"] for p in message["parts"] if p["type"] == kind)


def uimessage(text: str, id: str | None = None) -> dict[str, Any]:
    """A user UIMessage as the client sends it (a client-made id unless given)."""
    return {
        "id": id or f"u-{uuid.uuid4().hex[:16]}",
        "role": "user",
        "parts": [{"type": "text", "text": text}],
    }


def run_script(
    script: str, payload: dict[str, Any], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run one of the client scripts on the wheel's Node with ``payload`` on its stdin;
    it must exit 0 (its stderr says why not)."""
    done = subprocess.run(
        [str(NODE), str(CLIENTS / script)],
        input=json.dumps(payload),
        cwd=CLIENTS,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr}"
    return done


def run_chat(
    version: str,
    action: Action,
    *,
    base: str,
    token: str,
    chat_id: str,
    timeout: float = 60.0,
    **spec: Any,
) -> ChatResult:
    """Run one action of chat.mjs with client ``version`` ("ai5", "ai6", "ai7").

    ``spec`` goes to the script as is: ``messages``, ``trigger``, ``messageId``, ``body``.
    """
    assert version in VERSIONS, version
    payload = {
        "version": version,
        "action": action,
        "base": base,
        "token": token,
        "chatId": chat_id,
    } | spec
    done = run_script("chat.mjs", payload, timeout)
    result = ChatResult(stderr=done.stderr)
    for line in done.stdout.splitlines():
        item = json.loads(line)
        if "chunk" in item:
            result.chunks.append(item["chunk"])
        elif "message" in item:
            result.message = item["message"]
        elif "error" in item:
            result.errors.append(item["error"])
        elif "none" in item:
            result.none = True
        elif "stop" in item:
            result.stop = item["stop"]
    return result


@dataclass
class Exchange:
    """One HTTP exchange of the chat: what the client posted, the chunks it got."""

    method: str
    url: str
    body: Any
    status: int | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""

    @property
    def types(self) -> list[str]:
        return [chunk["type"] for chunk in self.chunks]


@dataclass
class ToolChat:
    """What tools.mjs printed: each exchange, each call its onToolCall got, the chat's
    messages at the end, its status, and errors (thrown or reported)."""

    exchanges: list[Exchange] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None
    errors: list[str] = field(default_factory=list)
    stderr: str = ""

    @property
    def error(self) -> str | None:
        return "\n".join(self.errors) if self.errors else None

    @property
    def last(self) -> dict[str, Any]:
        """The chat's last message (the assistant's answer)."""
        return self.messages[-1]


def ui_chunks(text: str) -> list[dict[str, Any]]:
    """The chunks of a UI message stream's text (comments, ids and [DONE] dropped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line.removeprefix("data: ")))
    return out


def run_tools(
    version: str,
    action: Literal["client-tool", "approval"],
    *,
    base: str,
    token: str,
    chat_id: str,
    timeout: float = 60.0,
    **spec: Any,
) -> ToolChat:
    """Run one tool turn of tools.mjs (a real ``Chat``): ``spec`` is ``text``, ``tools``,
    ``output``, ``approve``, ``reason``, ``headers``."""
    assert version in VERSIONS, version
    payload = {"version": version, "action": action, "base": base, "token": token}
    payload |= {"chatId": chat_id} | spec
    done = run_script("tools.mjs", payload, timeout)
    result = ToolChat(stderr=done.stderr)
    waiting: list[Exchange] = []
    for line in done.stdout.splitlines():
        item = json.loads(line)
        if "request" in item:
            exchange = Exchange(**item["request"])
            result.exchanges.append(exchange)
            waiting.append(exchange)
        elif "response" in item:
            exchange = waiting.pop(0)  # responses come in the order of their requests
            exchange.status, exchange.text = item["response"]["status"], item["response"]["text"]
            exchange.chunks = ui_chunks(exchange.text)
        elif "toolCall" in item:
            result.tool_calls.append(item["toolCall"])
        elif "messages" in item:
            result.messages = item["messages"]
        elif "status" in item:
            result.status = item["status"]
        elif "error" in item:
            result.errors.append(item["error"])
    return result
