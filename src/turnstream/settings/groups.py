"""The settings groups of the service's parts, one class each.

Each field's docstring is the operator's documentation; the README's settings table
names every variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import platformdirs

from turnstream.settings.base import Group, named


class ServerSettings(Group, frozen=True, kw_only=True, rename=str.upper):
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
    metrics_token: str | None = None
    """A bearer token ``/metrics`` asks for (Prometheus's ``authorization``); unset: open."""


class StoreSettings(Group, frozen=True, kw_only=True, rename=named("DATABASE_")):
    """PostgreSQL: the event store and every table derived from it."""

    url: str | None = None
    """PostgreSQL URL. Unset: an embedded PostgreSQL in the data folder."""
    schema: str = "turnstream"
    """The PostgreSQL schema holding the event store and its tables."""


class NatsSettings(Group, frozen=True, kw_only=True, rename=named("NATS_")):
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
    Group,
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
    Group,
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


class TurnSettings(Group, frozen=True, kw_only=True, rename=str.upper):
    """The turn lifecycle's clocks: following, recovery, shutdown."""

    remote_poll_interval_s: float = 2.0
    """With NATS up, how often a reader of a turn run elsewhere also checks the store."""
    store_poll_interval_s: float = 0.2
    """How often a reader polls the store for a turn this node is not running."""
    runner_check_interval_s: float = 5.0
    """How often each node looks for turns whose runner died (runner_lost)."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long running turns may finish before they are interrupted."""


class ToolSettings(Group, frozen=True, kw_only=True, rename=str.upper):
    """Tools in turns: how many model steps, how long a tool and a wait may take."""

    turn_max_steps: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    """Model steps one turn may take (each after the first follows tool results); beyond,
    the turn ends with ``too_many_steps``."""
    tool_timeout_s: float = 30.0
    """How long one MCP tool call may take; beyond, the model gets an error result."""
    tool_output_max_bytes: int = 65_536
    """The most of one tool result the turn keeps and the model sees (cut beyond)."""
    tool_wait_s: float = 3600.0
    """How long a turn waits for tool results or approvals before it ends with
    ``tool_timeout``."""


class LimitSettings(Group, frozen=True, kw_only=True, rename=named("LIMIT_")):
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
    file_bytes: int = 10 * 1024 * 1024
    """The largest file a user may upload, in bytes (413 file_too_large beyond)."""
    files_per_message: int = 10
    """Files one message may attach (400 too_many_attachments beyond; 0 = no limit)."""
    storage_bytes: int = 0
    """Bytes of files one user may store, each content counted once (429 quota_exhausted;
    0 = off)."""
    image_pixels: int = 50_000_000
    """The most pixels (width x height) an uploaded image may have (413 image_too_large):
    an image is never decoded, its size read from its header."""


class GuestSettings(Group, frozen=True, kw_only=True, rename=named("GUEST_")):
    """Guests: visitors who chat before they sign in."""

    messages: int = 0
    """Messages a guest may send in all (429 login_required after); 0 = guests off."""
    tenant: str = "guests"
    """The tenant of guests who do not name one when they ask for a guest token."""
    token_ttl_s: int = 7 * 86400
    """How long a guest token is valid."""
    tenants: str = ""
    """Comma-separated tenants a guest may ask a token for; empty: ``GUEST_TENANT`` alone.
    Any other tenant is 404, as when guests are off."""

    def allowed_tenants(self) -> frozenset[str]:
        named_ = {t.strip() for t in self.tenants.split(",") if t.strip()}
        return frozenset(named_ or {self.tenant})


class SseSettings(
    Group,
    frozen=True,
    kw_only=True,
    rename={"padding": "SSE_PADDING", "ping_interval_s": "PING_INTERVAL_S",
            "max_stream_s": "SSE_MAX_STREAM_S"},
):  # fmt: skip
    """The SSE streams."""

    ping_interval_s: float = 15.0
    """Seconds of silence on an SSE stream before a ``: ping`` comment."""
    padding: bool = True
    """Random filler in ``p`` of token and reasoning frames, so frame sizes do not reveal
    token lengths."""
    max_stream_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Close an EventSource stream after this long (0: never); the browser resumes it at
    once from its ``Last-Event-ID``, so proxies that cut long responses lose nothing."""


class WriterSettings(Group, frozen=True, kw_only=True, rename=named("WRITER_")):
    """The group-commit writer."""

    max_batch: int = 5000
    """The most events one group commit writes."""
    window_s: float = 0.01
    """While busy, commits start at least this far apart and share what came meanwhile
    (a draft waits at most this plus one commit); 0: each commit at once."""


class BrowserSettings(
    Group,
    frozen=True,
    kw_only=True,
    rename={
        "cors_origins": "CORS_ORIGINS",
        "stream_ticket_ttl_s": "STREAM_TICKET_TTL_S",
        "playground": "PLAYGROUND",
    },
):
    """What browsers need: CORS and stream tickets for front ends on other origins
    (their own ``EventSource`` cannot send an ``Authorization`` header), and the
    playground page of this one."""

    cors_origins: str = ""
    """Comma-separated origins (``https://chat.example.com``) whose pages may call the API;
    empty: CORS off."""
    stream_ticket_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 600
    """How long a stream ticket (``?ticket=`` on a conversation's GET streams) is valid."""
    playground: bool = True
    """Serve the playground page at ``/`` and ``/playground``."""

    def origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]
