"""What every turn event is, and the usage a turn or a step reports."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from turnstream.domain.events import DomainEvent


class TurnUsage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False


class TurnEvent(DomainEvent, frozen=True, kw_only=True):
    """An event of a turn; a terminal one ends it."""

    TERMINAL: ClassVar[bool] = False
    PAUSES: ClassVar[bool] = False
    """The turn waits after this event, and no process runs it."""


def add_usage(a: TurnUsage | None, b: TurnUsage | None) -> TurnUsage | None:
    """The usage of two steps together (estimated if either was)."""
    if a is None or b is None:
        return a or b
    return TurnUsage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        estimated=a.estimated or b.estimated,
    )
