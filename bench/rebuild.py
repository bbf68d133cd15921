"""Rebuild: every projection rebuilt from a large log, against a raw read of the same log.

    python bench/rebuild.py [--events 1000000] [--rounds 3] [--database-url URL] [--keep]

In a fresh schema:

1. **Generate** about ``--events`` events the shapes the service stores: conversations
   (created, some renamed, a few deleted) with turns in every mode (mostly ``message``,
   some ``retry``, ``edit`` and ``continue``), each turn ``Started``, reasoning for the
   reasoning models, 20-150 tokens, ``Titled`` on a conversation's first turn, and one
   terminal event (completed, interrupted or failed). ``--concurrency`` conversations
   run at once and their events interleave in the log as live traffic does. Written
   with binary COPY through the project's recorder, under its table lock, then
   ``VACUUM (ANALYZE)`` and ``CHECKPOINT``. The same ``--seed`` gives the same log.
2. **Measure**, ``--rounds`` times: a raw server-side cursor reading every column of
   every row of the events table in log order, then ``rebuild()`` of every projection,
   one after the other (each rebuild fills a new generation and drops the old one).
3. **Check**, after every round, the rebuilt views against what was generated (counts,
   statuses, text lengths, usage sums); a mismatch fails the run.

Progress and a summary table go to stderr; stdout holds JSON lines, one per round, and
last the medians: ``seconds`` (all projections) and ``ratio_vs_raw_read`` (raw read
seconds over rebuild seconds: the rebuild's speed as a fraction of the raw read's).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

import _common as common
from turnstream.bootstrap import build_application
from turnstream.domain.conversation import Conversation
from turnstream.domain.events import DomainEvent
from turnstream.domain.modes import NEW_MESSAGES
from turnstream.domain.turn import Turn, TurnMode, TurnUsage
from turnstream.projections.base import table_name
from turnstream.projections.rebuild import RebuildResult, rebuild
from turnstream.projections.registry import PROJECTIONS, ensure_projections
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication
from turnstream.store.recorder import Row

GOAL_S = 30.0
"""The goal for a 1,000,000-event log on the standard 2-core machine."""
COPY_CHUNK = 10_000
"""Events per COPY transaction while generating."""
ITERSIZE = 10_000
"""Rows per fetch of the raw server-side cursor."""
LOG_START = datetime(2026, 10, 1, tzinfo=UTC)
LOG_SPAN = timedelta(days=28)
"""The generated log's timestamps spread evenly over four weeks (usage has many days)."""

# What the generated traffic looks like.
TENANTS = (("acme", 60), ("globex", 50), ("initech", 40), ("umbrella", 30), ("hooli", 20))
"""Tenants and their users (200 in all)."""
MODELS = (
    ("gpt-4o-mini", False, 35),
    ("llama-3.1-70b", False, 25),
    ("qwen3-32b", True, 25),
    ("deepseek-r1", True, 15),
)
"""Model, whether it streams reasoning first, weight."""
MODES: tuple[TurnMode, ...] = ("message", "retry", "edit", "continue")
MODE_WEIGHTS = (80, 8, 7, 5)
"""Modes of every turn after a conversation's first (which is a message)."""
TURNS_PER_CONVERSATION = (1, 2, 3, 4, 5, 6, 8, 12)
TURNS_WEIGHTS = (30, 20, 15, 10, 8, 7, 6, 4)
TOKENS = (20, 150)
REASONING = (10, 60)
INTERRUPTED, FAILED = 0.04, 0.03
RENAMED, DELETED, GIVEN_TITLE = 0.05, 0.03, 0.05
SAMPLE = (
    "the event log is the source of truth and every view is derived from it by folding "
    "facts in order a projection turns each fact into changes of its tables rebuilt from "
    "the first event it must match what the live worker wrote row for row because the "
    "changes depend on the events alone never on the clock or a sequence"
)
WORDS = tuple(SAMPLE.split())
PUNCTUATION = (".", ",", ";", ":", "\n", "\n\n", "?", "!")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_database_args(parser)
    parser.add_argument(
        "--keep",
        dest="keep_schema",
        action="store_true",
        help="do not drop the run's schema at the end (same as --keep-schema)",
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="log size to generate (default 1000000)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measurements of the raw read and of the rebuilds; figures are medians (default 3)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="conversations running at once while generating (default 50)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated log")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        default=None,
        help="after the measured rounds, rebuild every projection once more under cProfile, "
        "write the stats to FILE and print the top functions to stderr",
    )
    args = parser.parse_args(argv)
    if min(args.events, args.rounds, args.concurrency) < 1:
        parser.error("--events, --rounds and --concurrency must be positive")
    return args


