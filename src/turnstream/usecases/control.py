"""Cancel a turn wherever it runs: here, or on its node, over NATS.

Each node takes commands on ``_<prefix>_ctl.<node_id>`` (outside the stream's subjects).
A cancel for a turn of another node is a request to that node; a node that does not
answer (it is gone) leaves the turn to recovery, which ends it as ``runner_lost``. A
turn that waits for tool results or approvals runs nowhere: whichever node takes the
cancel ends it, if it still waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal
from uuid import UUID

import msgspec
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from turnstream.bus.envelope import control_subject
from turnstream.bus.nats import NatsLink
from turnstream.domain.callers import Caller
from turnstream.domain.errors import ServiceUnavailable
from turnstream.store.application import TurnstreamApplication
from turnstream.store.gateway import StoreGateway
from turnstream.usecases.conversations import Conversations
from turnstream.usecases.registry import RunningTurns
from turnstream.usecases.tooluse import end_waiting

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 3.0


class _ControlRequest(msgspec.Struct, frozen=True):
    op: Literal["cancel"]
    turn_id: UUID


class _ControlReply(msgspec.Struct, frozen=True):
    ok: bool
    done: bool


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_ControlRequest)


class TurnControl:
    def __init__(
        self,
        *,
        app: TurnstreamApplication,
        gateway: StoreGateway,
        conversations: Conversations,
        registry: RunningTurns,
        link: NatsLink | None,
        node_id: UUID,
        subject_prefix: str,
    ) -> None:
        self.app = app
        self.run = gateway.run
        self.conversations = conversations
        self.registry = registry
        self.link = link
        self.node_id = node_id
        self.prefix = subject_prefix

    async def cancel(self, caller: Caller, conversation_id: UUID, turn_id: UUID) -> None:
        """Cancel the turn wherever it runs (idempotent: an ended turn stays as it is)."""
        row = await self.conversations.turn(caller, conversation_id, turn_id)
        if row.waiting:
            if await self.run(end_waiting, self.app, turn_id, code=None):
                return
            row = await self.conversations.turn(caller, conversation_id, turn_id)  # taken up
        if row.ended or self.registry.cancel(turn_id, reason="cancelled"):
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
                control_subject(self.prefix, row.node_id),
                _encoder.encode(request),
                timeout=CONTROL_TIMEOUT_S,
            )
        except NoRespondersError:
            # That node is gone: its turns end as runner_lost within the check interval.
            log.info("cancel %s: node %s does not answer; left to recovery", turn_id, row.node_id)
        except (NatsTimeout, TimeoutError):
            msg = "The node running this turn did not answer; try again."
            raise ServiceUnavailable(msg) from None

    async def listen(self) -> None:
        """Take commands for this node (cancel) until cancelled; nats-py resubscribes on
        reconnect."""
        link = self.link
        assert link is not None
        await link.ready.wait()
        assert link.nc is not None

        async def handle(msg: Msg) -> None:
            try:
                request = _decoder.decode(msg.data)
            except msgspec.DecodeError:
                log.warning("ignoring a malformed control message")
                return
            done = False
            if request.op == "cancel":
                done = self.registry.cancel(request.turn_id, reason="cancelled")
            if msg.reply:
                await msg.respond(_encoder.encode(_ControlReply(ok=True, done=done)))

        sub = await link.nc.subscribe(control_subject(self.prefix, self.node_id), cb=handle)
        try:
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
