"""The composition root: everything is built here, from settings, and nowhere else.

The HTTP app, the CLI, the benchmarks and the tests all call :func:`bootstrap` (or,
for the operator's commands, :func:`attach_store` and :func:`bootstrap_relay`); no
module does I/O at import time and there are no module-level singletons. Each part is
handed only its own settings group.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from litestar import Litestar

from turnstream.bootstrap.runtime import Runtime
from turnstream.bus.local import LocalBus
from turnstream.bus.nats import NatsLink
from turnstream.bus.relay import Relay
from turnstream.http.app import create_app
from turnstream.http.auth import resolve_secret
from turnstream.metrics import Metrics
from turnstream.projections.reader import Positions, Reader
from turnstream.projections.registry import ensure_projections
from turnstream.providers import Providers
from turnstream.settings import Settings
from turnstream.store.application import TurnstreamApplication, open_application
from turnstream.store.gateway import StoreGateway
from turnstream.store.lease import NodeLease, OrphanSweeper
from turnstream.store.limits import RateLimiter
from turnstream.store.starts import StartBatcher
from turnstream.store.writer import GroupWriter
from turnstream.tools.mcp import McpTools
from turnstream.usecases.admission import TurnStarter
from turnstream.usecases.chats import Chats
from turnstream.usecases.commits import CommitFeed
from turnstream.usecases.control import TurnControl
from turnstream.usecases.conversations import Conversations, ReadModel
from turnstream.usecases.files import Files
from turnstream.usecases.following import Follower
from turnstream.usecases.health import Health
from turnstream.usecases.limits import Limits
from turnstream.usecases.recovery import Recovery
from turnstream.usecases.registry import RunningTurns
from turnstream.usecases.runner import TurnRunner
from turnstream.usecases.services import Services
from turnstream.usecases.tooluse import ToolAnswers
from turnstream.usecases.usage import Usage

log = logging.getLogger(__name__)


@dataclass
class Container:
    settings: Settings
    database_url: str
    nats_url: str
    app: TurnstreamApplication
    services: Services
    runtime: Runtime
    jwt_secret: str
    dev_secret: bool
    embedded: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Close the store; stop the embedded servers this process started."""
        self.app.close()
        for server in reversed(self.embedded):
            with contextlib.suppress(Exception):
                server.stop()


def http_app(container: Container) -> Litestar:
    """The HTTP app over the container's use cases; its lifespan runs the node."""
    settings = container.settings
    return create_app(
        container.services,
        jwt_secret=container.jwt_secret,
        server=settings.server,
        guests=settings.guests,
        sse=settings.sse,
        browsers=settings.browsers,
        on_startup=container.runtime.start,
        on_shutdown=container.runtime.stop,
    )


def start_database(settings: Settings) -> tuple[str, list[Any]]:
    """The configured PostgreSQL, or an embedded one in the data folder."""
    if settings.store.url:
        return settings.store.url, []
    from turnstream.embedded import EmbeddedPostgres

    return _embedded(EmbeddedPostgres, settings)


def start_nats(settings: Settings) -> tuple[str, list[Any]]:
    """The configured NATS, or an embedded nats-server with JetStream in the data folder."""
    if settings.nats.url:
        return settings.nats.url, []
    from turnstream.embedded import EmbeddedNats

    return _embedded(EmbeddedNats, settings)


def _embedded(kind: Any, settings: Settings) -> tuple[str, list[Any]]:
    data_dir = settings.server.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    server = kind(data_dir)
    url: str = server.start()
    log.info("%s ready in %s", kind.__name__, data_dir)
    return url, [server]


def start_servers(settings: Settings) -> tuple[str, str, list[Any]]:
    """The database and NATS URLs, and the embedded servers started for them."""
    database_url, embedded = start_database(settings)
    try:
        nats_url, more = start_nats(settings)
    except BaseException:
        for server in embedded:
            server.stop()
        raise
    return database_url, nats_url, embedded + more


def build_application(settings: Settings, database_url: str) -> TurnstreamApplication:
    return open_application(database_url, settings.store.schema)


def bootstrap(settings: Settings, *, worker: bool = False) -> Container:
    """Everything ``serve`` runs: store, NATS link, relay, providers and the use cases;
    as a ``worker`` of ``serve --workers``, all but the relay and the projections."""
    database_url, nats_url, embedded = start_servers(settings)
    try:
        app = build_application(settings, database_url)
        link = NatsLink(nats_url, settings.nats)
        services, runtime = assemble(settings, app, link, worker=worker)
        secret, dev = resolve_secret(settings.server.jwt_secret, settings.server.data_dir)
    except BaseException:
        for server in reversed(embedded):
            server.stop()
        raise
    return Container(
        settings, database_url, nats_url, app, services, runtime, secret, dev, embedded
    )


