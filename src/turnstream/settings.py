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
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import platformdirs

from turnstream.domain.identities import TENANT_RULE, is_tenant

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


class _Group(msgspec.Struct, frozen=True, kw_only=True):
    """A settings group; its fields' encoded names are their variables' (no prefix)."""

    def variables(self) -> dict[str, str]:
        """This group's values as ``TURNSTREAM_*`` variables (None left out)."""
        env: dict[str, str] = {}
        for name, value in msgspec.to_builtins(self, enc_hook=str).items():
            if value is None or name in _SECRET:
                continue
            env[ENV_PREFIX + name] = (
                ("true" if value else "false") if isinstance(value, bool) else str(value)
            )
        return env


def _named(prefix: str) -> Any:
    return lambda field: prefix + field.upper()


class ServerSettings(_Group, frozen=True, kw_only=True, rename=str.upper):
    """The HTTP server and the process: where it listens, its data folder, its secret."""

    data_dir: Path = Path(platformdirs.user_data_dir("turnstream"))
    """Where the embedded servers keep their data and where the dev secret lives."""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """HTTP server processes on the one port (``serve --workers``); the relay and the
    projections run once beside them, each in a process of its own."""
    jwt_secret: str | None = None
    """HS256 secret. Unset: a secret created once in the data folder (dev tokens printed)."""
    trusted_proxies: str = ""
    """Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is
    believed (for the per-address limit); empty: the peer address is the client's."""
    max_body_bytes: int = 1_048_576
    """The largest request body accepted."""
    log_level: str = "INFO"


class StoreSettings(_Group, frozen=True, kw_only=True, rename=_named("DATABASE_")):
    """PostgreSQL: the event store and every table derived from it."""

    url: str | None = None
    """PostgreSQL URL. Unset: an embedded PostgreSQL in the data folder."""
    schema: str = "turnstream"
    """The PostgreSQL schema holding the event store and its tables."""


class NatsSettings(_Group, frozen=True, kw_only=True, rename=_named("NATS_")):
    """NATS JetStream: the stream every stored event is relayed to."""

    url: str | None = None
    """NATS URL (a cluster's nodes comma-separated). Unset: an embedded nats-server."""
    stream: str = "TURNSTREAM"
    """The JetStream stream every stored event is relayed to."""
    subject_prefix: str = "turnstream"
    """The stream's subjects are ``<prefix>.>``; control messages use ``_<prefix>_ctl.>``."""
    replicas: int = 1
    """Stream replicas (3 on a three-node NATS cluster for production)."""
    max_age_s: float = 0.0
    """Drop relayed events older than this from the stream (0: keep forever)."""
    max_bytes: int = 0
    """Drop the oldest relayed events beyond this stream size (0: no limit)."""
    duplicate_window_s: float = 120.0
    """JetStream's de-duplication window on ``Nats-Msg-Id`` (correctness does not rely on it)."""


class RelaySettings(
    _Group,
    frozen=True,
    kw_only=True,
    rename={"enabled": "RELAY", "process": "RELAY_PROCESS", "nice": "RELAY_NICE",
            "batch": "RELAY_BATCH", "takeover_s": "RELAY_TAKEOVER_S"},
):  # fmt: skip
    """The relay: store → NATS, every event once, in order."""

    enabled: bool = True
    """Run the relay inside ``serve`` (one node at a time is active; the others stand by)."""
    process: bool = True
    """Run ``serve``'s relay in a child process (a core of its own, off the HTTP loop)."""
    nice: int = 10
    """The child relay's niceness: on a saturated machine the live SSE streams come first."""
    batch: int = 1000
    """Events the relay reads from the store per page (and at most twice that in flight)."""
    takeover_s: float = 2.0
    """How often a standby relay (or projection worker) tries to take over, and the wait
    between retries."""


class ProjectionSettings(
    _Group,
    frozen=True,
    kw_only=True,
    rename={"enabled": "PROJECTIONS", "process": "PROJECTIONS_PROCESS",
            "wait_s": "PROJECTION_WAIT_S"},
):  # fmt: skip
    """The projections: the read models, kept from the log."""

    enabled: bool = True
    """Keep the projections (message tree, conversation list, usage) inside ``serve``
    (one node at a time is active per projection; the others stand by)."""
    process: bool = True
    """Run ``serve``'s projection workers in a child process (off the HTTP process's GIL)."""
    wait_s: float = 10.0
    """How long a read waits for the projections to hold everything committed before it
    (read your writes) before it answers 503."""


