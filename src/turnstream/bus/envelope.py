"""What the relay publishes: subjects, headers and the JSON envelope of each stored event.

Contract ("NATS JetStream"):

- turn events on ``<prefix>.<tenant>.<conversation_id>.turn.<turn_id>.<type>``;
- conversation events on ``<prefix>.<tenant>.<conversation_id>.conversation.<type>``;
- file events on ``<prefix>.<tenant>.file.<file_id>.<type>`` (a file belongs to its
  owner, not to a conversation: its envelope's ``conversation_id`` is null);
- headers ``Nats-Msg-Id: <stream_id>:<seq>`` and ``Turnstream-Position: <position>``;
- body ``{id, type, tenant, conversation_id, turn_id, seq, position, occurred_at, data}``.

``data`` is the stored event exactly as the log holds it (its JSON state, byte for byte),
so an auditor reads on NATS what the store holds, and the relay never re-encodes it.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from turnstream.domain.conversation import Conversation, ConversationEvent
from turnstream.domain.events import DomainEvent
from turnstream.domain.files import File, FileEvent
from turnstream.domain.identities import is_tenant
from turnstream.domain.turn import Turn, TurnEvent

MSG_ID = "Nats-Msg-Id"
POSITION = "Turnstream-Position"
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"

SUBJECT_TYPES: dict[type[DomainEvent], str] = {
    Turn.Started: "turn_started",
    Turn.ReasoningAppended: "reasoning",
    Turn.TokensAppended: "token",
    Turn.Titled: "title",
    Turn.FellBack: "fell_back",
    Turn.ToolCallStarted: "tool_call_started",
    Turn.ToolArgumentsAppended: "tool_arguments",
    Turn.ToolCallReady: "tool_call",
    Turn.ApprovalRequested: "approval_requested",
    Turn.ApprovalDecided: "approval_decided",
    Turn.ToolResultRecorded: "tool_result",
    Turn.StepFinished: "step",
    Turn.Waiting: "waiting",
    Turn.Finished: "final",
    Turn.Failed: "error",
    Conversation.Created: "created",
    Conversation.Renamed: "renamed",
    Conversation.Deleted: "deleted",
    Conversation.Claimed: "claimed",
    File.Uploaded: "file_uploaded",
    File.Deleted: "file_deleted",
}
"""Each event's type on NATS: the last token of its subject and the envelope's ``type``.
No two aggregates' types share a name."""
EVENT_TYPES: dict[str, type[DomainEvent]] = {kind: cls for cls, kind in SUBJECT_TYPES.items()}
"""Envelope ``type`` → event class."""
TURN_EVENTS: tuple[type[TurnEvent], ...] = tuple(
    cls for cls in SUBJECT_TYPES if issubclass(cls, TurnEvent)
)
CONVERSATION_EVENTS: tuple[type[ConversationEvent], ...] = tuple(
    cls for cls in SUBJECT_TYPES if issubclass(cls, ConversationEvent)
)
FILE_EVENTS: tuple[type[FileEvent], ...] = tuple(
    cls for cls in SUBJECT_TYPES if issubclass(cls, FileEvent)
)

