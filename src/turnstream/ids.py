"""Time-ordered identifiers (UUID version 7, RFC 9562)."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0

NAMESPACE = uuid.UUID("8f1d3c52-6a1e-4b0e-9d7e-2f6c1a7b9e40")


def uuid7() -> uuid.UUID:
    """A new UUIDv7: 48 bits of Unix milliseconds, then a counter and random bits.

    Ids made in one process are strictly increasing, so they sort by creation.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= (_counter & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand
    return uuid.UUID(int=value)


def stable_id(*parts: object) -> uuid.UUID:
    """A deterministic id for an idempotency key (UUIDv5 under turnstream's namespace)."""
    return uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts))
