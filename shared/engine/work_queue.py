# intent_ref: platform.execution
"""A tenant's queue of remote work (ADR 0027): enqueue an attempt, lease items to the tenant's workers, heartbeat,
and end attempts whose lease ran out. Every statement runs in the tenant's own transaction, under RLS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import task_tokens
from shared.engine.dispatch_results import raised_verdict
from shared.engine.steps import Attempt, AttemptKey, Conn
from shared.observability import metrics
from shared.observability.tracing import current_traceparent
from shared.pagination import InvalidCursorError, list_cursor, marked_list_position

QueueStatus = Literal["queued", "leased", "expired"]
LEASE_EXPIRED_ERROR = "the worker's lease expired: it stopped heartbeating before reporting a result"
CANCELLED_QUEUED = "cancelled before a worker took it"
CANCELLED_LEASED = "cancelled: the worker was told on its heartbeat"
ENDED_QUEUED = "the execution ended before a worker took it"
_OPEN_RUN = ("pending", "running", "waiting", "retrying")

_COLUMNS = {
    "cols": sql.SQL(
        "w.id, w.execution_id, w.step_id, w.phase, w.attempt, w.action, w.params, w.enqueued_at, w.deadline,"
        " w.lease_id, w.leased_by, w.leased_at, w.lease_expires_at, w.heartbeat_at, w.progress, w.traceparent"
    ),
    # An item is open while its attempt has no result: any other end (timeout, cancel) takes it off the queue.
    "open": sql.SQL(
        "JOIN app.step_attempts a ON a.tenant_id = w.tenant_id AND a.execution_id = w.execution_id"
        " AND a.step_id = w.step_id AND a.phase = w.phase AND a.attempt = w.attempt AND a.state = 'dispatched'"
    ),
}


def _query(text: str) -> sql.Composed:
    return sql.SQL(text).format(**_COLUMNS)


_ENQUEUE = (
    "INSERT INTO app.work_items"
    " (tenant_id, execution_id, step_id, phase, attempt, action, params, deadline, traceparent)"
    " VALUES (app.current_tenant_id(), %s, %s, %s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s), %s)"
    " ON CONFLICT DO NOTHING"
)
# Oldest first; SKIP LOCKED so that two workers polling at once never get the same item, and neither waits.
# An item whose execution has ended, or a run item whose execution is being cancelled, is picked (and locked) but
# not leased: it comes back marked `stale` for lease() to end, in the same round trip as the lease itself. Such an
# item exists only when a cancel or an end missed it (they end the items they see); it must never start work.
# Nothing at all while the tenant is not active, read from its row as the webhook claim reads it: the edge refuses a
# suspended tenant's new calls, but a call admitted before the suspension (a long poll waiting up to 30 s, or one
# admitted from the directory's few seconds of cache) must not hand its workers new work (ADR 0027, amended
# 2026-12-07).
# Read from the tenant's open attempts (index step_attempts_dispatched), as the expiry is: an item whose attempt
# ended before any worker leased it (cancelled while queued, its execution ended, its step timed out) stays unleased
# for good, and the runtime cannot delete it, so reading the unleased items (index work_items_queued) read every such
# item on each call and re-check. Each open attempt's item is looked up by its key alone (a LATERAL with LIMIT is
# never turned into a join, and no condition is pushed into it: with one on the lease or the action there, the planner
# may read the key through work_items_queued, every unleased item of the action for each open attempt); the items
# that can be leased are the candidates. Only they are then read again, by id, in age order, and locked up to the
# limit, a locked one skipped as before (a second poll at once takes the next ones); a row leased since is read at its
# newest version and dropped. That it is unleased is asked as `num_nulls(lease_id) = 1`, which says the same as
# `lease_id IS NULL` but lets no plan read the ids through work_items_queued (the planner took that index for them).
_LEASE = _query(
    "WITH chosen AS MATERIALIZED (SELECT item.id FROM app.step_attempts a CROSS JOIN LATERAL"
    " (SELECT w.id, w.lease_id, w.action, w.deadline FROM app.work_items w WHERE w.tenant_id = a.tenant_id"
    " AND w.execution_id = a.execution_id AND w.step_id = a.step_id AND w.phase = a.phase AND w.attempt = a.attempt"
    " LIMIT 1) AS item WHERE a.state = 'dispatched' AND item.lease_id IS NULL AND item.action = ANY(%(actions)s)"
    " AND item.deadline > clock_timestamp()"
    " AND EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = a.tenant_id AND t.status = 'active')),"
    " picked AS (SELECT w.tenant_id, w.id, CASE WHEN e.status = ANY(%(terminal)s) THEN 'ended'"
    " WHEN w.phase = 'run' AND e.cancel_requested_at IS NOT NULL THEN 'cancelled' END AS stale"
    " FROM app.work_items w {open} JOIN app.executions e ON e.tenant_id = w.tenant_id AND e.id = w.execution_id"
    " WHERE w.id = ANY(ARRAY(SELECT id FROM chosen)) AND num_nulls(w.lease_id) = 1 AND w.action = ANY(%(actions)s)"
    " AND w.deadline > clock_timestamp()"
    " ORDER BY w.enqueued_at LIMIT %(limit)s FOR UPDATE OF w SKIP LOCKED),"
    " leased AS (UPDATE app.work_items w SET lease_id = gen_random_uuid(), leased_by = %(worker)s,"
    " leased_at = clock_timestamp(), heartbeat_at = NULL, progress = NULL,"
    " lease_expires_at = LEAST(clock_timestamp() + make_interval(secs => %(lease_s)s), w.deadline)"
    " FROM picked WHERE w.tenant_id = picked.tenant_id AND w.id = picked.id AND picked.stale IS NULL"
    " RETURNING {cols}, NULL::text AS stale)"
    " SELECT * FROM leased UNION ALL SELECT {cols}, picked.stale FROM app.work_items w"
    " JOIN picked ON w.tenant_id = picked.tenant_id AND w.id = picked.id WHERE picked.stale IS NOT NULL"
)
_BIND_LEASE_NONCE = (
    "UPDATE app.step_attempts SET token_nonce = %s, token_expires_at = %s WHERE execution_id = %s AND step_id = %s"
    " AND phase = %s AND attempt = %s AND state = 'dispatched'"
)
# Without an event: the execution's end is the last event of its stream, and nothing is written after it.
_ABANDON_SILENTLY = (
    "UPDATE app.step_attempts SET state = 'abandoned', error = %s, retryable = false, finished_at = clock_timestamp()"
    " WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s AND state = 'dispatched'"
)
# Only actions the tenant can have remote work for: a registered module, or one with a queued item (an item outlives
# its module's removal). Any other name a worker asks for is never read back (the wait reason reads the pollers of
# queued items' actions), and recording it let one tenant grow the table without bound (migration 0045). `added`:
# whether the row is new (no row version replaced), which is when the tenant's stale rows are trimmed. A new row's
# foreign key to the tenant (migration 0058) waits on an erasure that holds the tenant row, and is refused once the
# tenant is gone (answered as an unknown tenant's, ADR 0012): without it such a row outlived its erasure.
_POLLED = (
    "INSERT INTO app.work_pollers (tenant_id, action, last_polled_at, last_polled_by)"
    " SELECT app.current_tenant_id(), asked.action, clock_timestamp(), %s"
    " FROM (SELECT DISTINCT action FROM unnest(%s::text[]) AS action) AS asked"
    " WHERE EXISTS (SELECT 1 FROM app.modules m WHERE m.action = asked.action)"
    " OR EXISTS (SELECT 1 FROM app.work_items w WHERE w.lease_id IS NULL AND w.action = asked.action)"
    " ON CONFLICT (tenant_id, action) DO UPDATE SET last_polled_at = EXCLUDED.last_polled_at,"
    " last_polled_by = EXCLUDED.last_polled_by RETURNING xmax = 0 AS added"
)
# When a poll adds a row, the tenant's rows that no poll renewed for this long go, unless their action is still
# registered (app.trim_work_pollers): rows of removed modules do not pile up, and a registered action's row keeps
# saying how long ago a worker last asked for it. Trimmed only on an addition: a steady poll adds nothing.
POLLER_MAX_AGE = timedelta(days=30)
_TRIM_POLLERS = "SELECT app.trim_work_pollers(%s) AS removed"
_ITEM_FOR_UPDATE = _query(
    "SELECT {cols}, a.state AS attempt_state, e.cancel_requested_at, clock_timestamp() AS now"
    " FROM app.work_items w JOIN app.step_attempts a ON a.tenant_id = w.tenant_id"
    " AND a.execution_id = w.execution_id AND a.step_id = w.step_id AND a.phase = w.phase AND a.attempt = w.attempt"
    " JOIN app.executions e ON e.id = w.execution_id WHERE w.id = %s FOR UPDATE OF w"
)
_EXTEND = (
    "UPDATE app.work_items SET heartbeat_at = clock_timestamp(), progress = COALESCE(%s, progress),"
    " lease_expires_at = LEAST(clock_timestamp() + make_interval(secs => %s), deadline)"
    " WHERE id = %s RETURNING lease_expires_at"
)
# Items and attempts stay after they end, and every lease call and re-check runs this: it must read the tenant's
# open attempts only (index step_attempts_dispatched, migration 0045), never its history. Left to the planner, the
# join read every tenant's attempts, or, with that index, walked every leased item ever in lease_expires_at order for
# the LIMIT; here each open attempt's item is looked up by its key (a LATERAL with LIMIT is never turned into a
# join), and only the chosen items are then locked (a lock inside the LATERAL would lock every expired one).
_EXPIRED = _query(
    "WITH chosen AS MATERIALIZED (SELECT item.id FROM app.step_attempts a CROSS JOIN LATERAL"
    " (SELECT w.id, w.lease_expires_at FROM app.work_items w WHERE w.tenant_id = a.tenant_id"
    " AND w.execution_id = a.execution_id AND w.step_id = a.step_id AND w.phase = a.phase AND w.attempt = a.attempt"
    " AND w.lease_id IS NOT NULL AND w.lease_expires_at < clock_timestamp() LIMIT 1) AS item"
    " WHERE a.state = 'dispatched' ORDER BY item.lease_expires_at LIMIT %(limit)s)"
    " SELECT {cols} FROM app.work_items w {open} WHERE w.id = ANY(ARRAY(SELECT id FROM chosen))"
    " AND w.lease_id IS NOT NULL AND w.lease_expires_at < clock_timestamp()"
    " ORDER BY w.lease_expires_at FOR UPDATE OF w SKIP LOCKED"
)
# Several executions are held in the order they were created (a parent before its children: the child's row is
# inserted after the parent's has committed), then by id. Two expiries (two polls, a poll and the sweeper) then wait on
# each other in one order, never in a cycle, and so does an expiry with a writer that takes a parent and then its child
# (the sweeper's end passing its cancel down, a failed intent.run stopping its child). The second: without waiting.
_HOLD_EXECUTIONS = "SELECT id FROM app.executions WHERE id = ANY(%s) ORDER BY created_at, id FOR NO KEY UPDATE"
_HOLD_FREE_EXECUTIONS = _HOLD_EXECUTIONS + " SKIP LOCKED"
# SKIP LOCKED: an item another transaction holds is a lease poll's (it either hands the item out, before this cancel,
# or ends it as stale, after), and waiting for it deadlocked with a poll that then holds this execution's parent.
_QUEUED_OF_EXECUTION = _query(
    "SELECT {cols} FROM app.work_items w {open} WHERE w.execution_id = %s AND w.phase = 'run'"
    " AND w.lease_id IS NULL FOR UPDATE OF w SKIP LOCKED"
)
_LIVE_LEASE = (
    "SELECT w.lease_expires_at > clock_timestamp() AS live FROM app.work_items w WHERE w.execution_id = %s"
    " AND w.step_id = %s AND w.phase = %s AND w.attempt = %s AND w.lease_id = %s FOR UPDATE OF w"
)
# The same for the list: each open attempt's item is looked up by its key alone, so items whose attempt ended
# unleased (and every ended item) are never read, however many there are.
_LIST = _query(
    "SELECT {cols}, clock_timestamp() AS now FROM app.step_attempts a CROSS JOIN LATERAL"
    " (SELECT * FROM app.work_items w WHERE w.tenant_id = a.tenant_id AND w.execution_id = a.execution_id"
    " AND w.step_id = a.step_id AND w.phase = a.phase AND w.attempt = a.attempt LIMIT 1) AS w"
    " WHERE a.state = 'dispatched' AND (%(execution)s::uuid IS NULL OR a.execution_id = %(execution)s)"
    " AND (%(action)s::text IS NULL OR w.action = %(action)s) AND CASE %(status)s::text"
    " WHEN 'queued' THEN w.lease_id IS NULL WHEN 'leased' THEN w.lease_expires_at >= clock_timestamp()"
    " WHEN 'expired' THEN w.lease_expires_at < clock_timestamp() ELSE true END"
    " AND (%(after_at)s::timestamptz IS NULL"
    " OR (w.enqueued_at, w.id) > (%(after_at)s::timestamptz, %(after_id)s::uuid))"
    " ORDER BY w.enqueued_at, w.id LIMIT %(limit)s"
)
_NOW = "SELECT clock_timestamp() AS now"
# An attempt this module ends (an expiry, a heartbeat's cancel, a stale item) is marked in the ending transaction as
# one whose verdict is still to be handed over (migration 0064), and marked handed over once the task hub takes its
# raise; whatever stays marked is raised again by the sweeper (`raising_verdicts`): a raise that failed, or a host
# that died after the commit, is made good. Remote attempts are never awaited, so their delivery is NULL until then.
_RAISING = (
    "UPDATE app.step_attempts SET delivery = 'raising' WHERE (execution_id, step_id, phase, attempt) IN"
    " (SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::int[])) AND state <> 'dispatched'"
    " AND delivery IS NULL"
)
# Without waiting: a row another transaction holds is being marked by it too (a route's mark meeting the sweeper's),
# and two marks waiting on rows taken in other orders could deadlock; a row left unmarked costs one more raise.
_RAISED = (
    "UPDATE app.step_attempts a SET delivery = 'handed_over' FROM (SELECT tenant_id, execution_id, step_id, phase,"
    " attempt FROM app.step_attempts WHERE (execution_id, step_id, phase, attempt) IN"
    " (SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::int[])) AND delivery = 'raising'"
    " FOR NO KEY UPDATE SKIP LOCKED) AS held WHERE a.tenant_id = held.tenant_id AND a.execution_id = held.execution_id"
    " AND a.step_id = held.step_id AND a.phase = held.phase AND a.attempt = held.attempt"
)
# Oldest first; the execution's status says whether anyone still waits for the verdict (index step_attempts_raising).
_STILL_RAISING = (
    "SELECT a.execution_id, a.step_id, a.phase, a.attempt, e.status = ANY(%(terminal)s) AS ended"
    " FROM app.step_attempts a JOIN app.executions e ON e.tenant_id = a.tenant_id AND e.id = a.execution_id"
    " WHERE a.delivery = 'raising' AND a.finished_at < clock_timestamp() - make_interval(secs => %(grace_s)s)"
    " ORDER BY a.finished_at LIMIT %(limit)s"
)
_POLLERS = "SELECT action, last_polled_at, last_polled_by FROM app.work_pollers WHERE action = ANY(%s)"


@dataclass(frozen=True)
class QueuedItem:
    """A work item as stored, with what its lease says."""

    id: UUID
    key: AttemptKey
    action: str
    params: dict[str, Any]
    enqueued_at: datetime
    deadline: datetime
    lease_id: UUID | None
    leased_by: str | None
    leased_at: datetime | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    progress: dict[str, Any] | None
    traceparent: str | None = None

    def status(self, now: datetime) -> QueueStatus:
        if self.lease_id is None:
            return "queued"
        assert self.lease_expires_at is not None  # set with every lease
        return "leased" if self.lease_expires_at >= now else "expired"

    @property
    def idempotency_key(self) -> str:
        """Names this attempt (handed out once): a worker dedups repeats within it on this; an effect that must
        happen once per step across attempts is keyed on `<execution_id>:<step_id>:<phase>` instead."""
        key = self.key
        return f"{key.execution_id}:{key.step_id}:{key.phase}:{key.attempt}"


@dataclass(frozen=True)
class Lease:
    """An item handed to a worker, with the token that completes it (bound to this lease)."""

    item: QueuedItem
    task_token: str


def _item(row: dict[str, Any]) -> QueuedItem:
    return QueuedItem(
        id=row["id"],
        key=AttemptKey(row["execution_id"], row["step_id"], row["phase"], row["attempt"]),
        action=row["action"],
        params=row["params"],
        enqueued_at=row["enqueued_at"],
        deadline=row["deadline"],
        lease_id=row["lease_id"],
        leased_by=row["leased_by"],
        leased_at=row["leased_at"],
        lease_expires_at=row["lease_expires_at"],
        heartbeat_at=row["heartbeat_at"],
        progress=row["progress"],
        traceparent=row.get("traceparent"),
    )


def enqueue(conn: Conn, key: AttemptKey, *, action: str, params: dict[str, Any], timeout_s: int) -> None:
    """Queue a remote attempt for the tenant's workers (once: a re-executed dispatch adds nothing), with the trace
    context of the dispatch, which the worker continues."""
    params_row = (key.execution_id, key.step_id, key.phase, key.attempt, action, Jsonb(params), max(1, timeout_s))
    conn.execute(_ENQUEUE, (*params_row, current_traceparent()))


@dataclass(frozen=True)
class LeaseRound:
    """What one lease call did: the leases it handed out, and the attempts of stale items it ended instead, whose
    verdicts the caller raises once its transaction has committed (as cancel_queued's)."""

    leases: list[Lease] = field(default_factory=list)
    ended: list[Attempt] = field(default_factory=list)


def record_poll(conn: Conn, *, actions: Sequence[str], worker: str) -> None:
    """Record that `worker` polled for those of `actions` the tenant can have remote work for (a registered module,
    or an action with a queued item); when that adds a row, trim the tenant's rows long unpolled."""
    rows = conn.execute(_POLLED, (worker, list(actions))).fetchall()
    if any(row["added"] for row in rows):
        conn.execute(_TRIM_POLLERS, (POLLER_MAX_AGE,))


def lease(
    conn: Conn,
    tenant_id: UUID,
    *,
    actions: Sequence[str],
    max_items: int,
    lease_s: float,
    worker: str,
    record: bool = True,
) -> LeaseRound:
    """Lease up to `max_items` of the tenant's queued items of `actions`, oldest first, each with a task token
    whose nonce is its lease id; with `record`, records that the worker polled for these actions (record_poll: a
    long poll's re-checks are the same poll and record nothing).

    An item of an ended execution, or a run item of one being cancelled, is ended here instead (as cancel_queued
    ends it; one whose attempt or execution another transaction holds is left to the next poll) and counts against
    `max_items`: this poll answers fewer items, the next one the rest. Their attempts
    come back in `ended`: an orchestration may still wait on one, and without its verdict would wait for the
    step's timeout.

    A tenant that is not active (suspended since the call was admitted) is leased nothing, and its stale items are
    left to a later poll: its workers get no new work (ADR 0027, amended 2026-12-07)."""
    from shared.engine.progress import abandon_step  # progress enqueues through this module

    if record:
        record_poll(conn, actions=actions, worker=worker)
    params = {
        "actions": list(actions),
        "limit": max_items,
        "worker": worker,
        "lease_s": lease_s,
        "terminal": sorted(repo.TERMINAL),
    }
    done = LeaseRound()
    rows = conn.execute(_LEASE, params).fetchall()
    # The attempts of stale items, then their executions (ADR 0014's one order), neither waited for: this transaction
    # may hold executions already (its expiry's), and whoever holds one of these rows is ending it or about to (a
    # recorder, a cancel, an end). An item left out is not leased either, and the next poll ends it if still open.
    items = [(row, _item(row)) for row in rows]
    stale_keys = [item.key for row, item in items if row["stale"] is not None]
    held = store.hold_attempts(conn, stale_keys, skip_locked=True)
    executions = _hold_free_executions(conn, [key.execution_id for key in held])
    for row, item in items:
        if row["stale"] is not None:
            if item.key not in held or item.key.execution_id not in executions:
                continue
            if row["stale"] == "cancelled":
                abandon_step(conn, item.key, CANCELLED_QUEUED)
            else:
                _end_quietly(conn, item.key)
            ended = store.get_attempt(conn, item.key)
            if ended is not None:
                done.ended.append(ended)
            continue
        if item.leased_at is not None:
            metrics.work_queue_lag(tenant_id, item.action, (item.leased_at - item.enqueued_at).total_seconds())
        token = task_tokens.issue(conn, tenant_id, item.key, 0, nonce=str(item.lease_id), expires_at=item.deadline)
        key = item.key
        conn.execute(
            _BIND_LEASE_NONCE, (token.nonce, token.expires_at, key.execution_id, key.step_id, key.phase, key.attempt)
        )
        done.leases.append(Lease(item=item, task_token=token.token))
    _mark(conn, _RAISING, [attempt.key for attempt in done.ended])
    return done


def _end_quietly(conn: Conn, key: AttemptKey) -> None:
    """End an attempt of an execution that has ended: recorded abandoned, its step moved to its end, no event."""
    conn.execute(_ABANDON_SILENTLY, (ENDED_QUEUED, key.execution_id, key.step_id, key.phase, key.attempt))
    state, moved_from = ("cancelled", _OPEN_RUN) if key.phase == "run" else ("compensation_failed", ("compensating",))
    store.move_step(conn, key.execution_id, key.step_id, state, moved_from, finished=True, error=ENDED_QUEUED)


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat found: the lease extended, or the item cancelled (its attempt ended here)."""

    item: QueuedItem
    lease_expires_at: datetime | None
    cancelled: Attempt | None = None


class WorkItemNotFoundError(Exception):
    """No item of the caller's tenant has this id."""


class LeaseNotHeldError(Exception):
    """The lease has expired or moved on, or the item's attempt has ended; nothing was changed."""


def heartbeat(
    conn: Conn, item_id: UUID, lease_id: UUID, *, extend_s: float, progress: dict[str, Any] | None
) -> Heartbeat:
    """Extend a held lease (never past the attempt's deadline) and record progress; when the execution is being
    cancelled, end the attempt instead (`cancelled` is the attempt, whose verdict the caller raises)."""
    row = conn.execute(_ITEM_FOR_UPDATE, (item_id,)).fetchone()
    if row is None:
        raise WorkItemNotFoundError(f"no work item {item_id}")
    item = _item(row)
    if item.lease_id != lease_id:
        raise LeaseNotHeldError("the lease has moved on: this item was leased again or never by this lease")
    if row["attempt_state"] != "dispatched":
        state = row["attempt_state"]
        # Only an attempt that succeeded or failed has a result; one timed out or abandoned ended without it.
        recorded = "its result is recorded already" if state in ("succeeded", "failed") else "no result was recorded"
        raise LeaseNotHeldError(f"the attempt has ended ({state}); {recorded}")
    assert item.lease_expires_at is not None  # leased
    if item.lease_expires_at < row["now"]:
        raise LeaseNotHeldError("the lease has expired; the attempt is ended or about to be, as the step's retry says")
    if row["cancel_requested_at"] is not None and item.key.phase == "run":
        from shared.engine.progress import abandon_step  # progress enqueues through this module

        abandon_step(conn, item.key, CANCELLED_LEASED)
        _mark(conn, _RAISING, [item.key])
        attempt = store.get_attempt(conn, item.key)
        assert attempt is not None  # it was there a moment ago, in this transaction
        return Heartbeat(item=item, lease_expires_at=None, cancelled=attempt)
    extended = conn.execute(_EXTEND, (Jsonb(progress) if progress is not None else None, extend_s, item_id)).fetchone()
    assert extended is not None  # locked above
    return Heartbeat(item=item, lease_expires_at=extended["lease_expires_at"])


def lease_is_live(conn: Conn, key: AttemptKey, lease_id: str) -> bool:
    """Whether the attempt's item is held under `lease_id` and that lease has not run out (locks the item, so an
    expiry cannot overtake the result being recorded)."""
    try:
        lease_uuid = UUID(lease_id)
    except ValueError:
        return False
    row = conn.execute(_LIVE_LEASE, (key.execution_id, key.step_id, key.phase, key.attempt, lease_uuid)).fetchone()
    return bool(row and row["live"])


@dataclass(frozen=True)
class Expired(Attempt):
    """An attempt its lease's expiry ended, whose verdict is the one read in the transaction that ended it: it says
    whether a cancel was recorded first (`cancel_first`, rules 7, ADR 0014), which a read after the commit could not
    tell apart from one recorded since."""

    raised: dict[str, Any] | None = None

    @classmethod
    def of(cls, attempt: Attempt, raised: dict[str, Any]) -> Expired:
        return cls(**{item.name: getattr(attempt, item.name) for item in fields(attempt)}, raised=raised)

    def verdict(self) -> dict[str, Any]:
        """The result as the orchestration receives it: as read when the attempt ended."""
        return dict(self.raised) if self.raised is not None else super().verdict()


def expire_leases(conn: Conn, *, limit: int = 100) -> list[Expired]:
    """End the attempts of the tenant's items whose lease ran out (retryable: the step's policy decides whether a
    next attempt is queued); returns them with the verdicts the caller raises to their orchestrations."""
    keys = [_item(row).key for row in conn.execute(_EXPIRED, {"limit": limit}).fetchall()]
    if not keys:
        return []
    # Their attempts, then their executions (ADR 0014's one order). An attempt another transaction holds is skipped:
    # its result is being recorded, or a cancel or an end is ending it (its item stays open if nothing does, and the
    # next expiry finds it). The executions are waited for, in creation order: no writer holding one waits for an
    # attempt, or for another execution out of that order.
    held = store.hold_attempts(conn, keys, skip_locked=True)
    _hold_executions(conn, [key.execution_id for key in held])
    ended: list[Expired] = []
    for key in keys:
        if key not in held:
            continue  # its result is being recorded by whoever holds it, or was recorded since the items were read
        attempt, applied = store.finish_attempt(
            conn, key, ok=False, error=LEASE_EXPIRED_ERROR, retryable=True, state="timed_out"
        )
        if applied:
            # Its execution is held above: a cancel recorded is one that committed first (the step's last attempt
            # then ends the run cancelled, as the cancel's 202 said, whichever event reaches the run first).
            ended.append(Expired.of(attempt, raised_verdict(conn, attempt)))
    _mark(conn, _RAISING, [attempt.key for attempt in ended])
    return ended


def _mark(conn: Conn, statement: str, keys: Sequence[AttemptKey]) -> None:
    """Run a delivery mark (`_RAISING`, `_RAISED`) over these attempts, in one statement (nothing when none)."""
    if keys:
        columns = zip(*((key.execution_id, key.step_id, key.phase, key.attempt) for key in keys), strict=True)
        conn.execute(statement, tuple(list(column) for column in columns))


def mark_handed_over(conn: Conn, keys: Sequence[AttemptKey]) -> None:
    """Record that the verdicts of these attempts, which this module ended, were handed to their orchestrations (the
    task hub accepted the raise, or answered that the orchestration is gone): the sweeper raises them no more."""
    _mark(conn, _RAISED, keys)


def raising_verdicts(conn: Conn, *, grace_s: float, limit: int = 100) -> list[Expired]:
    """The tenant's attempts that this module ended more than `grace_s` ago whose verdicts no raise has handed over
    yet (it failed, timed out, or its host died after the commit), oldest first, to be raised again. Those of an
    execution that has ended are marked handed over instead: no orchestration waits for them any more."""
    rows = conn.execute(
        _STILL_RAISING, {"terminal": sorted(repo.TERMINAL), "grace_s": grace_s, "limit": limit}
    ).fetchall()
    keys = [
        (AttemptKey(row["execution_id"], row["step_id"], row["phase"], row["attempt"]), row["ended"]) for row in rows
    ]
    mark_handed_over(conn, [key for key, ended in keys if ended])
    found = (store.get_attempt(conn, key) for key, ended in keys if not ended)
    # Read again now, as a repeated result's verdict is (`raised_verdict`): a cancel recorded since is only ever one
    # this failure does not stop the run for, and the run ends cancelled either way.
    return [Expired.of(attempt, raised_verdict(conn, attempt)) for attempt in found if attempt is not None]


def _hold_executions(conn: Conn, execution_ids: Sequence[UUID]) -> None:
    """Hold these executions' rows, in creation order (nothing when there are none)."""
    if execution_ids:
        conn.execute(_HOLD_EXECUTIONS, (list(set(execution_ids)),))


def _hold_free_executions(conn: Conn, execution_ids: Sequence[UUID]) -> set[UUID]:
    """Hold those of these executions' rows no other transaction holds, without waiting; answers their ids."""
    if not execution_ids:
        return set()
    rows = conn.execute(_HOLD_FREE_EXECUTIONS, (list(set(execution_ids)),)).fetchall()
    return {row["id"] for row in rows}


def cancel_queued(conn: Conn, execution_id: UUID) -> list[Attempt]:
    """End the run-phase items of an execution that no worker holds (a cancel reaches them at once); returns
    their attempts, marked `raising` as every attempt this module ends is, whose verdicts the caller hands over
    (`remote.hand_over_verdicts`): one whose raise fails is raised again by the sweeper, as a repeated cancel finds
    nothing left to end."""
    from shared.engine.progress import abandon_step  # progress enqueues through this module

    keys = [_item(row).key for row in conn.execute(_QUEUED_OF_EXECUTION, (execution_id,)).fetchall()]
    for key in keys:
        abandon_step(conn, key, CANCELLED_QUEUED)
    _mark(conn, _RAISING, keys)
    found = (store.get_attempt(conn, key) for key in keys)
    return [attempt for attempt in found if attempt is not None]


def list_items(
    conn: Conn,
    *,
    action: str | None = None,
    status: QueueStatus | None = None,
    execution_id: UUID | None = None,
    limit: int = 100,
    after: tuple[datetime, UUID] | None = None,
) -> tuple[list[QueuedItem], datetime]:
    """The tenant's open items (their attempt has no result yet), oldest first (by `enqueued_at`, then `id`), those
    after the item `after` names (its `enqueued_at` and `id`) when given, and the database's now."""
    after_at, after_id = after if after is not None else (None, None)
    params = {
        "action": action,
        "status": status,
        "execution": execution_id,
        "limit": limit,
        "after_at": after_at,
        "after_id": after_id,
    }
    rows = conn.execute(_LIST, params).fetchall()
    if rows:
        now: datetime = rows[0]["now"]
    else:
        row = conn.execute(_NOW).fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        now = row["now"]
    return [_item(row) for row in rows], now


LIST_NAME = "work"
"""The name the queue's list marks its cursors with, so that no other list's cursor pages it."""


def _list_after(cursor: str | None) -> tuple[datetime, UUID] | None:
    """The sort key (`enqueued_at`, `id`) of the last item of the page before `cursor`'s (None: the first page);
    InvalidCursorError for a cursor this list did not issue."""
    after = marked_list_position(cursor, LIST_NAME, "after")
    if after is None:
        return None
    refused = InvalidCursorError("the cursor is not one this list issued")
    if not (isinstance(after, list) and len(after) == 2 and all(isinstance(part, str) for part in after)):
        raise refused
    try:
        at, item_id = datetime.fromisoformat(after[0]), UUID(after[1])
    except ValueError:
        raise refused from None
    # Issued with its offset: a time without one would be read in the session's zone, a position never issued.
    if at.tzinfo is None:
        raise refused
    return at, item_id


def list_page(
    conn: Conn,
    *,
    action: str | None = None,
    status: QueueStatus | None = None,
    execution_id: UUID | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> tuple[list[QueuedItem], datetime, str | None]:
    """One page of the tenant's open items, oldest first, the database's now, and the cursor of the next page (None
    on the last). The cursor holds the last item's sort key, so items queued or ended between pages neither shift
    nor repeat the ones after it."""
    rows, now = list_items(
        conn, action=action, status=status, execution_id=execution_id, limit=limit + 1, after=_list_after(cursor)
    )
    page = rows[:limit]
    if len(rows) <= limit:
        return page, now, None
    last = page[-1]
    return page, now, list_cursor(LIST_NAME, {"after": [last.enqueued_at.isoformat(), str(last.id)]})


@dataclass(frozen=True)
class Poller:
    """When a worker of the tenant last asked for an action, and who."""

    action: str
    last_polled_at: datetime
    last_polled_by: str


def pollers(conn: Conn, actions: Sequence[str]) -> dict[str, Poller]:
    """The last poll for each of `actions` that a worker ever asked for."""
    rows = conn.execute(_POLLERS, (list(actions),)).fetchall()
    return {row["action"]: Poller(row["action"], row["last_polled_at"], row["last_polled_by"]) for row in rows}
