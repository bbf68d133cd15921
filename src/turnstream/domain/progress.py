"""A running turn: the drafts of its facts, and the progress that makes them.

While a turn runs, its runner asks :class:`TurnProgress` for each fact: a piece of text
or reasoning, the title, the end. Progress checks the invariants (nothing after the
end, one title) and returns a :class:`Draft`; the group writer, which commits the
drafts of many turns at once, gives each its version and makes its event with
:meth:`Draft.event`: the one place a running turn's events are made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal
from uuid import UUID

from turnstream.domain.errors import TurnEnded
from turnstream.domain.events import utcnow
from turnstream.domain.tools import Steps, ToolKind, WaitingFor, parse_arguments
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage, add_usage


@dataclass(frozen=True, slots=True, kw_only=True)
class Draft:
    """A fact of a running turn, not yet numbered. :meth:`event` makes the event."""

    TERMINAL: ClassVar[bool] = False

    turn_id: UUID
    at: datetime = field(default_factory=utcnow)

    def event(self, version: int) -> TurnEvent:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaDraft(Draft):
    """A piece of text. Consecutive deltas of one kind of one turn make one event."""

    text: str

    def joins(self, other: DeltaDraft) -> bool:
        """Whether ``other``, right after this of the same turn, merges into it."""
        return type(other) is type(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDraft(DeltaDraft):
    def event(self, version: int) -> Turn.TokensAppended:
        return Turn.TokensAppended(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            text=self.text,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningDraft(DeltaDraft):
    def event(self, version: int) -> Turn.ReasoningAppended:
        return Turn.ReasoningAppended(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            text=self.text,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class TitleDraft(Draft):
    title: str

    def event(self, version: int) -> Turn.Titled:
        return Turn.Titled(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            title=self.title,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackDraft(Draft):
    model: str
    from_model: str
    code: str
    message: str

    def event(self, version: int) -> Turn.FellBack:
        return Turn.FellBack(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            model=self.model, from_model=self.from_model, code=self.code, message=self.message,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishDraft(Draft):
    TERMINAL: ClassVar[bool] = True

    status: Literal["completed", "interrupted"]
    text: str
    reasoning: str
    finish_reason: str | None
    usage: TurnUsage

    def event(self, version: int) -> Turn.Finished:
        return Turn.Finished(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            status=self.status, text=self.text, reasoning=self.reasoning,
            finish_reason=self.finish_reason, usage=self.usage,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class FailDraft(Draft):
    TERMINAL: ClassVar[bool] = True

    code: str
    message: str
    text: str
    reasoning: str
    usage: TurnUsage | None

    def event(self, version: int) -> Turn.Failed:
        return Turn.Failed(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            code=self.code, message=self.message, text=self.text, reasoning=self.reasoning,
            usage=self.usage,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ArgumentsDraft(DeltaDraft):
    call_id: str

    def joins(self, other: DeltaDraft) -> bool:
        return isinstance(other, ArgumentsDraft) and other.call_id == self.call_id

    def event(self, version: int) -> Turn.ToolArgumentsAppended:
        return Turn.ToolArgumentsAppended(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            call_id=self.call_id, text=self.text,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class FactDraft(Draft):
    """A fact whose event has no more than its fields (a call begun, complete, its
    result, an approval asked, a step's end, a pause): made by the event class."""

    event_type: type[TurnEvent]
    fields: dict[str, Any]

    def event(self, version: int) -> TurnEvent:
        return self.event_type(
            originator_id=self.turn_id, originator_version=version, timestamp=self.at,
            **self.fields,
        )  # fmt: skip


def merge_deltas(first: DeltaDraft, more: list[str]) -> DeltaDraft:
    """``first`` with the texts of the deltas that followed it appended (its time kept)."""
    return dataclasses.replace(first, text=first.text + "".join(more))


class TurnProgress:
    """A running turn as its runner sees it: what it streamed, and whether it ended.

    Each command checks that the turn is still running, records what it adds, and
    returns the draft to hand to the writer. Nothing follows the end; a title comes once.
    """

    def __init__(self, started: Turn.Started) -> None:
        self.turn_id = started.originator_id
        self.prefix = started.prefix
        self.reasoning_prefix = started.reasoning_prefix
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self.titled = False
        self.ended = False
        self.steps = Steps()
        self.steps_usage: TurnUsage | None = None
        self.tools = started.tools

    @classmethod
    def resume(cls, turn: Turn) -> TurnProgress:
        """The progress of a waiting turn taken up again (on any node): what it streamed
        so far is its prefix, its steps and calls are as folded."""
        progress = cls(turn.started)
        progress.prefix, progress.reasoning_prefix = turn.text, turn.reasoning
        progress.titled = turn.title is not None
        progress.steps, progress.steps_usage = turn.steps, turn.steps_usage
        return progress

    @property
    def generated_text(self) -> str:
        """The text this run produced (without a continued answer's prefix)."""
        return "".join(self._text)

    @property
    def generated_reasoning(self) -> str:
        return "".join(self._reasoning)

    def append_text(self, text: str) -> TextDraft | None:
        self._check_running()
        if not text:
            return None
        self._text.append(text)
        self.steps.text(text)
        return TextDraft(turn_id=self.turn_id, text=text)

    def append_reasoning(self, text: str) -> ReasoningDraft | None:
        self._check_running()
        if not text:
            return None
        self._reasoning.append(text)
        self.steps.reasoning(text)
        return ReasoningDraft(turn_id=self.turn_id, text=text)

    # Tools.

    def _fact(self, event_type: type[TurnEvent], **fields: Any) -> FactDraft:
        self._check_running()
        return FactDraft(turn_id=self.turn_id, event_type=event_type, fields=fields)

    def call_started(self, call_id: str, name: str) -> FactDraft:
        draft = self._fact(Turn.ToolCallStarted, call_id=call_id, name=name)
        self.steps.call_started(call_id, name)
        return draft

    def call_arguments(self, call_id: str, text: str) -> ArgumentsDraft | None:
        self._check_running()
        if not text:
            return None
        self.steps.arguments(call_id, text)
        return ArgumentsDraft(turn_id=self.turn_id, call_id=call_id, text=text)

    def call_ready(
        self, call_id: str, kind: ToolKind, server: str | None = None
    ) -> tuple[FactDraft, str | None]:
        """The call complete, its arguments parsed; and why they are unusable, if so."""
        call = self.steps.calls[call_id]
        arguments, problem = parse_arguments(call.arguments_text)
        draft = self._fact(
            Turn.ToolCallReady, call_id=call_id, name=call.name, arguments=arguments,
            kind=kind, server=server,
        )  # fmt: skip
        self.steps.call_ready(call_id, arguments, kind, server)
        return draft, problem

    def approval_requested(self, call_id: str) -> FactDraft:
        call = self.steps.calls[call_id]
        draft = self._fact(Turn.ApprovalRequested, call_id=call_id, name=call.name)
        self.steps.approval_requested(call_id)
        return draft

    def result(self, call_id: str, output: Any, *, is_error: bool) -> FactDraft:
        """A server tool's result (or an error the turn itself gives a call)."""
        draft = self._fact(
            Turn.ToolResultRecorded, call_id=call_id, output=output, is_error=is_error
        )
        self.steps.result(call_id, output, is_error)
        return draft

    def begin_step(self) -> int:
        """A model step begins: its number."""
        self._check_running()
        return self.steps.begin_step().number

    def step_finished(self, finish_reason: str | None, usage: TurnUsage | None) -> FactDraft:
        step = self.steps.begin_step()
        draft = self._fact(
            Turn.StepFinished, step=step.number, finish_reason=finish_reason, usage=usage,
            text=step.text, reasoning=step.reasoning,
        )  # fmt: skip
        self.steps.step_finished(finish_reason)
        self.steps_usage = add_usage(self.steps_usage, usage)
        return draft

    def wait(self, reason: WaitingFor, call_ids: list[str], wait_s: float) -> FactDraft:
        """Pause: the runner stops after this; the turn stays open, held by no one."""
        draft = self._fact(
            Turn.Waiting, reason=reason, call_ids=tuple(call_ids),
            until=utcnow() + timedelta(seconds=wait_s),
        )  # fmt: skip
        self.ended = True  # for this runner: nothing more until someone takes it up
        return draft

    def title(self, title: str) -> TitleDraft | None:
        """The conversation's title, in its first turn (once; later ones are None)."""
        self._check_running()
        if self.titled:
            return None
        self.titled = True
        return TitleDraft(turn_id=self.turn_id, title=title)

    def fall_back(self, *, model: str, from_model: str, code: str, message: str) -> FallbackDraft:
        """Another model answers from here on: ``from_model`` failed before any token."""
        self._check_running()
        return FallbackDraft(
            turn_id=self.turn_id, model=model, from_model=from_model, code=code, message=message
        )

    def finish(self, *, finish_reason: str, usage: TurnUsage) -> FinishDraft:
        return self._end_with("completed", finish_reason, usage)

    def interrupt(self, *, reason: str, usage: TurnUsage) -> FinishDraft:
        """Stopped before the model finished (cancelled, shut down, lost): text kept."""
        return self._end_with("interrupted", reason, usage)

    def fail(self, *, code: str, message: str, usage: TurnUsage | None) -> FailDraft:
        self._check_running()
        self.ended = True
        return FailDraft(
            turn_id=self.turn_id,
            code=code,
            message=message,
            text=self.prefix + self.generated_text,
            reasoning=self.reasoning_prefix + self.generated_reasoning,
            usage=usage,
        )

    def _end_with(
        self, status: Literal["completed", "interrupted"], reason: str, usage: TurnUsage
    ) -> FinishDraft:
        self._check_running()
        self.ended = True
        return FinishDraft(
            turn_id=self.turn_id,
            status=status,
            text=self.prefix + self.generated_text,
            reasoning=self.reasoning_prefix + self.generated_reasoning,
            finish_reason=reason,
            usage=usage,
        )

    def _check_running(self) -> None:
        if self.ended:
            raise TurnEnded(self.turn_id)
