# intent_ref: platform.execution
"""The stuck-execution sweeper: start executions whose starter died, end executions whose orchestration ended.

A stalled start (the execute request committed the row, then died before starting the orchestration) is taken
over with the start path's own conditional claim, so of the sweeper and a repeated idempotent request only one
starts it; its input is rebuilt the way the start path rebuilds it. A suspended tenant's stalled starts are left
pending, neither claimed nor ended: they start once the tenant is active again (its running executions carry on
meanwhile). An execution that has not ended and has been quiet for a while is compared with its orchestration: a
failed, terminated or vanished instance means nothing will ever record its end, so the sweeper ends it `failed`
through the normal transition (event, domain event, telemetry), which also frees its quota slot. So does one whose
orchestration still runs but waits on nothing: a run started under reducer rules 7 or earlier whose compensation
could not resolve its parameters stays compensating for ever (ADR 0025); with no compensation out or due, every
compensation attempt past its deadline (its orchestration's timer would have moved it) and nothing on its stream for
as long, its orchestration is terminated and the execution ended the same way (cancelled instead when a cancel is
what stopped its run, also when its end is left to a later run).

Only tenant ids cross tenants (a SECURITY DEFINER function, migration 0014); each tenant's executions are read and
moved in that tenant's own transaction. Orchestration calls happen outside any transaction. A costly check waits for
its tenant's turn at the check gate for CHECK_WAIT_S at most: past it, that execution is left for a later run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from shared.check_gate import CheckBusyError
from shared.db.session import bounded_lock_waits, platform_transaction, tenant_transaction
from shared.engine import control, durable_client, remote, stalls, work_queue
from shared.engine import executions as repo
from shared.engine import start as engine
from shared.engine import steps as store
from shared.engine.durable_client import DurableClient
from shared.engine.progress import abandon_step, end_compensation
from shared.engine.protocol import CANCEL_EVENT, ORCHESTRATOR, EventRaiser, no_one_to_tell
from shared.engine.start_service import (
    StatusUnknownError,
    checked_first,
    existing_instance,
    status_unknown,
    unless_erased,
)
from shared.engine.steps import AttemptKey
from shared.policy.facts import TenantFacts
from shared.registry.model import Definition
from shared.registry.service import RegistryError
from shared.tenants import erased_orchestrations
from shared.tenants.models import Tenant
from shared.tenants.repository import get_tenant

logger = logging.getLogger(__name__)

# Fixed, not settings: they bound recovery time and load, not behaviour anyone tunes per deployment.
# A live starter needs well under a second between commit and start, and a repeated request takes over after
# engine.STALE_START_S (30 s); twice that leaves a client's own retry the first chance.
START_GRACE_S = 60.0
# A healthy execution changes status when it starts, waits, resumes or ends; five quiet minutes are worth one
# status call; an orchestration that ended unrecorded is found within ceil(N / 20) runs of its tenant's sweep, N the
# tenant's quiet executions: minutes for a few hundred.
QUIET_S = 300.0
# Per run (every 30 s): a tenant with thousands of long waits costs at most MAX_CHECKS_PER_TENANT status calls, and
# the whole run at most MAX_STATUS_CHECKS; past stalled starts the tenant whose check is the oldest goes first
# (migration 0043), so none is starved.
MAX_TENANTS = 100
MAX_STARTS_PER_TENANT = 20
MAX_CHECKS_PER_TENANT = 20
MAX_STATUS_CHECKS = 200
CHECK_WAIT_S = 3.0
"""How long a costly check of the sweeper's (a stalled start's rebuild, a stall plan's) waits for its tenant's turn at
the check gate: a definition's check or two. The tenants are swept one after another, so a longer wait would hold up
every other tenant's sweep (and the run's next timer) behind one tenant's checks. Past it, that execution is left for
a later run; a tenant found busy once is not waited for again in the same run (its later checks take a free slot, or
are left too), so one tenant's share of a run waits CHECK_WAIT_S at most."""
RUN_BUDGET_S = 60.0
"""How long a run goes on sweeping tenants: no tenant's sweep, and no execution's status call, starts past it (ADR
0014). The status calls were bounded in number only, so a slow task hub made a run last calls x latency (up to
MAX_STATUS_CHECKS x the client's 240 s), while the timer (every 30 s) skipped its later runs; two skipped at most now.
A tenant's executions not reached keep their place (they were not checked; least recently checked first); the tenants
not reached are found again by a later run, in its order (stalled starts first, then the least recently checked)."""
STATUS_CALL_BOUND_S = 5.0
"""How long one call of the Durable client may take, whatever it asks (a status, a start, a terminate, an event
raised, a purge): a hung task hub holds up a run seconds, not the client's 240 s per call. A status call that takes
longer is a status unknown (left for a later run, never read as "no such instance"); any other call cut off is left
for a later run as one that failed is, and may have taken effect all the same (`bounded`)."""
CHILDREN_AT_ONCE = 16
"""Cancels of an ended execution's children told at once: each is an event raised (and the verdicts of the work it
ended handed over)."""
ERASED_PURGE_BOUND_S = 10.0
"""How long a run's purge of the orchestrations recorded as outliving their erased tenant takes at most, all of them
together (`erased_orchestrations.purge_erased_orchestrations`); what is cut off is purged by a later run."""
_CAUSE_MAX_CHARS = 1000