# Generating the log.


@dataclass
class Expected:
    """What the generated log must make of the views."""

    events: int = 0
    topics: Counter[str] = field(default_factory=Counter)
    conversations: int = 0
    deleted: int = 0
    turns: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # In the conversations that are not deleted:
    messages: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    """Assistant messages by final status."""
    answer_chars: int = 0
    untitled: int = 0


@dataclass
class Chat:
    """A conversation being generated and where its tree stands."""

    id: UUID
    tenant: str
    owner: str
    model: str
    reasoning: bool
    title: str | None
    version: int = 1
    titled: bool = False
    leaf: UUID | None = None
    """The current answer (an assistant message without children)."""
    leaf_parent: UUID | None = None
    """Its user message."""
    user_parent: UUID | None = None
    """That user message's parent (the answer before it; None at the root)."""
    leaf_text: str = ""
    leaf_reasoning: str = ""
    messages: int = 0
    answers: dict[UUID, tuple[str, int]] = field(default_factory=dict)
    """Assistant message -> (final status, content length)."""


class LogGenerator:
    """Conversations and turns as a stream of events, deterministic for a seed."""

    def __init__(self, seed: int, target: int) -> None:
        self.rng = random.Random(seed)
        self.target = target
        self.expected = Expected()
        self.step_us = LOG_SPAN / timedelta(microseconds=1) / target
        self.users = [
            (tenant, f"{tenant}-user-{i:03d}") for tenant, count in TENANTS for i in range(count)
        ]
        self.pieces = [" " + w for w in WORDS] + list(WORDS) + list(PUNCTUATION)

    @property
    def closing(self) -> bool:
        """Enough events: finish the turns that run, start no new ones."""
        return self.expected.events >= self.target

    def now(self) -> datetime:
        return LOG_START + timedelta(microseconds=int(self.expected.events * self.step_us))

    def new_id(self) -> UUID:
        """A UUIDv7 of the log's synthetic time, random bits from the seed."""
        ms = int(self.now().timestamp() * 1000)
        rand = self.rng.getrandbits(74)
        value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62)
        return UUID(int=value | (rand & 0x3FFF_FFFF_FFFF_FFFF))

    def text(self, count: int) -> list[str]:
        return self.rng.choices(self.pieces, k=count)

    def streams(self, concurrency: int) -> Iterator[DomainEvent]:
        """Every event of the log, ``concurrency`` conversations interleaved."""
        rng = self.rng
        slots = [self.slot() for _ in range(concurrency)]
        while slots:
            alive = []
            for slot in slots:
                for _ in range(rng.randint(1, 3)):
                    event = next(slot, None)
                    if event is None:
                        break
                    self.expected.events += 1
                    self.expected.topics[event.TOPIC] += 1
                    yield event
                else:
                    alive.append(slot)
            slots = alive

    def slot(self) -> Iterator[DomainEvent]:
        """One chat window: a conversation, then another, until the log is long enough."""
        while not self.closing:
            yield from self.conversation()

    def conversation(self) -> Iterator[DomainEvent]:
        rng = self.rng
        tenant, owner = rng.choice(self.users)
        model, reasoning, _ = rng.choices(MODELS, [m[2] for m in MODELS])[0]
        title = f"Notes {rng.randint(1, 9999)}" if rng.random() < GIVEN_TITLE else None
        chat = Chat(self.new_id(), tenant, owner, model, reasoning, title)
        self.expected.conversations += 1
        yield Conversation.Created(
            originator_id=chat.id,
            originator_version=1,
            timestamp=self.now(),
            tenant=tenant,
            owner=owner,
            model=model,
            title=title,
        )
        turns = rng.choices(TURNS_PER_CONVERSATION, TURNS_WEIGHTS)[0]
        for k in range(turns):
            if k and self.closing:
                break
            yield from self.turn(chat, first=k == 0)
            if rng.random() < RENAMED:
                chat.version += 1
                chat.title = f"Renamed {rng.randint(1, 9999)}"
                yield Conversation.Renamed(
                    originator_id=chat.id,
                    originator_version=chat.version,
                    timestamp=self.now(),
                    title=chat.title,
                )
        deleted = rng.random() < DELETED
        if deleted:
            chat.version += 1
            yield Conversation.Deleted(
                originator_id=chat.id, originator_version=chat.version, timestamp=self.now()
            )
        self.settle(chat, deleted)

    def settle(self, chat: Chat, deleted: bool) -> None:
        expected = self.expected
        if deleted:
            expected.deleted += 1
            return
        expected.messages += chat.messages
        for status, chars in chat.answers.values():
            expected.answers[status] += 1
            expected.answer_chars += chars
        if chat.title is None and not chat.titled:
            expected.untitled += 1

    def turn(self, chat: Chat, *, first: bool) -> Iterator[DomainEvent]:
        rng = self.rng
        mode: TurnMode = "message" if first else rng.choices(MODES, MODE_WEIGHTS)[0]
        turn_id = self.new_id()
        prefix = reasoning_prefix = ""
        user_message_id: UUID | None = None
        if mode == "message":
            parent_id, user_message_id, answer_id = chat.leaf, self.new_id(), self.new_id()
            chat.user_parent, chat.leaf_parent = chat.leaf, user_message_id
        elif mode == "edit":
            parent_id, user_message_id, answer_id = chat.user_parent, self.new_id(), self.new_id()
            chat.leaf_parent = user_message_id
        elif mode == "retry":
            parent_id, answer_id = chat.leaf_parent, self.new_id()
        else:  # continue: the current answer, extended in place
            assert chat.leaf is not None
            parent_id, answer_id = chat.leaf_parent, chat.leaf
            prefix, reasoning_prefix = chat.leaf_text, chat.leaf_reasoning
        content = " ".join(rng.choices(WORDS, k=rng.randint(5, 40))) if user_message_id else ""
        expected = self.expected
        expected.turns += 1
        expected.modes[mode] += 1
        chat.messages += NEW_MESSAGES[mode]
        version = 1
        yield Turn.Started(
            originator_id=turn_id,
            originator_version=version,
            timestamp=self.now(),
            conversation_id=chat.id,
            tenant=chat.tenant,
            user_id=chat.owner,
            node_id=chat.id,
            mode=mode,
            user_message_id=user_message_id,
            assistant_message_id=answer_id,
            parent_id=parent_id,
            model=chat.model,
            content=content,
            prefix=prefix,
            reasoning_prefix=reasoning_prefix,
        )
        draw = rng.random()
        outcome = (
            "failed" if draw < FAILED else "interrupted" if draw < FAILED + INTERRUPTED else ""
        )
        tokens = rng.randint(*TOKENS)
        if outcome:
            tokens = rng.randint(0, tokens)
        reasoning = self.text(rng.randint(*REASONING)) if chat.reasoning else []
        for piece in reasoning:
            version += 1
            yield Turn.ReasoningAppended(
                originator_id=turn_id, originator_version=version, timestamp=self.now(), text=piece
            )
        title_at = rng.randint(1, 8) if first else -1
        title = chat.title or " ".join(content.split()[:5]).capitalize()
        text = self.text(tokens)
        for i, piece in enumerate(text):
            if i == title_at:
                version += 1
                chat.titled = True
                yield Turn.Titled(
                    originator_id=turn_id,
                    originator_version=version,
                    timestamp=self.now(),
                    title=title,
                )
            version += 1
            yield Turn.TokensAppended(
                originator_id=turn_id, originator_version=version, timestamp=self.now(), text=piece
            )
        if first and not chat.titled and not outcome:
            version += 1
            chat.titled = True
            yield Turn.Titled(
                originator_id=turn_id, originator_version=version, timestamp=self.now(), title=title
            )
        answer = prefix + "".join(text)
        thought = reasoning_prefix + "".join(reasoning)
        prompt = rng.randint(30, 400) + len(content) // 4 + chat.messages * 60
        version += 1
        terminal: DomainEvent
        if outcome == "failed":
            # A provider error carries an estimated usage; an internal error none.
            provider = rng.random() < 2 / 3
            usage = TurnUsage(prompt_tokens=prompt, completion_tokens=tokens, estimated=True)
            terminal = Turn.Failed(
                originator_id=turn_id,
                originator_version=version,
                timestamp=self.now(),
                code="provider_error" if provider else "internal_error",
                message="The turn failed.",
                text=answer,
                reasoning=thought,
                usage=usage if provider else None,
            )
            status = "failed"
        else:
            usage = TurnUsage(
                prompt_tokens=prompt, completion_tokens=tokens, estimated=bool(outcome)
            )
            terminal = Turn.Finished(
                originator_id=turn_id,
                originator_version=version,
                timestamp=self.now(),
                status="interrupted" if outcome else "completed",
                text=answer,
                reasoning=thought,
                finish_reason="cancelled" if outcome else "stop",
                usage=usage,
            )
            status = "interrupted" if outcome else "complete"
        if not isinstance(terminal, Turn.Failed) or terminal.usage is not None:
            expected.prompt_tokens += usage.prompt_tokens
            expected.completion_tokens += usage.completion_tokens
        expected.outcomes[status] += 1
        yield terminal
        chat.answers[answer_id] = (status, len(answer))
        chat.leaf, chat.leaf_text, chat.leaf_reasoning = answer_id, answer, thought


