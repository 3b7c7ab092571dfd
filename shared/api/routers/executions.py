# intent_ref: platform.execution
"""The execution read API: list, get, and the resumable event stream of one execution (server-sent events, or a
JSON long poll)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shared.api import event_stream
from shared.api.admission import idle
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import ProblemError
from shared.api.responses import AUTH_ERRORS, BAD_CURSOR, INVALID, problem_doc
from shared.api.security import RequestContext, authorize, readable, token_validator
from shared.api.transactions import TenantConnection
from shared.auth.tokens import InvalidTokenError, KeysNotCachedError, TokenValidator, bearer_token
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import work_queue
from shared.engine.event_wakeup import get_event_wakeup, recheck_s
from shared.engine.executions import Conn
from shared.engine.steps import Attempt, list_attempts, list_steps
from shared.engine.views import step_views, wait_reason
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from shared.policy.actions import Action
from shared.policy.authorizer import Decision, Resource
from shared.policy.tenant_policies import policy_cache, tenant_policy_texts
from shared.registry.repository import version_labels

router = APIRouter(prefix="/api/v1/executions", tags=["executions"], route_class=GuardedRoute)
MayRead = Annotated[RequestContext, Depends(permission(Action.EXECUTION_READ, resource_param="execution_id"))]
ExecutionId = Annotated[UUID, Path(description="The execution's id.")]
StepId = Annotated[str, Path(min_length=1, max_length=128, description="The step's id.")]
Row = TypeVar("Row")

MAX_WAIT_S = 30.0
# A waiting long poll is woken by the process-wide listener (shared/engine/event_wakeup.py: one dedicated
# connection, never a pooled one) when its execution's events are appended; it holds no pooled connection,
# transaction or permit while it waits. It also re-reads on its own (`recheck_s`, as a stream's feed does): every
# DOWN_RECHECK_S while the process does not listen, so a lost notification delays an event by at most that much,
# and only as a safety net while it does.
MAX_EVENTS = 500
READ_BYTES = 1024 * 1024
"""About the most JSON one read of an execution's events returns (a JSON page, a stream's feed or backlog read),
counted as Postgres writes each event's data, with a step's output and an error twice (`data.output` and `result`,
`data.error` and `error`), whatever the read's `limit`; at least one event, however big. Each event's envelope (its
number, type, step and time) is not counted: up to about a fifth more for a page of small events with long step
ids. An output of 64 KiB inline of small objects decodes to about 1.2 MB of Python objects, so 500 of them, a page's
most, took some 600 MB; a read now holds some 20 MB at most, and the client goes on from `next_after`."""

EXAMPLE_EXECUTION_ID = "5d7e1f0a-3b2c-4d5e-8f90-1a2b3c4d5e6f"
_INTENT_ID = "0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10"
_PRINCIPAL = "72f988bf-86f1-41af-91ab-2d7cd011db47/1b2c3d4e-0000-4000-8000-000000000001"
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": EXAMPLE_EXECUTION_ID,
    "intent_id": _INTENT_ID,
    "intent_version": 2,
    "target": "production",
    "status": "running",
    "requested_by": _PRINCIPAL,
    "created_at": "2025-01-05T09:30:00Z",
    "updated_at": "2025-01-05T09:30:01Z",
    "finished_at": None,
}
_STEP_EXAMPLE: dict[str, Any] = {
    "step_id": "build",
    "action": "build-container",
    "state": "retrying",
    "attempt": 1,
    "max_attempts": 3,
    "output": None,
    "error": "registry unavailable",
    "retry_at": "2025-01-05T09:30:09Z",
    "reused": False,
    "child_execution_id": None,
    "started_at": "2025-01-05T09:30:01Z",
    "finished_at": None,
    "attempts": [
        {
            "phase": "run",
            "attempt": 1,
            "action": "build-container",
            "remote": True,
            "state": "failed",
            "output": None,
            "error": "registry unavailable",
            "started_at": "2025-01-05T09:30:01Z",
            "finished_at": "2025-01-05T09:30:05Z",
        }
    ],
}
_EXECUTION_EXAMPLE: dict[str, Any] = {
    **_SUMMARY_EXAMPLE,
    "input": {"version": "1.2.3"},
    "output": None,
    "error": None,
    "plan_hash": "3b1f" + "0" * 60,
    "last_event_seq": 3,
    "parent_execution_id": None,
    "retry_of": None,
    "wait_reason": "retrying step build in 8 s (attempt 2 of 3)",
    "steps": [_STEP_EXAMPLE],
    "links": {
        "self": f"/api/v1/executions/{EXAMPLE_EXECUTION_ID}",
        "events": f"/api/v1/executions/{EXAMPLE_EXECUTION_ID}/events?after=0",
    },
}
_EVENTS_EXAMPLE: dict[str, Any] = {
    "execution_id": EXAMPLE_EXECUTION_ID,
    "status": "running",
    "next_after": 3,
    "items": [
        {
            "seq": 2,
            "type": "step_started",
            "step": "build",
            "step_id": "build",
            "data": {"attempt": 1},
            "result": None,
            "error": None,
            "occurred_at": "2025-01-05T09:30:01Z",
        },
        {
            "seq": 3,
            "type": "step_completed",
            "step": "build",
            "step_id": "build",
            "data": {"attempt": 1, "output": {"image": "myapp:1.2.3"}},
            "result": {"image": "myapp:1.2.3"},
            "error": None,
            "occurred_at": "2025-01-05T09:31:12Z",
        },
    ],
}
EXECUTION_NOT_FOUND = problem_doc(
    404,
    "not-found",
    "Not found",
    f"No execution {EXAMPLE_EXECUTION_ID}.",
    "No such execution in the caller's tenant (another tenant's is not found either)",
)


class ExecutionSummary(BaseModel):
    """An execution in a listing (GET it for input, output and error)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})

    id: UUID
    intent_id: UUID
    intent_version: int = Field(description="The intent version the execution is pinned to.")
    target: str
    status: repo.Status
    requested_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class ExecutionLinks(BaseModel):
    """Where to read the execution and follow its events."""

    self: str
    events: str


