"""Server tools: the tools of the MCP servers of the models file, and calls to them.

Each server has one :class:`~turnstream.tools.connection.Connection`, kept by its own
long-lived task, which starts the server, lists its tools, and starts it again when the
connection ends (a stdio server exits; an HTTP server forgets the session). A server
that fails to start is logged and retried with backoff; the service never waits for it
past :meth:`McpTools.start`. Calls from any number of turn tasks share a session; a
call to a server that is down wakes its task to try at once and waits for the outcome
within the call's timeout.

Rules:

* **Name clashes**: :meth:`McpTools.tools_for` takes the servers in the order given (a
  model's ``mcp_servers``); a tool name already offered by an earlier server is left
  out (logged once), so the model never sees two tools of one name.
* **Tools a model cannot be offered**: a tool that would fail a client's declared
  tool's checks (:func:`turnstream.domain.tools.check_tools`: a name OpenAI-compatible
  servers take, parameters a JSON Schema of an object) is left out (logged).
* **Restarts**: a server that stops is started again at once; one that fails to start,
  or stops within :data:`~turnstream.tools.connection.HEALTHY_S` of starting, waits
  ``retry_initial_s`` doubling up to ``retry_max_s`` (a call skips the wait). A call in
  flight when its server stops is an error result ("stopped during the call"), never
  sent again: the tool may have acted.
* **Bounds**: every call answers within ``tool_timeout_s`` (waiting for a restart
  included) and its output within ``tool_output_max_bytes`` (:mod:`.results`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from turnstream.settings import McpServerConfig, ToolSettings
from turnstream.tools.results import ToolOutcome, failure

if TYPE_CHECKING:
    from turnstream.tools.connection import Connection, ServerTool

__all__ = ["McpTools", "ToolOutcome"]

log = logging.getLogger(__name__)


class McpTools:
    """The configured MCP servers' tools, kept connected; see the module's rules."""

    def __init__(
        self,
        servers: Mapping[str, McpServerConfig],
        settings: ToolSettings,
        *,
        start_timeout_s: float = 30.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 60.0,
    ) -> None:
        self._settings = settings
        self._start_timeout_s = start_timeout_s
        self._servers: dict[str, Connection] = {}
        if servers:
            # The MCP SDK takes half a second to import: only a process with servers
            # to talk to loads it.
            from turnstream.tools.connection import Connection

            self._servers = {
                sid: Connection(config, start_timeout_s, retry_initial_s, retry_max_s)
                for sid, config in servers.items()
            }
        self._warned: set[tuple[str, str]] = set()
        self._closed = False

    async def start(self) -> None:
        """Start every server and wait (at most ``start_timeout_s`` and a little) for
        each to be up or to have failed once; failed ones go on retrying meanwhile."""
        for server in self._servers.values():
            server.start()
        waits = [asyncio.create_task(s.first_attempt()) for s in self._servers.values()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._start_timeout_s + 5)
            for task in pending:
                task.cancel()

    async def aclose(self) -> None:
        """Stop every session and its server (a stdio server's whole process group)."""
        self._closed = True
        await asyncio.gather(*(server.stop() for server in self._servers.values()))

    def is_up(self, server_id: str) -> bool:
        """Whether the server has a live session (for health reports and tests)."""
        server = self._servers.get(server_id)
        return server is not None and server.up

    def tools_for(self, server_ids: Iterable[str]) -> list[ServerTool]:
        """The tools of these servers, in order; the first server of a name wins.

        A server down at the moment still offers the tools it last listed: it is
        likely back by the time the model calls one (else the call is an error result).
        """
        tools: list[ServerTool] = []
        names: dict[str, str] = {}
        for sid in dict.fromkeys(server_ids):
            server = self._servers.get(sid)
            if server is None:
                continue
            for tool in server.tools.values():
                if tool.name in names:
                    if (sid, tool.name) not in self._warned:
                        self._warned.add((sid, tool.name))
                        log.warning(
                            "MCP server %r: tool %r is left out, server %r has one of that name",
                            sid,
                            tool.name,
                            names[tool.name],
                        )
                    continue
                names[tool.name] = sid
                tools.append(tool)
        return tools

    async def call(self, server_id: str, name: str, arguments: Mapping[str, Any]) -> ToolOutcome:
        """Call one tool; any failure is an error result (this raises only on cancel)."""
        server = self._servers.get(server_id)
        if server is None:
            return failure(f"There is no tool server {server_id!r}.")
        if self._closed:
            return failure("The tool servers are shutting down.")
        settings = self._settings
        try:
            return await server.call(
                name, dict(arguments), settings.tool_timeout_s, settings.tool_output_max_bytes
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("MCP server %r: the call of %r failed", server_id, name)
            return failure(f"The call of tool {name!r} failed.")
