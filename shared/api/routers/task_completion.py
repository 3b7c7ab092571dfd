# intent_ref: platform.execution
"""Remote workers report a step attempt's result with the task token that came with its work."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shared.api.durable import get_durable_client, raise_to_orchestration
from shared.api.problems import ProblemError
from shared.api.responses import INVALID, RATE_LIMITED, problem_doc
from shared.api.routers.executions import ExecutionId, StepId
from shared.engine import remote

router = APIRouter(prefix="/api/v1/executions", tags=["remote workers"])
_EXAMPLE_TOKEN = "qpt1.eyJ0IjoiLi4uIn0.c2lnbmF0dXJl"  # noqa: S105  # a documentation example
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem_doc(
        401,
        "invalid-task-token",
        "Unauthorized",
        "the task token has expired",
        "The task token is malformed, forged, expired or another tenant's",
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
        "The attempt's result was reported already (a task token is single use), or the lease it was handed out "
        "with has expired or moved on (`lease-expired`)",
    ),
    422: INVALID,
    429: RATE_LIMITED,
}


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

    task_token: str = Field(
        min_length=1, max_length=2048, description="From the leased work item (`POST /api/v1/work/lease`)."
    )
    output: Any = None


class StepFailure(BaseModel):
    """A failed attempt: what went wrong, and whether another attempt could succeed."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"task_token": _EXAMPLE_TOKEN, "error": "registry returned 503", "retryable": True}]
        },
    )

    task_token: str = Field(min_length=1, max_length=2048)
    error: str = Field(min_length=1, max_length=4000)
    retryable: bool = True


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


async def _report(
    client: Any,
    execution_id: UUID,
    step_id: str,
    phase: Literal["run", "compensate"],
    token: str,
    result: remote.RemoteResult,
) -> ResultRecorded:
    try:
        key, verdict = await run_in_threadpool(remote.complete, token, execution_id, step_id, phase, result)
    except remote.TokenUsedError as exc:
        raise ProblemError(409, "task-token-used", "Conflict", str(exc)) from None
    except remote.LeaseExpiredError as exc:
        raise ProblemError(409, "lease-expired", "Conflict", str(exc)) from None
    except remote.TokenRefusedError as exc:
        if "another execution or step" in str(exc):
            raise ProblemError(
                403, "forbidden", "Forbidden", str(exc), extensions={"reason": "token_mismatch"}
            ) from None
        raise ProblemError(401, "invalid-task-token", "Unauthorized", str(exc)) from None
    await raise_to_orchestration(client, execution_id, key.event_name, verdict)
    return ResultRecorded(
        execution_id=execution_id,
        step_id=step_id,
        attempt=key.attempt,
        state="succeeded" if verdict["ok"] else str(verdict.get("state", "failed")),
    )


def _routes(suffix: str, phase: Literal["run", "compensate"], noun: str) -> None:
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
        client: Any = Depends(get_durable_client),  # noqa: B008
    ) -> ResultRecorded:
        """Report the attempt's output. The task token is the credential: single use, bound to this attempt."""
        return await _report(
            client, execution_id, step_id, phase, body.task_token, remote.RemoteResult(ok=True, output=body.output)
        )

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
        client: Any = Depends(get_durable_client),  # noqa: B008
    ) -> ResultRecorded:
        """Report that the attempt failed; the step's retry policy decides what happens next."""
        return await _report(
            client,
            execution_id,
            step_id,
            phase,
            body.task_token,
            remote.RemoteResult(ok=False, error=body.error, retryable=body.retryable),
        )


_routes("", "run", "step attempt")
_routes("/compensation", "compensate", "compensation attempt")
