# intent_ref: platform.execution
"""Remote workers report a step attempt's result with the task token that came with its work."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Request
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import Scope

from shared.api.accepted_input import TASK_TOKEN_HEADER, UNVERIFIED_BODIES, VERIFIED_BODIES, VERIFIED_BODIES_PER_TENANT
from shared.api.admission import RETRY_AFTER_S, Admission, get_admission
from shared.api.durable import get_durable_client
from shared.api.permissions import BoundedBodyRoute, received_document
from shared.api.problems import DEPENDENCY_RETRY_AFTER_S, ProblemError, invalid_fields, over_rate, too_many_requests
from shared.api.responses import INVALID, problem_doc
from shared.api.routers.executions import ExecutionId, StepId
from shared.api.security import AUTHORIZATION, refuse_repeated_headers, single_header
from shared.db.session import retried_on_deadlock
from shared.engine import remote, task_tokens
from shared.engine.protocol import no_one_to_tell
from shared.engine.task_tokens import TaskClaims
from shared.observability.tracing import TENANT_ID

logger = logging.getLogger(__name__)
_EXAMPLE_TOKEN = "qpt1.eyJ0IjoiLi4uIn0.c2lnbmF0dXJl"  # noqa: S105  # a documentation example
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem_doc(
        401,
        "invalid-task-token",
        "Unauthorized",
        "the task token has expired",
        f"The task token is missing, malformed, forged, expired or another tenant's; one sent in {TASK_TOKEN_HEADER}"
        " is refused so before the body is read",
    ),
    403: problem_doc(
        403,
        "forbidden",
        "Forbidden",
        "the task token is for another execution or step",
        "The task token was issued for another execution or step",
    ),
    409: problem_doc(
        409,
        "task-token-used",
        "Conflict",
        "the task token was used already",
        "Another result was reported already with this token (a task token is single use; the same result again "
        "is answered as the first); or, with nothing recorded (`lease-expired`), the lease it was handed out with "
        "has expired or moved on, or its attempt has ended without a result: timed out, or abandoned by a cancel or "
        "by its execution's end (the detail says which)",
    ),
    422: INVALID,
    429: problem_doc(
        429,
        "rate-limited",
        "Too many requests",
        "This tenant is over its request rate; retry in 3 s.",
        "Over the tenant's request rate (`rate-limited`) or its requests in flight (`tenant-busy`, also when a "
        f"process holds {VERIFIED_BODIES_PER_TENANT} of its results already); or {UNVERIFIED_BODIES} results without "
        f"their task token in {TASK_TOKEN_HEADER}, or {VERIFIED_BODIES} with it, are waiting here already and nothing "
        "was read of this one (`completions-busy`): send it again after Retry-After, best with the header",
    ),
    503: problem_doc(
        503,
        "orchestration-unavailable",
        "Service unavailable",
        "The result is recorded but could not be handed to the execution yet; send the same result again in 2 s.",
        "The result is recorded but its execution could not be told yet: send the same result again after "
        "Retry-After (answered 200 then); or a dependency is unavailable (`dependency-unavailable`)",
    ),
}
_TOKEN_IN_BODY = (
    f"From the leased work item (`POST /api/v1/work/lease`). Required unless the {TASK_TOKEN_HEADER} header carries "
    "it; when both are sent they must be equal."
)


class StepCompletion(BaseModel):
    """A successful result: the step's JSON output."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task_token": _EXAMPLE_TOKEN,
                    "output": {"image": "myregistry.azurecr.io/myapp:1.2.3", "digest": "sha256:..."},
                }
            ]
        },
    )

    task_token: str | None = Field(default=None, min_length=1, max_length=2048, description=_TOKEN_IN_BODY)
    output: Any = None


class StepFailure(BaseModel):
    """A failed attempt: what went wrong, and whether another attempt could succeed."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"task_token": _EXAMPLE_TOKEN, "error": "registry returned 503", "retryable": True}]
        },
    )

    task_token: str | None = Field(default=None, min_length=1, max_length=2048, description=_TOKEN_IN_BODY)
    error: str = Field(min_length=1, max_length=4000)
    # Strict: a lax bool took "false" and "no" as False; a worker whose encoder wrote its flags as text was never told.
    retryable: Annotated[bool, Strict()] = True


class ResultRecorded(BaseModel):
    """The result was recorded and handed to the execution."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "execution_id": "5d7e1f0a-3b2c-4d5e-8f90-1a2b3c4d5e6f",
                    "step_id": "build",
                    "attempt": 1,
                    "state": "succeeded",
                }
            ]
        }
    )

    execution_id: UUID
    step_id: str
    attempt: int
    state: str


