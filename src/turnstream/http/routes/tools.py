"""Answers to a turn that waits: a client's tool results, a person's approval."""

from __future__ import annotations

from uuid import UUID

from litestar import post
from litestar.status_codes import HTTP_202_ACCEPTED

from turnstream.domain.callers import Caller
from turnstream.usecases.services import Services
from turnstream.usecases.tooluse import Answered, Approval, ToolResults


@post(
    "/conversations/{cid:uuid}/turns/{tid:uuid}/tool-results",
    tags=["turns"],
    summary="Results of the client's tool calls; the turn goes on once it waits for no more",
    status_code=HTTP_202_ACCEPTED,
)
async def post_tool_results(
    services: Services, caller: Caller, cid: UUID, tid: UUID, data: ToolResults
) -> Answered:
    return await services.answers.results(caller, cid, tid, data.results)


@post(
    "/conversations/{cid:uuid}/turns/{tid:uuid}/approvals",
    tags=["turns"],
    summary="Approve or refuse a tool call that waits for a person's decision",
    status_code=HTTP_202_ACCEPTED,
)
async def post_approval(
    services: Services, caller: Caller, cid: UUID, tid: UUID, data: Approval
) -> Answered:
    return await services.answers.decide(caller, cid, tid, data)


ROUTES = [post_tool_results, post_approval]
