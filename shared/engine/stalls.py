# intent_ref: platform.telemetry
"""Stalled executions: an orchestration that still runs while one of its attempts is past what its step allows.

Every dispatched attempt ends by its own timeout at the latest (the orchestrator's timer), and every retry pause
by its `retry_at`; an execution with an attempt overdue by more than a grace, or a retry overdue likewise, is
making no progress and nothing in it will end that by itself. The sweeper, which already looks at quiet
executions, records each such stall once: an `execution_stalled` event on the execution's stream, the
`qp.executions.stalled` metric, and a span event in the execution's trace. It changes nothing else: a stall is for
an operator to look at (docs/operations.md says what to do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from shared import telemetry
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import start as engine
from shared.engine.start_service import checked_first
from shared.engine.steps import Conn
from shared.observability.tracing import continued_span, execution_attributes
from shared.policy.facts import TenantFacts
from shared.registry.service import RegistryError
from shared.tenants.repository import get_tenant

STALL_GRACE_S = 120.0
"""How far past its deadline an attempt (or a retry) must be before the execution counts as stalled: the module
worker's own deadline acts well within it, and so does the orchestrator's timer unless the answer of the dispatch that
recorded the attempt waited in the task hub longer than this (under rules 10 the timer counts from that answer, ADR
0047: such an attempt is reported, nothing else)."""
DEFAULT_TIMEOUT_S = 3600
"""An attempt whose step and module name no timeout is allowed this long (as the orchestrator allows it)."""
_UNTIMED_ACTIONS = frozenset({"approval", "wait"})
"""They end by a person or by their own clock, not by a timeout: never counted as stalled here."""

_OPEN_ATTEMPTS = (
    "SELECT step_id, phase, attempt, action, dispatched_at, clock_timestamp() AS now FROM app.step_attempts"
    " WHERE execution_id = %s AND state = 'dispatched'"
)
_OVERDUE_RETRIES = (
    "SELECT step_id, attempt, retry_at, clock_timestamp() AS now FROM app.execution_steps WHERE execution_id = %s"
    " AND state = 'retrying' AND retry_at < clock_timestamp() - make_interval(secs => %s)"
)
# A stall is one step's attempt of one phase: compensation attempt 1 is another attempt than run attempt 1 (matched
# on step and attempt only, the one recorded first hid the other). A stall recorded before the phase was (its data
# has none) was of the run phase as a rule, so it is read as one.
_RECORDED = (
    "SELECT 1 FROM app.execution_events WHERE execution_id = %s AND type = 'execution_stalled' AND step_id = %s"
    " AND (data->>'attempt')::int = %s AND coalesce(data->>'phase', 'run') = %s"
)


@dataclass(frozen=True)
class Stall:
    """One step found overdue, and by how much."""

    step_id: str
    attempt: int
    overdue_s: float
    reason: str
    phase: str = "run"  # `run`, or `compensate` for an attempt of the step's compensation


def allowed_s(plan: dict[str, Any], step_id: str, phase: str) -> float:
    """How long an attempt of the step may take, as its orchestration's timer allows it: a run by its timeout, a
    compensation by its compensation timeout, else its timeout; else DEFAULT_TIMEOUT_S."""
    step_plan = plan.get(step_id)
    step_plan = step_plan if isinstance(step_plan, dict) else {}
    keys = ("timeout_s",) if phase == "run" else ("compensate_timeout_s", "timeout_s")
    for key in keys:
        value = step_plan.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return float(DEFAULT_TIMEOUT_S)


def overdue(conn: Conn, execution: repo.Execution, plan: dict[str, Any], grace_s: float = STALL_GRACE_S) -> list[Stall]:
    """The execution's attempts and retries overdue by more than `grace_s`, by the per-step plan of its start."""
    stalls: list[Stall] = []
    for row in conn.execute(_OPEN_ATTEMPTS, (execution.id,)).fetchall():
        if row["action"] in _UNTIMED_ACTIONS:
            continue
        allowed = allowed_s(plan, row["step_id"], row["phase"])
        late = (row["now"] - row["dispatched_at"]).total_seconds() - allowed
        if late > grace_s:
            named = "attempt" if row["phase"] == "run" else "compensation attempt"
            reason = f"{named} {row['attempt']} of {row['step_id']} is {late:.0f} s past its {allowed:g} s timeout"
            stalls.append(Stall(row["step_id"], row["attempt"], late, reason, row["phase"]))
    for row in conn.execute(_OVERDUE_RETRIES, (execution.id, grace_s)).fetchall():
        late = (row["now"] - row["retry_at"]).total_seconds()
        reason = f"the retry of {row['step_id']} is {late:.0f} s past its time"
        stalls.append(Stall(row["step_id"], row["attempt"], late, reason))
    return stalls


