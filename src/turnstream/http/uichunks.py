"""Turn events as the AI SDK's UI message chunks (protocol v1), one group per event.

A group is the structural chunks the client's parser needs first (``start-step``,
``text-start``, ``reasoning-end`` …), then the one that carries the event. Which those
are depends on what came before (is a text part open? a step? did the last pause end
the message?), so :class:`UiStream` keeps that state, folding the turn from its first
event; a stream that resumes folds the groups the client has without sending them.

The fields are exactly those of ai 5.0.0's strict parser, which refuses any field or
chunk type it does not know: a chunk only newer clients know (``tool-approval-request``,
``tool-output-denied``) is sent to a client that says it knows them (``approvals``).

Tools (``turnstream.domain.tools``):

- a client tool's call is a static tool part (``tool-<name>``), which the client's
  ``onToolCall`` runs; a server (MCP) tool's, or one the model named but was not
  offered, is ``dynamic`` and ``providerExecuted``: the client shows it and never
  runs it;
- a call whose arguments are unusable gets no ``tool-input-available`` (the client
  would run it): its error result follows at once;
- a step is opened lazily, by the first chunk of the next step's content, so that a
  step never ends empty and a result (which updates the call's part in place) stays
  with the step that made the call;
- a pause (``Waiting``) ends the message: ``finish`` with ``status: "waiting"``; the
  client answers, and whatever comes next reopens it with a ``start`` of the same id.
"""

from __future__ import annotations

from typing import Any

import msgspec

from turnstream.domain.tools import output_text
from turnstream.domain.turn import Turn, TurnEvent

Chunk = dict[str, Any]

ABORT: Chunk = {"type": "abort"}

SERVER_RUN = {"dynamic": True, "providerExecuted": True}
"""The flags of a call the client does not run (a server tool, or no tool at all)."""