class AttemptOut(BaseModel):
    """One attempt of a step's work (phase run) or of its compensation."""

    phase: str
    attempt: int
    action: str
    remote: bool
    state: str = Field(description="dispatched, succeeded, failed, timed_out or abandoned.")
    output: Any = Field(description='The output, or a blob reference {"$blob": {...}} when it was large.')
    error: str | None
    started_at: datetime
    finished_at: datetime | None


class StepOut(BaseModel):
    """One step: where it stands, its latest output or error, and every attempt."""

    step_id: str
    action: str
    state: str = Field(
        description="pending, running, waiting, retrying, succeeded, failed, skipped, compensating, "
        "compensated, compensation_failed or cancelled. A step still pending once its execution has ended never "
        "started: the execution stopped (a failure, a rejection or a cancel) before its dependencies completed."
    )
    attempt: int
    max_attempts: int
    output: Any
    error: str | None
    retry_at: datetime | None
    reused: bool = Field(description="True when a retry reused the output of the execution it retries.")
    child_execution_id: UUID | None
    started_at: datetime | None
    finished_at: datetime | None
    attempts: list[AttemptOut]


class ExecutionOut(ExecutionSummary):
    """One execution."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXECUTION_EXAMPLE]})

    input: dict[str, Any]
    output: Any = Field(description="The step outputs once it succeeded; what was compensated once it failed.")
    error: str | None = Field(description="Why it failed; else null.")
    plan_hash: str | None
    last_event_seq: int = Field(description="The seq of the newest event (0: none yet).")
    parent_execution_id: UUID | None = Field(description="The execution whose intent.run step started this one.")
    retry_of: UUID | None = Field(description="The failed execution this one retries.")
    wait_reason: str | None = Field(description="Why it is not moving right now, in plain language; else null.")
    steps: list[StepOut]
    links: ExecutionLinks


class ExecutionPage(BaseModel):
    """One page of executions, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_SUMMARY_EXAMPLE], "next_cursor": None}]})

    items: list[ExecutionSummary]
    next_cursor: str | None


class ExecutionEventOut(BaseModel):
    """One event, numbered from 1 per execution."""

    seq: int
    type: str = Field(
        description="execution_started, step_started, step_completed, step_failed, step_retrying, "
        "step_skipped, step_cancelled, approval_requested, approval_granted, approval_rejected, "
        "compensation_started, compensation_completed, compensation_retrying, compensation_failed, "
        "execution_compensating, cancel_requested, execution_completed, execution_failed, execution_cancelled, ..."
    )
    step: str | None = Field(description="The step the event is about (null for the execution's own events).")
    step_id: str | None = Field(description="The same as `step`.")
    data: dict[str, Any]
    result: Any = Field(None, description="step_completed: the step's output.")
    error: str | None = Field(None, description="Failures: what went wrong.")
    occurred_at: datetime


