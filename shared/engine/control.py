# intent_ref: platform.execution
"""What people do to a running execution: cancel it, decide an approval, retry it from the failed step."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db import tenant_locks
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import remote, work_queue
from shared.engine import steps as store
from shared.engine.dispatch_results import raised_verdict
from shared.engine.durable_client import BoundedRaiser
from shared.engine.protocol import CANCEL_EVENT, EventRaiser, no_one_to_tell
from shared.engine.start import NoLongerValidError, RunShape, StartRequest, authorized_item, run_shape
from shared.engine.steps import AttemptKey
from shared.registry import service as registry
from shared.registry.plan import dependencies, execution_levels
from shared.registry.references import scan_references

logger = logging.getLogger(__name__)
Conn = psycopg.Connection[DictRow]
Decision = Literal["approve", "reject"]
# Conditional on the execution not having ended, re-checked under the row lock: one that ended after it was read
# would otherwise get a cancel request, and its stream an event after its end.
_CANCEL = (
    "UPDATE app.executions SET cancel_requested_at = clock_timestamp(), cancel_requested_by = %s"
    " WHERE id = %s AND cancel_requested_at IS NULL AND status <> ALL(%s)"
)
_LATEST_REQUEST = (
    "SELECT data FROM app.execution_events WHERE execution_id = %s AND step_id = %s"
    " AND type = 'approval_requested' ORDER BY seq DESC LIMIT 1"
)


class ControlError(Exception):
    """A refused control action; each subclass is one API answer."""


class AlreadyFinishedError(ControlError):
    """The execution has ended; nothing can change it any more."""


class AlreadyFailingError(ControlError):
    """A step of the execution failed for good (the run compensates for it, or will once its work out has ended) and
    it ends failed: a cancel would change nothing (ADR 0014)."""


class NotWaitingError(ControlError):
    """The step is not an approval waiting for a decision (or was decided differently already)."""


class NotAnApproverError(ControlError):
    """The approval names its approvers and the caller is not one of them."""


class NotRetryableError(ControlError):
    """Only a failed or cancelled execution can be retried; a newer version must keep the reused steps."""


class AlreadyRetriedError(ControlError):
    """The execution was retried already: a second retry would run its steps' effects again, or reuse outputs the
    first retry's compensation undid (ADR 0014)."""

    def __init__(self, execution_id: UUID, retry_id: UUID) -> None:
        super().__init__(f"execution {execution_id} was already retried by execution {retry_id}")
        self.retry_id = retry_id


def request_cancel(conn: Conn, execution_id: UUID, requested_by: str) -> repo.Execution:
    """Record a cancel request (once) with its event; a pending execution that no orchestration runs yet is
    cancelled at once. The caller then tells the orchestration, and ends the queued work (work_queue.cancel_queued).
    AlreadyFailingError, nothing written, for one a failure ends: it ends failed whatever is asked.

    The execution's open attempts are held first, then the execution (ADR 0014), so that the queued work's end in the
    same transaction waits for no attempt while the execution is held: a recorder holding one (a timeout) waits for
    the execution, and that was a deadlock. Call it before the transaction holds the execution."""
    return held_cancel(conn, execution_id, requested_by)[1]


def held_cancel(conn: Conn, execution_id: UUID, requested_by: str) -> tuple[repo.Execution, repo.Execution]:
    """`request_cancel`, answering the execution as held before the cancel besides the execution after it: a caller
    deciding whether it recorded the cancel, or is to raise it (`cancel_to_raise`), decides on the row a concurrent
    cancel committed while this one waited for it, not on a read made before that wait (both were audited as recorded
    and both raised)."""
    execution, _ = store.hold_open_attempts(conn, execution_id)
    return execution, cancel_held(conn, execution, requested_by)


