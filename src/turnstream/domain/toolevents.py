"""The events of tools in a turn: calls, their arguments, approvals, results, the
boundaries of model steps, and the pause of a turn that waits for answers.

They are facts of the turn's stream like its tokens (``Turn.ToolCallStarted`` and so
on name them there); ``turnstream.domain.tools.Steps`` is their fold.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from turnstream.domain.tools import ToolKind, WaitingFor
from turnstream.domain.turnevents import TurnEvent, TurnUsage


class ToolCallStarted(TurnEvent, frozen=True, kw_only=True):
    """The model began a tool call."""

    TOPIC = "turnstream.turn.tool_call_started.v1"

    call_id: str
    name: str


class ToolArgumentsAppended(TurnEvent, frozen=True, kw_only=True):
    """A piece of a call's arguments (JSON text), as the model streams them."""

    TOPIC = "turnstream.turn.tool_arguments_appended.v1"

    call_id: str
    text: str


class ToolCallReady(TurnEvent, frozen=True, kw_only=True):
    """A call complete: its arguments parsed (None when they are not a JSON object:
    an error result follows), and who runs it."""

    TOPIC = "turnstream.turn.tool_call_ready.v1"

    call_id: str
    name: str
    arguments: Any
    kind: ToolKind
    server: str | None = None
    """The MCP server of a server tool."""


class ApprovalRequested(TurnEvent, frozen=True, kw_only=True):
    TOPIC = "turnstream.turn.approval_requested.v1"

    call_id: str
    name: str


class ApprovalDecided(TurnEvent, frozen=True, kw_only=True):
    TOPIC = "turnstream.turn.approval_decided.v1"

    call_id: str
    approved: bool
    by: str
    """Who decided (the user's id)."""
    reason: str | None = None


class ToolResultRecorded(TurnEvent, frozen=True, kw_only=True):
    TOPIC = "turnstream.turn.tool_result_recorded.v1"

    call_id: str
    output: Any
    """Any JSON value; the model reads text as it is and anything else as JSON."""
    is_error: bool = False
    by: Literal["client", "server"] = "server"


class StepFinished(TurnEvent, frozen=True, kw_only=True):
    """The boundary of a model step: why the model stopped, and what it cost."""

    TOPIC = "turnstream.turn.step_finished.v1"

    step: int
    finish_reason: str | None = None
    usage: TurnUsage | None = None
    text: str = ""
    """The answer text of this step (the turn's text is every step's, in order)."""
    reasoning: str = ""


class Waiting(TurnEvent, frozen=True, kw_only=True):
    """The turn pauses until these calls have their results or decisions; no process
    holds it meanwhile, and any node continues it."""

    TOPIC = "turnstream.turn.waiting.v1"
    PAUSES = True

    reason: WaitingFor
    call_ids: tuple[str, ...]
    until: datetime
    """When it ends with ``tool_timeout`` if still waiting."""
