# intent_ref: platform.execution
"""A tenant's workers take its remote work through here (ADR 0027): lease (a long poll), heartbeat, list."""

from __future__ import annotations

import contextlib
import functools
import time
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict
from starlette.concurrency import run_in_threadpool

from shared.api import event_stream
from shared.api.admission import idle
from shared.api.durable import get_durable_client
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import ProblemError
from shared.api.responses import AUTH_ERRORS, BAD_CURSOR, INVALID, problem_doc
from shared.api.routers.executions import readable_executions
from shared.api.security import RequestContext, authorize
from shared.api.transactions import TenantConnection
from shared.db.session import retried_on_deadlock, tenant_transaction
from shared.engine import remote, work_queue
from shared.engine.event_wakeup import get_event_wakeup
from shared.engine.steps import Attempt
from shared.free_text import NEUTRALISED_IN_LINES, neutralised
from shared.policy.actions import Action
from shared.policy.authorizer import Decision, Reason, Resource

router = APIRouter(prefix="/api/v1/work", tags=["remote workers"], route_class=GuardedRoute)

MAX_WAIT_S = 30.0
# A round's leases run from its commit, and the verdicts of the attempts it ended are raised after that: a slow task
# hub must not hold the answer past them (`lease_s` is 5 s at least). A raise cut off here stays to be handed over,
# and the sweeper raises it again.
VERDICT_RAISE_BOUND_S = 2.0
# A waiting lease is woken by the process-wide listener when the tenant's queue gets an item (migration 0018); it
# holds no pooled connection, transaction or permit while it waits, and re-reads at this interval besides.
FALLBACK_RECHECK_S = 2.0
WORKER_NAME = AfterValidator(neutralised)
"""A worker's name on one line: each control, separator or bidirectional character replaced by U+FFFD."""
ItemId = Annotated[UUID, Path(description="The work item's id.")]
UNSTORABLE_REFUSED = (
    "A NUL (U+0000) or a lone surrogate (U+D800-U+DFFF) is not replaced: it is refused with 422 `unstorable_text`,"
    " as in every body (ADR 0023)."
)
"""What the edge refuses in every body, before a field's own neutralising reads it."""
ActionName = Annotated[str, Field(min_length=1, max_length=128)]
# A number or flag is taken as JSON types it (a float field still takes a JSON integer): converted, `true` leased an
# item and `"60"` held a lease, where a worker meant something else. Strict per field, not per model: the body is
# validated as parsed JSON, in which a UUID or a time is a string.
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict()]
_EXAMPLE_ID = "9a1c2b3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
_EXAMPLE_LEASE = "3f2e1d0c-9b8a-4765-a4b3-c2d1e0f9a8b7"
_EXAMPLE_EXECUTION = "5d7e1f0a-3b2c-4d5e-8f90-1a2b3c4d5e6f"
ITEM_NOT_FOUND = problem_doc(404, "not-found", "Not found", f"no work item {_EXAMPLE_ID}", "No such item in the tenant")
LEASE_NOT_HELD = problem_doc(
    409,
    "lease-expired",
    "Conflict",
    "the lease has expired; the attempt is ended or about to be, as the step's retry says",
    "The lease ran out, moved on, or the attempt has ended: stop working on the item",
)


