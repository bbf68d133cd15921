"""A node's moving parts, started and stopped in order: threads, tasks, child processes.

Built by :func:`turnstream.bootstrap.bootstrap` with everything it runs; the HTTP app's
lifespan calls :meth:`Runtime.start` and :meth:`Runtime.stop`.

Start: the node's lease, the projections' and limits' tables, the projections'
positions, the projection workers (a supervised child, or threads), the group writer,
recovery, the MCP tool servers, NATS, the control listener, the relay (a supervised
child, or a task).
Stop: running turns may finish for the grace period and the rest are interrupted,
the writer flushes, the relay publishes what was stored, then everything else stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turnstream.bootstrap.children import SupervisedChild
from turnstream.bus.nats import NatsLink
from turnstream.bus.relay import Relay
from turnstream.projections.reader import Positions
from turnstream.projections.registry import PROJECTIONS, ensure_projections
from turnstream.projections.runner import ProjectionWorker
from turnstream.providers import Providers
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.store.lease import NodeLease
from turnstream.store.starts import StartBatcher
from turnstream.store.writer import GroupWriter
from turnstream.tools.mcp import McpTools
from turnstream.usecases.commits import CommitFeed
from turnstream.usecases.control import TurnControl
from turnstream.usecases.health import Health
from turnstream.usecases.limits import Limits
from turnstream.usecases.recovery import Recovery
from turnstream.usecases.registry import RunningTurns


@dataclass
class Runtime:
    settings: Settings
    app: TurnstreamApplication
    gateway: StoreGateway
    lease: NodeLease
    limits: Limits
    positions: Positions
    writer: GroupWriter
    starts: StartBatcher
    commits: CommitFeed
    registry: RunningTurns
    recovery: Recovery
    control: TurnControl
    health: Health
    providers: Providers
    server_tools: McpTools
    link: NatsLink | None
    child_env: Callable[[], dict[str, str]]
    """The environment of a supervised child: these settings and the resolved URLs."""
    relay_and_projections: bool = True
    """Whether this process runs the relay and the projection workers (a worker of
    ``serve --workers`` does not: its parent runs them once for all the workers)."""
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _children: list[SupervisedChild] = field(default_factory=list)
    _workers: list[tuple[ProjectionWorker, threading.Thread]] = field(default_factory=list)
    _relay: tuple[Relay, asyncio.Task[None]] | None = None

    async def start(self) -> None:
        run, settings = self.gateway.run, self.settings
        self.commits.attach(asyncio.get_running_loop())
        await run(self.lease.take)
        await run(ensure_projections, self.app)
        await run(self.limits.create_tables)
        self.positions.start()
        if settings.projections.enabled and self.relay_and_projections:
            self._start_projections()
        self.writer.start()
        self.starts.start()
        self._task(self.recovery.run_forever(), "turnstream-recovery")
        await self.server_tools.start()  # a server that fails to start is retried apart
        if self.link is not None:
            self.link.start()
            self._task(self.control.listen(), "turnstream-control")
            if settings.relay.enabled and self.relay_and_projections:
                self._start_relay(self.link)
        self.health.started = True

    def _start_projections(self) -> None:
        if self.settings.projections.process:
            self._child(("projections", "run"))
            return
        for projection in PROJECTIONS.values():
            worker = ProjectionWorker(
                self.app, projection, takeover_s=self.settings.relay.takeover_s
            )
            thread = threading.Thread(
                target=worker.run_forever, name=f"projection-{projection.name}", daemon=True
            )
            thread.start()
            self._workers.append((worker, thread))

    def _start_relay(self, link: NatsLink) -> None:
        if self.settings.relay.process:
            self._child(("relay",))
            return
        relay = Relay(
            self.app,
            link,
            relay=self.settings.relay,
            nats=self.settings.nats,
            run=self.gateway.run_unguarded,
        )
        self._relay = (relay, self._task(relay.run_forever(), "turnstream-relay"))

    def _child(self, command: tuple[str, ...]) -> None:
        child = SupervisedChild(self.child_env(), command=command)
        child.start()
        self._children.append(child)

    def _task(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        """Let running turns finish for the grace period, interrupt the rest, flush."""
        self.health.started = False
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.starts.stop)  # a start now: 503, try elsewhere
        await self.registry.drain(self.settings.turns.shutdown_grace_s)
        await loop.run_in_executor(None, self.writer.stop)
        # The relay publishes what the last commits stored, then stops; whatever it
        # cannot, the next active relay publishes (it resumes from the stream).
        if self._relay is not None:
            relay, task = self._relay
            relay.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5.0)
        for child in reversed(self._children):  # the relay first
            await child.stop()
        for worker, _ in self._workers:
            worker.stop()
        for _, thread in self._workers:
            await asyncio.to_thread(thread.join, 5.0)
        await self.positions.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.link is not None:
            await self.link.close()
        self.lease.close()
        await self.providers.aclose()
        await self.server_tools.aclose()
        await self.gateway.close()
