"""What the AI SDK's chat transport posts: its messages, and in them the answers to a
turn that waits.

``DefaultChatTransport`` posts the chat's whole list of ``UIMessage`` objects. After
``addToolResult`` / ``addToolOutput`` (a client tool's result) or
``addToolApprovalResponse`` (ai >= 6: a person's decision), it posts them again, the
last being the assistant message whose tool parts carry the answers: a part
``tool-<name>`` or ``dynamic-tool`` with its ``toolCallId`` and ``state``
``output-available`` (``output``), ``output-error`` (``errorText``) or
``approval-responded`` (``approval: {id, approved, reason}``). Those of the calls the
turn waits for are its answers; the other parts are what the client has already.

Every struct ignores the fields it does not read: clients add their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, NamedTuple

import msgspec

from turnstream.domain.tools import WaitingFor
from turnstream.usecases.tooluse import Approval, ToolResult

ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class UiApproval(msgspec.Struct, kw_only=True):
    """A tool part's approval: asked (``id``), then answered (``approved``)."""

    id: str
    approved: bool | None = None
    reason: str | None = None


class UiPart(msgspec.Struct, kw_only=True):
    """A part of a UI message: text parts, file parts and tool parts are read."""

    type: str
    text: str | None = None
    url: str | None = None
    """A file part's URL (``http.uifiles``); its ``mediaType`` is not read."""
    filename: str | None = None
    toolCallId: str | None = None
    state: str | None = None
    output: Any = None
    errorText: str | None = None
    approval: UiApproval | None = None

    @property
    def is_tool(self) -> bool:
        """A tool call's part: ``tool-<name>`` (a static tool) or ``dynamic-tool``."""
        return self.toolCallId is not None and (
            self.type.startswith("tool-") or self.type == "dynamic-tool"
        )


class UiMessage(msgspec.Struct, kw_only=True):
    """A message as the AI SDK sends it (``UIMessage``)."""

    id: ClientId | None = None
    role: str
    parts: list[UiPart] = msgspec.field(default_factory=list)

    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if p.type == "text" and p.text)

    @property
    def calls_tools(self) -> bool:
        """An assistant message with tool calls: one a client posts to answer them."""
        return self.role == "assistant" and any(p.is_tool for p in self.parts)


class Answers(NamedTuple):
    results: list[ToolResult]
    approvals: list[Approval]


def answers(message: UiMessage, pending: Mapping[str, WaitingFor]) -> Answers:
    """The answers ``message`` carries to the calls that wait (``pending``: each call
    id, and what it waits for), in the order of its parts."""
    results: list[ToolResult] = []
    approvals: list[Approval] = []
    for part in message.parts:
        needs = pending.get(part.toolCallId or "") if part.is_tool else None
        call_id = part.toolCallId or ""
        if needs == "tool_result" and part.state == "output-available":
            results.append(ToolResult(call_id=call_id, output=part.output))
        elif needs == "tool_result" and part.state == "output-error":
            failed = part.errorText or "The tool failed."
            results.append(ToolResult(call_id=call_id, output=failed, is_error=True))
        elif needs == "approval" and part.approval is not None:
            decided = part.approval.approved
            if decided is not None:
                reason = part.approval.reason
                approvals.append(Approval(call_id=call_id, approved=decided, reason=reason))
    return Answers(results, approvals)
