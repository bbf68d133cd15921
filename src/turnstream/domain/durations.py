"""Durations as operators type them: ``90``, ``30s``, ``10m``, ``2h``, ``7d``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str, *, bare_seconds: bool = True) -> int | None:
    """The seconds ``text`` names, or None if it is not a duration.

    A bare number is seconds unless ``bare_seconds`` is false (then a unit is required).
    """
    match = _DURATION.match(text.strip())
    if match is None or (not match.group(2) and not bare_seconds):
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]
