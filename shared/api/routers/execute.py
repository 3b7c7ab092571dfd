# intent_ref: platform.execution
"""POST /api/v1/intents/{id}/execute: check, hold the quota, record the execution, start its orchestration."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Header, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shared.api.durable import get_durable_client
from shared.api.problems import ProblemError
from shared.api.responses import AUTH_ERRORS, INVALID, problem_doc
from shared.api.routers.executions import ExecutionLinks
from shared.api.security import RequestContext, authenticated, authorize, tenant_resource
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import start as engine
from shared.engine.protocol import ORCHESTRATOR
from shared.engine.start import Conn
from shared.policy.actions import Action
from shared.registry import service as registry

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/intents", tags=["executions"])
Context = Annotated[RequestContext, Depends(authenticated)]

_EXAMPLE_ID = "5d7e1f0a-3b2c-4d5e-8f90-1a2b3c4d5e6f"
_ACCEPTED_EXAMPLE: dict[str, Any] = {"execution_id": _EXAMPLE_ID, "status": "pending", "created": True, "links": {
    "self": f"/api/v1/executions/{_EXAMPLE_ID}", "events": f"/api/v1/executions/{_EXAMPLE_ID}/events?after=0"}}
EXECUTE_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    404: problem_doc(404, "not-found", "Not found", "No intent 0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10.",
                     "No such intent (or version) in the caller's tenant"),
    409: problem_doc(409, "plan-changed", "Conflict", "the plan hash is 3b1f..., not 9c2e...",
                     "The intent is archived, its pinned version no longer validates, the plan changed, or the "
                     "Idempotency-Key was used for a different request"),
    422: {**INVALID, "description": "The input does not match the intent's input schema, or the body is malformed"},
}
EXECUTE_ERRORS[403] = {**AUTH_ERRORS[403], "description": "Not allowed: Executor (Deployer for production), or "
                                                            "a module or target outside the tenant's allow-lists "
                                                            "(`gate-refused`, with the offending steps)"}
EXECUTE_ERRORS[429] = {**AUTH_ERRORS[429], "description": "Over the request rate, or the tenant already runs as "
                                                            "many executions as its quota allows"}


class ExecuteRequest(BaseModel):
    """What to run: input for the intent's input schema, optionally a version and the plan hash insisted on."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"input": {"version": "1.2.3"}}, {"input": {}, "version": 2, "plan_hash": "3b1f" + "0" * 60}]})

    input: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(None, ge=1, description="Default: the intent's current version.")
    plan_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                  description="From POST .../plan: refuse to run if the plan has changed since.")
    idempotency_key: str | None = Field(None, min_length=1, max_length=255,
                                        description="For producers that cannot set the Idempotency-Key header.")


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
    body = ExecutionAccepted(execution_id=started.execution.id, status=started.execution.status,
                             created=started.created, links=ExecutionLinks(self=path, events=f"{path}/events?after=0"))
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": path})


def start_problem(exc: engine.StartError | registry.RegistryError) -> ProblemError:
    """The API answer of a refused start."""
    match exc:
        case registry.NotFoundError() | registry.UnknownVersionError():
            return ProblemError(404, "not-found", "Not found", str(exc))
        case engine.GateRefusedError():
            return ProblemError(403, "gate-refused", "Forbidden", f"The tenant may not run this intent: {exc}.",
                                extensions={"reason": "gate_refused", "violations": [
                                    {"step": v.step, "reason": v.reason, "value": v.value} for v in exc.violations]})
        case engine.InvalidInputError():
            return ProblemError(422, "invalid-input", "Unprocessable content", str(exc),
                                extensions={"errors": exc.errors})
        case engine.QuotaExceededError():
            return ProblemError(429, "execution-quota", "Too many requests", str(exc),
                                headers={"Retry-After": "30"}, extensions={"limit": exc.limit})
        case engine.PlanChangedError():
            return ProblemError(409, "plan-changed", "Conflict", str(exc), extensions={"plan_hash": exc.actual})
        case engine.TenantSuspendedError():
            return ProblemError(403, "forbidden", "Forbidden", str(exc), extensions={"reason": "tenant_suspended"})
        case engine.IntentArchivedError():
            return ProblemError(409, "archived", "Conflict", str(exc))
        case engine.NoLongerValidError():
            return ProblemError(409, "definition-invalid", "Conflict", f"The pinned version no longer validates: {exc}")
        case engine.IdempotencyConflictError():
            return ProblemError(409, "idempotency-key", "Conflict", str(exc))
    return ProblemError(500, "internal-error", "Internal server error")


def begin(context: RequestContext, make_request: Callable[[Conn], engine.StartRequest], *,
          detail: dict[str, Any] | None = None) -> engine.Started:
    """Run a start's checks and writes in one tenant transaction (on a worker thread); `make_request` builds the
    request inside it, and the intent's execute decision is audited with `detail`."""
    def decide(item: registry.Item) -> None:
        authorize(context, Action.INTENT_EXECUTE, tenant_resource(
            "Intent", item.head.id, context.tenant.id, target=item.target or "", labels=item.version.labels),
            detail=detail)

    with tenant_transaction(context.tenant.id) as conn:
        try:
            return engine.start_execution(conn, context.tenant_facts, make_request(conn), authorize=decide,
                                          max_concurrent=engine.concurrent_limit(context.tenant.quotas))
        except (engine.StartError, registry.RegistryError) as exc:
            raise start_problem(exc) from None


async def launch(client: Any, started: engine.Started, tenant_id: UUID) -> None:
    """Start the orchestration (instance id = execution id) when this request holds the start claim."""
    if started.orchestration_input is None:
        return
    try:
        await client.start_new(ORCHESTRATOR, str(started.execution.id), started.orchestration_input)
    except Exception as exc:
        # Nothing runs it, so it must not look pending forever: record why, then tell the caller to retry.
        logger.exception("could not start the orchestration of execution %s", started.execution.id)
        await run_in_threadpool(_fail_start, tenant_id, started.execution.id, str(exc))
        raise ProblemError(503, "orchestration-unavailable", "Service unavailable",
                           "The execution could not be started; it is recorded as failed. Retry shortly.",
                           headers={"Retry-After": "5"}) from None


def _fail_start(tenant_id: UUID, execution_id: UUID, reason: str) -> None:
    with tenant_transaction(tenant_id) as conn:
        if repo.get_execution(conn, execution_id).status == "pending":
            repo.transition(conn, execution_id, "failed", error=f"the orchestration could not be started: {reason}")


@router.post("/{intent_id}/execute", status_code=202, response_model=ExecutionAccepted, summary="Execute an intent",
             responses=EXECUTE_ERRORS)
async def execute(
    intent_id: Annotated[UUID, Path(description="The intent's id.")],
    context: Context,
    body: Annotated[ExecuteRequest | None, Body(examples=[{"input": {"version": "1.2.3"}}])] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255, description="The same key returns the same "
                                                                             "execution and never starts another.")]
    = None,
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> JSONResponse:
    """Validate the input, decide (Executor; Deployer for production), hold the concurrent-execution quota, record
    the execution and start its orchestration; 202 with its id and links. Without a body the input is empty."""
    request = body or ExecuteRequest()
    start = engine.StartRequest(
        intent_id=intent_id, input=request.input, version=request.version, plan_hash=request.plan_hash,
        idempotency_key=idempotency_key or request.idempotency_key, requested_by=context.principal.id)
    started = await run_in_threadpool(begin, context, lambda _conn: start)
    await launch(client, started, context.tenant.id)
    return accepted(started)
