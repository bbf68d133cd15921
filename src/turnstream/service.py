"""The chat service: conversations, turn runners, followers, and orphan recovery.

The async face of the synchronous event store. Store calls run on a bounded executor
owned by the service (copying contextvars); the group-commit writer runs on its own
thread; turn runners are asyncio tasks that outlive the request that started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, ParamSpec, TypeVar
from uuid import UUID, uuid4

import msgspec
import psycopg
from eventsourcing.persistence import IntegrityError
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from psycopg.sql import SQL, Identifier

from turnstream.auth import Caller
from turnstream.availability import StoreGuard
from turnstream.bus.envelope import control_subject, decode_envelope, event_of, turn_wildcard
from turnstream.bus.local import Frame, LocalBus
from turnstream.bus.nats import NatsLink
from turnstream.bus.relay import Relay, relay_part
from turnstream.bus.relay_process import RelayProcess
from turnstream.domain.application import TurnstreamApplication
from turnstream.domain.conversation import Conversation
from turnstream.domain.events import utcnow
from turnstream.domain.postgres import (
    STORE_OUTAGE,
    Admission,
    Admitted,
    TurnIndexRow,
    user_key,
)
from turnstream.domain.turn import Turn, TurnEvent, TurnUsage
from turnstream.domain.writer import GroupWriter
from turnstream.errors import (
    ConversationFull,
    ConversationNotFound,
    InputTooLong,
    Invalid,
    LimitExceeded,
    LoginRequired,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    QuotaExhausted,
    ServiceUnavailable,
    TooManyTurns,
    TurnInProgress,
    TurnNotFound,
    UnknownModel,
)
from turnstream.http.metrics import Metrics
from turnstream.http.sse import PING, encode_frame
from turnstream.ids import stable_id, uuid7
from turnstream.limits import RateLimiter
from turnstream.modes import plan_turn
from turnstream.projections.base import lock_key, projection_part
from turnstream.projections.conversation_list import NEW_MESSAGES
from turnstream.projections.reader import Positions, Reader
from turnstream.projections.runner import PROJECTIONS, ProjectionWorker, ensure_projections
from turnstream.projections.usage import period_bounds, period_starts
from turnstream.projections.views import (
    ActiveTurn,
    ConversationPage,
    ConversationSummary,
    ConversationView,
    GuestAllowance,
    UsageLimits,
    UsagePeriod,
    UsageReport,
    conversation_page,
    conversation_view,
    decode_cursor,
    summary,
)
from turnstream.providers import Providers
from turnstream.providers.base import (
    ChatMessage,
    Completed,
    ProviderError,
    ReasoningDelta,
    TextDelta,
    Usage,
    estimate_tokens,
    estimate_usage,
)
from turnstream.providers.title import heuristic_title, llm_title
from turnstream.settings import ModelConfig, Settings, default_model_id

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

RETRY_SOON_S = 5
"""Retry-After when running turns hold a limit: they end within seconds, not a reset."""

LOCK_CLASS = 0x7475726E  # "turn": the advisory-lock namespace of node leases


def node_lock_key(node_id: UUID) -> int:
    """The advisory lock a node holds for as long as it lives (a positive bigint)."""
    return (LOCK_CLASS << 32) | int.from_bytes(node_id.bytes[:4], "big")


def _may(caller: Caller, tenant: str, owner: str, *, read: bool) -> bool:
    """Whether ``caller`` may act on (or, with ``read``, read) a conversation."""
    if tenant != caller.tenant:
        return False
    return owner == caller.user_id or (read and caller.is_admin)


@dataclass(eq=False)
class RunningTurn:
    started: Turn.Started
    model: ModelConfig
    messages: list[ChatMessage]
    first_turn: bool
    title: str | None
    prefix: str = ""
    reasoning_prefix: str = ""
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)

    @property
    def turn_id(self) -> UUID:
        return self.started.originator_id


class TurnRequest:
    """A validated request to start a turn (built by the HTTP layer from the body)."""

    def __init__(
        self,
        *,
        content: str | None,
        mode: Literal["message", "retry", "edit", "continue"] = "message",
        parent_id: UUID | None = None,
        message_id: UUID | None = None,
        request_id: str | None = None,
        model: str | None = None,
        client: str = "unknown",
    ) -> None:
        self.client = client
        """The client's address (for the per-address rate limit)."""
        self.content = content
        self.mode = mode
        self.parent_id = parent_id
        self.message_id = message_id
        self.request_id = request_id
        self.model = model