class LeaseRequest(BaseModel):
    """What a worker asks for: items of the actions it runs, how many, for how long, and how long to wait."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"actions": ["build-container"], "max_items": 1, "lease_s": 60, "wait_s": 20, "worker": "builder-1"}
            ]
        },
    )

    actions: list[ActionName] = Field(min_length=1, max_length=32, description="The actions this worker runs.")
    max_items: StrictInt = Field(1, ge=1, le=50)
    lease_s: StrictFloat = Field(60, ge=5, le=900, description="How long the lease holds without a heartbeat.")
    wait_s: StrictFloat = Field(
        0, ge=0, le=MAX_WAIT_S, description="Seconds to wait for an item when none is queued (long poll)."
    )
    # Shown in the wait reason and the queue's list: neutralised as a heartbeat's progress message is (never refused,
    # which would leave the tenant's work without a worker over a name), on one line.
    worker: Annotated[str, Field(min_length=1, max_length=128), WORKER_NAME] | None = Field(
        None,
        description="A name for this worker process, shown on one line: control characters (U+0001-U+001F,"
        " U+007F-U+009F), line and paragraph separators (U+2028, U+2029) and bidirectional overrides or isolates"
        f" (U+202A-U+202E, U+2066-U+2069) are each replaced by U+FFFD. {UNSTORABLE_REFUSED}",
    )


class LeasedItem(BaseModel):
    """One item handed to the worker: what to do, and the task token (bound to this lease) that reports it."""

    id: UUID
    lease_id: UUID
    lease_expires_at: datetime
    deadline: datetime = Field(description="The attempt's own timeout: a heartbeat never extends past it.")
    execution_id: UUID
    step_id: str
    phase: Literal["run", "compensate"]
    attempt: int
    action: str
    params: dict[str, Any]
    idempotency_key: str = Field(
        description="Names this attempt (`<execution_id>:<step_id>:<phase>:<attempt>`; an attempt is handed out "
        "once): it dedups repeats within the attempt only. For an effect that must happen once per step across "
        "attempts, key it on `<execution_id>:<step_id>:<phase>`."
    )
    task_token: str
    complete_url: str
    fail_url: str
    heartbeat_url: str
    traceparent: str | None = Field(
        None,
        description="The execution's trace (W3C): send it as the `traceparent` header of the heartbeats and of the "
        "completion, so the worker's part shows in the execution's trace.",
    )


class LeaseAnswer(BaseModel):
    """The items leased (possibly none, when `wait_s` passed with nothing queued)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": _EXAMPLE_ID,
                            "lease_id": _EXAMPLE_LEASE,
                            "lease_expires_at": "2025-01-05T09:31:00Z",
                            "deadline": "2025-01-05T10:00:00Z",
                            "execution_id": _EXAMPLE_EXECUTION,
                            "step_id": "build",
                            "phase": "run",
                            "attempt": 1,
                            "action": "build-container",
                            "params": {"image": "myapp:1.2.3", "context": "./app"},
                            "idempotency_key": f"{_EXAMPLE_EXECUTION}:build:run:1",
                            "task_token": "qpt1.<claims>.<signature>",
                            "complete_url": f"/api/v1/executions/{_EXAMPLE_EXECUTION}/steps/build/complete",
                            "fail_url": f"/api/v1/executions/{_EXAMPLE_EXECUTION}/steps/build/fail",
                            "heartbeat_url": f"/api/v1/work/{_EXAMPLE_ID}/heartbeat",
                            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        }
                    ]
                }
            ]
        }
    )

    items: list[LeasedItem]


class Progress(BaseModel):
    """How far the worker has got, shown in the execution's wait reason."""

    model_config = ConfigDict(extra="forbid")

    percent: StrictFloat | None = Field(None, ge=0, le=100)
    # Neutralised, not refused: a refused heartbeat extends nothing, so a stray character would cost a worker its lease.
    # But for what no body may hold (ADR 0023): the edge refuses those before this model reads the body.
    message: Annotated[str, Field(min_length=1, max_length=500), NEUTRALISED_IN_LINES] | None = Field(
        None,
        description="For people to read, shown on several lines; control characters but line feeds and tabs"
        " (U+0001-U+0008, U+000B-U+001F, U+007F-U+009F), line and paragraph separators (U+2028, U+2029) and"
        " bidirectional overrides or isolates (U+202A-U+202E, U+2066-U+2069) are each replaced by U+FFFD, not refused"
        f" (a carriage return before a line feed is dropped). {UNSTORABLE_REFUSED}",
    )