class ExecutionEventPage(BaseModel):
    """Events after a number; resume with `after=next_after`."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENTS_EXAMPLE]})

    execution_id: UUID
    status: repo.Status = Field(description="The execution's status when the page was read.")
    items: list[ExecutionEventOut]
    next_after: int = Field(description="Pass as `after` for the next call (unchanged when no event came).")


def _summary(execution: repo.Execution) -> ExecutionSummary:
    return ExecutionSummary(
        id=execution.id,
        intent_id=execution.intent_id,
        intent_version=execution.intent_version,
        target=execution.target,
        status=execution.status,
        requested_by=execution.requested_by,
        created_at=execution.created_at,
        updated_at=execution.updated_at,
        finished_at=execution.finished_at,
    )


def _out(
    execution: repo.Execution,
    steps: list[dict[str, Any]],
    attempts: list[Attempt],
    work: list[work_queue.QueuedItem] | None = None,
    pollers: dict[str, work_queue.Poller] | None = None,
    now: datetime | None = None,
) -> ExecutionOut:
    path = f"/api/v1/executions/{execution.id}"
    return ExecutionOut(
        **_summary(execution).model_dump(),
        input=execution.input,
        output=execution.output,
        error=execution.error,
        plan_hash=execution.plan_hash,
        last_event_seq=execution.last_event_seq,
        parent_execution_id=execution.parent_execution_id,
        retry_of=execution.retry_of,
        wait_reason=wait_reason(execution, steps, now or datetime.now(UTC), work or (), pollers, attempts),
        steps=[StepOut.model_validate(view) for view in step_views(steps, attempts)],
        links=ExecutionLinks(self=path, events=f"{path}/events?after=0"),
    )


def event_out(event: repo.ExecutionEvent) -> ExecutionEventOut:
    """An event as the API shows it: `result` and `error` lifted out of its data for stream readers."""
    error = event.data.get("error")
    return ExecutionEventOut(
        seq=event.seq,
        type=event.type,
        step=event.step_id,
        step_id=event.step_id,
        data=event.data,
        result=event.data.get("output") if event.type == "step_completed" else None,
        error=str(error) if error is not None else None,
        occurred_at=event.occurred_at,
    )


def execution_resource(conn: Conn, execution: repo.Execution, tenant_id: UUID) -> Resource:
    """The execution as its decisions see it, in the caller's tenant transaction `conn`."""
    # Its labels are those of the intent version it runs, in the form the Intent resource takes them (the version's
    # mapping): without them Cedar sees an empty set and a tenant forbid on `resource.labels` never matches. The
    # foreign key keeps the version while the execution exists, so a missing one means both are being erased.
    labels = version_labels(conn, execution.intent_id, execution.intent_version)
    if labels is None:
        raise ProblemError(404, "not-found", "Not found", f"No execution {execution.id}.")
    return _resource(execution.id, execution.target, execution.requested_by, labels, tenant_id)


def _resource(execution_id: UUID, target: str, requested_by: str, labels: dict[str, str], tenant_id: UUID) -> Resource:
    """An execution as a decision on it sees it, from what `execution_resource` reads."""
    attributes = {"target": target, "requested_by": requested_by, "labels": labels}
    return Resource("Execution", str(execution_id), tenant_id, attributes)


# What `execution_resource` reads of each execution, for many at once: a page's or a queue's executions in one query.
_READ_FACTS = sql.SQL(
    "SELECT e.id, e.target, e.requested_by, v.labels FROM app.executions e"
    " JOIN app.intent_versions v ON v.intent_id = e.intent_id AND v.version = e.intent_version"
    " WHERE e.id = ANY(%s)"
)


def execution_resources(conn: Conn, execution_ids: Collection[UUID], tenant_id: UUID) -> dict[UUID, Resource]:
    """The executions `execution_ids` as `execution_resource` builds each, in one query; one the tenant lacks (or
    whose intent version is gone, both being erased) is missing."""
    if not execution_ids:
        return {}
    rows = conn.execute(_READ_FACTS, (list(execution_ids),)).fetchall()
    return {
        row["id"]: _resource(row["id"], row["target"], row["requested_by"], dict(row["labels"]), tenant_id)
        for row in rows
    }


