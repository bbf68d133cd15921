"""Tool turns made by the domain, event by event, as the runner and the answers make
them: for tests of what a client is sent (no database, no server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.events import a_started
from turnstream.domain.progress import Draft, TurnProgress
from turnstream.domain.tools import FunctionSpec, ToolSpec
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage

WEATHER = ToolSpec(function=FunctionSpec(name="get_weather"))
USAGE = TurnUsage(prompt_tokens=3, completion_tokens=2)


class Script:
    """A turn's events, made by the domain as the runner and the answers make them."""

    def __init__(self, *, tools: Sequence[ToolSpec] = (WEATHER,)) -> None:
        self.started = a_started(tools=tuple(tools))
        self.events: list[TurnEvent] = [self.started]
        self.progress = TurnProgress(self.started)

    def add(self, *drafts: Draft | None) -> Script:
        for draft in drafts:
            if draft is not None:
                self.events.append(draft.event(len(self.events) + 1))
        return self

    def call(self, call_id: str, name: str, arguments: str, kind: Any = "client") -> Script:
        p = self.progress
        self.add(p.call_started(call_id, name), p.call_arguments(call_id, arguments))
        draft, problem = p.call_ready(call_id, kind, "files" if kind == "server" else None)
        self.add(draft)
        if problem is not None or kind == "unknown":
            self.add(p.result(call_id, problem or "No such tool.", is_error=True))
        return self

    @property
    def paused_at(self) -> int:
        """The seq of the turn's last ``Waiting``."""
        return max(e.originator_version for e in self.events if isinstance(e, Turn.Waiting))

    def pause(self) -> Script:
        p = self.progress
        self.add(p.step_finished("tool_calls", USAGE))
        waiting = p.steps.waiting()
        assert waiting is not None
        return self.add(p.wait(*waiting, wait_s=60))

    def turn(self) -> Turn:
        turn = Turn.fold(self.events)
        assert turn is not None
        return turn

    def answer(self, call_id: str, output: Any, *, is_error: bool = False) -> Script:
        self.events.append(self.turn().answer(call_id, output, is_error=is_error))
        return self

    def decide(self, call_id: str, *, approved: bool, reason: str | None = "no") -> Script:
        self.events += self.turn().decide(call_id, approved=approved, by="alice", reason=reason)
        return self

    def go_on(self) -> TurnProgress:
        """The runner that takes the answered turn up."""
        self.progress = TurnProgress.resume(self.turn())
        return self.progress

    def finish(self, text: str = "Sunny.") -> Script:
        p = self.go_on()
        self.add(p.append_reasoning("Read it."), p.append_text(text))
        self.add(p.step_finished("stop", USAGE))
        return self.add(p.finish(finish_reason="stop", usage=USAGE))
