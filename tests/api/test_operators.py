"""``/metrics`` for operators only when ``TURNSTREAM_METRICS_TOKEN`` is set; open otherwise."""

from __future__ import annotations

import httpx

from tests.api.conftest import ServerFactory
from tests.api.test_bad_input import assert_problem
from tests.support.server import Server

TOKEN = "scrape-me-6f1d0c"


def test_metrics_are_open_without_a_metrics_token(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/metrics")
    assert r.status_code == 200, r.text
    assert "turnstream_log_head_position" in r.text


def test_with_a_metrics_token_only_its_bearer_reads_the_metrics(
    make_server: ServerFactory,
) -> None:
    server = make_server(TURNSTREAM_METRICS_TOKEN=TOKEN)
    url = f"{server.base_url}/metrics"
    refused = {
        "none": {},
        "wrong": {"Authorization": f"Bearer {TOKEN}x"},
        "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
        "no scheme": {"Authorization": TOKEN},
        "basic": {"Authorization": f"Basic {TOKEN}"},
        "a user's token": server.headers(),
        "not ascii": {"Authorization": "Bearer sécret".encode()},
    }
    for name, headers in refused.items():
        r = httpx.get(url, headers=headers)
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer", name
        assert TOKEN not in r.text, name

    r = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert 'turnstream_rejected_requests_total{code="unauthorized"}' in r.text
    assert httpx.get(url, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200

    # The probes stay open; the token is not handed on in the settings of child processes.
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    assert httpx.get(f"{server.base_url}/readyz").status_code == 200
    assert TOKEN not in server.settings().to_env().values()