class TurnSettings(_Group, frozen=True, kw_only=True, rename=str.upper):
    """The turn lifecycle's clocks: following, recovery, shutdown."""

    remote_poll_interval_s: float = 2.0
    """With NATS up, how often a reader of a turn run elsewhere also checks the store."""
    store_poll_interval_s: float = 0.2
    """How often a reader polls the store for a turn this node is not running."""
    runner_check_interval_s: float = 5.0
    """How often each node looks for turns whose runner died (runner_lost)."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long running turns may finish before they are interrupted."""


class LimitSettings(_Group, frozen=True, kw_only=True, rename=_named("LIMIT_")):
    """Limits and quotas per user (each 0 = off)."""

    message_chars: int = 100_000
    """The longest message a client may send (413 payload_too_large beyond; 0 = no limit
    but the request body's)."""
    messages_per_minute: int = 0
    """Turns a user, and a client address, may start per minute (429 rate_limited; 0 = off)."""
    conversation_messages: int = 0
    """Messages one conversation may hold (422 conversation_full; 0 = off)."""
    concurrent_turns: int = 0
    """Turns one user may have running at once (429 too_many_turns; 0 = off)."""
    daily_tokens: int = 0
    """Tokens in and out one user may use per UTC day (429 quota_exhausted; 0 = off)."""
    weekly_tokens: int = 0
    """Tokens in and out one user may use per ISO week, from Monday 00:00 UTC (0 = off)."""


class GuestSettings(_Group, frozen=True, kw_only=True, rename=_named("GUEST_")):
    """Guests: visitors who chat before they sign in."""

    messages: int = 0
    """Messages a guest may send in all (429 login_required after); 0 = guests off."""
    tenant: str = "guests"
    """The tenant of guests who do not name one when they ask for a guest token."""
    token_ttl_s: int = 7 * 86400
    """How long a guest token is valid."""


class SseSettings(
    _Group,
    frozen=True,
    kw_only=True,
    rename={"padding": "SSE_PADDING", "ping_interval_s": "PING_INTERVAL_S"},
):
    """The SSE streams."""

    ping_interval_s: float = 15.0
    """Seconds of silence on an SSE stream before a ``: ping`` comment."""
    padding: bool = True
    """Random filler in ``p`` of token and reasoning frames, so frame sizes do not reveal
    token lengths."""


class WriterSettings(_Group, frozen=True, kw_only=True, rename=_named("WRITER_")):
    """The group-commit writer."""

    max_batch: int = 5000
    """The most events one group commit writes."""
    window_s: float = 0.01
    """While busy, commits start at least this far apart and share what came meanwhile
    (a draft waits at most this plus one commit); 0: each commit at once."""


class ModelSettings(
    _Group,
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

    def load(self) -> dict[str, ModelConfig]:
        """The configured models by id, ``demo`` first unless the file redefines it."""
        models: dict[str, ModelConfig] = {"demo": DEMO_MODEL}
        if self.file is None:
            return models
        try:
            data = tomllib.loads(self.file.read_text())
        except OSError as exc:
            msg = f"cannot read the models file {self.file}: {exc.strerror}"
            raise SettingsError(msg) from None
        except tomllib.TOMLDecodeError as exc:
            msg = f"the models file {self.file} is not valid TOML: {exc}"
            raise SettingsError(msg) from None
        try:
            entries = msgspec.convert(data.get("models", []), list[ModelConfig])
        except msgspec.ValidationError as exc:
            msg = f"the models file {self.file} is invalid: {exc}"
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


_SECRET = frozenset({"JWT_SECRET"})
"""Variables a child process is not handed (it needs no secret)."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an operator can set, by group."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    relay: RelaySettings = msgspec.field(default_factory=RelaySettings)
    projections: ProjectionSettings = msgspec.field(default_factory=ProjectionSettings)
    turns: TurnSettings = msgspec.field(default_factory=TurnSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    guests: GuestSettings = msgspec.field(default_factory=GuestSettings)
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
        return settings

    def to_env(self, **overrides: str) -> dict[str, str]:
        """These settings as ``TURNSTREAM_*`` variables (for a child process), secret left
        out; ``overrides`` by name as in :meth:`from_env`."""
        env: dict[str, str] = {}
        for name in GROUPS:
            env |= getattr(self, name).variables()
        env.update({ENV_PREFIX + k.upper(): v for k, v in overrides.items()})
        return env


GROUPS: dict[str, type[_Group]] = {
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


def default_model_id(models: Mapping[str, ModelConfig]) -> str:
    """The model used when a conversation names none."""
    for entry in models.values():
        if entry.default:
            return entry.id
    return "demo"
