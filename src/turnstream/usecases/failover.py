"""A model step's stream that outlasts a provider failing before its first token.

Before the first chunk nothing has been shown or billed, so a failure that may pass (a
timeout, a broken connection, HTTP 429 or 5xx) is tried again after a backoff that
doubles, with jitter, and honours the server's ``Retry-After``; then the model's
``fallback`` models are tried in order, each with its own retries. After the first
chunk there is no retry: the user has seen part of an answer, and a second one would
not continue it, so the error ends the turn as it did before.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

from turnstream.domain.tools import ToolSpec
from turnstream.metrics import Metrics
from turnstream.providers import ChatMessage, Chunk, ProviderError, Providers
from turnstream.settings import ModelConfig

MAX_WAIT_S = 60.0
"""The longest wait before a retry. A server that asks for more is not retried: the
next model answers sooner, and a turn that waits minutes looks dead."""

FallBack = Callable[[ModelConfig, ModelConfig, ProviderError], None]
"""Told (the model that answers now, the one that failed, why) before a fallback."""


def backoff_s(
    model: ModelConfig,
    attempt: int,
    retry_after_s: float | None,
    jitter: Callable[[], float] = random.random,
) -> float | None:
    """The wait before retry ``attempt`` (1, 2, …) of ``model``: ``retry_backoff_s``
    doubled per attempt, times 0.5 to 1.5 at random, at least the server's
    ``Retry-After``; None when the server asked for more than :data:`MAX_WAIT_S`."""
    wait: float = model.retry_backoff_s * 2.0 ** (attempt - 1) * (0.5 + jitter())
    if retry_after_s is not None:
        if retry_after_s > MAX_WAIT_S:
            return None
        wait = max(wait, retry_after_s)
    return min(wait, MAX_WAIT_S)


class Failover:
    """Streams one model step from ``model``, or from its fallbacks (see the module)."""

    def __init__(
        self,
        providers: Providers,
        models: Mapping[str, ModelConfig],
        metrics: Metrics,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._providers = providers
        self._models = models
        self._metrics = metrics
        self._sleep = sleep

    def chain(self, model: ModelConfig) -> list[ModelConfig]:
        """``model``, then its fallbacks that are configured, in order."""
        return [model, *(self._models[m] for m in model.fallback if m in self._models)]

    async def stream(
        self,
        model: ModelConfig,
        messages: list[ChatMessage],
        tools: Sequence[ToolSpec],
        on_fallback: FallBack,
    ) -> AsyncIterator[Chunk]:
        chain = self.chain(model)
        for index, candidate in enumerate(chain):
            provider = self._providers.for_model(candidate)
            retries = 0
            while True:
                started = False
                try:
                    async for chunk in provider.stream(candidate, messages, tools):
                        started = True
                        yield chunk
                except ProviderError as exc:
                    if started:
                        raise
                    wait = self._retry(candidate, exc, retries)
                    if wait is not None:
                        retries += 1
                        self._metrics.provider_retries.labels(candidate.id, exc.code).inc()
                        await self._sleep(wait)
                        continue
                    if index == len(chain) - 1:
                        raise
                    after = chain[index + 1]
                    self._metrics.provider_fallbacks.labels(candidate.id, after.id).inc()
                    on_fallback(after, candidate, exc)
                    break
                else:
                    return

    @staticmethod
    def _retry(model: ModelConfig, exc: ProviderError, done: int) -> float | None:
        """The wait before trying ``model`` again after ``done`` retries; None: do not."""
        if not exc.retryable or done >= model.retries:
            return None
        return backoff_s(model, done + 1, exc.retry_after_s)