def cancel_held(conn: Conn, execution: repo.Execution, requested_by: str) -> repo.Execution:
    """`request_cancel` of an execution this transaction holds already, its open attempts first and then its row
    (`steps.hold_open_attempts`, which answers `execution`)."""
    if execution.terminal:
        raise AlreadyFinishedError(f"execution {execution.id} is already {execution.status}")
    if _ending_for_a_failure(conn, execution):
        raise AlreadyFailingError(
            f"execution {execution.id} is stopping for a failed step and will end failed; a cancel would change nothing"
        )
    if conn.execute(_CANCEL, (requested_by, execution.id, sorted(repo.TERMINAL))).rowcount == 1:
        repo.append_event(conn, execution.id, "cancel_requested", data={"by": requested_by})
    current = repo.get_execution(conn, execution.id)
    if current.terminal and current.cancel_requested_at is None:
        raise AlreadyFinishedError(f"execution {execution.id} is already {current.status}")
    return current


def _ending_for_a_failure(conn: Conn, execution: repo.Execution) -> bool:
    """Whether a failure ends the run, not a cancel: a failure stays the cause, so a cancel recorded now would be
    answered 202 and the run still end failed. Compensating: a cancel's compensation is recorded with the cancel's
    request and the reducer's cause, "cancelled" (machine.cause); a failure's has neither, or (a cancel recorded while a
    failure was already stopping the run) the failure's error. Before that (work still out): a step's final failure is
    recorded and no cancel is. Refused, nothing of the cancel is recorded or raised, so the orchestration applies that
    failure as it would have anyway. A second cancel is answered as the first was."""
    if execution.status == "compensating":
        return execution.cancel_requested_at is None or execution.error != "cancelled"
    return execution.cancel_requested_at is None and store.failed_for_good(conn, execution.id)


def parent_principal(parent_id: UUID | str) -> str:
    """Who a cancel passed down from a parent execution is recorded as requested by."""
    return f"execution:{parent_id}"


def record_child_cancel(conn: Conn, child_id: UUID, parent_id: UUID) -> list[store.Attempt] | None:
    """Record, in the caller's transaction, a stopping parent's cancel of its child: the request and the child's
    queued remote work ended (ADR 0027); None when the child had ended already. `tell_child` raises it afterwards."""
    try:
        request_cancel(conn, child_id, parent_principal(parent_id))
    except (AlreadyFinishedError, AlreadyFailingError):
        return None  # ended, or ending failed on its own: nothing to pass down
    return work_queue.cancel_queued(conn, child_id)


CHILD_VERDICTS_BOUND_S = 2.0
"""How long a child cancel's hand-over of the verdicts of the work it ended may take in all (as a lease route's):
what is not handed over by then stays `raising`, for the sweeper to raise again."""


async def tell_child(
    client: EventRaiser,
    tenant_id: UUID,
    child_id: UUID,
    parent_id: UUID,
    dequeued: list[store.Attempt],
    *,
    pool: ConnectionPool[Any] | None = None,
) -> None:
    """Raise a recorded child cancel to the child's orchestration, then hand over the verdicts of the work it ended
    (marked `raising` as they ended: one not handed over now, or left unraised because the cancel's own raise failed,
    is raised again by the sweeper, ADR 0027)."""
    try:
        await client.raise_event(str(child_id), CANCEL_EVENT, {"by": parent_principal(parent_id)})
    except Exception as exc:
        # Not there (yet) or already ended: the recorded request is what a starting orchestration reads.
        logger.warning("could not raise cancel to child execution %s: %s", child_id, exc)
        return
    await remote.hand_over_verdicts(client, tenant_id, dequeued, within_s=CHILD_VERDICTS_BOUND_S, pool=pool)


def _record_child_cancel(
    tenant_id: UUID, child_id: UUID, parent_id: UUID, pool: ConnectionPool[Any] | None
) -> list[store.Attempt] | None:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return record_child_cancel(conn, child_id, parent_id)


async def cancel_child(
    tenant_id: UUID, child_id: UUID, parent_id: UUID, client: EventRaiser, *, pool: ConnectionPool[Any] | None = None
) -> bool:
    """Pass a stopping parent's cancel down to its child execution: recorded first (a child that starts later
    reads it), then told to the child's orchestration. False when the child had ended already."""
    dequeued = await asyncio.to_thread(_record_child_cancel, tenant_id, child_id, parent_id, pool)
    if dequeued is None:
        return False
    await tell_child(client, tenant_id, child_id, parent_id, dequeued, pool=pool)
    return True


