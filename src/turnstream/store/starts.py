"""Turn starts in group commits: one transaction for all the starts that arrive together.

Each start is one statement under the event table's lock (see ``admission``). Recorded
one by one, a burst of starts queues on that lock and pays a commit (an fsync, a
notification, a wake-up of the relay and the projections) each, and a request thread
per start waits on PostgreSQL and then on the GIL. Here one thread records whatever
starts have arrived since its last commit in one transaction, in arrival order: each
statement sees the starts before it, so the limits hold exactly as they do one by one.
A conflict (a second turn for a conversation, a repeated turn id) rolls the batch back;
its starts are then recorded one by one, so only the one that conflicts fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError

from turnstream.domain.errors import ServiceUnavailable
from turnstream.store.admission import Admitted
from turnstream.store.application import OwnConnection
from turnstream.store.recorder import Start, TurnstreamRecorder

log = logging.getLogger(__name__)

MAX_BATCH = 256
"""Starts in one transaction at most (a larger burst takes several)."""


class StartBatcher:
    """Records turn starts in group commits on its own thread and connection."""

    def __init__(
        self,
        recorder: TurnstreamRecorder,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.recorder = recorder
        self.max_batch = max_batch
        self.batches = 0
        self._cond = threading.Condition()
        self._pending: list[tuple[Start, Future[Admitted]]] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="turnstream-starts", daemon=True)
        self._conn = OwnConnection(connect)

    def submit(self, start: Start) -> Future[Admitted]:
        """Queue a start; its future holds what the store answered (or the error)."""
        future: Future[Admitted] = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(ServiceUnavailable("This node is stopping; try again."))
                return future
            self._pending.append((start, future))
            if len(self._pending) == 1:
                self._cond.notify()
        return future

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Record what is queued, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._conn.reset()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            self._record(batch)

    def _record(self, batch: list[tuple[Start, Future[Admitted]]]) -> None:
        starts = [start for start, _ in batch]
        try:
            try:
                results = self.recorder.start_turns(self._conn.get(), starts)
            except psycopg.OperationalError:
                # Often a connection that died while idle (PostgreSQL restarted): on a
                # new one, the batch again, unless it was committed before the line
                # dropped.
                self._conn.reset()
                results = self._again(starts)
        except IntegrityError:
            self._record_each(batch)
            return
        except BaseException as exc:
            self._conn.reset()
            for _, future in batch:
                future.set_exception(exc)
            return
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def _again(self, starts: list[Start]) -> list[Admitted]:
        conn = self._conn.get()
        ids = [UUID(str(event.originator_id)) for event, *_ in starts]
        stored = self.recorder.started_positions(conn, ids)
        if not stored:
            return self.recorder.start_turns(conn, starts)
        if len(stored) < len(starts):  # pragma: no cover - one transaction: all or none
            raise IntegrityError("part of a batch of starts is stored")
        return [Admitted(stored[i], 0, 0, 0, 0, 0, 0) for i in ids]

    def _record_each(self, batch: list[tuple[Start, Future[Admitted]]]) -> None:
        """One start of the batch conflicts: each alone, so the others still start."""
        for start, future in batch:
            try:
                future.set_result(self.recorder.start_turn(self._conn.get(), *start))
            except BaseException as exc:
                if not isinstance(exc, IntegrityError):
                    self._conn.reset()
                future.set_exception(exc)