class ChatService:
    def __init__(
        self,
        settings: Settings,
        app: TurnstreamApplication,
        models: dict[str, ModelConfig],
        providers: Providers,
        link: NatsLink | None = None,
    ) -> None:
        self.settings = settings
        self.link = link
        self.app = app
        self.models = models
        self.providers = providers
        self.node_id = uuid4()
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="turnstream-store")
        self.guard = StoreGuard(self._probe_store)
        self.metrics = Metrics()
        self.encode_frame = functools.partial(encode_frame, padding=settings.sse_padding)
        self.bus = LocalBus(self.encode_frame)
        self.writer = GroupWriter(
            app, self._committed, self._lost, max_batch=settings.writer_max_batch
        )
        self.running: dict[UUID, RunningTurn] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lease: psycopg.Connection[Any] | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self.relay: Relay | None = None
        self.relay_process: RelayProcess | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self.reader = Reader(app)
        self.positions = Positions(app, self.reader)
        self.limiter = RateLimiter(app.store.datastore.schema)
        schema = Identifier(app.store.datastore.schema)
        self._usage_views = (
            SQL("{}.{}").format(schema, Identifier("usage_counters")),
            SQL("{}.{}").format(schema, Identifier("usage_tracking")),
        )
        self.workers: list[tuple[ProjectionWorker, threading.Thread]] = []
        self.projections_process: RelayProcess | None = None
        self._ready = False

    # Lifecycle.

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.run(self._take_lease)
        await self.run(ensure_projections, self.app)
        await self.run(self._create_limits)
        self.positions.start()
        if self.settings.projections and self.settings.projections_process:
            self.projections_process = RelayProcess(
                os.environ | self.settings.to_env(database_url=self.app.database_url),
                command=("projections", "run"),
            )
            self.projections_process.start()
        elif self.settings.projections:
            for projection in PROJECTIONS.values():
                worker = ProjectionWorker(
                    self.app, projection, takeover_s=self.settings.relay_takeover_s
                )
                thread = threading.Thread(
                    target=worker.run_forever, name=f"projection-{projection.name}", daemon=True
                )
                thread.start()
                self.workers.append((worker, thread))
        self.writer.start()
        self._janitor = asyncio.create_task(self._janitor_loop(), name="turnstream-janitor")
        if self.link is not None:
            self.link.start()
            self._background.append(
                asyncio.create_task(self._listen_control(), name="turnstream-control")
            )
            if self.settings.relay and self.settings.relay_process:
                self.relay_process = RelayProcess(
                    os.environ
                    | self.settings.to_env(
                        database_url=self.app.database_url, nats_url=self.link.url
                    )
                )
                self.relay_process.start()
            elif self.settings.relay:
                self.relay = Relay(self.app, self.link, run=self.run_unguarded)
                self._relay_task = asyncio.create_task(
                    self.relay.run_forever(), name="turnstream-relay"
                )
                self._background.append(self._relay_task)
        self._ready = True

    async def stop(self) -> None:
        """Let running turns finish for the grace period, interrupt the rest, flush."""
        self._ready = False
        if self.running:
            tasks = [t.task for t in self.running.values() if t.task is not None]
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for running in list(self.running.values()):
                self.cancel_local(running.turn_id, reason="shutdown")
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        await asyncio.get_running_loop().run_in_executor(None, self.writer.stop)
        # The relay publishes what the last commits stored, then stops; whatever it
        # cannot, the next active relay publishes (it resumes from the stream).
        if self.relay_process is not None:
            await self.relay_process.stop()
        if self.relay is not None and self._relay_task is not None:
            self.relay.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._relay_task), 5.0)
        if self.projections_process is not None:
            await self.projections_process.stop()
        for worker, _ in self.workers:
            worker.stop()
        for _, thread in self.workers:
            await asyncio.to_thread(thread.join, 5.0)
        await self.positions.stop()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.link is not None:
            await self.link.close()
        if self._lease is not None:
            self._lease.close()
        await self.guard.close()
        await self.providers.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a store call of a request on the service's executor, with this context's
        variables. While PostgreSQL is away: ``ServiceUnavailable`` at once (see
        ``StoreGuard``), never a wait on the connection pool."""
        self.guard.check()
        try:
            return await self.run_unguarded(fn, *args, **kwargs)
        except STORE_OUTAGE as exc:
            self.guard.failed(exc)
            raise ServiceUnavailable("The event store is unavailable; try again.") from None

    async def run_unguarded(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """:meth:`run` for a background worker that retries by itself (the relay)."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    def _probe_store(self) -> None:
        """Raise unless PostgreSQL answers; once it does, the pool drops its dead
        connections (those it held when the store went away)."""
        with psycopg.connect(self.app.database_url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        self.app.store.datastore.pool.check()

    def ready(self) -> bool:
        return self._ready

    async def check_nats(self) -> bool:
        return self.link is not None and await self.link.ping()

    async def check_projections(self) -> bool:
        """Whether a worker (of any node) leads each projection, so reads can catch up.

        Only asked of a node that runs projection workers itself: until its child
        process has started, a read after a write would wait for nothing.
        """

        def led() -> bool:
            keys = [lock_key(self.app.store.datastore.schema, name) for name in PROJECTIONS]
            with self.app.store.datastore.get_connection() as conn:
                row = conn.execute(
                    "SELECT count(DISTINCT (classid::bigint << 32) | objid::bigint) AS n"
                    " FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                    " AND ((classid::bigint << 32) | objid::bigint) = ANY(%s)",
                    (keys,),
                ).fetchone()
            return row is not None and int(row["n"]) == len(keys)

        try:
            return await asyncio.wait_for(self.run(led), timeout=3)
        except Exception:  # any failure means "not ready"; the probe says no more
            return False

    def repaired(self) -> dict[str, int]:
        """The events each part took only repaired: ``relay`` (this node's stream) and
        each projection by name (see the store's ``note_repairs``)."""
        with self.app.store.datastore.get_connection() as conn:
            counts = self.app.store.repair_counts(conn)
        parts = {"relay": relay_part(self.settings.nats_stream)}
        parts |= {name: projection_part(name) for name in PROJECTIONS}
        return {label: counts.get(part, 0) for label, part in parts.items()}

    async def check_store(self) -> bool:
        def ping() -> bool:
            with self.app.store.datastore.get_connection() as conn:
                conn.execute("SELECT 1")
            return True

        try:
            return await asyncio.wait_for(self.run(ping), timeout=3)
        except Exception:  # any failure means "not ready"; the probe says no more
            return False

    # Conversations.

    async def create_conversation(
        self,
        caller: Caller,
        *,
        model: str | None,
        title: str | None,
        system_prompt: str | None,
    ) -> ConversationSummary:
        model_id = model or default_model_id(self.models)
        if model_id not in self.models:
            raise UnknownModel(model_id)
        created = Conversation.create(
            uuid7(),
            tenant=caller.tenant,
            owner=caller.user_id,
            model=model_id,
            title=title,
            system_prompt=system_prompt,
        )
        await self.run(self.app.record, created)
        conversation = Conversation.fold([created])
        assert conversation is not None
        return summary(conversation)

    async def conversation(
        self, caller: Caller, conversation_id: UUID, *, read: bool = False
    ) -> Conversation:
        """The caller's conversation; anything else is 'not found', never 'forbidden'.

        ``read``: an admin may also read the conversations of their own tenant.
        """
        conversation = await self.run(self.app.conversation, conversation_id)
        if not _may(caller, conversation.tenant, conversation.owner, read=read):
            raise ConversationNotFound(conversation_id)
        return conversation

    async def caught_up(self, name: str) -> None:
        """Wait until projection ``name`` holds every event committed before this call.

        Read your writes: a client that saw a turn's terminal frame, or got 2xx for a
        rename, then reads, sees it. Waits on the position the worker announces.
        """
        _, pending = await self.run(self.reader.pending, name)
        if pending is None:
            return
        if not await self.positions.wait(name, pending, self.settings.projection_wait_s):
            raise ServiceUnavailable("The read model is catching up; try again shortly.")

    async def _tree(
        self, caller: Caller, conversation_id: UUID, *, read: bool = False
    ) -> dict[str, Any]:
        """The caller's conversation row of the message tree (404 for anyone else's)."""
        await self.caught_up("tree")
        row = await self.run(self.reader.conversation, conversation_id)
        if row is None or not _may(caller, row["tenant"], row["owner"], read=read):
            raise ConversationNotFound(conversation_id)
        return row

    async def conversation_view(self, caller: Caller, conversation_id: UUID) -> ConversationView:
        row = await self._tree(caller, conversation_id, read=True)
        messages = await self.run(self.reader.messages, conversation_id)
        active: ActiveTurn | None = None
        if row["active_turn_id"] is not None:
            turn_id = row["active_turn_id"]
            last_seq = await self.run(self.app.store.last_version, turn_id)
            active = ActiveTurn(turn_id=turn_id, last_seq=last_seq)
        return conversation_view(row, messages, active)

    async def list_conversations(
        self, caller: Caller, limit: int, cursor: str | None
    ) -> ConversationPage:
        after = decode_cursor(cursor) if cursor else None
        await self.caught_up("conversations")
        rows = await self.run(
            self.reader.conversations, caller.tenant, caller.user_id, limit + 1, after
        )
        return conversation_page(rows, limit)

    async def rename(self, caller: Caller, conversation_id: UUID, title: str) -> None:
        conversation = await self.conversation(caller, conversation_id)
        await self.run(self.app.record, conversation.rename(title))

    async def delete(self, caller: Caller, conversation_id: UUID) -> None:
        conversation = await self.conversation(caller, conversation_id)
        await self.run(self.app.record, conversation.delete())

    async def claim(self, caller: Caller, guest: Caller, conversation_id: UUID) -> None:
        """Move ``guest``'s conversation to the signed-in ``caller`` (same tenant)."""
        if caller.guest:
            raise Invalid("Sign in first: a guest cannot claim conversations.")
        if not guest.guest:
            raise Invalid("X-Guest-Token must be a guest token (from POST /v1/guest).")
        conversation = await self.run(self.app.conversation, conversation_id)
        if conversation.deleted or conversation.tenant != caller.tenant:
            raise ConversationNotFound(conversation_id)
        if conversation.owner == caller.user_id:
            return  # claimed already: the same answer again
        if guest.tenant != caller.tenant or conversation.owner != guest.user_id:
            raise ConversationNotFound(conversation_id)
        await self.run(self.app.record, conversation.claim(caller.user_id))

    async def usage(self, caller: Caller) -> UsageReport:
        """The caller's usage this UTC day and ISO week, with the limits and resets."""
        await self.caught_up("usage")
        day, week = period_starts(utcnow())
        rows = await self.run(self.reader.usage, caller.tenant, caller.user_id, day, week)
        totals = {r["period"]: r for r in rows}
        settings = self.settings

        def period(name: str, start: date, limit: int) -> UsagePeriod:
            row = totals.get(name, {})
            prompt = int(row.get("prompt_tokens") or 0)
            completion = int(row.get("completion_tokens") or 0)
            begins, resets = period_bounds(name, start)
            return UsagePeriod(
                start=begins,
                resets_at=resets,
                turns=int(row.get("turns") or 0),
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                limit_tokens=limit or None,
                remaining_tokens=max(0, limit - prompt - completion) if limit else None,
            )

        guest = None
        if caller.guest:
            used = await self.run(self.app.store.turns_of, user_key(caller.tenant, caller.user_id))
            allowed = settings.guest_messages
            guest = GuestAllowance(messages=allowed, used=used, remaining=max(0, allowed - used))
        return UsageReport(
            day=period("day", day, settings.limit_daily_tokens),
            week=period("week", week, settings.limit_weekly_tokens),
            limits=UsageLimits(
                messages_per_minute=settings.limit_messages_per_minute or None,
                message_chars=settings.limit_message_chars or None,
                conversation_messages=settings.limit_conversation_messages or None,
                concurrent_turns=settings.limit_concurrent_turns or None,
                daily_tokens=settings.limit_daily_tokens or None,
                weekly_tokens=settings.limit_weekly_tokens or None,
            ),
            guest=guest,
        )

    async def guest_allowed(self, client: str) -> None:
        """Guest tokens are handed out under the per-address rate limit."""
        if not self.settings.guest_messages:
            raise NotFound("Guests are not enabled on this service.")
        per_minute = self.settings.limit_messages_per_minute
        if per_minute:
            retry_after = await self.run(self._take, [f"guest:{client}"], per_minute)
            if retry_after:
                raise LimitExceeded(
                    f"At most {per_minute} guest sessions a minute from one address.",
                    retry_after=retry_after,
                    limit=per_minute,
                )

    # Turns.

    async def start_turn(self, caller: Caller, conversation_id: UUID, request: TurnRequest) -> UUID:
        """Validate, check the limits, record ``turn.started`` and launch the runner.

        Returns the turn id. With a ``request_id`` already used in this conversation,
        returns that turn instead of starting another generation. Every check runs
        before anything is stored or streamed.
        """
        conversation = await self._tree(caller, conversation_id)
        turn_id = stable_id(conversation_id, request.request_id) if request.request_id else uuid7()
        if request.request_id and await self._is_turn_of(turn_id, conversation_id):
            return turn_id
        limit = self.settings.limit_message_chars
        if limit and request.content is not None and len(request.content) > limit:
            raise PayloadTooLarge(f"A message has at most {limit} characters.", max_chars=limit)
        if caller.guest and not self.settings.guest_messages:
            raise LoginRequired("Guests cannot send messages here; sign in.", retry_after=3600)
        model_id = request.model or conversation["model"]
        model = self.models.get(model_id)
        if model is None:
            if request.model is not None:
                raise UnknownModel(model_id)
            raise ModelUnavailable(f"The conversation's model {model_id!r} is no longer served.")
        messages = {m["id"]: m for m in await self.run(self.reader.messages, conversation_id)}
        limit = self.settings.limit_conversation_messages
        if limit and len(messages) + NEW_MESSAGES[request.mode] > limit:
            raise ConversationFull(
                f"A conversation holds at most {limit} messages; start a new one.",
                max_messages=limit,
            )
        plan = plan_turn(request, messages, conversation["current_leaf_id"])
        system_prompt = conversation["system_prompt"]
        path = [ChatMessage("system", system_prompt)] if system_prompt else []
        path += [ChatMessage(m["role"], m["content"]) for m in plan.history if m["content"]]
        if plan.content is not None:
            path.append(ChatMessage("user", plan.content))
        if plan.prefix:
            path.append(ChatMessage("assistant", plan.prefix))
        estimate = sum(estimate_tokens(m.content) + 4 for m in path)
        if model.max_input_tokens is not None and estimate > model.max_input_tokens:
            raise InputTooLong(
                f"This turn's input is about {estimate} tokens; {model.id!r} takes at most"
                f" {model.max_input_tokens}. Start a new conversation or branch higher up.",
                estimated_tokens=estimate,
                max_input_tokens=model.max_input_tokens,
            )
        started = Turn.Started(
            originator_id=turn_id,
            originator_version=1,
            timestamp=utcnow(),
            conversation_id=conversation_id,
            tenant=caller.tenant,
            user_id=caller.user_id,
            node_id=self.node_id,
            mode=request.mode,
            user_message_id=uuid7() if plan.content is not None else None,
            assistant_message_id=plan.assistant_message_id or uuid7(),
            parent_id=plan.parent_id,
            model=model.id,
            request_id=request.request_id,
            content=plan.content or "",
            prefix=plan.prefix,
            reasoning_prefix=plan.reasoning_prefix,
        )
        worth = estimate + self._output_worth(model, estimate)
        admission = self._admission(caller, started, worth, request.client)
        try:
            admitted = await self.run(self._record_start, started, admission)
        except IntegrityError:
            running = await self.run(self.app.store.running_turn, conversation_id)
            if request.request_id and await self._is_turn_of(turn_id, conversation_id):
                return turn_id
            if running is not None:
                raise TurnInProgress(running) from None
            raise ServiceUnavailable("The turn could not be started; try again.") from None
        if admitted.position is None:
            if request.request_id and await self._is_turn_of(turn_id, conversation_id):
                return turn_id  # the same request, started by a concurrent POST
            raise await self._refusal(admission, admitted)
        running_turn = RunningTurn(
            started=started,
            model=model,
            messages=path,
            first_turn=not messages,
            title=conversation["title"],
            prefix=plan.prefix,
            reasoning_prefix=plan.reasoning_prefix,
        )
        self.running[turn_id] = running_turn
        self.bus.open(turn_id)
        self.writer.open_turn(turn_id, 1)
        running_turn.task = asyncio.create_task(
            self._run_turn(running_turn), name=f"turn-{turn_id}"
        )
        return turn_id

    async def _is_turn_of(self, turn_id: UUID, conversation_id: UUID) -> bool:
        row = await self.run(self.app.store.turn_row, turn_id)
        return row is not None and row.conversation_id == conversation_id

    # Limits.

    def _create_limits(self) -> None:
        with self.app.connect() as conn:
            self.limiter.create(conn)

    def _take(self, keys: list[str], per_minute: int) -> int:
        with self.app.store.datastore.get_connection() as conn:
            return self.limiter.take(conn, keys, per_minute)

    def _wait(self, keys: tuple[str, ...], per_minute: int) -> int:
        with self.app.store.datastore.get_connection() as conn:
            return self.limiter.wait(conn, keys, per_minute)

    def _output_worth(self, model: ModelConfig, estimate: int) -> int:
        """The most output tokens a turn on ``model`` may produce (for the quotas)."""
        if model.max_output_tokens is not None:
            return model.max_output_tokens
        if model.provider == "demo":
            return self.settings.demo_tokens * 2  # its answer and its reasoning
        return max(0, model.context_window - estimate)

    def _admission(
        self, caller: Caller, started: Turn.Started, worth: int, client: str
    ) -> Admission:
        """The limits of this start: counted with the start itself (see the store)."""
        settings = self.settings
        day, week = period_starts(started.timestamp)
        counters, tracking = self._usage_views
        return Admission(
            tenant=caller.tenant,
            user_id=caller.user_id,
            reserve=worth,
            max_running=settings.limit_concurrent_turns,
            max_turns=settings.guest_messages if caller.guest else 0,
            quota_day=settings.limit_daily_tokens,
            quota_week=settings.limit_weekly_tokens,
            day=day,
            week=week,
            usage_counters=counters,
            usage_tracking=tracking,
            per_minute=settings.limit_messages_per_minute,
            rate_keys=(f"user:{user_key(caller.tenant, caller.user_id)}", f"addr:{client}"),
            rate_table=self.limiter.table,
        )

    async def _refusal(self, a: Admission, f: Admitted) -> LimitExceeded:
        """Which limit refused a turn, with when to try again."""
        now = utcnow()
        if a.max_turns and f.turns >= a.max_turns:
            return LoginRequired(
                f"A guest may send {a.max_turns} messages; sign in to go on.",
                retry_after=self.settings.guest_token_ttl_s,
                limit=a.max_turns,
            )
        if a.per_minute and f.rate_taken < len(set(a.rate_keys)):
            retry_after = await self.run(self._wait, a.rate_keys, a.per_minute)
            return LimitExceeded(
                f"At most {a.per_minute} messages a minute; try again in {retry_after} s.",
                retry_after=retry_after,
                limit=a.per_minute,
            )
        if a.max_running and f.running >= a.max_running:
            return TooManyTurns(
                f"At most {a.max_running} turns may run at once; wait for one to end.",
                retry_after=RETRY_SOON_S,
                limit=a.max_running,
            )
        for quota, used, start, period, name in (
            (a.quota_day, f.used_day, a.day, "day", "daily"),
            (a.quota_week, f.used_week, a.week, "week", "weekly"),
        ):
            if not quota or used + f.pending < quota:
                continue
            assert start is not None
            _, resets = period_bounds(period, start)
            if used >= quota:
                wait = max(1, math.ceil((resets - now).total_seconds()))
                detail = (
                    f"The {name} quota of {quota} tokens is used up until"
                    f" {resets:%Y-%m-%d %H:%M} UTC."
                )
            else:
                wait = RETRY_SOON_S
                detail = (
                    f"The {name} quota of {quota} tokens is held by turns still running;"
                    " try again when they end."
                )
            return QuotaExhausted(
                detail, retry_after=wait, limit=quota, used=used, resets_at=resets.isoformat()
            )
        return TooManyTurns("The turn could not be admitted; try again.", retry_after=1)

    def _record_start(self, started: Turn.Started, admission: Admission) -> Admitted:
        with self.app.store.datastore.get_connection() as conn:
            return self.app.start_turn(conn, started, admission)

    async def check_turn(
        self, caller: Caller, conversation_id: UUID, turn_id: UUID, *, read: bool = False
    ) -> TurnIndexRow:
        """The turn's index row, if it is in the caller's conversation; else 404."""
        await self.conversation(caller, conversation_id, read=read)
        row = await self.run(self.app.store.turn_row, turn_id)
        if row is None or row.conversation_id != conversation_id:
            raise TurnNotFound(turn_id)
        return row

    async def active_turn(self, caller: Caller, conversation_id: UUID) -> UUID | None:
        await self.conversation(caller, conversation_id, read=True)
        return await self.run(self.app.store.running_turn, conversation_id)

    async def cancel(self, caller: Caller, conversation_id: UUID, turn_id: UUID) -> None:
        """Cancel the turn wherever it runs: here, or on its node through NATS."""
        row = await self.check_turn(caller, conversation_id, turn_id)
        if row.ended or self.cancel_local(turn_id, reason="cancelled"):
            return
        if row.node_id == self.node_id:
            return  # ending right now, or already ended
        link = self.link
        if link is None or link.nc is None or not link.connected:
            msg = "The node running this turn cannot be reached now; try again."
            raise ServiceUnavailable(msg)
        request = _ControlRequest(op="cancel", turn_id=turn_id)
        try:
            await link.nc.request(
                control_subject(self.settings.nats_subject_prefix, row.node_id),
                _control_encoder.encode(request),
                timeout=3,
            )
        except NoRespondersError:
            # That node is gone: its turns end as runner_lost within the check interval.
            log.info("cancel %s: node %s does not answer; left to recovery", turn_id, row.node_id)
        except (NatsTimeout, TimeoutError):
            msg = "The node running this turn did not answer; try again."
            raise ServiceUnavailable(msg) from None

    async def _listen_control(self) -> None:
        """Take commands for this node (cancel) from NATS; nats-py resubscribes on reconnect."""
        link = self.link
        assert link is not None
        await link.ready.wait()
        assert link.nc is not None

        async def handle(msg: Msg) -> None:
            try:
                request = _control_decoder.decode(msg.data)
            except msgspec.DecodeError:
                log.warning("ignoring a malformed control message")
                return
            done = False
            if request.op == "cancel":
                done = self.cancel_local(request.turn_id, reason="cancelled")
            if msg.reply:
                await msg.respond(_control_encoder.encode(_ControlReply(ok=True, done=done)))

        subject = control_subject(self.settings.nats_subject_prefix, self.node_id)
        sub = await link.nc.subscribe(subject, cb=handle)
        try:
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def cancel_local(self, turn_id: UUID, *, reason: str) -> bool:
        running = self.running.get(turn_id)
        if running is None or running.task is None or running.cancel_reason is not None:
            return False
        running.cancel_reason = reason
        running.task.cancel()
        return True

    async def follow(
        self, tenant: str, conversation_id: UUID, turn_id: UUID, after: int = 0
    ) -> AsyncIterator[bytes]:
        """The turn's frames after ``after``, then live until its terminal frame.

        Subscribes before reading the store, so nothing committed in between is missed;
        drops by ``seq`` what the store read already gave, so nothing is sent twice.
        Live frames come from this node's writer when the turn runs here, else from
        NATS (the relay's messages), with a store read as a safety net.
        """
        queue = self.bus.subscribe(turn_id)
        remote = await self._subscribe_remote(tenant, conversation_id, turn_id, queue)
        last = after
        last_sent = time.monotonic()
        ping_every = self.settings.ping_interval_s
        self.metrics.open_streams.inc()
        try:
            while True:
                events = await self.run(self.app.turn_events, turn_id, last)
                for event in events:
                    yield self.encode_frame(event)
                    last = event.originator_version
                    if event.TERMINAL:
                        return
                if events:
                    last_sent = time.monotonic()
                elif not self.bus.is_running(turn_id) and await self.run(
                    self.app.turn_ended, turn_id
                ):
                    return  # the client already has the terminal frame
                # Live: frames from the local writer, or a store poll for a turn
                # that runs elsewhere (or whose runner is gone).
                while True:
                    local = self.bus.is_running(turn_id)
                    wait = ping_every - (time.monotonic() - last_sent)
                    if not local:
                        live = remote is not None and self.link is not None and self.link.connected
                        poll = self.settings.remote_poll_interval_s if live else None
                        wait = min(wait, poll or self.settings.store_poll_interval_s)
                    try:
                        frame: Frame = await asyncio.wait_for(queue.get(), max(wait, 0.0))
                    except TimeoutError:
                        if time.monotonic() - last_sent >= ping_every:
                            yield PING
                            last_sent = time.monotonic()
                        if not self.bus.is_running(turn_id):
                            break  # poll the store
                        continue
                    if frame.seq <= last:
                        continue
                    if frame.seq != last + 1:
                        break  # a gap (should not happen): fill it from the store
                    yield frame.data
                    last = frame.seq
                    last_sent = time.monotonic()
                    if frame.terminal:
                        return
        except ServiceUnavailable:
            # The store went away: end the stream; the client resumes from its last id.
            log.info(
                "stream of turn %s ended after seq %d: the store is unavailable", turn_id, last
            )
        finally:
            self.metrics.open_streams.dec()
            self.bus.unsubscribe(turn_id, queue)
            if remote is not None:
                with contextlib.suppress(Exception):
                    await remote.unsubscribe()

    async def _subscribe_remote(
        self, tenant: str, conversation_id: UUID, turn_id: UUID, queue: asyncio.Queue[Frame]
    ) -> Subscription | None:
        """Feed ``queue`` from NATS when the turn runs on another node (None otherwise)."""
        link = self.link
        if self.bus.is_running(turn_id) or link is None or link.nc is None or not link.connected:
            return None

        async def deliver(msg: Msg) -> None:
            try:
                event = event_of(decode_envelope(msg.data))
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
                log.warning("ignoring a malformed message on %s", msg.subject)
                return
            queue.put_nowait(self.bus.frame(event))  # type: ignore[arg-type]

        subject = turn_wildcard(self.settings.nats_subject_prefix, tenant, conversation_id, turn_id)
        sub: Subscription | None = None
        try:
            sub = await link.nc.subscribe(subject, cb=deliver)
            # The server has the subscription before the store is read: nothing relayed
            # in between can slip past both.
            await link.nc.flush(timeout=2)
        except Exception as exc:  # NATS trouble: the reader falls back to store polling
            log.debug("no live NATS feed for turn %s: %s", turn_id, exc)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            return None
        return sub

    # The runner.

    async def _run_turn(self, turn: RunningTurn) -> None:
        turn_id = turn.turn_id
        meter = self.metrics.turn(turn.model.id, self.writer.submit)
        submit = meter  # the writer's, timed and counted
        usage: Usage | None = None
        finish_reason = "stop"
        title_task: asyncio.Task[str] | None = None

        def title_now() -> None:
            """A first turn that ends early is titled all the same, before its end."""
            nonlocal title_task
            if title_task is None:
                return
            task, title_task = title_task, None
            if task.done() and not task.cancelled() and task.exception() is None:
                title = task.result()
            else:
                task.cancel()
                title = turn.title or heuristic_title(turn.started.content)
            submit(turn_id, Turn.Titled, title=title)

        try:
            if turn.first_turn:
                title_task = self._title_task(turn)
            provider = self.providers.for_model(turn.model)
            async for chunk in provider.stream(turn.model, turn.messages):
                if isinstance(chunk, TextDelta):
                    if chunk.text:
                        turn.text.append(chunk.text)
                        submit(turn_id, Turn.TokensAppended, text=chunk.text)
                elif isinstance(chunk, ReasoningDelta):
                    if chunk.text:
                        turn.reasoning.append(chunk.text)
                        submit(turn_id, Turn.ReasoningAppended, text=chunk.text)
                elif isinstance(chunk, Completed):
                    usage = chunk.usage
                    finish_reason = chunk.finish_reason
                if title_task is not None and title_task.done():
                    submit(turn_id, Turn.Titled, title=title_task.result())
                    title_task = None
            if title_task is not None:
                submit(turn_id, Turn.Titled, title=await title_task)
                title_task = None
            text, reasoning = "".join(turn.text), "".join(turn.reasoning)
            if usage is None:
                usage = estimate_usage(turn.messages, text, reasoning)
            submit(
                turn_id,
                Turn.Finished,
                status="completed",
                text=turn.prefix + text,
                reasoning=turn.reasoning_prefix + reasoning,
                finish_reason=finish_reason,
                usage=_usage(usage),
            )
        except asyncio.CancelledError:
            if turn.cancel_reason is None:
                raise
            title_now()
            text, reasoning = "".join(turn.text), "".join(turn.reasoning)
            submit(
                turn_id,
                Turn.Finished,
                status="interrupted",
                text=turn.prefix + text,
                reasoning=turn.reasoning_prefix + reasoning,
                finish_reason=turn.cancel_reason,
                usage=_usage(estimate_usage(turn.messages, text, reasoning)),
            )
        except ProviderError as exc:
            title_now()
            text, reasoning = "".join(turn.text), "".join(turn.reasoning)
            submit(
                turn_id,
                Turn.Failed,
                code=exc.code,
                message=str(exc),
                text=turn.prefix + text,
                reasoning=turn.reasoning_prefix + reasoning,
                usage=_usage(estimate_usage(turn.messages, text, reasoning)),
            )
        except Exception:
            log.exception("turn %s failed", turn_id)
            title_now()
            submit(
                turn_id,
                Turn.Failed,
                code="internal_error",
                message="The turn failed unexpectedly.",
                text=turn.prefix + "".join(turn.text),
                reasoning=turn.reasoning_prefix + "".join(turn.reasoning),
            )
        finally:
            if title_task is not None:
                title_task.cancel()
            self.running.pop(turn_id, None)
            meter.close()

    def _title_task(self, turn: RunningTurn) -> asyncio.Task[str]:
        content = turn.started.content
        if turn.title:
            title = turn.title

            async def given() -> str:
                return title

            return asyncio.create_task(given())
        if turn.model.title_model:
            title_model = self.models[turn.model.title_model]
            provider = self.providers.for_model(title_model)
            return asyncio.create_task(llm_title(provider, title_model, content))

        async def heuristic() -> str:
            return heuristic_title(content)

        return asyncio.create_task(heuristic())

    # From the writer thread.

    def _committed(self, events: Any, position: int) -> None:
        assert self._loop is not None
        self.metrics.writer_batch.observe(len(events))
        if position:  # 0: a commit confirmed after its connection dropped, so not timed
            self.metrics.writer_commit.observe(self.writer.stats.last_commit_s)
        self._loop.call_soon_threadsafe(self.bus.publish, events)

    def _lost(self, turn_id: UUID) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_lost, turn_id)

    def _on_lost(self, turn_id: UUID) -> None:
        self.bus.lost(turn_id)
        running = self.running.get(turn_id)
        if running is not None and running.task is not None:
            running.cancel_reason = "lost"
            running.task.cancel()

    # Node lease and orphan recovery.

    def _take_lease(self) -> None:
        self._lease = self.app.connect()
        self._lease.execute("SELECT pg_advisory_lock(%s)", (node_lock_key(self.node_id),))

    def _keep_lease(self) -> None:
        try:
            if self._lease is None or self._lease.closed:
                raise psycopg.OperationalError("lease connection closed")
            self._lease.execute("SELECT 1")
        except psycopg.Error:
            log.warning("node lease lost; taking it again")
            if self._lease is not None:
                self._lease.close()
            self._take_lease()

    async def _janitor_loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while True:
            try:
                await self.run(self._keep_lease)
                if conn is None or conn.closed:
                    conn = await self.run(self.app.connect)
                await self.run(self._end_orphans, conn)
                await self.run(self.limiter.forget_past, conn)
            except (ServiceUnavailable, psycopg.Error, OSError) as exc:
                if not self.guard.down:  # else the guard has said so, and watches
                    log.warning("orphan check failed: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
            await asyncio.sleep(self.settings.runner_check_interval_s)

    def _end_orphans(self, conn: psycopg.Connection[Any]) -> int:
        ended = 0
        for node_id in self.app.store.running_nodes(exclude=self.node_id):
            written = self.app.end_orphans(conn, node_id, node_lock_key(node_id), _runner_lost)
            for event in written:
                log.warning("turn %s: runner on node %s lost", event.originator_id, node_id)
            ended += len(written)
        return ended


class _ControlRequest(msgspec.Struct, frozen=True):
    op: Literal["cancel"]
    turn_id: UUID


class _ControlReply(msgspec.Struct, frozen=True):
    ok: bool
    done: bool


_control_encoder = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(_ControlRequest)


def _usage(usage: Usage) -> TurnUsage:
    return TurnUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        estimated=usage.estimated,
    )


def _runner_lost(turn: Turn) -> TurnEvent:
    return Turn.Failed(
        originator_id=turn.id,
        originator_version=turn.version + 1,
        timestamp=utcnow(),
        code="runner_lost",
        message="The process running this turn stopped; the text streamed so far is kept.",
        text=turn.text,
        reasoning=turn.reasoning,
    )