_EXPIRED_LEASE_TENANTS = "SELECT tenant_id FROM app.work_expired_lease_tenants(%s) AS expired (tenant_id)"
_RAISING_VERDICT_TENANTS = "SELECT tenant_id FROM app.work_raising_verdict_tenants(%s, %s) AS raising (tenant_id)"
VERDICT_GRACE_S = 60.0
"""How long after its attempt ended a verdict that a lease poll, a heartbeat or this sweeper could not hand over is
raised again: its first raise is bounded to seconds (the lease route's VERDICT_RAISE_BOUND_S), so one still not
handed over by then failed, was cut off, or its host died after the commit. The orchestration waits on it meanwhile
(or on the step's timeout, up to an hour, without it)."""
RAISE_BOUND_S = 5.0
"""How long one tenant's verdicts take to raise at most in a run: the tenants go one after another, and a slow task
hub must not hold up every other tenant's leases and sweep. What is cut off is raised again a run later."""
RAISE_RUN_BUDGET_S = 10.0
"""How long the raises of one step of a run take at most, all tenants together (up to MAX_TENANTS, RAISE_BOUND_S
each, were minutes with a slow task hub, every later step of the run waiting): past it, the expiries still end and
their verdicts, like the tenants not reached, stay `raising` for a later run. Tenants are taken in a new order each
run, so that the same few do not always take the budget."""
# The tenants not active are read here, by the control plane (the function's owner reads no tenant row): their
# stalled starts wait for them to be active again, and so do not rank them first (migration 0067).
_STUCK_TENANTS = (
    "SELECT tenant_id FROM app.execution_sweep_tenants(%s, %s, %s,"
    " ARRAY(SELECT id FROM app.tenants WHERE status <> 'active')) AS stuck (tenant_id)"
)
# Oldest claim first; whether a claim is stale is decided by the start path's claim statement, not here.
_PENDING_STARTS = (
    "SELECT id FROM app.executions WHERE status = 'pending' AND parent_execution_id IS NULL"
    " ORDER BY start_claimed_at NULLS FIRST, id LIMIT %s"
)
# Least recently checked first (never checked first), then the longest quiet: each run moves the ones it checked to
# the back (_SWEPT), so of N quiet executions every one is checked within ceil(N / limit) runs, a tenant's oldest
# legitimate waits included, and none twice before all once (migration 0043; random picks found a dead one by chance).
_QUIET = (
    "SELECT id FROM app.executions WHERE status IN ('running', 'waiting', 'compensating')"
    " AND updated_at < clock_timestamp() - make_interval(secs => %s)"
    " ORDER BY swept_at NULLS FIRST, updated_at LIMIT %s"
)
# A row another transaction holds (a transition under way) is skipped, not waited on: it stays at the front and is
# checked again next run, and a long-held lock fails neither this statement nor the tenant's run.
_SWEPT = (
    "UPDATE app.executions SET swept_at = now() WHERE id IN"
    " (SELECT id FROM app.executions WHERE id = ANY(%s) FOR UPDATE SKIP LOCKED)"
)
# A cancel recorded whose raise no one handed over (its request was answered 503 and not sent again).
_UNRAISED_CANCEL = (
    "SELECT cancel_requested_by FROM app.executions WHERE id = %s"
    " AND cancel_requested_at IS NOT NULL AND cancel_raised_at IS NULL"
)
_STILL_RUNS = frozenset({"Running", "Pending", "Suspended", "ContinuedAsNew"})
# Compensating with no compensation out (a dispatched attempt) or due (a step compensating between its attempts, its
# retry recorded or not: under rules 4 and earlier a retry's wait has no recorded time and may be long), and nothing on
# its stream for `quiet` seconds: the stream, not the row, since the row last changed when compensating began, and a
# run between two compensations (one recorded ended, the next being dispatched) has no attempt out for a moment.
# Its run asks for nothing more (rules 7 and earlier, an unresolvable compensation, ADR 0025). Answers the run's cause,
# and whether a cancel recorded before compensating began is that cause (the run records "cancelled" then).
_STUCK_COMPENSATION = (
    "SELECT e.error, e.cancel_requested_at IS NOT NULL AND e.cancel_requested_at <= e.updated_at AS cancelled"
    " FROM app.executions e WHERE e.id = %(id)s AND e.status = 'compensating'"
    " AND e.updated_at < clock_timestamp() - make_interval(secs => %(quiet)s)"
    " AND NOT EXISTS (SELECT 1 FROM app.step_attempts a WHERE a.execution_id = e.id AND a.state = 'dispatched')"
    " AND NOT EXISTS (SELECT 1 FROM app.execution_steps s WHERE s.execution_id = e.id AND s.state = 'compensating')"
    " AND COALESCE((SELECT v.occurred_at FROM app.execution_events v WHERE v.execution_id = e.id"
    " ORDER BY v.seq DESC LIMIT 1), e.updated_at) < clock_timestamp() - make_interval(secs => %(quiet)s)"
)
# Each compensation attempt of the run and how long ago it went out. One whose verdict was recorded but never raised
# to the orchestration (protocol.raise_to_orchestration gives a failed raise up) reads ended, its step compensated or
# compensation_failed and its stream quiet, while the orchestration still waits on the attempt's timer: the run is not
# stuck until that deadline (and a grace) has passed.
_COMPENSATIONS = (
    "SELECT step_id, extract(epoch FROM clock_timestamp() - dispatched_at)::float8 AS out_s FROM app.step_attempts"
    " WHERE execution_id = %s AND phase = 'compensate'"
)
# A compensating execution whose run a cancel stopped (the cause it recorded), ended or not by its orchestration: the
# same decision as _STUCK_COMPENSATION's, without its quiet conditions.
_STOPPED_COMPENSATING = (
    "SELECT e.error, e.cancel_requested_at IS NOT NULL AND e.cancel_requested_at <= e.updated_at AS cancelled"
    " FROM app.executions e WHERE e.id = %s AND e.status = 'compensating'"
)
# machine.begin's reading of a start input that names no rules: the oldest, from before rules were recorded.
_OLDEST_RULES = 2
# Rules 8 gives an unresolvable compensation up and carries on: only runs started under earlier rules hang so.
_LAST_HANGING_RULES = 7


@dataclass(frozen=True)
class _NoAnswer:
    """A status call cut off by STATUS_CALL_BOUND_S: like the host's error body, it says nothing of the instance
    (`status_unknown`)."""

    Message: str = "the task hub did not answer in time"  # noqa: N815  # the attribute status_unknown reads


def bounded(client: DurableClient) -> DurableClient:
    """`client` with each call cut off by STATUS_CALL_BOUND_S: every call the sweeper makes, also those made through
    the start path's and the control plane's helpers it hands the client to.

    A call abandoned may still take effect in the task hub, and each caller leaves its work so that this is harmless:
    a start cut off stays pending and claimed, and the run that takes it over once its claim is stale asks for its
    instance first (one there records its own start); a terminate cut off leaves the execution as it was, and the next
    run finds its orchestration terminated (ended as any terminated run, `cancelled_compensation` keeping a cancel's
    promise) or still running (terminated again); an event cut off is not marked handed over, and is raised again (a
    cancel by `_raise_cancel_again`, a verdict by `raise_verdicts_again`): a repeat its run counts for nothing."""
    return durable_client.bounded(client, STATUS_CALL_BOUND_S)


@dataclass(frozen=True)
class SweepResult:
    """What one sweep did."""

    tenants: int
    started: int
    ended: int
    checked: int
    failed_tenants: int
    expired_leases: int = 0
    raised_again: int = 0
    """Verdicts of ended remote attempts not handed over on their first raise, handed over now."""
    inputs: int = 0
    """Of the executions `checked`, those whose run's input was asked for too: a second status call each."""
    busy: int = 0
    """Of the executions `checked`, those left for a later run: their tenant's turn at the check gate did not come."""
    purged: int = 0
    """Orchestrations recorded as outliving their erased tenant, purged (`purge_erased_orchestrations`)."""