TOPIC_TYPES: dict[str, str] = {cls.TOPIC: t for t, cls in EVENT_TYPES.items()}
TURN_TOPICS = frozenset(cls.TOPIC for cls in TURN_EVENTS)
FILE_TOPICS = frozenset(cls.TOPIC for cls in FILE_EVENTS)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event as published on NATS."""

    id: str
    """``<stream_id>:<seq>``: the event's identity (and its ``Nats-Msg-Id``)."""
    type: str
    """One of :data:`SUBJECT_TYPES`' values (``turn_started``, ``token`` …; ``created`` …;
    ``file_uploaded``, ``file_deleted``)."""
    tenant: str
    conversation_id: UUID | None
    """The conversation, for turn and conversation events; null for file events (a file
    is its owner's, and may be attached in several conversations)."""
    turn_id: UUID | None
    """The turn, for turn events; null for conversation and file events."""
    seq: int
    """The event's number within its stream (turn, conversation or file): 1, 2, 3 …"""
    position: int
    """The event store's notification id: increasing in commit order, possibly with holes."""
    occurred_at: datetime
    data: msgspec.Raw
    """The stored event: its fields as the log holds them."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(body: bytes) -> Envelope:
    return _decoder.decode(body)


def event_of(envelope: Envelope) -> DomainEvent:
    """The domain event an envelope carries."""
    cls = EVENT_TYPES[envelope.type]
    event: DomainEvent = msgspec.json.decode(envelope.data, type=cls)
    return event


ENCODED = "~"
"""Marks a subject token that encodes a tenant which is not a tenant id (see below)."""


def tenant_token(tenant: str) -> str:
    """The tenant as a subject token: the tenant id itself.

    Every tenant id is a valid token (ids are checked whole where they enter). A tenant
    stored before that check (say ``"acme\\n"``) cannot be one: it is written as ``~``
    and the unpadded base64url of its UTF-8 bytes (``acme\\n`` is ``~YWNtZQo``), a token
    no tenant id can be. :func:`tenant_of_token` reverses it.
    """
    if is_tenant(tenant):
        return tenant
    raw = tenant.encode("utf-8", "surrogatepass")
    return ENCODED + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def tenant_of_token(token: str) -> str:
    """The tenant a subject token names (the inverse of :func:`tenant_token`)."""
    if not token.startswith(ENCODED):
        return token
    text = token[len(ENCODED) :]
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return raw.decode("utf-8", "surrogatepass")


def turn_subject(prefix: str, tenant: str, conversation_id: UUID, turn_id: UUID, kind: str) -> str:
    return f"{prefix}.{tenant_token(tenant)}.{conversation_id}.turn.{turn_id}.{kind}"


def conversation_subject(prefix: str, tenant: str, conversation_id: UUID, kind: str) -> str:
    return f"{prefix}.{tenant_token(tenant)}.{conversation_id}.conversation.{kind}"


def file_subject(prefix: str, tenant: str, file_id: UUID, kind: str) -> str:
    """Where a file's events go: its tenant's, outside every conversation (the ``file``
    token is never a conversation id, so no conversation's wildcard matches it)."""
    return f"{prefix}.{tenant_token(tenant)}.file.{file_id}.{kind}"


def turn_wildcard(prefix: str, tenant: str, conversation_id: UUID, turn_id: UUID) -> str:
    """Every event of one turn."""
    return f"{prefix}.{tenant_token(tenant)}.{conversation_id}.turn.{turn_id}.*"


def control_subject(prefix: str, node_id: UUID) -> str:
    """Where a node takes commands (cancel); outside the stream's subjects on purpose."""
    return f"_{prefix}_ctl.{node_id}"


_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_FIELD_NOTES: dict[str, dict[str, Any]] = {
    "id": {
        "description": "`<stream_id>:<seq>`: the event's identity, also its `Nats-Msg-Id`"
        " header. Unique across the log: consumers de-duplicate on it.",
        "pattern": f"^{_UUID}:[1-9][0-9]*$",
    },
    "type": {"description": "The event's type; the last token of its subject."},
    "tenant": {
        "description": "The tenant that owns the conversation or file: a tenant id"
        " (`^[A-Za-z0-9_-]{1,64}$`, also the subject's token), except in events stored"
        " before tenant ids were checked whole, whose subject token encodes the tenant"
        " as `~` and the unpadded base64url of its UTF-8 bytes.",
    },
    "conversation_id": {
        "description": "The conversation the event belongs to; null for file events (a file"
        " is its owner's, not a conversation's)."
    },
    "turn_id": {"description": "The turn, for turn events; null for conversation and file events."},
    "seq": {
        "description": "The event's number within its turn, conversation or file: 1, 2, 3 ..."
        " with no gap (a turn's SSE frame id).",
        "minimum": 1,
    },
    "position": {
        "description": "The event store's notification id (also the `Turnstream-Position`"
        " header): increasing in commit order across the log, possibly with holes.",
        "minimum": 1,
    },
    "occurred_at": {
        "description": "When the event happened (RFC 3339, UTC).",
        "format": "date-time",
    },
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope, with ``data`` per ``type`` (from the msgspec types).

    ``docs/nats-envelope.schema.json`` is this, printed by ``turnstream schema``. The
    schema does not forbid unknown fields: events evolve by adding fields, and readers
    should ignore what they do not know.
    """
    classes = list(EVENT_TYPES.values())
    (envelope, *events), components = msgspec.json.schema_components(
        [Envelope, *classes], ref_template="#/$defs/{name}"
    )
    defs = {name: _with_timestamp_format(d) for name, d in components.items()}
    env_name = envelope["$ref"].rsplit("/", 1)[1]
    env_def = dict(defs.pop(env_name))
    props = {
        name: {**schema, **_FIELD_NOTES.get(name, {})}
        for name, schema in env_def["properties"].items()
    }
    props["type"] = {"enum": list(EVENT_TYPES), **_FIELD_NOTES["type"]}
    props["data"] = {
        "type": "object",
        "description": "The stored event exactly as the log holds it; its shape depends on `type`.",
    }
    env_def["properties"] = props
    an_id = {"type": "string", "format": "uuid"}
    null = {"type": "null"}
    env_def["allOf"] = [
        {
            "if": {"properties": {"type": {"const": kind}}},
            "then": {
                "properties": {
                    "data": ref,
                    "conversation_id": null if cls in FILE_EVENTS else an_id,
                    "turn_id": an_id if cls in TURN_EVENTS else null,
                }
            },
        }
        for (kind, cls), ref in zip(EVENT_TYPES.items(), events, strict=True)
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://turnstream.dev/schema/nats-envelope.v1.json",
        **env_def,
        "title": "turnstream NATS envelope (v1)",
        "description": "One stored event as the relay publishes it on JetStream: on subject"
        " `<prefix>.<tenant>.<conversation_id>.turn.<turn_id>.<type>` (turn events),"
        " `<prefix>.<tenant>.<conversation_id>.conversation.<type>` (conversation events)"
        " or `<prefix>.<tenant>.file.<file_id>.<type>` (file events), with headers"
        " `Nats-Msg-Id` (= `id`) and `Turnstream-Position` (= `position`).",
        "$defs": defs,
    }


def _with_timestamp_format(schema: dict[str, Any]) -> dict[str, Any]:
    """Mark an event's ``timestamp`` as RFC 3339 (events are stamped in UTC)."""
    props = schema.get("properties", {})
    if props.get("timestamp") == {"type": "string"}:
        schema = {
            **schema,
            "properties": {**props, "timestamp": {"type": "string", "format": "date-time"}},
        }
    return schema
