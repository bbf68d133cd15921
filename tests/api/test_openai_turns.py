"""Turns answered by an OpenAI-compatible server (a real local one), end to end."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_turn_stream import new_conversation, run_turn
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from tests.support.server import Server


@pytest.fixture
def llm_server(make_server: ServerFactory, fake_openai: FakeOpenAI, tmp_path: Path) -> Server:
    models = tmp_path / "models.toml"
    models.write_text(
        f"""
[[models]]
id = "local"
provider = "openai"
base_url = "{fake_openai.base_url}"
model = "served-name"
context_window = 4096
default = true
"""
    )
    return make_server(TURNSTREAM_MODELS=str(models))


def test_the_model_sees_the_conversation_and_streams_text_reasoning_and_usage(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(chunks=["Hel", "lo", " there"], reasoning=["think", "ing"], usage=(11, 5))
    cid = new_conversation(llm_server, system_prompt="Be kind.")
    first = run_turn(llm_server, cid, "Hi!")
    assert [f.event for f in first if f.event in ("reasoning", "token")][:1] == ["reasoning"]
    final = first[-1]
    assert final.event == "final"
    assert final.data["text"] == "Hello there"
    assert final.data["reasoning"] == "thinking"
    assert final.data["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "estimated": False}

    fake_openai.script(chunks=["Fine", "."], usage=None)
    second = run_turn(llm_server, cid, "How are you?")
    assert second[-1].data["text"] == "Fine."
    assert second[-1].data["usage"]["estimated"] is True
    sent = fake_openai.requests[-1]
    assert sent["model"] == "served-name"
    assert sent["stream"] is True
    assert sent["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "How are you?"},
    ]


def test_a_provider_failure_mid_answer_ends_the_turn_with_error_and_the_partial_text(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(chunks=["Part", "ial", " answer", " never", " ends"], break_after=3)
    cid = new_conversation(llm_server)
    frames = run_turn(llm_server, cid, "Go")
    end = frames[-1]
    assert end.event == "error"
    assert end.data["code"] == "provider_error"
    assert end.data["text"] == "Partial answer"
    assert end.data["text"] == "".join(f.data["text"] for f in frames if f.event == "token")
    view = httpx.get(f"{llm_server.base_url}/v1/conversations/{cid}", headers=llm_server.headers())
    assistant = view.json()["messages"][-1]
    assert assistant["status"] == "failed"
    assert assistant["content"] == "Partial answer"


def test_a_refusing_provider_fails_the_turn_without_leaking_secrets(
    llm_server: Server, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(status=503, error_message="overloaded")
    cid = new_conversation(llm_server)
    frames = run_turn(llm_server, cid, "Go")
    assert frames[-1].event == "error"
    assert "503" in frames[-1].data["message"]
    assert frames[-1].data["text"] == ""
    # A new turn works once the provider is back.
    fake_openai.script(chunks=["ok"])
    assert run_turn(llm_server, cid, "Again")[-1].data["text"] == "ok"


def test_a_title_model_writes_the_first_turns_title(
    make_server: ServerFactory, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    models = tmp_path / "titled.toml"
    models.write_text(
        f"""
[[models]]
id = "local"
provider = "openai"
base_url = "{fake_openai.base_url}"
default = true
title_model = "local"
"""
    )
    server = make_server(TURNSTREAM_MODELS=str(models))
    fake_openai.script(chunks=['"Greeting', ' the user"'])
    cid = new_conversation(server)
    frames = run_turn(server, cid, "hello hello hello")
    titles = [f.data["title"] for f in frames if f.event == "title"]
    assert titles == ["Greeting the user"]
    assert frames[-1].event == "final"
    assert len(fake_openai.requests) == 2  # the answer and the title