def generate(app: TurnstreamApplication, args: argparse.Namespace) -> tuple[Expected, float]:
    """Write the log with COPY under the table lock; what it holds, and the seconds."""
    generator = LogGenerator(args.seed, args.events)
    store = app.store
    encode = app.encode_row
    t0 = time.perf_counter()
    with (
        common.Progress("generating the log (events)", args.events) as progress,
        app.connect() as conn,
        conn.cursor(row_factory=tuple_row) as cur,
    ):

        def flush(rows: list[Row]) -> None:
            with conn.transaction():
                store.copy_events(cur, rows, position=False)
            progress.update(min(generator.expected.events, args.events))

        rows: list[Row] = []
        for event in generator.streams(args.concurrency):
            rows.append(encode(event))
            if len(rows) >= COPY_CHUNK:
                flush(rows)
                rows = []
        if rows:
            flush(rows)
    seconds = time.perf_counter() - t0
    with psycopg.connect(app.database_url, autocommit=True) as conn:
        # What autovacuum does to a table in service: statistics, hint bits, visibility.
        conn.execute(SQL("VACUUM (ANALYZE) {}").format(store.events_table))
    common.try_checkpoint(app.database_url)
    return generator.expected, seconds


# Measuring.


def raw_read(app: TurnstreamApplication) -> tuple[float, int]:
    """Every column of every event in log order through a server-side cursor."""
    query = SQL(
        "SELECT originator_id, originator_version, topic, state, notification_id"
        " FROM {} ORDER BY notification_id"
    ).format(app.store.events_table)
    rows = 0
    with app.connect() as conn:
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor("bench_raw_read", row_factory=tuple_row) as cur:
            cur.itersize = ITERSIZE
            cur.execute(query)
            while batch := cur.fetchmany(ITERSIZE):
                rows += len(batch)
        seconds = time.perf_counter() - t0
    return seconds, rows


