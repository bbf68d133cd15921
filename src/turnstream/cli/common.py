"""What every command shares: its settings and its logging."""

from __future__ import annotations

import argparse
import logging
import os

from turnstream.settings import Settings, unknown_variables

log = logging.getLogger("turnstream")


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings from ``TURNSTREAM_*``, with the command line's ``--data-dir``,
    ``--host`` and ``--port`` over them."""
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )


def start_logging(settings: Settings) -> None:
    """One log format for every logger of the process (uvicorn's too), and a warning
    for each ``TURNSTREAM_*`` variable that no setting reads (a typo, or retired)."""
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name, closest in unknown_variables(os.environ):
        hint = f"; did you mean {closest}?" if closest else ""
        log.warning("%s is not a setting of turnstream and is ignored%s", name, hint)