def readable_executions(
    context: RequestContext,
    conn: Conn,
    rows: Sequence[Row],
    execution_of: Callable[[Row], UUID],
    *,
    named: str = "items",
    listed: Callable[[Decision], bool] | None = None,
) -> list[Row]:
    """The rows of a listing whose execution (`execution_of`) the caller may read as `GET /executions/{id}` decides
    it; one audit record per outcome, naming the executions under `named` (ADR 0011, amended 2026-12-07)."""
    resources = execution_resources(conn, {execution_of(row) for row in rows}, context.tenant.id)
    # An execution gone since its row was read is left out, as its GET would answer 404.
    present = [row for row in rows if execution_of(row) in resources]
    return readable(
        context,
        Action.EXECUTION_READ,
        present,
        lambda row: resources[execution_of(row)],
        lambda row: str(execution_of(row)),
        conn=conn,
        named=named,
        listed=listed,
    )


def _find(conn: Conn, execution_id: UUID) -> repo.Execution:
    try:
        return repo.get_execution(conn, execution_id)
    except repo.ExecutionNotFoundError as exc:  # another tenant's, or erased while a client was waiting
        raise ProblemError(404, "not-found", "Not found", str(exc)) from None


def load_execution(context: RequestContext, execution_id: UUID, conn: Conn | None = None) -> repo.Execution:
    """The execution, 404 when the tenant has none by that id, then the read decision (403 when refused); in
    `conn` when the caller reads more in the same transaction."""
    if conn is None:
        with tenant_transaction(context.tenant.id) as own:
            return load_execution(context, execution_id, own)
    execution = _find(conn, execution_id)
    authorize(context, Action.EXECUTION_READ, execution_resource(conn, execution, context.tenant.id))
    return execution


