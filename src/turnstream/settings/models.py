"""The models clients may name: the models file (TOML), the built-in ``demo`` model."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from turnstream.settings.base import Group, SettingsError


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model a client may name, and how to reach it."""

    id: str
    """What clients send as ``model``."""
    provider: Literal["openai", "demo"] = "openai"
    base_url: str | None = None
    """The OpenAI-compatible server's base URL, e.g. ``http://127.0.0.1:8080/v1``."""
    model: str | None = None
    """The provider's own model name (defaults to ``id``)."""
    api_key_env: str | None = None
    """The environment variable that holds the API key (never the key itself)."""
    context_window: int = 8192
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    default: bool = False
    title_model: str | None = None
    """Another configured model id that writes the conversation title; else a heuristic."""
    supports: tuple[str, ...] = ("chat", "streaming")
    temperature: float | None = None
    timeout_s: float = 120.0
    """How long the provider may stay silent before the turn fails."""
    mcp_servers: tuple[str, ...] = ()
    """The ids of the MCP servers (``[[mcp_servers]]``) whose tools this model may call."""
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    """How often a request that failed before its first token is tried again, when the
    failure may pass (a timeout, a broken connection, HTTP 408, 409, 429 or 5xx)."""
    retry_backoff_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    """The wait before the first retry; it doubles each time, with jitter. A server's
    ``Retry-After`` is honoured when longer (up to a minute; beyond, no retry)."""
    fallback: tuple[str, ...] = ()
    """Other configured models that answer, in order, when this one still fails before
    its first token."""

    @property
    def provider_model(self) -> str:
        return self.model or self.id


class McpServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An MCP server whose tools turnstream calls for the model (``[[mcp_servers]]``)."""

    id: str
    command: tuple[str, ...] | None = None
    """A stdio server: the program and its arguments."""
    url: str | None = None
    """A streamable HTTP server's URL (``http://…/mcp``)."""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra environment of a stdio server."""
    approval: Literal["always", "never"] | tuple[str, ...] = "never"
    """Which calls wait for a person's approval: all, none, or those of these tools."""

    def needs_approval(self, tool: str) -> bool:
        if isinstance(self.approval, tuple):
            return tool in self.approval
        return self.approval == "always"


DEMO_MODEL = ModelConfig(
    id="demo",
    provider="demo",
    context_window=32768,
    supports=("chat", "streaming", "reasoning", "vision"),
)


class ModelSettings(
    Group,
    frozen=True,
    kw_only=True,
    rename={"file": "MODELS", "demo_tokens_per_s": "DEMO_TOKENS_PER_S",
            "demo_tokens": "DEMO_TOKENS"},
):  # fmt: skip
    """The models clients may name, and the built-in demo model's pace."""

    file: Path | None = None
    """The models TOML file."""
    demo_tokens_per_s: float = 20.0
    """Speed of the built-in demo model."""
    demo_tokens: int = 120
    """Length of the demo model's answers, in tokens."""

    def _read(self) -> dict[str, object]:
        if self.file is None:
            return {}
        try:
            return tomllib.loads(self.file.read_text())
        except OSError as exc:
            msg = f"cannot read the models file {self.file}: {exc.strerror}"
            raise SettingsError(msg) from None
        except tomllib.TOMLDecodeError as exc:
            msg = f"the models file {self.file} is not valid TOML: {exc}"
            raise SettingsError(msg) from None

    def mcp_servers(self) -> dict[str, McpServerConfig]:
        """The MCP servers of the models file, by id."""
        try:
            entries = msgspec.convert(self._read().get("mcp_servers", []), list[McpServerConfig])
        except msgspec.ValidationError as exc:
            msg = f"the models file {self.file} is invalid: {exc}"
            raise SettingsError(msg) from None
        servers: dict[str, McpServerConfig] = {}
        for entry in entries:
            if (entry.command is None) == (entry.url is None):
                msg = f"MCP server {entry.id!r}: give either command (stdio) or url (HTTP)"
                raise SettingsError(msg)
            if entry.id in servers:
                msg = f"MCP server {entry.id!r} is listed twice"
                raise SettingsError(msg)
            servers[entry.id] = entry
        return servers

    def load(self) -> dict[str, ModelConfig]:
        """The configured models by id, ``demo`` first unless the file redefines it."""
        models: dict[str, ModelConfig] = {"demo": DEMO_MODEL}
        if self.file is None:
            return models
        try:
            entries = msgspec.convert(self._read().get("models", []), list[ModelConfig])
        except msgspec.ValidationError as exc:
            msg = f"the models file {self.file} is invalid: {exc}"
            raise SettingsError(msg) from None
        servers = self.mcp_servers()
        for entry in entries:
            if entry.provider == "openai" and not entry.base_url:
                msg = f"model {entry.id!r}: an openai provider needs base_url"
                raise SettingsError(msg)
            models[entry.id] = entry
        defaults = [m.id for m in models.values() if m.default]
        if len(defaults) > 1:
            msg = f"more than one default model: {', '.join(defaults)}"
            raise SettingsError(msg)
        for entry in models.values():
            if entry.title_model is not None and entry.title_model not in models:
                msg = f"model {entry.id!r} names an unknown title_model {entry.title_model!r}"
                raise SettingsError(msg)
            for other in entry.fallback:
                if other == entry.id:
                    msg = f"model {entry.id!r} names itself as a fallback"
                    raise SettingsError(msg)
                if other not in models:
                    msg = f"model {entry.id!r} names an unknown fallback model {other!r}"
                    raise SettingsError(msg)
            for server in entry.mcp_servers:
                if server not in servers:
                    msg = f"model {entry.id!r} names an unknown MCP server {server!r}"
                    raise SettingsError(msg)
        return models


def default_model_id(models: Mapping[str, ModelConfig]) -> str:
    """The model used when a conversation names none."""
    for entry in models.values():
        if entry.default:
            return entry.id
    return "demo"
