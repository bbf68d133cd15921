"""The relay in-process against real PostgreSQL and NATS: resume points and refusals."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import nats
import psycopg
import pytest
from nats.js.errors import APIError, NoStreamResponseError
from psycopg import sql
from psycopg.rows import tuple_row

from tests.api.test_relay import assert_exactly_the_store
from tests.conftest import NatsTarget
from tests.support.events import a_conversation
from tests.support.jetstream import StreamMessage, stored_events, stream_messages
from tests.unit.test_envelope_schema import validator
from turnstream.bootstrap import build_application
from turnstream.bus.acks import AckInbox
from turnstream.bus.envelope import EXPECTED_LAST_SEQ, POSITION
from turnstream.bus.nats import NatsLink
from turnstream.bus.relay import Relay
from turnstream.domain.events import DomainEvent
from turnstream.domain.files import File
from turnstream.ids import uuid7
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication


def write(app: TurnstreamApplication, events: list[DomainEvent]) -> int:
    with app.connect() as conn, conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        return app.store.copy_events(cur, [app.encode_row(e) for e in events])


@dataclass
class Running:
    app: TurnstreamApplication
    settings: Settings
    relay: Relay
    link: NatsLink
    task: asyncio.Task[None]

    async def caught_up(self, head: int, timeout: float = 30) -> None:
        """Wait until the stream holds position ``head`` (or the relay fails)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.relay.status.position < head:
            assert not self.task.done(), self.task
            assert asyncio.get_running_loop().time() < deadline, self.relay.status
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def relay_on(app: TurnstreamApplication, settings: Settings) -> AsyncIterator[Running]:
    link = NatsLink(settings.nats.url or "", settings.nats)
    link.start()
    relay = Relay(app, link, relay=settings.relay, nats=settings.nats)
    task = asyncio.create_task(relay.run_forever())
    try:
        yield Running(app, settings, relay, link, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await link.close()


def settings_for(nats_target: NatsTarget, database_url: str, schema: str) -> Settings:
    return Settings.from_env(
        {},
        database_url=database_url,
        database_schema=schema,
        nats_url=nats_target.url,
        nats_stream=nats_target.stream,
        nats_subject_prefix=nats_target.prefix,
        relay_batch=50,
        relay_takeover_s=0.2,
    )


@pytest.fixture
def app(database_url: str, db_schema: str) -> Iterator[TurnstreamApplication]:
    application = build_application(Settings.from_env({}, database_schema=db_schema), database_url)
    yield application
    application.close()


async def test_the_relay_resumes_from_its_checkpoint_when_retention_removed_the_last_message(
    app: TurnstreamApplication, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    settings = settings_for(nats_target, database_url, db_schema)
    # Relay three conversations.
    first = [e for _ in range(3) for e in a_conversation()]
    head = write(app, first)
    async with relay_on(app, settings) as running:
        await running.caught_up(head)
    # An operator's retention removes the last two messages; an older checkpoint says
    # where sequence 5 was (the relay's own may be newer: set one that needs counting).
    nc = await nats.connect(nats_target.url)
    js = nc.jetstream()
    info = await js.stream_info(nats_target.stream)
    last_seq = info.state.last_seq
    assert last_seq == len(first)
    await js.delete_msg(nats_target.stream, last_seq)
    await js.delete_msg(nats_target.stream, last_seq - 1)
    stored = stored_events(database_url, db_schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.turnstream_events_relay (stream, stream_seq, position)"
                " VALUES (%s, 5, %s) ON CONFLICT (stream) DO UPDATE"
                " SET stream_seq = 5, position = excluded.position"
            ).format(sql.Identifier(db_schema)),
            (nats_target.stream, stored[4].position),
        )
    # More events; a new relay counts on from the checkpoint and continues exactly.
    second = [e for _ in range(2) for e in a_conversation()]
    head = write(app, second)
    async with relay_on(app, settings) as running:
        await running.caught_up(head)
        assert running.relay.status.stream_seq == len(first) + len(second)
    await nc.close()
    relayed = await stream_messages(nats_target.url, nats_target.stream, nats_target.prefix)
    stored = stored_events(database_url, db_schema)
    # The two removed messages are gone; everything else is there exactly once.
    kept = stored[: len(first) - 2] + stored[len(first) :]
    assert [m.headers[POSITION] for m in relayed] == [str(e.position) for e in kept]
    assert [m.seq for m in relayed] == [
        *range(1, len(first) - 1),
        *range(len(first) + 1, len(first) + len(second) + 1),
    ]


async def test_a_stream_that_belongs_to_another_store_is_refused(
    app: TurnstreamApplication,
    nats_target: NatsTarget,
    database_url: str,
    db_schema: str,
) -> None:
    settings = settings_for(nats_target, database_url, db_schema)
    head = write(app, a_conversation())
    async with relay_on(app, settings) as running:
        await running.caught_up(head)
    count = len(await stream_messages(nats_target.url, nats_target.stream, nats_target.prefix))
    # Another store (a reset database, say) with more events, on the same stream.
    other_schema = f"{db_schema}_other"
    other = build_application(Settings.from_env({}, database_schema=other_schema), database_url)
    try:
        write(other, [e for _ in range(3) for e in a_conversation()])
        other_settings = settings_for(nats_target, database_url, other_schema)
        async with relay_on(other, other_settings) as running:
            deadline = asyncio.get_running_loop().time() + 30
            while not (running.relay.status.last_error or "").startswith("RelayError"):
                assert asyncio.get_running_loop().time() < deadline, running.relay.status
                await asyncio.sleep(0.05)
            assert "another store" in (running.relay.status.last_error or "")
            assert running.relay.status.published == 0
    finally:
        other.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other_schema))
            )
    # Nothing of the other store reached the stream.
    assert (
        len(await stream_messages(nats_target.url, nats_target.stream, nats_target.prefix)) == count
    )


