# intent_ref: platform.execution
"""Executions and their numbered events: repository and state machine, inside the caller's tenant transaction."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, get_args
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from shared import telemetry
from shared.auth.principal import Requester
from shared.events.outbox import enqueue_event
from shared.pagination import InvalidCursorError, cursor_text, decode_cursor, encode_cursor

Conn = psycopg.Connection[DictRow]
Status = Literal["pending", "running", "waiting", "succeeded", "failed", "compensating", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
TERMINAL: frozenset[Status] = frozenset({"succeeded", "failed", "cancelled"})

# Every legal move and the event it writes. Terminal statuses have none: a retry or re-run is a new attempt the
# orchestrator records, never a resurrected execution. Cancelling a running execution with completed steps goes
# through compensating first; failing does the same.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    ("pending", "running"): "execution_started",
    ("pending", "failed"): "execution_failed",
    ("pending", "cancelled"): "execution_cancelled",
    ("running", "waiting"): "execution_waiting",
    ("running", "succeeded"): "execution_completed",
    ("running", "failed"): "execution_failed",
    ("running", "compensating"): "execution_compensating",
    ("running", "cancelled"): "execution_cancelled",
    ("waiting", "running"): "execution_resumed",
    ("waiting", "failed"): "execution_failed",
    ("waiting", "compensating"): "execution_compensating",
    ("waiting", "cancelled"): "execution_cancelled",
    ("compensating", "failed"): "execution_failed",
    ("compensating", "cancelled"): "execution_cancelled",
}

_COLUMNS = sql.SQL(
    "id, intent_id, intent_version, target, status, input, output, error, requested_by, idempotency_key,"
    " plan_hash, last_event_seq, created_at, updated_at, finished_at, parent_execution_id, parent_step_id, retry_of,"
    " start_claimed_at, cancel_requested_at, request_sha256, requester_roles, requester_app_only, root_execution_id"
)
# The creating request claims the orchestration's start in the same statement (start_claimed_at).
_INSERT = sql.SQL(
    "INSERT INTO app.executions (tenant_id, id, intent_id, intent_version, target, input, requested_by,"
    " requester_roles, requester_app_only, idempotency_key, plan_hash, parent_execution_id, parent_step_id, retry_of,"
    " request_sha256, root_execution_id, start_claimed_at)"
    " VALUES (app.current_tenant_id(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp())"
    " ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {}"
).format(_COLUMNS)
_BY_KEY = sql.SQL("SELECT {} FROM app.executions WHERE idempotency_key = %s").format(_COLUMNS)
_GET = sql.SQL("SELECT {} FROM app.executions WHERE id = %s").format(_COLUMNS)
_LOCK = sql.SQL("SELECT {} FROM app.executions WHERE id = %s FOR UPDATE").format(_COLUMNS)
# NO KEY UPDATE: what a cancel's UPDATE and the event appends take on the row anyway, so a writer that takes it first
# only takes it earlier, never stronger, and inserts that reference the execution stay free.
_HOLD = sql.SQL("SELECT {} FROM app.executions WHERE id = %s FOR NO KEY UPDATE").format(_COLUMNS)
# Conditional on the status read under the lock, so even a caller that skipped the lock cannot move twice.
_MOVE = sql.SQL(
    "UPDATE app.executions SET status = %s, output = COALESCE(%s, output), error = COALESCE(%s, error),"
    " updated_at = clock_timestamp(), finished_at = CASE WHEN %s THEN clock_timestamp() END"
    " WHERE id = %s AND status = %s RETURNING {}"
).format(_COLUMNS)
_PAGE = sql.SQL("SELECT {} FROM app.executions WHERE {} ORDER BY created_at DESC, id DESC LIMIT %s")
# One statement: the counter's row lock serializes concurrent appenders of one execution, so seq is 1, 2, 3...
# with no gap and no duplicate, and a rolled-back append gives its number back.
_APPEND = (
    "WITH next AS (UPDATE app.executions SET last_event_seq = last_event_seq + 1 WHERE id = %s"
    " RETURNING tenant_id, id, last_event_seq)"
    " INSERT INTO app.execution_events (tenant_id, execution_id, seq, type, step_id, data)"
    " SELECT tenant_id, id, last_event_seq, %s, %s, %s FROM next RETURNING seq"
)
# A child's start walks up its parent chain once (the primary key at each step, under the tenant's RLS). The depth
# guard ends the recursion, even on rows written by hand into a cycle, and the LIMIT bounds what it answers.
_ANCESTORS = (
    "WITH RECURSIVE chain AS ("
    " SELECT id, intent_id, parent_execution_id, 1 AS depth FROM app.executions WHERE id = %(id)s"
    " UNION ALL"
    " SELECT e.id, e.intent_id, e.parent_execution_id, chain.depth + 1 FROM chain"
    " JOIN app.executions e ON e.id = chain.parent_execution_id WHERE chain.depth < %(limit)s)"
    " SELECT id, intent_id, parent_execution_id FROM chain ORDER BY depth LIMIT %(limit)s"
)
# The predicate is migration 0036's partial index's, so the count scans only the root's active descendants, and at
# most `limit` of them.
_ACTIVE_DESCENDANTS = (
    "SELECT count(*) AS n FROM (SELECT 1 FROM app.executions WHERE root_execution_id = %s"
    " AND status IN ('pending', 'running', 'waiting', 'compensating') LIMIT %s) AS active"
)
_EVENTS = (
    "SELECT seq, type, step_id, data, occurred_at FROM app.execution_events"
    " WHERE execution_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)


class ExecutionError(Exception):
    """Base of the execution repository's refusals."""


