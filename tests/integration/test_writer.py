"""The group-commit writer and orphan recovery on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError

from turnstream.bootstrap import build_application
from turnstream.domain.events import utcnow
from turnstream.domain.progress import FinishDraft, ReasoningDraft, TextDraft
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage
from turnstream.ids import uuid7
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication
from turnstream.store.lease import node_lock_key
from turnstream.store.recorder import SMALL_BATCH
from turnstream.store.writer import GroupWriter


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    settings = Settings.from_env({}, database_url=database_url, database_schema=db_schema)
    application = build_application(settings, database_url)
    yield application
    application.close()


class Collector:
    def __init__(self) -> None:
        self.events: list[TurnEvent] = []
        self.lost: list[UUID] = []
        self.cond = threading.Condition()

    def committed(self, events: Sequence[TurnEvent], position: int) -> None:
        with self.cond:
            self.events.extend(events)
            self.cond.notify_all()

    def on_lost(self, turn_id: UUID) -> None:
        with self.cond:
            self.lost.append(turn_id)
            self.cond.notify_all()

    def wait(self, predicate: object, timeout: float = 10) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "timed out"  # type: ignore[arg-type]


def finished(turn: UUID, text: str) -> FinishDraft:
    """A turn's completed end, its answer ``text``."""
    return FinishDraft(
        turn_id=turn,
        status="completed",
        text=text,
        reasoning="",
        finish_reason="stop",
        usage=TurnUsage(),
    )


def start(app: TurnstreamApplication, node_id: UUID, conversation_id: UUID | None = None) -> UUID:
    started = Turn.Started(
        originator_id=uuid7(),
        originator_version=1,
        timestamp=utcnow(),
        conversation_id=conversation_id or uuid7(),
        tenant="t",
        user_id="u",
        node_id=node_id,
        mode="message",
        user_message_id=uuid7(),
        assistant_message_id=uuid7(),
        parent_id=None,
        model="demo",
        content="hi",
    )
    with app.store.datastore.get_connection() as conn:
        app.start_turn(conn, started)
    return started.originator_id


def test_consecutive_tokens_of_a_turn_in_one_batch_become_one_event(
    app: TurnstreamApplication,
) -> None:
    node = uuid4()
    a, b = start(app, node), start(app, node)
    out = Collector()
    writer = GroupWriter(app, out.committed, out.on_lost)
    writer.open_turn(a, 1)
    writer.open_turn(b, 1)
    # Queue before the thread starts, so all of it lands in one batch.
    for text in ("Hel", "lo", " wor", "ld"):
        writer.submit(TextDraft(turn_id=a, text=text))
        writer.submit(TextDraft(turn_id=b, text=text.upper()))
    writer.submit(ReasoningDraft(turn_id=a, text="hm"))
    writer.submit(TextDraft(turn_id=a, text="!"))
    writer.start()
    out.wait(lambda: len(out.events) == 4)
    writer.stop()

    stored_a = app.turn_events(a)
    assert [(type(e).__name__, getattr(e, "text", None)) for e in stored_a] == [
        ("Started", None),
        ("TokensAppended", "Hello world"),
        ("ReasoningAppended", "hm"),
        ("TokensAppended", "!"),
    ]
    assert [getattr(e, "text", None) for e in app.turn_events(b)] == [None, "HELLO WORLD"]
    assert writer.stats.drafts == 10
    assert writer.stats.batches == 1


def test_while_busy_commits_start_a_window_apart_and_the_window_shares_one(
    app: TurnstreamApplication,
) -> None:
    """An idle writer commits at once; right after a commit, what comes waits for the
    window (here 30 s: never reached in the test) and goes in one commit; stop flushes."""
    node = uuid4()
    a, b = start(app, node), start(app, node)
    out = Collector()
    writer = GroupWriter(app, out.committed, out.on_lost, window_s=30.0)
    writer.open_turn(a, 1)
    writer.open_turn(b, 1)
    writer.start()
    writer.submit(TextDraft(turn_id=a, text="first"))
    out.wait(lambda: len(out.events) == 1)  # at once: well within the window
    for turn, text in ((a, " one"), (b, "two"), (a, " three")):
        writer.submit(TextDraft(turn_id=turn, text=text))
    assert writer.stats.batches == 1
    assert writer.pending() == 3  # waiting for the window, not committed one by one
    writer.stop()
    assert writer.stats.batches == 2
    assert [getattr(e, "text", None) for e in app.turn_events(a)] == [None, "first", " one three"]
    assert [getattr(e, "text", None) for e in app.turn_events(b)] == [None, "two"]


def test_a_full_batch_is_committed_without_waiting_for_the_window(
    app: TurnstreamApplication,
) -> None:
    node = uuid4()
    a = start(app, node)
    out = Collector()
    writer = GroupWriter(app, out.committed, out.on_lost, max_batch=2, window_s=30.0)
    writer.open_turn(a, 1)
    writer.start()
    writer.submit(TextDraft(turn_id=a, text="first"))
    out.wait(lambda: len(out.events) == 1)
    writer.submit(ReasoningDraft(turn_id=a, text="r"))
    writer.submit(TextDraft(turn_id=a, text="t"))
    out.wait(lambda: len(out.events) == 3)  # within 10 s: the 30 s window was not waited
    writer.stop()
    assert writer.stats.batches == 2


