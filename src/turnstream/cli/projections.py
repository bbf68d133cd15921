"""``turnstream projections status | rebuild [NAME] | run``: the operator's side."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from turnstream.bootstrap import attach_store
from turnstream.cli.common import when_parent_lets_go
from turnstream.projections.rebuild import rebuild
from turnstream.projections.registry import PROJECTIONS
from turnstream.projections.runner import ProjectionWorker
from turnstream.projections.status import status
from turnstream.settings import Settings


def cmd_status(settings: Settings, *, as_json: bool) -> int:
    app, release = attach_store(settings)
    try:
        rows = status(app)
    finally:
        release()
    if as_json:
        for row in rows:
            print(
                json.dumps(
                    {
                        "name": row.name,
                        "generation": row.generation,
                        "position": row.position,
                        "head": row.head,
                        "lag": row.lag,
                        "repaired": row.repaired,
                    }
                )
            )
        return 0
    table = Table(
        "projection", "generation", "position", "log head", "lag (events)", "repaired events"
    )
    for row in rows:
        table.add_row(
            row.name,
            str(row.generation),
            str(row.position),
            str(row.head),
            str(row.lag),
            str(row.repaired),
        )
    Console().print(table)
    return 0


def cmd_rebuild(settings: Settings, names: list[str]) -> int:
    """Rebuild each projection from the first event; the service serves the old view
    until the new one has caught up, then switches to it."""
    err = Console(stderr=True)
    app, release = attach_store(settings)
    try:
        for name in names:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            ) as progress:
                task = progress.add_task(f"rebuild {name}", total=None, rate="")

                def report(position: int, head: int, task: Any = task, bar: Any = progress) -> None:
                    speed = bar.tasks[0].speed
                    rate = f"{speed:,.0f} events/s" if speed else ""
                    bar.update(task, completed=position, total=max(head, position), rate=rate)

                result = rebuild(app, name, report)
            print(
                f"rebuilt {result.name}: {result.events:,} events in {result.seconds:.2f} s"
                f" ({result.rate:,.0f} events/s, {result.applied:,} applied),"
                f" now generation {result.generation}",
                flush=True,
            )
    except RuntimeError as exc:  # another rebuild holds the projection
        err.print(f"turnstream: {exc}")
        return 1
    finally:
        release()
    return 0


def cmd_run(settings: Settings, names: list[str], *, supervised: bool = False) -> int:
    """Keep the projections up to date in this process (instead of, or beside, serve:
    one runner per projection is active, the others stand by).

    Under ``serve`` (``supervised``) the end of its standard input (serve closes it, or
    dies) stops it. It is not niced, unlike the relay: reads wait for it.
    """
    app, release = attach_store(settings)
    workers = [
        ProjectionWorker(app, PROJECTIONS[name], takeover_s=settings.relay.takeover_s)
        for name in names
    ]
    threads = [threading.Thread(target=w.run_forever, name=f"projection-{w.name}") for w in workers]
    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    if supervised:
        when_parent_lets_go(done.set)
    else:
        print(f"turnstream projections: keeping {', '.join(names)}", flush=True)
    try:
        for thread in threads:
            thread.start()
        done.wait()
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(10)
        release()
    return 0


def main(
    settings: Settings,
    action: str,
    name: str | None,
    *,
    as_json: bool = False,
    supervised: bool = False,
) -> int:
    names = [name] if name else list(PROJECTIONS)
    if action == "status":
        return cmd_status(settings, as_json=as_json)
    if action == "rebuild":
        return cmd_rebuild(settings, names)
    if action == "run":
        return cmd_run(settings, names, supervised=supervised)
    print(f"turnstream: unknown action {action!r}", file=sys.stderr)
    return 2
