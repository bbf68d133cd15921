"""Admission: a turn's start and its limits, counted in one statement.

The start statement reads every figure the limits need (rate cells, running turns, a
guest's total, the quotas' counted and pending tokens) and inserts the turn's first
event and its index row only if they allow. It runs after the event table's lock, which
orders every start, so each start sees every turn started before it: no concurrency
gets past a limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from psycopg.sql import SQL, Composable, Literal

from turnstream.store.limits import cell_params, take_statement


@dataclass(frozen=True, kw_only=True)
class Admission:
    """What a turn may start under: the limits of its user (each 0 = off)."""

    tenant: str
    user_id: str
    reserve: int = 0
    """The most tokens (in and out) this turn may use: held against the quotas until
    the usage view counts what it really used."""
    max_running: int = 0
    """Turns the user may have running at once."""
    max_turns: int = 0
    """Turns the user may start in all (guests)."""
    quota_day: int = 0
    quota_week: int = 0
    day: date | None = None
    week: date | None = None
    per_minute: int = 0
    """Starts per minute for each of ``rate_keys`` (cells of the rate limits' table,
    taken by the start's own statement: the table lock already orders starts, so a hot
    key costs no queue of its own)."""
    rate_keys: tuple[str, ...] = ()

    @property
    def user_key(self) -> str:
        return user_key(self.tenant, self.user_id)


def user_key(tenant: str, user_id: str) -> str:
    """A user's key in the turn index (a tenant id never holds a '/')."""
    return f"{tenant}/{user_id}"


ALLOWED = (
    "(%(per_minute)s = 0 OR rate_taken = %(rate_count)s)"
    " AND (%(max_running)s = 0 OR running < %(max_running)s)"
    " AND (%(max_turns)s = 0 OR turns < %(max_turns)s)"
    " AND (%(quota_day)s = 0 OR used_day + pending < %(quota_day)s)"
    " AND (%(quota_week)s = 0 OR used_week + pending < %(quota_week)s)"
)
"""When a turn may start: a quota admits a turn while the tokens counted plus those the
turns in flight may still use are below it, so it is never exceeded by more than the
last turn's worth."""


class Admitted(NamedTuple):
    """The start's answer: its position (None if a limit refused it) and the figures."""

    position: int | None
    rate_taken: int
    """How many of the rate keys gave a cell."""
    running: int
    turns: int
    used_day: int
    used_week: int
    pending: int


class Shape(NamedTuple):
    """Which limits a start checks: its statement's text depends on these alone, so the
    store renders it once per shape (see :func:`start_sql`)."""

    rate: bool
    running: bool
    turns: bool
    day: bool
    week: bool


def shape_of(a: Admission) -> Shape:
    return Shape(
        bool(a.per_minute),
        bool(a.max_running),
        bool(a.max_turns),
        bool(a.quota_day),
        bool(a.quota_week),
    )


def start_sql(recorder: Any, shape: Shape) -> Composable:
    """The lock, then :func:`start_statement`: a start on its own, as one simple query."""
    lock: Composable = recorder.lock_sql
    return lock + SQL("; ") + start_statement(recorder, shape)


def start_statement(recorder: Any, shape: Shape) -> Composable:
    """One statement: the figures the limits need, and the inserts that run only if
    they allow (a limit that is off costs no query). It must run under the table lock."""
    zero: Composable = SQL("0")
    mine = SQL("FROM {ix} WHERE user_key = %(user_key)s").format(ix=recorder.index_table)
    running = SQL("(SELECT count(*) ") + mine + SQL(" AND NOT ended)")
    turns = SQL("(SELECT count(*) ") + mine + SQL(")")
    if shape.day or shape.week:
        used = SQL(
            "(SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM {c}"
            " WHERE tenant = %(tenant)s AND user_id = %(user_id)s AND period = {p}"
            " AND period_start = {start})"
        )
        used_day: Composable = used.format(
            c=recorder.usage_counters, p=Literal("day"), start=SQL("%(day)s")
        )
        used_week: Composable = used.format(
            c=recorder.usage_counters, p=Literal("week"), start=SQL("%(week)s")
        )
        # Turns whose tokens the counters do not hold yet: running, or ended after
        # the position the usage view has reached. Each counts what it may use.
        # (Two index scans: the running turns, and those ended after the view.)
        reserved = SQL("(SELECT coalesce(sum(reserved_tokens), 0) ") + mine
        pending: Composable = (
            reserved
            + SQL(" AND NOT ended) + ")
            + reserved
            + SQL(
                " AND ended AND ended_position >"
                " (SELECT coalesce(max(notification_id), 0) FROM {t}))"
            ).format(t=recorder.usage_tracking)
        )
    else:
        used_day = used_week = pending = zero
    rate_cte: Composable = SQL("")
    rate_taken = zero
    if shape.rate:
        rate_cte = SQL("rate AS ({}), ").format(take_statement(recorder.rate_table))
        rate_taken = SQL("(SELECT count(*) FROM rate)")
    figures = SQL(
        "SELECT {rate_taken} AS rate_taken, {running} AS running, {turns} AS turns,"
        " {used_day} AS used_day, {used_week} AS used_week, {pending} AS pending"
    ).format(
        rate_taken=rate_taken,
        running=running if shape.running else zero,
        turns=turns if shape.turns else zero,
        used_day=used_day if shape.day else zero,
        used_week=used_week if shape.week else zero,
        pending=pending,
    )
    return SQL(
        "WITH {rate_cte}f AS ({figures}),"
        " e AS (INSERT INTO {ev} (originator_id, originator_version, topic, state)"
        " SELECT %(id)s, %(version)s, %(topic)s, %(state)s FROM f WHERE {allowed}"
        " RETURNING notification_id),"
        " i AS (INSERT INTO {ix} (turn_id, conversation_id, node_id, started_position,"
        " user_key, reserved_tokens)"
        " SELECT %(id)s, %(conversation)s, %(node)s, notification_id, %(user_key)s,"
        " %(reserve)s FROM e RETURNING started_position)"
        " SELECT (SELECT started_position FROM i), f.* FROM f"
    ).format(
        rate_cte=rate_cte,
        figures=figures,
        ev=recorder.events_table,
        ix=recorder.index_table,
        allowed=SQL(ALLOWED),
    )


def start_params(a: Admission) -> dict[str, Any]:
    """The values of :func:`start_sql`'s parameters for this admission."""
    params = cell_params(a.rate_keys, a.per_minute) if a.per_minute else {}
    return params | {
        "per_minute": a.per_minute,
        "rate_count": len(set(a.rate_keys)),
        "user_key": a.user_key,
        "reserve": a.reserve,
        "tenant": a.tenant,
        "user_id": a.user_id,
        "day": a.day,
        "week": a.week,
        "max_running": a.max_running,
        "max_turns": a.max_turns,
        "quota_day": a.quota_day,
        "quota_week": a.quota_week,
    }


def start_values(
    event: StoredEvent, conversation_id: UUID, node_id: UUID, admission: Admission
) -> dict[str, Any]:
    """Every parameter of the start statements for this start."""
    return start_params(admission) | {
        "id": event.originator_id,
        "version": event.originator_version,
        "topic": event.topic,
        "state": event.state,
        "conversation": conversation_id,
        "node": node_id,
    }


def admitted(row: Sequence[Any]) -> Admitted:
    return Admitted(row[0], *(int(v) for v in row[1:]))