def test_a_terminal_event_closes_the_turn_and_nothing_is_written_after_it(
    app: TurnstreamApplication,
) -> None:
    node = uuid4()
    conversation = uuid7()
    turn = start(app, node, conversation)
    assert app.store.running_turn(conversation) == turn
    with pytest.raises(IntegrityError):
        start(app, node, conversation)  # one running turn per conversation

    out = Collector()
    writer = GroupWriter(app, out.committed, out.on_lost)
    writer.open_turn(turn, 1)
    writer.start()
    writer.submit(TextDraft(turn_id=turn, text="done"))
    writer.submit(finished(turn, "done"))
    writer.submit(TextDraft(turn_id=turn, text="late"))
    out.wait(lambda: any(e.TERMINAL for e in out.events))
    writer.stop()
    assert [e.originator_version for e in app.turn_events(turn)] == [1, 2, 3]
    assert app.store.running_turn(conversation) is None
    assert app.turn_ended(turn)
    start(app, node, conversation)  # the conversation takes a new turn


def test_a_dead_nodes_turns_end_with_runner_lost_and_a_live_nodes_are_spared(
    app: TurnstreamApplication,
) -> None:
    dead, alive = uuid4(), uuid4()
    orphan, kept = start(app, dead), start(app, alive)
    out = Collector()
    writer = GroupWriter(app, out.committed, out.on_lost)
    writer.open_turn(orphan, 1)
    writer.start()
    writer.submit(TextDraft(turn_id=orphan, text="streamed so far"))
    out.wait(lambda: len(out.events) == 1)

    lease = app.connect()
    lease.execute("SELECT pg_advisory_lock(%s)", (node_lock_key(alive),))
    janitor = app.connect()
    try:
        assert app.end_orphans(janitor, alive, node_lock_key(alive), Turn.lose_runner) == []
        written = app.end_orphans(janitor, dead, node_lock_key(dead), Turn.lose_runner)
    finally:
        lease.close()
        janitor.close()
    assert [e.originator_id for e in written] == [orphan]
    final = app.turn(orphan)
    assert final is not None
    assert final.status == "failed"
    assert final.error_code == "runner_lost"
    assert final.text == "streamed so far"
    still = app.turn(kept)
    assert still is not None
    assert still.status == "running"

    # The "dead" runner turns out to be alive: its next write conflicts, and the
    # writer drops the turn instead of writing after the terminal event.
    writer.submit(TextDraft(turn_id=orphan, text=" and more"))
    out.wait(lambda: out.lost == [orphan])
    writer.submit(TextDraft(turn_id=orphan, text=" ignored"))
    writer.stop()
    assert [type(e).__name__ for e in app.turn_events(orphan)] == [
        "Started",
        "TokensAppended",
        "Failed",
    ]


def test_a_commit_of_deltas_only_wakes_the_relay_s_channel_not_the_projections(
    app: TurnstreamApplication,
) -> None:
    """The projections never read token or reasoning deltas: a commit of those alone is
    notified on the deltas channel (the relay listens there too), any other commit on
    the events channel."""
    from psycopg.sql import SQL, Identifier

    store = app.store
    node = uuid4()
    a = start(app, node)
    out = Collector()
    writer = GroupWriter(app, out.committed, out.on_lost)
    writer.open_turn(a, 1)
    with app.connect() as listener:
        listener.autocommit = True
        for name in (store.channel_name, store.deltas_channel):
            listener.execute(SQL("LISTEN {}").format(Identifier(name)))
        writer.start()
        writer.submit(TextDraft(turn_id=a, text="tokens"))
        out.wait(lambda: len(out.events) == 1)
        writer.submit(finished(a, "tokens"))
        out.wait(lambda: len(out.events) == 2)
        writer.stop()
        heard: list[str] = []
        while store.channel_name not in heard:  # the finish's commit ends the list
            heard += [n.channel for n in listener.notifies(timeout=10, stop_after=1)]
    assert heard == [store.deltas_channel, store.channel_name]


@pytest.mark.parametrize("size", [3, SMALL_BATCH + 1])
def test_a_group_commit_small_or_large_stores_in_order_and_closes_what_it_ends(
    app: TurnstreamApplication, size: int
) -> None:
    """A small commit is pipelined (one round trip), a large one goes by COPY: either
    stores its events in order at the positions it answers and closes the turns it ends."""
    node = uuid4()
    conversation = uuid7()
    turn = start(app, node, conversation)
    rows = [
        app.encode_row(
            Turn.TokensAppended(
                originator_id=turn, originator_version=v, timestamp=utcnow(), text=f"t{v}"
            )
        )
        for v in range(2, size + 2)
    ]
    with app.connect() as conn:
        conn.autocommit = True
        position = app.store.append_batch(conn, rows, [turn])
    stored = app.store.select_notifications(0, 10_000)
    assert stored[-1].id == position
    assert [(n.originator_version, n.id) for n in stored[-size:]] == [
        (v, position - size + v - 1) for v in range(2, size + 2)
    ]
    assert [getattr(e, "text", None) for e in app.turn_events(turn)][1:] == [
        f"t{v}" for v in range(2, size + 2)
    ]
    assert app.store.running_turn(conversation) is None
