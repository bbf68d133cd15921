"""The group-commit writer: one per process, one transaction per batch, never idle-open.

Runners hand it drafts (``turnstream.domain.turn.Draft``) from the event loop. A single
thread takes whatever has accumulated since its last commit, from all running turns,
merges consecutive text (and reasoning) drafts of one turn into one event, numbers
each turn's events, and writes them with one COPY under the event table's lock. Under
light load a batch is one token and commits within a round trip or two; under heavy
load batches grow and the lock, round trips and fsync are shared. Only after the commit
does it hand the events on (``on_commit``), so a client never sees an uncommitted frame.

Every commit costs more than its rows: an fsync, a notification that wakes the relay
and the projections, their reads and publishes. So while busy the writer starts
commits at least ``window_s`` apart and lets the drafts of that window share one; when
idle (the last commit began longer ago) a draft is committed at once. A draft thus waits
at most one window plus one commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from turnstream.domain.progress import DeltaDraft, Draft, merge_deltas
from turnstream.domain.turn import Turn, TurnEvent
from turnstream.store.application import OwnConnection, TurnstreamApplication

log = logging.getLogger(__name__)

DELTA_EVENTS = (Turn.TokensAppended, Turn.ReasoningAppended, Turn.ToolArgumentsAppended)
"""Text deltas: never read by the projections (a commit of only these says so)."""


@dataclass(slots=True)
class WriterStats:
    batches: int = 0
    events: int = 0
    drafts: int = 0
    last_batch_size: int = 0
    last_commit_s: float = 0.0
    failures: int = 0


CommitCallback = Callable[[Sequence[TurnEvent], int], None]
LostCallback = Callable[[UUID], None]


class GroupWriter:
    """Writes the events of running turns in group commits on its own thread."""

    def __init__(
        self,
        app: TurnstreamApplication,
        on_commit: CommitCallback,
        on_lost: LostCallback,
        *,
        max_batch: int = 5000,
        window_s: float = 0.0,
    ) -> None:
        self.app = app
        self.on_commit = on_commit
        self.on_lost = on_lost
        self.max_batch = max_batch
        self.window_s = window_s
        self._last_start = float("-inf")
        """When the last commit began (monotonic)."""
        self.stats = WriterStats()
        self._cond = threading.Condition()
        self._pending: list[Draft] = []
        self._versions: dict[UUID, int] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="turnstream-writer", daemon=True)
        self._conn = OwnConnection(app.connect)

    # Called from the event loop.

    def open_turn(self, turn_id: UUID, version: int) -> None:
        """A turn whose events up to ``version`` are stored; its next event is version+1."""
        with self._cond:
            self._versions[turn_id] = version

    def submit(self, draft: Draft) -> None:
        with self._cond:
            if draft.turn_id not in self._versions:
                return  # the turn was lost or has ended; nothing more may be written
            self._pending.append(draft)
            if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
                self._cond.notify()  # the writer waits for a first draft, or a full batch

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is pending, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._conn.reset()

    # The writer thread.

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending and self._stopping:
                    return
                self._gather()
                drafts = self._take()
            self._last_start = time.monotonic()
            self._write(drafts)

    def _gather(self) -> None:
        """Busy (the last commit began under a window ago): let the window's drafts come."""
        until = self._last_start + self.window_s
        while not self._stopping and len(self._pending) < self.max_batch:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _take(self) -> list[Draft]:
        """The oldest drafts, at most max_batch of them; the rest wait for the next batch."""
        drafts = self._pending[: self.max_batch]
        del self._pending[: self.max_batch]
        return drafts

    def _build(self, drafts: list[Draft]) -> tuple[list[TurnEvent], list[UUID], list[TurnEvent]]:
        """The drafts as numbered events (consecutive deltas of a kind of a turn merged
        into one), the turns they end, and those they pause (no runner holds them next)."""
        merged: list[Draft] = []
        more: dict[int, list[str]] = {}
        """Index in ``merged`` of a delta → the texts of the deltas merged into it."""
        last_of_turn: dict[UUID, int] = {}
        for d in drafts:
            at = last_of_turn.get(d.turn_id)
            if at is not None and isinstance(d, DeltaDraft):
                last = merged[at]
                if isinstance(last, DeltaDraft) and last.joins(d):
                    more.setdefault(at, []).append(d.text)
                    continue
            last_of_turn[d.turn_id] = len(merged)
            merged.append(d)
        for at, texts in more.items():
            first = merged[at]
            assert isinstance(first, DeltaDraft)
            merged[at] = merge_deltas(first, texts)
        events: list[TurnEvent] = []
        ended: list[UUID] = []
        paused: list[TurnEvent] = []
        with self._cond:
            for d in merged:
                version = self._versions.get(d.turn_id)
                if version is None:
                    continue
                version += 1
                self._versions[d.turn_id] = version
                event = d.event(version)
                events.append(event)
                if event.TERMINAL:
                    ended.append(d.turn_id)
                elif event.PAUSES:
                    paused.append(event)
                if event.TERMINAL or event.PAUSES:
                    del self._versions[d.turn_id]
        self.stats.drafts += len(drafts)
        return events, ended, paused

    def _write(self, drafts: list[Draft]) -> None:
        events, ended, paused = self._build(drafts)
        if not events:
            return
        attempt = 0
        while True:
            try:
                position = self._commit(events, ended, paused)
            except IntegrityError:
                # Another writer ended one of these turns (it judged the runner dead):
                # write turn by turn, and give up only the turns that conflict.
                self._write_each(events)
                return
            except psycopg.OperationalError as exc:
                self._conn.reset()
                attempt += 1
                self.stats.failures += 1
                if self._already_stored(events):
                    position = 0
                else:
                    delay = min(5.0, 0.1 * 2**attempt)
                    log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
                    time.sleep(delay)
                    continue
            self.on_commit(events, position)
            return

    def _commit(
        self, events: Sequence[TurnEvent], ended: Sequence[UUID], paused: Sequence[TurnEvent] = ()
    ) -> int:
        conn = self._conn.get()
        stored = [self.app.encode_row(e) for e in events]
        t0 = time.perf_counter()
        deltas = all(type(e) in DELTA_EVENTS for e in events)
        pauses = [(e.originator_id, e.until) for e in paused if isinstance(e, Turn.Waiting)]
        position = self.app.store.append_batch(
            conn, stored, ended, paused=pauses, deltas_only=deltas
        )
        self.stats.last_commit_s = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.events += len(events)
        self.stats.last_batch_size = len(events)
        return position

    def _write_each(self, events: list[TurnEvent]) -> None:
        by_turn: dict[UUID, list[TurnEvent]] = {}
        for e in events:
            by_turn.setdefault(e.originator_id, []).append(e)
        for turn_id, turn_events in by_turn.items():
            ended = [turn_id] if turn_events[-1].TERMINAL else []
            paused = [turn_events[-1]] if turn_events[-1].PAUSES else []
            try:
                position = self._commit(turn_events, ended, paused)
            except IntegrityError:
                log.warning("turn %s was ended by another node; dropping its output", turn_id)
                with self._cond:
                    self._versions.pop(turn_id, None)
                    self._pending = [d for d in self._pending if d.turn_id != turn_id]
                self.on_lost(turn_id)
                continue
            self.on_commit(turn_events, position)

    def _already_stored(self, events: Sequence[TurnEvent]) -> bool:
        """After a lost connection: did the last commit land before the line dropped?"""
        last = events[-1]
        try:
            stored = self.app.store.select_events(
                last.originator_id, gt=last.originator_version - 1, limit=1
            )
        except (OperationalError, InterfaceError):  # still down; the caller retries
            return False
        return bool(stored) and stored[0].state == self.app.encode_row(last)[3]
