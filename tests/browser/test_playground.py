"""The playground page (``/playground``) in a real Chromium, against the service itself.

The page is same-origin with the API and a client of it like any other, so each test
drives it as a person would (type, press Enter, click) and holds what it shows against
what the API stores: the answer's text against the turn's ``final`` frame, its frames
against the turn's events. The demo model is offline and deterministic; its pace
(``TURNSTREAM_DEMO_TOKENS_PER_S``) makes a turn last long enough to reload or stop it.

Every wait is on a DOM state (``expect``, ``wait_for_function``), never a sleep.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Browser, BrowserContext, Request, expect

from tests.browser.playground import (
    ANSWER,
    ASK,
    PNG,
    QUESTION,
    api,
    finished_answer,
    open_cid,
    open_playground,
    pane,
    send,
    stored,
    turn_frames,
    wait_streaming,
)
from tests.support.inprocess import InProcessServer


def test_a_sent_message_streams_its_answer_and_the_title_arrives(
    paced: InProcessServer, context: BrowserContext
) -> None:
    server = paced
    page = open_playground(context, server)
    expect(page.locator("#title")).to_have_text("New conversation")
    send(page, ASK)

    # The answer is seen while it streams (some text, not the whole), then complete.
    partial = wait_streaming(page)
    expect(page.locator("#status")).to_have_attribute("data-state", "streaming")
    cid = open_cid(page)
    final = finished_answer(page, server, cid, "complete")
    assert final.data["status"] == "completed"
    assert final.data["text"].startswith(partial)
    assert partial != final.data["text"]
    expect(page.locator("#status")).to_have_attribute("data-state", "idle")
    expect(page.locator(QUESTION)).to_have_count(1)
    expect(page.locator(f"{QUESTION} .content")).to_have_text(ASK)
    expect(page.locator(QUESTION)).to_have_attribute("data-status", "complete")
    reasoning = page.locator(f"{ANSWER} details.reasoning")
    expect(reasoning.locator("summary")).to_have_text("Reasoning")
    assert reasoning.locator(".reasoning-text").text_content() == final.data["reasoning"]

    # The generated title, live in the heading and in the list.
    title = api(server, f"/v1/conversations/{cid}")["title"]
    assert title
    expect(page.locator("#title")).to_have_text(title)
    expect(page.locator(f"li.conversation[data-id='{cid}'] button.open")).to_have_text(title)

    # The usage shown is the API's, refreshed after the turn.
    day = api(server, "/v1/usage")["day"]["total_tokens"]
    assert day > 0
    page.wait_for_function(
        """day => document.querySelector("#usage dd[data-key=day_tokens]")
                  ?.textContent.replace(/\\D/g, "") === String(day)""",
        arg=day,
    )


def test_a_reload_mid_turn_resumes_the_answer_without_a_gap_or_a_repeat(
    slow: InProcessServer, context: BrowserContext
) -> None:
    server = slow
    page = open_playground(context, server)
    send(page, ASK)
    before = wait_streaming(page)
    cid = open_cid(page)
    tid = page.locator("#events li.frame").first.get_attribute("data-turn")
    assert tid

    requests: list[tuple[str, str | None]] = []

    def record(request: Request) -> None:
        requests.append((request.url, request.headers.get("last-event-id")))

    page.on("request", record)
    page.reload()

    # The page resumed the same turn from the last frame it had rendered.
    final = finished_answer(page, server, cid, "complete")
    assert final.data["text"].startswith(before)
    resumed = [last for url, last in requests if f"/turns/{tid}/events" in url]
    assert resumed, requests
    assert resumed[0] is not None, resumed
    assert int(resumed[0]) >= 1, resumed
    expect(page.locator(ANSWER)).to_have_count(1)
    expect(page.locator(QUESTION)).to_have_count(1)
    assert open_cid(page) == cid

    # Its frames: every one of the turn's once, in order, as the API has them.
    shown = pane(page, tid)
    frames = turn_frames(server, cid, tid)
    assert [s for s, _ in shown] == list(range(1, final.data["seq"] + 1))
    assert shown == [[f.id, f.event] for f in frames]


def test_retry_makes_a_second_branch_and_the_arrows_move_between_them(
    fast: InProcessServer, context: BrowserContext
) -> None:
    server = fast
    page = open_playground(context, server)
    send(page, ASK)
    cid = open_cid(page)
    finished_answer(page, server, cid, "complete")
    answer = page.locator(ANSWER)
    first = answer.get_attribute("data-id")
    expect(answer.locator("nav.branch")).to_have_count(0)

    answer.locator("button.retry").click()
    expect(answer).not_to_have_attribute("data-id", str(first))
    finished_answer(page, server, cid, "complete")
    second = answer.get_attribute("data-id")
    expect(answer).to_have_count(1)
    messages = api(server, f"/v1/conversations/{cid}")["messages"]
    answers = {m["id"]: m for m in messages if m["role"] == "assistant"}
    assert set(answers) == {first, second}
    assert answers[str(first)]["parent_id"] == answers[str(second)]["parent_id"]

    position = answer.locator("nav.branch span.position")
    expect(position).to_have_text("2 / 2")
    for button, mid, at in (("prev", first, "1 / 2"), ("next", second, "2 / 2")):
        answer.locator(f"nav.branch button.{button}").click()
        expect(answer).to_have_attribute("data-id", str(mid))
        expect(position).to_have_text(at)
        text = answers[str(mid)]["content"]
        expect(answer.locator(".content")).to_have_text(text)
        assert answer.locator(".content").text_content() == text


def test_escape_stops_the_turn_and_keeps_its_partial_answer(
    slow: InProcessServer, context: BrowserContext
) -> None:
    server = slow
    page = open_playground(context, server)
    expect(page.locator("#stop")).to_be_disabled()
    send(page, ASK)
    wait_streaming(page)
    expect(page.locator("#stop")).to_be_enabled()
    cid = open_cid(page)

    page.locator("#message").press("Escape")
    final = finished_answer(page, server, cid, "interrupted")
    assert final.data["status"] == "interrupted"
    assert final.data["text"]  # the partial text, shown and stored
    assert stored(server, cid, page.locator(ANSWER).get_attribute("data-id"))["status"] == (
        "interrupted"
    )
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#status")).to_have_attribute("data-state", "idle")


def test_a_server_tool_waits_for_approval_and_approving_completes_the_turn(
    tools: InProcessServer, context: BrowserContext
) -> None:
    server = tools
    page = open_playground(context, server)
    send(page, "Call the weather tool for Oslo")
    cid = open_cid(page)

    tool = page.locator(f"{ANSWER} .tools div.tool")
    expect(tool.locator("button.approve")).to_be_visible()
    expect(tool.locator("button.refuse")).to_be_visible()
    expect(tool).to_have_count(1)
    expect(tool.locator(".tool-name")).to_have_text("weather")
    expect(tool.locator("pre.args")).to_contain_text("Oslo")
    expect(page.locator(ANSWER)).to_have_attribute("data-status", "waiting")
    expect(page.locator("#status")).to_have_attribute("data-state", "waiting")
    call_id = tool.get_attribute("data-call-id")
    assert call_id

    tool.locator("button.approve").click()
    final = finished_answer(page, server, cid, "complete")
    assert final.data["status"] == "completed"
    # The MCP server's deterministic forecast: sum(map(ord, "Oslo")) % 35 == 28.
    expect(tool.locator("pre.result")).to_contain_text("Oslo: 28 °C, clear")
    expect(tool).to_have_attribute("data-call-id", call_id)
    expect(tool.locator("button.approve")).to_have_count(0)
    assert "Oslo: 28 °C, clear" in final.data["text"]


def test_another_user_sees_neither_the_conversation_nor_its_messages(
    fast: InProcessServer, browser: Browser, context: BrowserContext
) -> None:
    server = fast
    alice = open_playground(context, server)
    send(alice, ASK)
    cid = open_cid(alice)
    finished_answer(alice, server, cid, "complete")
    secret = api(server, f"/v1/conversations/{cid}")["title"]

    # Bob's own conversation shows, so his list has loaded; alice's is not in it.
    r = httpx.post(
        f"{server.base_url}/v1/conversations",
        json={"title": "Bob's own"},
        headers=server.headers("acme", "bob"),
    )
    assert r.status_code == 201, r.text
    bob_cid = r.json()["id"]
    bobs = browser.new_context()
    try:
        bob = open_playground(bobs, server, "bob")
        expect(bob.locator(f"li.conversation[data-id='{bob_cid}']")).to_have_count(1)
        expect(bob.locator(f"li.conversation[data-id='{cid}']")).to_have_count(0)
        expect(bob.locator("li.conversation")).to_have_count(1)

        # Opened by its id, it is the API's 404 and nothing of it.
        r = httpx.get(
            f"{server.base_url}/v1/conversations/{cid}", headers=server.headers("acme", "bob")
        )
        assert r.status_code == 404
        detail = r.json()["detail"]
        page = open_playground(bobs, server, "bob", cid)
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "error")
        expect(status).to_contain_text(detail)
        expect(page.locator("#messages article.message")).to_have_count(0)
        expect(page.locator("#title")).not_to_have_text(secret)
        assert ASK not in page.locator("body").inner_text()
    finally:
        bobs.close()


def test_the_page_has_a_strict_csp_no_console_error_and_no_other_origin(
    fast: InProcessServer, context: BrowserContext
) -> None:
    server = fast
    origin = server.base_url
    urls: list[str] = []
    errors: list[str] = []
    context.on("request", lambda request: urls.append(request.url))
    context.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    response = page.goto(f"{origin}/playground#token={server.token()}")
    assert response is not None
    assert response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    root = httpx.get(f"{origin}/")
    assert root.status_code == 200
    assert "default-src 'self'" in root.headers["content-security-policy"]

    page.wait_for_function("() => !location.hash.includes('token=')")
    send(page, ASK)
    finished_answer(page, server, open_cid(page), "complete")
    expect(page.locator("#status")).to_have_attribute("data-state", "idle")

    assert urls
    others = [u for u in urls if not u.startswith("data:") and not same_origin(u, origin)]
    assert others == []
    assert errors == []


def same_origin(url: str, origin: str) -> bool:
    """Whether ``url`` (a ``blob:`` URL by the origin that made it) is of ``origin``."""
    parts = urlsplit(url.removeprefix("blob:"))
    return f"{parts.scheme}://{parts.netloc}" == origin


def test_a_screenshot_of_a_finished_conversation(
    fast: InProcessServer, context: BrowserContext, tmp_path: Path
) -> None:
    """Always to a temporary file; also to ``TURNSTREAM_UPDATE_SCREENSHOT`` when set,
    which is how the README's image is made."""
    server = fast
    page = open_playground(context, server)
    send(page, ASK)
    cid = open_cid(page)
    finished_answer(page, server, cid, "complete")
    title = api(server, f"/v1/conversations/{cid}")["title"]
    expect(page.locator("#title")).to_have_text(title)
    expect(page.locator("#status")).to_have_attribute("data-state", "idle")

    targets = [tmp_path / "playground.png"]
    if update := os.environ.get("TURNSTREAM_UPDATE_SCREENSHOT"):
        targets.append(Path(update))
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))
        data = target.read_bytes()
        assert data.startswith(PNG), target
        assert len(data) > len(PNG), target