@dataclass(frozen=True)
class ApprovalOutcome:
    """A decision as recorded, to raise to the orchestration (again, when the same decision is repeated)."""

    key: AttemptKey
    verdict: dict[str, Any]
    applied: bool


def decide_approval(
    conn: Conn, execution_id: UUID, step_id: str, decision: Decision, *, principal_id: str, object_id: str, comment: str
) -> ApprovalOutcome:
    """Apply a decision to the approval step's open attempt; the same decision again is answered, not re-applied.

    Decided under the attempt's row lock, taken before the execution's as every recorder of an attempt's result takes
    them (the module worker, a remote completion, a timeout): concurrent decisions are decided one after the other,
    so only the one that applies writes its event, and each later one is answered as it would be had it come after
    (the same decision again, or a 409)."""
    step = next((row for row in store.list_steps(conn, execution_id) if row["step_id"] == step_id), None)
    if step is None or step["action"] != "approval" or step["attempt"] < 1:
        raise NotWaitingError(f"step {step_id} is not an approval waiting for a decision")
    key = AttemptKey(execution_id, step_id, "run", step["attempt"])
    attempt = store.hold_attempt(conn, key)
    if attempt is None:
        raise NotWaitingError(f"step {step_id} is not an approval waiting for a decision")
    execution = repo.get_execution(conn, execution_id)
    # Before the answers of a decided approval: a caller the approval does not name is refused whatever its state,
    # never told whether, or how, it was decided.
    requested = conn.execute(_LATEST_REQUEST, (execution_id, step_id)).fetchone()
    approvers = requested["data"].get("approvers") if requested else None
    if not _names_callers(approvers, object_id, principal_id):
        raise NotAnApproverError(f"step {step_id} names its approvers, and the caller is not one of them")
    if attempt.finished:
        decided = (attempt.output or {}).get("decision") if attempt.state == "succeeded" else "reject"
        if decided == decision and attempt.state in ("succeeded", "failed") and not execution.terminal:
            # Raised again as first raised: a rejection recorded after a cancel says so (a cancel recorded since
            # is one this rejection did not stop the run for, and is refused otherwise: the same either way).
            return ApprovalOutcome(key, raised_verdict(conn, attempt), False)
        raise NotWaitingError(f"step {step_id} was already decided ({attempt.state})")
    if decision == "approve" and execution.cancel_requested_at is not None:
        # The run ends cancelled whatever is approved now (the cancel's 202 said so): recorded, the approval read as
        # granted and its step completed in a run that then compensates. A rejection is still recorded: it is one
        # during the cancel, and the run ends cancelled either way (rules 7).
        raise NotWaitingError(f"step {step_id} is no longer waiting: the execution is being cancelled")
    detail = {"decision": decision, "by": principal_id, "comment": comment}
    # Written before the result (the stream reads the decision, then the step's end): the held attempt is still
    # waiting, so the result below applies.
    repo.append_event(
        conn, execution_id, "approval_granted" if decision == "approve" else "approval_rejected", step_id, detail
    )
    recorded, applied = store.finish_attempt(
        conn,
        key,
        ok=decision == "approve",
        output=detail,
        error=f"rejected by {principal_id}" + (f": {comment}" if comment else ""),
        retryable=False,
    )
    assert applied  # held above while waiting: no other result can have been recorded since
    # Read in the transaction that records the rejection, after its hold of the attempt (a cancel holds the attempts
    # first, ADR 0014's order): a cancel that committed first makes the verdict say so, and the run ends cancelled as
    # the cancel's 202 said, whichever event reaches it first (rules 7).
    return ApprovalOutcome(key, raised_verdict(conn, recorded), applied)


def _names_callers(approvers: Any, object_id: str, principal_id: str) -> bool:
    """Whether the approval's approvers admit the caller: none named (an empty list, which is what an approval without
    `approvers` records) admits any Approver.

    A list of ids is required: `approvers` given by a reference can resolve to anything, and a string made `in` a
    substring test (an empty one admitted everyone), a number a TypeError. Anything else admits no one (fail closed),
    null included: a reference that resolved to null named no one, and read as none named it admitted every Approver.
    """
    if approvers == []:
        return True
    if not isinstance(approvers, list) or not all(isinstance(name, str) for name in approvers):
        return False
    return object_id in approvers or principal_id in approvers