@dataclass(frozen=True)
class TenantSweep:
    """What sweeping one tenant did: orchestrations started, executions ended, executions asked after (a status call
    each) and, of those, runs whose input was asked for too (a second status call each) and executions left for a
    later run because their tenant's turn at the check gate did not come within CHECK_WAIT_S."""

    started: int = 0
    ended: int = 0
    checked: int = 0
    inputs: int = 0
    busy: int = 0

    @property
    def calls(self) -> int:
        """The status calls made: what a sweep's budget bounds."""
        return self.checked + self.inputs


def stuck_tenants(
    max_tenants: int = MAX_TENANTS,
    *,
    start_grace_s: float = START_GRACE_S,
    quiet_s: float = QUIET_S,
    control_pool: ConnectionPool[Any] | None = None,
) -> list[UUID]:
    """Ids of the tenants with a stalled start or a quiet unfinished execution (no row of theirs is read here)."""
    with platform_transaction(pool=control_pool) as conn:
        rows = conn.execute(_STUCK_TENANTS, (start_grace_s, quiet_s, max_tenants)).fetchall()
    return [UUID(str(row["tenant_id"])) for row in rows]


def claim_stalled_starts(
    tenant_id: UUID,
    *,
    limit: int = MAX_STARTS_PER_TENANT,
    start_grace_s: float = START_GRACE_S,
    pool: ConnectionPool[Any] | None = None,
) -> list[UUID]:
    """Take over the tenant's stalled top-level starts (at most `limit`); each claim commits before anything starts.
    Nothing while the tenant is suspended: its starts stay pending, and are taken over once it is active again."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        if _suspended(get_tenant(conn, tenant_id)):
            # Not claimed, so no status call either: one per stalled start every other run would spend the tenant's
            # checks, which its running executions still need (they carry on through a suspension).
            return []
        candidates = [row["id"] for row in conn.execute(_PENDING_STARTS, (limit,)).fetchall()]
    claimed: list[UUID] = []
    for execution_id in candidates:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            # False: started meanwhile, claimed by someone else, or its claim is still fresh.
            if engine.claim_stale_start(conn, execution_id, start_grace_s):
                claimed.append(execution_id)
    return claimed


def start_input(
    tenant_id: UUID, execution_id: UUID, *, pool: ConnectionPool[Any] | None = None, wait_s: float | None = None
) -> dict[str, Any] | str | None:
    """The orchestration input of a claimed start, rebuilt as the start path does; None when it is no longer
    pending or its tenant is suspended, or the cause when it can no longer start (the tenant is gone, the pinned
    version no longer validates, its input is over QP_MAX_ORCHESTRATION_INPUT_BYTES), with which it has then ended
    `failed`.

    A start whose tenant was suspended since its claim is left pending, its claim to go stale again: a suspension is
    undone by reactivating the tenant, and the start is then taken over as any stalled start is (ADR 0014, amended
    2026-12-07). Ended `failed`, it stayed failed after the reactivation, while the tenant's running executions
    carried on.

    Its recorded input and its version's definition are checked between two transactions, as a replay's are
    (`checked_first`): read in a short one, checked with no connection held at the check gate (a costly check takes
    its tenant's turn), then rebuilt in a second that takes the check only for the version and input it was made for.
    The turn is waited for `wait_s` at most (None: CHECK_WAIT_S), then CheckBusyError with nothing written: the start
    stays pending and claimed, and a later run takes it over once its claim is stale."""

    def read() -> tuple[engine.PendingInputCheck, TenantFacts] | None:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            execution = repo.get_execution(conn, execution_id)
            tenant = get_tenant(conn, tenant_id)
            if execution.status != "pending" or tenant is None or tenant.status != "active":
                return None  # answered by the rebuild's transaction, before any check
            pending = engine.rebuild_to_check(conn, execution)
        return None if pending is None else (pending, tenant.facts())

    def rebuild(input_check: engine.InputCheck | None) -> dict[str, Any] | str | None:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            execution = repo.get_execution(conn, execution_id)
            if execution.status != "pending":
                return None  # a late starter got there after all
            tenant = get_tenant(conn, tenant_id)
            if _suspended(tenant):
                logger.info("sweeper: execution %s stays pending while its tenant is suspended", execution_id)
                return None
            if tenant is None or tenant.status != "active":
                error = engine.TenantSuspendedError(f"tenant {tenant_id} is not active")
                return _cannot_start(conn, execution_id, error)
            facts = tenant.facts()
            try:
                # Bounded as a start's is: an input over the bound fails every launch the same way, so it is ended
                # here (InputTooLargeError) rather than started again every run.
                return engine.bounded_input(engine.rebuild_input(conn, facts, execution, input_check=input_check))
            except (engine.StartError, RegistryError) as exc:
                return _cannot_start(conn, execution_id, exc)
            except ValidationError as exc:
                # A stored definition (the version's, or its blueprint's) the current model refuses: no later run
                # would rebuild it either. Any other model's refusal is a fault to see, not a reason to end it.
                if exc.title != Definition.__name__:
                    raise
                return _cannot_start(conn, execution_id, exc)

    return checked_first(read, rebuild, tenant_id=tenant_id, wait_s=CHECK_WAIT_S if wait_s is None else wait_s)


def _suspended(tenant: Tenant | None) -> bool:
    """Whether the tenant is there but suspended (a suspension is undone; an erased tenant is gone for good)."""
    return tenant is not None and tenant.status == "suspended"


def _cannot_start(conn: store.Conn, execution_id: UUID, exc: Exception) -> str:
    """End a claimed start that can never start `failed`: it must not hold a quota slot as pending forever, nor fail
    its tenant's sweep every run. Answers the cause."""
    cause = f"the orchestration could not be started: {exc}"
    repo.transition(conn, execution_id, "failed", error=cause)
    return cause


def quiet_executions(
    tenant_id: UUID,
    *,
    limit: int = MAX_CHECKS_PER_TENANT,
    quiet_s: float = QUIET_S,
    pool: ConnectionPool[Any] | None = None,
) -> list[UUID]:
    """Up to `limit` of the tenant's unfinished executions whose status has not changed for `quiet_s` seconds."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return [row["id"] for row in conn.execute(_QUIET, (quiet_s, limit)).fetchall()]


def record_swept(tenant_id: UUID, execution_ids: list[UUID], *, pool: ConnectionPool[Any] | None = None) -> None:
    """Record that the sweeper has just asked after these executions' orchestrations, so the next runs take others."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        conn.execute(_SWEPT, (execution_ids,))


def _runtime(status: Any) -> str | None:
    """The orchestration's runtime status by name; None when there is no such instance."""
    runtime = getattr(status, "runtime_status", None) if status else None
    return None if runtime is None else str(getattr(runtime, "name", runtime))


def ended_cause(status: Any) -> str | None:
    """Why the execution must end, from its orchestration's status; None while the orchestration still runs."""
    name = _runtime(status)
    if name is None:
        return "orchestration was terminated: its instance no longer exists"
    if name in _STILL_RUNS:
        return None
    output = getattr(status, "output", None)
    detail = "" if output in (None, "") else str(output)
    if name == "Failed":
        cause = f"orchestration failed: {detail or 'no details'}"
    elif name == "Terminated":
        cause = "orchestration was terminated" + (f": {detail}" if detail else "")
    elif name == "Canceled":
        cause = "orchestration was canceled"
    else:  # Completed: the orchestration records the end before it returns, so this one ended unrecorded
        cause = "orchestration completed without recording the execution's end"
    return cause[:_CAUSE_MAX_CHARS]


@dataclass(frozen=True)
class Stuck:
    """An execution stuck compensating: how it ends, and why; and how long ago each of its compensation attempts
    went out (step id, seconds), each to be past its deadline before the run counts as waiting on nothing."""

    cause: str
    status: Literal["failed", "cancelled"]
    compensations: tuple[tuple[str, float], ...] = ()


def unraised_cancel(tenant_id: UUID, execution_id: UUID, *, pool: ConnectionPool[Any] | None = None) -> str | None:
    """Who asked for the execution's cancel, when it was recorded but no raise of it was handed over: its request
    was answered 503 (recorded, not told) and not sent again. None otherwise."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute(_UNRAISED_CANCEL, (execution_id,)).fetchone()
    return None if row is None else str(row["cancel_requested_by"])


async def _raise_cancel_again(
    tenant_id: UUID, execution_id: UUID, client: DurableClient, pool: ConnectionPool[Any] | None
) -> None:
    """Tell a running execution of its cancel when nobody did: the run may learn of it only from its event (one
    waiting on an approval, say), and would wait for it as long as its steps allow (ADR 0027, amended 2026-12-07)."""
    requested_by = await asyncio.to_thread(unraised_cancel, tenant_id, execution_id, pool=pool)
    if requested_by is None:
        return
    try:
        await bounded(client).raise_event(str(execution_id), CANCEL_EVENT, {"by": requested_by})
    except TimeoutError:
        logger.warning("sweeper: the cancel of execution %s was not taken in time; raised again later", execution_id)
        return
    except Exception as exc:
        if not no_one_to_tell(exc):
            logger.warning("sweeper: the cancel of execution %s could not be raised again: %s", execution_id, exc)
            return
    logger.info("sweeper: the cancel of execution %s was raised again (its request's raise had failed)", execution_id)
    await asyncio.to_thread(remote.mark_handed_over, tenant_id, execution_id, pool=pool)


def _stopped_by_cancel(row: dict[str, Any]) -> bool:
    """Whether a cancel recorded before compensating began is the run's cause (the run recorded "cancelled")."""
    return bool(row["cancelled"]) and row["error"] == "cancelled"


def stuck_compensation(
    tenant_id: UUID, execution_id: UUID, *, quiet_s: float = QUIET_S, pool: ConnectionPool[Any] | None = None
) -> Stuck | None:
    """How the execution must end when it is compensating with nothing out or due and quiet for `quiet_s` seconds,
    stream included (its orchestration, still running, waits on nothing); None otherwise."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute(_STUCK_COMPENSATION, {"id": execution_id, "quiet": quiet_s}).fetchone()
        if row is None:
            return None
        compensations = tuple(
            (str(out["step_id"]), float(out["out_s"])) for out in conn.execute(_COMPENSATIONS, (execution_id,))
        )
    # The run's own cause first: it is why the run stopped; the stall only kept it from saying so.
    cause = (
        f"{row['error'] or 'failed'}; its compensation then stalled: none was out or due and its orchestration"
        " waited on nothing"
    )[:_CAUSE_MAX_CHARS]
    # A run stopped by a cancel (answered 202, "ends cancelled") ends cancelled, as its run would have (ADR 0014).
    return Stuck(cause, "cancelled" if _stopped_by_cancel(row) else "failed", compensations)


def cancelled_compensation(
    tenant_id: UUID, execution_id: UUID, status: Any, *, pool: ConnectionPool[Any] | None = None
) -> str | None:
    """The cause to end the execution `cancelled` with when its orchestration, terminated or gone, left it compensating
    after a cancel stopped its run; None otherwise. The sweeper's own end of a stuck run terminates first, and an end
    that failed after it (a bounded lock wait) is finished here: ended `failed` as any terminated run's, it broke the
    promise of the cancel answered 202, "ends cancelled"."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute(_STOPPED_COMPENSATING, (execution_id,)).fetchone()
    if row is None or not _stopped_by_cancel(row):
        return None
    reason = getattr(status, "output", None) if status else None
    if isinstance(reason, str) and reason.startswith("cancelled; "):
        return reason[:_CAUSE_MAX_CHARS]  # the sweeper's terminate gave the cause it meant to end the run with
    return f"cancelled; {ended_cause(status)}"[:_CAUSE_MAX_CHARS]


@dataclass(frozen=True)
class RunInput:
    """What the sweeper reads of a run's orchestration input: its reducer rules and per-step plan."""

    rules: int
    plan: dict[str, Any]


def run_input(orchestration_input: Any) -> RunInput | None:
    """The rules and plan of a run from its orchestration's input, read as machine.begin reads them: a start request
    (`rules`, `plan`; no `rules` is the oldest), or after continue-as-new the state it carries (its spec's `rules`
    and `plans`); None when the input is not one of these (not shown, or unreadable)."""
    request = orchestration_input
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except ValueError:
            return None
    if not isinstance(request, dict):
        return None
    plan_key = "plan"
    if "machine" in request:
        carried = request["machine"]
        request = carried.get("spec") if isinstance(carried, dict) else None
        if not isinstance(request, dict):
            return None
        plan_key = "plans"
    rules = request.get("rules")
    plan = request.get(plan_key)
    return RunInput(
        rules=rules if isinstance(rules, int) and not isinstance(rules, bool) and rules else _OLDEST_RULES,
        plan=plan if isinstance(plan, dict) else {},
    )


def waits_on_nothing(stuck: Stuck, run: RunInput, grace_s: float) -> bool:
    """Whether a run stuck compensating by its rows truly waits on nothing: started under rules 7 or earlier (later
    rules never hang so: such a run is waiting on something), and every compensation attempt past its deadline by
    more than `grace_s` (until then its orchestration may wait on the attempt's timer, its verdict lost)."""
    if run.rules > _LAST_HANGING_RULES:
        return False
    return all(
        out_s > stalls.allowed_s(run.plan, step_id, "compensate") + grace_s for step_id, out_s in stuck.compensations
    )


@dataclass(frozen=True)
class Ended:
    """An execution this sweeper ended, and the child executions still running under it, whose cancels its
    transaction recorded (with each one's queued work it ended), to tell their orchestrations."""

    children: dict[UUID, list[store.Attempt]] = field(default_factory=dict)


_OPEN_STEPS = ("running", "waiting", "retrying")


def end_execution(
    tenant_id: UUID,
    execution_id: UUID,
    cause: str,
    *,
    pool: ConnectionPool[Any] | None = None,
    status: Literal["failed", "cancelled"] = "failed",
) -> Ended | None:
    """End the execution `status` (failed) with `cause` unless it has ended meanwhile, and with it the steps its
    orchestration left open (abandoned, cancelled) and every attempt still out, compensations too (abandoned);
    None when it had ended already."""
    try:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            # Its open attempts, then the execution (ADR 0014's one order, a recorder's): the abandons below then wait
            # for no attempt while the execution is held. A dispatch that comes after this end reads it ended.
            if store.hold_open_attempts(conn, execution_id)[0].terminal:
                return None  # its orchestration recorded the end after all, or another sweeper was first
            # No orchestration will end these: left as they were, they would read as still running. They end
            # before the execution does, so its end stays the last event of the stream, as in any run.
            steps = store.list_steps(conn, execution_id)
            open_steps = [step for step in steps if step["state"] in _OPEN_STEPS]
            for step in open_steps:
                abandon_step(conn, AttemptKey(execution_id, step["step_id"], "run", max(step["attempt"], 1)), cause)
            # Any attempt still out, of either phase (a compensating step's rollback too): left dispatched, its
            # queued item would be leased and its result recorded after the end.
            attempts = store.list_attempts(conn, execution_id)
            for attempt in attempts:
                if attempt.state == "dispatched":
                    abandon_step(conn, attempt.key, cause)
            # A compensation between attempts (its retry due) has none out, and would read compensating for ever. One
            # whose last attempt was out was ended above (its step no longer compensating).
            last_compensation = {a.key.step_id: a for a in attempts if a.key.phase == "compensate"}
            for step in steps:
                last = last_compensation.get(step["step_id"])
                if step["state"] == "compensating" and last is not None and last.state != "dispatched":
                    end_compensation(conn, last.key, cause)
            repo.transition(conn, execution_id, status, error=cause)
            # The children's cancels in the same transaction: recorded after the end's commit, one that failed (a
            # child's row held past a timer's lock wait) was never retried, the parent being ended by then.
            children = {
                UUID(str(step["child_execution_id"])): control.record_child_cancel(
                    conn, UUID(str(step["child_execution_id"])), execution_id
                )
                for step in open_steps
                if step["child_execution_id"]
            }
    except repo.IllegalTransitionError:
        return None  # a status with no such move (its steps' moves roll back with it)
    return Ended({child: dequeued for child, dequeued in children.items() if dequeued is not None})


async def _end(
    tenant_id: UUID,
    execution_id: UUID,
    cause: str,
    client: DurableClient,
    pool: ConnectionPool[Any] | None,
    status: Literal["failed", "cancelled"] = "failed",
) -> bool:
    """End the execution, then pass the end down to its running children as a cancel (as a stopping run does)."""
    ended = await asyncio.to_thread(end_execution, tenant_id, execution_id, cause, pool=pool, status=status)
    if ended is None:
        return False
    await _tell_children(client, tenant_id, execution_id, ended.children, pool)
    return True


def _children_bound_s() -> float:
    """How long the cancels of one ended execution's children take at most, all of them together: one raise's bound
    and one hand-over of the verdicts of the work each ended (all told at once, up to CHILDREN_AT_ONCE at a time)."""
    return STATUS_CALL_BOUND_S + control.CHILD_VERDICTS_BOUND_S


async def _tell_children(
    client: DurableClient,
    tenant_id: UUID,
    parent_id: UUID,
    children: dict[UUID, list[store.Attempt]],
    pool: ConnectionPool[Any] | None,
) -> None:
    """Tell the recorded cancels of an ended execution's children to their orchestrations, all at once and within
    `_children_bound_s` in all: one after another, each cut off by its own bound, a parent of a few hundred children
    held the run (and every tenant's sweep behind it) that many bounds on a hung task hub. A cancel not told in time
    stays recorded, not handed over: the child's run reads it as it starts, and `_raise_cancel_again` raises it once
    the child is quiet; a verdict not handed over stays `raising`, for `raise_verdicts_again`."""
    if not children:
        return
    gate = asyncio.Semaphore(CHILDREN_AT_ONCE)
    bounded_client = bounded(client)

    async def tell(child: UUID, dequeued: list[store.Attempt]) -> None:
        async with gate:
            await control.tell_child(bounded_client, tenant_id, child, parent_id, dequeued, pool=pool)

    within_s = _children_bound_s()
    tasks = [asyncio.ensure_future(tell(child, dequeued)) for child, dequeued in children.items()]
    _, late = await asyncio.wait(tasks, timeout=within_s)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=remote.CANCEL_GRACE_S)
        logger.warning(
            "sweeper: %d child cancels of execution %s not told within %s s; raised again once each child is quiet",
            len(late),
            parent_id,
            within_s,
        )
    for child, task in zip(children, tasks, strict=True):
        failure = None if task.cancelled() or not task.done() else task.exception()
        if failure is not None:  # the parent is ended all the same; the child's cancel is raised again as above
            logger.warning("sweeper: the cancel of child execution %s failed: %s", child, failure)


