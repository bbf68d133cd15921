"""Tools in a turn: what a client declares, and the state of each call the model makes.

A turn is a sequence of model steps. In a step the model may call tools; each call is
begun, gets its arguments (streamed), is complete, may wait for a person's approval,
and gets one result. :class:`Steps` is that state, kept the same way by the folded
turn (from its events) and by the running turn's progress (as it makes them), so the
two can never disagree on which calls a turn waits for.

Client tools are declared in the OpenAI function format and run by the client, which
posts their results; server tools come from MCP servers and run here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import jsonschema
import msgspec

from turnstream.domain.errors import Invalid

ToolKind = Literal["client", "server", "unknown"]
"""Who runs a call: the client (a declared tool), turnstream (an MCP tool), or no one
(the model named a tool it was not offered: the call gets an error result at once)."""

WaitingFor = Literal["tool_result", "approval"]

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""The names OpenAI-compatible servers accept for functions."""

MAX_TOOLS = 128


class FunctionSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    description: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    """A JSON Schema of the arguments (an object)."""


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tool the model may call, in the OpenAI function format."""

    type: Literal["function"] = "function"
    function: FunctionSpec

    @property
    def name(self) -> str:
        return self.function.name


def check_tools(tools: Sequence[ToolSpec]) -> None:
    """400 ``invalid_request`` with the reason unless every tool is well formed: a name
    servers accept, used once, and parameters that are a valid JSON Schema of an object."""
    if len(tools) > MAX_TOOLS:
        raise Invalid(f"At most {MAX_TOOLS} tools may be offered; {len(tools)} were given.")
    seen: set[str] = set()
    for tool in tools:
        name = tool.function.name
        if not TOOL_NAME.match(name):
            raise Invalid(f"Tool name {name!r}: use letters, digits, '_' and '-' (at most 64).")
        if name in seen:
            raise Invalid(f"Tool name {name!r} is given twice.")
        seen.add(name)
        parameters = tool.function.parameters
        try:
            jsonschema.validators.validator_for(parameters).check_schema(parameters)
        except jsonschema.SchemaError as exc:
            why = f"Tool {name!r}: 'parameters' is not a valid JSON Schema: {exc.message}"
            raise Invalid(why) from None
        if parameters.get("type", "object") != "object":
            raise Invalid(f"Tool {name!r}: 'parameters' must describe an object.")


def parse_arguments(text: str) -> tuple[Any, str | None]:
    """A call's arguments as JSON (an object), or None and why not. Empty is ``{}``."""
    if not text.strip():
        return {}, None
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None, "The arguments are not valid JSON."
    if not isinstance(value, dict):
        return None, "The arguments are not a JSON object."
    return value, None


def output_text(output: Any) -> str:
    """A result as the model reads it: text as it is, anything else as JSON."""
    return output if isinstance(output, str) else msgspec.json.encode(output).decode()


@dataclass
class Call:
    """One tool call, as far as it got."""

    call_id: str
    name: str
    step: int
    arguments_text: str = ""
    arguments: Any = None
    ready: bool = False
    kind: ToolKind = "client"
    server: str | None = None
    approval: Literal["requested", "approved", "refused"] | None = None
    answered: bool = False
    output: Any = None
    is_error: bool = False

    @property
    def waits_for(self) -> WaitingFor | None:
        """What this call waits for, if anything: a person's decision, or a client's
        result. A server call approved (or needing none) waits for nothing: whichever
        node continues the turn runs it."""
        if self.answered or not self.ready:
            return None
        if self.approval == "requested":
            return "approval"
        if self.kind == "client":
            return "tool_result"
        return None


@dataclass
class Step:
    number: int
    text: str = ""
    reasoning: str = ""
    calls: dict[str, Call] = field(default_factory=dict)
    finished: bool = False
    finish_reason: str | None = None


class Steps:
    """The steps of a turn and their calls, folded in order."""

    def __init__(self) -> None:
        self.steps: list[Step] = [Step(1)]
        self.calls: dict[str, Call] = {}

    @property
    def current(self) -> Step:
        return self.steps[-1]

    @property
    def number(self) -> int:
        return self.current.number

    def text(self, text: str) -> None:
        self._open().text += text

    def reasoning(self, text: str) -> None:
        self._open().reasoning += text

    def call_started(self, call_id: str, name: str) -> Call:
        step = self._open()
        call = Call(call_id=call_id, name=name, step=step.number)
        step.calls[call_id] = call
        self.calls[call_id] = call
        return call

    def arguments(self, call_id: str, text: str) -> None:
        self.calls[call_id].arguments_text += text

    def call_ready(
        self, call_id: str, arguments: Any, kind: ToolKind, server: str | None = None
    ) -> None:
        call = self.calls[call_id]
        call.arguments, call.kind, call.server, call.ready = arguments, kind, server, True

    def approval_requested(self, call_id: str) -> None:
        self.calls[call_id].approval = "requested"

    def decided(self, call_id: str, approved: bool) -> None:
        self.calls[call_id].approval = "approved" if approved else "refused"

    def result(self, call_id: str, output: Any, is_error: bool) -> None:
        call = self.calls[call_id]
        call.output, call.is_error, call.answered = output, is_error, True

    def step_finished(self, finish_reason: str | None) -> None:
        step = self._open()  # a step may end having streamed nothing at all
        step.finished, step.finish_reason = True, finish_reason

    def begin_step(self) -> Step:
        """The step the model streams into next (a new one once the last finished)."""
        return self._open()

    def _open(self) -> Step:
        """The step the model streams into: a new one once the last has finished."""
        if self.current.finished:
            self.steps.append(Step(self.current.number + 1))
        return self.current

    # What the turn does next.

    @property
    def last_calls(self) -> list[Call]:
        """The calls of the last finished step (those the next step needs results of)."""
        return list(self.current.calls.values()) if self.current.finished else []

    def waiting(self) -> tuple[WaitingFor, list[str]] | None:
        """What the turn waits for (approvals before results), with the call ids."""
        for reason in ("approval", "tool_result"):
            ids = [c.call_id for c in self.last_calls if c.waits_for == reason]
            if ids:
                return reason, ids
        return None

    def to_run(self) -> list[Call]:
        """Server calls of the last step that may run now (approved or needing none)."""
        return [
            c
            for c in self.last_calls
            if c.kind == "server" and not c.answered and c.approval in (None, "approved")
        ]

    @property
    def answered(self) -> bool:
        """The last step called tools and each has its result: the model goes on."""
        calls = self.last_calls
        return bool(calls) and all(c.answered for c in calls)
