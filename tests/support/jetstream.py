"""Read what a JetStream stream holds and what the event store holds, to compare them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import nats
import psycopg
from nats.errors import TimeoutError as NatsTimeout
from psycopg import sql


@dataclass(frozen=True)
class StreamMessage:
    seq: int
    subject: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class StoredEvent:
    position: int
    originator_id: Any
    version: int
    topic: str
    state: bytes


async def _read_stream(url: str, stream: str, subject: str) -> list[StreamMessage]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        if info.state.messages == 0:
            return []
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        out: list[StreamMessage] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=5)
                except NatsTimeout:
                    break
                out.append(
                    StreamMessage(
                        seq=msg.metadata.sequence.stream,
                        subject=msg.subject,
                        headers=dict(msg.headers or {}),
                        body=msg.data,
                    )
                )
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def read_stream(url: str, stream: str, prefix: str) -> list[StreamMessage]:
    """Every message the stream holds, in stream order."""
    return asyncio.run(_read_stream(url, stream, f"{prefix}.>"))


async def stream_messages(url: str, stream: str, prefix: str) -> list[StreamMessage]:
    """:func:`read_stream` for async tests."""
    return await _read_stream(url, stream, f"{prefix}.>")


def stored_events(database_url: str, schema: str) -> list[StoredEvent]:
    """Every event the store holds, in position order."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state"
                " FROM {}.turnstream_events ORDER BY notification_id"
            ).format(sql.Identifier(schema))
        ).fetchall()
    return [StoredEvent(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


def wait_relayed(
    url: str,
    stream: str,
    prefix: str,
    database_url: str,
    schema: str,
    timeout: float = 60.0,
) -> tuple[list[StoredEvent], list[StreamMessage]]:
    """Wait until the stream's last message carries the store's last position.

    Waits on positions, not time: returns as soon as the relay has caught up, fails the
    test with both sides' sizes if it has not within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        stored = stored_events(database_url, schema)
        relayed = read_stream(url, stream, prefix)
        head = stored[-1].position if stored else 0
        last = int(relayed[-1].headers["Turnstream-Position"]) if relayed else 0
        if last >= head:
            return stored, relayed
        if time.monotonic() > deadline:
            msg = (
                f"relay did not catch up: store head {head} ({len(stored)} events),"
                f" stream at {last} ({len(relayed)} messages)"
            )
            raise AssertionError(msg)
        time.sleep(0.2)
