"""The runner: a turn's model steps, as drafts to the writer, until its end or a pause.

One asyncio task per running turn, outliving the request that started it. It asks the
turn's progress (the domain) for each draft, so text after the end or a second title
cannot happen; the group writer numbers and commits the drafts. Every way out (the
model finishes, a cancel, the provider fails, a bug) ends the turn with exactly one
terminal draft, keeping the text streamed so far. A conversation's first turn gets a
title before its end (or its first pause).

A step may call tools. The runner runs the server (MCP) calls that need no approval,
and the next step follows their results. When a call needs a client's result or a
person's decision, the runner records ``waiting`` and stops: no process holds the turn,
and whichever node takes the answers launches a runner again (``TurnProgress.resume``),
which picks up where this one stopped. At most ``turn_max_steps`` model steps a turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from uuid import UUID

from turnstream.domain.progress import Draft, TurnProgress
from turnstream.domain.tools import Call
from turnstream.domain.turn import TurnUsage
from turnstream.metrics import Metrics
from turnstream.providers import Providers
from turnstream.providers.base import (
    Completed,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    ToolCallArguments,
    ToolCallBegun,
    Usage,
    estimate_usage,
    message_tokens,
)
from turnstream.providers.title import heuristic_title, llm_title
from turnstream.settings import ModelConfig, ToolSettings
from turnstream.usecases.failover import Failover
from turnstream.usecases.registry import RunningTurn, RunningTurns
from turnstream.usecases.toolbox import NoServerTools, Offered, ServerTools, step_messages

log = logging.getLogger(__name__)

Submit = Callable[[Draft], None]
ReserveStep = Callable[[UUID, ModelConfig, int], Awaitable[None]]
"""Holds a further step's worth of tokens of a turn against its user's quotas."""


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
        tools: ToolSettings | None = None,
        server_tools: ServerTools | None = None,
        reserve_step: ReserveStep | None = None,
    ) -> None:
        self.providers = providers
        self.models = models
        self.submit = submit
        self.registry = registry
        self.metrics = metrics
        self.tools = tools or ToolSettings()
        self.server_tools = server_tools or NoServerTools()
        self.reserve_step = reserve_step
        self.failover = Failover(providers, models, metrics)

    def launch(self, turn: RunningTurn) -> None:
        """Register the turn and start its runner task."""
        self.registry.add(turn)
        turn.task = asyncio.create_task(self.run(turn), name=f"turn-{turn.turn_id}")

    async def run(self, turn: RunningTurn) -> None:
        progress = turn.progress
        submit = self.metrics.turn(turn.model.id, self.submit)  # timed and counted
        title_task: asyncio.Task[str] | None = None

        def hand(draft: Draft | None) -> None:
            if draft is not None:
                submit(draft)

        def title_now() -> None:
            """A first turn that ends (or pauses) early is titled all the same, first."""
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
            if turn.first_turn and not progress.titled:
                title_task = self._title_task(turn)
            serving = turn.model  # until a fallback model answers instead

            def fall_back(model: ModelConfig, failed: ModelConfig, exc: ProviderError) -> None:
                nonlocal serving
                serving = model
                hand(
                    progress.fall_back(
                        model=model.id, from_model=failed.id, code=exc.code, message=str(exc)
                    )
                )

            offered = Offered.for_turn(
                progress.tools, self.server_tools.tools_for(turn.model.mcp_servers)
            )
            steps = progress.steps
            while True:
                if steps.last_calls:  # the last step called tools: run, or wait
                    await self._run_calls(steps.to_run(), progress, hand)
                    waiting = steps.waiting()
                    if waiting is not None:
                        title_now()
                        submit(progress.wait(*waiting, wait_s=self.tools.tool_wait_s))
                        return
                    if steps.number >= self.tools.turn_max_steps:
                        title_now()
                        limit = self.tools.turn_max_steps
                        message = f"The model asked for more than {limit} steps in one turn."
                        spent = progress.steps_usage or estimate()
                        submit(progress.fail(code="too_many_steps", message=message, usage=spent))
                        return
                number = progress.begin_step()
                messages = turn.messages + step_messages(steps)
                if number > 1 and self.reserve_step is not None:
                    input_tokens = sum(message_tokens(m) for m in messages)
                    await self.reserve_step(turn.turn_id, turn.model, input_tokens)
                usage: Usage | None = None
                finish_reason = "stop"
                text_before = progress.generated_text
                stream = self.failover.stream(serving, messages, offered.specs, fall_back)
                async for chunk in stream:
                    if isinstance(chunk, TextDelta):
                        hand(progress.append_text(chunk.text))
                    elif isinstance(chunk, ReasoningDelta):
                        hand(progress.append_reasoning(chunk.text))
                    elif isinstance(chunk, ToolCallBegun):
                        hand(progress.call_started(chunk.call_id, chunk.name))
                    elif isinstance(chunk, ToolCallArguments):
                        hand(progress.call_arguments(chunk.call_id, chunk.text))
                    elif isinstance(chunk, Completed):
                        usage = chunk.usage
                        finish_reason = chunk.finish_reason
                    if title_task is not None and title_task.done():
                        hand(progress.title(title_task.result()))
                        title_task = None
                called = list(steps.current.calls.values())
                for call in called:
                    self._ready(call, offered, progress, hand)
                if usage is None:
                    text = progress.generated_text[len(text_before) :]
                    usage = estimate_usage(messages, text)
                if called or steps.number > 1:
                    hand(progress.step_finished(finish_reason, turn_usage(usage)))
                if not called:
                    break
            if title_task is not None:
                hand(progress.title(await title_task))
                title_task = None
            final = progress.steps_usage or turn_usage(usage)
            submit(progress.finish(finish_reason=finish_reason, usage=final))
        except asyncio.CancelledError:
            if turn.cancel_reason is None:
                raise
            title_now()
            usage_so_far = progress.steps_usage or estimate()
            submit(progress.interrupt(reason=turn.cancel_reason, usage=usage_so_far))
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

    @staticmethod
    def _ready(
        call: Call, offered: Offered, progress: TurnProgress, hand: Callable[[Draft | None], None]
    ) -> None:
        """A call the model finished: who runs it; an error result at once when no one
        can (unusable arguments, a tool not offered); an approval asked when needed."""
        kind, server = offered.kind(call.name)
        draft, problem = progress.call_ready(call.call_id, kind, server)
        hand(draft)
        if kind == "unknown":
            problem = f"No tool named {call.name!r} is offered in this turn."
        if problem is not None:
            hand(progress.result(call.call_id, problem, is_error=True))
        elif kind == "server" and offered.needs_approval(call.name):
            hand(progress.approval_requested(call.call_id))

    async def _run_calls(
        self, calls: list[Call], progress: TurnProgress, hand: Callable[[Draft | None], None]
    ) -> None:
        """Run the server calls that may run now, together; record each result in the
        order the model made the calls."""
        if not calls:
            return
        outcomes = await asyncio.gather(
            *(self.server_tools.call(c.server or "", c.name, c.arguments) for c in calls)
        )
        for call, outcome in zip(calls, outcomes, strict=True):
            hand(progress.result(call.call_id, outcome.output, is_error=outcome.is_error))

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
