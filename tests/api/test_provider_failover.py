"""A model that fails before its first token: retried, then its fallbacks answer.

Against a real local HTTP server that speaks the OpenAI streaming format (and its error
bodies, as vLLM, Ollama and llama.cpp send them), through the service's own API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ServerFactory
from tests.api.test_metrics import scrape, value
from tests.api.test_turn_stream import new_conversation, run_turn
from tests.support.fake_openai import FakeOpenAI, Script
from tests.support.fake_openai import fake_openai as fake_openai  # the fixture
from tests.support.server import Server


def models_file(tmp_path: Path, fake: FakeOpenAI, **local: Any) -> Path:
    """``local`` (the fake server; its settings from ``local``) as the default model."""
    extra = "".join(f"{key} = {_toml(value)}\n" for key, value in local.items())
    path = tmp_path / "models.toml"
    path.write_text(
        f"""
[[models]]
id = "local"
provider = "openai"
base_url = "{fake.base_url}"
default = true
retry_backoff_s = 0.01
{extra}
[[models]]
id = "spare"
provider = "demo"
"""
    )
    return path


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)


@pytest.fixture
def serve(make_server: ServerFactory, fake_openai: FakeOpenAI, tmp_path: Path) -> Any:
    def start(**local: Any) -> Server:
        return make_server(
            TURNSTREAM_MODELS=str(models_file(tmp_path, fake_openai, **local)),
            TURNSTREAM_DEMO_TOKENS="8",
            TURNSTREAM_DEMO_TOKENS_PER_S="0",
        )

    return start


def tree_answer(server: Server, cid: str) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers())
    assert r.status_code == 200, r.text
    answers = [m for m in r.json()["messages"] if m["role"] == "assistant"]
    assert len(answers) == 1
    return dict(answers[0])


def test_a_server_that_answers_503_twice_then_streams_gives_one_turn(
    serve: Any, fake_openai: FakeOpenAI
) -> None:
    server = serve()
    fake_openai.queue(Script(status=503), Script(status=503))
    fake_openai.script(chunks=["Third", " time", " lucky"])
    cid = new_conversation(server)

    frames = run_turn(server, cid, "Hello?")
    assert [f.event for f in frames].count("turn.started") == 1
    assert "model.fallback" not in [f.event for f in frames]
    assert frames[-1].event == "final"
    assert frames[-1].data["text"] == "Third time lucky"
    assert [f.id for f in frames] == list(range(1, len(frames) + 1))
    assert len(fake_openai.requests) == 3
    metrics = scrape(server)
    retried = value(
        metrics, "turnstream_provider_retries_total", model="local", code="provider_error"
    )
    assert retried == 2
    assert tree_answer(server, cid)["model"] == "local"


def test_a_server_that_always_fails_hands_the_turn_to_the_fallback(
    serve: Any, fake_openai: FakeOpenAI
) -> None:
    server = serve(retries=1, fallback=["spare"])
    fake_openai.script(status=503, error_message="overloaded")
    cid = new_conversation(server)

    frames = run_turn(server, cid, "Hello?")
    events = [f.event for f in frames]
    assert frames[0].data["model"] == "local"  # turn.started keeps the model asked for
    fell = [f for f in frames if f.event == "model.fallback"]
    assert len(fell) == 1
    assert fell[0].data["model"] == "spare"
    assert fell[0].data["from_model"] == "local"
    assert fell[0].data["code"] == "provider_error"
    assert "503" in fell[0].data["message"]
    assert "overloaded" in fell[0].data["message"]
    assert events.index("model.fallback") < events.index("token")
    assert frames[-1].event == "final"
    assert frames[-1].data["status"] == "completed"
    assert frames[-1].data["text"]
    assert len(fake_openai.requests) == 2  # the first try and its one retry

    answer = tree_answer(server, cid)
    assert answer["model"] == "spare"  # the tree names the model that wrote the answer
    assert answer["content"] == frames[-1].data["text"]
    metrics = scrape(server)
    assert value(metrics, "turnstream_provider_fallbacks_total", model="local", fallback="spare")
    assert (
        value(metrics, "turnstream_provider_fallbacks_total", model="local", fallback="spare") == 1
    )


def test_a_refusal_is_not_retried_and_without_a_fallback_fails_the_turn(
    serve: Any, fake_openai: FakeOpenAI
) -> None:
    server = serve()
    fake_openai.script(status=400, error_message="context too long")
    cid = new_conversation(server)

    frames = run_turn(server, cid, "Hello?")
    assert frames[-1].event == "error"
    assert frames[-1].data["code"] == "provider_error"
    assert "context too long" in frames[-1].data["message"]
    assert len(fake_openai.requests) == 1


def test_after_the_first_token_a_failure_ends_the_turn_without_a_retry(
    serve: Any, fake_openai: FakeOpenAI
) -> None:
    server = serve(fallback=["spare"])
    fake_openai.script(chunks=["Part", "ial", " answer", "s"], break_after=2)
    cid = new_conversation(server)

    frames = run_turn(server, cid, "Hello?")
    assert frames[-1].event == "error"
    assert frames[-1].data["text"] == "Partial"
    assert "model.fallback" not in [f.event for f in frames]
    assert len(fake_openai.requests) == 1
    assert tree_answer(server, cid)["content"] == "Partial"


def test_a_retry_after_longer_than_a_minute_goes_to_the_fallback_at_once(
    serve: Any, fake_openai: FakeOpenAI
) -> None:
    server = serve(retries=3, fallback=["spare"])
    fake_openai.script(status=429, retry_after="3600")
    cid = new_conversation(server)

    frames = run_turn(server, cid, "Hello?")
    assert frames[-1].event == "final"
    assert [f.data["model"] for f in frames if f.event == "model.fallback"] == ["spare"]
    assert len(fake_openai.requests) == 1
