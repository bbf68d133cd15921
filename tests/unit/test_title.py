"""Heuristic conversation titles and the cleaning of model-written ones."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from turnstream.providers import (
    ChatMessage,
    Chunk,
    Completed,
    DemoProvider,
    heuristic_title,
    llm_title,
)
from turnstream.providers.title import FALLBACK_TITLE, MAX_TITLE_CHARS, clean_title
from turnstream.settings import DEMO_MODEL, ModelConfig


def test_a_short_message_is_its_own_title() -> None:
    assert heuristic_title("Explain event sourcing") == "Explain event sourcing"


def test_only_the_first_sentence_is_used() -> None:
    title = heuristic_title("How do I resume an SSE stream? I lost the connection earlier.")

    assert title == "How do I resume an SSE stream?"


def test_a_closing_period_is_dropped() -> None:
    assert heuristic_title("Summarise this article.") == "Summarise this article"


def test_a_long_sentence_is_cut_to_the_first_words_with_an_ellipsis() -> None:
    title = heuristic_title("please write me a long poem about the sea and the ships on it")

    assert title == "please write me a long poem about the…"


def test_a_long_text_is_cut_at_a_word_boundary_within_sixty_chars() -> None:
    message = (
        "Internationalization considerations notwithstanding, "
        "characteristically overcomplicated implementations proliferate"
    )

    title = heuristic_title(message)

    assert len(title) <= MAX_TITLE_CHARS
    assert title.endswith("…")
    assert message.startswith(title[:-1])
    # The cut falls between words, never inside one.
    assert not message[len(title) - 1].isalnum()


def test_a_single_enormous_word_is_cut_hard_at_sixty_chars() -> None:
    title = heuristic_title("x" * 500)

    assert len(title) == MAX_TITLE_CHARS
    assert title == "x" * (MAX_TITLE_CHARS - 1) + "…"


def test_whitespace_and_newlines_collapse_to_single_spaces() -> None:
    assert heuristic_title("  hello\n\n\tworld   again \n") == "hello world again"


@pytest.mark.parametrize("message", ["", "   ", "\n\t\n", "```\n```", "# ", "**"])
def test_an_empty_message_falls_back_to_new_conversation(message: str) -> None:
    assert heuristic_title(message) == FALLBACK_TITLE


def test_markdown_noise_is_stripped() -> None:
    message = "## **Fix** the [login page](https://example.com/login) bug"

    assert heuristic_title(message) == "Fix the login page bug"


def test_code_fences_are_dropped_when_there_is_prose() -> None:
    message = "Why does this crash\n```python\nimport os\nos.exit(1)\n```"

    assert heuristic_title(message) == "Why does this crash"


def test_code_alone_still_gives_a_title() -> None:
    title = heuristic_title("```\nTraceback (most recent call last):\n```")

    assert title == "Traceback (most recent call last)"


def test_model_replies_are_cleaned_of_quotes_and_punctuation() -> None:
    assert clean_title('"Event Sourcing Basics."\n') == "Event Sourcing Basics"
    assert clean_title("Title: **Resuming SSE streams**") == "Resuming SSE streams"
    assert clean_title("<think>the user wants</think>\nKafka vs NATS") == "Kafka vs NATS"
    assert clean_title('  \n "" \n') == ""


def test_a_long_model_reply_is_capped_at_sixty_chars() -> None:
    title = clean_title("word " * 40)

    assert len(title) <= MAX_TITLE_CHARS
    assert title.endswith("word…")


async def test_llm_title_asks_the_model_and_cleans_its_reply() -> None:
    title = await llm_title(DemoProvider(tokens_per_s=0, tokens=8), DEMO_MODEL, "hello")

    # The demo model's first sentence, cleaned of its closing period.
    assert title == "This is the turnstream demo model"


async def test_llm_title_falls_back_to_the_heuristic_on_an_empty_reply() -> None:
    class Silent:
        async def stream(
            self, model: ModelConfig, messages: list[ChatMessage]
        ) -> AsyncIterator[Chunk]:
            yield Completed()

    title = await llm_title(Silent(), DEMO_MODEL, "Plan a trip to Lisbon. Three days.")

    assert title == "Plan a trip to Lisbon"
