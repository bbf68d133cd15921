"""Turns that wait, in the store: paused by the writer, left alone by recovery, taken up
by exactly one node, ended when they wait too long."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError

from tests.integration.test_writer import Collector, start
from tests.integration.test_writer import app as app  # the fixture
from turnstream.domain.events import utcnow
from turnstream.domain.progress import TurnProgress
from turnstream.domain.turn import TOOL_TIMEOUT, Turn, TurnUsage
from turnstream.store.application import TurnstreamApplication
from turnstream.store.lease import node_lock_key
from turnstream.store.writer import GroupWriter
from turnstream.usecases.tooluse import end_expired_waits, end_waiting


def pause(app: TurnstreamApplication, node: UUID, wait_s: float = 3600) -> UUID:
    """A turn of ``node`` whose first step called a client tool and that now waits."""
    turn_id = start(app, node)
    stored = app.turn(turn_id)
    assert stored is not None
    progress = TurnProgress(stored.started)
    progress.begin_step()
    drafts = [
        progress.append_text("Checking."),
        progress.call_started("c1", "get_weather"),
        progress.call_arguments("c1", '{"city": "Oslo"}'),
        progress.call_ready("c1", "client")[0],
        progress.step_finished("tool_calls", TurnUsage(prompt_tokens=3, completion_tokens=2)),
    ]
    drafts.append(progress.wait("tool_result", ["c1"], wait_s=wait_s))
    out = Collector()
    writer = GroupWriter(app, out.committed, out.on_lost)
    writer.open_turn(turn_id, 1)
    for draft in drafts:
        assert draft is not None
        writer.submit(draft)
    writer.start()
    out.wait(lambda: len(out.events) == len(drafts))
    writer.stop()
    return turn_id


def test_a_paused_turn_waits_in_the_index_and_a_dead_nodes_sweep_spares_it(
    app: TurnstreamApplication,
) -> None:
    dead = uuid4()
    waiting = pause(app, dead)
    row = app.store.turn_row(waiting)
    assert row is not None
    assert row.waiting
    assert not row.ended
    janitor = app.connect()
    try:
        assert app.end_orphans(janitor, dead, node_lock_key(dead), Turn.lose_runner) == []
    finally:
        janitor.close()
    turn = app.turn(waiting)
    assert turn is not None
    assert turn.waiting == ("tool_result", ["c1"])


def test_exactly_one_node_takes_a_waiting_turn_up(app: TurnstreamApplication) -> None:
    turn_id = pause(app, uuid4())
    first, second = app.turn(turn_id), app.turn(turn_id)
    assert first is not None
    assert second is not None
    node_a, node_b = uuid4(), uuid4()
    answer_a = first.answer("c1", "sunny")
    answer_b = second.answer("c1", "rain")
    assert app.append_to_waiting(turn_id, [answer_a], take=node_a) is not None
    # The other node read the same turn: it may not take it, nor write that version.
    assert app.append_to_waiting(turn_id, [answer_b], take=node_b) is None
    row = app.store.turn_row(turn_id)
    assert row is not None
    assert row.node_id == node_a
    assert not row.waiting
    stored = app.turn(turn_id)
    assert stored is not None
    assert stored.steps.calls["c1"].output == "sunny"
    # Ending it as if it still waited is refused too: a runner holds it now.
    assert not end_waiting(app, turn_id, code=None)


def test_an_answer_that_leaves_it_waiting_keeps_it_waiting_and_versions_fence(
    app: TurnstreamApplication,
) -> None:
    turn_id = pause(app, uuid4())
    turn = app.turn(turn_id)
    assert turn is not None
    stale = turn.end_waiting(code=None)  # made from the same read as the answer below
    answer = turn.answer("c1", "sunny")
    assert app.append_to_waiting(turn_id, [answer]) is not None
    row = app.store.turn_row(turn_id)
    assert row is not None
    assert row.waiting
    with pytest.raises(IntegrityError):
        app.append_to_waiting(turn_id, [stale], end=True)


def test_a_turn_that_waited_past_its_time_ends_with_tool_timeout(
    app: TurnstreamApplication,
) -> None:
    late = pause(app, uuid4(), wait_s=-1)
    on_time = pause(app, uuid4())
    assert end_expired_waits(app) == [late]
    ended = app.turn(late)
    assert ended is not None
    assert ended.status == "failed"
    assert ended.error_code == TOOL_TIMEOUT
    assert ended.text == "Checking."
    assert ended.usage == TurnUsage(prompt_tokens=3, completion_tokens=2)
    row = app.store.turn_row(late)
    assert row is not None
    assert row.ended
    kept = app.turn(on_time)
    assert kept is not None
    assert kept.waiting is not None
    assert kept.waiting_until is not None
    assert kept.waiting_until > utcnow() + timedelta(minutes=30)
