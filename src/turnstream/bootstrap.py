"""The composition root: everything is built here, from settings, and nowhere else.

The HTTP app, the CLI, the benchmarks and the tests all call :func:`bootstrap`; no
module does I/O at import time and there are no module-level singletons.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turnstream.auth import resolve_secret
from turnstream.bus.nats import NatsLink
from turnstream.bus.relay import Relay
from turnstream.domain.application import (
    TurnstreamApplication,
    ensure_schema,
    event_store_env,
)
from turnstream.projections.runner import ensure_projections
from turnstream.providers import Providers
from turnstream.service import ChatService
from turnstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Container:
    settings: Settings
    database_url: str
    nats_url: str
    app: TurnstreamApplication
    service: ChatService
    jwt_secret: str
    dev_secret: bool
    embedded: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Close the store; stop the embedded servers this process started."""
        self.app.close()
        for server in reversed(self.embedded):
            with contextlib.suppress(Exception):
                server.stop()


def start_database(settings: Settings) -> tuple[str, list[Any]]:
    """The configured PostgreSQL, or an embedded one in the data folder."""
    if settings.database_url:
        return settings.database_url, []
    from turnstream.embedded import EmbeddedPostgres

    return _embedded(EmbeddedPostgres, settings)


def start_nats(settings: Settings) -> tuple[str, list[Any]]:
    """The configured NATS, or an embedded nats-server with JetStream in the data folder."""
    if settings.nats_url:
        return settings.nats_url, []
    from turnstream.embedded import EmbeddedNats

    return _embedded(EmbeddedNats, settings)


def _embedded(kind: Any, settings: Settings) -> tuple[str, list[Any]]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = kind(settings.data_dir)
    url: str = server.start()
    log.info("%s ready in %s", kind.__name__, settings.data_dir)
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
    ensure_schema(database_url, settings.database_schema)
    return TurnstreamApplication(
        event_store_env(database_url, settings.database_schema), database_url
    )


def bootstrap(settings: Settings) -> Container:
    """Everything ``serve`` runs: store, NATS link, relay, providers and the service."""
    database_url, nats_url, embedded = start_servers(settings)
    try:
        app = build_application(settings, database_url)
        models = settings.load_models()
        providers = Providers(settings)
        link = NatsLink(nats_url, settings)
        service = ChatService(settings, app, models, providers, link)
        secret, dev = resolve_secret(settings.jwt_secret, settings.data_dir)
    except BaseException:
        for server in reversed(embedded):
            server.stop()
        raise
    return Container(settings, database_url, nats_url, app, service, secret, dev, embedded)


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
        link = NatsLink(nats_url, settings, name="turnstream-relay")
        relay = Relay(app, link)
    except BaseException:
        for server in reversed(embedded):
            server.stop()
        raise
    return relay, embedded
