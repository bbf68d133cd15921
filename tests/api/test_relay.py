"""The relay: the stream holds exactly the stored events, in order, with the contract's shape."""

from __future__ import annotations

import json

import httpx

from tests.api.test_turn_stream import new_conversation, run_turn
from tests.conftest import NatsTarget
from tests.support.jetstream import StoredEvent, StreamMessage, wait_relayed
from tests.support.server import Server
from turnstream.bus.envelope import FILE_TOPICS, TOPIC_TYPES, TURN_TOPICS


def assert_exactly_the_store(
    stored: list[StoredEvent], relayed: list[StreamMessage], prefix: str, tenant: str = "acme"
) -> None:
    """Same events, same order, none missing, none twice; each message as the contract says."""
    assert [m.seq for m in relayed] == list(range(1, len(relayed) + 1))
    assert [m.headers["Turnstream-Position"] for m in relayed] == [str(e.position) for e in stored]
    assert [m.headers["Nats-Msg-Id"] for m in relayed] == [
        f"{e.originator_id}:{e.version}" for e in stored
    ]
    conversations: dict[str, str] = {}
    for event, message in zip(stored, relayed, strict=True):
        body = json.loads(message.body)
        kind = TOPIC_TYPES[event.topic]
        state = json.loads(event.state)
        assert body["id"] == f"{event.originator_id}:{event.version}"
        assert body["type"] == kind
        assert body["tenant"] == tenant
        assert body["seq"] == event.version
        assert body["position"] == event.position
        assert body["data"] == state
        assert body["occurred_at"] == state["timestamp"]
        if event.topic in TURN_TOPICS:
            assert body["turn_id"] == str(event.originator_id)
            if event.version == 1:
                conversations[str(event.originator_id)] = state["conversation_id"]
            cid = conversations[str(event.originator_id)]
            assert body["conversation_id"] == cid
            assert message.subject == f"{prefix}.{tenant}.{cid}.turn.{event.originator_id}.{kind}"
        elif event.topic in FILE_TOPICS:
            assert body["turn_id"] is None
            assert body["conversation_id"] is None
            assert message.subject == f"{prefix}.{tenant}.file.{event.originator_id}.{kind}"
        else:
            assert body["turn_id"] is None
            assert body["conversation_id"] == str(event.originator_id)
            assert message.subject == (
                f"{prefix}.{tenant}.{event.originator_id}.conversation.{kind}"
            )


def test_after_a_set_of_turns_the_stream_holds_exactly_the_stored_events(
    server: Server, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    # Two conversations, two turns each, a rename and a delete.
    first, second = new_conversation(server), new_conversation(server)
    for cid in (first, second, first, second):
        frames = run_turn(server, cid)
        assert frames[-1].event == "final"
    r = httpx.patch(
        f"{server.base_url}/v1/conversations/{first}",
        json={"title": "Renamed"},
        headers=server.headers(),
    )
    assert r.status_code == 200, r.text
    r = httpx.delete(f"{server.base_url}/v1/conversations/{second}", headers=server.headers())
    assert r.status_code == 204

    # The stream catches up with the store and holds exactly its events.
    stored, relayed = wait_relayed(
        nats_target.url, nats_target.stream, nats_target.prefix, database_url, db_schema
    )
    assert len(stored) > 4 * 3
    kinds = {TOPIC_TYPES[e.topic] for e in stored}
    assert {"created", "renamed", "deleted", "turn_started", "token", "final", "title"} <= kinds
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