def assemble(
    settings: Settings, app: TurnstreamApplication, link: NatsLink | None, *, worker: bool = False
) -> tuple[Services, Runtime]:
    """The use cases of one node over ``app`` and ``link``, and what runs them."""
    models = settings.models.load()
    node_id = uuid4()
    metrics = Metrics()
    gateway = StoreGateway(app)
    registry = RunningTurns()
    bus = LocalBus()
    commits_feed = CommitFeed(bus=bus, registry=registry, metrics=metrics)
    writer = GroupWriter(
        app,
        commits_feed.committed,
        commits_feed.lost,
        max_batch=settings.writer.max_batch,
        window_s=settings.writer.window_s,
    )
    commits_feed.stats = writer.stats
    starts = StartBatcher(app.store, app.connect)
    reader = Reader(app)
    positions = Positions(app, reader)
    reads = ReadModel(
        gateway=gateway, reader=reader, positions=positions, wait_s=settings.projections.wait_s
    )
    limiter = RateLimiter(app.store.datastore.schema)
    limits = Limits(
        app=app,
        gateway=gateway,
        limiter=limiter,
        limits=settings.limits,
        guests=settings.guests,
        models=settings.models,
    )
    providers = Providers(settings.models)
    server_tools = McpTools(settings.models.mcp_servers(), settings.tools)
    runner = TurnRunner(
        providers=providers,
        models=models,
        submit=writer.submit,
        registry=registry,
        metrics=metrics,
        tools=settings.tools,
        server_tools=server_tools,
        reserve_step=limits.reserve_step,
    )
    conversations = Conversations(app=app, gateway=gateway, reads=reads, models=models)
    files = Files(app=app, gateway=gateway, limits=settings.limits)
    control = TurnControl(
        app=app,
        gateway=gateway,
        conversations=conversations,
        registry=registry,
        link=link,
        node_id=node_id,
        subject_prefix=settings.nats.subject_prefix,
    )
    health = Health(
        app=app,
        gateway=gateway,
        link=link,
        stream=settings.nats.stream,
        projections=settings.projections.enabled,
    )
    services = Services(
        conversations=conversations,
        chats=Chats(conversations=conversations),
        turns=TurnStarter(
            app=app,
            gateway=gateway,
            reads=reads,
            models=models,
            limits=limits,
            limit_settings=settings.limits,
            guests=settings.guests,
            node_id=node_id,
            bus=bus,
            writer=writer,
            starts=starts,
            runner=runner,
            files=files,
        ),
        follower=Follower(
            app=app,
            gateway=gateway,
            bus=bus,
            link=link,
            metrics=metrics,
            sse=settings.sse,
            turns=settings.turns,
            subject_prefix=settings.nats.subject_prefix,
        ),
        control=control,
        answers=ToolAnswers(
            app=app,
            gateway=gateway,
            conversations=conversations,
            reads=reads,
            models=models,
            node_id=node_id,
            bus=bus,
            writer=writer,
            runner=runner,
            files=files,
        ),
        files=files,
        usage=Usage(
            app=app,
            gateway=gateway,
            reads=reads,
            limits=limits,
            limit_settings=settings.limits,
            guests=settings.guests,
        ),
        health=health,
        models=models,
        metrics=metrics,
    )
    lease = NodeLease(app, node_id)
    recovery = Recovery(
        app=app,
        gateway=gateway,
        lease=lease,
        sweeper=OrphanSweeper(app, node_id),
        limits=limits,
        files=files,
        every_s=settings.turns.runner_check_interval_s,
    )
    runtime = Runtime(
        settings=settings,
        app=app,
        gateway=gateway,
        lease=lease,
        limits=limits,
        positions=positions,
        writer=writer,
        starts=starts,
        commits=commits_feed,
        registry=registry,
        recovery=recovery,
        control=control,
        health=health,
        providers=providers,
        server_tools=server_tools,
        link=link,
        child_env=functools.partial(_child_env, settings, app, link),
        relay_and_projections=not worker,
    )
    return services, runtime


def _child_env(
    settings: Settings, app: TurnstreamApplication, link: NatsLink | None
) -> dict[str, str]:
    """A supervised child's environment: this process's, these settings, and the URLs
    resolved here (so it never starts embedded servers of its own)."""
    urls = {"database_url": app.database_url}
    if link is not None:
        urls["nats_url"] = link.url
    return os.environ | settings.to_env(**urls)


def attach_store(settings: Settings) -> tuple[TurnstreamApplication, Callable[[], None]]:
    """The store alone, for operator commands (``turnstream projections``), and how to
    let go of it: an embedded PostgreSQL that ``serve`` runs is used, never stopped."""
    database_url, embedded = start_database(settings)

    def close() -> None:
        for server in embedded:
            if not getattr(server, "adopted", False):
                server.stop()

    try:
        app = build_application(settings, database_url)
        ensure_projections(app)
    except BaseException:
        close()
        raise

    def release() -> None:
        app.close()
        close()

    return app, release


def bootstrap_relay(settings: Settings) -> tuple[Relay, list[Any]]:
    """The relay alone (``turnstream relay``): the store and NATS, nothing else."""
    database_url, nats_url, embedded = start_servers(settings)
    try:
        app = build_application(settings, database_url)
        link = NatsLink(nats_url, settings.nats, name="turnstream-relay")
        relay = Relay(app, link, relay=settings.relay, nats=settings.nats)
    except BaseException:
        for server in reversed(embedded):
            server.stop()
        raise
    return relay, embedded
