"""``/metrics`` of a served instance: turns, tokens, streams, writer, relay, rejections."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ServerFactory
from tests.api.test_bad_input import assert_problem
from tests.api.test_turn_stream import new_conversation, resume, run_turn
from tests.support.server import Frame, Server, parse_sse

MODELS = """
[[models]]
id = "short"
provider = "demo"
max_output_tokens = 12
"""
"""``short`` ends after a dozen tokens; ``demo`` (2000 tokens) runs until cancelled."""


def scrape(server: Server) -> dict[str, Metric]:
    r = httpx.get(f"{server.base_url}/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {m.name: m for m in text_string_to_metric_families(r.text)}


def value(metrics: dict[str, Metric], sample: str, **labels: str) -> float | None:
    """The value of the sample named ``sample`` with exactly ``labels`` (None if absent)."""
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    for s in metrics[family].samples:
        if s.name == sample and s.labels == labels:
            return float(s.value)
    return None


def eventually(
    server: Server, check: Callable[[dict[str, Metric]], bool], timeout: float = 30.0
) -> dict[str, Metric]:
    """Scrape until ``check`` holds (the scrape it held on), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(server)
        if check(metrics):
            return metrics
        assert time.monotonic() < deadline, "the metrics did not get there in time"
        time.sleep(0.1)


def test_metrics_count_turns_tokens_streams_commits_and_rejections(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    server = make_server(
        TURNSTREAM_MODELS=str(models),
        TURNSTREAM_DEMO_TOKENS="2000",
        TURNSTREAM_DEMO_TOKENS_PER_S="50",
    )
    base = server.base_url

    # Every family is there from the start, with nothing counted yet.
    metrics = scrape(server)
    for name, kind in {
        "turnstream_time_to_first_token_seconds": "histogram",
        "turnstream_time_per_output_token_seconds": "histogram",
        "turnstream_turn_duration_seconds": "histogram",
        "turnstream_prompt_tokens": "counter",
        "turnstream_completion_tokens": "counter",
        "turnstream_active_turns": "gauge",
        "turnstream_open_sse_streams": "gauge",
        "turnstream_writer_batch_events": "histogram",
        "turnstream_writer_commit_seconds": "histogram",
        "turnstream_relay_checkpoint_position": "gauge",
        "turnstream_relay_lag_events": "gauge",
        "turnstream_rejected_requests": "counter",
        "turnstream_log_head_position": "gauge",
        "turnstream_projection_lag_events": "gauge",
    }.items():
        assert metrics[name].type == kind, name
    assert value(metrics, "turnstream_active_turns") == 0
    assert value(metrics, "turnstream_open_sse_streams") == 0

    # Start a long turn and hold its stream open: one active turn, one open stream.
    long_cid = new_conversation(server)
    with httpx.stream(
        "POST",
        f"{base}/v1/conversations/{long_cid}/turns",
        json={"content": "Tell me everything."},
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200, r.read()
        # Keep the reader: dropping it would close the connection.
        reader = parse_sse(r.iter_lines())
        first = next(f for f in reader if isinstance(f, Frame) and f.event == "token")
        metrics = scrape(server)
        assert value(metrics, "turnstream_active_turns") == 1
        assert value(metrics, "turnstream_open_sse_streams") == 1
    # The client went away mid-stream; its stream closes, the turn runs on. Cancel it.
    long_tid = first.data["turn_id"]
    cancel = f"{base}/v1/conversations/{long_cid}/turns/{long_tid}/cancel"
    assert httpx.post(cancel, headers=server.headers()).status_code == 202
    cancelled = resume(server, long_cid, long_tid, header=0)[-1]
    assert cancelled.event == "final"
    assert cancelled.data["status"] == "interrupted"

    # Three short turns that complete.
    short_cid = new_conversation(server, model="short")
    finals = [run_turn(server, short_cid, f"Question {i}?")[-1] for i in range(3)]
    assert all(f.event == "final" and f.data["status"] == "completed" for f in finals)

    # Rejected requests: two without a valid token, two for what is not there.
    assert_problem(httpx.get(f"{base}/v1/models"), 401, "unauthorized")
    bad = {"Authorization": "Bearer nope"}
    assert_problem(httpx.get(f"{base}/v1/conversations", headers=bad), 401, "unauthorized")
    missing = f"{base}/v1/conversations/00000000-0000-7000-8000-000000000000"
    assert_problem(httpx.get(missing, headers=server.headers()), 404, "conversation_not_found")
    assert_problem(httpx.get(f"{base}/v1/nowhere", headers=server.headers()), 404, "not_found")

    # Once every runner and stream has ended and the relay has caught up:
    metrics = eventually(
        server,
        lambda m: (
            value(m, "turnstream_active_turns") == 0
            and value(m, "turnstream_open_sse_streams") == 0
            and value(m, "turnstream_relay_lag_events") == 0
        ),
    )
    head = value(metrics, "turnstream_log_head_position")
    assert head is not None
    assert head > 0
    assert value(metrics, "turnstream_relay_checkpoint_position") == head

    # Each turn is timed once, by model and by how it ended.
    duration = "turnstream_turn_duration_seconds_count"
    assert value(metrics, duration, model="short", status="completed") == 3
    assert value(metrics, duration, model="demo", status="interrupted") == 1
    assert value(metrics, duration, model="demo", status="completed") is None
    ttft = "turnstream_time_to_first_token_seconds_count"
    assert value(metrics, ttft, model="short") == 3
    assert value(metrics, ttft, model="demo") == 1
    # Time per output token: completed turns only (a cancelled turn's count is estimated).
    tpot = "turnstream_time_per_output_token_seconds"
    assert value(metrics, f"{tpot}_count", model="short") == 3
    sum_ = value(metrics, f"{tpot}_sum", model="short")
    assert sum_ is not None
    assert sum_ > 0
    assert value(metrics, f"{tpot}_count", model="demo") is None

    # Tokens are the usage of the final frames.
    for model, ended in (("short", finals), ("demo", [cancelled])):
        for kind in ("prompt", "completion"):
            counted = value(metrics, f"turnstream_{kind}_tokens_total", model=model)
            assert counted == sum(f.data["usage"][f"{kind}_tokens"] for f in ended), (model, kind)

    # The writer committed in batches, each timed.
    batches = value(metrics, "turnstream_writer_batch_events_count")
    assert batches is not None
    assert batches > 0
    events = value(metrics, "turnstream_writer_batch_events_sum")
    assert events is not None
    assert events >= batches
    assert value(metrics, "turnstream_writer_commit_seconds_count") == batches

    # Every problem response is counted by its code, and nothing else is.
    rejected = {
        s.labels["code"]: s.value
        for s in metrics["turnstream_rejected_requests"].samples
        if s.name == "turnstream_rejected_requests_total"
    }
    assert rejected == {"unauthorized": 2, "conversation_not_found": 1, "not_found": 1}
