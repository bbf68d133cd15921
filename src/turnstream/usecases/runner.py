"""The runner: a turn's provider stream, as drafts to the writer, until its one end.

One asyncio task per running turn, outliving the request that started it. It asks the
turn's progress (the domain) for each draft, so text after the end or a second title
cannot happen; the group writer numbers and commits the drafts. Every way out (the
model finishes, a cancel, the provider fails, a bug) ends the turn with exactly one
terminal draft, keeping the text streamed so far. A conversation's first turn gets a
title before its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from turnstream.domain.progress import Draft
from turnstream.domain.turn import TurnUsage
from turnstream.metrics import Metrics
from turnstream.providers import Providers
from turnstream.providers.base import (
    Completed,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Usage,
    estimate_usage,
)
from turnstream.providers.title import heuristic_title, llm_title
from turnstream.settings import ModelConfig
from turnstream.usecases.registry import RunningTurn, RunningTurns

log = logging.getLogger(__name__)

Submit = Callable[[Draft], None]


def turn_usage(usage: Usage) -> TurnUsage:
    return TurnUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        estimated=usage.estimated,
    )


class TurnRunner:
    def __init__(
        self,
        *,
        providers: Providers,
        models: Mapping[str, ModelConfig],
        submit: Submit,
        registry: RunningTurns,
        metrics: Metrics,
    ) -> None:
        self.providers = providers
        self.models = models
        self.submit = submit
        self.registry = registry
        self.metrics = metrics

    def launch(self, turn: RunningTurn) -> None:
        """Register the turn and start its runner task."""
        self.registry.add(turn)
        turn.task = asyncio.create_task(self.run(turn), name=f"turn-{turn.turn_id}")

    async def run(self, turn: RunningTurn) -> None:
        progress = turn.progress
        submit = self.metrics.turn(turn.model.id, self.submit)  # timed and counted
        usage: Usage | None = None
        finish_reason = "stop"
        title_task: asyncio.Task[str] | None = None

        def hand(draft: Draft | None) -> None:
            if draft is not None:
                submit(draft)

        def title_now() -> None:
            """A first turn that ends early is titled all the same, before its end."""
            nonlocal title_task
            if title_task is None:
                return
            task, title_task = title_task, None
            if task.done() and not task.cancelled() and task.exception() is None:
                title = task.result()
            else:
                task.cancel()
                title = turn.title or heuristic_title(turn.started.content)
            hand(progress.title(title))

        def estimate() -> TurnUsage:
            text, reasoning = progress.generated_text, progress.generated_reasoning
            return turn_usage(estimate_usage(turn.messages, text, reasoning))

        try:
            if turn.first_turn:
                title_task = self._title_task(turn)
            provider = self.providers.for_model(turn.model)
            async for chunk in provider.stream(turn.model, turn.messages):
                if isinstance(chunk, TextDelta):
                    hand(progress.append_text(chunk.text))
                elif isinstance(chunk, ReasoningDelta):
                    hand(progress.append_reasoning(chunk.text))
                elif isinstance(chunk, Completed):
                    usage = chunk.usage
                    finish_reason = chunk.finish_reason
                if title_task is not None and title_task.done():
                    hand(progress.title(title_task.result()))
                    title_task = None
            if title_task is not None:
                hand(progress.title(await title_task))
                title_task = None
            final = turn_usage(usage) if usage is not None else estimate()
            submit(progress.finish(finish_reason=finish_reason, usage=final))
        except asyncio.CancelledError:
            if turn.cancel_reason is None:
                raise
            title_now()
            submit(progress.interrupt(reason=turn.cancel_reason, usage=estimate()))
        except ProviderError as exc:
            title_now()
            submit(progress.fail(code=exc.code, message=str(exc), usage=estimate()))
        except Exception:
            log.exception("turn %s failed", turn.turn_id)
            if not progress.ended:
                title_now()
                message = "The turn failed unexpectedly."
                submit(progress.fail(code="internal_error", message=message, usage=None))
        finally:
            if title_task is not None:
                title_task.cancel()
            self.registry.remove(turn.turn_id)
            submit.close()

    def _title_task(self, turn: RunningTurn) -> asyncio.Task[str]:
        content = turn.started.content
        if turn.title:
            title = turn.title

            async def given() -> str:
                return title

            return asyncio.create_task(given())
        if turn.model.title_model:
            title_model = self.models[turn.model.title_model]
            provider = self.providers.for_model(title_model)
            return asyncio.create_task(llm_title(provider, title_model, content))

        async def heuristic() -> str:
            return heuristic_title(content)

        return asyncio.create_task(heuristic())