@router.get(
    "",
    response_model=ExecutionPage,
    summary="List executions",
    responses={**AUTH_ERRORS, 400: BAD_CURSOR, 422: INVALID},
)
def list_all(
    context: Annotated[RequestContext, Depends(permission(Action.EXECUTION_LIST))],
    conn: TenantConnection,
    status: Annotated[repo.Status | None, Query(description="Only executions in this status.")] = None,
    intent_id: Annotated[UUID | None, Query(description="Only executions of this intent.")] = None,
    created_after: Annotated[
        datetime | None, Query(description="Only executions created at or after this time (RFC 3339).")
    ] = None,
    created_before: Annotated[datetime | None, Query(description="Only executions created before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> ExecutionPage:
    """The tenant's executions, newest first, filtered by status, intent and creation time; cursor-paginated
    (Reader). Each execution is decided as reading it alone is, on its target, requester and intent version's
    labels: the ones a tenant policy forbids the caller are left out, so a page may hold fewer than `limit` items
    (even none) and still name a next page."""
    # The listing is decided on the Tenant (an empty page keeps that one decision); its executions each on itself
    # (ADR 0011, amended 2026-12-07), else a forbid on reading one showed its intent, target, status and requester.
    authorize(context, Action.EXECUTION_LIST, Resource.tenant(context.tenant.id), conn=conn)
    rows, next_cursor = repo.list_executions(
        conn,
        status=status,
        intent_id=intent_id,
        created_after=created_after,
        created_before=created_before,
        cursor=cursor,
        limit=limit,
    )
    readable = readable_executions(context, conn, rows, lambda row: row.id)
    return ExecutionPage(items=[_summary(row) for row in readable], next_cursor=next_cursor)


@router.get(
    "/{execution_id}",
    response_model=ExecutionOut,
    summary="Get an execution",
    responses={**AUTH_ERRORS, 404: EXECUTION_NOT_FOUND, 422: INVALID},
)
def get_one(execution_id: ExecutionId, context: MayRead, conn: TenantConnection) -> ExecutionOut:
    """Status, pinned version, steps with attempts, timings, outputs (or blob references) and errors, and why it
    is waiting, of one execution (Reader)."""
    # One transaction: the steps match the status read.
    execution = load_execution(context, execution_id, conn)
    steps, attempts = list_steps(conn, execution.id), list_attempts(conn, execution.id)
    work: list[work_queue.QueuedItem] = []
    pollers: dict[str, work_queue.Poller] = {}
    now = None
    if any(step["state"] == "waiting" and step["action"] != "approval" for step in steps):
        work, now = work_queue.list_items(conn, execution_id=execution.id)
        pollers = work_queue.pollers(conn, sorted({item.action for item in work}))
    return _out(execution, steps, attempts, work, pollers, now)


_EVENT_STREAM_DOC = (
    "With `Accept: text/event-stream`: server-sent events. Each event as it is recorded, `id` its seq (reconnect with "
    "`Last-Event-ID`, or `?after=`), `event` its type, `data` the event object of the JSON page; a `: keep-alive` "
    "comment when nothing happened for a while; the stream ends after the terminal event (or after a few minutes: "
    "resume from the last id). A `Last-Event-ID` past the execution's last event resumes from its last event; one "
    "at or past the last event of an execution that has ended is answered 204. It also ends when the caller's token "
    "expires (last a `: access ended: token_expired` comment; resume with a renewed token), within seconds of the "
    "tenant's suspension (last a `: access ended: tenant_suspended` comment), and within seconds of a tenant policy "
    "that forbids the caller to read the execution (last a `: access ended: forbidden` comment), or when the execution "
    "is gone (its tenant erased; last a `: access ended: not_found` comment)."
)
_KEEPALIVE_HEADER_DOC = {
    "description": "Server-sent events only: how often, in seconds, the stream sends its `: keep-alive` comment when "
    "nothing happened (the platform's setting, 15 by default, at most 120). A stream silent for about twice this is "
    "broken: reconnect with `Last-Event-ID`.",
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
}


@router.get(
    "/{execution_id}/events",
    response_model=ExecutionEventPage,
    summary="Follow an execution's events",
    responses={
        **AUTH_ERRORS,
        200: {
            "description": "A page of events (JSON), or the live stream (server-sent events).",
            "headers": {event_stream.KEEPALIVE_HEADER: _KEEPALIVE_HEADER_DOC},
            "content": {event_stream.MEDIA_TYPE: {"schema": {"type": "string", "description": _EVENT_STREAM_DOC}}},
        },
        204: {
            "description": "Server-sent events only: the execution has ended and no event follows where the stream "
            "resumes (an EventSource stops reconnecting). A client whose Accept also takes JSON gets the JSON page "
            "instead, its `status` the execution's end and no items."
        },
        404: EXECUTION_NOT_FOUND,
        422: INVALID,
    },
)
async def events(
    execution_id: ExecutionId,
    context: MayRead,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[
        str | None, Header(description="Server-sent events: resume after this event (what the stream's `id` was).")
    ] = None,
    after: Annotated[
        int,
        Query(
            ge=0,
            le=event_stream.MAX_EVENT_ID,
            description="Return events with a seq above this (0: from the start).",
        ),
    ] = 0,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Seconds to wait for an event when none is there yet (long poll); 0 answers at once.",
        ),
    ] = 0,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_EVENTS, description="The most events to return (fewer when they are big: about 1 MiB)."),
    ] = 100,
    *,
    request: Request,
    validator: Annotated[TokenValidator, Depends(token_validator)],
) -> Response:
    """Events with seq > `after`, oldest first: at most `limit` of them and about 1 MiB of their JSON (at least one
    event), so a page of big events holds fewer than `limit` while more follow; go on with `after=next_after` until a
    page has no items. With `wait`, an empty answer is held until an event arrives, the execution has finished, `wait`
    seconds pass or the caller's token expires; then what arrived (possibly nothing) with `next_after`. A poll still
    held when its tenant is suspended, or when a tenant policy added meanwhile forbids the caller to read the execution,
    is answered within seconds as the caller's new requests are: 403 `tenant-suspended` or `forbidden`, without the
    events recorded since. With `Accept: text/event-stream`, the events as server-sent events until the execution
    ends, the caller's token expires, the tenant is suspended or a tenant policy forbids the read (Reader).
    """
    # Async so a waiting client holds no worker thread; every database step runs on one, briefly.
    streaming = event_stream.wants_event_stream(accept)
    if streaming or wait > 0:
        # A stream or a waiting poll goes on deciding the read as the tenant's policies change (`_ReadDecision`).
        execution, reading = await run_in_threadpool(_load_followed, context, execution_id)
    else:
        execution, reading = await run_in_threadpool(load_execution, context, execution_id), None
    if streaming:
        start_after = event_stream.resume_after(last_event_id, after)  # a 422 takes no place among the streams
        if execution.status not in repo.TERMINAL or start_after < execution.last_event_seq:
            # A stream resumed past the last event (a Last-Event-ID no event of this execution had) starts at the last
            # one, so it sends what follows and the terminal event (it waited past them for ever). A position a client
            # was sent is at most the newest seq, which only grows: none of those moves. An `after` is the client's
            # own ask for the events above it, kept as asked (moved back, it sent every event below it again).
            if last_event_id is not None:
                start_after = min(start_after, execution.last_event_seq)
            access = event_stream.StreamAccess(
                context.tenant.id,
                context.principal.entra_tenant_id,
                await _token_expiry(request, validator),
                reading.stream_readable if reading is not None else None,
            )
            slot = event_stream.admit_stream(context.tenant.id, get_settings().QP_EVENT_STREAMS_PER_TENANT)
            try:
                return _event_stream(context, slot, execution_id, start_after, limit, access)
            except BaseException:
                slot.release()  # no response will give it back
                raise
        # Ended, and nothing past where it resumes: an empty stream would end at once and an EventSource reconnect
        # every second for ever; a 204 stops it. A client that also takes JSON gets the page saying the run ended.
        if not event_stream.takes_json(accept):
            return Response(status_code=204)
        after = start_after
    deadline = time.monotonic() + wait
    if wait > 0:
        # A long poll answers (with what there is) by the time its token is refused: the client's next poll, with a
        # renewed token, goes on; nothing is sent on a token that expired.
        expires_at = await _token_expiry(request, validator)
        deadline = min(deadline, time.monotonic() + expires_at - time.time())
    # A waiting poll looks at its tenant as an open stream does, from the same directory at the same interval: the
    # route let the caller in just now, so the first look is one interval on.
    look_at = time.monotonic() + event_stream.TENANT_LOOK_S
    wakeup = get_event_wakeup() if wait > 0 else None
    with contextlib.ExitStack() as stack:
        waiter = stack.enter_context(wakeup.waiting(execution_id)) if wakeup is not None else None
        woken = waiter.event if waiter is not None else None
        permitted = True
        while permitted:
            if waiter is not None:
                waiter.clear()  # before the read: an event appended after it wakes the wait below
            # The stream's read: status and events in one statement, so one snapshot (and one round trip).
            progress, items = await run_in_threadpool(_read_stream, context.tenant.id, execution_id, after, limit)
            if items or progress.terminal or time.monotonic() >= deadline:
                break
            # It reads again when woken, at the deadline, or on its own after `recheck_s` (every DOWN_RECHECK_S
            # while the process does not listen; a listener that loses its connection wakes it, so it then asks
            # again). The permit is given back while waiting: a tenant's long polls count against its bound only
            # while they read. It wakes for the tenant's look too, so a suspension bites within TENANT_LOOK_S.
            read_at = min(deadline, time.monotonic() + recheck_s(wakeup))
            while not (woken is not None and woken.is_set()) and time.monotonic() < read_at:
                permitted = await idle(context, max(0.0, min(read_at, look_at) - time.monotonic()), woken)
                if not permitted:
                    break  # its bound is taken by other requests: answer with what there is, the client polls again
                if time.monotonic() >= look_at:
                    # Before the next read: a poll that outlived its tenant's suspension (or erasure), or the read's
                    # allowance (a tenant policy added since), sends nothing more, and is answered as the tenant's new
                    # requests are.
                    await event_stream.refuse_unless_active(context)
                    if reading is not None:
                        await reading.refuse_unless_readable()
                    look_at = time.monotonic() + event_stream.TENANT_LOOK_S
    # Built and rendered on a worker thread: a page of READ_BYTES of small objects takes a while to validate and
    # write, which on the event loop would hold every other request of the process.
    return await run_in_threadpool(_page_answer, execution_id, progress.status, after, items)


