"""The bare baseline of ``bench/capacity.py``: the same streams, nothing stored.

A Litestar app on uvicorn with ``serve``'s server settings (uvloop, httptools, no
access log) and the two routes the capacity client uses: ``POST /v1/conversations``
and ``POST /v1/conversations/{cid}/turns``, whose answer is the turn's SSE stream. A
turn is the built-in demo model's stream, paced the same way, made into the same
events by the domain's own ``TurnProgress`` and encoded by the same
``turnstream.http.sse.encode_frame`` with the same padding, so every frame has the
shape and the size of turnstream's. What it leaves out is all that durability costs:
no PostgreSQL, no group commit, no relay, no projections, no auth, no limits, no
title: a frame is written the moment the model emits it.

The token delay is measured as for turnstream: receive time minus the event's
timestamp (when the runner had the token). turnstream's are read back from the store;
here ``GET /bench/times`` hands them over (and forgets them).

Run it alone with ``python bench/baseline.py --port 8001``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from litestar import Litestar, get, post
from litestar.response import Stream

from turnstream.domain.progress import DeltaDraft, Draft, TurnProgress
from turnstream.domain.turn import Turn, TurnUsage
from turnstream.http.sse import HEADERS, encode_frame
from turnstream.ids import uuid7
from turnstream.providers.base import ChatMessage, Completed, ReasoningDelta, TextDelta
from turnstream.providers.demo import DemoProvider
from turnstream.settings import ModelConfig

NODE = uuid7()
MODEL = ModelConfig(id="demo", provider="demo")


class Baseline:
    def __init__(self, tokens_per_s: float, tokens: int) -> None:
        self.demo = DemoProvider(tokens_per_s=tokens_per_s, tokens=tokens)
        self.times: dict[str, list[tuple[int, float]]] = {}
        """turn id -> (seq, event timestamp) of its token and reasoning events."""

    async def frames(self, cid: UUID, content: str) -> AsyncIterator[bytes]:
        turn_id = uuid7()
        started = Turn.start(
            turn_id, conversation_id=cid, tenant="bench", user_id="bench", node_id=NODE,
            mode="message", user_message_id=uuid7(), assistant_message_id=uuid7(),
            parent_id=None, model="demo", content=content,
        )  # fmt: skip
        yield encode_frame(started, padding=True)
        progress = TurnProgress(started)
        times = self.times.setdefault(str(turn_id), [])
        messages = [ChatMessage(role="user", content=content)]
        seq = 1
        draft: Draft | None = None
        usage = TurnUsage()
        async for chunk in self.demo.stream(MODEL, messages):
            if isinstance(chunk, TextDelta):
                draft = progress.append_text(chunk.text)
            elif isinstance(chunk, ReasoningDelta):
                draft = progress.append_reasoning(chunk.text)
            elif isinstance(chunk, Completed):
                if (u := chunk.usage) is not None:
                    usage = TurnUsage(
                        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens
                    )
                continue
            if draft is None:
                continue
            seq += 1
            event = draft.event(seq)
            if isinstance(draft, DeltaDraft):
                times.append((seq, event.timestamp.timestamp()))
            yield encode_frame(event, padding=True)
        seq += 1
        final = progress.finish(finish_reason="stop", usage=usage).event(seq)
        yield encode_frame(final, padding=True)


def create_app(baseline: Baseline) -> Litestar:
    @post("/v1/conversations", status_code=201)
    async def create_conversation() -> dict[str, str]:
        return {"id": str(uuid7())}

    @post("/v1/conversations/{cid:uuid}/turns", status_code=200)
    async def start_turn(cid: UUID, data: dict[str, Any]) -> Stream:
        content = str(data.get("content", ""))
        return Stream(
            baseline.frames(cid, content), media_type="text/event-stream", headers=HEADERS
        )

    @get("/bench/times")
    async def times() -> dict[str, list[tuple[int, float]]]:
        out, baseline.times = baseline.times, {}
        return out

    @get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return Litestar(
        route_handlers=[create_conversation, start_turn, times, readyz],
        debug=False,
        logging_config=None,
        openapi_config=None,
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    app = create_app(Baseline(args.tokens_per_s, args.tokens))
    # serve's own uvicorn settings (cli/serve.py), where they bear on a stream.
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", log_config=None, lifespan="on"
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
