"""Turn starts recorded in group commits (the start batcher) on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from tests.support.events import a_started
from turnstream.bootstrap import build_application
from turnstream.domain.errors import ServiceUnavailable
from turnstream.ids import uuid7
from turnstream.settings import Settings
from turnstream.store.admission import Admission, Admitted
from turnstream.store.application import TurnstreamApplication
from turnstream.store.recorder import Start
from turnstream.store.starts import StartBatcher

NODE = uuid4()


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    settings = Settings.from_env({}, database_url=database_url, database_schema=db_schema)
    application = build_application(settings, database_url)
    yield application
    application.close()


@pytest.fixture
def batcher(app: TurnstreamApplication) -> Iterator[StartBatcher]:
    starts = StartBatcher(app.store, app.connect)
    yield starts
    starts.stop()


def a_start(
    app: TurnstreamApplication,
    *,
    user: str = "u",
    conversation_id: UUID | None = None,
    turn_id: UUID | None = None,
    max_running: int = 0,
) -> Start:
    overrides = {"conversation_id": conversation_id} if conversation_id else {}
    started = a_started(tenant="t", user_id=user, node_id=NODE, turn_id=turn_id, **overrides)
    admission = Admission(tenant="t", user_id=user, max_running=max_running)
    return (app.encode(started), started.conversation_id, NODE, admission)


def outcome(future: Future[Admitted]) -> Admitted | BaseException:
    exc = future.exception(timeout=30)
    return exc if exc is not None else future.result()


def stored_turns(app: TurnstreamApplication, starts: list[Start]) -> list[bool]:
    return [bool(app.turn_events(event.originator_id)) for event, *_ in starts]


def test_starts_queued_together_commit_in_one_transaction_in_arrival_order(
    app: TurnstreamApplication, batcher: StartBatcher
) -> None:
    starts = [a_start(app, user=f"u{i}") for i in range(40)]
    futures = [batcher.submit(s) for s in starts]  # all queued before the thread runs
    batcher.start()
    results = [outcome(f) for f in futures]
    assert batcher.batches == 1
    positions = [r.position for r in results if isinstance(r, Admitted)]
    assert len(positions) == 40
    assert all(p is not None for p in positions)
    assert positions == sorted(positions), "stored in the order they arrived"
    assert len(set(positions)) == 40
    assert all(stored_turns(app, starts))


def test_a_limit_counts_the_starts_before_it_in_the_same_batch(
    app: TurnstreamApplication, batcher: StartBatcher
) -> None:
    starts = [a_start(app, user="busy", max_running=3) for _ in range(10)]
    futures = [batcher.submit(s) for s in starts]
    batcher.start()
    results = [outcome(f) for f in futures]
    assert batcher.batches == 1
    assert all(isinstance(r, Admitted) for r in results)
    admitted = [r for r in results if isinstance(r, Admitted)]
    assert [r.position is not None for r in admitted] == [True] * 3 + [False] * 7
    assert [r.running for r in admitted] == [0, 1, 2] + [3] * 7
    assert stored_turns(app, starts) == [True] * 3 + [False] * 7


def test_a_conflict_in_a_batch_fails_only_the_start_that_conflicts(
    app: TurnstreamApplication, batcher: StartBatcher
) -> None:
    conversation = uuid7()
    repeated = uuid7()
    starts = [
        a_start(app),
        a_start(app, conversation_id=conversation),
        a_start(app, turn_id=repeated),
        a_start(app, conversation_id=conversation),  # a second running turn there
        a_start(app, turn_id=repeated),  # the same turn id again
        a_start(app),
    ]
    futures = [batcher.submit(s) for s in starts]
    batcher.start()
    results = [outcome(f) for f in futures]
    assert [type(r) for r in results] == [
        Admitted,
        Admitted,
        Admitted,
        IntegrityError,
        IntegrityError,
        Admitted,
    ]
    assert "turns_running" in str(results[3])
    assert "pkey" in str(results[4])
    assert stored_turns(app, starts) == [True, True, True, False, True, True]
    second = app.turn_events(starts[3][0].originator_id)
    assert second == [], "the conflicting start stored nothing"


def test_a_stopping_batcher_records_what_is_queued_and_refuses_what_comes_after(
    app: TurnstreamApplication, batcher: StartBatcher
) -> None:
    queued = a_start(app)
    future = batcher.submit(queued)
    batcher.start()
    batcher.stop()
    assert isinstance(outcome(future), Admitted)
    assert stored_turns(app, [queued]) == [True]
    late = batcher.submit(a_start(app))
    assert isinstance(outcome(late), ServiceUnavailable)


def test_a_connection_that_died_while_idle_costs_no_start(
    app: TurnstreamApplication, batcher: StartBatcher, database_url: str
) -> None:
    batcher.start()
    assert isinstance(outcome(batcher.submit(a_start(app))), Admitted)
    assert batcher._conn.current is not None
    pid = batcher._conn.current.info.backend_pid
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    after = a_start(app)
    result = outcome(batcher.submit(after))
    assert isinstance(result, Admitted)
    assert result.position is not None
    assert batcher._conn.current is not None
    assert batcher._conn.current.info.backend_pid != pid
    assert len(app.turn_events(after[0].originator_id)) == 1
