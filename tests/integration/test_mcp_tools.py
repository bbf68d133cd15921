"""Server tools against real MCP servers (tests/support/mcp_server.py), over stdio and
streamable HTTP: listing, calls, error results, timeouts, bounds, restarts, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.mcp_server import PICTURE
from turnstream.settings import McpServerConfig, ToolSettings
from turnstream.tools import McpTools

ROOT = Path(__file__).resolve().parents[2]
MARKER = "tests.support.mcp_server"


def stdio(sid: str = "t", **kwargs: Any) -> McpServerConfig:
    """The test server over stdio; PYTHONPATH so it imports whatever the cwd."""
    return McpServerConfig(
        id=sid, command=(sys.executable, "-m", MARKER), env={"PYTHONPATH": str(ROOT)}, **kwargs
    )


@contextlib.asynccontextmanager
async def running(*servers: McpServerConfig, **settings: Any) -> AsyncIterator[McpTools]:
    tools = McpTools(
        {s.id: s for s in servers},
        ToolSettings(**{"tool_timeout_s": 20.0, **settings}),
        start_timeout_s=30.0,
    )
    await tools.start()
    try:
        yield tools
    finally:
        await tools.aclose()


def server_processes() -> list[psutil.Process]:
    """This process's stdio test servers (not an HTTP one a test started itself)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            cmdline = child.cmdline()
            if MARKER in cmdline and "--http" not in cmdline:
                found.append(child)
    return found