async def relay_a_conversation(
    app: TurnstreamApplication, nats_target: NatsTarget, database_url: str, db_schema: str
) -> list[StreamMessage]:
    """Store a conversation, relay it, and return the stream's messages."""
    settings = settings_for(nats_target, database_url, db_schema)
    head = write(app, a_conversation())
    async with relay_on(app, settings) as running:
        await running.caught_up(head)
    return await stream_messages(nats_target.url, nats_target.stream, nats_target.prefix)


async def test_a_stale_publish_can_neither_duplicate_nor_reorder_the_stream(
    app: TurnstreamApplication, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    relayed = await relay_a_conversation(app, nats_target, database_url, db_schema)
    last = relayed[-1]
    # A publish left over from a dead relay: the last event again, expecting the
    # sequence it was published after. Past any duplicate window, the expected
    # sequence still refuses it.
    nc = await nats.connect(nats_target.url)
    try:
        js = nc.jetstream()
        await js.update_stream(
            name=nats_target.stream,
            subjects=[f"{nats_target.prefix}.>"],
            duplicate_window=0.1,
        )
        await asyncio.sleep(0.3)  # the scenario: the duplicate window has passed
        headers = {**last.headers, EXPECTED_LAST_SEQ: str(last.seq - 1)}
        with pytest.raises(APIError) as refused:
            await js.publish(last.subject, last.body, headers=headers)
        assert refused.value.err_code == 10071  # wrong last sequence
    finally:
        await nc.close()
    after = await stream_messages(nats_target.url, nats_target.stream, nats_target.prefix)
    assert after == relayed
    assert_exactly_the_store(stored_events(database_url, db_schema), after, nats_target.prefix)


async def test_the_relay_s_inbox_hands_each_ack_to_its_publish_and_each_refusal_too(
    app: TurnstreamApplication, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    relayed = await relay_a_conversation(app, nats_target, database_url, db_schema)
    last = relayed[-1]
    nc = await nats.connect(nats_target.url)
    acks = AckInbox(nc)
    await acks.open()
    try:
        subject = f"{nats_target.prefix}.inbox-test"
        await acks.publish(subject, b"{}", {EXPECTED_LAST_SEQ: str(last.seq)}, 7)
        # Stale (expects an earlier last sequence), and on a subject no stream takes.
        await acks.publish(subject, b"{}", {EXPECTED_LAST_SEQ: str(last.seq - 1)}, 8)
        await acks.publish("nobody.listens.here", b"{}", {}, 9)
        async with asyncio.timeout(30):
            with pytest.raises(NoStreamResponseError):
                await acks.take(9)  # taken out of order: each answer waits for its taker
            ack = await acks.take(7)
            with pytest.raises(APIError) as wrong:
                await acks.take(8)
        assert ack.seq == last.seq + 1
        assert ack.stream == nats_target.stream
        assert not ack.duplicate
        assert wrong.value.err_code == 10071  # wrong last sequence
        assert acks.poll(7) is None, "an ack is taken once"
    finally:
        await acks.close()
        await nc.close()


async def test_a_files_events_are_published_once_on_its_tenants_file_subject(
    app: TurnstreamApplication, nats_target: NatsTarget, database_url: str, db_schema: str
) -> None:
    settings = settings_for(nats_target, database_url, db_schema)
    file_id = uuid7()
    uploaded = File.upload(
        file_id, tenant="acme", owner="alice", name="notes.txt", media_type="text/plain",
        size=12, sha256="5f" * 32,
    )  # fmt: skip
    write(app, a_conversation())
    head = app.record(uploaded)
    async with relay_on(app, settings) as running:
        await running.caught_up(head)
    # A relay that starts after the upload finds the file's subject from its first event.
    head = app.record(File(uploaded).delete(by="alice"))
    async with relay_on(app, settings) as running:
        await running.caught_up(head)

    relayed = await stream_messages(nats_target.url, nats_target.stream, nats_target.prefix)
    stored = stored_events(database_url, db_schema)
    assert_exactly_the_store(stored, relayed, nats_target.prefix)
    files = relayed[-2:]
    prefix = f"{nats_target.prefix}.acme.file.{file_id}"
    assert [m.subject for m in files] == [f"{prefix}.file_uploaded", f"{prefix}.file_deleted"]
    assert [m.headers["Nats-Msg-Id"] for m in files] == [f"{file_id}:1", f"{file_id}:2"]
    assert [m.headers[POSITION] for m in files] == [str(e.position) for e in stored[-2:]]
    check = validator()
    for message in files:
        body = json.loads(message.body)
        assert check.is_valid(body), list(check.iter_errors(body))
    first = json.loads(files[0].body)
    assert first["conversation_id"] is None
    assert first["turn_id"] is None
    assert first["data"]["sha256"] == "5f" * 32
    assert first["data"]["owner"] == "alice"
