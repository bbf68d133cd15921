"""One MCP server's connection: the task that owns it, the live session, its tools.

The SDK's transports and sessions are anyio context managers whose cancel scopes must be
entered and left in one task, so a connection's own long-lived task enters and leaves
them (and aclose cancels that task's anyio scope, never the task itself: the SDK's
shielded stdio shutdown, which kills the server's process group, then still runs).
Calls come from other tasks and use the live session directly, which the SDK allows: a
request is a send on a memory stream and a wait on the request's own response stream,
both in the calling task, correlated by id in the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import AsyncIterable
from typing import Any, TextIO

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream
from mcp import ClientSession, StdioServerParameters, stdio_client, types
from mcp.client import Transport
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from turnstream.domain.errors import Invalid
from turnstream.domain.tools import FunctionSpec, ToolSpec, check_tools
from turnstream.settings import McpServerConfig
from turnstream.tools.results import ToolOutcome, failure, outcome_of

log = logging.getLogger("turnstream.tools.mcp")

HEALTHY_S = 10.0
"""A session that lasted this long counts as healthy: when it ends, no backoff."""
MAX_HTTP_EVENT_BYTES = 32 * 1024 * 1024
"""The largest SSE event an HTTP server may send (the SDK's default is 1 MiB, which
would turn a large result into an error instead of a cut output)."""
MAX_DESCRIPTION = 4096
CLIENT_INFO = types.Implementation(name="turnstream", version="1")


class ServerTool(msgspec.Struct, frozen=True, kw_only=True):
    """An MCP tool a model may be offered: which server runs it, and its spec."""

    server: str
    spec: ToolSpec
    needs_approval: bool

    @property
    def name(self) -> str:
        return self.spec.name


class Connection:
    """One server's connection: its owner task, the live session, the last listing."""

    def __init__(
        self,
        config: McpServerConfig,
        start_timeout_s: float,
        retry_initial_s: float,
        retry_max_s: float,
    ) -> None:
        self.config = config
        self.tools: dict[str, ServerTool] = {}
        self.session: ClientSession | None = None
        self._lost: asyncio.Event | None = None
        self._start_timeout_s = start_timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._failures = 0
        self._failed_starts = 0
        self._wake = asyncio.Event()
        self._change = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def up(self) -> bool:
        """Whether a session is live (as far as this process has noticed)."""
        return self.session is not None and self._lost is not None and not self._lost.is_set()

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name=f"mcp-server-{self.id}")

    async def first_attempt(self) -> None:
        """Until the server is up or has failed to start once (what start waits for)."""
        while self.session is None and self._failed_starts == 0 and not self._stopped:
            await self._change.wait()

    async def stop(self) -> None:
        """Stop the owner task, which closes the session and stops the server."""
        self._stopped = True
        task = self._task
        if task is None:
            return
        if self._scope is not None:
            self._scope.cancel()
        else:
            task.cancel()
        # The SDK's stdio shutdown is bounded (stdin closed, then SIGTERM and SIGKILL
        # to the process group, about 6 s at worst); beyond that, cancel it outright.
        done, _ = await asyncio.wait([task], timeout=15)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._changed()

    # The owner task.

    async def _run(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            while True:
                delay = self._delay()
                if delay > 0 and not self._wake.is_set():
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                self._wake.clear()
                await self._attempt()

    def _delay(self) -> float:
        if self._failures == 0:
            return 0.0
        return min(self._retry_initial_s * 2.0 ** (self._failures - 1), self._retry_max_s)

    async def _attempt(self) -> None:
        """Start the server, serve calls until the connection ends, and clean up."""
        up_at: float | None = None
        lost = asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    session = await self._connect(stack, lost)
                except Exception as exc:
                    # Said before the teardown, which may take seconds (a server that
                    # ignores its stdin closing is killed only after a grace period).
                    self._failed_start(exc)
                    raise
                self.session, self._lost, up_at = session, lost, time.monotonic()
                log.info("MCP server %r is up with %d tools", self.id, len(self.tools))
                self._changed()
                await lost.wait()
                log.warning("MCP server %r stopped; starting it again", self.id)
        except Exception as exc:
            if up_at is not None:
                log.warning("MCP server %r failed (%s)", self.id, _reason(exc, None))
        finally:
            self.session, self._lost = None, None
            if up_at is not None:
                healthy = time.monotonic() - up_at >= HEALTHY_S
                self._failures = 0 if healthy else self._failures + 1
            self._changed()

    async def _connect(
        self, stack: contextlib.AsyncExitStack, lost: asyncio.Event
    ) -> ClientSession:
        """A session that has listed the server's tools, its contexts on ``stack``."""
        read, write = await stack.enter_async_context(self._transport())
        pumps = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(pumps.cancel_scope.cancel)
        inlet, outlet = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        pumps.start_soon(_pump, read, inlet, lost)
        session = await stack.enter_async_context(
            ClientSession(outlet, write, client_info=CLIENT_INFO)
        )
        with anyio.fail_after(self._start_timeout_s):
            await session.initialize()
            listing = await _list_tools(session)
        self.tools = self._specs(listing)
        return session

    def _failed_start(self, exc: Exception) -> None:
        self._failures += 1
        self._failed_starts += 1
        log.warning(
            "MCP server %r did not start (%s); trying again in %.1f s",
            self.id,
            _reason(exc, self._start_timeout_s),
            self._delay(),
        )
        self._changed()

    def _transport(self) -> Transport:
        config = self.config
        if config.command:
            program, *args = config.command
            params = StdioServerParameters(command=program, args=args, env=dict(config.env) or None)
            return stdio_client(params, errlog=_errlog())
        assert config.url is not None
        return streamable_http_client(config.url, max_sse_event_size=MAX_HTTP_EVENT_BYTES)

    def _specs(self, listing: list[types.Tool]) -> dict[str, ServerTool]:
        tools: dict[str, ServerTool] = {}
        for tool in listing:
            description = (tool.description or tool.title or "")[:MAX_DESCRIPTION]
            function = FunctionSpec(
                name=tool.name, description=description, parameters=dict(tool.input_schema)
            )
            spec = ToolSpec(function=function)
            try:
                # What a client's declared tool must be, a server's must be too: a name
                # OpenAI-compatible servers take, parameters a JSON Schema of an object.
                check_tools([spec])
            except Invalid as exc:
                log.warning("MCP server %r: a tool is left out: %s", self.id, exc)
                continue
            needs = self.config.needs_approval(tool.name)
            tools[tool.name] = ServerTool(server=self.id, spec=spec, needs_approval=needs)
        return tools

    def _changed(self) -> None:
        """Wake whoever waits for this server's state to change."""
        self._change.set()
        self._change = asyncio.Event()

    # Calls (from any task).

    async def _ready(self) -> ClientSession | None:
        """The live session, waiting for a start in progress or asking for one; None
        once a start has failed during this wait."""
        failed = self._failed_starts
        while not self._stopped:
            if self.up and self.session is not None:
                return self.session
            if self._failed_starts > failed:
                return None
            self._wake.set()
            await self._change.wait()
        return None

    async def call(
        self, name: str, arguments: dict[str, Any], limit_s: float, max_bytes: int
    ) -> ToolOutcome:
        """The call's outcome within ``limit_s`` (a restart included) and ``max_bytes``."""
        sid, timeout = self.id, limit_s
        if self.tools and name not in self.tools:
            return failure(f"The tool server {sid!r} has no tool {name!r}.")
        deadline = time.monotonic() + timeout
        late = failure(f"The tool did not answer within {timeout:g} s.")
        try:
            async with asyncio.timeout(timeout):
                session = await self._ready()
        except TimeoutError:
            return failure(f"The tool server {sid!r} did not start within {timeout:g} s.")
        if session is None:
            return failure(f"The tool server {sid!r} is not available right now.")
        if name not in self.tools:
            return failure(f"The tool server {sid!r} has no tool {name!r}.")
        left = max(deadline - time.monotonic(), 0.001)
        try:
            # The SDK's own clock cancels the request on the server; ours (a moment
            # later) also covers a send that never gets through.
            async with asyncio.timeout(left + 1.0):
                result = await session.call_tool(name, arguments, read_timeout_seconds=left)
        except TimeoutError:
            return late
        except MCPError as exc:
            return self._refused(exc, name, late)
        except (RuntimeError, ValueError) as exc:
            # Structured content against the declared output schema, or a result the
            # SDK could not read (pydantic's ValidationError is a ValueError).
            log.warning("MCP server %r: tool %r answered badly (%s)", sid, name, type(exc).__name__)
            return failure(f"The tool server {sid!r} answered {name!r} with an invalid result.")
        return outcome_of(result, max_bytes)

    def _refused(self, exc: MCPError, name: str, late: ToolOutcome) -> ToolOutcome:
        sid = self.id
        if exc.code == types.REQUEST_TIMEOUT:
            return late
        if exc.code == types.CONNECTION_CLOSED or exc.message == "Session terminated":
            # The connection is gone (a stdio server exited, an HTTP server forgot the
            # session): let the owner start a new one.
            if self._lost is not None:
                self._lost.set()
            return failure(f"The tool server {sid!r} stopped during the call.")
        if exc.code == types.INVALID_PARAMS:
            return failure(f"The tool server {sid!r} rejected the call: {exc.message[:300]}")
        log.warning("MCP server %r: tool %r: error %s", sid, name, exc.code)
        return failure(f"The tool server {sid!r} answered the call with error {exc.code}.")


async def _pump(
    source: AsyncIterable[SessionMessage | Exception],
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    lost: asyncio.Event,
) -> None:
    """Pass the transport's messages to the session, and tell when they end.

    The SDK's session notices neither a server's exit nor its stream's end on its own
    (in-flight calls fail, but nothing starts it again); this hop is how the owner
    task learns of it.
    """
    try:
        async with sink:
            async for item in source:
                await sink.send(item)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
        pass
    finally:
        lost.set()


async def _list_tools(session: ClientSession, max_pages: int = 100) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(max_pages):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _reason(exc: BaseException, start_timeout_s: float | None) -> str:
    """Why a server failed, for the log: never the command's arguments, its
    environment or a URL (any may hold a secret)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError) and start_timeout_s is not None:
        return f"no answer within {start_timeout_s:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot run it: {exc.strerror}"
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}: {exc.message[:200]}"
    return type(exc).__name__


def _errlog() -> TextIO:
    """Where a stdio server's stderr goes: ours, when it is a real file (the SDK passes
    it to the child process, which needs a file descriptor), else nowhere."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (OSError, ValueError, AttributeError):
            continue
    return _devnull()


@functools.cache
def _devnull() -> TextIO:
    return open(os.devnull, "w")  # one for the process's life
