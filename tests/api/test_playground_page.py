"""The playground's files (``http.routes.playground``): the page and its modules under
a policy that allows only this origin, nothing else by name, and none of it when it is
turned off. What the page does is tested in a real Chromium (``tests/browser``)."""

from __future__ import annotations

import httpx

from tests.api.conftest import ServerFactory


def test_the_page_and_its_modules_are_served_under_a_strict_policy(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    for path in ("/", "/playground"):
        r = httpx.get(server.base_url + path)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        policy = r.headers["content-security-policy"]
        assert "default-src 'self'" in policy
        assert "script-src 'self'" in policy
        assert r.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="/playground/app.js">' in r.text
    for name in (
        "app.js",
        "api.js",
        "render.js",
        "tree.js",
        "turns.js",
        "list.js",
        "composer.js",
        "panels.js",
    ):
        r = httpx.get(f"{server.base_url}/playground/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith("text/javascript")
        again = httpx.get(
            f"{server.base_url}/playground/{name}", headers={"If-None-Match": r.headers["etag"]}
        )
        assert again.status_code == 304
    css = httpx.get(f"{server.base_url}/playground/playground.css")
    assert css.headers["content-type"].startswith("text/css")
    for name in ("nope.js", "..%2Fapp.py", ".hidden.js", "__init__.py"):
        r = httpx.get(f"{server.base_url}/playground/{name}")
        assert r.status_code == 404, name
        assert r.headers["content-type"].startswith("application/problem+json")


def test_turned_off_there_is_no_page(make_server: ServerFactory) -> None:
    server = make_server(TURNSTREAM_PLAYGROUND="false")
    assert httpx.get(server.base_url + "/playground").status_code == 404
    assert httpx.get(server.base_url + "/playground/app.js").status_code == 404
