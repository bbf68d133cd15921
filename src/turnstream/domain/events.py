"""Domain events: facts about one aggregate, as frozen msgspec Structs.

Events are frozen, kw-only msgspec Structs with an explicit, stable ``TOPIC``, each
registered in :data:`EVENT_CLASSES` as it is defined, so renaming a module never breaks
stored data. How they are stored is the store's business (``turnstream.store.mapper``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

import msgspec

EVENT_CLASSES: dict[str, type[DomainEvent]] = {}
"""Every event class by its ``TOPIC`` (the name stored with each event, for ever)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class DomainEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A fact about one aggregate: its id, its version after the fact, and when."""

    TOPIC: ClassVar[str] = ""

    originator_id: UUID
    originator_version: int
    timestamp: datetime

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        topic = cls.__dict__.get("TOPIC")
        if topic and EVENT_CLASSES.setdefault(topic, cls) is not cls:
            msg = f"two event classes share the topic {topic!r}"
            raise TypeError(msg)