def retry_request(
    conn: Conn,
    execution: repo.Execution,
    *,
    version: int | None,
    requester: Requester,
    idempotency_key: str | None,
    authorize: Callable[[registry.Item], None],
) -> StartRequest:
    """A new execution of the same intent and input that reuses the outputs of the steps that succeeded (and were
    not compensated), approvals excepted: a decision belongs to the run it was asked for. On a newer version, every
    reused step must be unchanged there.

    `authorize`: the start's decision on `intent.execute` (`authorized_item`: the current version, then the one the
    retry runs), asked before anything else: the comparison below reads the version the retry runs, and its refusal
    (not-retryable, naming the steps that version changes) told a caller refused that version what it holds. A
    version the intent does not have is IntentNotFoundError (404), answered once the current version is allowed:
    versions are numbered from 1 up to the current one, so it tells that caller nothing it could not count."""
    run = version or execution.intent_version
    authorized_item(conn, StartRequest(execution.intent_id, version=run, requester=requester), authorize)
    if execution.status not in ("failed", "cancelled"):
        raise NotRetryableError(
            f"execution {execution.id} is {execution.status}; only a failed or cancelled execution is retried"
        )
    # An approval reused would let whoever retries (an Approver may be that) carry another's decision into their own
    # request, or carry it to a version whose later steps changed: a retry asks again.
    rows = store.list_steps(conn, execution.id)
    reused = {
        row["step_id"]: row["output"] for row in rows if row["state"] == "succeeded" and row["action"] != "approval"
    }
    if not reused:
        return _retry_of(conn, execution, version, requester, idempotency_key, reused)
    before = after = _run_shape(conn, execution.intent_id, execution.intent_version, execution.input)
    if version is not None and version != execution.intent_version:
        after = _run_shape(conn, execution.intent_id, version, execution.input)
        changed = sorted(step_id for step_id in reused if _runs_differently(step_id, before, after))
        if changed:
            raise NotRetryableError(
                f"version {version} changes steps whose outputs would be reused: " + ", ".join(changed)
            )
    skipped = {row["step_id"] for row in rows if row["state"] == "skipped"}
    kept = _after_reused(reused, skipped, before, after)
    return _retry_of(conn, execution, version, requester, idempotency_key, kept)


# The first retry, should an old one have been made twice (before migration 0065 refused it).
_RETRY_OF = "SELECT id FROM app.executions WHERE retry_of = %s ORDER BY created_at, id LIMIT 1"


def _refuse_a_second_retry(conn: Conn, execution_id: UUID, idempotency_key: str | None) -> None:
    """AlreadyRetriedError when the execution has a retry, unless `idempotency_key` names an execution already: that
    is a repeat, which the start answers as first answered (or refuses, for a key used otherwise).

    Decided under the tenant's start lock, which the start then takes again before its insert (same transaction):
    of two retries sent at once, the second reads the first's execution once it has committed. Its key is read again
    under the lock, as the start reads it, so that a repeat racing its first request is replayed, not refused."""
    tenant_locks.hold(conn, "executions")
    if idempotency_key is not None and repo.find_by_key(conn, idempotency_key) is not None:
        return
    row = conn.execute(_RETRY_OF, (execution_id,)).fetchone()
    if row is not None:
        raise AlreadyRetriedError(execution_id, row["id"])


def _after_reused(
    reused: dict[str, Any], skipped: set[str], before: RunShape | None, shape: RunShape | None
) -> dict[str, Any]:
    """The reused outputs of steps whose every dependency is reused too (or was skipped, after reused ones, and is
    the same step in the version the retry runs: one whose `when` changed may run now).

    A step that runs again (an approval, a compensated step) runs before what follows it: a later step reused past
    it would be ready at once, run before the approval asked again, or read an output the retry has not made yet."""
    if shape is None:
        return reused  # a declaration whose blueprint is gone: the start refuses it anyway
    skipped = {step_id for step_id in skipped if not _runs_differently(step_id, before, shape)}
    graph = dependencies(shape.steps)
    kept: dict[str, Any] = {}
    passed: set[str] = set()  # skipped steps whose dependencies were all kept or passed
    for level in execution_levels(shape.steps):
        for step_id in level:
            if not all(dep in kept or dep in passed for dep in graph[step_id]):
                continue
            if step_id in reused:
                kept[step_id] = reused[step_id]
            elif step_id in skipped:
                passed.add(step_id)
    return kept


