# intent_ref: platform.execution
"""POST /api/v1/intents/{id}/execute: check, hold the quota, record the execution, start its orchestration."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shared.api.durable import get_durable_client
from shared.api.idempotency import idempotency_key as idempotency_key_header
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import FieldError, ProblemError
from shared.api.responses import AUTH_ERRORS, BAD_IDEMPOTENCY_KEY, INVALID, problem_doc
from shared.api.routers.executions import ExecutionLinks
from shared.api.security import RequestContext
from shared.api.starting import begin, launch
from shared.auth.principal import Requester
from shared.engine import start as engine
from shared.idempotency import IdempotencyKey
from shared.policy.actions import Action

router = APIRouter(prefix="/api/v1/intents", tags=["executions"], route_class=GuardedRoute)

_EXAMPLE_ID = "5d7e1f0a-3b2c-4d5e-8f90-1a2b3c4d5e6f"
_ACCEPTED_EXAMPLE: dict[str, Any] = {
    "execution_id": _EXAMPLE_ID,
    "status": "pending",
    "created": True,
    "links": {
        "self": f"/api/v1/executions/{_EXAMPLE_ID}",
        "events": f"/api/v1/executions/{_EXAMPLE_ID}/events?after=0",
    },
}
EXECUTE_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    400: {
        **BAD_IDEMPOTENCY_KEY,
        "description": "The Idempotency-Key header is malformed or sent more than once (see its format), or it differs"
        " from the body's `idempotency_key` (`invalid-idempotency-key`; send the key in one of them, or the same in"
        " both); nothing was recorded",
    },
    404: problem_doc(
        404,
        "not-found",
        "Not found",
        "No intent 0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10.",
        "No such intent (or version) in the caller's tenant",
    ),
    409: problem_doc(
        409,
        "plan-changed",
        "Conflict",
        "the plan hash is 3b1f..., not 9c2e...",
        "The intent is archived, its pinned version no longer validates, or the plan changed",
    ),
    422: {
        **INVALID,
        "description": "The input does not match the intent's input schema, the body is malformed, or "
        "the Idempotency-Key was used for a different request",
    },
}
EXECUTE_ERRORS[403] = {
    **AUTH_ERRORS[403],
    "description": "Not allowed: Executor (Deployer for production), or "
    "a module or target outside the tenant's allow-lists "
    "(`gate-refused`, with the offending steps)",
}
EXECUTE_ERRORS[413] = problem_doc(
    413,
    "orchestration-input-too-large",
    "Payload too large",
    "The execution cannot start: the execution's orchestration input would be 3400215 bytes as JSON, more than the"
    " 1000000 bytes allowed.",
    "What the execution's orchestration would be handed (the intent's expanded steps, the input with its defaults,"
    " the plan and, for a retry, the reused outputs; as JSON with every non-ASCII character escaped, posted as a JSON"
    " string: up to 7 bytes a character, 2 a quote) is over QP_MAX_ORCHESTRATION_INPUT_BYTES"
    " (`orchestration-input-too-large`, with its `size` and the `limit`, ADR 0014); nothing was recorded",
    size=3400215,
    limit=1000000,
)
EXECUTE_ERRORS[429] = {
    **AUTH_ERRORS[429],
    "description": "Over the request rate (`rate-limited`) or the tenant's requests in flight (`tenant-busy`), the "
    "tenant already runs as many executions as its quota allows (`execution-quota`), or a large input (with the "
    "intent's definition, 16 KiB or more as JSON) waited past the pool's wait for the tenant's other costly check "
    "to end (`check-busy`); always with Retry-After",
}
EXECUTE_ERRORS[503] = problem_doc(
    503,
    "orchestration-unavailable",
    "Service unavailable",
    "The execution was recorded but could not be started yet. Retry shortly with the same Idempotency-Key to start "
    "it; otherwise the platform starts it within minutes.",
    "The orchestration could not be started (`orchestration-unavailable`, Retry-After: 5): with an Idempotency-Key "
    "the execution stays pending and the same request sent again with that key starts it, else it is recorded "
    "failed; or a dependency is unavailable (`dependency-unavailable`) or a secret does not open "
    "(`secret-unavailable`); always with Retry-After",
)


class ExecuteRequest(BaseModel):
    """What to run: input for the intent's input schema, optionally a version and the plan hash insisted on."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"input": {"version": "1.2.3"}}, {"input": {}, "version": 2, "plan_hash": "3b1f" + "0" * 60}]
        },
    )

    input: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(
        None, ge=1, strict=True, description="Default: the intent's current version. A whole number: `true` is not 1."
    )
    plan_hash: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="From POST .../plan: refuse to run if the plan has changed since."
    )
    idempotency_key: IdempotencyKey | None = Field(
        None,
        description="For producers that cannot set the Idempotency-Key header; the same format. When both are "
        "sent they must be the same key: two different keys are 400 `invalid-idempotency-key`, nothing recorded.",
    )


class ExecutionAccepted(BaseModel):
    """The execution that was started (or, for a repeated idempotency key, found)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ACCEPTED_EXAMPLE]})

    execution_id: UUID
    status: str
    created: bool = Field(description="False when an earlier request with the same idempotency key created it.")
    links: ExecutionLinks


def accepted(started: engine.Started) -> JSONResponse:
    """202 with the execution's id, status and links (also for a replayed idempotency key)."""
    path = f"/api/v1/executions/{started.execution.id}"
    body = ExecutionAccepted(
        execution_id=started.execution.id,
        status=started.execution.status,
        created=started.created,
        links=ExecutionLinks(self=path, events=f"{path}/events?after=0"),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": path})


@router.post(
    "/{intent_id}/execute",
    status_code=202,
    response_model=ExecutionAccepted,
    summary="Execute an intent",
    responses=EXECUTE_ERRORS,
)
async def execute(
    intent_id: Annotated[UUID, Path(description="The intent's id.")],
    context: Annotated[RequestContext, Depends(permission(Action.INTENT_EXECUTE, resource_param="intent_id"))],
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    body: Annotated[ExecuteRequest | None, Body(examples=[{"input": {"version": "1.2.3"}}])] = None,
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> JSONResponse:
    """Validate the input, decide (Executor; Deployer for production), hold the concurrent-execution quota, record
    the execution and start its orchestration; 202 with its id and links. Without a body the input is empty."""
    request = body or ExecuteRequest()
    if idempotency_key is not None and request.idempotency_key not in (None, idempotency_key):
        # Either one kept would leave the other's retry starting a second execution.
        detail = "the Idempotency-Key header and the body's idempotency_key differ: send one key, or the same in both"
        raise ProblemError(
            400,
            "invalid-idempotency-key",
            "Bad request",
            detail,
            errors=[FieldError(pointer="/idempotency_key", detail=detail)],
            extensions={"header": "Idempotency-Key"},
        )
    start = engine.StartRequest(
        intent_id=intent_id,
        input=request.input,
        version=request.version,
        plan_hash=request.plan_hash,
        idempotency_key=idempotency_key or request.idempotency_key,  # the same key when both are sent
        requester=Requester.of(context.principal),
    )
    started = await run_in_threadpool(begin, context, lambda _conn: start)
    await launch(client, started, context.tenant.id)
    return accepted(started)
