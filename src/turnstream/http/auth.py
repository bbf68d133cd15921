"""Bearer tokens: HS256 JWTs with ``sub``, ``tenant`` and ``exp``; the dev secret."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import jwt

from turnstream.domain.callers import Caller
from turnstream.domain.errors import Unauthorized
from turnstream.domain.identities import (
    TENANT_RULE,
    USER_ID_RULE,
    check_tenant,
    check_user_id,
    is_tenant,
    is_user_id,
)

SECRET_FILE = "jwt-secret"  # noqa: S105 (a file name, not a secret)


def mint(
    secret: str,
    *,
    tenant: str,
    user: str,
    ttl_s: int = 3600,
    guest: bool = False,
    admin: bool = False,
) -> str:
    check_tenant(tenant)
    check_user_id(user)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "tenant": tenant, "iat": now, "exp": now + ttl_s}
    if guest:
        claims["guest"] = True
    if admin:
        claims["roles"] = ["admin"]
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(secret: str, authorization: str | None) -> Caller:
    """The caller named by an ``Authorization: Bearer …`` header, or Unauthorized."""
    if not authorization:
        msg = "This request needs an 'Authorization: Bearer <token>' header."
        raise Unauthorized(msg)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        msg = "The Authorization header must be 'Bearer <token>'."
        raise Unauthorized(msg)
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=["HS256"],
            options={"require": ["sub", "tenant", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        msg = "The token has expired."
        raise Unauthorized(msg) from None
    except jwt.InvalidTokenError:
        msg = "The token is not valid."
        raise Unauthorized(msg) from None
    return caller_of(claims)


def caller_of(claims: dict[str, Any], what: str = "token") -> Caller:
    """The caller a verified token's (or stream ticket's) claims name, or Unauthorized."""
    sub, tenant = claims.get("sub"), claims.get("tenant")
    if not isinstance(sub, str) or not sub or not isinstance(tenant, str):
        msg = f"The {what}'s sub and tenant claims must be strings."
        raise Unauthorized(msg)
    if not is_tenant(tenant):
        msg = f"The {what}'s tenant claim is not a tenant id ({TENANT_RULE})."
        raise Unauthorized(msg)
    if not is_user_id(sub):
        msg = f"The {what}'s sub claim is not a user id ({USER_ID_RULE})."
        raise Unauthorized(msg)
    roles = claims.get("roles") or []
    return Caller(
        user_id=sub,
        tenant=tenant,
        guest=claims.get("guest") is True,
        roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
    )


def resolve_secret(configured: str | None, data_dir: Path) -> tuple[str, bool]:
    """The signing secret and whether it is the generated dev secret in the data folder."""
    if configured:
        return configured, False
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip(), True
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret)
    return secret, True
