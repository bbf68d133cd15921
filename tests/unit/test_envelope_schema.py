"""The envelope's JSON Schema: the committed file is the generated one, and it has teeth.

The e2e tail tests also validate every envelope the relay really published against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from turnstream.bus.envelope import (
    CONVERSATION_EVENTS,
    EVENT_TYPES,
    FILE_EVENTS,
    TURN_EVENTS,
    Envelope,
    encode_envelope,
    json_schema,
)
from turnstream.cli import main
from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent, utcnow
from turnstream.domain.files import File, FileRef
from turnstream.domain.turn import Turn, TurnUsage
from turnstream.ids import uuid7
from turnstream.store.mapper import encode_event

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "nats-envelope.schema.json"
REGENERATE = "regenerate it with: turnstream schema > docs/nats-envelope.schema.json"


def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_the_committed_schema_file_is_the_generated_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    generated = json.loads(json.dumps(json_schema()))
    assert committed == generated, f"{SCHEMA_FILE.name} is out of date; {REGENERATE}"

    # `turnstream schema` prints exactly the file.
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text(), REGENERATE


def one_event_of_each_type() -> list[tuple[DomainEvent, Any, Any]]:
    """(event, conversation id or None, turn id or None) for every type the relay
    publishes."""
    cid, tid, fid, now = uuid7(), uuid7(), uuid7(), utcnow()

    def turn(cls: type[Any], version: int, **fields: Any) -> Any:
        return cls(originator_id=tid, originator_version=version, timestamp=now, **fields)

    def conversation(cls: type[Any], version: int, **fields: Any) -> Any:
        return cls(originator_id=cid, originator_version=version, timestamp=now, **fields)

    usage = TurnUsage(prompt_tokens=12, completion_tokens=3)
    turn_events = [
        turn(
            Turn.Started,
            1,
            conversation_id=cid,
            tenant="acme",
            user_id="alice",
            node_id=uuid7(),
            mode="message",
            user_message_id=uuid7(),
            assistant_message_id=uuid7(),
            parent_id=None,
            model="demo",
            content="Hi",
            attachments=(
                FileRef(
                    id=fid,
                    name="cat.png",
                    media_type="image/png",
                    bytes=68,
                    sha256="ab" * 32,
                    width=1,
                    height=1,
                ),
            ),
        ),
        turn(Turn.ReasoningAppended, 2, text="Thinking"),
        turn(Turn.TokensAppended, 3, text="Hel"),
        turn(Turn.Titled, 4, title="Greetings"),
        turn(
            Turn.FellBack,
            4,
            model="local",
            from_model="gpt",
            code="provider_error",
            message="the model server answered HTTP 503",
        ),
        turn(Turn.ToolCallStarted, 5, call_id="call_1", name="weather"),
        turn(Turn.ToolArgumentsAppended, 6, call_id="call_1", text='{"city":'),
        turn(
            Turn.ToolCallReady,
            7,
            call_id="call_1",
            name="weather",
            arguments={"city": "Oslo"},
            kind="server",
            server="files",
        ),
        turn(Turn.ApprovalRequested, 8, call_id="call_1", name="weather"),
        turn(Turn.ApprovalDecided, 9, call_id="call_1", approved=True, by="alice"),
        turn(Turn.ToolResultRecorded, 10, call_id="call_1", output={"temp_c": 4}),
        turn(Turn.StepFinished, 11, step=1, finish_reason="tool_calls", usage=usage),
        turn(Turn.Waiting, 12, reason="tool_result", call_ids=("call_2",), until=now),
        turn(Turn.Finished, 13, status="completed", text="Hel", usage=usage),
        turn(Turn.Failed, 13, code="runner_lost", message="The runner died", text="Hel"),
    ]
    conversation_events = [
        conversation(Conversation.Created, 1, tenant="acme", owner="alice", model="demo"),
        conversation(Conversation.Renamed, 2, title="Renamed"),
        conversation(Conversation.Claimed, 3, owner="bob", previous_owner="guest-1"),
        conversation(Conversation.Deleted, 4),
    ]
    uploaded = File.upload(
        fid, tenant="acme", owner="alice", name="cat.png", media_type="image/png", size=68,
        sha256="ab" * 32, width=1, height=1,
    )  # fmt: skip
    file_events = [uploaded, File(uploaded).delete(by="alice")]
    assert {type(e) for e in turn_events} == set(TURN_EVENTS)
    assert {type(e) for e in conversation_events} == set(CONVERSATION_EVENTS)
    assert {type(e) for e in file_events} == set(FILE_EVENTS)
    return (
        [(e, cid, tid) for e in turn_events]
        + [(e, cid, None) for e in conversation_events]
        + [(e, None, None) for e in file_events]
    )


def envelope_of(event: DomainEvent, cid: Any, tid: Any, position: int) -> dict[str, Any]:
    kind = next(k for k, cls in EVENT_TYPES.items() if cls is type(event))
    body = encode_envelope(
        Envelope(
            id=f"{event.originator_id}:{event.originator_version}",
            type=kind,
            tenant="acme",
            conversation_id=cid,
            turn_id=tid,
            seq=event.originator_version,
            position=position,
            occurred_at=event.timestamp,
            data=msgspec.Raw(encode_event(event)),
        )
    )
    decoded: dict[str, Any] = json.loads(body)
    return decoded


def test_envelopes_of_every_event_type_validate() -> None:
    check = validator()
    for position, (event, cid, tid) in enumerate(one_event_of_each_type(), start=1):
        envelope = envelope_of(event, cid, tid, position)
        errors = [e.message for e in check.iter_errors(envelope)]
        assert errors == [], (envelope["type"], errors)


def test_the_schema_refuses_envelopes_that_break_the_contract() -> None:
    check = validator()
    events = one_event_of_each_type()
    by_type = {type(e[0]): e for e in events}
    started = envelope_of(*by_type[Turn.Started], position=7)
    created = envelope_of(*by_type[Conversation.Created], position=8)

    # A turn event without its turn, a conversation event with one.
    assert not check.is_valid({**started, "turn_id": None})
    assert not check.is_valid({**created, "turn_id": started["turn_id"]})
    # A file event in a conversation (or in a turn); a conversation event outside one.
    uploaded = envelope_of(*by_type[File.Uploaded], position=10)
    assert uploaded["conversation_id"] is None
    assert not check.is_valid({**uploaded, "conversation_id": created["conversation_id"]})
    assert not check.is_valid({**uploaded, "turn_id": started["turn_id"]})
    assert not check.is_valid({**created, "conversation_id": None})
    assert not check.is_valid({**started, "conversation_id": None})
    # An unknown type, a position of 0, a malformed id.
    assert not check.is_valid({**started, "type": "frobnicated"})
    assert not check.is_valid({**started, "position": 0})
    assert not check.is_valid({**started, "id": "not-an-id"})
    # `data` that does not fit its type: a final without its status.
    final = envelope_of(*by_type[Turn.Finished], position=9)
    del final["data"]["status"]
    assert not check.is_valid(final)
    # A missing envelope field.
    no_seq = dict(started)
    del no_seq["seq"]
    assert not check.is_valid(no_seq)

    # Fields added later (events evolve by adding fields) are fine.
    assert check.is_valid({**started, "data": {**started["data"], "new_field": 1}})
