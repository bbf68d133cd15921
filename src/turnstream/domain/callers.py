"""Who is asking, and what they may touch: the isolation rules between users and tenants.

A conversation belongs to one tenant and one user. Its owner may do anything with it;
an admin of the same tenant may read it; nobody else may even learn that it exists (the
use cases answer "not found", exactly as for a missing id).
"""

from __future__ import annotations

import msgspec


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking: from the verified token, never from a request body."""

    user_id: str
    tenant: str
    guest: bool = False
    roles: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        """An admin token of a signed-in user (a guest is never an admin)."""
        return "admin" in self.roles and not self.guest

    def may(self, tenant: str, owner: str, *, read: bool = False) -> bool:
        """Whether this caller may act on (or, with ``read``, read) what ``owner`` of
        ``tenant`` owns."""
        if tenant != self.tenant:
            return False
        return owner == self.user_id or (read and self.is_admin)