class _ReadDecision:
    """The caller's read of an execution while a long poll waits or a stream is open: decided again, as a new
    request's read would be (and recorded as one), whenever the tenant's policies have changed since it was last
    decided, at the tenant's looks (every TENANT_LOOK_S). A forbid added while a client follows an execution ends
    what it follows within seconds, as the client's next request would be refused; while nothing changed a look
    costs a lookup in the tenant's policy cache (once per its TTL per process, the one statement that refreshes it for
    every decision of the tenant), nothing per event."""

    def __init__(self, context: RequestContext, execution_id: UUID, policies: tuple[str, ...]) -> None:
        self._context, self._execution_id = context, execution_id
        self._policies = policies
        """The tenant's policy texts the read was last decided under (read before that decision)."""

    async def refuse_unless_readable(self) -> None:
        """For a long poll, which holds its request's permit when it looks: nothing while the tenant's policies are
        those of the last decision; else decide the read again, raising the 403 (recorded) or 404 a new request
        would be answered now."""
        policies = await self._changed()
        if policies is not None:
            await self._decide(policies)

    async def stream_readable(self) -> event_stream.Readable:
        """For a stream (`StreamAccess.readable`), which holds no permit: whether the caller may still read; decided
        again (when the policies changed) under a permit of the tenant, as the stream's reads are. "forbidden" when
        refused (403), "not_found" when the execution is gone (404); anything else it raises (the database out of
        reach), and the stream ends."""
        policies = await self._changed()
        if policies is None:
            return "allowed"
        try:
            await event_stream.admitted(self._context.tenant.id, lambda: self._decide(policies))
        except ProblemError as problem:
            if problem.status == 403:
                return "forbidden"
            if problem.status == 404:
                return "not_found"
            raise
        return "allowed"

    async def _changed(self) -> tuple[str, ...] | None:
        """The tenant's policy texts now when they differ from those of the last decision, else None: from the policy
        cache on the event loop while its entry is fresh (most looks), else read on a worker thread (one read per
        tenant at a time, which the others wait for)."""
        policies = policy_cache.cached(self._context.tenant.id)
        if policies is None:
            policies = await run_in_threadpool(tenant_policy_texts, self._context.tenant.id)
        return None if policies == self._policies else policies

    async def _decide(self, policies: tuple[str, ...]) -> None:
        """Decide the read as a new request's is (the execution's labels read again, the decision recorded); raises
        its 403 or 404. `policies`: the texts read before it, which the next look compares with."""
        await run_in_threadpool(load_execution, self._context, self._execution_id)
        self._policies = policies


