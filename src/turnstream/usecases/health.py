"""How this node is: ready, its store, NATS and projections, and the store's figures
for ``/metrics`` (positions, lag, repaired events), which other processes write."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from turnstream.bus.nats import NatsLink
from turnstream.bus.relay import checkpointed_position, relay_part
from turnstream.projections.base import projection_part
from turnstream.projections.registry import PROJECTIONS
from turnstream.projections.status import ProjectionStatus, status, workers_lead
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway

PROBE_TIMEOUT_S = 3.0


@dataclass
class StoreFigures:
    relayed: int
    """The relay's last checkpoint (read before the projections: never past their head)."""
    projections: list[ProjectionStatus]
    repaired: dict[str, int]
    """Repaired events by part: ``relay`` and each projection's name."""


class Health:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        link: NatsLink | None,
        stream: str,
        projections: bool,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.link = link
        self.stream = stream
        self.runs_projections = projections
        """Whether this node runs projection workers (then readiness waits for them)."""
        self.started = False

    async def checks(self) -> dict[str, bool]:
        """What is ready: ``postgres``, ``nats`` and (on a node that runs them) the
        ``projections`` (a worker leads each, so a read after a write can catch up)."""
        ready = self.started
        checks = {
            "postgres": ready and await self._probe(self.app.ping),
            "nats": ready and self.link is not None and await self.link.ping(),
        }
        if self.runs_projections:
            checks["projections"] = ready and await self._probe(workers_lead, self.app)
        return checks

    async def figures(self) -> StoreFigures:
        run = self.gateway.run
        relayed = await run(checkpointed_position, self.app, self.stream)
        projections = await run(status, self.app)
        repaired = await run(self._repaired)
        return StoreFigures(relayed, projections, repaired)

    def _repaired(self) -> dict[str, int]:
        with self.app.store.datastore.get_connection() as conn:
            counts = self.app.store.repair_counts(conn)
        parts = {"relay": relay_part(self.stream)}
        parts |= {name: projection_part(name) for name in PROJECTIONS}
        return {label: counts.get(part, 0) for label, part in parts.items()}

    async def _probe(self, fn: object, *args: object) -> bool:
        try:
            return bool(await asyncio.wait_for(self.gateway.run(fn, *args), PROBE_TIMEOUT_S))  # type: ignore[arg-type]
        except Exception:  # any failure means "not ready"; the probe says no more
            return False
