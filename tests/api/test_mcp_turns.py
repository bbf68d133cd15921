"""Server tools in turns: an MCP server written with the SDK (stdio), called by turnstream
for the model; approvals wait for a person, a refusal reaches the model, a hung tool
times out as an error result and a huge one is cut to the bound."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_tools import follow_until_pause, start_until_waiting, view
from tests.api.test_turn_stream import new_conversation, resume, run_turn
from tests.support.fake_openai import FakeOpenAI, Script, ToolCallScript
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from tests.support.mcp_server import models_entry
from tests.support.server import Server


@pytest.fixture
def mcp_models(fake_openai: FakeOpenAI, tmp_path: Path) -> Path:
    """A models file: the test MCP server (stdio; ``echo`` needs approval) for a model
    the fake OpenAI server answers for."""
    models = tmp_path / "models.toml"
    models.write_text(
        models_entry("files", ["echo"])
        + f"""
[[models]]
id = "local"
provider = "openai"
base_url = "{fake_openai.base_url}"
default = true
mcp_servers = ["files"]
"""
    )
    return models


@pytest.fixture
def mcp_server(make_server: ServerFactory, mcp_models: Path) -> Server:
    return make_server(TURNSTREAM_MODELS=str(mcp_models), TURNSTREAM_TOOL_TIMEOUT_S="1")


def calls(*tools: tuple[str, str, str]) -> Script:
    return Script(
        chunks=[],
        tool_calls=[ToolCallScript(name=n, id=i, arguments_chunks=[a]) for n, i, a in tools],
        finish_reason="tool_calls",
    )


def decide(server: Server, cid: str, tid: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/approvals",
        json=body,
        headers=server.headers(),
    )


def test_the_models_mcp_tools_are_offered_with_their_schemas(
    mcp_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(chunks=["Hi."])
    run_turn(mcp_server, new_conversation(mcp_server), "Hello")
    offered = {t["function"]["name"]: t for t in fake_openai.requests[0]["tools"]}
    assert {"echo", "add", "hang", "big"} <= set(offered)
    add = offered["add"]["function"]["parameters"]
    assert add["properties"]["a"]["type"] == "integer"


def test_a_call_that_needs_approval_waits_and_a_refusal_reaches_the_model(
    mcp_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(
        calls(("echo", "call_e", '{"text": "rm -rf"}')),
        Script(chunks=["Understood, ", "I will not."]),
    )
    cid = new_conversation(mcp_server)
    frames, waiting = start_until_waiting(mcp_server, cid, "Echo this")
    tid = frames[0].data["turn_id"]
    call = next(f for f in frames if f.event == "tool_call")
    assert call.data["kind"] == "server"
    assert call.data["server"] == "files"
    assert [f.data for f in frames if f.event == "approval.requested"] == [
        {"seq": frames[-3].id, "turn_id": tid, "call_id": "call_e", "name": "echo"}
    ]
    assert waiting.data["reason"] == "approval"
    assert view(mcp_server, cid)["active_turn"]["waiting"]["reason"] == "approval"
    # A result from the client is not how a server call is answered.
    r = httpx.post(
        f"{mcp_server.base_url}/v1/conversations/{cid}/turns/{tid}/tool-results",
        json={"results": [{"call_id": "call_e", "output": "fake"}]},
        headers=mcp_server.headers(),
    )
    assert r.status_code == 409
    assert r.json()["code"] == "tool_call_not_pending"

    refused = decide(mcp_server, cid, tid, {"call_id": "call_e", "approved": False, "reason": "no"})
    assert refused.status_code == 202
    assert refused.json()["continues"] is True
    rest = resume(mcp_server, cid, tid, header=waiting.id)
    assert [f.event for f in rest[:2]] == ["approval.decided", "tool_result"]
    assert rest[0].data["approved"] is False
    assert rest[0].data["by"] == "alice"
    assert rest[1].data["is_error"] is True
    assert rest[-1].data["text"] == "Understood, I will not."
    told = fake_openai.requests[1]["messages"][-1]
    assert told["role"] == "tool"
    assert told["tool_call_id"] == "call_e"
    assert "refused" in told["content"]
    assert "no" in told["content"]
    again = decide(mcp_server, cid, tid, {"call_id": "call_e", "approved": True})
    assert again.status_code == 409


def test_an_approved_call_runs_on_the_node_that_took_the_approval(
    mcp_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(
        calls(("echo", "call_e", '{"text": "hello there"}')), Script(chunks=["Done."])
    )
    cid = new_conversation(mcp_server)
    frames, waiting = start_until_waiting(mcp_server, cid, "Echo hello there")
    tid = frames[0].data["turn_id"]
    assert decide(mcp_server, cid, tid, {"call_id": "call_e", "approved": True}).status_code == 202
    rest = follow_until_pause(mcp_server, cid, tid, waiting.id or 0)
    result = next(f for f in rest if f.event == "tool_result")
    assert result.data == {"seq": result.id, "turn_id": tid, "call_id": "call_e",
                           "output": "hello there", "is_error": False}  # fmt: skip
    assert rest[-1].event == "final"
    told = fake_openai.requests[1]["messages"][-1]
    assert told == {"role": "tool", "tool_call_id": "call_e", "content": "hello there"}


def test_a_hung_tool_times_out_as_an_error_result_and_the_turn_goes_on(
    mcp_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue(
        calls(("hang", "call_h", "{}"), ("add", "call_a", '{"a": 2, "b": 3}')),
        Script(chunks=["One of two failed."]),
    )
    frames = run_turn(mcp_server, new_conversation(mcp_server), "Run them both")
    assert "waiting" not in [f.event for f in frames]  # server tools without approval
    results = {f.data["call_id"]: f.data for f in frames if f.event == "tool_result"}
    assert results["call_h"]["is_error"] is True
    assert "did not answer within 1 s" in results["call_h"]["output"]
    assert results["call_a"]["output"] == "5"
    assert results["call_a"]["is_error"] is False
    assert frames[-1].event == "final"
    assert frames[-1].data["text"] == "One of two failed."
    sent = {m["tool_call_id"]: m["content"] for m in fake_openai.requests[1]["messages"][-2:]}
    assert sent["call_a"] == "5"
    assert sent["call_h"].startswith("Error: The tool did not answer")


def test_a_tool_that_returns_10_mb_is_cut_to_the_bound(
    make_server: ServerFactory, mcp_models: Path, fake_openai: FakeOpenAI
) -> None:
    server = make_server(
        TURNSTREAM_MODELS=str(mcp_models),
        TURNSTREAM_TOOL_TIMEOUT_S="60",  # reading 10 MB over stdio takes the SDK seconds
        TURNSTREAM_TOOL_OUTPUT_MAX_BYTES="2000",
    )
    fake_openai.queue(calls(("big", "call_b", "{}")), Script(chunks=["That was long."]))
    frames = run_turn(server, new_conversation(server), "Big one")
    result = next(f for f in frames if f.event == "tool_result")
    big = result.data["output"]
    assert result.data["is_error"] is False
    assert len(big.encode()) <= 2000
    assert "[cut: 10 MiB of output" in big
    assert fake_openai.requests[1]["messages"][-1]["content"] == big
    assert frames[-1].data["text"] == "That was long."
