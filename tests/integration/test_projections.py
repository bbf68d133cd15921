"""Projection batches on a real PostgreSQL: exactly once, by the tracking record."""

from __future__ import annotations

import select
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, Tracking
from psycopg import sql

from tests.support.projections import generations, view_rows
from turnstream.bootstrap import build_application
from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent
from turnstream.domain.periods import period_starts
from turnstream.domain.turn import Turn, TurnUsage
from turnstream.ids import uuid7
from turnstream.projections.rebuild import rebuild
from turnstream.projections.registry import ensure_projections
from turnstream.projections.runner import Batch, GenerationChanged
from turnstream.projections.usage import UsageCounters
from turnstream.settings import Settings
from turnstream.store.application import APP_NAME, TurnstreamApplication

MONDAY_NOON = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    settings = Settings.from_env({}, database_url=database_url, database_schema=db_schema)
    application = build_application(settings, database_url)
    ensure_projections(application)
    yield application
    application.close()


def a_turn(user: str, prompt: int, completion: int) -> list[DomainEvent]:
    turn_id = uuid7()
    return [
        Turn.Started(
            originator_id=turn_id,
            originator_version=1,
            timestamp=MONDAY_NOON,
            conversation_id=uuid7(),
            tenant="acme",
            user_id=user,
            node_id=uuid7(),
            mode="message",
            user_message_id=uuid7(),
            assistant_message_id=uuid7(),
            parent_id=None,
            model="demo",
            content="hi",
        ),
        Turn.Finished(
            originator_id=turn_id,
            originator_version=2,
            timestamp=MONDAY_NOON,
            status="completed",
            text="hello",
            usage=TurnUsage(prompt_tokens=prompt, completion_tokens=completion),
        ),
    ]


def counters(database_url: str, schema: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            sql.SQL(
                "SELECT user_id, period, period_start, turns, prompt_tokens, completion_tokens"
                " FROM {}.usage_counters ORDER BY user_id, period"
            ).format(sql.Identifier(schema))
        ).fetchall()