def _load_followed(context: RequestContext, execution_id: UUID) -> tuple[repo.Execution, _ReadDecision]:
    """`load_execution` for a stream or a waiting poll, with the read's `_ReadDecision`: the tenant's policies are
    read before the decision, so a change after that read is seen as one at the first look."""
    policies = tenant_policy_texts(context.tenant.id)
    return load_execution(context, execution_id), _ReadDecision(context, execution_id, policies)


def _page_answer(execution_id: UUID, status: repo.Status, after: int, items: list[repo.ExecutionEvent]) -> Response:
    """The JSON page of `items`, the events read after `after`, rendered as the route's response model."""
    page = ExecutionEventPage(
        execution_id=execution_id,
        status=status,
        next_after=items[-1].seq if items else after,
        items=[event_out(e) for e in items],
    )
    return Response(page.model_dump_json().encode(), media_type="application/json")


async def _token_expiry(request: Request, validator: TokenValidator) -> float:
    """When the caller's token is refused (a POSIX time): its `exp` plus the leeway the validator allows past it
    (QP_AUTH_LEEWAY_S, which the process's validator is built with). The token was validated for this request a
    moment ago, so the validator answers from what it remembers of it. One it refuses now (expired since, or its keys
    out of reach) counts as expired now: a stream ends at once, and its client's reconnect is answered as any
    request."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        try:
            verified = validator.validate(token, offline=True)
        except KeysNotCachedError:
            verified = await run_in_threadpool(validator.validate, token)
    except InvalidTokenError:
        return time.time()
    return float(verified.claims["exp"]) + get_settings().QP_AUTH_LEEWAY_S


@dataclass(frozen=True)
class _StreamProgress:
    """Where an execution stands, as its stream reads it with a page of its events."""

    status: repo.Status
    last_event_seq: int

    @property
    def terminal(self) -> bool:
        """No event will follow."""
        return self.status in repo.TERMINAL


# The status and the events in one statement, so one snapshot: a terminal status, written in the transaction that
# wrote the terminal event, never comes without it, and the events are never newer than the status either. Only the
# status and the newest seq ride along with each event (the stream needs no more of the execution). The events are
# taken one after another (each the next by seq), adding up what each weighs in the JSON the API sends of it (its
# data as Postgres writes it, a little more than the API's compact JSON, and again what `event_out` lifts out of it: a
# step's output into `result`, an error into `error`), up to `limit` of them and READ_BYTES, always the first: a
# prefix, so a reader goes on from the last event it got. One at a time, so a read sizes only what it returns and the
# one after it: sizing `limit` events to return a few would cost Postgres, for a client walking a history of big events
# page by page, each page's `limit` events again (some 1 s a page of 500 outputs of 64 KiB).
_STREAM_READ = (
    "SELECT x.status, x.last_event_seq, e.seq, e.type, e.step_id, e.data, e.occurred_at FROM app.executions x"
    " LEFT JOIN LATERAL (WITH RECURSIVE page AS ("
    "(SELECT seq, type, step_id, data, occurred_at, 1 AS n,"
    " octet_length(data::text) + coalesce(octet_length((data -> 'error')::text), 0)"
    " + CASE WHEN type = 'step_completed' THEN coalesce(octet_length((data -> 'output')::text), 0) ELSE 0 END AS upto"
    " FROM app.execution_events WHERE execution_id = %(execution_id)s AND seq > %(after)s ORDER BY seq LIMIT 1)"
    " UNION ALL"
    " SELECT e.seq, e.type, e.step_id, e.data, e.occurred_at, page.n + 1, page.upto + e.bytes FROM page"
    " CROSS JOIN LATERAL (SELECT seq, type, step_id, data, occurred_at,"
    " octet_length(data::text) + coalesce(octet_length((data -> 'error')::text), 0)"
    " + CASE WHEN type = 'step_completed' THEN coalesce(octet_length((data -> 'output')::text), 0) ELSE 0 END AS bytes"
    " FROM app.execution_events WHERE execution_id = %(execution_id)s AND seq > page.seq ORDER BY seq LIMIT 1) e"
    " WHERE page.n < %(limit)s AND page.upto + e.bytes <= %(bytes)s)"
    " SELECT seq, type, step_id, data, occurred_at FROM page) e ON true WHERE x.id = %(execution_id)s ORDER BY e.seq"
)


def _read_stream(
    tenant_id: UUID, execution_id: UUID, after: int, limit: int
) -> tuple[_StreamProgress, list[repo.ExecutionEvent]]:
    """One read of an execution's stream or long poll: where it stands and its events after `after`, at most
    `limit` of them and READ_BYTES of their JSON (at least one); 404 (which ends the stream) when it is gone."""
    with tenant_transaction(tenant_id) as conn:
        params = {"execution_id": execution_id, "after": after, "limit": limit, "bytes": READ_BYTES}
        rows = conn.execute(_STREAM_READ, params).fetchall()
    if not rows:  # erased while its stream was open
        raise ProblemError(404, "not-found", "Not found", f"No execution {execution_id}.")
    progress = _StreamProgress(rows[0]["status"], rows[0]["last_event_seq"])
    events = [
        repo.ExecutionEvent(row["seq"], row["type"], row["step_id"], row["data"], row["occurred_at"])
        for row in rows
        if row["seq"] is not None
    ]
    return progress, events


def _event_stream(
    context: RequestContext,
    slot: event_stream.StreamSlot,
    execution_id: UUID,
    after: int,
    limit: int,
    access: event_stream.StreamAccess,
) -> StreamingResponse:
    """The stream's response, which (with its body) gives the stream's admitted `slot` back when it ends, and ends
    when the caller's `access` does."""
    settings = get_settings()

    async def read_page(position: int, size: int) -> tuple[_StreamProgress, list[repo.ExecutionEvent]]:
        return await run_in_threadpool(_read_stream, context.tenant.id, execution_id, position, size)

    body = event_stream.follow(
        context,
        slot,
        execution_id,
        after,
        lambda position: read_page(position, limit),
        lambda event: event_stream.frame(event.seq, event.type, event_out(event)),
        page=limit,
        keepalive_s=settings.QP_EVENT_STREAM_KEEPALIVE_S,
        max_s=settings.QP_EVENT_STREAM_MAX_S,
        read_page=read_page,
        access=access,
    )
    # No cache or proxy may hold the events back; the stream itself is the answer, so nothing is transformed.
    headers = {
        "Cache-Control": "no-cache, no-transform",
        "X-Accel-Buffering": "no",
        event_stream.KEEPALIVE_HEADER: format(settings.QP_EVENT_STREAM_KEEPALIVE_S, "g"),
    }
    return event_stream.EventStreamResponse(body, slot, headers)