@dataclass
class Rebuilt:
    result: RebuildResult
    client_cpu_s: float


@dataclass
class Round:
    raw_read_s: float
    raw_rows: int
    rebuilt: dict[str, Rebuilt]

    @property
    def seconds(self) -> float:
        return sum(r.result.seconds for r in self.rebuilt.values())


def follow(progress: common.Progress) -> Callable[[int, int], None]:
    """A rebuild's progress callback (position reached, log head) driving the bar."""

    def report(position: int, head: int) -> None:
        progress.update(position)

    return report


def rebuild_all(app: TurnstreamApplication, head: int, *, show: bool = True) -> dict[str, Rebuilt]:
    rebuilt = {}
    for name in PROJECTIONS:
        cpu = time.process_time()
        if show:
            with common.Progress(f"rebuild {name} (log position)", head) as progress:
                result = rebuild(app, name, follow(progress))
        else:
            result = rebuild(app, name)
        rebuilt[name] = Rebuilt(result, time.process_time() - cpu)
        common.log(
            f"  {name}: {result.seconds:.2f} s, {result.rate:,.0f} events/s,"
            f" {result.applied:,} applied, generation {result.generation}"
        )
    return rebuilt


def one_round(app: TurnstreamApplication, head: int) -> Round:
    common.log("raw server-side cursor read ...")
    raw_s, raw_rows = raw_read(app)
    common.log(f"  {raw_rows:,} rows in {raw_s:.2f} s ({common.rate(raw_rows, raw_s):,.0f}/s)")
    return Round(raw_s, raw_rows, rebuild_all(app, head))


