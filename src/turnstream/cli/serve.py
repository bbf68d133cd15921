"""``turnstream serve`` and ``turnstream relay``: the long-running processes."""

from __future__ import annotations

import argparse
import signal
import sys

from turnstream.cli.common import settings_of, start_logging


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from turnstream.bootstrap import bootstrap, http_app
    from turnstream.http.auth import mint

    settings = settings_of(args)
    start_logging(settings)
    container = bootstrap(settings)
    server = settings.server
    try:
        app = http_app(container)
        base = f"http://{server.host}:{server.port}"
        print(f"turnstream on {base}  (API {base}/v1, docs {base}/schema)", flush=True)
        if not settings.store.url:
            print(f"embedded PostgreSQL, data in {server.data_dir}", flush=True)
        if not settings.nats.url:
            print(f"embedded NATS at {container.nats_url}, data in {server.data_dir}", flush=True)
        if container.dev_secret:
            token = mint(container.jwt_secret, tenant="dev", user="dev", ttl_s=30 * 86400)
            print("no TURNSTREAM_JWT_SECRET set: a dev secret lives in the data folder.")
            print(f"dev token (tenant dev, user dev, 30 days):\n  {token}", flush=True)
            print(
                "try:\n"
                f"  TOKEN={token}\n"
                f'  curl -s -X POST {base}/v1/conversations -H "Authorization: Bearer $TOKEN"'
                " -H 'Content-Type: application/json' -d '{}'",
                flush=True,
            )
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
        uvicorn.Server(config).run()
    finally:
        container.close()
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    """Run the relay alone: it leads, or stands by until the active relay dies.

    SIGTERM or SIGINT: publish what is stored, then exit (a second signal, or 5 s,
    cuts that short). Under ``serve`` (``--supervised``) the end of its standard input
    says the same: serve closes it to stop the relay, and it closes by itself when serve
    dies, kill -9 included; unlike a signal, it cannot arrive too early to be seen.
    """
    import asyncio
    import os
    import threading

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

        def read_to_end() -> None:
            sys.stdin.buffer.read()
            loop.call_soon_threadsafe(stop)

        if args.supervised:
            threading.Thread(target=read_to_end, name="parent-watch", daemon=True).start()
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
