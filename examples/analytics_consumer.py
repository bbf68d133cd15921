"""A durable analytics consumer of turnstream's NATS stream: usage per tenant and model.

It reads the turn events the relay publishes (``<prefix>.<tenant>.<conversation>.turn.>``)
with a durable JetStream pull consumer and explicit acks, and keeps, in SQLite, one row per
turn (tenant, model, outcome, prompt and completion tokens, characters streamed) with a
``usage`` view that sums them per tenant and model.

Exactly-once effects over at-least-once delivery:

- JetStream redelivers any message not acked within ``--ack-wait``: after a crash, a
  lost ack, or a consumer that was recreated. So every event that changes a counter is
  applied in the same SQLite transaction that records its envelope ``id`` (unique across
  the log: ``<turn or conversation id>:<seq>``), and a message is acked only after that
  transaction commits. A redelivered event finds its id recorded and changes nothing.
- Redelivery may reorder events (a turn's ``final`` before its ``turn_started``), so each
  event only adds to its own fields of the turn's row, whatever came first.

Run it next to ``turnstream serve`` (the same ``TURNSTREAM_NATS_*`` variables)::

    python examples/analytics_consumer.py --db analytics.sqlite3            # until Ctrl-C
    python examples/analytics_consumer.py --db analytics.sqlite3 --until-idle   # a batch job
    python examples/analytics_consumer.py --db analytics.sqlite3 --report

It needs only nats-py and the standard library. The consumer's state lives in JetStream
under its durable name (``--durable``): a restart resumes where the last ack left off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (
    id TEXT PRIMARY KEY,            -- the envelope id: applied once, whatever redelivers it
    position INTEGER NOT NULL       -- its log position, to see how far the data goes
);
CREATE TABLE IF NOT EXISTS turns (
    turn_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    model TEXT,                     -- from turn_started
    outcome TEXT,                   -- completed | interrupted (final) | failed (error)
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    streamed_chars INTEGER NOT NULL DEFAULT 0
);
CREATE VIEW IF NOT EXISTS usage AS
    SELECT tenant, model,
           count(*) AS turns,
           coalesce(sum(outcome = 'completed'), 0) AS completed,
           coalesce(sum(outcome = 'failed'), 0) AS failed,
           sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens,
           sum(streamed_chars) AS streamed_chars
    FROM turns GROUP BY tenant, model ORDER BY tenant, model;
"""

# Each statement adds only its own event's fields to the turn's row, so any order works.
_STARTED = """
INSERT INTO turns (turn_id, tenant, model) VALUES (:turn_id, :tenant, :model)
ON CONFLICT (turn_id) DO UPDATE SET model = excluded.model
"""
_TOKENS = """
INSERT INTO turns (turn_id, tenant, streamed_chars) VALUES (:turn_id, :tenant, :chars)
ON CONFLICT (turn_id) DO UPDATE SET streamed_chars = streamed_chars + excluded.streamed_chars
"""
_ENDED = """
INSERT INTO turns (turn_id, tenant, outcome, prompt_tokens, completion_tokens)
VALUES (:turn_id, :tenant, :outcome, :prompt, :completion)
ON CONFLICT (turn_id) DO UPDATE SET outcome = excluded.outcome,
    prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens
"""
UPSERT = {"turn_started": _STARTED, "token": _TOKENS, "final": _ENDED, "error": _ENDED}

CRASHED = 3
"""Exit status of ``--crash-after``."""


@dataclass
class Tally:
    applied: int = 0
    """Events that changed the database."""
    duplicates: int = 0
    """Redelivered events already applied: skipped."""
    ignored: int = 0
    """Events this consumer does not count (reasoning, title)."""
    rejected: int = 0
    """Messages that are not envelopes: terminated, never redelivered."""

    @property
    def handled(self) -> int:
        return self.applied + self.duplicates + self.ignored + self.rejected


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit below
    db.execute("PRAGMA journal_mode = WAL")  # readers (--report) never block the consumer
    db.executescript(SCHEMA)
    return db


def apply_batch(db: sqlite3.Connection, msgs: Sequence[Msg], tally: Tally) -> set[int]:
    """Apply a batch in one transaction; the indexes of the messages that are not envelopes."""
    rejected: set[int] = set()
    db.execute("BEGIN IMMEDIATE")
    try:
        for i, msg in enumerate(msgs):
            try:
                envelope = json.loads(msg.data)
                kind = envelope["type"]
                row = row_of(envelope) if kind in UPSERT else None
            except (ValueError, KeyError, TypeError, AttributeError):
                rejected.add(i)
                continue
            if row is None:
                tally.ignored += 1
                continue
            inserted = db.execute(
                "INSERT INTO applied (id, position) VALUES (:id, :position)"
                " ON CONFLICT (id) DO NOTHING",
                row,
            ).rowcount
            if not inserted:
                tally.duplicates += 1
                continue
            db.execute(UPSERT[kind], row)
            tally.applied += 1
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    tally.rejected += len(rejected)
    return rejected