class ExecutionNotFoundError(ExecutionError):
    """No such execution in the current tenant (another tenant's is not found either)."""


class IllegalTransitionError(ExecutionError):
    """The state machine does not allow this move from the execution's current status."""

    def __init__(self, execution_id: UUID, current: Status, requested: Status) -> None:
        super().__init__(f"execution {execution_id} cannot go from {current} to {requested}")
        self.current = current
        self.requested = requested


@dataclass(frozen=True)
class Execution:
    """One execution row."""

    id: UUID
    intent_id: UUID
    intent_version: int
    target: str
    status: Status
    input: dict[str, Any]
    output: Any
    error: str | None
    requested_by: str
    idempotency_key: str | None
    plan_hash: str | None
    last_event_seq: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    parent_execution_id: UUID | None = None
    parent_step_id: str | None = None
    retry_of: UUID | None = None
    start_claimed_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    request_sha256: str | None = None
    requester_roles: list[str] = field(default_factory=list)
    requester_app_only: bool = False
    root_execution_id: UUID | None = None
    """The root of a child's tree (migration 0036); None on a root and on rows written before it."""

    @property
    def terminal(self) -> bool:
        """No transition leaves this status; no event will follow."""
        return self.status in TERMINAL

    @property
    def requester(self) -> Requester:
        """Who asked for it, with the authority they had then (no roles on a row recorded before they were kept)."""
        return Requester(self.requested_by, frozenset(self.requester_roles), self.requester_app_only)


@dataclass(frozen=True)
class Ancestor:
    """An execution above a child's start: the intent it runs, and its own parent (None on a root)."""

    id: UUID
    intent_id: UUID
    parent_execution_id: UUID | None


@dataclass(frozen=True)
class ExecutionEvent:
    """One event of an execution, numbered from 1 per execution."""

    seq: int
    type: str
    step_id: str | None
    data: dict[str, Any]
    occurred_at: datetime


def _execution(row: DictRow) -> Execution:
    return Execution(**row)


def _one(conn: Conn, query: sql.Composed, params: tuple[Any, ...]) -> Execution | None:
    row = conn.execute(query, params).fetchone()
    return None if row is None else _execution(row)


def create_execution(
    conn: Conn,
    *,
    execution_id: UUID,
    intent_id: UUID,
    intent_version: int,
    target: str,
    input: dict[str, Any],
    requester: Requester,
    idempotency_key: str | None = None,
    plan_hash: str | None = None,
    parent_execution_id: UUID | None = None,
    parent_step_id: str | None = None,
    retry_of: UUID | None = None,
    request_sha256: str | None = None,
    root_execution_id: UUID | None = None,
) -> tuple[Execution, bool]:
    """Insert a pending execution; returns it and whether it is new.

    With an idempotency key already used in the tenant, the existing execution is returned (False) and nothing
    is inserted; a concurrent duplicate waits for the first insert to commit and then finds it.
    """
    created = _one(
        conn,
        _INSERT,
        (
            execution_id,
            intent_id,
            intent_version,
            target,
            Jsonb(input),
            requester.id,
            sorted(requester.roles),
            requester.app_only,
            idempotency_key,
            plan_hash,
            parent_execution_id,
            parent_step_id,
            retry_of,
            request_sha256,
            root_execution_id,
        ),
    )
    if created is not None:
        return created, True
    existing = _one(conn, _BY_KEY, (idempotency_key,))
    assert existing is not None  # the conflict can only be on the key, whose row now exists
    return existing, False