# A key read for a token nobody has verified yet borrows a connection of the tenant pool for whichever tenant the
# token names, and anyone can name any: one gate for all tenants this process has no key for, so forged tokens hold
# at most this many connections for them (and one more per tenant whose remembered key has expired: `_refreshes`).
_KEY_READS = 2
_ANY_TENANT = UUID(int=0)  # the one gate's key in `_first_reads`
_first_reads = Admission(_KEY_READS, queue=32 * _KEY_READS, queue_wait_s=0.5)
# A key read before and since expired (KEY_MEMO_S) is read again by one request of its tenant while the others wait
# for it: refreshes cost at most one read per tenant and memo period, and forged tokens flooding the first reads
# cannot keep a tenant whose workers are known here from verifying.
_refreshes = Admission(1, queue=64, queue_wait_s=0.5)


def _refused(exc: remote.TokenRefusedError) -> ProblemError:
    if "another execution or step" in str(exc):
        return ProblemError(403, "forbidden", "Forbidden", str(exc), extensions={"reason": "token_mismatch"})
    return ProblemError(401, "invalid-task-token", "Unauthorized", str(exc))


async def _signing_key(tenant_id: UUID) -> bytes | None:
    """The key of the tenant a token names: from memory on the event loop, else read behind a bounded gate (429
    `tenant-busy` when it is full), waited for on the event loop so a flood parks no worker thread either."""
    key = task_tokens.memoized_key(tenant_id)
    if key is not None:
        return key
    refresh = task_tokens.had_key(tenant_id)
    gates = _refreshes if refresh else _first_reads
    permit = await gates.permit_waiting(tenant_id if refresh else _ANY_TENANT)
    if permit is None:
        # Not counted under the claimed tenant: nothing has verified that the caller is of it.
        detail = f"Task tokens are being checked at capacity here; retry in {RETRY_AFTER_S} s."
        raise too_many_requests("unverified", "tenant-busy", detail, RETRY_AFTER_S, limit=gates.limit)
    try:
        return await run_in_threadpool(remote.signing_key, tenant_id)
    finally:
        permit.release()


async def _signed(token: str, at: tuple[UUID, str] | None, phase: str) -> TaskClaims:
    """The verified claims of the token for the attempt `at` (execution and step), or its 401/403, before the
    token's tenant is charged anything; for a path that names no attempt (`at` None), only that it verifies."""
    try:
        claims = remote.claims_of(token)
        key = await _signing_key(claims.tenant_id)
        if at is None:
            # Matched against its own claims: checked for its signature and expiry only. The route answers the
            # malformed path 422 after this, as it answers the body's errors, to a caller who holds a token.
            return remote.signed_claims(token, key, claims.key.execution_id, claims.key.step_id, claims.key.phase)
        return remote.signed_claims(token, key, *at, phase)
    except remote.TokenRefusedError as exc:
        raise _refused(exc) from None


_EXECUTION_ID: TypeAdapter[UUID] = TypeAdapter(ExecutionId)
_STEP_ID: TypeAdapter[str] = TypeAdapter(StepId)


def _attempt_at(request: Request) -> tuple[UUID, str] | None:
    """The execution and step the path names, validated as the route validates them; None when it does not."""
    try:
        execution_id = _EXECUTION_ID.validate_python(request.path_params.get("execution_id"))
        return execution_id, _STEP_ID.validate_python(request.path_params.get("step_id"))
    except ValidationError:
        return None


class TaskTokenRoute(BoundedBodyRoute):
    """The body handling every other route has (ADR 0023): the edge's document, and only the first unknown members
    validated; and a task token sent in `TASK_TOKEN_HEADER` verified at the edge before the body is parsed. Not
    `GuardedRoute`: the caller is no principal with roles, so there is no permission to check."""

    async def credential_owner(self, scope: Scope) -> UUID | None:
        """The tenant of the task token in the request's header, its signature and expiry verified, for the edge to
        parse the body on that tenant's limiter of verified results (shared.api.accepted_input); None without one.
        Refused (401 forged or expired, 400 repeated, 429 while keys are read at capacity) before the body is
        parsed, so a flood of bodies without a valid token never delays one with (ADR 0027)."""
        token = single_header(Request(scope), TASK_TOKEN_HEADER)
        if token is None:
            return None
        # Only that it verifies: the route's dependency checks it again against the path's attempt (403).
        return (await _signed(token, None, "run")).tenant_id


