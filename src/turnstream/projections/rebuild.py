"""Rebuilding a projection from the first event, while the service keeps serving.

:func:`rebuild` fills the projection's next generation from the log, then, in the
transaction of its last page, makes it the active one (the registry row and the readers'
SQL views); the active worker notices at its next page and follows the new generation
from its position. The old generation is dropped afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from turnstream.projections.base import ViewStore, lock_key
from turnstream.projections.registry import PROJECTIONS, active_generation, log_head
from turnstream.projections.runner import PAGE, Batch
from turnstream.store.application import TurnstreamApplication


@dataclass
class RebuildResult:
    name: str
    generation: int
    events: int
    applied: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int], None]
"""Called with (position reached, log head) after each page."""


def rebuild(
    app: TurnstreamApplication,
    name: str,
    progress: Progress | None = None,
    *,
    page: int = PAGE,
) -> RebuildResult:
    """Build ``name``'s next generation from the first event and make it the active one."""
    projection = PROJECTIONS[name]
    started = time.perf_counter()
    with app.connect() as conn:
        key = lock_key(app.store.datastore.schema, f"{name}/rebuild")
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not (row and row[0]):
            msg = f"projection {name!r} is being rebuilt by another process"
            raise RuntimeError(msg)
        old = active_generation(conn, app, name)
        batch = Batch(app, projection, old + 1, page=page)
        batch.view.drop(conn)  # what an interrupted rebuild left
        batch.view.create_table()
        position = applied = 0
        head = log_head(conn, app)
        first_head = head
        while True:
            head = log_head(conn, app)
            events = batch.read(position, head)
            # A full page that ends at the head is the last one too: an empty page after
            # it would record the same position again, which the tracking refuses.
            final = len(events) < page or events[-1][1] == head
            last = head if final else events[-1][1]
            batch.apply(conn, events, last, rebuilding=True, activate=final)
            applied += len(events)
            position = last
            if progress is not None:
                progress(position, head)
            if final:
                break
        ViewStore(app.store.datastore, projection=projection, generation=old).drop(conn)
    seconds = time.perf_counter() - started
    return RebuildResult(name, old + 1, max(position, first_head), applied, seconds)