async def _status(client: DurableClient, instance_id: str, *, show_input: bool = False) -> Any:
    """The instance's status, or a status unknown (`_NoAnswer`) when the call takes longer than STATUS_CALL_BOUND_S."""
    try:
        return await bounded(client).get_status(instance_id, show_input=show_input)
    except TimeoutError:
        logger.warning(
            "sweeper: the status of %s took over %s s; left for a later run", instance_id, STATUS_CALL_BOUND_S
        )
        return _NoAnswer()


@dataclass(frozen=True)
class _BoundedStatus:
    """A client's status call bounded as `_status` bounds it: what the start path's own check (`existing_instance`)
    is handed."""

    client: DurableClient

    async def get_status(self, instance_id: str) -> Any:
        """The instance's status, or a status unknown when it took too long."""
        return await _status(self.client, instance_id)


def _past(deadline: float | None) -> bool:
    """Whether the run's `deadline` (on time.monotonic) has passed."""
    return deadline is not None and time.monotonic() >= deadline


def _settle_s(deadline: float | None) -> float:
    """How long an erased start's purge waits for its orchestration to end after its terminate on the sweeper's path:
    one call's bound, or what is left of the run's `deadline` if less. The erasure's own wait (30 s) held the run, and
    every tenant's sweep behind it; what the purge leaves undone is recorded and purged by a later run."""
    settle_s = STATUS_CALL_BOUND_S
    if deadline is not None:
        settle_s = min(settle_s, deadline - time.monotonic())
    return max(0.0, settle_s)


