"""What the playground's browser tests share: how to open the page, send, and hold what
it shows against what the API stores. Every wait is on a DOM state, never a sleep."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Locator, Page, expect

from tests.support.inprocess import InProcessServer
from tests.support.server import Frame, parse_sse

WAIT_MS = 20_000
# A busy machine (a CI run beside this one) is slow to paint: wait long, never sleep.
expect.set_options(timeout=WAIT_MS)

ANSWER = "#messages article.message[data-role=assistant]"
QUESTION = "#messages article.message[data-role=user]"
ASK = "Tell me about event sourcing."
FAST = {"TURNSTREAM_DEMO_TOKENS": "24", "TURNSTREAM_DEMO_TOKENS_PER_S": "0"}
SLOW = {"TURNSTREAM_DEMO_TOKENS": "200", "TURNSTREAM_DEMO_TOKENS_PER_S": "20"}
"""About ten seconds of answer: time to reload or stop in the middle of it."""
PNG = b"\x89PNG\r\n\x1a\n"


def open_playground(
    context: BrowserContext,
    server: InProcessServer,
    user: str = "alice",
    cid: str | None = None,
    base: str | None = None,
) -> Page:
    """A new page of ``context`` at ``/playground#token=…`` (``&c=`` to open ``cid``),
    once it has moved the token out of the address; from ``base`` (a proxy of the
    server) instead of the server's own address when given."""
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    fragment = f"token={server.token('acme', user)}" + (f"&c={cid}" if cid else "")
    page.goto(f"{base or server.base_url}/playground#{fragment}")
    page.wait_for_function("() => !location.hash.includes('token=')")
    return page


def send(page: Page, text: str) -> None:
    page.locator("#message").fill(text)
    page.locator("#message").press("Enter")


def open_cid(page: Page) -> str:
    """The open conversation's id, from the address the page rewrote to ``#c=<cid>``."""
    page.wait_for_function("() => /^#c=[0-9a-f-]{36}$/.test(location.hash)")
    return str(page.evaluate("() => location.hash.slice(3)"))


def wait_streaming(page: Page) -> str:
    """Wait until the answer is streaming with some text shown; returns that text."""
    page.wait_for_function(
        """sel => { const a = document.querySelector(sel);
                    return !!a && a.dataset.status === "streaming"
                        && a.querySelector(".content").textContent.length > 0; }""",
        arg=ANSWER,
    )
    return str(page.locator(f"{ANSWER} .content").text_content())


def api(server: InProcessServer, path: str, user: str = "alice") -> Any:
    r = httpx.get(f"{server.base_url}{path}", headers=server.headers("acme", user), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def stored(server: InProcessServer, cid: str, mid: str | None) -> dict[str, Any]:
    """The message ``mid`` as the API stores it."""
    messages = api(server, f"/v1/conversations/{cid}")["messages"]
    found: dict[str, Any] = next(m for m in messages if m["id"] == mid)
    return found


def turn_frames(server: InProcessServer, cid: str, tid: str) -> list[Frame]:
    """All of a finished turn's frames, from its events stream."""
    with httpx.stream(
        "GET",
        f"{server.base_url}/v1/conversations/{cid}/turns/{tid}/events",
        headers=server.headers(),
        timeout=30,
    ) as r:
        assert r.status_code == 200, r.read()
        return [f for f in parse_sse(r.iter_lines()) if isinstance(f, Frame)]


def finished_answer(
    page: Page, server: InProcessServer, cid: str, status: str, answer: Locator | None = None
) -> Frame:
    """Wait for the answer (the only one, unless ``answer`` picks one) to reach
    ``status``; returns its turn's ``final`` frame, after checking that the page shows
    exactly its text and the API stores the same."""
    answer = answer or page.locator(ANSWER)
    expect(answer).to_have_attribute("data-status", status)
    message = stored(server, cid, answer.get_attribute("data-id"))
    final = turn_frames(server, cid, message["turn_id"])[-1]
    assert final.event == "final"
    expect(answer.locator(".content")).to_have_text(final.data["text"])
    assert answer.locator(".content").text_content() == final.data["text"] == message["content"]
    return final


def pane(page: Page, tid: str) -> list[list[Any]]:
    """The events pane's frames of turn ``tid``, in the order shown: ``[seq, event]``."""
    shown: list[list[Any]] = page.evaluate(
        """tid => [...document.querySelectorAll(`#events li.frame[data-turn="${tid}"]`)]
                  .map(li => [Number(li.dataset.seq), li.dataset.event])""",
        tid,
    )
    return shown
