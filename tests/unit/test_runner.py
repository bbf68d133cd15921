"""The runner, from a provider to the drafts it hands on, without a store.

The runner's ``submit`` is the group writer's in the service; here it is a list, so the
drafts a turn produces can be read as the writer would receive them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from tests.support.events import a_started
from turnstream.domain.progress import (
    Draft,
    FailDraft,
    FinishDraft,
    ReasoningDraft,
    TextDraft,
    TitleDraft,
    TurnProgress,
)
from turnstream.domain.tools import ToolSpec
from turnstream.metrics import Metrics
from turnstream.providers import Providers
from turnstream.providers.base import ChatMessage, Chunk, ProviderError, TextDelta
from turnstream.settings import DEMO_MODEL, ModelConfig, ModelSettings
from turnstream.usecases.registry import RunningTurn, RunningTurns
from turnstream.usecases.runner import TurnRunner


def runner_for(
    drafts: list[Draft], *, tokens_per_s: float = 0.0, text: asyncio.Event | None = None
) -> TurnRunner:
    """A runner whose drafts go to ``drafts`` (and set ``text`` at the first text)."""
    providers = Providers(ModelSettings(demo_tokens=12, demo_tokens_per_s=tokens_per_s))

    def submit(draft: Draft) -> None:
        drafts.append(draft)
        if text is not None and isinstance(draft, TextDraft):
            text.set()

    return TurnRunner(
        providers=providers,
        models={"demo": DEMO_MODEL},
        submit=submit,
        registry=RunningTurns(),
        metrics=Metrics(),
    )


def a_running_turn(*, first: bool = True, model: ModelConfig = DEMO_MODEL) -> RunningTurn:
    started = a_started(content="Tell me about event sourcing.")
    return RunningTurn(
        started=started,
        model=model,
        messages=[ChatMessage("user", started.content)],
        first_turn=first,
        title=None,
        progress=TurnProgress(started),
    )


async def test_a_first_turn_streams_reasoning_and_text_then_a_title_and_one_end() -> None:
    # Run a first turn on the demo model to its end.
    drafts: list[Draft] = []
    runner = runner_for(drafts)
    turn = a_running_turn()
    runner.launch(turn)
    assert turn.task is not None
    await turn.task
    # Reasoning first, then text; one title, before the end; exactly one end, last.
    kinds = [type(d) for d in drafts]
    assert kinds.index(ReasoningDraft) < kinds.index(TextDraft)
    assert kinds.count(TitleDraft) == 1
    assert kinds.index(TitleDraft) < len(kinds) - 1
    end = drafts[-1]
    assert isinstance(end, FinishDraft)
    assert end.status == "completed"
    assert end.text == "".join(d.text for d in drafts if isinstance(d, TextDraft))
    assert end.usage.completion_tokens > 0
    assert [d for d in drafts if d.TERMINAL] == [end]
    # The turn left the registry when it ended.
    assert runner.registry.get(turn.turn_id) is None


async def test_a_cancelled_turn_ends_interrupted_keeping_what_it_streamed() -> None:
    drafts: list[Draft] = []
    streaming = asyncio.Event()
    runner = runner_for(drafts, tokens_per_s=50.0, text=streaming)
    turn = a_running_turn(first=False)
    runner.launch(turn)
    await asyncio.wait_for(streaming.wait(), 30)
    assert runner.registry.cancel(turn.turn_id, reason="cancelled")
    assert not runner.registry.cancel(turn.turn_id, reason="cancelled")  # once
    assert turn.task is not None
    await turn.task
    end = drafts[-1]
    assert isinstance(end, FinishDraft)
    assert (end.status, end.finish_reason) == ("interrupted", "cancelled")
    assert end.text == "".join(d.text for d in drafts if isinstance(d, TextDraft))
    assert not any(isinstance(d, TitleDraft) for d in drafts)  # not a first turn


class Breaking:
    """A provider that streams a little, then fails the way a broken server does."""

    async def stream(
        self, model: ModelConfig, messages: list[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[Chunk]:
        yield TextDelta("Part")
        raise ProviderError("the model server went away", code="provider_error")


async def test_a_failing_provider_ends_the_turn_with_error_and_the_partial_text() -> None:
    drafts: list[Draft] = []
    runner = runner_for(drafts)
    runner.providers.demo = Breaking()  # type: ignore[assignment]
    turn = a_running_turn()
    runner.launch(turn)
    assert turn.task is not None
    await turn.task
    end = drafts[-1]
    assert isinstance(end, FailDraft)
    assert (end.code, end.text) == ("provider_error", "Part")
    # A first turn that ends early is still titled, before its end.
    assert isinstance(drafts[-2], TitleDraft)