class HeartbeatRequest(BaseModel):
    """The lease the worker holds, how much longer it needs, and optionally its progress."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"lease_id": _EXAMPLE_LEASE, "extend_s": 60, "progress": {"percent": 40, "message": "layer 3"}}
            ]
        },
    )

    lease_id: UUID
    extend_s: StrictFloat = Field(60, ge=5, le=900)
    progress: Progress | None = None


class HeartbeatAnswer(BaseModel):
    """`leased`: keep going until `lease_expires_at`. `cancelled`: the execution was cancelled; stop, report
    nothing (the attempt has ended)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": _EXAMPLE_ID, "state": "leased", "lease_expires_at": "2025-01-05T09:32:00Z"}]
        }
    )

    id: UUID
    state: Literal["leased", "cancelled"]
    lease_expires_at: datetime | None


class QueueEntry(BaseModel):
    """An open item of the tenant's queue."""

    id: UUID
    execution_id: UUID
    step_id: str
    phase: Literal["run", "compensate"]
    attempt: int
    action: str
    status: work_queue.QueueStatus
    enqueued_at: datetime
    queued_s: float = Field(description="Seconds since it was queued.")
    deadline: datetime
    leased_by: str | None
    leased_at: datetime | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    progress: dict[str, Any] | None


class QueuePage(BaseModel):
    """The tenant's open work items, oldest first; `next_cursor` pages on (null on the last page)."""

    items: list[QueueEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null when there is none.")


def _worker_name(context: RequestContext, given: str | None) -> str:
    principal = context.principal.id
    return f"{given} ({principal})" if given else principal


def _leased(lease: work_queue.Lease) -> LeasedItem:
    item, key = lease.item, lease.item.key
    assert item.lease_id is not None and item.lease_expires_at is not None  # just leased
    path = f"/api/v1/executions/{key.execution_id}/steps/{key.step_id}"
    suffix = "" if key.phase == "run" else "/compensation"
    return LeasedItem(
        id=item.id,
        lease_id=item.lease_id,
        lease_expires_at=item.lease_expires_at,
        deadline=item.deadline,
        execution_id=key.execution_id,
        step_id=key.step_id,
        phase=key.phase,
        attempt=key.attempt,
        action=item.action,
        params=item.params,
        idempotency_key=item.idempotency_key,
        task_token=lease.task_token,
        complete_url=f"{path}{suffix}/complete",
        fail_url=f"{path}{suffix}/fail",
        heartbeat_url=f"/api/v1/work/{item.id}/heartbeat",
        traceparent=item.traceparent,
    )


async def hand_over_verdicts(client: Any, tenant_id: UUID, attempts: list[Attempt]) -> None:
    """Hand the verdicts of the attempts a lease round or a heartbeat ended to their orchestrations, at once and
    within VERDICT_RAISE_BOUND_S in all; what is not handed over by then the sweeper raises again (ADR 0027, amended
    2026-12-07)."""
    await remote.hand_over_verdicts(client, tenant_id, attempts, within_s=VERDICT_RAISE_BOUND_S)


def _lease(
    tenant_id: UUID, request: LeaseRequest, worker: str, *, first: bool
) -> tuple[list[Attempt], list[work_queue.Lease]]:
    """In one transaction: end the tenant's leases that ran out (their steps' next attempts can then be queued),
    then lease; the `first` round of a call also records the poll (a re-check is the same poll). Answers the
    attempts ended (those whose lease ran out, and the stale items the lease ended instead of handing out), whose
    verdicts the caller raises, and the new leases."""
    with tenant_transaction(tenant_id) as conn:
        # On re-checks too: a lease that ran out while this poll waited is ended here, and its retry queued and
        # handed out within a re-check, not at the sweeper's next run. It reads only the tenant's open attempts.
        expired = work_queue.expire_leases(conn)
        leases = work_queue.lease(
            conn,
            tenant_id,
            actions=request.actions,
            max_items=request.max_items,
            lease_s=request.lease_s,
            worker=worker,
            record=first,
        )
    return [*expired, *leases.ended], leases.leases


@router.post(
    "/lease",
    response_model=LeaseAnswer,
    summary="Lease queued work",
    responses={**AUTH_ERRORS, 422: INVALID},
)
async def lease(
    body: LeaseRequest,
    request: Request,
    context: Annotated[RequestContext, Depends(permission(Action.WORK_LEASE))],
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> LeaseAnswer:
    """Up to `max_items` queued items of the caller's tenant for `actions`, oldest first, each leased for `lease_s`
    with a task token bound to this lease; competing workers never get the same item. With `wait_s`, an empty
    answer is held until an item is queued or `wait_s` passes; a tenant suspended meanwhile ends the wait with 403
    `tenant-suspended` and leases nothing (Module.Worker)."""
    await run_in_threadpool(authorize, context, Action.WORK_LEASE, Resource.tenant(context.tenant.id))
    tenant_id, worker = context.tenant.id, _worker_name(context, body.worker)
    deadline = time.monotonic() + body.wait_s
    wakeup = get_event_wakeup() if body.wait_s > 0 else None
    # A waiting poll looks at its tenant as the event long poll does, from the same directory at the same interval:
    # the route let the caller in just now, so the first look is one interval on. Its wait is MAX_WAIT_S at most, so
    # its token is not looked at again.
    look_at = time.monotonic() + event_stream.TENANT_LOOK_S
    leases: list[work_queue.Lease] = []
    with contextlib.ExitStack() as stack:
        # Keyed by tenant id: the queue's notification names the tenant (execution ids never collide with it).
        waiter = stack.enter_context(wakeup.waiting(tenant_id)) if wakeup is not None else None
        first = True
        # Asked before every round, so after every wait too: a worker that hung up while it waited (Ctrl-C, a crash,
        # its own timeout) leases nothing. An item leased to it would reach no one, and no other worker could have it
        # until the lease ran out and ended the attempt as timed out, a retry spent (ADR 0027, amended 2026-12-06).
        while not await request.is_disconnected():
            if waiter is not None:
                waiter.clear()
            # Its expiry and stale items take attempts before executions (ADR 0014's one order), the stale ones without
            # waiting; a deadlock's victim all the same (rows outside that order) rolled back whole: polled again,
            # never answered 503.
            round_ = functools.partial(_lease, tenant_id, body, worker, first=first)
            ended, leases = await run_in_threadpool(retried_on_deadlock, round_)
            first = False
            await hand_over_verdicts(client, tenant_id, ended)
            if leases or time.monotonic() >= deadline:
                break
            # It wakes for the tenant's look too, so a suspension bites within TENANT_LOOK_S.
            pause = min(FALLBACK_RECHECK_S, max(0.0, deadline - time.monotonic()), max(0.0, look_at - time.monotonic()))
            if not await idle(context, pause, waiter.event if waiter is not None else None):
                break
            if time.monotonic() >= look_at:
                # Its statement leases nothing for a tenant not active (work_queue.lease); this ends the wait, so
                # the worker hears why instead of an empty answer.
                await event_stream.refuse_unless_active(context)
                look_at = time.monotonic() + event_stream.TENANT_LOOK_S
    return LeaseAnswer(items=[_leased(lease) for lease in leases])


def _heartbeat(tenant_id: UUID, item_id: UUID, body: HeartbeatRequest) -> work_queue.Heartbeat:
    progress = body.progress.model_dump(exclude_none=True) if body.progress is not None else None
    with tenant_transaction(tenant_id) as conn:
        if remote.lease_of_an_ended_execution(conn, item_id, body.lease_id):
            raise ProblemError(409, "lease-expired", "Conflict", remote.EXECUTION_ENDED)
        try:
            return work_queue.heartbeat(conn, item_id, body.lease_id, extend_s=body.extend_s, progress=progress)
        except work_queue.WorkItemNotFoundError as exc:
            raise ProblemError(404, "not-found", "Not found", str(exc)) from None
        except work_queue.LeaseNotHeldError as exc:
            raise ProblemError(409, "lease-expired", "Conflict", str(exc)) from None


@router.post(
    "/{item_id}/heartbeat",
    response_model=HeartbeatAnswer,
    summary="Keep a lease alive",
    responses={**AUTH_ERRORS, 404: ITEM_NOT_FOUND, 409: LEASE_NOT_HELD, 422: INVALID},
)
async def heartbeat(
    item_id: ItemId,
    body: HeartbeatRequest,
    context: Annotated[RequestContext, Depends(permission(Action.WORK_HEARTBEAT))],
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> HeartbeatAnswer:
    """Extend the lease by `extend_s` (never past the attempt's deadline) and record progress; answers `cancelled`
    when the execution is being cancelled, and the attempt ends then (Module.Worker)."""
    await run_in_threadpool(authorize, context, Action.WORK_HEARTBEAT, Resource.tenant(context.tenant.id))
    # Its abandon takes the attempt, then the execution, as every writer does (ADR 0014's one order); a deadlock's
    # victim all the same is run again (and then finds the attempt ended, 409), never answered 503.
    beat = await run_in_threadpool(retried_on_deadlock, functools.partial(_heartbeat, context.tenant.id, item_id, body))
    if beat.cancelled is not None:
        await hand_over_verdicts(client, context.tenant.id, [beat.cancelled])
        return HeartbeatAnswer(id=item_id, state="cancelled", lease_expires_at=None)
    return HeartbeatAnswer(id=item_id, state="leased", lease_expires_at=beat.lease_expires_at)


def _entry(item: work_queue.QueuedItem, now: datetime) -> QueueEntry:
    key = item.key
    return QueueEntry(
        id=item.id,
        execution_id=key.execution_id,
        step_id=key.step_id,
        phase=key.phase,
        attempt=key.attempt,
        action=item.action,
        status=item.status(now),
        enqueued_at=item.enqueued_at,
        queued_s=round((now - item.enqueued_at).total_seconds(), 3),
        deadline=item.deadline,
        # Neutralised again: a name recorded before names were (ADR 0027, amended 2026-12-07) is shown the same way.
        leased_by=neutralised(item.leased_by) if item.leased_by is not None else None,
        leased_at=item.leased_at,
        lease_expires_at=item.lease_expires_at,
        heartbeat_at=item.heartbeat_at,
        progress=item.progress,
    )


@router.get(
    "",
    response_model=QueuePage,
    summary="List queued work",
    responses={**AUTH_ERRORS, 400: BAD_CURSOR, 422: INVALID},
)
def list_work(
    context: Annotated[RequestContext, Depends(permission(Action.WORK_LIST))],
    conn: TenantConnection,
    action: Annotated[str | None, Query(min_length=1, max_length=128, description="Only items of this action.")] = None,
    status: Annotated[work_queue.QueueStatus | None, Query(description="queued, leased or expired.")] = None,
    execution_id: Annotated[UUID | None, Query(description="Only items of this execution.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="The `next_cursor` of the page before (none: the first).")] = None,
) -> QueuePage:
    """The tenant's open work items (no result yet): queued, leased (by whom, since when, last heartbeat,
    progress) or with an expired lease, oldest first; cursor-paginated: `next_cursor` is set only when more items
    follow, and a cursor this list did not issue is refused with 400 (Module.Worker and every reader). An item whose
    execution a tenant policy forbids the caller to read is left out, so a page may hold fewer than `limit` items
    (even none) and still name a next page."""
    authorize(context, Action.WORK_LIST, Resource.tenant(context.tenant.id), conn=conn)
    items, now, next_cursor = work_queue.list_page(
        conn, action=action, status=status, execution_id=execution_id, cursor=cursor, limit=limit
    )
    # Each item is decided as a read of its execution (ADR 0011, amended 2026-12-07), else a forbid on reading one
    # showed its steps, actions, progress and workers here. A caller whose roles read no execution at all (a worker)
    # still lists the queue it leases from; a forbid refuses it what it names all the same.
    listed = readable_executions(
        context, conn, items, lambda item: item.key.execution_id, named="executions", listed=_listed
    )
    return QueuePage(items=[_entry(item, now) for item in listed], next_cursor=next_cursor)


def _listed(decision: Decision) -> bool:
    """Whether a queue listing shows the items of an execution decided `decision`: unless a policy refused it."""
    return decision.allowed or decision.reason == Reason.ROLE_REQUIRED