async def _settle_stalled_start(
    tenant_id: UUID,
    execution_id: UUID,
    client: DurableClient,
    pool: ConnectionPool[Any] | None,
    check_wait_s: float,
    deadline: float | None = None,
) -> TenantSweep:
    """Start a claimed stalled start (or end it, its orchestration started and ended already); `deadline` is the
    run's, which an erased start's purge does not wait past (`_settle_s`)."""
    instance_id = str(execution_id)
    try:
        # The start path's own check (start_service.launch), its call bounded.
        status = await existing_instance(_BoundedStatus(client), instance_id)
    except StatusUnknownError:
        return TenantSweep(checked=1)  # the store could not say: started again or not, it is the next run's to tell
    if status is not None:
        # The starter got as far as starting it: running, it records its own start; ended, it never will.
        cause = ended_cause(status)
        if cause is None:
            return TenantSweep(checked=1)
        return TenantSweep(ended=int(await _end(tenant_id, execution_id, cause, client, pool)), checked=1)
    try:
        orchestration_input = await asyncio.to_thread(
            start_input, tenant_id, execution_id, pool=pool, wait_s=check_wait_s
        )
    except CheckBusyError:
        # Nothing written: left pending and claimed, as a start that could not be launched is; a later run (or a
        # repeated request) takes it over once the claim is stale.
        logger.info("sweeper: execution %s is started by a later run (its tenant's checks are busy)", execution_id)
        return TenantSweep(checked=1, busy=1)
    if not isinstance(orchestration_input, dict):
        if orchestration_input is not None:
            logger.warning("sweeper: execution %s ended failed: %s", execution_id, orchestration_input)
        return TenantSweep(ended=int(orchestration_input is not None), checked=1)
    try:
        await bounded(client).start_new(ORCHESTRATOR, instance_id, orchestration_input)
    except TimeoutError:
        # Cut off, it may have started all the same: left pending and claimed, as a failed start is; whoever takes it
        # over once its claim is stale asks for its instance first, and one there records its own start. Looked at
        # for an erased tenant as a start is (its input would outlive the tenant), gone or not. That look comes
        # straight after the cut-off, and the task hub may apply the start until its client's timeout: recorded
        # first, a later run purges what landed after it once its tenant is gone (ADR 0046, amended 2026-12-07).
        logger.warning("sweeper: the start of execution %s was not answered in time; left for a later run", instance_id)
        await asyncio.to_thread(
            erased_orchestrations.note_erased_orchestration,
            tenant_id,
            instance_id,
            after_s=erased_orchestrations.LATE_START_S,
        )
        await unless_erased(bounded(client), tenant_id, instance_id, settle_s=_settle_s(deadline))
        return TenantSweep(checked=1)
    except Exception:
        # Left pending: the claim goes stale again and a later run (or a repeated request) starts it. The task hub
        # may have created the instance all the same (a connection reset after it, a 500 from the host): recorded as
        # a start cut off is, a later run purges it should its tenant be erased (ADR 0046, amended 2026-12-07).
        logger.exception("sweeper: could not start the orchestration of execution %s", instance_id)
        await asyncio.to_thread(
            erased_orchestrations.note_erased_orchestration,
            tenant_id,
            instance_id,
            after_s=erased_orchestrations.LATE_START_S,
        )
        return TenantSweep(checked=1)
    # Its input was read before the start: a tenant erased since would be outlived by the orchestration (its history
    # holds the tenant's input), as a launch's would (start_service.launch).
    await unless_erased(bounded(client), tenant_id, instance_id, settle_s=_settle_s(deadline))
    logger.info("sweeper: started the stalled execution %s", instance_id)
    return TenantSweep(started=1, checked=1)


