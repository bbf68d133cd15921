"""The settings, in groups, read once from ``TURNSTREAM_*`` variables.

Each group belongs to one part (the store, NATS, the relay, the projections, the turn
lifecycle, limits, guests, SSE, the writer, models, the HTTP server), and each part is
handed only its own group. A field is read from ``TURNSTREAM_`` and its group's name for
it (``NatsSettings.stream`` from ``TURNSTREAM_NATS_STREAM``): the same variables as ever,
and ``Settings.from_env`` takes overrides by those names too (``nats_stream=...``).
Each field's docstring is the operator's documentation; the README's settings table
names every variable. Models come from a TOML file (``TURNSTREAM_MODELS``); the
built-in ``demo`` model is always present unless the file redefines it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from turnstream.domain.identities import TENANT_RULE, is_tenant
from turnstream.settings.base import ENV_PREFIX, Group, SettingsError
from turnstream.settings.groups import (
    BrowserSettings,
    GuestSettings,
    LimitSettings,
    NatsSettings,
    ProjectionSettings,
    RelaySettings,
    ServerSettings,
    SseSettings,
    StoreSettings,
    ToolSettings,
    TurnSettings,
    WriterSettings,
)
from turnstream.settings.models import (
    DEMO_MODEL,
    McpServerConfig,
    ModelConfig,
    ModelSettings,
    default_model_id,
)

__all__ = [
    "DEMO_MODEL",
    "ENV_PREFIX",
    "BrowserSettings",
    "GuestSettings",
    "LimitSettings",
    "McpServerConfig",
    "ModelConfig",
    "ModelSettings",
    "NatsSettings",
    "ProjectionSettings",
    "RelaySettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "SseSettings",
    "StoreSettings",
    "ToolSettings",
    "TurnSettings",
    "WriterSettings",
    "default_model_id",
    "known_names",
    "unknown_variables",
]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an operator can set, by group."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    relay: RelaySettings = msgspec.field(default_factory=RelaySettings)
    projections: ProjectionSettings = msgspec.field(default_factory=ProjectionSettings)
    turns: TurnSettings = msgspec.field(default_factory=TurnSettings)
    tools: ToolSettings = msgspec.field(default_factory=ToolSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    guests: GuestSettings = msgspec.field(default_factory=GuestSettings)
    browsers: BrowserSettings = msgspec.field(default_factory=BrowserSettings)
    sse: SseSettings = msgspec.field(default_factory=SseSettings)
    writer: WriterSettings = msgspec.field(default_factory=WriterSettings)
    models: ModelSettings = msgspec.field(default_factory=ModelSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the settings from ``TURNSTREAM_*`` variables (``os.environ`` by default).

        ``overrides`` are by variable name without the prefix, in lower case
        (``database_url=...``); None leaves a variable as it is.
        """
        env = os.environ if env is None else env
        raw: dict[str, Any] = {
            k.removeprefix(ENV_PREFIX): v
            for k, v in env.items()
            if k.startswith(ENV_PREFIX) and v != ""
        }
        bad = sorted(k for k in overrides if k.upper() not in known_names())
        if bad:
            msg = f"unknown settings: {', '.join(bad)}"
            raise SettingsError(msg)
        raw.update({k.upper(): v for k, v in overrides.items() if v is not None})
        groups: dict[str, Any] = {}
        try:
            for name, group in GROUPS.items():
                groups[name] = msgspec.convert(raw, group, strict=False, dec_hook=_dec_path)
        except msgspec.ValidationError as exc:
            found = re.search(r"`\$\.(\w+)`", str(exc))
            variable = f" {ENV_PREFIX}{found.group(1)}" if found else ""
            msg = f"bad setting{variable}: {re.sub(r' - at `.*`', '', str(exc))}"
            raise SettingsError(msg) from None
        settings = cls(**groups)
        if not is_tenant(settings.guests.tenant):
            msg = f"bad setting: {ENV_PREFIX}GUEST_TENANT must be {TENANT_RULE}"
            raise SettingsError(msg)
        bad_guests = sorted(t for t in settings.guests.allowed_tenants() if not is_tenant(t))
        if bad_guests:
            msg = f"bad setting: {ENV_PREFIX}GUEST_TENANTS must be {TENANT_RULE} each"
            raise SettingsError(f"{msg} (not: {', '.join(bad_guests)})")
        if settings.guests.tenant not in settings.guests.allowed_tenants():
            # A body-less POST /v1/guest asks for GUEST_TENANT: it must be one of them.
            msg = f"bad setting: {ENV_PREFIX}GUEST_TENANTS must include {ENV_PREFIX}GUEST_TENANT"
            raise SettingsError(f"{msg} ({settings.guests.tenant})")
        for origin in settings.browsers.origins():
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                msg = f"bad setting: {ENV_PREFIX}CORS_ORIGINS: {origin!r} is no origin"
                raise SettingsError(msg + " (scheme://host[:port], or *)")
        return settings

    def to_env(self, **overrides: str) -> dict[str, str]:
        """These settings as ``TURNSTREAM_*`` variables (for a child process), secret left
        out; ``overrides`` by name as in :meth:`from_env`."""
        env: dict[str, str] = {}
        for name in GROUPS:
            env |= getattr(self, name).variables()
        env.update({ENV_PREFIX + k.upper(): v for k, v in overrides.items()})
        return env


GROUPS: dict[str, type[Group]] = {
    name: field.type
    for name, field in zip(
        Settings.__struct_fields__, msgspec.structs.fields(Settings), strict=True
    )
}
"""Each group's attribute name on :class:`Settings`, and its class."""


def known_names() -> set[str]:
    """Every variable a group reads, without the ``TURNSTREAM_`` prefix."""
    return {f.encode_name for group in GROUPS.values() for f in msgspec.structs.fields(group)}


RETIRED = {"MAX_CONTENT_CHARS": "LIMIT_MESSAGE_CHARS"}
"""Variables of earlier versions, and the ones that took their place."""


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The ``TURNSTREAM_*`` variables no setting reads, each with the closest known name
    (a retired or misspelt setting is ignored otherwise: say so at start)."""
    known = known_names()
    unknown = []
    for name in sorted(env):
        short = name.removeprefix(ENV_PREFIX)
        if not name.startswith(ENV_PREFIX) or short in known:
            continue
        close = [RETIRED[short]] if short in RETIRED else []
        close = close or difflib.get_close_matches(short, known, n=1, cutoff=0.5)
        unknown.append((name, ENV_PREFIX + close[0] if close else None))
    return unknown


def _dec_path(typ: type, obj: Any) -> Any:
    if typ is Path and isinstance(obj, str | Path):
        return Path(obj).expanduser()
    msg = f"expected {typ.__name__}"
    raise NotImplementedError(msg)