router = APIRouter(prefix="/api/v1/executions", tags=["remote workers"], route_class=TaskTokenRoute)


@dataclass(frozen=True)
class VerifiedToken:
    """The task token a result is reported with, and its verified claims."""

    token: str
    claims: TaskClaims


def _differs(header_token: str, document: Any) -> ProblemError | None:
    """The 422 of a body whose own task token is not the header's; None when it sends none or the same."""
    body_token = document.get("task_token") if isinstance(document, dict) else None
    if body_token is None or body_token == header_token:
        return None
    detail = f"the body's task_token differs from the {TASK_TOKEN_HEADER} header's: send one token, or the same twice"
    return invalid_fields(("/task_token", detail))


_HEADER_TOKEN = Header(
    alias=TASK_TOKEN_HEADER,
    description=(
        "The task token of the leased work item, verified before the body is read, so that the result never waits "
        "for bodies sent without a valid one. The body's `task_token` may then be left out; if sent, it must be "
        "the same."
    ),
)


def _task_claims(phase: Literal["run", "compensate"]) -> Any:
    """The route's first dependency: the verified task token, from the header or the body, before the body is
    validated."""

    async def task_claims(request: Request, header_token: Annotated[str | None, _HEADER_TOKEN] = None) -> VerifiedToken:
        # The token is the request's credential, so it is checked first, as a bearer token is (ADR 0022): a caller
        # without a valid one hears 401 and has no body model validated for it, nor its schema described. It is
        # the header's, which the edge verified before parsing the body (`TaskTokenRoute`), else read from the
        # document the edge parsed (`BoundedBodyRoute`), which the model is given afterwards.
        # Repeated headers are refused as on every other route, though none is read here: a proxy in front that
        # judges the request by one of its Authorization headers must not find it accepted on these routes alone.
        single_header(request, AUTHORIZATION)
        single_header(request, TASK_TOKEN_HEADER)
        document = received_document(request)
        token = header_token
        if token is None:
            token = document.get("task_token") if isinstance(document, dict) else None
        if not isinstance(token, str):
            detail = f"the request carries no task token (in the {TASK_TOKEN_HEADER} header or the body)"
            raise ProblemError(401, "invalid-task-token", "Unauthorized", detail)
        claims = await _signed(token, _attempt_at(request), phase)
        differs = None if header_token is None else _differs(header_token, document)
        if differs is not None:
            raise differs
        refuse_repeated_headers(request)
        return VerifiedToken(token, claims)

    task_claims.__name__ = task_claims.__qualname__ = f"task_claims_{phase}"
    return task_claims


async def _hand_over(client: Any, execution_id: UUID, event_name: str, verdict: dict[str, Any]) -> None:
    """Raise the recorded verdict to the orchestration, or answer 503 with Retry-After when the raise failed for now.

    The result is committed and its token spent either way, so a lost raise can only be made good by the worker: it
    sends the same result again, which answers 200 and raises the verdict again (`remote.record`) while no raise of
    it was accepted. A 200 here would tell it to stop, leaving the step to its timeout. An orchestration that has
    ended or never existed is told nothing and answers 200, as the module worker drops such a verdict (ADR 0037): a
    retry cannot deliver it. Returning (either 200) means nothing is left to hand over.
    """
    try:
        await client.raise_event(str(execution_id), event_name, verdict)
    except Exception as exc:
        # The module worker's test of what the Durable client answers for a gone orchestration, so that the two
        # deliverers of step results agree on which failures are worth a retry.
        if no_one_to_tell(exc):
            logger.warning("remote result %s not raised to %s: %s", event_name, execution_id, exc)
            return
        logger.warning("could not raise remote result %s to %s: %s", event_name, execution_id, exc)
        detail = (
            f"The result is recorded but could not be handed to the execution yet; send the same result again in "
            f"{DEPENDENCY_RETRY_AFTER_S} s."
        )
        raise ProblemError(
            503,
            "orchestration-unavailable",
            "Service unavailable",
            detail,
            headers={"Retry-After": str(DEPENDENCY_RETRY_AFTER_S)},
        ) from None