async def eventually(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Poll ``condition`` until it holds (bounded): for states with no event to await."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.05)


async def test_listing_gives_the_tools_with_their_schemas() -> None:
    async with running(stdio(approval=("add",))) as tools:
        listed = {tool.name: tool for tool in tools.tools_for(["t"])}
        assert {"echo", "add", "hang", "big", "fail", "weather", "picture", "crash"} <= set(listed)
        add = listed["add"]
        assert add.server == "t"
        assert add.spec.function.description == "Add two integers."
        parameters = add.spec.function.parameters
        assert parameters["type"] == "object"
        assert parameters["properties"]["a"]["type"] == "integer"
        assert sorted(parameters["required"]) == ["a", "b"]
        assert add.needs_approval
        assert not listed["echo"].needs_approval
        assert tools.tools_for(["nowhere"]) == []


async def test_a_name_two_servers_offer_goes_to_the_first_listed() -> None:
    async with running(stdio("one"), stdio("two")) as tools:
        assert {t.server for t in tools.tools_for(["two", "one"])} == {"two"}
        assert {t.server for t in tools.tools_for(["one", "two"])} == {"one"}
        assert len(tools.tools_for(["one", "two"])) == len(tools.tools_for(["one"]))


async def test_a_call_returns_the_tool_output() -> None:
    async with running(stdio()) as tools:
        added = await tools.call("t", "add", {"a": 2, "b": 3})
        assert (added.output, added.is_error) == ("5", False)
        weather = await tools.call("t", "weather", {"city": "Paris"})
        assert weather.output == "Paris: 21 °C, clear"
        echoed = await tools.call("t", "echo", {"text": "héllo ☃"})
        assert echoed.output == "héllo ☃"


async def test_an_image_is_described_not_sent() -> None:
    async with running(stdio()) as tools:
        picture = await tools.call("t", "picture", {})
        assert picture.output == f"[image/png, {len(PICTURE)} bytes]"
        assert not picture.is_error


async def test_a_tool_error_is_an_error_result() -> None:
    async with running(stdio()) as tools:
        failed = await tools.call("t", "fail", {})
        assert failed.is_error
        assert "the fail tool always fails" in failed.output
        bad_arguments = await tools.call("t", "add", {"a": "two"})
        assert bad_arguments.is_error


async def test_a_hung_call_times_out_and_the_session_still_answers() -> None:
    async with running(stdio(), tool_timeout_s=0.5) as tools:
        started = time.monotonic()
        hung = asyncio.create_task(tools.call("t", "hang", {}))
        # Other calls on the same session answer while it hangs...
        assert (await tools.call("t", "echo", {"text": "meanwhile"})).output == "meanwhile"
        outcome = await hung
        assert outcome.is_error
        assert outcome.output == "The tool did not answer within 0.5 s."
        assert time.monotonic() - started < 5
        # ...and after it timed out.
        assert (await tools.call("t", "echo", {"text": "after"})).output == "after"


async def test_a_big_output_is_cut_to_the_bound_and_says_so() -> None:
    async with running(stdio(), tool_timeout_s=60.0, tool_output_max_bytes=65_536) as tools:
        outcome = await tools.call("t", "big", {})
        assert not outcome.is_error
        assert isinstance(outcome.output, str)
        assert len(outcome.output.encode()) <= 65_536
        assert outcome.output.startswith("0123456789abcdef")
        assert outcome.output.endswith("… [cut: 10 MiB of output exceeds the 64 KiB bound]")


async def test_a_cut_keeps_whole_characters_within_the_bound() -> None:
    async with running(stdio(), tool_output_max_bytes=100) as tools:
        outcome = await tools.call("t", "echo", {"text": "é" * 1000})
        encoded = outcome.output.encode()  # a cut inside a character would not decode
        assert len(encoded) <= 100
        assert outcome.output.startswith("éé")
        assert outcome.output.endswith("… [cut: 2 KiB of output exceeds the 100 bytes bound]")


async def test_an_unknown_tool_or_server_is_an_error_result() -> None:
    async with running(stdio()) as tools:
        unknown = await tools.call("t", "nope", {})
        assert unknown.is_error
        assert unknown.output == "The tool server 't' has no tool 'nope'."
        nowhere = await tools.call("elsewhere", "echo", {"text": "x"})
        assert nowhere.is_error


async def test_a_server_that_cannot_start_is_an_error_result_and_start_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = McpServerConfig(
        id="missing",
        command=("/nonexistent/turnstream-mcp-server", "--token=s3cret-arg"),
        env={"API_KEY": "s3cret-env"},
    )
    caplog.set_level(logging.INFO, logger="turnstream.tools")
    async with running(missing, stdio()) as tools:
        assert tools.is_up("t")
        assert not tools.is_up("missing")
        assert [t.server for t in tools.tools_for(["missing", "t"])][:1] == ["t"]
        outcome = await tools.call("missing", "echo", {"text": "x"})
        assert outcome.is_error
        assert outcome.output == "The tool server 'missing' is not available right now."
        assert (await tools.call("t", "echo", {"text": "x"})).output == "x"
    assert "'missing' did not start (cannot run it: No such file or directory)" in caplog.text
    assert "s3cret" not in caplog.text


async def test_a_server_that_never_answers_delays_start_only_by_the_start_timeout() -> None:
    # It neither answers nor exits when its stdin closes: it must be killed.
    sleeper = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    silent = McpServerConfig(id="silent", command=(sys.executable, "-c", sleeper))
    tools = McpTools({"silent": silent}, ToolSettings(tool_timeout_s=0.5), start_timeout_s=1.0)
    # The session's own children (an embedded nats-server, say) are none of the tools'.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    await tools.start()
    assert time.monotonic() - started < 6  # not the 4 s it then takes to kill it
    assert not tools.is_up("silent")
    outcome = await tools.call("silent", "echo", {"text": "x"})
    assert outcome.is_error
    children = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    await tools.aclose()
    assert children
    assert not [child for child in children if child.is_running()]


async def test_a_server_that_dies_during_a_call_is_an_error_then_starts_again() -> None:
    async with running(stdio()) as tools:
        [first] = server_processes()
        crashed = await tools.call("t", "crash", {})
        assert crashed.is_error
        assert crashed.output == "The tool server 't' stopped during the call."
        # The next call waits for the restart (within its timeout) and is answered.
        assert (await tools.call("t", "echo", {"text": "again"})).output == "again"
        [second] = server_processes()
        assert second.pid != first.pid


async def test_a_killed_server_is_started_again_in_the_background() -> None:
    async with running(stdio()) as tools:
        [first] = server_processes()
        first.kill()

        def restarted() -> bool:
            pids = [p.pid for p in server_processes()]
            return tools.is_up("t") and bool(pids) and first.pid not in pids

        await eventually(restarted)
        assert not psutil.pid_exists(first.pid)
        assert (await tools.call("t", "echo", {"text": "back"})).output == "back"


async def test_aclose_leaves_no_child_process() -> None:
    tools = McpTools({s.id: s for s in (stdio("a"), stdio("b"))}, ToolSettings(tool_timeout_s=20))
    await tools.start()
    assert len(server_processes()) == 2
    hung = asyncio.create_task(tools.call("a", "hang", {}))
    assert (await tools.call("b", "echo", {"text": "x"})).output == "x"
    await tools.aclose()
    assert server_processes() == []
    outcome = await hung
    assert outcome.is_error
    assert (await tools.call("b", "echo", {"text": "x"})).is_error


@pytest.fixture
async def http_server() -> AsyncIterator[str]:
    """The test server over streamable HTTP, in its own process, on a free port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", MARKER, "--http", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        assert line.startswith(b"PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        process.kill()
        await process.wait()


async def test_the_streamable_http_transport_calls_a_tool(http_server: str) -> None:
    async with running(McpServerConfig(id="web", url=http_server)) as tools:
        assert "weather" in {t.name for t in tools.tools_for(["web"])}
        outcome = await tools.call("web", "weather", {"city": "Oslo"})
        assert (outcome.output, outcome.is_error) == ("Oslo: 28 °C, clear", False)