# Checking.


def check(app: TurnstreamApplication, expected: Expected, rebuilt: dict[str, Rebuilt]) -> list[str]:
    """Where the rebuilt views differ from what the generated log says they hold."""
    schema = Identifier(app.store.datastore.schema)

    def one(query: str, table: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        name = SQL("{}.{}").format(schema, Identifier(table))
        with app.connect() as conn:
            row = conn.execute(SQL(query).format(name), params).fetchone()
        assert row is not None
        return tuple(row)

    live = expected.conversations - expected.deleted
    got: dict[str, Any] = {}
    want: dict[str, Any] = {}
    (got["events"],) = one("SELECT count(*) FROM {}", app.store.events_table_name)
    want["events"] = expected.events
    row = one(
        "SELECT count(*), count(*) FILTER (WHERE deleted),"
        " count(*) FILTER (WHERE active_turn_id IS NOT NULL),"
        " count(*) FILTER (WHERE NOT deleted AND title IS NULL) FROM {}",
        "tree_conversations",
    )
    keys: tuple[str, ...] = ("tree conversations", "deleted", "tree running", "tree untitled")
    got |= dict(zip(keys, row, strict=True))
    want |= {
        "tree conversations": expected.conversations,
        "deleted": expected.deleted,
        "tree running": 0,
        "tree untitled": expected.untitled,
    }
    row = one(
        "SELECT count(*), coalesce(sum(char_length(content)) FILTER (WHERE role = 'assistant'), 0),"
        " count(*) FILTER (WHERE role = 'assistant' AND status = 'complete'),"
        " count(*) FILTER (WHERE role = 'assistant' AND status = 'interrupted'),"
        " count(*) FILTER (WHERE role = 'assistant' AND status = 'failed'),"
        " count(*) FILTER (WHERE status = 'streaming') FROM {}",
        "tree_messages",
    )
    keys = ("messages", "answer chars", "complete", "interrupted", "failed", "streaming")
    got |= dict(zip(keys, row, strict=True))
    want |= {
        "messages": expected.messages,
        "answer chars": expected.answer_chars,
        **{k: expected.answers[k] for k in ("complete", "interrupted", "failed")},
        "streaming": 0,
    }
    row = one(
        "SELECT count(*), coalesce(sum(message_count), 0),"
        " count(*) FILTER (WHERE active_turn_id IS NOT NULL),"
        " count(*) FILTER (WHERE title IS NULL) FROM {}",
        "conversation_list",
    )
    keys = ("listed", "listed messages", "listed running", "listed untitled")
    got |= dict(zip(keys, row, strict=True))
    want |= {
        "listed": live,
        "listed messages": expected.messages,
        "listed running": 0,
        "listed untitled": expected.untitled,
    }
    for period in ("day", "week"):
        row = one(
            "SELECT coalesce(sum(turns), 0), coalesce(sum(prompt_tokens), 0),"
            " coalesce(sum(completion_tokens), 0) FROM {} WHERE period = %s",
            "usage_counters",
            (period,),
        )
        keys = (f"{period} turns", f"{period} prompt tokens", f"{period} completion tokens")
        got |= dict(zip(keys, row, strict=True))
        want |= dict(
            zip(
                keys,
                (expected.turns, expected.prompt_tokens, expected.completion_tokens),
                strict=True,
            )
        )
    running = table_name("usage_running", rebuilt["usage"].result.generation)
    (got["usage running"],) = one("SELECT count(*) FROM {}", running)
    want["usage running"] = 0
    for name, item in rebuilt.items():
        projection = PROJECTIONS[name]
        got[f"{name} applied"] = item.result.applied
        want[f"{name} applied"] = sum(expected.topics[t] for t in projection.topics)
    return [f"{k}: view has {got[k]}, log says {want[k]}" for k in want if got[k] != want[k]]


# Reporting.


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def round_json(k: int, r: Round, events: int) -> dict[str, Any]:
    return {
        "bench": "rebuild",
        "round": k,
        "events": events,
        "seconds": r.seconds,
        "events_per_s": common.rate(events, r.seconds),
        "raw_read_seconds": r.raw_read_s,
        "raw_read_events_per_s": common.rate(r.raw_rows, r.raw_read_s),
        "ratio_vs_raw_read": common.rate(r.raw_read_s, r.seconds),
        "projections": {
            name: {
                "seconds": item.result.seconds,
                "applied": item.result.applied,
                "client_cpu_s": item.client_cpu_s,
            }
            for name, item in r.rebuilt.items()
        },
    }


def summary(
    args: argparse.Namespace,
    expected: Expected,
    generate_s: float,
    rounds: list[Round],
    facts: dict[str, str],
) -> dict[str, Any]:
    events = expected.events
    seconds = median([r.seconds for r in rounds])
    raw_s = median([r.raw_read_s for r in rounds])
    projections = {}
    for name in PROJECTIONS:
        s = median([r.rebuilt[name].result.seconds for r in rounds])
        projections[name] = {
            "seconds": s,
            "events_per_s": common.rate(events, s),
            "applied": rounds[-1].rebuilt[name].result.applied,
            "client_cpu_s": median([r.rebuilt[name].client_cpu_s for r in rounds]),
        }
    return {
        "bench": "rebuild",
        "events": events,
        "seconds": seconds,
        "events_per_s": common.rate(events, seconds),
        "raw_read_seconds": raw_s,
        "raw_read_events_per_s": common.rate(events, raw_s),
        "ratio_vs_raw_read": common.rate(raw_s, seconds),
        "projections": projections,
        "goal_s": GOAL_S,
        "met": seconds <= GOAL_S,
        "rounds": len(rounds),
        "generate_seconds": generate_s,
        "generate_events_per_s": common.rate(events, generate_s),
        "log": {
            "conversations": expected.conversations,
            "deleted": expected.deleted,
            "turns": expected.turns,
            "modes": dict(expected.modes),
            "topics": dict(expected.topics),
            "outcomes": dict(expected.outcomes),
            "messages": expected.messages,
            "concurrency": args.concurrency,
            "seed": args.seed,
        },
        "server": facts,
        "check": "ok",
    }


def print_summary(result: dict[str, Any], rounds: list[Round]) -> None:
    """The rounds and the medians as a table, on stderr (stdout is JSON lines)."""
    events = result["events"]
    headers = ["round", "raw read s", "raw rows/s", *PROJECTIONS, "rebuild s", "events/s", "ratio"]
    rows = [
        [
            str(k),
            common.fmt(r.raw_read_s, 2),
            common.fmt(common.rate(r.raw_rows, r.raw_read_s), 0),
            *(common.fmt(r.rebuilt[n].result.seconds, 2) for n in PROJECTIONS),
            common.fmt(r.seconds, 2),
            common.fmt(common.rate(events, r.seconds), 0),
            common.fmt(common.rate(r.raw_read_s, r.seconds), 3),
        ]
        for k, r in enumerate(rounds, 1)
    ]
    rows.append(
        [
            "median",
            common.fmt(result["raw_read_seconds"], 2),
            common.fmt(result["raw_read_events_per_s"], 0),
            *(common.fmt(result["projections"][n]["seconds"], 2) for n in PROJECTIONS),
            common.fmt(result["seconds"], 2),
            common.fmt(result["events_per_s"], 0),
            common.fmt(result["ratio_vs_raw_read"], 3),
        ]
    )
    with contextlib.redirect_stdout(sys.stderr):
        common.print_table(headers, rows, title=f"rebuild of {events:,} events (seconds)")
        verdict = "met" if result["met"] else "not met"
        print(f"goal: all projections in <= {GOAL_S:g} s: {verdict}", flush=True)


def profile(app: TurnstreamApplication, head: int, path: str) -> None:
    common.log("profiling one more rebuild of every projection ...")
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        rebuild_all(app, head, show=False)
    finally:
        profiler.disable()
    profiler.dump_stats(path)
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(30)
        common.log(f"profile by {order} (stats in {path}):\n{out.getvalue()}")


# The run.


class CheckFailed(Exception):
    def __init__(self, mismatches: list[str]) -> None:
        super().__init__("; ".join(mismatches))
        self.mismatches = mismatches


def run(url: str, args: argparse.Namespace) -> tuple[Expected, float, list[Round]]:
    with common.fresh_schema(url, keep=args.keep_schema) as schema:
        app = build_application(Settings.from_env({}, database_schema=schema), url)
        try:
            ensure_projections(app)
            expected, generate_s = generate(app, args)
            common.log(
                f"generated {expected.events:,} events in {generate_s:.1f} s:"
                f" {expected.conversations:,} conversations ({expected.deleted} deleted),"
                f" {expected.turns:,} turns {dict(expected.modes)}"
            )
            common.log("warming up: one raw read, not counted ...")
            raw_read(app)
            rounds: list[Round] = []
            for k in range(1, args.rounds + 1):
                common.log(f"round {k} of {args.rounds}")
                r = one_round(app, expected.events)
                mismatches = check(app, expected, r.rebuilt)
                if mismatches:
                    raise CheckFailed(mismatches)
                if r.raw_rows != expected.events:
                    msg = f"the raw read saw {r.raw_rows} rows of {expected.events}"
                    raise CheckFailed([msg])
                common.log("  views check: ok")
                rounds.append(r)
                line = common.clean_json(round_json(k, r, expected.events))
                print(json.dumps(line, separators=(",", ":")), flush=True)
            if args.profile:
                profile(app, expected.events, args.profile)
            return expected, generate_s, rounds
        finally:
            app.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.exit_on_sigterm()
    with common.database(args.database_url, args.pg_data_dir) as url:
        common.log(f"database {common.redact(url)}")
        facts = common.server_facts(url)
        try:
            expected, generate_s, rounds = run(url, args)
        except CheckFailed as exc:
            for mismatch in exc.mismatches:
                common.log(f"CHECK FAILED: {mismatch}")
            common.emit_json({"bench": "rebuild", "check": "failed", "mismatches": exc.mismatches})
            return 1
    result = summary(args, expected, generate_s, rounds, facts)
    print_summary(result, rounds)
    common.emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
