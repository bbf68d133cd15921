"""Read your writes, per conversation: what a read of one conversation waits for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest

from tests.integration.test_relay import write
from tests.support import events
from turnstream.bootstrap import build_application
from turnstream.domain.turn import Turn
from turnstream.ids import uuid7
from turnstream.projections.reader import Reader
from turnstream.projections.registry import ensure_projections
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    settings = Settings.from_env({}, database_url=database_url, database_schema=db_schema)
    application = build_application(settings, database_url)
    ensure_projections(application)
    yield application
    application.close()


def test_a_conversation_waits_for_its_own_events_and_its_turns_only(
    app: TurnstreamApplication,
) -> None:
    """No projection runs here, so every view is at position 0 and everything is pending:
    conversation A's read must wait for A's last tree event (its turn's end, found through
    the turn index), B's for B's creation, a conversation with no events for nothing."""
    created_a, *turn_a = events.a_conversation(owner="alice")
    started_a = cast(Turn.Started, turn_a[0])
    app.record(created_a)
    with app.store.datastore.get_connection() as conn:
        app.start_turn(conn, started_a)
    end_of_a = write(app, turn_a[1:])  # the tokens (not read by the tree), then the end
    created_b = events.a_conversation(owner="bob")[0]
    position_b = app.record(created_b)
    reader = Reader(app)

    assert reader.pending("tree", created_a.originator_id) == (0, end_of_a)
    assert reader.pending("tree", created_b.originator_id) == (0, position_b)
    assert reader.pending("tree", uuid7()) == (0, None)
    assert reader.pending("tree") == (0, position_b)  # the whole log's: B came last
