"""msgspec events on the eventsourcing library.

Events are frozen, kw-only msgspec Structs with an explicit, stable ``TOPIC`` that is
registered with the library, so renaming a module never breaks stored data. The
:class:`MsgspecMapper` stores them as msgspec JSON and reads them back by topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

import msgspec
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import register_topic, resolve_topic


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
        if topic:
            register_topic(topic, cls)


_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def encode_event(event: DomainEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(topic: str, state: bytes) -> DomainEvent:
    cls = resolve_topic(topic)
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    event: DomainEvent = decoder.decode(state)
    return event


class MsgspecMapper(Mapper[UUID]):
    """Stores msgspec events as JSON under their registered topic."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        event: DomainEvent = domain_event
        state = encode_event(event)
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=type(event).TOPIC,
            state=state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        state = stored_event.state
        if self.cipher:
            state = self.cipher.decrypt(state)
        if self.compressor:
            state = self.compressor.decompress(state)
        return decode_event(stored_event.topic, state)


class NullTranscoder(Transcoder):
    """The mapper above encodes by itself; the library still wants a transcoder."""

    def encode(self, obj: Any) -> bytes:
        return b""

    def decode(self, data: bytes) -> Any:
        return None
