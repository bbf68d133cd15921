"""Strict reading of what clients send: how deep JSON may nest, what a number is.

Python's JSON decoders recurse once per level and give up with ``RecursionError``
near a thousand; a body 10,000 levels deep must be a clear 400, not a 500. A number in
a header or a query is ASCII decimal digits: ``int()`` also takes ``"²"``'s kin, and
lenient converters take ``"1e9"``.
"""

from __future__ import annotations

import re

from turnstream.domain.errors import Invalid

MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects a request body may have: far more than any
body of this API needs (a tool's JSON Schema included), far less than the decoders'."""

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` (JSON text, valid or not) opens more than ``limit`` arrays or
    objects inside one another. Brackets inside strings do not count."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the usual body: too few brackets to nest that deep
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub(b'""', body)):
        if bracket in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


MAX_SEQ = 10**15
"""The largest frame id a client may name (far beyond any turn's length)."""

_DECIMAL = re.compile(r"[0-9]{1,16}")


def decimal(text: str, name: str, *, minimum: int = 0, maximum: int = MAX_SEQ) -> int:
    """``text`` as a number from ``minimum`` to ``maximum``, written in ASCII decimal
    digits and nothing else (no sign, exponent, space or other script's digits);
    ``Invalid`` naming ``name`` otherwise."""
    if _DECIMAL.fullmatch(text) is None or not minimum <= int(text) <= maximum:
        msg = f"{name} must be a whole number from {minimum} to {maximum} in decimal digits."
        raise Invalid(msg, field=name)
    return int(text)
