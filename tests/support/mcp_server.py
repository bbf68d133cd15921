"""A real MCP server for the tests, written with the official SDK (``MCPServer``).

Over stdio (what a ``[[mcp_servers]]`` ``command`` runs)::

    python -m tests.support.mcp_server

Over streamable HTTP on a free local port, printing ``PORT <n>`` on stdout once it
listens (so the test knows where, without guessing a free port)::

    python -m tests.support.mcp_server --http

Each tool exercises one path of :class:`turnstream.tools.mcp.McpTools`: a plain answer,
typed arguments, a hang (the timeout), a huge answer (the bound), a tool error, an
image, and the server dying during a call (the restart).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

BIG_BYTES = 10 * 1024 * 1024
PICTURE = bytes(range(256)) * 4 + b"png"
"""1027 bytes of "image" (only its size and type reach the model)."""

server = MCPServer("turnstream-test-tools", log_level="WARNING")


def models_entry(server_id: str, approval: list[str]) -> str:
    """The models file's ``[[mcp_servers]]`` entry that runs this server over stdio,
    from the repository root (what the tests' services are given)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    command = json.dumps([sys.executable, "-m", "tests.support.mcp_server"])
    return (
        f'[[mcp_servers]]\nid = "{server_id}"\ncommand = {command}\n'
        f"env = {{ PYTHONPATH = {json.dumps(root)} }}\napproval = {json.dumps(approval)}\n"
    )


@server.tool()
def echo(text: str) -> str:
    """Answer with the text given."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def hang() -> str:
    """Never answer (until cancelled)."""
    await asyncio.Event().wait()
    return "unreachable"


@server.tool(structured_output=False)
def big() -> str:
    """About 10 MB of text, far beyond any sensible tool output bound (as text content
    only: a structured copy would double what crosses the pipe)."""
    line = "0123456789abcdef" * 4 + "\n"
    return line * (BIG_BYTES // len(line))


@server.tool()
def fail() -> str:
    """Fail: the SDK answers an ``isError`` result with the message."""
    raise ToolError("the fail tool always fails")


@server.tool()
def weather(city: str) -> str:
    """A deterministic forecast, so tests can assert the exact text."""
    temperature = sum(map(ord, city)) % 35
    return f"{city}: {temperature} °C, clear"


@server.tool()
def picture() -> Image:
    """An image: the model is told its type and size, not sent its bytes."""
    return Image(data=PICTURE, format="png")


@server.tool()
def crash() -> str:
    """Kill this server in the middle of the call (the client sees its pipe close)."""
    os._exit(3)


def _serve_http() -> None:
    """Serve over streamable HTTP on 127.0.0.1, on a port the kernel picks."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(uv.serve(sockets=[sock]))
        while not uv.started and not task.done():
            await asyncio.sleep(0.01)
        print(f"PORT {port}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    if "--http" in sys.argv[1:]:
        _serve_http()
    else:
        server.run("stdio")
