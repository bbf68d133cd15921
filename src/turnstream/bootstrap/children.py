"""Supervised children: ``serve``'s relay and its projection workers, each a process.

Publishing every stored event costs tens of microseconds of Python per event. On the
HTTP process's event loop that competes, under one GIL, with the SSE streams it serves;
in a child it has a core of its own. The child is ``turnstream relay`` with the parent's
settings and resolved URLs (so it never starts embedded servers of its own). Its
standard input is a pipe from the parent: closing it asks the child to publish what is
stored and exit, and the operating system closes it when the parent dies. The parent
starts the child again if it dies. The projection workers run the same way
(``turnstream projections run --supervised``), for the same reason, and so do the HTTP
workers of ``serve --workers N`` (``turnstream serve --fd K --supervised``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0


class SupervisedChild:
    """``turnstream <command> --supervised`` as a child, started again if it dies."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        command: tuple[str, ...],
        stop_timeout_s: float = 5.0,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.env = env
        self.command = command
        self.stop_timeout_s = stop_timeout_s
        self.pass_fds = pass_fds
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        name = "turnstream-" + "-".join(self.command) + "-process"
        self._task = asyncio.create_task(self._supervise(), name=name)

    async def _supervise(self) -> None:
        while not self._stopping:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "turnstream",
                *self.command,
                "--supervised",
                env=self.env,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=self.pass_fds,
                # Its own session: a terminal's Ctrl-C (or a signal to serve's process
                # group) reaches serve alone, which then stops its children in order.
                start_new_session=True,
            )
            code = await self.proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            name = " ".join(self.command)
            log.warning("%s process exited (status %s); starting it again", name, code)
            await asyncio.sleep(RESTART_DELAY_S)

    def retire(self) -> None:
        """Start no new process once this one exits (the first step of stopping)."""
        self._stopping = True

    async def stop(self) -> None:
        """Ask the child to finish (the relay publishes what is stored) and exit, by
        closing its standard input; kill it after the timeout."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout_s)
            except TimeoutError:
                log.warning("%s process did not stop in time; killing it", " ".join(self.command))
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
