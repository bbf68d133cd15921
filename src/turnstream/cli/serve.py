"""``turnstream serve`` and ``turnstream relay``: the long-running processes."""

from __future__ import annotations

import argparse
import signal
import socket
from typing import Any

from turnstream.cli.common import settings_of, start_logging, when_parent_lets_go
from turnstream.settings import Settings


def cmd_serve(args: argparse.Namespace) -> int:
    """One process (the default), a worker of ``--workers`` (``--fd``), or N workers."""
    settings = settings_of(args, workers=getattr(args, "workers", None))
    start_logging(settings)
    if args.fd is not None:
        return _serve_worker(settings, args.fd)
    if settings.server.workers > 1:
        return _serve_workers(settings)
    from turnstream.bootstrap import bootstrap, http_app

    container = bootstrap(settings)
    try:
        app = http_app(container)
        _banner(settings, container.nats_url, container.jwt_secret, container.dev_secret)
        _run_uvicorn(settings, app)
    finally:
        container.close()
    return 0


def _serve_worker(settings: Settings, fd: int) -> int:
    """A worker of ``serve --workers``: the HTTP app on the parent's socket ``fd``,
    stopping (as on SIGTERM) when the parent closes its standard input or dies."""
    import os

    from turnstream.bootstrap import bootstrap, http_app

    container = bootstrap(settings, worker=True)
    try:
        app = http_app(container)
        when_parent_lets_go(lambda: os.kill(os.getpid(), signal.SIGTERM))
        _run_uvicorn(settings, app, sock=socket.socket(fileno=fd))
    finally:
        container.close()
    return 0


def _serve_workers(settings: Settings) -> int:
    """``serve --workers N``: the pool's children until SIGTERM or SIGINT, then stopped
    in order (see :mod:`turnstream.bootstrap.workers`)."""
    import asyncio

    from turnstream.bootstrap.workers import bootstrap_workers

    pool = bootstrap_workers(settings)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        pool.start()
        _banner(settings, pool.nats_url, pool.jwt_secret, pool.dev_secret)
        print(f"{settings.server.workers} workers share the port", flush=True)
        await stopping.wait()
        await pool.stop()

    try:
        asyncio.run(run())
    finally:
        pool.close()
    return 0


def _banner(settings: Settings, nats_url: str, jwt_secret: str, dev_secret: bool) -> None:
    from turnstream.http.auth import mint

    server = settings.server
    base = f"http://{server.host}:{server.port}"
    print(f"turnstream on {base}  (API {base}/v1, docs {base}/schema)", flush=True)
    if not settings.store.url:
        print(f"embedded PostgreSQL, data in {server.data_dir}", flush=True)
    if not settings.nats.url:
        print(f"embedded NATS at {nats_url}, data in {server.data_dir}", flush=True)
    # A link must name a host a browser can reach: not the wildcard address.
    link = base if server.host not in ("0.0.0.0", "::", "") else f"http://127.0.0.1:{server.port}"
    if dev_secret:
        token = mint(jwt_secret, tenant="dev", user="dev", ttl_s=30 * 86400)
        print("no TURNSTREAM_JWT_SECRET set: a dev secret lives in the data folder.")
        print(f"dev token (tenant dev, user dev, 30 days):\n  {token}", flush=True)
        print(
            "try:\n"
            f"  TOKEN={token}\n"
            f'  curl -s -X POST {base}/v1/conversations -H "Authorization: Bearer $TOKEN"'
            " -H 'Content-Type: application/json' -d '{}'",
            flush=True,
        )
        if settings.browsers.playground:
            # The token travels in the fragment: browsers never send it to a server.
            print(f"playground:\n  {link}/playground#token={token}", flush=True)
    elif settings.browsers.playground:
        print(f"playground: {link}/playground (paste a token from `turnstream token`)", flush=True)


def _run_uvicorn(settings: Settings, app: Any, sock: socket.socket | None = None) -> None:
    import uvicorn

    server = settings.server
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level=server.log_level.lower(),
        log_config=None,  # uvicorn's loggers write in the one format set up above
        lifespan="on",
        timeout_graceful_shutdown=int(settings.turns.shutdown_grace_s) + 5,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down; with a
    # Python handler in place that ends here, and the finally below still runs
    # (stopping an embedded PostgreSQL), and the exit status is 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    uvicorn.Server(config).run(sockets=None if sock is None else [sock])


def cmd_relay(args: argparse.Namespace) -> int:
    """Run the relay alone: it leads, or stands by until the active relay dies.

    SIGTERM or SIGINT: publish what is stored, then exit (a second signal, or 5 s,
    cuts that short). Under ``serve`` (``--supervised``) the end of its standard input
    says the same: serve closes it to stop the relay, and it closes by itself when serve
    dies, kill -9 included; unlike a signal, it cannot arrive too early to be seen.
    """
    import asyncio
    import os

    from turnstream.bootstrap import bootstrap_relay

    settings = settings_of(args)
    start_logging(settings)
    if args.supervised and settings.relay.nice:
        os.nice(settings.relay.nice)
    relay, embedded = bootstrap_relay(settings)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            if relay.draining:
                task.cancel()
                return
            relay.drain()
            loop.call_later(5.0, task.cancel)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)

        if args.supervised:
            when_parent_lets_go(lambda: loop.call_soon_threadsafe(stop))
        relay.link.start()
        try:
            await relay.run_forever()
        finally:
            await relay.link.close()

    if not args.supervised:
        print(f"turnstream relay: store -> NATS stream {settings.nats.stream}", flush=True)
    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass
    finally:
        relay.app.close()
        for server in reversed(embedded):
            server.stop()
    return 0


def _stopped(signum: int, frame: object) -> None:
    """The signal uvicorn re-raises after its graceful shutdown: nothing left to do."""