class UiStream:
    """Turn events to UI message chunks, in order; it remembers what is open.

    ``approvals``: the client knows the approval chunks (ai >= 6); without them, a call
    that waits for a person's decision is shown as a call the server runs, and a
    refusal as its error result.
    """

    def __init__(self, *, approvals: bool = False) -> None:
        self.approvals = approvals
        self.turn: Turn | None = None
        """The turn as of the events so far (what it waits for, when it does)."""
        self.text: str | None = None
        """The open text part's id (None: none is open)."""
        self.reasoning: str | None = None
        self.step = False
        """Whether a step is open (``start-step`` sent, ``finish-step`` not yet)."""
        self.message = False
        """Whether the message is open (``start`` sent, no ``finish`` since)."""
        self.client_tools: frozenset[str] = frozenset()
        self.refused: set[str] = set()
        """Calls a person refused (shown as denied: their error result is not sent)."""

    @property
    def waits(self) -> bool:
        """Whether the turn, as of the events so far, waits for an answer."""
        return self.turn is not None and self.turn.waiting is not None

    def chunks(self, event: TurnEvent) -> list[Chunk]:
        """The chunks of one event, the one carrying it last (none for an event these
        clients have no chunk for)."""
        if isinstance(event, Turn.Started):
            self.turn = Turn(event)
            self.client_tools = frozenset(t.name for t in event.tools)
        elif self.turn is not None:
            self.turn.apply(event)
        return self._chunks(event)

    def _chunks(self, event: TurnEvent) -> list[Chunk]:
        if isinstance(event, Turn.Started):
            self.message = self.step = True
            return [self._start(running=False), {"type": "start-step"}]
        if isinstance(event, Turn.ReasoningAppended):
            out = [*self._open_step(), *self._close_text()]
            if self.reasoning is None:
                self.reasoning = f"reasoning-{event.originator_version}"
                out.append({"type": "reasoning-start", "id": self.reasoning})
            return [*out, {"type": "reasoning-delta", "id": self.reasoning, "delta": event.text}]
        if isinstance(event, Turn.TokensAppended):
            out = [*self._open_step(), *self._close_reasoning()]
            if self.text is None:
                self.text = f"text-{event.originator_version}"
                out.append({"type": "text-start", "id": self.text})
            return [*out, {"type": "text-delta", "id": self.text, "delta": event.text}]
        if isinstance(event, Turn.Titled):
            title = {"type": "data-title", "id": "title", "data": {"title": event.title}}
            return [*self._open_message(), title]
        if isinstance(event, Turn.FellBack):
            served = {"model": event.model, "fallback_from": event.from_model}
            return [*self._open_message(), {"type": "message-metadata", "messageMetadata": served}]
        if isinstance(event, Turn.ToolCallStarted | Turn.ToolArgumentsAppended):
            return self._call_input(event)
        if isinstance(event, Turn.ToolCallReady):
            return self._call_ready(event)
        if isinstance(event, Turn.ApprovalRequested | Turn.ApprovalDecided):
            return self._approval(event)
        if isinstance(event, Turn.ToolResultRecorded):
            return self._result(event)
        if isinstance(event, Turn.StepFinished):
            return self._end_step()
        if isinstance(event, Turn.Waiting):
            return [*self._open_message(), *self._end_step(), self.pause()]
        return self._end(event)

    # The message and its steps.

    def _start(self, *, running: bool) -> Chunk:
        """``start``: the message's id, and the turn's ids (a start after a pause also
        says the turn runs again: the pause's ``finish`` said it waits)."""
        assert self.turn is not None, "a turn's first event is Started"
        started = self.turn.started
        meta: dict[str, Any] = {
            "turn_id": str(started.originator_id),
            "conversation_id": str(started.conversation_id),
            "model": started.model,
        }
        if running:  # the client merges metadata: the pause's is replaced
            meta |= {"status": "running", "waiting": None}
        return {
            "type": "start",
            "messageId": str(started.assistant_message_id),
            "messageMetadata": meta,
        }

    def _open_message(self) -> list[Chunk]:
        if self.message:
            return []
        self.message = True
        return [self._start(running=True)]

    def _open_step(self) -> list[Chunk]:
        out = self._open_message()
        if not self.step:
            self.step = True
            out.append({"type": "start-step"})
        return out

    def _end_step(self) -> list[Chunk]:
        out = [*self._close_reasoning(), *self._close_text()]
        if self.step:
            self.step = False
            out.append({"type": "finish-step"})
        return out

    def pause(self) -> Chunk:
        """The ``finish`` of a message whose turn waits: for what, which calls, until
        when. It ends the message (what comes next starts it again)."""
        assert self.turn is not None
        self.message = False
        meta: dict[str, Any] = {"turn_id": str(self.turn.id), "status": "waiting"}
        waiting = self.turn.waiting
        if waiting is not None:
            reason, call_ids = waiting
            until = msgspec.to_builtins(self.turn.waiting_until)
            meta["waiting"] = {"reason": reason, "call_ids": list(call_ids), "until": until}
        return {"type": "finish", "messageMetadata": meta}

    def _end(self, event: TurnEvent) -> list[Chunk]:
        out = [*self._open_message(), *self._end_step()]
        meta: dict[str, Any] = {"turn_id": str(event.originator_id)}  # merged into start's
        if isinstance(event, Turn.Finished):
            meta |= {"status": event.status, "finish_reason": event.finish_reason}
            meta["usage"] = msgspec.to_builtins(event.usage)
            if event.status == "interrupted":
                # The client's own stop ends a stream with ``abort``; a cancel is one.
                return [*out, {"type": "message-metadata", "messageMetadata": meta}, ABORT]
            return [*out, {"type": "finish", "messageMetadata": meta}]
        assert isinstance(event, Turn.Failed), type(event)
        meta |= {"status": "failed", "code": event.code}
        return [
            *out,
            {"type": "message-metadata", "messageMetadata": meta},
            {"type": "error", "errorText": f"{event.code}: {event.message}"},
        ]

    def _close_text(self) -> list[Chunk]:
        if self.text is None:
            return []
        closed, self.text = self.text, None
        return [{"type": "text-end", "id": closed}]

    def _close_reasoning(self) -> list[Chunk]:
        if self.reasoning is None:
            return []
        closed, self.reasoning = self.reasoning, None
        return [{"type": "reasoning-end", "id": closed}]

    # Tool calls.

    def _runs_here(self, call_id: str) -> bool:
        """Whether the server runs the call (not the client): known by its name from the
        start, as the runner decides it (a client tool shadows a server tool)."""
        assert self.turn is not None
        call = self.turn.steps.calls.get(call_id)
        return call is None or call.name not in self.client_tools

    def _flags(self, call_id: str) -> dict[str, bool]:
        return SERVER_RUN if self._runs_here(call_id) else {}

    def _call_input(self, event: Turn.ToolCallStarted | Turn.ToolArgumentsAppended) -> list[Chunk]:
        out = [*self._open_step(), *self._close_reasoning(), *self._close_text()]
        if isinstance(event, Turn.ToolCallStarted):
            start = {"type": "tool-input-start", "toolCallId": event.call_id}
            return [*out, start | {"toolName": event.name} | self._flags(event.call_id)]
        delta = {"type": "tool-input-delta", "toolCallId": event.call_id}
        return [*out, delta | {"inputTextDelta": event.text}]

    def _call_ready(self, event: Turn.ToolCallReady) -> list[Chunk]:
        if event.arguments is None:
            return []  # unusable arguments: the error result follows, nothing to run
        ready = {"type": "tool-input-available", "toolCallId": event.call_id}
        ready |= {"toolName": event.name, "input": event.arguments}
        return [*self._open_step(), ready | self._flags(event.call_id)]

    def _approval(self, event: Turn.ApprovalRequested | Turn.ApprovalDecided) -> list[Chunk]:
        if not self.approvals:
            return []
        call_id = event.call_id
        if isinstance(event, Turn.ApprovalRequested):
            request = {"type": "tool-approval-request", "approvalId": call_id}
            return [*self._open_message(), request | {"toolCallId": call_id}]
        if event.approved:
            return []  # the client marked it; the call's result follows
        self.refused.add(call_id)
        return [*self._open_message(), {"type": "tool-output-denied", "toolCallId": call_id}]

    def _result(self, event: Turn.ToolResultRecorded) -> list[Chunk]:
        if event.call_id in self.refused:
            return []  # shown as denied
        chunk: Chunk = {"toolCallId": event.call_id}
        if event.is_error:
            chunk = {"type": "tool-output-error"} | chunk | {"errorText": output_text(event.output)}
        else:
            chunk = {"type": "tool-output-available"} | chunk | {"output": event.output}
        return [*self._open_message(), chunk | self._flags(event.call_id)]