def find_by_key(conn: Conn, idempotency_key: str) -> Execution | None:
    """The execution an idempotency key created in the current tenant, if any."""
    return _one(conn, _BY_KEY, (idempotency_key,))


def hold_execution(conn: Conn, execution_id: UUID) -> Execution:
    """The execution, its row held until `conn` commits. One order for every writer (ADR 0014): an execution's open
    attempts before the execution, so a transaction holding it never waits for one of its attempts (a cancel and the
    sweeper's end take them first, steps.hold_open_attempts; a dispatch holds it and then only begins new ones);
    several executions in creation order. ExecutionNotFoundError when there is none."""
    found = _one(conn, _HOLD, (execution_id,))
    if found is None:
        raise ExecutionNotFoundError(f"No execution {execution_id}.")
    return found


def get_execution(conn: Conn, execution_id: UUID) -> Execution:
    """The execution, or ExecutionNotFoundError."""
    found = _one(conn, _GET, (execution_id,))
    if found is None:
        raise ExecutionNotFoundError(f"No execution {execution_id}.")
    return found


def ancestors(conn: Conn, execution_id: UUID, limit: int) -> list[Ancestor]:
    """`execution_id` and the executions above it, nearest first, at most `limit` of them (one bounded query)."""
    rows = conn.execute(_ANCESTORS, {"id": execution_id, "limit": limit}).fetchall()
    return [Ancestor(**row) for row in rows]


def active_descendants(conn: Conn, root_id: UUID, limit: int) -> int:
    """How many executions of root `root_id`'s tree have not ended (the root not counted), counted up to `limit`."""
    row = conn.execute(_ACTIVE_DESCENDANTS, (root_id, limit)).fetchone()
    return 0 if row is None else int(row["n"])


def append_event(
    conn: Conn, execution_id: UUID, type: str, step_id: str | None = None, data: dict[str, Any] | None = None
) -> int:
    """Append an event and return its seq (gap-free per execution, also under concurrent appenders)."""
    row = conn.execute(_APPEND, (execution_id, type, step_id, Jsonb(data or {}))).fetchone()
    if row is None:
        raise ExecutionNotFoundError(f"No execution {execution_id}.")
    return int(row["seq"])


def transition(
    conn: Conn, execution_id: UUID, new_status: Status, *, output: Any = None, error: str | None = None
) -> tuple[Execution, int]:
    """Move the execution to `new_status` and write the matching event in the same transaction.

    Returns the updated execution and the event's seq; IllegalTransitionError when TRANSITIONS has no such move.
    `output` and `error` are kept when not given (None), so a later move never erases them.
    """
    current = _lock(conn, execution_id)
    return _apply(conn, current, new_status, output=output, error=error)


def transition_held(
    conn: Conn, current: Execution, new_status: Status, *, output: Any = None, error: str | None = None
) -> tuple[Execution, int]:
    """`transition` of an execution this transaction holds: `current` as `hold_execution` (or a move of this
    transaction since) left it. Held, its status cannot change under it, so it is not locked and read again; the row
    keeps the hold's NO KEY UPDATE, which the move's UPDATE takes anyway (ADR 0014's order is the hold's)."""
    return _apply(conn, current, new_status, output=output, error=error)


def transition_from(
    conn: Conn, execution_id: UUID, expected: Status, new_status: Status, *, error: str | None = None
) -> tuple[Execution, int] | None:
    """`transition`, only while the execution is in `expected`; None (nothing written) when it has moved on.

    The status is decided under the row lock, so a caller that read `expected` earlier cannot act on a status a
    concurrent writer has since changed (e.g. end an execution its orchestration has just started).
    """
    current = _lock(conn, execution_id)
    if current.status != expected:
        return None
    return _apply(conn, current, new_status, output=None, error=error)


def _lock(conn: Conn, execution_id: UUID) -> Execution:
    current = _one(conn, _LOCK, (execution_id,))
    if current is None:
        raise ExecutionNotFoundError(f"No execution {execution_id}.")
    return current