def _retry_of(
    conn: Conn,
    execution: repo.Execution,
    version: int | None,
    requester: Requester,
    idempotency_key: str | None,
    reused: dict[str, Any],
) -> StartRequest:
    """The retry's start request, once no other retry of the execution is found (`_refuse_a_second_retry`): checked
    last, so the tenant's start lock it takes is held for the start's own work only, not for the reads above."""
    _refuse_a_second_retry(conn, execution.id, idempotency_key)
    return StartRequest(
        intent_id=execution.intent_id,
        input=execution.input,
        version=version or execution.intent_version,
        idempotency_key=idempotency_key,
        requester=requester,
        retry_of=execution.id,
        reused=reused,
    )


def _run_shape(conn: Conn, intent_id: UUID, version: int, given: dict[str, Any]) -> RunShape | None:
    """The version's run shape; None when a declaration's blueprint is gone (nothing of it can be compared)."""
    try:
        return run_shape(conn, registry.version(conn, "intent", intent_id, version), given)
    except NoLongerValidError:
        return None


def _runs_differently(step_id: str, before: RunShape | None, after: RunShape | None) -> bool:
    """Whether the step is defined differently, or reads an input that differs, from one version to the other."""
    if before is None or after is None:
        return True
    was, now = _step_document(before, step_id), _step_document(after, step_id)
    if was is None or was != now:
        return True
    read = {ref.name for _, ref in scan_references(was).found if ref.source == "inputs"}
    return any(before.inputs.get(name, _ABSENT) != after.inputs.get(name, _ABSENT) for name in read)


_ABSENT = object()


def _step_document(shape: RunShape, step_id: str) -> dict[str, Any] | None:
    step = next((step for step in shape.steps if step.step_id == step_id), None)
    return None if step is None else step.model_dump(mode="json")


OperatorOutcome = Literal["cancel-requested", "already-requested", "already-finished", "already-failing"]
OPERATOR_VERDICTS_BOUND_S = CHILD_VERDICTS_BOUND_S
"""How long an operator's cancel of one execution may take to hand over the verdicts of the work it ended: what is
left stays `raising`, for the sweeper to raise again (ADR 0027)."""
OPERATOR_RAISE_BOUND_S = 5.0
"""How long one raise of an operator's cancel may take (the sweeper's bound on a call): one cut off is `failed`, not
handed over, and the sweeper raises it again once the run is quiet (`_raise_cancel_again`)."""
OPERATOR_PAGE_BOUND_S = 120.0
"""Past it, an operator's page starts no further execution: those started end within their own bounds, and the page
answers with a cursor after the last one handled, well before the platform cuts an HTTP answer off (230 s)."""
OPERATOR_CANCELS_AT_ONCE = 2
"""Executions an operator's cancel of a page works on at once: each holds a tenant-pool connection while its cancel is
recorded, outside the pool's admission (ADR 0023), so a page takes no more than a request's usual share."""
_NOT_ENDED_PAGE = (
    "SELECT id FROM app.executions WHERE status <> ALL(%s) AND (%s::uuid IS NULL OR id > %s) ORDER BY id LIMIT %s"
)
# SHARE, not the KEY SHARE every path writing for a tenant holds: a status change (the control plane's NO KEY UPDATE,
# then its UPDATE) waits for the record to commit, as the erasure's FOR UPDATE does, so the cancel never commits on a
# tenant reactivated meanwhile; a tenant gone (or no longer suspended) is seen here, inside the transaction that would
# record the cancel. Other tenant writers' KEY SHARE, and a concurrent operator's SHARE, pass.
_TENANT_STATUS = "SELECT status FROM app.tenants WHERE id = %s FOR SHARE"
PageEnd = Literal["tenant-active", "tenant-gone"]