async def _end_stuck(
    tenant_id: UUID, execution_id: UUID, stuck: Stuck, client: DurableClient, pool: ConnectionPool[Any] | None
) -> bool:
    """Terminate the orchestration of an execution stuck compensating, then end the execution. In that order: a
    terminate that fails leaves both as they were for the next run; an end that fails after it is the next run's
    terminated orchestration, ended by `ended_cause` (`cancelled_compensation` when a cancel stopped its run, which
    keeps it ending cancelled). Either way neither is left running alone; so too when the terminate is cut off by its
    bound, whether it took effect after all or not (then terminated again at the next check)."""
    try:
        await bounded(client).terminate(str(execution_id), stuck.cause)
    except TimeoutError:
        logger.warning(
            "sweeper: the terminate of the stuck orchestration of execution %s was not answered in time; left for"
            " a later run",
            execution_id,
        )
        return False
    except Exception:
        logger.exception("sweeper: could not terminate the stuck orchestration of execution %s", execution_id)
        return False
    return await _end(tenant_id, execution_id, stuck.cause, client, pool, stuck.status)


async def _stuck_run(execution_id: UUID, stuck: Stuck, client: DurableClient, grace_s: float) -> bool:
    """Whether the orchestration of an execution stuck compensating by its rows waits on nothing (`waits_on_nothing`),
    judged by its input. Asked for again, with its input, only for these few: not every quiet execution's input (its
    whole definition) at every check. One whose input cannot be read is left running."""
    status = await _status(client, str(execution_id), show_input=True)
    if status_unknown(status) or _runtime(status) != "Running":
        return False  # the next run judges it again
    run = run_input(getattr(status, "input_", None))
    if run is None:
        logger.warning("sweeper: the input of execution %s could not be read; it is not judged stuck", execution_id)
        return False
    return waits_on_nothing(stuck, run, grace_s)


