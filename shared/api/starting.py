# intent_ref: platform.execution
"""The API's edge of the start service (the execute and retry routes): the caller's decision, and a refused start
answered as problem+json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from shared.api.security import RequestContext
from shared.api.start_problems import launch_problem, start_problem
from shared.engine import start_service
from shared.engine.start import Conn, Started, StartError, StartRequest
from shared.policy.authorizer import Decision, Resource
from shared.policy.decisions import decide


def begin(
    context: RequestContext,
    make_request: Callable[[Conn], StartRequest],
    *,
    detail: dict[str, Any] | None = None,
) -> Started:
    """The start service for the caller (call it on a worker thread); the intent's execute decision is audited with
    `detail`. A refused start raises the ProblemError the API answers."""
    return begin_deciding(context, lambda conn, _authorize: make_request(conn), detail=detail)


def begin_deciding(
    context: RequestContext,
    make_request: start_service.DecidedRequest,
    *,
    detail: dict[str, Any] | None = None,
) -> Started:
    """`begin` for a request made with the start's decision at hand: a retry decides on the version it runs before
    it compares that version's steps with the ones it reuses."""

    def decide_for_caller(action: str, resource: Resource) -> Decision:
        return decide(context, action, resource, detail=detail)

    try:
        return start_service.begin_deciding(context.tenant, make_request, decide=decide_for_caller)
    except StartError as exc:
        raise start_problem(exc) from None


async def launch(client: Any, started: Started, tenant_id: UUID) -> None:
    """Start the orchestration; when it cannot be started the answer is 503 (the execution stays pending for a
    retry with its Idempotency-Key, or is recorded failed when the request had none)."""
    try:
        await start_service.launch(client, started, tenant_id)
    except start_service.OrchestrationUnavailableError as exc:
        raise launch_problem(exc) from None