async def _report(
    client: Any,
    execution_id: UUID,
    step_id: str,
    phase: Literal["run", "compensate"],
    token: str,
    claims: TaskClaims,
    result: remote.RemoteResult,
) -> ResultRecorded:
    tenant_id = claims.tenant_id
    # Admitted as `shared.api.security.authenticated` admits every other request of the tenant: the permit first
    # (before the request's first borrow), then a rate token, and the permit held until the answer is ready.
    permit = await get_admission().admit_waiting(tenant_id)
    try:
        verdict = await run_in_threadpool(remote.take_rate_token, tenant_id)
        if verdict is None:
            raise ProblemError(401, "invalid-task-token", "Unauthorized", "the task token's tenant is not provisioned")
        if not verdict.allowed:
            raise over_rate(tenant_id, verdict.retry_after_s)
        trace.get_current_span().set_attribute(TENANT_ID, str(tenant_id))
        try:
            # The result takes the item, the attempt, then the execution: ADR 0014's one order, which a cancel and the
            # sweeper's end keep too. A deadlock's victim all the same (a belt) rolled back whole and is recorded
            # again: a 409 if the attempt ended meanwhile, never a 503 that would lose a result the worker had.
            record = functools.partial(remote.record, token, execution_id, step_id, phase, result, claims=claims)
            outcome = await run_in_threadpool(retried_on_deadlock, record)
        except remote.TokenUsedError as exc:
            raise ProblemError(409, "task-token-used", "Conflict", str(exc)) from None
        except remote.LeaseExpiredError as exc:
            raise ProblemError(409, "lease-expired", "Conflict", str(exc)) from None
        except remote.TokenRefusedError as exc:
            raise _refused(exc) from None
        key, recorded = outcome.key, outcome.verdict
        if outcome.to_raise:
            await _hand_over(client, execution_id, key.event_name, recorded)
            # Recorded only once the hub has the event: a raise that failed, or a host stopped before this line,
            # leaves the next repeat to raise it (ADR 0027, amended 2026-12-07). Every repeat raised it before, and
            # the orchestration's history kept each copy while it ran. A mark that fails is logged: handed over all
            # the same, and a repeat without the mark raises it once more, which changes nothing.
            await run_in_threadpool(remote.mark_handed_over, tenant_id, key)
    finally:
        permit.release()
    return ResultRecorded(
        execution_id=execution_id,
        step_id=step_id,
        attempt=key.attempt,
        state="succeeded" if recorded["ok"] else str(recorded.get("state", "failed")),
    )


def _routes(suffix: str, phase: Literal["run", "compensate"], noun: str) -> None:
    verified = _task_claims(phase)

    @router.post(
        f"/{{execution_id}}/steps/{{step_id}}{suffix}/complete",
        response_model=ResultRecorded,
        summary=f"Complete a remote {noun}",
        responses=_ERRORS,
        name=f"complete_{phase}",
    )
    async def complete(
        execution_id: ExecutionId,
        step_id: StepId,
        body: StepCompletion,
        token: VerifiedToken = Depends(verified),  # noqa: B008  # the first dependency: solved before the body
        client: Any = Depends(get_durable_client),  # noqa: B008
    ) -> ResultRecorded:
        """Report the attempt's output. The task token is the credential: single use, bound to this attempt; best
        sent in the X-Task-Token header, which is verified before the body is read."""
        result = remote.RemoteResult(ok=True, output=body.output)
        return await _report(client, execution_id, step_id, phase, token.token, token.claims, result)

    @router.post(
        f"/{{execution_id}}/steps/{{step_id}}{suffix}/fail",
        response_model=ResultRecorded,
        summary=f"Fail a remote {noun}",
        responses=_ERRORS,
        name=f"fail_{phase}",
    )
    async def fail(
        execution_id: ExecutionId,
        step_id: StepId,
        body: StepFailure,
        token: VerifiedToken = Depends(verified),  # noqa: B008  # the first dependency: solved before the body
        client: Any = Depends(get_durable_client),  # noqa: B008
    ) -> ResultRecorded:
        """Report that the attempt failed; the step's retry policy decides what happens next. The task token is
        best sent in the X-Task-Token header, as for a completion."""
        result = remote.RemoteResult(ok=False, error=body.error, retryable=body.retryable)
        return await _report(client, execution_id, step_id, phase, token.token, token.claims, result)


_routes("", "run", "step attempt")
_routes("/compensation", "compensate", "compensation attempt")
