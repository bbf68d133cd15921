"""One typed settings object, read once from ``TURNSTREAM_*`` variables.

Each field's docstring is the operator's documentation; the README's settings table
is generated from the same names. Models come from a TOML file (``TURNSTREAM_MODELS``);
the built-in ``demo`` model is always present unless the file redefines it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import platformdirs

from turnstream.identities import TENANT_RULE, is_tenant

ENV_PREFIX = "TURNSTREAM_"


class SettingsError(Exception):
    """A setting or the models file is malformed; the message says which and why."""


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

    @property
    def provider_model(self) -> str:
        return self.model or self.id


DEMO_MODEL = ModelConfig(
    id="demo",
    provider="demo",
    context_window=32768,
    supports=("chat", "streaming", "reasoning"),
)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an operator can set. Field ``x_y`` is read from ``TURNSTREAM_X_Y``."""

    data_dir: Path = Path(platformdirs.user_data_dir("turnstream"))
    """Where the embedded servers keep their data and where the dev secret lives."""
    database_url: str | None = None
    """PostgreSQL URL. Unset: an embedded PostgreSQL in the data folder."""
    database_schema: str = "turnstream"
    """The PostgreSQL schema holding the event store and its tables."""
    nats_url: str | None = None
    """NATS URL (a cluster's nodes comma-separated). Unset: an embedded nats-server."""
    nats_stream: str = "TURNSTREAM"
    """The JetStream stream every stored event is relayed to."""
    nats_subject_prefix: str = "turnstream"
    """The stream's subjects are ``<prefix>.>``; control messages use ``_<prefix>_ctl.>``."""
    nats_replicas: int = 1
    """Stream replicas (3 on a three-node NATS cluster for production)."""
    nats_max_age_s: float = 0.0
    """Drop relayed events older than this from the stream (0: keep forever)."""
    nats_max_bytes: int = 0
    """Drop the oldest relayed events beyond this stream size (0: no limit)."""
    nats_duplicate_window_s: float = 120.0
    """JetStream's de-duplication window on ``Nats-Msg-Id`` (correctness does not rely on it)."""
    relay: bool = True
    """Run the relay inside ``serve`` (one node at a time is active; the others stand by)."""
    relay_process: bool = True
    """Run ``serve``'s relay in a child process (a core of its own, off the HTTP loop)."""
    relay_nice: int = 10
    """The child relay's niceness: on a saturated machine the live SSE streams come first."""
    relay_batch: int = 1000
    """Events the relay reads from the store per page (and at most twice that in flight)."""
    relay_takeover_s: float = 2.0
    """How often a standby relay tries to take over, and the wait between retries."""
    projections: bool = True
    """Keep the projections (message tree, conversation list, usage) inside ``serve``
    (one node at a time is active per projection; the others stand by)."""
    projections_process: bool = True
    """Run ``serve``'s projection workers in a child process (off the HTTP process's GIL)."""
    projection_wait_s: float = 10.0
    """How long a read waits for the projections to hold everything committed before it
    (read your writes) before it answers 503."""
    remote_poll_interval_s: float = 2.0
    """With NATS up, how often a reader of a turn run elsewhere also checks the store."""
    jwt_secret: str | None = None
    """HS256 secret. Unset: a secret created once in the data folder (dev tokens printed)."""
    models: Path | None = None
    """The models TOML file."""
    host: str = "127.0.0.1"
    port: int = 8000
    demo_tokens_per_s: float = 20.0
    """Speed of the built-in demo model."""
    demo_tokens: int = 120
    """Length of the demo model's answers, in tokens."""
    ping_interval_s: float = 15.0
    """Seconds of silence on an SSE stream before a ``: ping`` comment."""
    runner_check_interval_s: float = 5.0
    """How often each node looks for turns whose runner died (runner_lost)."""
    store_poll_interval_s: float = 0.2
    """How often a reader polls the store for a turn this node is not running."""
    limit_message_chars: int = 100_000
    """The longest message a client may send (413 payload_too_large beyond; 0 = no limit
    but the request body's)."""
    limit_messages_per_minute: int = 0
    """Turns a user, and a client address, may start per minute (429 rate_limited; 0 = off)."""
    limit_conversation_messages: int = 0
    """Messages one conversation may hold (422 conversation_full; 0 = off)."""
    limit_concurrent_turns: int = 0
    """Turns one user may have running at once (429 too_many_turns; 0 = off)."""
    limit_daily_tokens: int = 0
    """Tokens in and out one user may use per UTC day (429 quota_exhausted; 0 = off)."""
    limit_weekly_tokens: int = 0
    """Tokens in and out one user may use per ISO week, from Monday 00:00 UTC (0 = off)."""
    trusted_proxies: str = ""
    """Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is
    believed (for the per-address limit); empty: the peer address is the client's."""
    guest_messages: int = 0
    """Messages a guest may send in all (429 login_required after); 0 = guests off."""
    guest_tenant: str = "guests"
    """The tenant of guests who do not name one when they ask for a guest token."""
    guest_token_ttl_s: int = 7 * 86400
    """How long a guest token is valid."""
    sse_padding: bool = True
    """Random filler in ``p`` of token and reasoning frames, so frame sizes do not reveal
    token lengths."""
    max_body_bytes: int = 1_048_576
    """The largest request body accepted."""
    writer_max_batch: int = 5000
    """The most events one group commit writes."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long running turns may finish before they are interrupted."""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the settings from ``TURNSTREAM_*`` variables (``os.environ`` by default)."""
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            value = env.get(ENV_PREFIX + name.upper())
            if value is not None and value != "":
                raw[name] = value
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = msgspec.convert(raw, cls, strict=False, dec_hook=_dec_path)
        except msgspec.ValidationError as exc:
            msg = f"bad setting: {exc} (variables are named {ENV_PREFIX}<FIELD>)"
            raise SettingsError(msg) from None
        if not is_tenant(settings.guest_tenant):
            msg = f"bad setting: {ENV_PREFIX}GUEST_TENANT must be {TENANT_RULE}"
            raise SettingsError(msg)
        return settings

    def to_env(self, **overrides: str) -> dict[str, str]:
        """These settings as ``TURNSTREAM_*`` variables (for a child process), secret left out."""
        env: dict[str, str] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is None or name == "jwt_secret":
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[ENV_PREFIX + name.upper()] = str(value)
        env.update({ENV_PREFIX + k.upper(): v for k, v in overrides.items()})
        return env

    def load_models(self) -> dict[str, ModelConfig]:
        """The configured models by id, ``demo`` first unless the file redefines it."""
        models: dict[str, ModelConfig] = {"demo": DEMO_MODEL}
        if self.models is None:
            return models
        try:
            data = tomllib.loads(self.models.read_text())
        except OSError as exc:
            msg = f"cannot read the models file {self.models}: {exc.strerror}"
            raise SettingsError(msg) from None
        except tomllib.TOMLDecodeError as exc:
            msg = f"the models file {self.models} is not valid TOML: {exc}"
            raise SettingsError(msg) from None
        try:
            entries = msgspec.convert(data.get("models", []), list[ModelConfig])
        except msgspec.ValidationError as exc:
            msg = f"the models file {self.models} is invalid: {exc}"
            raise SettingsError(msg) from None
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
        return models


def _dec_path(typ: type, obj: Any) -> Any:
    if typ is Path and isinstance(obj, str | Path):
        return Path(obj).expanduser()
    msg = f"expected {typ.__name__}"
    raise NotImplementedError(msg)


def default_model_id(models: Mapping[str, ModelConfig]) -> str:
    """The model used when a conversation names none."""
    for entry in models.values():
        if entry.default:
            return entry.id
    return "demo"
