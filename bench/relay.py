"""Relay throughput and commit -> consumer latency, against raw nats-py in the same run.

    python bench/relay.py [--events 100000] [--repeat 3] [--database-url URL] [--nats-url URL]

Per run, in a fresh schema and fresh streams:

1. **Backlog**: writes ``--events`` events (conversations, turns of tokens, terminal
   events; the same shapes the service stores) to the store, then starts the project's
   ``Relay`` and times it until the stream holds them all (and checks that it holds
   exactly them: count, first and last position).
2. **Raw**: publishes the very same messages (subjects, bodies, ``Nats-Msg-Id``) into
   another fresh stream of the same configuration with nats-py ``publish_async``, and
   waits for every ack: the ceiling for any relay written with nats-py.
3. **Latency**: with the relay live, a producer commits ``--live-batch`` events every
   ``--live-interval-ms`` for ``--live-seconds``; a JetStream ordered consumer measures,
   per event, the time from the commit returning to the message arriving.

The last line of stdout is JSON with ``ratio_vs_raw`` (relay events/s over raw msgs/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js.api import DeliverPolicy
from psycopg.rows import tuple_row

import _common as common
from turnstream.bootstrap import build_application
from turnstream.bus.envelope import EXPECTED_LAST_SEQ, MSG_ID, POSITION
from turnstream.bus.messages import Message
from turnstream.bus.nats import NatsLink, ensure_stream
from turnstream.bus.relay import Relay
from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent, utcnow
from turnstream.domain.turn import Turn, TurnUsage
from turnstream.ids import uuid7
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication

ENV_NATS_URL = "TURNSTREAM_NATS_URL"
WORDS = [
    "",
    "the",
    "a",
    "relay",
    "stream",
    "event",
    "log",
    "token",
    "of",
    "in",
    "and",
    "to",
    "is",
    "that",
    "it",
    "for",
    "on",
    "with",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_database_args(parser)
    parser.add_argument(
        "--nats-url",
        default=None,
        help=f"NATS URL (default ${ENV_NATS_URL}; "
        "if unset, an embedded nats-server in a temporary folder)",
    )
    parser.add_argument("--events", type=int, default=100_000, help="backlog size")
    parser.add_argument("--tokens-per-turn", type=int, default=60)
    parser.add_argument("--batch", type=int, default=1000, help="the relay's page size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--live-seconds", type=float, default=5.0)
    parser.add_argument("--live-batch", type=int, default=20)
    parser.add_argument("--live-interval-ms", type=float, default=10.0)
    return parser.parse_args(argv)


@contextlib.contextmanager
def nats_server(url: str | None) -> Iterator[str]:
    url = url or os.environ.get(ENV_NATS_URL) or None
    if url:
        yield url
        return
    from turnstream.embedded import EmbeddedNats

    temp = tempfile.mkdtemp(prefix="turnstream-bench-nats-")
    server = EmbeddedNats(temp)
    common.log(f"starting an embedded nats-server in {temp} ...")
    try:
        yield server.start()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(temp, ignore_errors=True)


# The store.


def conversation_turn(tokens: int, k: int) -> list[DomainEvent]:
    """A conversation with one turn of ``tokens`` tokens: the shapes the service stores."""
    now = utcnow()
    cid, tid = uuid7(), uuid7()
    events: list[DomainEvent] = [
        Conversation.Created(
            originator_id=cid,
            originator_version=1,
            timestamp=now,
            tenant="bench",
            owner=f"user{k % 50}",
            model="demo",
        ),
        Turn.Started(
            originator_id=tid,
            originator_version=1,
            timestamp=now,
            conversation_id=cid,
            tenant="bench",
            user_id=f"user{k % 50}",
            node_id=cid,
            mode="message",
            user_message_id=uuid7(),
            assistant_message_id=uuid7(),
            parent_id=None,
            model="demo",
            content="How does a relay keep order?",
        ),
    ]
    text = []
    for i in range(tokens):
        piece = WORDS[(k + i) % len(WORDS)] + " "
        text.append(piece)
        events.append(
            Turn.TokensAppended(
                originator_id=tid, originator_version=i + 2, timestamp=now, text=piece
            )
        )
    events.append(
        Turn.Finished(
            originator_id=tid,
            originator_version=tokens + 2,
            timestamp=now,
            status="completed",
            text="".join(text),
            finish_reason="stop",
            usage=TurnUsage(prompt_tokens=12, completion_tokens=tokens),
        )
    )
    return events


def write_events(app: TurnstreamApplication, events: list[DomainEvent], chunk: int) -> int:
    """COPY the events under the table lock, ``chunk`` per transaction; the head position."""
    head = 0
    with app.connect() as conn:
        for start in range(0, len(events), chunk):
            rows = [app.encode_row(e) for e in events[start : start + chunk]]
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                head = app.store.copy_events(cur, rows)
    return head


def backlog(total: int, tokens: int) -> list[DomainEvent]:
    events: list[DomainEvent] = []
    k = 0
    while len(events) < total:
        events.extend(conversation_turn(tokens, k))
        k += 1
    return events  # whole conversations: at least ``total`` events


# The runs.


@dataclass
class RunResult:
    events: int
    relay_s: float
    raw_s: float
    latencies_ms: list[float] = field(default_factory=list)
    check: str = "ok"

    @property
    def relay_rate(self) -> float:
        return common.rate(self.events, self.relay_s)

    @property
    def raw_rate(self) -> float:
        return common.rate(self.events, self.raw_s)


def settings_for(schema: str, tag: str, batch: int = 1000) -> Settings:
    return Settings.from_env(
        {},
        database_schema=schema,
        nats_stream=f"BENCH_{tag.upper()}",
        nats_subject_prefix=f"bench_{tag}",
        relay_batch=batch,
        relay_takeover_s=0.5,
    )


async def drain_relay(relay: Relay, head: int, total: int) -> float:
    """Run the relay until the stream holds position ``head``; the seconds it took."""
    t0 = time.perf_counter()
    task = asyncio.create_task(relay.run_forever())
    with common.Progress("relay backlog", total) as progress:
        while relay.status.position < head:
            if task.done():
                task.result()
            progress.update(relay.status.published)
            await asyncio.sleep(0.01)
        progress.update(total)
    elapsed = time.perf_counter() - t0
    relay.bench_task = task  # type: ignore[attr-defined]
    return elapsed


async def raw_publish(
    nc: Any, stream_settings: Settings, messages: list[tuple[str, bytes, int, str]]
) -> float:
    """Bare ``publish_async`` of the same messages with the relay's three headers (the
    message id, the store position, the expected last stream sequence), no checks."""
    js = nc.jetstream(publish_async_max_pending=20_000)
    await ensure_stream(js, stream_settings.nats)
    t0 = time.perf_counter()
    for seq, (subject, body, position, msg_id) in enumerate(messages):
        headers = {MSG_ID: msg_id, POSITION: str(position), EXPECTED_LAST_SEQ: str(seq)}
        await js.publish_async(subject, body, headers=headers)
    await js.publish_async_completed()
    elapsed = time.perf_counter() - t0
    info = await js.stream_info(stream_settings.nats.stream)
    if info.state.messages != len(messages):
        msg = f"raw stream holds {info.state.messages}, expected {len(messages)}"
        raise RuntimeError(msg)
    await js.delete_stream(stream_settings.nats.stream)
    return elapsed


async def live_latency(
    app: TurnstreamApplication, nc: Any, settings: Settings, args: argparse.Namespace
) -> list[float]:
    """Commit small batches at a steady pace; time each event from commit to consumer."""
    js = nc.jetstream()
    committed: dict[int, float] = {}
    received: dict[int, float] = {}
    done = asyncio.Event()
    expected: list[int] = []

    async def on_msg(msg: Any) -> None:
        position = int(msg.headers["Turnstream-Position"])
        received[position] = time.perf_counter()
        if expected and position >= expected[0]:
            done.set()

    sub = await js.subscribe(
        f"{settings.nats.subject_prefix}.>",
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
        cb=on_msg,
    )

    def produce() -> None:
        end = time.perf_counter() + args.live_seconds
        k = 0
        pending: list[DomainEvent] = []
        with app.connect() as conn:
            while time.perf_counter() < end:
                while len(pending) < args.live_batch:
                    pending.extend(conversation_turn(args.tokens_per_turn, k))
                    k += 1
                batch, pending = pending[: args.live_batch], pending[args.live_batch :]
                rows = [app.encode_row(e) for e in batch]
                with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                    head = app.store.copy_events(cur, rows)
                at = time.perf_counter()
                for position in range(head - len(rows) + 1, head + 1):
                    committed[position] = at
                time.sleep(args.live_interval_ms / 1000)
        expected.append(max(committed))

    await asyncio.get_running_loop().run_in_executor(None, produce)
    if received and max(received) >= expected[0]:
        done.set()
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        common.log(f"latency: {len(received)} of {len(committed)} events arrived")
    await sub.unsubscribe()
    return [(received[p] - committed[p]) * 1000 for p in committed if p in received]


async def run_once(url: str, nats_url: str, args: argparse.Namespace) -> RunResult:
    with common.fresh_schema(url, keep=args.keep_schema) as schema:
        tag = schema.split("_", 1)[1]
        settings = settings_for(schema, tag, args.batch)
        app = build_application(settings, url)
        try:
            events = backlog(args.events, args.tokens_per_turn)
            common.log(f"writing {len(events):,} events to the store ...")
            head = await asyncio.get_running_loop().run_in_executor(
                None, write_events, app, events, 5000
            )
            common.try_checkpoint(url)
            link = NatsLink(nats_url, settings.nats, name="bench-relay")
            link.start()
            await link.ready.wait()
            relay = Relay(app, link, relay=settings.relay, nats=settings.nats)
            relay_s = await drain_relay(relay, head, len(events))
            assert link.js is not None
            info = await link.js.stream_info(settings.nats.stream)
            check = (
                "ok"
                if info.state.messages == len(events)
                else (f"stream holds {info.state.messages} of {len(events)}")
            )
            # The very same messages, raw.
            messages = await asyncio.get_running_loop().run_in_executor(
                None, relay_messages, relay, app
            )
            raw_settings = settings_for(schema, f"{tag}raw")
            ours, theirs = settings.nats.subject_prefix, raw_settings.nats.subject_prefix
            raw_messages = [(s.replace(ours, theirs, 1), b, p, i) for s, b, p, i in messages]
            assert link.nc is not None
            raw_s = await raw_publish(link.nc, raw_settings, raw_messages)
            common.log("measuring commit -> consumer latency ...")
            latencies = await live_latency(app, link.nc, settings, args)
            relay.bench_task.cancel()  # type: ignore[attr-defined]
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay.bench_task  # type: ignore[attr-defined]
            await link.js.delete_stream(settings.nats.stream)
            await link.close()
            return RunResult(len(events), relay_s, raw_s, latencies, check)
        finally:
            app.close()


def relay_messages(relay: Relay, app: TurnstreamApplication) -> list[Message]:
    """The relay's own (subject, body, position, msg id) for the whole log, built by its
    own code."""
    out: list[Message] = []
    with app.connect() as conn:
        after = 0
        while True:
            page = relay._next(conn, after, 0.0)
            if not page:
                return out
            out.extend(page)
            after = page[-1][2]


def report(args: argparse.Namespace, runs: list[RunResult]) -> None:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    print(
        f"turnstream relay: {runs[0].events:,} events per run, page {args.batch}, "
        f"{len(runs)} run(s); live: {args.live_batch} events every "
        f"{args.live_interval_ms:g} ms for {args.live_seconds:g} s"
    )
    rows = []
    for i, r in enumerate(runs, 1):
        lat = common.summarize(r.latencies_ms)
        rows.append(
            [
                str(i),
                common.fmt(r.relay_rate, 0),
                common.fmt(r.raw_rate, 0),
                common.fmt(r.relay_rate / r.raw_rate, 3),
                common.fmt(lat["p50"], 2),
                common.fmt(lat["p99"], 2),
                r.check,
            ]
        )
    common.print_table(
        ["run", "relay events/s", "raw msgs/s", "ratio", "latency p50 ms", "p99 ms", "check"],
        rows,
    )
    all_lat = [x for r in runs for x in r.latencies_ms]
    lat = common.summarize(all_lat)
    relay_rate = med([r.relay_rate for r in runs])
    raw_rate = med([r.raw_rate for r in runs])
    common.emit_json(
        {
            "bench": "relay",
            "events": runs[0].events,
            "relay_events_per_s": relay_rate,
            "raw_publish_async_msgs_per_s": raw_rate,
            "ratio_vs_raw": med([r.relay_rate / r.raw_rate for r in runs]),
            "latency_ms": {"p50": lat["p50"], "p99": lat["p99"], "max": lat["max"]},
            "latency_samples": len(all_lat),
            "check": sorted({r.check for r in runs}),
        }
    )


async def amain(args: argparse.Namespace) -> list[RunResult]:
    runs = []
    with (
        common.database(args.database_url, args.pg_data_dir) as url,
        nats_server(args.nats_url) as nats_url,
    ):
        for k in range(args.repeat):
            common.log(f"run {k + 1} of {args.repeat}")
            runs.append(await run_once(url, nats_url, args))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.exit_on_sigterm()
    runs = asyncio.run(amain(args))
    report(args, runs)
    return 0 if all(r.check == "ok" for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
