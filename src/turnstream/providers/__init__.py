"""Model providers: the built-in demo model and OpenAI-compatible servers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from turnstream.providers.base import (
    Attachment,
    ChatMessage,
    Chunk,
    Completed,
    Provider,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Usage,
    estimate_tokens,
    estimate_usage,
    message_tokens,
)
from turnstream.providers.demo import DemoProvider
from turnstream.providers.title import heuristic_title, llm_title
from turnstream.settings import ModelConfig, ModelSettings

if TYPE_CHECKING:
    from turnstream.providers.openai import OpenAIProvider

__all__ = [
    "Attachment",
    "ChatMessage",
    "Chunk",
    "Completed",
    "DemoProvider",
    "Provider",
    "ProviderError",
    "Providers",
    "ReasoningDelta",
    "TextDelta",
    "Usage",
    "estimate_tokens",
    "estimate_usage",
    "heuristic_title",
    "llm_title",
    "message_tokens",
]


class Providers:
    """The providers one process uses, chosen per model.

    Args:
        models: Supplies the demo model's pace and answer length.
    """

    def __init__(self, models: ModelSettings) -> None:
        self.demo = DemoProvider(models.demo_tokens_per_s, models.demo_tokens)
        self._openai: OpenAIProvider | None = None

    def for_model(self, model: ModelConfig) -> Provider:
        """The provider that serves ``model``.

        Args:
            model: A configured model.

        Returns:
            The demo provider for ``provider="demo"``, else the OpenAI-compatible one.
        """
        if model.provider == "demo":
            return self.demo
        if self._openai is None:
            # The openai SDK takes half a second to import: a process that serves only
            # the demo model (or none: the relay, the projections) never loads it.
            from turnstream.providers.openai import OpenAIProvider

            self._openai = OpenAIProvider()
        return self._openai

    async def aclose(self) -> None:
        """Close the HTTP clients of the OpenAI-compatible provider, if it was used."""
        if self._openai is not None:
            await self._openai.aclose()
