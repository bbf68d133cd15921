"""Who owns what: tenant and user ids, checked as whole strings in this one place.

A tenant id becomes a NATS subject token and part of every key; a user id becomes part
of the turn index's and the rate limits' keys and is written to PostgreSQL text columns.
Both are checked whole (``fullmatch``): a pattern that ends in ``$`` also matches before
a final newline, and one such tenant once stopped the relay for everyone.
"""

from __future__ import annotations

import re

from turnstream.domain.errors import Invalid

TENANT_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
"""The tenant id as JSON Schema (ECMA-262) writes it: there ``$`` is the string's end."""
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")

USER_ID_MAX = 255
# Printable text: no C0 or C1 control character (NUL, newline ...) and no lone
# surrogate (it has no UTF-8 form, so PostgreSQL could not store it).
_USER_ID = re.compile(rf"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{{1,{USER_ID_MAX}}}")

TENANT_RULE = "1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
USER_ID_RULE = f"1 to {USER_ID_MAX} printable characters (no control characters)"


def is_tenant(value: object) -> bool:
    return isinstance(value, str) and _TENANT.fullmatch(value) is not None


def is_user_id(value: object) -> bool:
    return isinstance(value, str) and _USER_ID.fullmatch(value) is not None


def check_tenant(value: str, field: str = "tenant") -> str:
    """``value`` if it is a tenant id, else ``Invalid`` naming ``field``."""
    if not is_tenant(value):
        msg = f"{field}: a tenant id is {TENANT_RULE}."
        raise Invalid(msg)
    return value


def check_user_id(value: str, field: str = "user") -> str:
    """``value`` if it is a user id, else ``Invalid`` naming ``field``."""
    if not is_user_id(value):
        msg = f"{field}: a user id is {USER_ID_RULE}."
        raise Invalid(msg)
    return value