def row_of(envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope["data"]
    usage = data.get("usage") or {}
    outcome = data.get("status", "failed") if envelope["type"] == "final" else "failed"
    return {
        "id": envelope["id"],
        "position": envelope["position"],
        "turn_id": envelope["turn_id"],
        "tenant": envelope["tenant"],
        "model": data.get("model"),
        "chars": len(data.get("text", "")),
        "outcome": outcome,
        "prompt": usage.get("prompt_tokens", 0),
        "completion": usage.get("completion_tokens", 0),
    }


async def consume(args: argparse.Namespace) -> Tally:
    nc = await asyncio.wait_for(
        nats.connect(
            args.nats_url,
            name=f"analytics-{args.durable}",
            connect_timeout=2,
            max_reconnect_attempts=2 if args.until_idle else -1,
            reconnect_time_wait=0.5,
        ),
        10,
    )
    db = open_db(args.db)
    tally = Tally()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)  # finish the batch in hand, then stop
    try:
        js = nc.jetstream(timeout=10)
        config = ConsumerConfig(
            durable_name=args.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=args.ack_wait,
            max_ack_pending=max(1000, 2 * args.batch),
        )
        subject = f"{args.prefix}.*.*.turn.>"
        sub = await js.pull_subscribe(
            subject, durable=args.durable, stream=args.stream, config=config
        )
        while not stopping.is_set():
            try:
                msgs = await sub.fetch(args.batch, timeout=1.0)
            except TimeoutError:  # nats-py raises its own subclass or asyncio's: nothing came
                if args.until_idle and await caught_up(sub):
                    break
                continue
            rejected = apply_batch(db, msgs, tally)
            if args.crash_after and tally.handled >= args.crash_after:
                # Committed but not acked: JetStream redelivers this batch after --ack-wait.
                print(json.dumps(asdict(tally)), flush=True)
                os._exit(CRASHED)
            for i, msg in enumerate(msgs):
                if i in rejected:
                    await msg.term()  # never redeliver what can never be applied
                else:
                    await msg.ack()
            await nc.flush()
    finally:
        db.close()
        with contextlib.suppress(Exception):
            await nc.close()  # acks were flushed after each batch
    return tally


async def caught_up(sub: Any) -> bool:
    """Nothing left to deliver and nothing delivered but unacked (e.g. awaiting redelivery)."""
    try:
        info = await sub.consumer_info()
    except TimeoutError:
        return False  # ask again after the next fetch
    return not info.num_pending and not info.num_ack_pending


def report(path: Path) -> None:
    db = open_db(path)
    db.row_factory = sqlite3.Row
    for row in db.execute("SELECT * FROM usage"):
        print(json.dumps(dict(row)))
    db.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description="Count turnstream's token usage per tenant and model from its NATS stream,"
        " exactly once (a durable pull consumer with explicit acks, idempotent on the"
        " envelope id).",
    )
    parser.add_argument(
        "--nats-url",
        default=env("TURNSTREAM_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS URL (default: $TURNSTREAM_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument(
        "--stream",
        default=env("TURNSTREAM_NATS_STREAM", "TURNSTREAM"),
        help="the stream (default: $TURNSTREAM_NATS_STREAM or TURNSTREAM)",
    )
    parser.add_argument(
        "--prefix",
        default=env("TURNSTREAM_NATS_SUBJECT_PREFIX", "turnstream"),
        help="the subject prefix (default: $TURNSTREAM_NATS_SUBJECT_PREFIX or turnstream)",
    )
    parser.add_argument(
        "--durable", default="analytics", help="the durable consumer's name (default: analytics)"
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=Path("analytics.sqlite3"),
        help="the SQLite file (default: analytics.sqlite3)",
    )
    parser.add_argument("--batch", type=int, default=100, help="messages per fetch (default: 100)")
    parser.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        help="seconds before an unacked message is redelivered; set when the consumer is"
        " created (default: 30)",
    )
    parser.add_argument(
        "--until-idle",
        action="store_true",
        help="exit once everything in the stream is applied and acked (a batch job)",
    )
    parser.add_argument(
        "--report", action="store_true", help="print the usage per tenant and model as JSON lines"
    )
    parser.add_argument(
        "--crash-after",
        type=int,
        metavar="N",
        help="for trying redelivery: once N messages are handled, commit the batch and exit"
        f" with status {CRASHED} without acking it",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        report(args.db)
        return 0
    try:
        tally = asyncio.run(consume(args))
    except (OSError, TimeoutError, NatsError) as exc:
        print(f"analytics_consumer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(tally)), flush=True)  # what this run did
    return 0


if __name__ == "__main__":
    sys.exit(main())
