"""Model providers: the built-in demo model and OpenAI-compatible servers."""

from __future__ import annotations

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
from turnstream.providers.openai import OpenAIProvider
from turnstream.providers.title import heuristic_title, llm_title
from turnstream.settings import ModelConfig, ModelSettings

__all__ = [
    "Attachment",
    "ChatMessage",
    "Chunk",
    "Completed",
    "DemoProvider",
    "OpenAIProvider",
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
        self.openai = OpenAIProvider()

    def for_model(self, model: ModelConfig) -> Provider:
        """The provider that serves ``model``.

        Args:
            model: A configured model.

        Returns:
            The demo provider for ``provider="demo"``, else the OpenAI-compatible one.
        """
        if model.provider == "demo":
            return self.demo
        return self.openai

    async def aclose(self) -> None:
        """Close the HTTP clients of the OpenAI-compatible provider."""
        await self.openai.aclose()
