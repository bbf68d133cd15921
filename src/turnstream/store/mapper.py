"""How events are stored: msgspec JSON under their registered topic.

The eventsourcing library's ``Mapper`` turns a domain event into a ``StoredEvent`` and
back; this one encodes msgspec Structs directly (no transcoder), and reads them back by
the topic each event class registered.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder

from turnstream.domain.events import EVENT_CLASSES, DomainEvent

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def encode_event(event: DomainEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(topic: str, state: bytes) -> DomainEvent:
    cls = EVENT_CLASSES[topic]
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
