# intent_ref: platform.execution
"""The start path shared by every way in (the execute and retry routes, the intent-requests ingress): the checks and
writes in one tenant transaction, the answer of a refused start, and starting the orchestration."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from starlette.concurrency import run_in_threadpool

from shared.api.problems import ProblemError
from shared.api.security import RequestContext, authorize, tenant_resource
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import start as engine
from shared.engine.protocol import ORCHESTRATOR
from shared.engine.start import Conn
from shared.policy.actions import Action
from shared.registry import service as registry

logger = logging.getLogger(__name__)


def start_problem(exc: engine.StartError | registry.RegistryError) -> ProblemError:
    """The API answer of a refused start."""
    match exc:
        case registry.NotFoundError() | registry.UnknownVersionError():
            return ProblemError(404, "not-found", "Not found", str(exc))
        case engine.GateRefusedError():
            return ProblemError(
                403,
                "gate-refused",
                "Forbidden",
                f"The tenant may not run this intent: {exc}.",
                extensions={
                    "reason": "gate_refused",
                    "violations": [{"step": v.step, "reason": v.reason, "value": v.value} for v in exc.violations],
                },
            )
        case engine.InvalidInputError():
            return ProblemError(
                422, "invalid-input", "Unprocessable content", str(exc), extensions={"errors": exc.errors}
            )
        case engine.QuotaExceededError():
            return ProblemError(
                429,
                "execution-quota",
                "Too many requests",
                str(exc),
                headers={"Retry-After": "30"},
                extensions={"limit": exc.limit},
            )
        case engine.PlanChangedError():
            return ProblemError(409, "plan-changed", "Conflict", str(exc), extensions={"plan_hash": exc.actual})
        case engine.TenantSuspendedError():
            return ProblemError(403, "forbidden", "Forbidden", str(exc), extensions={"reason": "tenant_suspended"})
        case engine.IntentArchivedError():
            return ProblemError(409, "archived", "Conflict", str(exc))
        case engine.NoLongerValidError():
            return ProblemError(409, "definition-invalid", "Conflict", f"The pinned version no longer validates: {exc}")
        case engine.IdempotencyConflictError():
            # As for every route that takes the key (ADR 0022): the key names one request, and this is another.
            return ProblemError(422, "idempotency-key", "Unprocessable content", str(exc))
    return ProblemError(500, "internal-error", "Internal server error")


def begin(
    context: RequestContext,
    make_request: Callable[[Conn], engine.StartRequest],
    *,
    detail: dict[str, Any] | None = None,
) -> engine.Started:
    """Run a start's checks and writes in one tenant transaction (call it on a worker thread); `make_request` builds
    the request inside it, and the intent's execute decision is audited with `detail`. A refused start raises the
    ProblemError the API answers."""

    def decide(item: registry.Item) -> None:
        authorize(
            context,
            Action.INTENT_EXECUTE,
            tenant_resource(
                "Intent", item.head.id, context.tenant.id, target=item.target or "", labels=item.version.labels
            ),
            detail=detail,
        )

    with tenant_transaction(context.tenant.id) as conn:
        try:
            return engine.start_execution(
                conn,
                context.tenant_facts,
                make_request(conn),
                authorize=decide,
                max_concurrent=engine.concurrent_limit(context.tenant.quotas),
            )
        except (engine.StartError, registry.RegistryError) as exc:
            raise start_problem(exc) from None


async def launch(client: Any, started: engine.Started, tenant_id: UUID, *, record_failure: bool = True) -> None:
    """Start the orchestration (instance id = execution id) when this start holds the start claim.

    When the orchestration client fails, a request (`record_failure`) records the execution failed and answers 503;
    otherwise the client's error is raised as is and the execution stays pending, for a redelivered request (after
    the claim goes stale) or the sweeper to start.
    """
    if started.orchestration_input is None:
        return
    try:
        await client.start_new(ORCHESTRATOR, str(started.execution.id), started.orchestration_input)
    except Exception as exc:
        if not record_failure:
            raise
        # Nothing runs it, so it must not look pending forever: record why, then tell the caller to retry.
        logger.exception("could not start the orchestration of execution %s", started.execution.id)
        await run_in_threadpool(_fail_start, tenant_id, started.execution.id, str(exc))
        raise ProblemError(
            503,
            "orchestration-unavailable",
            "Service unavailable",
            "The execution could not be started; it is recorded as failed. Retry shortly.",
            headers={"Retry-After": "5"},
        ) from None


def _fail_start(tenant_id: UUID, execution_id: UUID, reason: str) -> None:
    with tenant_transaction(tenant_id) as conn:
        if repo.get_execution(conn, execution_id).status == "pending":
            repo.transition(conn, execution_id, "failed", error=f"the orchestration could not be started: {reason}")