@dataclass(frozen=True)
class OperatorCancel:
    """What an operator's cancel did to one execution of a tenant its own principals cannot reach (suspended)."""

    execution_id: UUID
    outcome: OperatorOutcome
    status: str
    handed_over: bool
    """The run was told (or no one is left to tell); False: its raise failed, and a repeat or the sweeper raises it."""


@dataclass(frozen=True)
class OperatorPage:
    """An operator's cancel of a page: what it did to each execution it handled (a prefix of the page, in id order),
    whether it handled the whole page, and why it stopped early when the tenant did (`PageEnd`)."""

    items: list[OperatorCancel]
    listed: int
    """How many executions the page listed (the limit, unless it is the last page)."""
    ended: PageEnd | None = None
    """Set when the tenant stopped the page: active again (the rest is its own principals'), or erased."""

    @property
    def complete(self) -> bool:
        """Whether every listed execution was handled (no deadline and no stop cut the page short)."""
        return self.ended is None and len(self.items) == self.listed


OperatorAudit = Callable[[Conn, UUID, bool], None]
"""Audits one operator's cancel inside the transaction that records it: the execution, and whether this call
recorded the cancel (False: a repeat that raises a cancel whose raise was lost)."""


class TenantNotSuspendedError(Exception):
    """The tenant is not suspended (any more), or gone, as an operator's cancel records: the page stops there."""

    def __init__(self, end: PageEnd, done: OperatorCancel | None = None) -> None:
        super().__init__(end)
        # `done`: the cancel this execution recorded (and audited) before it found its tenant gone, to report.
        self.end, self.done = end, done


def not_ended_executions(
    tenant_id: UUID, *, after: UUID | None, limit: int, pool: ConnectionPool[Any] | None = None
) -> list[UUID]:
    """Up to `limit` ids of the tenant's executions that have not ended, in id order after `after`."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        rows = conn.execute(_NOT_ENDED_PAGE, (sorted(repo.TERMINAL), after, after, limit)).fetchall()
    return [row["id"] for row in rows]


def cancel_to_raise(conn: store.Conn, before: repo.Execution, after: repo.Execution) -> bool:
    """Whether a cancel's event is raised: always for the request that records the cancel (or for a run not yet
    started); for a repeat, while no raise of it was accepted (`mark_handed_over`) and the run has not ended,
    whatever it has out: a first raise that was lost is delivered by a repeat, and one the hub took is not raised
    again. Every repeat was raised before, and the orchestration's history kept each copy while it ran."""
    if before.cancel_requested_at is None or after.status == "pending":
        return True
    return not after.terminal and not store.cancel_handed_over(conn, after.id)


RaiseOutcome = Literal["raised", "gone", "failed"]


async def raise_to_run(client: EventRaiser, execution_id: UUID, name: str, data: Any) -> RaiseOutcome:
    """Raise the event `name` to an execution's run: `gone` when the task hub answers that the orchestration has
    ended or does not exist (nobody to tell now: a pending run's is not started yet), `failed` for any other failure
    (it may pass)."""
    try:
        await client.raise_event(str(execution_id), name, data)
    except Exception as exc:
        logger.warning("could not raise %s to %s: %s", name, execution_id, exc)
        return "gone" if no_one_to_tell(exc) else "failed"
    return "raised"


