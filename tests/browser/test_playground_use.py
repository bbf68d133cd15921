"""The rest of what a person does in the playground, in a real Chromium: keep the list
(rename, delete, more pages), attach a picture, watch a turn from a second tab, and
lose the connection in the middle of an answer.

As in ``test_playground.py``: every wait is on a DOM state, and what the page shows is
held against what the API stores.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Browser, BrowserContext, Request, expect

from tests.api.conftest import ServerFactory
from tests.browser.playground import (
    ANSWER,
    ASK,
    QUESTION,
    api,
    finished_answer,
    open_cid,
    open_playground,
    pane,
    send,
    turn_frames,
    wait_streaming,
)
from tests.support.files import png
from tests.support.inprocess import InProcessServer
from tests.support.proxy import cuttable

ITEM = "#conversations li.conversation"
BLOB = re.compile(r"^blob:")


def made(server: InProcessServer, title: str, user: str = "alice") -> str:
    """A conversation made through the API; its id."""
    r = httpx.post(
        f"{server.base_url}/v1/conversations",
        json={"title": title},
        headers=server.headers("acme", user),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def status_of(server: InProcessServer, cid: str) -> int:
    r = httpx.get(f"{server.base_url}/v1/conversations/{cid}", headers=server.headers(), timeout=30)
    return r.status_code


def test_rename_in_place_keeps_long_titles_on_one_line_and_escape_keeps_the_old_one(
    fast: InProcessServer, context: BrowserContext
) -> None:
    server = fast
    cid = made(server, "Before")
    page = open_playground(context, server, cid=cid)
    item = page.locator(f"{ITEM}[data-id='{cid}']")
    expect(item.locator("button.open")).to_have_text("Before")
    expect(page.locator("#title")).to_have_text("Before")

    # Escape gives up: nothing is sent, the old title stays.
    item.locator("button.rename").click()
    expect(item.locator("input.rename-input")).to_be_focused()
    item.locator("input.rename-input").fill("Not this")
    item.locator("input.rename-input").press("Escape")
    expect(item.locator("button.open")).to_have_text("Before")
    assert api(server, f"/v1/conversations/{cid}")["title"] == "Before"

    # Enter renames: the list, the heading and the API agree.
    long = "A rather long title, " * 9  # 189 characters, of at most 200
    item.locator("button.rename").click()
    item.locator("input.rename-input").fill(long)
    item.locator("input.rename-input").press("Enter")
    expect(item.locator("button.open")).to_have_text(long.strip())
    expect(page.locator("#title")).to_have_text(long.strip())
    assert api(server, f"/v1/conversations/{cid}")["title"] == long.strip()

    # The long title is cut with an ellipsis: its row is one line, no wider than the list.
    sizes = item.locator("button.open").evaluate(
        """b => ({scroll: b.scrollWidth, client: b.clientWidth, height: b.clientHeight,
                  line: parseFloat(getComputedStyle(b).lineHeight) || 20,
                  row: b.closest("li").getBoundingClientRect().width,
                  list: b.closest("ul").getBoundingClientRect().width})"""
    )
    assert sizes["scroll"] > sizes["client"], sizes
    assert sizes["row"] <= sizes["list"], sizes
    assert sizes["height"] < 2 * sizes["line"] + 16, sizes


def test_delete_asks_once_more_then_the_conversation_is_gone_everywhere(
    fast: InProcessServer, context: BrowserContext
) -> None:
    server = fast
    kept, doomed = made(server, "Kept"), made(server, "Doomed")
    page = open_playground(context, server, cid=doomed)
    expect(page.locator("#title")).to_have_text("Doomed")
    item = page.locator(f"{ITEM}[data-id='{doomed}']")

    item.locator("button.delete").click()
    expect(item.locator("button.delete")).to_have_class("delete confirm")
    expect(item.locator("button.delete")).to_have_text("Confirm delete")
    assert status_of(server, doomed) == 200  # one click deletes nothing

    item.locator("button.delete").click()
    expect(item).to_have_count(0)
    expect(page.locator(f"{ITEM}[data-id='{kept}']")).to_have_count(1)
    assert status_of(server, doomed) == 404
    # It was the open one: the page is back at a new conversation.
    expect(page.locator("#title")).to_have_text("New conversation")
    expect(page.locator("#messages article.message")).to_have_count(0)


def test_more_loads_the_next_page_until_there_is_none(
    fast: InProcessServer, context: BrowserContext
) -> None:
    server = fast
    ids = [made(server, f"Conversation {i}") for i in range(23)]
    listed: list[str] = []
    cursor = ""
    while True:
        query = "?limit=20" + (f"&cursor={cursor}" if cursor else "")
        page_of = api(server, f"/v1/conversations{query}")
        listed += [item["id"] for item in page_of["items"]]
        if not (cursor := page_of["next_cursor"]):
            break
    assert sorted(listed) == sorted(ids)

    page = open_playground(context, server)
    expect(page.locator(ITEM)).to_have_count(20)
    expect(page.locator("#more")).to_be_visible()
    page.locator("#more").click()
    expect(page.locator(ITEM)).to_have_count(23)
    expect(page.locator("#more")).to_be_hidden()
    shown = page.locator(ITEM).evaluate_all("items => items.map(li => li.dataset.id)")
    assert shown == listed


def test_an_attached_picture_shows_as_a_thumbnail_before_and_after_it_is_sent(
    fast: InProcessServer, context: BrowserContext
) -> None:
    server = fast
    page = open_playground(context, server)
    picture = png(40, 30)
    page.locator("#files").set_input_files(
        files=[{"name": "red.png", "mimeType": "image/png", "buffer": picture}]
    )
    pending = page.locator("#pending li.pending-file")
    expect(pending).to_have_count(1)
    expect(pending.locator("span")).to_have_text("red.png")
    expect(pending.locator("img")).to_have_attribute("src", BLOB)
    fid = pending.get_attribute("data-id")
    assert fid
    r = httpx.get(f"{server.base_url}/v1/files/{fid}", headers=server.headers(), timeout=30)
    assert r.status_code == 200
    assert r.content == picture

    send(page, "What is in this picture?")
    expect(pending).to_have_count(0)
    cid = open_cid(page)
    finished_answer(page, server, cid, "complete")
    figure = page.locator(f"{QUESTION} .attachments figure.attachment")
    expect(figure).to_have_count(1)
    expect(figure).to_have_attribute("data-id", fid)
    expect(figure.locator("figcaption")).to_have_text("red.png")
    expect(figure.locator("img")).to_have_attribute("src", BLOB)
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 40 && img.naturalHeight === 30",
        arg=figure.locator("img").element_handle(),
    )
    question = next(
        m for m in api(server, f"/v1/conversations/{cid}")["messages"] if m["role"] == "user"
    )
    assert [a["id"] for a in question["attachments"]] == [fid]


def test_a_second_tab_follows_a_turn_another_tab_started(
    paced: InProcessServer, context: BrowserContext
) -> None:
    server = paced
    first = open_playground(context, server)
    send(first, ASK)
    cid = open_cid(first)
    finished_answer(first, server, cid, "complete")

    second = open_playground(context, server, cid=cid)
    expect(second.locator(ANSWER)).to_have_count(1)
    send(first, "And what are projections?")
    # The second tab, idle, notices the running turn and follows it as it streams.
    expect(second.locator(f"{ANSWER}[data-status=streaming]")).to_have_count(1)
    final = finished_answer(second, server, cid, "complete", second.locator(ANSWER).last)
    expect(second.locator(ANSWER)).to_have_count(2)
    expect(second.locator(QUESTION).last.locator(".content")).to_have_text(
        "And what are projections?"
    )
    # Its events pane lists each of the turn's frames once (it joined mid-turn: from 1).
    tid = final.data["turn_id"]
    shown = [seq for seq, _ in pane(second, tid)]
    assert shown == [f.id for f in turn_frames(server, cid, tid)]


def test_a_dropped_connection_is_shown_retried_and_loses_nothing(
    make_server: ServerFactory, context: BrowserContext
) -> None:
    server = make_server(TURNSTREAM_DEMO_TOKENS="120", TURNSTREAM_DEMO_TOKENS_PER_S="20")
    with cuttable(urlsplit(server.base_url).port or 80) as proxy:
        page = open_playground(context, server, base=f"http://127.0.0.1:{proxy.port}")
        requests: list[tuple[str, str | None]] = []

        def record(request: Request) -> None:
            requests.append((request.url, request.headers.get("last-event-id")))

        page.on("request", record)
        send(page, ASK)
        wait_streaming(page)
        cid = open_cid(page)

        # The network drops mid-answer and stays down for a few attempts: the page says
        # so, and keeps trying with a growing wait.
        proxy.cut()
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "reconnecting")
        expect(status).to_contain_text("reconnecting (attempt 2)")
        assert proxy.refused >= 1
        proxy.mend()

        final = finished_answer(page, server, cid, "complete")
        tid = final.data["turn_id"]
        # Each attempt after the first asked for what follows the last frame shown.
        again = [last for url, last in requests if url.endswith(f"/v1/conversations/{cid}/turns")]
        assert len(again) >= 2, requests
        assert again[0] is None
        assert all(last is not None and int(last) >= 1 for last in again[1:]), again
        shown = [seq for seq, _ in pane(page, tid)]
        assert shown == list(range(1, final.data["seq"] + 1))
        expect(status).to_have_attribute("data-state", "idle")
        # One turn: the attempts resumed the same turn, they did not start new ones.
        turns = {m["turn_id"] for m in api(server, f"/v1/conversations/{cid}")["messages"]}
        assert turns == {tid}


def test_keyboard_labels_and_the_dark_scheme(
    fast: InProcessServer, browser: Browser, context: BrowserContext
) -> None:
    server = fast
    page = open_playground(context, server)
    send(page, ASK)
    cid = open_cid(page)
    finished_answer(page, server, cid, "complete")

    # Shift+Enter is a new line, not a send.
    box = page.locator("#message")
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(page.locator(QUESTION)).to_have_count(1)

    # Every control a screen reader reaches has a name (its text, label or aria-label).
    nameless = page.evaluate(
        """() => [...document.querySelectorAll("button, input, select, textarea")]
                  .filter(c => !c.hidden && c.type !== "hidden")
                  .filter(c => !(c.getAttribute("aria-label") || c.labels?.length
                                 || c.textContent.trim() || c.title))
                  .map(c => c.outerHTML)"""
    )
    assert nameless == []

    # The system's dark setting gives the dark scheme.
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    darks = browser.new_context(color_scheme="dark")
    try:
        dark = open_playground(darks, server).evaluate(background)
    finally:
        darks.close()
    assert light != dark
    luminance = [sum(map(int, re.findall(r"\d+", c)[:3])) for c in (light, dark)]
    assert luminance[1] < luminance[0]