def _apply(
    conn: Conn, current: Execution, new_status: Status, *, output: Any, error: str | None
) -> tuple[Execution, int]:
    """The move from `current`, which the caller has read under the row lock."""
    execution_id = current.id
    event_type = TRANSITIONS.get((current.status, new_status))
    if event_type is None:
        raise IllegalTransitionError(execution_id, current.status, new_status)
    moved = _one(
        conn,
        _MOVE,
        (
            new_status,
            None if output is None else Jsonb(output),
            error,
            new_status in TERMINAL,
            execution_id,
            current.status,
        ),
    )
    assert moved is not None  # the row is locked and its status was just read
    data: dict[str, Any] = {"from": current.status, "to": new_status}
    if error is not None:
        data["error"] = error
    seq = append_event(conn, execution_id, event_type, data=data)
    _publish_move(conn, moved, current.status, error, domain_event_type(event_type))
    return replace(moved, last_event_seq=seq), seq


def domain_event_type(stream_event: str) -> str:
    """The platform-events name of an execution stream event: one vocabulary, dotted (execution_completed ->
    execution.completed), as the registry's intent.* and the steps' step.* events are."""
    return "execution." + stream_event.removeprefix("execution_")


def _publish_move(conn: Conn, moved: Execution, previous: Status, error: str | None, event_type: str) -> None:
    """The move's domain event (outbox, this transaction); an end also its telemetry, once this transaction commits."""
    data: dict[str, Any] = {
        "execution_id": str(moved.id),
        "intent_id": str(moved.intent_id),
        "intent_version": moved.intent_version,
        "target": moved.target,
        "from": previous,
        "status": moved.status,
    }
    if error is not None:
        data["error"] = error
    if moved.parent_execution_id is not None:
        data["parent_execution_id"] = str(moved.parent_execution_id)
    if moved.retry_of is not None:
        data["retry_of"] = str(moved.retry_of)
    enqueued = enqueue_event(conn, event_type, f"executions/{moved.id}", data)
    if moved.terminal:
        duration_ms = None
        if moved.finished_at is not None:
            duration_ms = round((moved.finished_at - moved.created_at).total_seconds() * 1000)
        telemetry.emit_on_commit(
            conn,
            event_type,
            tenant_id=enqueued.tenant_id,
            execution_id=moved.id,
            intent_id=moved.intent_id,
            status=moved.status,
            target=moved.target,
            duration_ms=duration_ms,
            error=None if moved.status == "succeeded" else moved.error,
        )


def list_executions(
    conn: Conn,
    *,
    status: Status | None = None,
    intent_id: UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Execution], str | None]:
    """One page of the tenant's executions, newest first, and the next page's cursor (None on the last)."""
    position = decode_cursor(cursor)
    clauses: list[sql.Composable] = [sql.SQL("TRUE")]
    params: list[Any] = []
    if status is not None:
        clauses.append(sql.SQL("status = %s"))
        params.append(status)
    if intent_id is not None:
        clauses.append(sql.SQL("intent_id = %s"))
        params.append(intent_id)
    if created_after is not None:
        clauses.append(sql.SQL("created_at >= %s"))
        params.append(created_after)
    if created_before is not None:
        clauses.append(sql.SQL("created_at < %s"))
        params.append(created_before)
    if position is not None:
        try:
            after = (datetime.fromisoformat(str(cursor_text(position, "t"))), UUID(cursor_text(position, "id")))
        except (TypeError, ValueError):
            raise InvalidCursorError("the cursor is not one this API issued") from None
        clauses.append(sql.SQL("(created_at, id) < (%s, %s)"))
        params.extend(after)
    query = _PAGE.format(_COLUMNS, sql.SQL(" AND ").join(clauses))
    rows = conn.execute(query, (*params, limit + 1)).fetchall()
    page = [_execution(row) for row in rows[:limit]]
    more = len(rows) > limit
    return page, encode_cursor({"t": page[-1].created_at.isoformat(), "id": str(page[-1].id)}) if more else None


def events_after(conn: Conn, execution_id: UUID, after: int, limit: int = 100) -> list[ExecutionEvent]:
    """Events with seq > `after`, oldest first (the execution must be checked to exist by the caller)."""
    rows = conn.execute(_EVENTS, (execution_id, after, limit)).fetchall()
    return [ExecutionEvent(**row) for row in rows]