def _end_unstarted(tenant_id: UUID, execution_id: UUID, pool: ConnectionPool[Any] | None) -> repo.Execution:
    """End a pending execution no orchestration runs (nothing when it is no longer pending: a concurrent cancel ended
    it, or its orchestration started and must compensate); the execution now."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        repo.transition_from(conn, execution_id, "pending", "cancelled", error="cancelled before it started")
        return repo.get_execution(conn, execution_id)


@dataclass(frozen=True)
class RecordedCancel:
    """A cancel recorded in its transaction: the execution after it, the queued remote work it ended (each verdict
    marked `raising`), and whether its event is to be raised (`cancel_to_raise`)."""

    execution: repo.Execution
    dequeued: list[store.Attempt]
    to_raise: bool


async def tell_cancel(
    client: EventRaiser,
    tenant_id: UUID,
    recorded: RecordedCancel,
    by: str,
    *,
    verdicts_within_s: float,
    pool: ConnectionPool[Any] | None = None,
) -> tuple[repo.Execution, RaiseOutcome | None]:
    """Tell a recorded cancel to its run, as every cancel does (the execution's own, an operator's): its event raised,
    then the verdicts of the work it ended handed over, a pending run no orchestration started ended at once, and
    the cancel marked handed over once the hub has it. Answers the execution now and how the last raise went (None:
    nothing was to be raised); `failed` on a run not ended means it may learn of the cancel only from a repeat."""
    execution, event = recorded.execution, {"by": by}
    sent = await raise_to_run(client, execution.id, CANCEL_EVENT, event) if recorded.to_raise else None
    # Marked `raising` as they ended (work_queue.cancel_queued): one whose raise fails here is raised again by the
    # sweeper, as a repeated cancel finds no queued work left to end (ADR 0027, amended 2026-12-07). Only after the
    # cancel's own event: raised before it, an abandoned step read as a failure and the run ended failed; left to the
    # sweeper, they are raised saying the cancel came first (`raised_verdict`), as a child cancel's are.
    if sent != "failed":
        await remote.hand_over_verdicts(client, tenant_id, recorded.dequeued, within_s=verdicts_within_s, pool=pool)
    if sent in ("failed", "gone") and execution.status == "pending":
        execution = await asyncio.to_thread(_end_unstarted, tenant_id, execution.id, pool)
        if not execution.terminal:
            # Its orchestration started after the raise above failed: it must compensate what it runs, so it is
            # told like any started execution.
            sent = await raise_to_run(client, execution.id, CANCEL_EVENT, event)
    if sent in ("raised", "gone"):
        # Only once the hub has it (or nobody is left to tell): a repeat then raises nothing more.
        await asyncio.to_thread(remote.mark_handed_over, tenant_id, execution.id, pool=pool)
    return execution, sent


def _hold_suspended(conn: Conn, tenant_id: UUID) -> None:
    """Hold the tenant row until the cancel commits; TenantNotSuspendedError when it is gone or no longer suspended:
    the check the route made before the page, made again where each cancel is recorded (a reactivation meanwhile
    hands the executions back to the tenant's own principals)."""
    row = conn.execute(_TENANT_STATUS, (tenant_id,)).fetchone()
    if row is None:
        raise TenantNotSuspendedError("tenant-gone")
    if row["status"] != "suspended":
        raise TenantNotSuspendedError("tenant-active")


def _record_operator_cancel(
    tenant_id: UUID, execution_id: UUID, by: str, audit: OperatorAudit, pool: ConnectionPool[Any] | None
) -> RecordedCancel | OperatorCancel:
    """The cancel recorded and the queued remote work ended, as the execution's own cancel route records them, and
    audited in the same transaction when this call records it or raises it; the refusal as an outcome when there is
    nothing to cancel, and as `already-requested` when a repeat has nothing to raise either (not audited again)."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        _hold_suspended(conn, tenant_id)
        try:
            # `before` held, in ADR 0014's order: a concurrent cancel of the execution committed while this one waited
            # is seen, and this one is a repeat (not `recorded`, raised only if that one's raise was lost).
            before, after = held_cancel(conn, execution_id, by)
        except repo.ExecutionNotFoundError:
            # Only an erasure deletes an execution, with its tenant row, which the hold above found.
            raise TenantNotSuspendedError("tenant-gone") from None
        except AlreadyFinishedError:
            return OperatorCancel(execution_id, "already-finished", repo.get_execution(conn, execution_id).status, True)
        except AlreadyFailingError:
            return OperatorCancel(execution_id, "already-failing", repo.get_execution(conn, execution_id).status, True)
        dequeued = work_queue.cancel_queued(conn, execution_id)
        recorded, to_raise = before.cancel_requested_at is None, cancel_to_raise(conn, before, after)
        if not recorded and not to_raise and not dequeued:
            return OperatorCancel(execution_id, "already-requested", after.status, True)
        # Before its raise, in the transaction that records it: whatever happens to the raise or to the rest of the
        # page, nothing recorded is left unaudited.
        audit(conn, execution_id, recorded)
        return RecordedCancel(after, dequeued, to_raise)


async def operator_cancel(
    client: EventRaiser,
    tenant_id: UUID,
    execution_id: UUID,
    by: str,
    audit: OperatorAudit,
    *,
    pool: ConnectionPool[Any] | None = None,
) -> OperatorCancel:
    """Cancel one execution for an operator, as its tenant's own cancel does (ADR 0027, `tell_cancel`), each raise
    within OPERATOR_RAISE_BOUND_S. A repeat records nothing more and raises only a raise that was lost; what is not
    handed over stays for the sweeper to raise again. TenantNotSuspendedError when the tenant is no longer suspended."""
    recorded = await asyncio.to_thread(_record_operator_cancel, tenant_id, execution_id, by, audit, pool)
    if isinstance(recorded, OperatorCancel):
        return recorded
    try:
        execution, sent = await tell_cancel(
            BoundedRaiser(client, OPERATOR_RAISE_BOUND_S),
            tenant_id,
            recorded,
            by,
            verdicts_within_s=OPERATOR_VERDICTS_BOUND_S,
            pool=pool,
        )
    except repo.ExecutionNotFoundError:
        # Only an erasure deletes an execution: a pending one erased between its record and its end. Its cancel was
        # recorded and audited, and no one is left to tell; the page ends there, as for any tenant gone.
        done = OperatorCancel(recorded.execution.id, "cancel-requested", recorded.execution.status, True)
        raise TenantNotSuspendedError("tenant-gone", done) from None
    return OperatorCancel(execution.id, "cancel-requested", execution.status, sent != "failed" or execution.terminal)


async def operator_cancel_page(
    client: EventRaiser,
    tenant_id: UUID,
    by: str,
    audit: OperatorAudit,
    *,
    after: UUID | None,
    limit: int,
    within_s: float | None = None,
    pool: ConnectionPool[Any] | None = None,
) -> OperatorPage:
    """`operator_cancel` of up to `limit` executions of the tenant not ended, in id order after `after`,
    OPERATOR_CANCELS_AT_ONCE at a time. Started in id order, none after `within_s` (default OPERATOR_PAGE_BOUND_S)
    nor once the tenant is found no longer suspended: what was handled is a prefix of the page. Each started cancel
    runs to its end (none is cut off between its record and its raise); an unexpected failure is raised once all
    have ended."""
    ids = await asyncio.to_thread(not_ended_executions, tenant_id, after=after, limit=limit, pool=pool)
    gate = asyncio.Semaphore(OPERATOR_CANCELS_AT_ONCE)
    deadline = asyncio.get_running_loop().time() + (OPERATOR_PAGE_BOUND_S if within_s is None else within_s)
    stopped: list[PageEnd] = []

    async def cancel(execution_id: UUID) -> OperatorCancel:
        """One execution's cancel; the gate was taken for it."""
        try:
            return await operator_cancel(client, tenant_id, execution_id, by, audit, pool=pool)
        except TenantNotSuspendedError as exc:
            stopped.append(exc.end)
            raise
        finally:
            gate.release()

    tasks: list[asyncio.Task[OperatorCancel]] = []
    for execution_id in ids:
        await gate.acquire()
        # The first is always started: a page that handled nothing would give no position to resume after.
        if stopped or (tasks and asyncio.get_running_loop().time() >= deadline):
            gate.release()
            break
        tasks.append(asyncio.create_task(cancel(execution_id)))
    # Not a TaskGroup: one failing must not cut the others off between their record and their raise.
    results = await asyncio.gather(*tasks, return_exceptions=True)
    return _page_of(results, len(ids))


def _page_of(results: list[OperatorCancel | BaseException], listed: int) -> OperatorPage:
    """The page the cancels' results make: the items before the first that found the tenant no longer suspended
    (those after it were started before it was found, and are reported too, as each audited its own; so is the cancel
    one recorded before it found the tenant gone); any other failure raised."""
    items: list[OperatorCancel] = []
    ended: PageEnd | None = None
    for result in results:
        if isinstance(result, TenantNotSuspendedError):
            ended = ended or result.end
            if result.done is not None:
                items.append(result.done)
        elif isinstance(result, BaseException):
            raise result
        else:
            items.append(result)
    return OperatorPage(items, listed, ended)
