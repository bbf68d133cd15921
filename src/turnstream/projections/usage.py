"""Usage counters: turns and tokens per tenant, user and model, per UTC day and ISO week;
and the bytes each user stores.

A turn counts in the day and the week (starting Monday, UTC) in which it started; its
tokens are added when it ends, from the usage its terminal event carries. Totals per
tenant or per model are sums over these rows.

Stored bytes: ``usage_files`` holds each user's files that are not deleted, with their
content's SHA-256. The tenant's store keeps the same bytes once, so a user's stored
bytes are the sum over the *distinct* SHA-256 of their files (:data:`STORED`): the same
bytes uploaded twice count once, and deleting one of two such files keeps them counted.
A row per file, not a running sum, so that dedup and deletion stay exact whatever the
order of uploads and deletions.
"""

from __future__ import annotations

from typing import ClassVar

from turnstream.domain.events import DomainEvent
from turnstream.domain.files import File
from turnstream.domain.periods import PERIODS, period_starts
from turnstream.domain.turn import Turn
from turnstream.projections.base import BatchProjection, Op


class UsageCounters(BatchProjection):
    name = "usage"
    topics = (
        Turn.Started.TOPIC,
        Turn.Finished.TOPIC,
        Turn.Failed.TOPIC,
        File.Uploaded.TOPIC,
        File.Deleted.TOPIC,
    )
    tables: ClassVar[dict[str, str]] = {
        "usage_counters": (
            "tenant text NOT NULL, user_id text NOT NULL, model text NOT NULL,"
            " period text NOT NULL, period_start date NOT NULL,"
            " turns bigint NOT NULL DEFAULT 0, prompt_tokens bigint NOT NULL DEFAULT 0,"
            " completion_tokens bigint NOT NULL DEFAULT 0,"
            " PRIMARY KEY (tenant, user_id, period, period_start, model)"
        ),
        # Turns still running: where their tokens will be counted.
        "usage_running": (
            "turn_id uuid PRIMARY KEY, tenant text NOT NULL, user_id text NOT NULL,"
            " model text NOT NULL, day date NOT NULL, week date NOT NULL"
        ),
        "usage_files": (
            "file_id uuid PRIMARY KEY, tenant text NOT NULL, user_id text NOT NULL,"
            " sha256 text NOT NULL, bytes bigint NOT NULL"
        ),
    }
    indexes = (("usage_files", "tenant, user_id, sha256"),)
    reads = ("usage_counters", "usage_files")

    def changes(self, event: DomainEvent, position: int) -> list[Op]:
        if isinstance(event, File.Uploaded):
            return [
                (
                    self.q(
                        "INSERT INTO {usage_files} (file_id, tenant, user_id, sha256, bytes) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (file_id) DO NOTHING"
                    ),
                    (event.originator_id, event.tenant, event.owner, event.sha256, event.bytes),
                )
            ]
        if isinstance(event, File.Deleted):
            return [
                (
                    self.q("DELETE FROM {usage_files} WHERE file_id = %s"),
                    (event.originator_id,),
                )
            ]
        if isinstance(event, Turn.Started):
            day, week = period_starts(event.timestamp)
            ops: list[Op] = [
                (
                    self.q(
                        "INSERT INTO {usage_running} (turn_id, tenant, user_id, model, day, week) "
                        "VALUES (%s, %s, %s, %s, %s, %s)"
                    ),
                    (event.originator_id, event.tenant, event.user_id, event.model, day, week),
                )
            ]
            for period, start in zip(PERIODS, (day, week), strict=True):
                ops.append(
                    (
                        self.q(
                            "INSERT INTO {usage_counters} (tenant, user_id, model, period, "
                            "period_start, turns) VALUES (%s, %s, %s, %s, %s, 1) ON CONFLICT "
                            "(tenant, user_id, period, period_start, model) DO UPDATE SET turns = "
                            "{usage_counters}.turns + 1"
                        ),
                        (event.tenant, event.user_id, event.model, period, start),
                    )
                )
            return ops
        if isinstance(event, Turn.Finished | Turn.Failed):
            usage = event.usage
            if usage is None or not (usage.prompt_tokens or usage.completion_tokens):
                return [
                    (
                        self.q("DELETE FROM {usage_running} WHERE turn_id = %s"),
                        (event.originator_id,),
                    )
                ]
            add = (
                "INSERT INTO {usage_counters} (tenant, user_id, model, period, period_start,"
                " prompt_tokens, completion_tokens)"
                " SELECT tenant, user_id, model, %s, PERIOD, %s, %s FROM {usage_running}"
                " WHERE turn_id = %s ON CONFLICT (tenant, user_id, period, period_start, model)"
                " DO UPDATE SET"
                " prompt_tokens = {usage_counters}.prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = {usage_counters}.completion_tokens"
                " + excluded.completion_tokens"
            )
            ops = [
                (
                    self.q(add.replace("PERIOD", period)),
                    (period, usage.prompt_tokens, usage.completion_tokens, event.originator_id),
                )
                for period in PERIODS
            ]
            ops.append(
                (self.q("DELETE FROM {usage_running} WHERE turn_id = %s"), (event.originator_id,))
            )
            return ops
        return []


STORED = (
    "SELECT count(*) AS files, coalesce(sum(bytes) FILTER (WHERE n = 1), 0) AS bytes"
    " FROM (SELECT bytes, row_number() OVER (PARTITION BY sha256) AS n FROM {usage_files}"
    " WHERE tenant = %s AND user_id = %s) f"
)
"""A user's files and stored bytes (each content once), over the readers' view."""
