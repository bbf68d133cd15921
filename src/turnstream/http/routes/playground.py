"""The playground: a page that shows everything the service does, served by it.

People who try a chat backend want to see it work before they write a front end, and an
operator wants to look at a conversation as its owner sees it. The page is plain HTML,
CSS and ES modules in the package (``http/playground/``): no build step, no CDN, and a
Content-Security-Policy that allows only this origin, so the page can run nothing and
reach nothing else. It is a client of the public API like any other (its token in an
``Authorization`` header, never in a URL); this module only hands out its files.

``TURNSTREAM_PLAYGROUND=false`` serves none of it.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@cache
def assets() -> dict[str, tuple[bytes, str, str]]:
    """The page's files, read once: name to bytes, type and ETag. Only these names are
    served (a request names one of them, never a path)."""
    found: dict[str, tuple[bytes, str, str]] = {}
    for file in resources.files("turnstream.http").joinpath("playground").iterdir():
        suffix = PurePosixPath(file.name).suffix
        if file.is_file() and suffix in TYPES and not file.name.startswith("."):
            content = file.read_bytes()
            etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
            found[file.name] = (content, TYPES[suffix], etag)
    return found


def send(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    found = assets().get(name)
    if found is None:
        raise NotFoundException("No such file of the playground.")
    content, media_type, etag = found
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "ETag": etag,
    }
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


@get(["/", "/playground"], include_in_schema=False, media_type="text/html")
async def playground_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    return send(request, "index.html")


@get("/playground/{name:str}", include_in_schema=False)
async def playground_file(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    return send(request, name)


ROUTES = [playground_page, playground_file]
