# intent_ref: platform.execution
"""Acting on an execution: cancel it, approve or reject a step, retry it from the failed step."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, Strict
from starlette.concurrency import run_in_threadpool

from shared.api.accepted_input import TakesNoBody, no_body_doc
from shared.api.durable import get_durable_client
from shared.api.idempotency import idempotency_key as idempotency_key_header
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import DEPENDENCY_RETRY_AFTER_S, ProblemError
from shared.api.responses import AUTH_ERRORS, INVALID, problem_doc
from shared.api.routers.execute import EXECUTE_ERRORS, ExecutionAccepted, accepted
from shared.api.routers.executions import (
    EXAMPLE_EXECUTION_ID,
    EXECUTION_NOT_FOUND,
    ExecutionId,
    StepId,
    execution_resource,
    load_execution,
)
from shared.api.routers.work import VERDICT_RAISE_BOUND_S
from shared.api.security import RequestContext, authorize, record_mutation
from shared.api.starting import begin_deciding, launch
from shared.auth.principal import Requester
from shared.db.session import retried_on_deadlock, tenant_transaction
from shared.engine import control, remote, work_queue
from shared.engine import start as engine
from shared.engine import steps as store
from shared.engine.protocol import approval_event
from shared.free_text import SHOWN_AS_WRITTEN_IN_LINES, SHOWN_IN_LINES
from shared.policy.actions import Action

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/executions", tags=["executions"], route_class=GuardedRoute)
_FINISHED = problem_doc(
    409,
    "already-finished",
    "Conflict",
    f"execution {EXAMPLE_EXECUTION_ID} is already succeeded",
    "The execution has ended",
)
_FAILING = problem_doc(
    409,
    "already-failing",
    "Conflict",
    f"execution {EXAMPLE_EXECUTION_ID} is stopping for a failed step and will end failed;"
    " a cancel would change nothing",
    "A step of the execution failed for good and the execution will end failed",
)
# Either refusal of a cancel, each with its own example; nothing is recorded for either.
_CANCEL_REFUSED = {
    **_FINISHED,
    "description": "The execution has ended (`already-finished`), or a step of it failed for good (no retry left) and"
    " it will end failed whatever a cancel asks, compensating or still waiting for work out (`already-failing`, ADR"
    " 0014: a failure stays the cause); nothing is recorded",
    "content": {
        media: {
            "schema": body["schema"],
            "examples": {
                "already-finished": {"value": body["example"]},
                "already-failing": {"value": _FAILING["content"][media]["example"]},
            },
        }
        for media, body in _FINISHED["content"].items()
    },
}


class CancelAccepted(BaseModel):
    """The cancel was recorded; the execution compensates what completed and ends cancelled (a step's failure
    recorded after the cancel, an approval's rejection and a remote lease's expiry included, is one during it,
    whichever reaches the run first; not yet a failure the run decides itself, which can still end it failed: ADR
    0014)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"execution_id": EXAMPLE_EXECUTION_ID, "status": "running", "cancel_requested": True}]
        }
    )

    execution_id: UUID
    status: str
    cancel_requested: bool


class ApprovalDecision(BaseModel):
    """An approver's decision on a waiting approval step."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"decision": "approve", "comment": "change ticket CHG-1042 approved"},
                {"decision": "reject", "comment": "not during the freeze"},
            ]
        },
    )

    decision: Literal["approve", "reject"]
    comment: Annotated[
        str,
        Field(
            max_length=2000,
            description=f"Why, for people to read (in the decision's event and a rejection's error): "
            f"{SHOWN_AS_WRITTEN_IN_LINES}",
        ),
        SHOWN_IN_LINES,
    ] = ""


class ApprovalRecorded(BaseModel):
    """The decision as recorded (a repeated identical decision answers the same)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"execution_id": EXAMPLE_EXECUTION_ID, "step_id": "approve", "decision": "approve", "applied": True}
            ]
        }
    )

    execution_id: UUID
    step_id: str
    decision: str
    applied: bool = Field(description="False when this same decision had been recorded already.")


