"""JetStream publishes with their acks on one inbox: the relay's publishing path.

nats-py's ``publish_async`` makes a future, an inbox token and a dict entry for every
message, and decodes every ack with ``json`` into a dataclass: at the relay's rates that
was most of its time. Here the relay publishes on the core connection with a reply
subject of its own (``<inbox>.<stream sequence it expects>``), one subscription takes
every ack, decodes it with msgspec, and the relay takes the acks in publishing order.
What JetStream checks is unchanged: each message still carries its expected last
sequence, and each ack is checked against the sequence it was meant to get.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError, NoStreamResponseError


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class Ack(msgspec.Struct):
    """JetStream's answer to a publish."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _Error | None = None


_decode = msgspec.json.Decoder(Ack).decode


class AckInbox:
    """One relay session's publishes and their acks (a new inbox per session, so an ack
    of an earlier session's publish is never taken for one of this session's)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._acks: dict[int, Ack | Exception] = {}
        self._waiting = -1
        self._arrived = asyncio.Event()

    async def open(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
        self._acks.clear()

    async def publish(self, subject: str, body: bytes, headers: dict[str, str], token: int) -> None:
        """Publish; its ack is :meth:`take` ``(token)`` (a token unique in this session)."""
        await self._nc.publish(subject, body, reply=self._prefix + str(token), headers=headers)

    def poll(self, token: int) -> Ack | None:
        """The ack of the publish ``token`` if it is in (None if not yet); a publish
        JetStream refused raises its ``APIError`` here."""
        found = self._acks.pop(token, None)
        if isinstance(found, Exception):
            raise found
        return found

    async def take(self, token: int) -> Ack:
        """:meth:`poll`, waiting until the ack is in (the caller bounds the wait)."""
        try:
            while (ack := self.poll(token)) is None:
                self._waiting = token
                self._arrived.clear()
                await self._arrived.wait()
        finally:
            self._waiting = -1
        return ack

    async def _on_ack(self, msg: Msg) -> None:
        try:
            token = int(msg.subject[len(self._prefix) :])
        except ValueError:
            return
        answer: Ack | Exception
        if not msg.data:
            # A status message: no stream took the subject (503), or another status.
            answer = NoStreamResponseError()
        else:
            try:
                ack = _decode(msg.data)
            except msgspec.DecodeError as exc:
                answer = exc
            else:
                error = ack.error
                if error is not None:
                    answer = APIError(
                        code=error.code, err_code=error.err_code, description=error.description
                    )
                else:
                    answer = ack
        self._acks[token] = answer
        if token == self._waiting:
            self._arrived.set()