def test_a_page_is_applied_once_with_its_tracking_record(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    batch = Batch(app, UsageCounters, 1)
    page = [(event, n) for n, event in enumerate(a_turn("ann", 10, 3) + a_turn("bob", 5, 1), 1)]
    with app.connect() as conn:
        batch.apply(conn, page, 4)
        # The same page again (a runner that did not know it had committed): refused whole.
        with pytest.raises(IntegrityError):
            batch.apply(conn, page, 4)
    day, week = period_starts(MONDAY_NOON)
    assert day == week  # a Monday starts its ISO week
    assert counters(database_url, db_schema) == [
        ("ann", "day", day, 1, 10, 3),
        ("ann", "week", week, 1, 10, 3),
        ("bob", "day", day, 1, 5, 1),
        ("bob", "week", week, 1, 5, 1),
    ]
    assert batch.position() == 4


def test_the_active_worker_applies_a_page_in_one_round_trip_guarded_by_its_generation(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    events = a_turn("ann", 10, 3) + a_turn("bob", 5, 1)
    app.save(*events)
    batch = Batch(app, UsageCounters, 1)
    with app.connect() as conn:
        head, page = batch.next_page(conn, 0)
        assert head == 4
        assert [(type(e), at) for e, at in page] == [(type(e), n) for n, e in enumerate(events, 1)]
        assert batch.apply_active(conn, page, head)
        assert batch.next_page(conn, head) == (4, [])
    day, _ = period_starts(MONDAY_NOON)
    assert ("ann", "day", day, 1, 10, 3) in counters(database_url, db_schema)
    assert batch.position() == 4
    # A rebuild made generation 2 active: the old generation's worker applies nothing.
    with app.connect() as conn:
        conn.execute(
            sql.SQL("UPDATE {}.projections SET generation = 2 WHERE name = %s").format(
                sql.Identifier(db_schema)
            ),
            (UsageCounters.name,),
        )
        more = a_turn("cy", 1, 1)
        app.save(*more)
        head, page = batch.next_page(conn, 4)
        assert len(page) == 2
        with pytest.raises(GenerationChanged):
            batch.apply_active(conn, page, head)
    assert batch.position() == 4
    assert all(row[0] != "cy" for row in counters(database_url, db_schema))


def test_the_tracking_record_reads_its_own_result_inside_a_pipeline(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    # In a pipeline, psycopg reads whatever results have arrived whenever it sends, and
    # hands each to the cursor that ran its statement. Have the server's answers to a
    # page's statements wait, unread, in the socket before the tracking record goes:
    # the library's fetchone() on the page's cursor then read an INSERT's answer.
    batch = Batch(app, UsageCounters, 1)
    started, _ = a_turn("dee", 1, 1)
    with app.connect() as conn, conn.transaction(), conn.cursor() as cur, conn.pipeline():
        for statement, params in batch.projection.changes(started, 1):
            cur.execute(statement, params)
        conn.pgconn.send_flush_request()
        conn.pgconn.flush()
        readable, _, _ = select.select([conn.fileno()], [], [], 30)
        assert readable  # the answers are there
        batch.view.track(conn, Tracking(APP_NAME, 1))
        with pytest.raises(IntegrityError):  # and it still refuses the same position
            batch.view.track(conn, Tracking(APP_NAME, 1))
    assert batch.position() == 1


def test_the_librarys_process_event_applies_one_event_with_its_tracking(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    batch = Batch(app, UsageCounters, 1)
    started, finished = a_turn("cy", 7, 2)
    batch.projection.process_event(started, Tracking(APP_NAME, 1))
    batch.projection.process_event(finished, Tracking(APP_NAME, 2))
    with pytest.raises(IntegrityError):
        batch.projection.process_event(finished, Tracking(APP_NAME, 2))
    day = period_starts(MONDAY_NOON)[0]
    assert counters(database_url, db_schema)[0] == ("cy", "day", day, 1, 7, 2)
    assert batch.view.max_tracking_id(APP_NAME) == 2


def test_a_rebuild_over_many_pages_equals_one_over_a_single_page(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    for n in range(12):
        conversation = Conversation.create(
            uuid7(), tenant="acme", owner=f"u{n % 3}", model="demo", title=None, system_prompt=None
        )
        app.record(conversation)
        for started, finished in (a_turn(f"u{n % 3}", n, 1) for _ in range(2)):
            app.record(msgspec.structs.replace(started, conversation_id=conversation.originator_id))
            app.record(finished)
    one_page = rebuild(app, "tree", page=1000)
    assert one_page.applied == 12 * 5
    single = view_rows(database_url, db_schema)

    paged = [rebuild(app, name, page=7) for name in ("tree", "conversations", "usage")]

    assert [r.applied for r in paged] == [60, 60, 48]
    assert generations(database_url, db_schema) == {"tree": 3, "conversations": 2, "usage": 2}
    assert view_rows(database_url, db_schema)["tree_messages"] == single["tree_messages"]
    assert len(single["tree_messages"]) == 12 * 2 * 2
    assert counters(database_url, db_schema)[0][3] == 2 * 4  # u0: 4 conversations, 2 turns each


def test_a_generation_made_before_a_column_was_added_gets_it_where_it_is(
    app: TurnstreamApplication, database_url: str, db_schema: str
) -> None:
    # As an earlier version left it: tree_messages__g1 and its view without client_id.
    schema = sql.Identifier(db_schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP VIEW {}.tree_messages").format(schema))
        conn.execute(
            sql.SQL("ALTER TABLE {}.tree_messages__g1 DROP COLUMN client_id").format(schema)
        )
        conn.execute(
            sql.SQL("CREATE VIEW {0}.tree_messages AS SELECT * FROM {0}.tree_messages__g1").format(
                schema
            )
        )
    ensure_projections(app)  # what a start of this version does
    with psycopg.connect(database_url) as conn:
        for relation in ("tree_messages__g1", "tree_messages"):
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                    (db_schema, relation),
                )
            ]
            assert columns[-1] == "client_id", relation
    assert generations(database_url, db_schema)["tree"] == 1  # no rebuild was needed