async def _settle_quiet(
    tenant_id: UUID,
    execution_id: UUID,
    client: DurableClient,
    pool: ConnectionPool[Any] | None,
    stall_grace_s: float,
    quiet_s: float = QUIET_S,
    calls: int = 2,
    *,
    check_wait_s: float = CHECK_WAIT_S,
) -> tuple[TenantSweep, bool]:
    """Settle a quiet execution in at most `calls` status calls (at least one); answers what it did, and whether it
    was judged: one whose run's input no call was left to ask for (stuck compensating by its rows) is not, nor one
    whose stall plan's check found its tenant's turn at the check gate taken for `check_wait_s`."""
    status = await _status(client, str(execution_id))
    if status_unknown(status):
        # Read as "no such instance", a brief outage of the task hub's store ended running executions for good.
        logger.warning("sweeper: the status of execution %s could not be read; left for its next turn", execution_id)
        return TenantSweep(checked=1), True
    cause = ended_cause(status)
    runtime = _runtime(status)
    inputs = 0
    if cause is None and runtime == "Running":
        await _raise_cancel_again(tenant_id, execution_id, client, pool)
        # Running but waiting on nothing: nothing will ever end it, as if its orchestration had ended (not one that is
        # suspended, which an operator holds; nor one pending or continuing as new, which is about to run).
        stuck = await asyncio.to_thread(stuck_compensation, tenant_id, execution_id, quiet_s=quiet_s, pool=pool)
        if stuck is not None and calls < 2:
            # Its input is a second status call, past the run's bound: judged by a later run (it keeps its turn).
            logger.info(
                "sweeper: execution %s is judged by a later run (no status call left for its input)", execution_id
            )
            return TenantSweep(checked=1), False
        if stuck is not None:
            inputs = 1
            if await _stuck_run(execution_id, stuck, client, stall_grace_s):
                ended = await _end_stuck(tenant_id, execution_id, stuck, client, pool)
                if ended:
                    logger.warning("sweeper: execution %s ended %s: %s", execution_id, stuck.status, stuck.cause)
                return TenantSweep(ended=int(ended), checked=1, inputs=inputs), True
    if cause is not None and runtime in (None, "Terminated"):
        cancelled = await asyncio.to_thread(cancelled_compensation, tenant_id, execution_id, status, pool=pool)
        if cancelled is not None:
            ended = await _end(tenant_id, execution_id, cancelled, client, pool, "cancelled")
            if ended:
                logger.warning("sweeper: execution %s ended cancelled: %s", execution_id, cancelled)
            return TenantSweep(ended=int(ended), checked=1), True
    if cause is None:
        # Still running: record it as stalled when an attempt of it is past what its step allows.
        try:
            await asyncio.to_thread(
                stalls.record_stalls, tenant_id, execution_id, grace_s=stall_grace_s, pool=pool, wait_s=check_wait_s
            )
        except CheckBusyError:
            logger.info(
                "sweeper: the stalls of execution %s are judged by a later run (its tenant's checks are busy)",
                execution_id,
            )
            return TenantSweep(checked=1, inputs=inputs, busy=1), False
        return TenantSweep(checked=1, inputs=inputs), True
    ended = await _end(tenant_id, execution_id, cause, client, pool)
    if ended:
        logger.warning("sweeper: execution %s ended failed: %s", execution_id, cause)
    return TenantSweep(ended=int(ended), checked=1), True


async def sweep_tenant(
    tenant_id: UUID,
    client: DurableClient,
    *,
    budget: int = MAX_CHECKS_PER_TENANT,
    start_grace_s: float = START_GRACE_S,
    quiet_s: float = QUIET_S,
    stall_grace_s: float = stalls.STALL_GRACE_S,
    pool: ConnectionPool[Any] | None = None,
    deadline: float | None = None,
) -> TenantSweep:
    """Start the tenant's stalled starts, then end its quiet executions whose orchestration ended or waits on nothing
    (stuck compensating) and record the stalls of those still running; at most `budget` status calls (stalled starts
    first: they are certainly stuck), a stuck run's second one for its input included, and none begun once the run's
    `deadline` (on time.monotonic) has passed. A costly check waits for the tenant's turn at the check gate
    CHECK_WAIT_S at most, and only until one such wait has run out in this call."""
    check_wait_s = CHECK_WAIT_S
    claimed = await asyncio.to_thread(
        claim_stalled_starts,
        tenant_id,
        limit=min(budget, MAX_STARTS_PER_TENANT),
        start_grace_s=start_grace_s,
        pool=pool,
    )
    results: list[TenantSweep] = []
    for execution_id in claimed:
        if _past(deadline):
            # Left pending and claimed, as a start that could not be launched is: taken over once the claim is stale.
            logger.info("sweeper: the stalled starts of tenant %s are left for a later run (its time is up)", tenant_id)
            break
        results.append(await _settle_stalled_start(tenant_id, execution_id, client, pool, check_wait_s, deadline))
        if results[-1].busy:
            check_wait_s = 0.0  # a free slot is still taken; a busy tenant's share of the run waits once
    left = budget - sum(result.calls for result in results)
    if left > 0:
        quiet = await asyncio.to_thread(
            quiet_executions, tenant_id, limit=min(left, MAX_CHECKS_PER_TENANT), quiet_s=quiet_s, pool=pool
        )
        asked: list[UUID] = []
        try:
            for execution_id in quiet:
                if left <= 0 or _past(deadline):
                    break  # stuck runs' inputs took the calls left, or the run's time is up: the rest keep their place
                asked.append(execution_id)
                result, judged = await _settle_quiet(
                    tenant_id, execution_id, client, pool, stall_grace_s, quiet_s, calls=left, check_wait_s=check_wait_s
                )
                results.append(result)
                left -= result.calls
                if result.busy:
                    check_wait_s = 0.0
                if not judged:
                    # Not recorded as swept, it keeps its place at the front: the next run asks for its input.
                    asked.pop()
        finally:
            # Also when one of them failed the tenant's run: recorded, it no longer comes first and holds up the rest.
            if asked:
                await asyncio.to_thread(record_swept, tenant_id, asked, pool=pool)
    return TenantSweep(
        started=sum(r.started for r in results),
        ended=sum(r.ended for r in results),
        checked=sum(r.checked for r in results),
        inputs=sum(r.inputs for r in results),
        busy=sum(r.busy for r in results),
    )


async def sweep(
    client: DurableClient, *, pool: ConnectionPool[Any] | None = None, control_pool: ConnectionPool[Any] | None = None
) -> SweepResult:
    """One sweeper run over every tenant with a candidate, within MAX_STATUS_CHECKS status calls and RUN_BUDGET_S
    (each status call within STATUS_CALL_BOUND_S); `pool` serves the tenant transactions, `control_pool` the control
    plane's (the process-wide pools when None).

    A tenant whose sweep fails is logged and left for the next run; the other tenants still go. So is one whose
    rows another transaction holds locked for longer than a bounded wait (bounded_lock_waits): the tenants are swept
    one after another, and an unbounded wait on one tenant's row would hold up every other's. For the same reason a
    costly check waits for its tenant's turn at the check gate CHECK_WAIT_S at most (its execution is then left for a
    later run), and the expired work leases are ended first, and the verdicts of ended remote attempts not handed
    over are raised again, whatever the tenants' sweeps then take.
    """
    with bounded_lock_waits():  # copied into the to_thread calls below with the rest of this context
        return await _sweep(client, pool=pool, control_pool=control_pool)


