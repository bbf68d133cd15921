"""A real Chromium, driven by Playwright, against the service in the test's own process.

The machine's own Chromium (``TURNSTREAM_TEST_CHROMIUM``, else the first of
``chromium``, ``chromium-browser``, ``google-chrome`` on ``PATH``), never a browser
build that Playwright would download. Without one these tests fail and say how to
install it: a skipped browser test would look like a passing one. ``.ci/run``
installs Debian's ``chromium`` when it is missing.

The pages come from a second loopback HTTP server on other ports than the API's, so
that they are other origins, as a front end's pages are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from tests.api.conftest import ServerFactory
from tests.browser.playground import FAST, SLOW
from tests.conftest import NatsTarget
from tests.support.cluster import cluster
from tests.support.inprocess import InProcessServer
from tests.support.mcp_server import models_entry

PAGE = (Path(__file__).parent / "page.html").read_bytes()

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium the browser tests use, or None when the machine has none."""
    return os.environ.get("TURNSTREAM_TEST_CHROMIUM") or next(
        (path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None
    )


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail(
            "the browser tests need Chromium and found none on PATH "
            f"({', '.join(CHROMIUM_NAMES)}): install it (`apt-get install chromium`) "
            "or set TURNSTREAM_TEST_CHROMIUM to a Chromium or Chrome executable",
            pytrace=False,
        )
    return path


@pytest.fixture
def browser(chromium_path: str) -> Iterator[Browser]:
    # One per test, not per session: Playwright's sync API keeps an asyncio loop running
    # on this thread while it is open, and there asyncio.run() fails (the teardown of
    # the test's NATS stream uses it, and so do later tests). Listed after the server
    # fixtures, it is set up after them and closed before their teardown.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def make_server(
    database_url: str, db_schema: str, nats_target: NatsTarget, tmp_path: Path
) -> Iterator[ServerFactory]:
    """The API in this process, as in ``tests/api``: servers on this test's schema and
    stream; ``env`` are ``TURNSTREAM_*`` settings."""
    with cluster(InProcessServer, database_url, db_schema, nats_target, tmp_path) as make:
        yield make


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """``page.html`` from a loopback port of its own; yields its origin."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="session")
def app_origin() -> Iterator[str]:
    """The origin of the front end's pages: the one the server is told to allow."""
    with page_server() as origin:
        yield origin


@pytest.fixture(scope="session")
def other_origin() -> Iterator[str]:
    """Another site's pages: an origin the server does not allow."""
    with page_server() as origin:
        yield origin


@dataclass
class OpenPage:
    page: Page
    console: list[str] = field(default_factory=list)
    """What the browser logged, its own CORS errors too."""


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Any]:
    """``open_page(origin)``: a fresh browser context's page loaded from that origin."""
    contexts = []

    def open_at(origin: str) -> OpenPage:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        opened = OpenPage(page)

        def log(message: ConsoleMessage) -> None:
            opened.console.append(message.text)

        page.on("console", log)
        page.goto(f"{origin}/")
        page.wait_for_function("typeof follow === 'function'")
        return opened

    yield open_at
    for context in contexts:
        context.close()


# The playground's servers: the demo model at three paces, and with MCP tools.


@pytest.fixture
def fast(make_server: ServerFactory) -> InProcessServer:
    return make_server(**FAST)


@pytest.fixture
def paced(make_server: ServerFactory) -> InProcessServer:
    """About four seconds of answer: long enough to see it stream."""
    return make_server(TURNSTREAM_DEMO_TOKENS="60", TURNSTREAM_DEMO_TOKENS_PER_S="15")


@pytest.fixture
def slow(make_server: ServerFactory) -> InProcessServer:
    return make_server(**SLOW)


@pytest.fixture
def tools(make_server: ServerFactory, tmp_path: Path) -> InProcessServer:
    """The demo model with the test MCP server's tools; ``weather`` needs approval."""
    models = tmp_path / "models.toml"
    models.write_text(
        models_entry("tools", ["weather"])
        + '\n[[models]]\nid = "demo"\nprovider = "demo"\ndefault = true\n'
        + 'mcp_servers = ["tools"]\n'
    )
    return make_server(TURNSTREAM_MODELS=str(models), **FAST)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (its own sessionStorage), the README's window size. The
    servers' fixtures come first in each test: they start before Playwright's loop runs
    on this thread, and stop after it has closed (see ``browser``)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        yield ctx
    finally:
        ctx.close()
