"""What tools a turn's model is offered, who runs each call, and what the model is
shown of the steps so far.

A turn offers the client tools it was started with (the turn's own, else its
conversation's) and the tools of the MCP servers its model may use. A client tool
shadows a server tool of the same name: a call the client answers can never reach a
server it did not mean. A call to a tool that was not offered gets an error result at
once, which the model reads and can correct.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from turnstream.domain.tools import Call, Steps, ToolKind, ToolSpec, output_text
from turnstream.providers.base import ChatMessage, ToolCallRequest


class ServerTool(Protocol):
    """A tool of an MCP server."""

    @property
    def server(self) -> str: ...
    @property
    def spec(self) -> ToolSpec: ...
    @property
    def needs_approval(self) -> bool: ...


class ToolOutcome(Protocol):
    @property
    def output(self) -> Any: ...
    @property
    def is_error(self) -> bool: ...


class ServerTools(Protocol):
    """The MCP servers' tools (``turnstream.tools.mcp``): listed, and called with a
    timeout and a bounded output; a call never raises, a failure is an error result."""

    def tools_for(self, server_ids: Sequence[str]) -> Sequence[ServerTool]: ...

    async def call(self, server_id: str, name: str, arguments: dict[str, Any]) -> ToolOutcome: ...


@dataclass(frozen=True)
class _Outcome:
    output: Any
    is_error: bool = True


class NoServerTools:
    """No MCP server is configured."""

    def tools_for(self, server_ids: Sequence[str]) -> Sequence[ServerTool]:
        return ()

    async def call(self, server_id: str, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        return _Outcome(f"No MCP server {server_id!r} is configured.")


@dataclass
class Offered:
    """The tools one step of a turn offers its model."""

    client: Mapping[str, ToolSpec]
    server: Mapping[str, ServerTool] = field(default_factory=dict)

    @classmethod
    def for_turn(cls, client: Sequence[ToolSpec], server: Sequence[ServerTool]) -> Offered:
        mine = {t.name: t for t in client}
        theirs: dict[str, ServerTool] = {}
        for tool in server:
            theirs.setdefault(tool.spec.name, tool)  # the first server listed wins
        return cls(mine, {n: t for n, t in theirs.items() if n not in mine})

    @property
    def specs(self) -> list[ToolSpec]:
        return [*self.client.values(), *(t.spec for t in self.server.values())]

    def kind(self, name: str) -> tuple[ToolKind, str | None]:
        """Who runs a call of ``name``, and the MCP server of a server tool."""
        if name in self.client:
            return "client", None
        tool = self.server.get(name)
        if tool is not None:
            return "server", tool.server
        return "unknown", None

    def needs_approval(self, name: str) -> bool:
        tool = self.server.get(name)
        return tool is not None and tool.needs_approval


def step_messages(steps: Steps) -> list[ChatMessage]:
    """What the model is shown of the finished steps that called tools: each step's
    answer with its calls, then each call's result."""
    messages: list[ChatMessage] = []
    for step in steps.steps:
        if not step.finished or not step.calls:
            continue
        calls = tuple(
            ToolCallRequest(c.call_id, c.name, c.arguments_text or "{}")
            for c in step.calls.values()
        )
        messages.append(ChatMessage("assistant", step.text, tool_calls=calls))
        messages += [_result_message(c) for c in step.calls.values()]
    return messages


def _result_message(call: Call) -> ChatMessage:
    text = output_text(call.output) if call.answered else "No result."
    if call.is_error and not text.startswith("Error"):
        text = "Error: " + text
    return ChatMessage("tool", text, tool_call_id=call.call_id)
