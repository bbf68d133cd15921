"""Recovery: no turn stays "running" after its runner died.

Every few seconds (``runner_check_interval_s``) each node checks its own lease and looks
for running turns of nodes whose lease is free: their process died. Each such turn is
ended with ``runner_lost`` and the text it streamed (``Turn.lose_runner``). A runner
that turns out to be alive is fenced by the store: its next write conflicts with that
end, and it drops the turn. A turn that waits for tool results or approvals has no
runner and is left alone, until it has waited past its time: then it ends with
``tool_timeout``. The same round forgets rate-limit cells of the past.
"""

from __future__ import annotations

import asyncio
import logging
import time

from turnstream.domain.errors import ServiceUnavailable
from turnstream.domain.turn import Turn, TurnEvent
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.store.lease import NodeLease, OrphanSweeper
from turnstream.store.recorder import STORE_OUTAGE
from turnstream.usecases.files import Files
from turnstream.usecases.limits import Limits
from turnstream.usecases.tooluse import end_expired_waits

log = logging.getLogger(__name__)


def _lose_runner(turn: Turn) -> TurnEvent:
    return turn.lose_runner()


CHUNK_SWEEP_EVERY_S = 600.0
"""How often the chunks of uploads whose process died are looked for (a scan of the
chunks table: rare, as such uploads are)."""


class Recovery:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        lease: NodeLease,
        sweeper: OrphanSweeper,
        limits: Limits,
        files: Files,
        every_s: float,
    ) -> None:
        self.files = files
        self._swept_at = 0.0
        self.app = app
        self.gateway = gateway
        self.lease = lease
        self.sweeper = sweeper
        self.limits = limits
        self.every_s = every_s

    async def run_forever(self) -> None:
        while True:
            try:
                await self.check()
            except (ServiceUnavailable, OSError, *STORE_OUTAGE) as exc:  # type: ignore[misc]
                if not self.gateway.guard.down:  # else the guard has said so, and watches
                    log.warning("orphan check failed: %s", exc)
            await asyncio.sleep(self.every_s)

    async def check(self) -> int:
        """One round: the lease kept, orphaned turns ended (how many), old cells gone."""
        run = self.gateway.run
        await run(self.lease.keep)
        written = await run(self.sweeper.sweep, _lose_runner)
        for event in written:
            log.warning("turn %s: its runner's node is gone; ended", event.originator_id)
        timed_out = await run(end_expired_waits, self.app)
        await run(self.limits.forget_past)
        if time.monotonic() - self._swept_at >= CHUNK_SWEEP_EVERY_S:
            self._swept_at = time.monotonic()
            if dropped := await self.files.sweep():
                log.info("dropped %d chunks of uploads that never finished", dropped)
        return len(written) + len(timed_out)