async def _sweep(
    client: DurableClient, *, pool: ConnectionPool[Any] | None, control_pool: ConnectionPool[Any] | None
) -> SweepResult:
    """The run `sweep` describes, its tenant transactions' lock waits bounded."""
    deadline = time.monotonic() + RUN_BUDGET_S
    # First: a worker's expired lease ends now, not after every tenant's sweep (each may wait at the check gate).
    # Their raises keep their own budget (RAISE_RUN_BUDGET_S); each is bounded as any call of the run is, too.
    expired = await expire_work_leases(bounded(client), pool=pool, control_pool=control_pool)
    raised_again = await raise_verdicts_again(bounded(client), pool=pool, control_pool=control_pool)
    purged = await purge_erased_orchestrations(client, control_pool=control_pool)
    tenants = await asyncio.to_thread(stuck_tenants, control_pool=control_pool)
    started = ended = checked = inputs = busy = 0
    failed: set[UUID] = set()
    for tenant_id in tenants:
        budget = min(MAX_CHECKS_PER_TENANT, MAX_STATUS_CHECKS - checked - inputs)
        if budget <= 0:
            break
        if _past(deadline):
            logger.info("sweeper: the run's time is up; the tenants not reached are found again by a later run")
            break
        try:
            result = await sweep_tenant(tenant_id, client, budget=budget, pool=pool, deadline=deadline)
        except Exception:  # one tenant's trouble (or a backend outage) must not keep the others stuck
            logger.exception("sweeper: the executions of tenant %s could not be swept", tenant_id)
            failed.add(tenant_id)
            continue
        started, ended, checked = started + result.started, ended + result.ended, checked + result.checked
        inputs, busy = inputs + result.inputs, busy + result.busy
    return SweepResult(
        tenants=len(tenants),
        started=started,
        ended=ended,
        checked=checked,
        failed_tenants=len(failed),
        expired_leases=expired,
        raised_again=raised_again,
        inputs=inputs,
        busy=busy,
        purged=purged,
    )


async def purge_erased_orchestrations(client: DurableClient, *, control_pool: ConnectionPool[Any] | None = None) -> int:
    """Terminate and purge the orchestrations recorded as outliving their erased tenant once due (a start cut off,
    which may land after its one look at the tenant; an erased start's purge left undone), within ERASED_PURGE_BOUND_S
    in all, each call bounded and each waited for STATUS_CALL_BOUND_S to end after its terminate; answers how many were
    purged. A failure is logged and the records kept for the next run: the run's other work goes on."""
    try:
        return await erased_orchestrations.purge_erased_orchestrations(
            bounded(client), settle_s=STATUS_CALL_BOUND_S, within_s=ERASED_PURGE_BOUND_S, control_pool=control_pool
        )
    except Exception:
        logger.exception("sweeper: the orchestrations of erased tenants could not be purged; purged by a later run")
        return 0


def _expire_tenant_leases(tenant_id: UUID, pool: ConnectionPool[Any] | None) -> list[work_queue.Expired]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return work_queue.expire_leases(conn)


async def expire_work_leases(
    client: EventRaiser,
    *,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> int:
    """End the attempts whose worker stopped heartbeating (ADR 0027), tenant by tenant, and hand each verdict to
    its orchestration, whose retry policy queues the next attempt or fails the step. A tenant's own lease call does
    the same for its queue; this covers tenants whose workers stopped polling altogether."""
    with platform_transaction(pool=control_pool) as conn:
        rows = conn.execute(_EXPIRED_LEASE_TENANTS, (MAX_TENANTS,)).fetchall()
    expired = 0
    budget = _RaiseBudget()
    for row in rows:
        tenant_id = UUID(str(row["tenant_id"]))
        try:
            with bounded_lock_waits():  # a lease row locked by a long transaction fails its tenant, not the run
                attempts = await asyncio.to_thread(_expire_tenant_leases, tenant_id, pool)
        except Exception:  # one tenant's trouble must not keep the others' leases from ending
            logger.exception("sweeper: the expired leases of tenant %s could not be ended", tenant_id)
            continue
        # Each verdict on its own, one failed raise skipping no other; one not handed over stays marked `raising` and
        # is raised again by `raise_verdicts_again` (an orchestration that is gone, 404 or 410, never reads it).
        # The verdicts are those read as the attempts ended: a cancel committed first is told (rules 7, ADR 0014).
        if budget.left_s() > 0:
            await remote.hand_over_verdicts(client, tenant_id, attempts, within_s=budget.bound_s(), pool=pool)
        expired += len(attempts)
    return expired


class _RaiseBudget:
    """What is left of a step's RAISE_RUN_BUDGET_S."""

    def __init__(self) -> None:
        self._ends = time.monotonic() + RAISE_RUN_BUDGET_S

    def left_s(self) -> float:
        return max(0.0, self._ends - time.monotonic())

    def bound_s(self) -> float:
        """One tenant's bound: RAISE_BOUND_S, or what is left of the budget if less."""
        return min(RAISE_BOUND_S, self.left_s())


def _raising_verdicts(tenant_id: UUID, pool: ConnectionPool[Any] | None) -> list[work_queue.Expired]:
    """The tenant's verdicts to raise again, in one transaction of the tenant's."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return work_queue.raising_verdicts(conn, grace_s=VERDICT_GRACE_S)


async def raise_verdicts_again(
    client: EventRaiser,
    *,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> int:
    """Raise again, tenant by tenant, the verdicts that a lease expiry, a heartbeat's cancel or a stale item ended
    more than VERDICT_GRACE_S ago and that no raise has handed over yet (ADR 0027, amended 2026-12-07): their first
    raise failed, was cut off by its bound, or its host died after the commit, and nobody else would raise them.
    Answers how many were handed over now."""
    try:
        with platform_transaction(pool=control_pool) as conn:
            rows = conn.execute(_RAISING_VERDICT_TENANTS, (VERDICT_GRACE_S, MAX_TENANTS)).fetchall()
    except Exception:  # the run's other work goes on; the next run looks again
        logger.exception("sweeper: the tenants with verdicts to raise again could not be found")
        return 0
    handed = 0
    budget = _RaiseBudget()
    random.shuffle(rows)
    for row in rows:
        if budget.left_s() <= 0:
            break  # the tenants not reached are raised again a run later
        tenant_id = UUID(str(row["tenant_id"]))
        try:
            with bounded_lock_waits():
                attempts = await asyncio.to_thread(_raising_verdicts, tenant_id, pool)
        except Exception:  # one tenant's trouble must not keep the others' verdicts from their runs
            logger.exception("sweeper: the verdicts of tenant %s to raise again could not be read", tenant_id)
            continue
        handed += await remote.hand_over_verdicts(client, tenant_id, attempts, within_s=budget.bound_s(), pool=pool)
    return handed
