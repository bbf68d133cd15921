"""What every command shares: its settings and its logging."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from turnstream.http.tickets import RedactTickets
from turnstream.settings import Settings, unknown_variables

log = logging.getLogger("turnstream")


def settings_of(args: argparse.Namespace, **more: Any) -> Settings:
    """The settings from ``TURNSTREAM_*``, with the command line's ``--data-dir``,
    ``--host`` and ``--port`` (and ``more``) over them."""
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        **more,
    )


def start_logging(settings: Settings) -> None:
    """One log format for every logger of the process (uvicorn's too), stream tickets
    kept out of the access log, and a warning for each ``TURNSTREAM_*`` variable that no
    setting reads (a typo, or retired)."""
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Stream tickets ride in URLs, and uvicorn's access log prints URLs with their query.
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTickets) for f in access.filters):
        access.addFilter(RedactTickets())
    # The HTTP clients (the model providers', the MCP SDK's) log every request at INFO:
    # one line per token stream and tool call would drown the service's own log.
    for chatty in ("httpx", "httpx2", "mcp"):
        if logging.getLogger(chatty).level == logging.NOTSET:
            logging.getLogger(chatty).setLevel(logging.WARNING)
    for name, closest in unknown_variables(os.environ):
        hint = f"; did you mean {closest}?" if closest else ""
        log.warning("%s is not a setting of turnstream and is ignored%s", name, hint)


def when_parent_lets_go(then: Callable[[], object]) -> None:
    """Call ``then`` (on a thread) once standard input ends: a supervised child's parent
    closes it to stop the child, and the operating system closes it when the parent
    dies. ``os.read``, not ``sys.stdin``: a daemon thread blocked inside the buffered
    reader would hold its lock while the interpreter shuts down, and abort it."""

    def read_to_end() -> None:
        while os.read(0, 4096):
            pass
        then()

    threading.Thread(target=read_to_end, name="parent-watch", daemon=True).start()