class RetryRequest(BaseModel):
    """Retry from the failed step, optionally on a newer version whose reused steps, and the inputs they read, are
    unchanged."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"version": 3}]})

    # Strict: "1" or true read as a version number before (the body is validated in python mode, where lax ints
    # take both); only this field is strict, as strict models would refuse the UUID and date strings of others.
    version: Annotated[int, Strict()] | None = Field(
        None, ge=1, description="Default: the version the failed execution ran."
    )


def _problem(exc: control.ControlError) -> ProblemError:
    match exc:
        case control.AlreadyFinishedError():
            return ProblemError(409, "already-finished", "Conflict", str(exc))
        case control.AlreadyFailingError():
            return ProblemError(409, "already-failing", "Conflict", str(exc))
        case control.NotAnApproverError():
            return ProblemError(403, "forbidden", "Forbidden", str(exc), extensions={"reason": "not_an_approver"})
        case control.NotWaitingError():
            return ProblemError(409, "not-waiting", "Conflict", str(exc))
        case control.NotRetryableError():
            return ProblemError(409, "not-retryable", "Conflict", str(exc))
        case control.AlreadyRetriedError():
            return ProblemError(
                409, "already-retried", "Conflict", str(exc), extensions={"retry_id": str(exc.retry_id)}
            )
    return ProblemError(500, "internal-error", "Internal server error")


_CANCEL_NOT_HANDED_OVER = problem_doc(
    503,
    "orchestration-unavailable",
    "Service unavailable",
    "The cancel is recorded but could not be handed to the execution yet; send it again in 2 s.",
    "The cancel is recorded but its execution could not be told yet (`orchestration-unavailable`): send the cancel "
    "again after Retry-After (answered 202 then, and nothing more is recorded); or, as on any route, a dependency "
    "such as the database is unavailable or the request conflicted with a concurrent one (`dependency-unavailable`), "
    "or a secret the platform keeps does not open (`secret-unavailable`); always with Retry-After",
)


_DECISION_NOT_HANDED_OVER = problem_doc(
    503,
    "orchestration-unavailable",
    "Service unavailable",
    "The decision is recorded but could not be handed to the execution yet; send it again in 2 s.",
    "The decision is recorded but its execution could not be told yet (`orchestration-unavailable`): send the same "
    "decision again after Retry-After (answered 200 with `applied` false, and nothing more is recorded); or, as on "
    "any route, a dependency such as the database is unavailable or the request conflicted with a concurrent one "
    "(`dependency-unavailable`), or a secret the platform keeps does not open (`secret-unavailable`); always with "
    "Retry-After",
)


@router.post(
    "/{execution_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    summary="Cancel an execution",
    responses={
        **AUTH_ERRORS,
        404: EXECUTION_NOT_FOUND,
        409: _CANCEL_REFUSED,
        422: no_body_doc("the execution id is not a UUID"),
        503: _CANCEL_NOT_HANDED_OVER,
    },
)
async def cancel(
    execution_id: ExecutionId,
    context: Annotated[RequestContext, Depends(permission(Action.EXECUTION_CANCEL, resource_param="execution_id"))],
    _no_body: TakesNoBody,
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> CancelAccepted:
    """Stop scheduling new steps, let work already out end, compensate what completed, end cancelled (the
    requester, an Executor or a Deployer). Refused (409 `already-failing`) once a step failed for good (its
    compensation under way, or its run waiting for work still out): it ends failed whatever is asked. The request
    takes no body (a cancel records no reason): a body is refused with 422 and cancels nothing. A cancel accepted
    (202) when the run's last step had already committed its result may still see the run end succeeded (ADR 0034:
    a late cancel stops nothing). A cancel recorded whose execution could not be told yet answers 503 with
    Retry-After: send it again, and the repeat tells the execution (ADR 0027, amended 2026-12-07)."""

    def record() -> control.RecordedCancel:
        # One transaction: the resource's labels are read where the execution is.
        with tenant_transaction(context.tenant.id) as conn:
            execution = load_execution(context, execution_id, conn)
            resource = execution_resource(conn, execution, context.tenant.id)
            authorize(context, Action.EXECUTION_CANCEL, resource, conn=conn)
            try:
                # Decided on the row as held, not as `load_execution` read it: a concurrent cancel committed while this
                # one waited for the row made this one a repeat, which raises only a raise that was lost.
                held, cancelled = control.held_cancel(conn, execution_id, context.principal.id)
            except control.ControlError as exc:
                raise _problem(exc) from None
            # Remote work no worker has taken yet ends now (ADR 0027), not when its step times out.
            dequeued = work_queue.cancel_queued(conn, execution_id)
            return control.RecordedCancel(cancelled, dequeued, control.cancel_to_raise(conn, held, cancelled))

    recorded = await run_in_threadpool(record)
    execution, sent = await control.tell_cancel(
        client, context.tenant.id, recorded, context.principal.id, verdicts_within_s=VERDICT_RAISE_BOUND_S
    )
    if sent == "failed" and not execution.terminal:
        # Recorded, but the run may learn of it only from its event: the client is to send it again, and that
        # repeat raises it (`cancel_to_raise`). A 202 would tell it the cancel was on its way.
        raise _not_handed_over("cancel")
    return CancelAccepted(execution_id=execution.id, status=execution.status, cancel_requested=True)


def _not_handed_over(what: str) -> ProblemError:
    """503 for `what`, recorded but not yet told to its execution: a repeat of the request raises it."""
    return ProblemError(
        503,
        "orchestration-unavailable",
        "Service unavailable",
        f"The {what} is recorded but could not be handed to the execution yet; send it again in "
        f"{DEPENDENCY_RETRY_AFTER_S} s.",
        headers={"Retry-After": str(DEPENDENCY_RETRY_AFTER_S)},
    )


@router.post(
    "/{execution_id}/approvals/{step_id}",
    response_model=ApprovalRecorded,
    summary="Decide an approval",
    responses={
        **AUTH_ERRORS,
        404: EXECUTION_NOT_FOUND,
        409: problem_doc(
            409,
            "not-waiting",
            "Conflict",
            "step deploy was already decided (failed)",
            "The step is not an approval waiting for a decision: decided already, or (an approve) its execution is"
            " being cancelled; nothing is recorded",
        ),
        422: INVALID,
        503: _DECISION_NOT_HANDED_OVER,
    },
)
async def approve(
    execution_id: ExecutionId,
    step_id: StepId,
    context: Annotated[RequestContext, Depends(permission(Action.EXECUTION_APPROVE, resource_param="execution_id"))],
    body: ApprovalDecision,
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> ApprovalRecorded:
    """Approve or reject a waiting approval step (Approver; never the execution's requester, and only a listed
    approver when the step names some). A rejection fails the step and compensates. An approve sent once a cancel
    is recorded is refused (409 `not-waiting`): the run ends cancelled whatever is approved. A decision recorded whose
    execution could not be told yet answers 503 with Retry-After: send the same decision again (answered 200,
    `applied` false), and the repeat tells the execution (ADR 0027, amended 2026-12-07)."""

    def record() -> tuple[control.ApprovalOutcome, bool]:
        with tenant_transaction(context.tenant.id) as conn:
            execution = load_execution(context, execution_id, conn)
            resource = execution_resource(conn, execution, context.tenant.id)
            detail = {"step": step_id, "decision": body.decision}
            authorize(context, Action.EXECUTION_APPROVE, resource, detail=detail, conn=conn)
            try:
                outcome = control.decide_approval(
                    conn,
                    execution_id,
                    step_id,
                    body.decision,
                    principal_id=context.principal.id,
                    object_id=str(context.principal.object_id),
                    comment=body.comment,
                )
            except control.ControlError as exc:
                raise _problem(exc) from None
            if outcome.applied:
                record_mutation(
                    context, Action.EXECUTION_APPROVE, resource, {"step": step_id, "decision": body.decision}, conn=conn
                )
                return outcome, True
            # The same decision again: raised again only while no raise of it was accepted (its attempt, held by
            # the decision above, says so), as a repeated remote result is.
            attempt = store.get_attempt(conn, outcome.key)
            return outcome, attempt is None or attempt.raised_by_recorder

    # A decision takes the attempt's row before the execution's, as every writer does (ADR 0014's one order), so it
    # meets no deadlock on them; the wrapper stays a belt against rows outside that order (then decided again, and
    # answered 409 if it came late).
    outcome, to_raise = await run_in_threadpool(retried_on_deadlock, record)
    if to_raise:
        event = approval_event(step_id, outcome.key.attempt)
        if await control.raise_to_run(client, execution_id, event, outcome.verdict) == "failed":
            # Recorded, but the run learns of it only from its event: the client is to send the same decision again,
            # and that repeat (applied false) raises it. A 200 told it the decision was on its way.
            raise _not_handed_over("decision")
        # Only once the hub has it (or nobody is left to tell): a repeat then raises nothing more.
        await run_in_threadpool(remote.mark_handed_over, context.tenant.id, outcome.key)
    return ApprovalRecorded(execution_id=execution_id, step_id=step_id, decision=body.decision, applied=outcome.applied)


_NOT_RETRYABLE = problem_doc(
    409,
    "not-retryable",
    "Conflict",
    "version 3 changes steps whose outputs would be reused: build",
    "Not retried",
)
_ALREADY_RETRIED = problem_doc(
    409,
    "already-retried",
    "Conflict",
    f"execution {EXAMPLE_EXECUTION_ID} was already retried by execution 7d0c1f2e-3a4b-4c5d-8e6f-9a0b1c2d3e4f",
    "Retried already",
    retry_id="7d0c1f2e-3a4b-4c5d-8e6f-9a0b1c2d3e4f",
)
# Every refusal of a retry, each with its own example; nothing is started for any.
_RETRY_REFUSED = {
    **_NOT_RETRYABLE,
    "description": "The execution is neither failed nor cancelled, or the newer `version` changes a reused step or the"
    " inputs it reads (`not-retryable`); or it was retried already (`already-retried`, its `retry_id` naming that"
    " retry: an execution is retried once, ADR 0014; retry the retry instead, and a repeat with the first request's"
    " Idempotency-Key is answered as that request was); or the intent is archived (`archived`) or the version no"
    " longer validates (`definition-invalid`)",
    "content": {
        media: {
            "schema": body["schema"],
            "examples": {
                "not-retryable": {"value": body["example"]},
                "already-retried": {"value": _ALREADY_RETRIED["content"][media]["example"]},
            },
        }
        for media, body in _NOT_RETRYABLE["content"].items()
    },
}


@router.post(
    "/{execution_id}/retry",
    status_code=202,
    response_model=ExecutionAccepted,
    summary="Retry an execution from the failed step",
    responses={
        **EXECUTE_ERRORS,
        404: EXECUTION_NOT_FOUND,
        409: _RETRY_REFUSED,
    },
)
async def retry(
    execution_id: ExecutionId,
    # Retrying starts an execution of the intent: decided on the intent once the execution is loaded.
    context: Annotated[RequestContext, Depends(permission(Action.INTENT_EXECUTE))],
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    body: Annotated[RetryRequest | None, Body(examples=[{}, {"version": 3}])] = None,
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> JSONResponse:
    """Start a new execution of the same intent and input that reuses the outputs of the steps that succeeded (and
    were not compensated) and runs the rest; 202 with its id (`retry_of` links the two). An execution is retried
    once: a second retry is refused (409 `already-retried`, naming the first in `retry_id`); a repeat with the same
    Idempotency-Key is answered as the first was."""
    request = body or RetryRequest()

    def start_retry() -> engine.Started:
        execution = load_execution(context, execution_id)
        try:
            return begin_deciding(
                context,
                lambda conn, authorize: control.retry_request(
                    conn,
                    execution,
                    version=request.version,
                    requester=Requester.of(context.principal),
                    idempotency_key=idempotency_key,
                    authorize=authorize,  # before it compares the version it runs with the one it retries
                ),
                detail={"retry_of": str(execution_id)},
            )
        except control.ControlError as exc:
            raise _problem(exc) from None

    started = await run_in_threadpool(start_retry)
    await launch(client, started, context.tenant.id)
    return accepted(started)