def record_stalls(
    tenant_id: UUID,
    execution_id: UUID,
    *,
    grace_s: float = STALL_GRACE_S,
    pool: ConnectionPool[Any] | None = None,
    wait_s: float | None = None,
) -> list[Stall]:
    """Record each new stall of a running execution once (event, metric, span event); answers the new ones.

    Its per-step plan is rebuilt as its start built it, its version's definition checked against the tenant's catalog
    between two transactions at the check gate, as a stalled start's rebuild is (sweeper.start_input); its recorded
    input is not checked: the plan needs only the steps' timeouts (`start.rebuild_plan`). A costly check waits at most
    `wait_s` for its tenant's turn (default: the gate's), then CheckBusyError with nothing recorded."""

    def read() -> tuple[engine.PendingInputCheck, TenantFacts] | None:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            execution = repo.get_execution(conn, execution_id)
            tenant = get_tenant(conn, tenant_id)
            if execution.terminal or tenant is None:
                return None  # answered by the recording transaction, before any check
            pending = engine.plan_to_check(conn, execution)
        return None if pending is None else (pending, tenant.facts())

    return checked_first(
        read,
        lambda input_check: _record_stalls(tenant_id, execution_id, grace_s, pool, input_check),
        tenant_id=tenant_id,
        wait_s=wait_s,
    )


def _record_stalls(
    tenant_id: UUID,
    execution_id: UUID,
    grace_s: float,
    pool: ConnectionPool[Any] | None,
    input_check: engine.InputCheck | None,
) -> list[Stall]:
    """`record_stalls`' transaction, with its plan's check made before it (`input_check`)."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        execution = repo.get_execution(conn, execution_id)
        tenant = get_tenant(conn, tenant_id)
        if execution.terminal or tenant is None:
            return []
        try:
            plan = engine.rebuild_plan(conn, tenant.facts(), execution, input_check=input_check)
        except (engine.StartError, RegistryError, ValidationError):
            # Its version no longer validates (a stored definition the current model refuses too): judge by the
            # default timeout. Raised, it failed its tenant's sweep every time it came round.
            plan = {}
        found = overdue(conn, execution, plan, grace_s)
        if not found:
            return []
        # Decided again under the execution's row, held: an end committed since the read above (its end must stay
        # the stream's last event) or another sweeper's record of the same stall (a second host) would be overtaken.
        if repo.hold_execution(conn, execution_id).terminal:
            return []
        new = [s for s in found if not _recorded(conn, execution_id, s)]
        for stall in new:
            data = {
                "attempt": stall.attempt,
                "phase": stall.phase,
                "overdue_s": round(stall.overdue_s),
                "reason": stall.reason,
            }
            repo.append_event(conn, execution_id, "execution_stalled", stall.step_id, data)
            attributes = execution_attributes(
                tenant_id=tenant_id,
                execution_id=execution_id,
                intent_id=execution.intent_id,
                intent_version=execution.intent_version,
                step_id=stall.step_id,
                attempt=stall.attempt,
            )
            with continued_span("execution stalled", None, attributes):
                telemetry.emit_on_commit(
                    conn,
                    "execution.stalled",
                    tenant_id=tenant_id,
                    execution_id=execution_id,
                    intent_id=execution.intent_id,
                    step_id=stall.step_id,
                    attempt=stall.attempt,
                    overdue_s=round(stall.overdue_s),
                    reason=stall.reason,
                )
    return new


def _recorded(conn: Conn, execution_id: UUID, stall: Stall) -> bool:
    return conn.execute(_RECORDED, (execution_id, stall.step_id, stall.attempt, stall.phase)).fetchone() is not None
