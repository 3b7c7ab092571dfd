# intent_ref: platform.execution
"""Steps and step attempts of an execution: each write is conditional, so running it twice records once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from shared import telemetry
from shared.engine.executions import Execution, append_event, hold_execution
from shared.events.outbox import enqueue_event
from shared.modules.contract import Phase as ContractPhase

Conn = psycopg.Connection[DictRow]
Phase = ContractPhase
AttemptState = Literal["dispatched", "succeeded", "failed", "timed_out", "abandoned"]
Delivery = Literal["awaited", "answered", "released", "handed_over", "raising"]


@dataclass(frozen=True)
class StepSeed:
    """A step as the execution starts it: pending, or succeeded already with an output reused from a retry."""

    step_id: str
    action: str
    max_attempts: int
    reused_output: Any = None
    reused: bool = False


@dataclass(frozen=True)
class AttemptKey:
    """Names one attempt of a step's work or of its compensation."""

    execution_id: UUID
    step_id: str
    phase: Phase
    attempt: int

    @property
    def event_name(self) -> str:
        """The external event that carries this attempt's result to the orchestration."""
        return f"{self.phase}:{self.step_id}:{self.attempt}"


@dataclass(frozen=True)
class Attempt:
    """One attempt as recorded."""

    key: AttemptKey
    action: str
    remote: bool
    state: AttemptState
    output: Any
    error: str | None
    retryable: bool | None
    token_nonce: str | None
    token_expires_at: datetime | None
    token_used_at: datetime | None
    dispatched_at: datetime
    finished_at: datetime | None
    delivery: Delivery | None = None
    """Who hands the result to the orchestration (migration 0022): None, the recorder, as always; 'handed_over' once
    the recorder's raise was accepted (migration 0061)."""

    @property
    def finished(self) -> bool:
        return self.state != "dispatched"

    @property
    def raised_by_recorder(self) -> bool:
        """Whether whoever records (or finds) the result raises it: no dispatch waits for it or has answered it, and
        (a remote result, an approval decision) no raise of it was accepted yet (`mark_handed_over`)."""
        return self.delivery not in ("awaited", "answered", "handed_over")

    def verdict(self) -> dict[str, Any]:
        """The result as the orchestration receives it."""
        if self.state == "succeeded":
            return {"ok": True, "output": self.output}
        return {"ok": False, "error": self.error or self.state, "retryable": bool(self.retryable), "state": self.state}


_SEED = (
    "INSERT INTO app.execution_steps (tenant_id, execution_id, step_id, position, action, max_attempts, state,"
    " output, reused, finished_at)"
    " SELECT (SELECT app.current_tenant_id()), %s, s.step_id, s.position - 1, s.action, s.max_attempts, s.state,"
    " s.output, s.reused, CASE WHEN s.reused THEN clock_timestamp() END"
    " FROM unnest(%s::text[], %s::text[], %s::integer[], %s::text[], %s::jsonb[], %s::boolean[])"
    " WITH ORDINALITY AS s (step_id, action, max_attempts, state, output, reused, position)"
    " ON CONFLICT DO NOTHING"
)
_ATTEMPT_COLUMNS = sql.SQL(
    "execution_id, step_id, phase, attempt, action, remote, state, output, error, retryable, token_nonce,"
    " token_expires_at, token_used_at, dispatched_at, finished_at, delivery"
)
_BEGIN = sql.SQL(
    "INSERT INTO app.step_attempts (tenant_id, execution_id, step_id, phase, attempt, action, remote, token_nonce,"
    " token_expires_at, delivery) VALUES (app.current_tenant_id(), %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING RETURNING {}"
).format(_ATTEMPT_COLUMNS)
_GET_ATTEMPT = sql.SQL(
    "SELECT {} FROM app.step_attempts WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s"
).format(_ATTEMPT_COLUMNS)
# NO KEY UPDATE: the lock the result's own UPDATE takes, taken at the read (before the execution's, ADR 0014).
_HOLD_ATTEMPT = sql.SQL(
    "SELECT {} FROM app.step_attempts WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s"
    " FOR NO KEY UPDATE"
).format(_ATTEMPT_COLUMNS)
# The order of ADR 0014: an execution's attempts before the execution, several in key order (ORDER BY under FOR ...
# locks the rows in that order). Only open attempts: a finished one is never waited for by a writer of a result
# (each one's UPDATE is conditional on `dispatched`), so whoever holds it never stands between them.
_HOLD_OPEN = (
    "SELECT 1 FROM app.step_attempts WHERE execution_id = %s AND state = 'dispatched'"
    " ORDER BY step_id, phase, attempt FOR NO KEY UPDATE"
)
_HOLD_OPEN_AGAIN = sql.SQL(
    "SELECT {} FROM app.step_attempts WHERE execution_id = %s AND state = 'dispatched'"
    " ORDER BY step_id, phase, attempt FOR NO KEY UPDATE NOWAIT"
).format(_ATTEMPT_COLUMNS)
_HOLD_KEYS = (
    "SELECT execution_id, step_id, phase, attempt FROM app.step_attempts WHERE (execution_id, step_id, phase, attempt)"
    " IN (SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::int[])) AND state = 'dispatched'"
    " ORDER BY execution_id, step_id, phase, attempt FOR NO KEY UPDATE"
)
_HOLD_FREE_KEYS = _HOLD_KEYS + " SKIP LOCKED"
HOLD_ROUNDS = 20
"""How often `hold_open_attempts` starts over for an attempt committed after its first read, before it gives up."""
_FINISH = sql.SQL(
    "UPDATE app.step_attempts SET state = %s, output = %s, error = %s, retryable = %s,"
    " finished_at = clock_timestamp() WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s"
    " AND state = 'dispatched' RETURNING {}"
).format(_ATTEMPT_COLUMNS)
# A compensation attempt that failed ends its step (compensation_failed, finished) only when it was the last: before
# it, another attempt is due (the reducer retries a compensation up to the step's max_attempts, whatever its error),
# and the step reads compensating until it starts. Answers the state it is in afterwards.
_COMPENSATION_FAILED = (
    "UPDATE app.execution_steps SET state = CASE WHEN %(attempt)s < max_attempts THEN 'compensating'"
    " ELSE 'compensation_failed' END, error = %(error)s, retry_at = NULL, updated_at = clock_timestamp(),"
    " finished_at = CASE WHEN %(attempt)s < max_attempts THEN NULL ELSE clock_timestamp() END"
    " WHERE execution_id = %(execution)s AND step_id = %(step)s RETURNING state"
)
# A compensation's retry, recorded once (a re-run dispatch finds the same time recorded): the step stays compensating.
_COMPENSATION_RETRY = (
    "UPDATE app.execution_steps SET retry_at = %s, error = %s, updated_at = clock_timestamp()"
    " WHERE execution_id = %s AND step_id = %s AND state = 'compensating' AND retry_at IS DISTINCT FROM %s"
    " RETURNING step_id"
)
# A NULL output parameter keeps the stored output (a JSON null output arrives as the jsonb value null).
_STEP_STATE = (
    "UPDATE app.execution_steps SET state = %s, attempt = GREATEST(attempt, %s), error = %s,"
    " retry_at = NULL, output = COALESCE(%s, output), updated_at = clock_timestamp(),"
    " started_at = COALESCE(started_at, CASE WHEN %s THEN clock_timestamp() END),"
    " finished_at = CASE WHEN %s THEN clock_timestamp() END"
    " WHERE execution_id = %s AND step_id = %s"
)
_MOVE_STEP = (
    "UPDATE app.execution_steps SET state = %s, error = COALESCE(%s, error), retry_at = %s,"
    " attempt = GREATEST(attempt, COALESCE(%s::integer, attempt)),"
    " updated_at = clock_timestamp(), finished_at = CASE WHEN %s THEN clock_timestamp() END"
    " WHERE execution_id = %s AND step_id = %s AND state = ANY(%s) RETURNING action, attempt"
)
_STEPS = (
    "SELECT step_id, action, state, attempt, max_attempts, output, error, retry_at, reused, child_execution_id,"
    " started_at, finished_at FROM app.execution_steps WHERE execution_id = %s ORDER BY position"
)
# A step failed for good: `failed`, and not by an attempt the reducer retries (a retryable failure with an attempt
# left, machine.attempt_failed). A step failed before it ran (a note) has no attempt of its number: final too.
_FAILED_FOR_GOOD = (
    "SELECT EXISTS (SELECT 1 FROM app.execution_steps s WHERE s.execution_id = %s AND s.state = 'failed'"
    " AND NOT EXISTS (SELECT 1 FROM app.step_attempts a WHERE a.execution_id = s.execution_id"
    " AND a.step_id = s.step_id AND a.phase = 'run' AND a.attempt = s.attempt AND a.retryable"
    " AND a.attempt < s.max_attempts)) AS failed"
)
_ATTEMPTS = sql.SQL(
    "SELECT {} FROM app.step_attempts WHERE execution_id = %s ORDER BY dispatched_at, step_id, phase, attempt"
).format(_ATTEMPT_COLUMNS)
_USE_TOKEN = sql.SQL(
    "UPDATE app.step_attempts SET token_used_at = clock_timestamp() WHERE token_nonce = %s"
    " AND token_used_at IS NULL AND token_expires_at > clock_timestamp() AND state = 'dispatched'"
    " RETURNING {}"
).format(_ATTEMPT_COLUMNS)
# A waiting dispatch takes the results recorded so far (`final`: and releases the rest to their recorders). The row
# lock orders this against the result's own update, so exactly one of the two hands each result over.
_TAKE = sql.SQL(
    "UPDATE app.step_attempts SET delivery = CASE WHEN state = 'dispatched' THEN 'released' ELSE 'answered' END"
    " WHERE execution_id = %s AND (step_id, phase, attempt) IN (SELECT * FROM unnest(%s::text[], %s::text[],"
    " %s::int[])) AND delivery IN ('awaited', 'answered') AND (%s OR state <> 'dispatched') RETURNING {}"
).format(_ATTEMPT_COLUMNS)
# A result its recorder raised and the task hub accepted (or whose orchestration is gone): the hub holds the event
# until the run takes it, so a repeat of the result raises nothing more. A value of its own (migration 0061): a
# re-run dispatch takes back what it answered itself ('answered', `_TAKE`), never a result someone else raised.
_HANDED_OVER = (
    "UPDATE app.step_attempts SET delivery = 'handed_over' WHERE execution_id = %s AND step_id = %s AND phase = %s"
    " AND attempt = %s AND state <> 'dispatched' AND (delivery IS NULL OR delivery = 'released')"
)
# The same for a cancel's event (migration 0061): set once, by whoever's raise the hub accepted first.
_CANCEL_HANDED_OVER = (
    "UPDATE app.executions SET cancel_raised_at = clock_timestamp() WHERE id = %s"
    " AND cancel_requested_at IS NOT NULL AND cancel_raised_at IS NULL"
)
_CANCEL_RAISED = "SELECT cancel_raised_at IS NOT NULL AS raised FROM app.executions WHERE id = %s"
_ATTEMPT_BY_NONCE = sql.SQL("SELECT {} FROM app.step_attempts WHERE token_nonce = %s").format(_ATTEMPT_COLUMNS)
_SET_CHILD = "UPDATE app.execution_steps SET child_execution_id = %s WHERE execution_id = %s AND step_id = %s"

_RESULT_EVENTS = {
    ("run", True): "step_completed",
    ("run", False): "step_failed",
    ("compensate", True): "compensation_completed",
    ("compensate", False): "compensation_failed",
}
# Domain events (platform-events) of an applied attempt result. An abandoned attempt has none: the step's own move
# to cancelled says what happened.
_OUTCOME_EVENTS: dict[tuple[Phase, AttemptState], str] = {
    ("run", "succeeded"): "step.completed",
    ("run", "failed"): "step.failed",
    ("run", "timed_out"): "step.failed",
    ("compensate", "succeeded"): "step.compensated",
    ("compensate", "failed"): "step.compensation_failed",
    ("compensate", "timed_out"): "step.compensation_failed",
}
# Domain events of a step moved without an attempt result (failed before it ran, skipped by `when`, cancelled).
_MOVE_EVENTS = {"failed": "step.failed", "skipped": "step.skipped", "cancelled": "step.cancelled"}


def _attempt(row: DictRow) -> Attempt:
    key = AttemptKey(row["execution_id"], row["step_id"], row["phase"], row["attempt"])
    fields = {
        name: row[name]
        for name in (
            "action",
            "remote",
            "state",
            "output",
            "error",
            "retryable",
            "token_nonce",
            "token_expires_at",
            "token_used_at",
            "dispatched_at",
            "finished_at",
            "delivery",
        )
    }
    return Attempt(key=key, **fields)


def _key_params(key: AttemptKey) -> tuple[Any, ...]:
    return (key.execution_id, key.step_id, key.phase, key.attempt)


def seed_steps(conn: Conn, execution_id: UUID, steps: Sequence[StepSeed]) -> None:
    """Record every step of a new execution (pending, or succeeded when reused from the retried execution)."""
    # One statement for all of them (a row each from the arrays, in order): a 50-step intent starts with one
    # statement, not fifty.
    conn.execute(
        _SEED,
        (
            execution_id,
            [step.step_id for step in steps],
            [step.action for step in steps],
            [step.max_attempts for step in steps],
            ["succeeded" if step.reused else "pending" for step in steps],
            [Jsonb(step.reused_output) if step.reused else None for step in steps],
            [step.reused for step in steps],
        ),
    )


def _set_step_state(
    conn: Conn,
    execution_id: UUID,
    step_id: str,
    state: str,
    *,
    attempt: int = 0,
    error: str | None = None,
    output: Jsonb | None = None,
    started: bool = False,
    finished: bool = False,
) -> None:
    """Move a step's summary row along with its attempt (no event: the caller writes the one that says why)."""
    conn.execute(_STEP_STATE, (state, attempt, error, output, started, finished, execution_id, step_id))


def move_step(
    conn: Conn,
    execution_id: UUID,
    step_id: str,
    state: str,
    from_states: Sequence[str],
    *,
    error: str | None = None,
    retry_at: datetime | None = None,
    finished: bool = False,
    attempt: int | None = None,
) -> bool:
    """Move a step only from one of `from_states`; False when it was elsewhere (already moved: record nothing).
    `attempt`: the attempt the move is about, when later than the step's (a retry that failed before it began)."""
    row = conn.execute(
        _MOVE_STEP, (state, error, retry_at, attempt, finished, execution_id, step_id, list(from_states))
    ).fetchone()
    if row is None:
        return False
    event_type = _MOVE_EVENTS.get(state)
    if event_type is not None:
        _publish_step(
            conn, event_type, execution_id, step_id, action=row["action"], attempt=row["attempt"], error=error
        )
    return True


def end_compensation_step(conn: Conn, key: AttemptKey, error: str) -> bool:
    """A compensating step whose compensation will not finish ends compensation_failed (finished), with its domain
    event naming the attempt `key`; False when it was no longer compensating (already ended: publish nothing)."""
    row = conn.execute(
        _MOVE_STEP, ("compensation_failed", error, None, None, True, key.execution_id, key.step_id, ["compensating"])
    ).fetchone()
    if row is None:
        return False
    # As a last attempt's failure publishes it (finish_attempt): subscribers hear of every compensation that failed
    # for good, this one too (the sweeper's end, an abandoned attempt), once.
    _publish_step(
        conn,
        "step.compensation_failed",
        key.execution_id,
        key.step_id,
        action=row["action"],
        attempt=key.attempt,
        error=error,
        reason="abandoned",
    )
    return True


def begin_attempt(
    conn: Conn,
    key: AttemptKey,
    *,
    action: str,
    remote: bool,
    token_nonce: str | None = None,
    token_expires_at: datetime | None = None,
    event_data: dict[str, Any] | None = None,
    step_state: str | None = None,
    awaited: bool = False,
) -> tuple[Attempt, bool]:
    """Record an attempt as dispatched and write its start event; returns it and whether this call created it.
    `awaited`: the dispatch waits for its result and answers it (`take_results`), so its recorder does not raise it.

    Run again (a re-executed activity), it changes nothing and returns the recorded attempt.
    """
    delivery = "awaited" if awaited else None
    row = conn.execute(_BEGIN, (*_key_params(key), action, remote, token_nonce, token_expires_at, delivery)).fetchone()
    if row is None:
        existing = conn.execute(_GET_ATTEMPT, _key_params(key)).fetchone()
        assert existing is not None  # the conflict is on this very key
        return _attempt(existing), False
    state = step_state or ("running" if key.phase == "run" else "compensating")
    _set_step_state(
        conn, key.execution_id, key.step_id, state, attempt=key.attempt if key.phase == "run" else 0, started=True
    )
    event = "step_started" if key.phase == "run" else "compensation_started"
    append_event(
        conn, key.execution_id, event, key.step_id, {"attempt": key.attempt, "action": action, **(event_data or {})}
    )
    return _attempt(row), True


def get_attempt(conn: Conn, key: AttemptKey) -> Attempt | None:
    """The recorded attempt, or None."""
    row = conn.execute(_GET_ATTEMPT, _key_params(key)).fetchone()
    return None if row is None else _attempt(row)


def hold_attempt(conn: Conn, key: AttemptKey) -> Attempt | None:
    """The recorded attempt (or None), its row held until `conn` commits: a result recorded meanwhile is waited for
    and read, so a caller deciding on its state decides on the state its own `finish_attempt` will find."""
    row = conn.execute(_HOLD_ATTEMPT, _key_params(key)).fetchone()
    return None if row is None else _attempt(row)


class _StartOver(Exception):
    """An attempt committed after the first read is held by another transaction: let go of everything, read again."""


def hold_open_attempts(conn: Conn, execution_id: UUID) -> tuple[Execution, list[Attempt]]:
    """The execution's open attempts, then the execution, held until `conn` commits: the one order of ADR 0014, which
    every recorder of a result keeps (the attempt, then the execution through its event), for a writer that ends an
    execution's work (a cancel, the sweeper's end). Call it before this transaction holds the execution.

    An attempt a concurrent dispatch commits between the first read and the execution's lock is taken without waiting
    (NOWAIT); when another transaction holds it (its recorder, which then waits for the execution), everything taken
    here is let go (a savepoint) and taken again, that attempt now first: never a wait for an attempt while the
    execution is held. ExecutionNotFoundError when there is none."""
    for round_ in range(1, HOLD_ROUNDS + 1):
        try:
            with conn.transaction():
                conn.execute(_HOLD_OPEN, (execution_id,))
                execution = hold_execution(conn, execution_id)
                try:
                    rows = conn.execute(_HOLD_OPEN_AGAIN, (execution_id,)).fetchall()
                except psycopg.errors.LockNotAvailable:
                    if round_ == HOLD_ROUNDS:
                        raise
                    raise _StartOver from None
                return execution, [_attempt(row) for row in rows]
        except _StartOver:
            continue
    raise AssertionError("unreachable: the last round returns or raises")


def hold_attempts(conn: Conn, keys: Sequence[AttemptKey], *, skip_locked: bool = False) -> set[AttemptKey]:
    """Hold those of `keys` that are open, in key order, until `conn` commits; answers the keys held. `skip_locked`:
    without waiting, leaving out those another transaction holds (for a caller that may hold an execution already)."""
    if not keys:
        return set()
    columns = (
        [key.execution_id for key in keys],
        [key.step_id for key in keys],
        [key.phase for key in keys],
        [key.attempt for key in keys],
    )
    rows = conn.execute(_HOLD_FREE_KEYS if skip_locked else _HOLD_KEYS, columns).fetchall()
    return {AttemptKey(row["execution_id"], row["step_id"], row["phase"], row["attempt"]) for row in rows}


def finish_attempt(
    conn: Conn,
    key: AttemptKey,
    *,
    ok: bool,
    output: Any = None,
    error: str | None = None,
    retryable: bool = True,
    state: AttemptState | None = None,
) -> tuple[Attempt, bool]:
    """Apply an attempt's result once: returns the attempt as recorded and whether this call applied it.

    A result that arrives after another (a duplicate delivery, a late worker after a timeout) changes nothing;
    the caller gets the result that was applied first. An attempt ended `abandoned` is no result: only the attempt is
    recorded, and the caller moves its step (`progress.abandon_step`), whose move says what happened (ADR 0015). A
    failed compensation attempt that is not its step's last leaves the step compensating, with no event: its retry
    is the reducer's to record (`compensation_retrying`), and `compensation_failed` is written when none is left.
    """
    final_state: AttemptState = state or ("succeeded" if ok else "failed")
    row = conn.execute(
        _FINISH,
        (
            final_state,
            Jsonb(output) if ok else None,
            None if ok else error,
            None if ok else retryable,
            *_key_params(key),
        ),
    ).fetchone()
    if row is None:
        existing = conn.execute(_GET_ATTEMPT, _key_params(key)).fetchone()
        if existing is None:
            raise LookupError(f"no attempt {key}")
        return _attempt(existing), False
    attempt = _attempt(row)
    if final_state == "abandoned":
        # Not a result: a step moved to failed here (with step_failed) read as a failure until its cancel moved it on,
        # and its stream ended twice. The caller's move of the step is its one end.
        return attempt, True
    if key.phase == "run":
        _set_step_state(
            conn,
            key.execution_id,
            key.step_id,
            "succeeded" if ok else "failed",
            attempt=key.attempt,
            error=None if ok else error,
            output=Jsonb(output) if ok else None,
            finished=True,
        )
    elif ok:
        _set_step_state(conn, key.execution_id, key.step_id, "compensated", finished=True)
    elif not _compensation_ended(conn, key, error):
        return attempt, True  # another attempt is due: its retry is recorded by the orchestration's next dispatch
    data: dict[str, Any] = {"attempt": key.attempt}
    if ok:
        data["output"] = output
    else:
        data.update(error=error, reason=final_state)
    append_event(conn, key.execution_id, _RESULT_EVENTS[(key.phase, ok)], key.step_id, data)
    event_type = _OUTCOME_EVENTS.get((key.phase, final_state))
    if event_type is not None:
        duration_ms = None
        if attempt.finished_at is not None:
            duration_ms = round((attempt.finished_at - attempt.dispatched_at).total_seconds() * 1000)
        _publish_step(
            conn,
            event_type,
            key.execution_id,
            key.step_id,
            action=attempt.action,
            attempt=key.attempt,
            error=attempt.error,
            reason=None if ok else final_state,
            duration_ms=duration_ms,
        )
    return attempt, True


def _compensation_ended(conn: Conn, key: AttemptKey, error: str | None) -> bool:
    """Record a failed compensation attempt on its step: True when it was the last (the step compensation_failed)."""
    row = conn.execute(
        _COMPENSATION_FAILED,
        {"attempt": key.attempt, "error": error, "execution": key.execution_id, "step": key.step_id},
    ).fetchone()
    return row is None or row["state"] == "compensation_failed"


def note_compensation_retry(
    conn: Conn, execution_id: UUID, step_id: str, retry_at: datetime, error: str | None
) -> bool:
    """Record when a compensating step's next attempt is due (once); False when it is recorded already, or the step
    is no longer compensating."""
    row = conn.execute(_COMPENSATION_RETRY, (retry_at, error, execution_id, step_id, retry_at)).fetchone()
    return row is not None


def take_results(conn: Conn, keys: Sequence[AttemptKey], *, final: bool) -> list[Attempt]:
    """The results of awaited attempts (`begin_attempt(awaited=True)`) recorded so far, now the dispatch's to answer;
    with `final`, the attempts still without one are released, so their recorders raise them.

    Idempotent for a re-run dispatch: an attempt it answered before is answered again, one it released is not."""
    if not keys:
        return []
    execution_id = keys[0].execution_id
    if any(key.execution_id != execution_id for key in keys):
        raise ValueError("one dispatch takes the results of one execution")
    columns = ([key.step_id for key in keys], [key.phase for key in keys], [key.attempt for key in keys])
    rows = conn.execute(_TAKE, (execution_id, *columns, final)).fetchall()
    return [attempt for attempt in map(_attempt, rows) if attempt.delivery == "answered"]


def _publish_step(
    conn: Conn,
    event_type: str,
    execution_id: UUID,
    step_id: str,
    *,
    action: str,
    attempt: int,
    error: str | None = None,
    reason: str | None = None,
    duration_ms: int | None = None,
) -> None:
    """A step's domain event (outbox, the caller's transaction) and, for step.completed/failed, its telemetry (once
    that transaction commits)."""
    data: dict[str, Any] = {"execution_id": str(execution_id), "step_id": step_id, "action": action, "attempt": attempt}
    for name, value in (("error", error), ("reason", reason), ("duration_ms", duration_ms)):
        if value is not None:
            data[name] = value
    enqueued = enqueue_event(conn, event_type, f"executions/{execution_id}/steps/{step_id}", data)
    if event_type in telemetry.EVENTS:
        telemetry.emit_on_commit(
            conn,
            event_type,
            tenant_id=enqueued.tenant_id,
            execution_id=execution_id,
            step_id=step_id,
            action=action,
            attempt=attempt,
            duration_ms=duration_ms,
            reason=reason,
            error=error,
        )


def use_task_token(conn: Conn, nonce: str) -> Attempt | None:
    """Spend a task token: the attempt it was issued for, or None when it is used, expired, unknown, or its attempt
    has ended (timed out, abandoned). The row stays locked until the caller's transaction ends, so the result
    recorded with the spend is the attempt's only one."""
    row = conn.execute(_USE_TOKEN, (nonce,)).fetchone()
    return None if row is None else _attempt(row)


def attempt_by_token(conn: Conn, nonce: str) -> Attempt | None:
    """The attempt a token nonce belongs to (used or not)."""
    row = conn.execute(_ATTEMPT_BY_NONCE, (nonce,)).fetchone()
    return None if row is None else _attempt(row)


def mark_handed_over(conn: Conn, key: AttemptKey) -> None:
    """Record that the attempt's result (a remote result, an approval decision) was handed to its orchestration: the
    task hub accepted its raise, or answered that the orchestration is gone. A repeat of it raises nothing then."""
    conn.execute(_HANDED_OVER, _key_params(key))


def mark_cancel_handed_over(conn: Conn, execution_id: UUID) -> None:
    """Record that the execution's cancel was handed to its orchestration: the task hub accepted its raise, or
    answered that the orchestration is gone. A repeated cancel raises nothing then."""
    conn.execute(_CANCEL_HANDED_OVER, (execution_id,))


def cancel_handed_over(conn: Conn, execution_id: UUID) -> bool:
    """Whether a raise of the execution's cancel was accepted (`mark_cancel_handed_over`)."""
    row = conn.execute(_CANCEL_RAISED, (execution_id,)).fetchone()
    return bool(row and row["raised"])


def set_child(conn: Conn, execution_id: UUID, step_id: str, child_execution_id: UUID) -> None:
    """Link an intent.run step to the child execution it started."""
    conn.execute(_SET_CHILD, (child_execution_id, execution_id, step_id))


def list_steps(conn: Conn, execution_id: UUID) -> list[dict[str, Any]]:
    """The execution's steps in definition order."""
    return list(conn.execute(_STEPS, (execution_id,)).fetchall())


def failed_for_good(conn: Conn, execution_id: UUID) -> bool:
    """Whether a step's final failure is recorded: no retry follows it, so unless a cancel was seen first the run
    stops for it and ends failed (ADR 0014: a failure stays the cause)."""
    row = conn.execute(_FAILED_FOR_GOOD, (execution_id,)).fetchone()
    return bool(row and row["failed"])


def list_attempts(conn: Conn, execution_id: UUID) -> list[Attempt]:
    """Every attempt of the execution, oldest first."""
    return [_attempt(row) for row in conn.execute(_ATTEMPTS, (execution_id,)).fetchall()]


# ------------------------------------------------------------------------------------------- claims (ADR 0026)
ClaimOutcome = Literal["claimed", "finished", "held", "ended", "late", "missing"]
"""What claiming an attempt found: the claim is the caller's; the attempt has a result; another live holder runs it;
its execution has ended; its deadline has passed; there is no such attempt (the tenant was erased)."""

_CLAIM_READ = sql.SQL(
    "SELECT {}, claimed_by, claimed_until, clock_timestamp() AS now,"
    " (SELECT e.status FROM app.executions e WHERE e.tenant_id = a.tenant_id AND e.id = a.execution_id)"
    " AS execution_status"
    " FROM app.step_attempts a WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s"
    " FOR UPDATE"
).format(_ATTEMPT_COLUMNS)
_CLAIM = (
    "UPDATE app.step_attempts SET claimed_by = %s, claimed_until = clock_timestamp() + make_interval(secs => %s),"
    " claims = claims + 1 WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s"
)
# The common case in one statement: a claimable attempt (no result, execution not ended, before its deadline, no
# live holder) is claimed, and the tenant's settings come back with it. The CTE locks the row first, so a concurrent
# claimer waits for this one's commit and then finds the claim held (the UPDATE re-checks its conditions on the row
# as committed). Anything else updates nothing, and the caller decides on a locked read as before.
_CLAIM_FAST = sql.SQL(
    "WITH prior AS (SELECT tenant_id, claimed_by AS prior_holder FROM app.step_attempts"
    " WHERE execution_id = %(e)s AND step_id = %(s)s AND phase = %(p)s AND attempt = %(a)s FOR UPDATE)"
    " UPDATE app.step_attempts a SET claimed_by = %(owner)s,"
    " claimed_until = clock_timestamp() + make_interval(secs => %(lease)s), claims = a.claims + 1 FROM prior"
    " WHERE a.tenant_id = prior.tenant_id AND a.execution_id = %(e)s AND a.step_id = %(s)s AND a.phase = %(p)s"
    " AND a.attempt = %(a)s AND a.state = 'dispatched'"
    " AND clock_timestamp() < a.dispatched_at + make_interval(secs => %(timeout)s)"
    " AND (a.claimed_by IS NULL OR a.claimed_until IS NULL OR a.claimed_until <= clock_timestamp())"
    " AND NOT EXISTS (SELECT 1 FROM app.executions e WHERE e.tenant_id = a.tenant_id AND e.id = a.execution_id"
    " AND e.status IN ('succeeded', 'failed', 'cancelled'))"
    " RETURNING a.execution_id, a.step_id, a.phase, a.attempt, a.action, a.remote, a.state, a.output, a.error,"
    " a.retryable, a.token_nonce, a.token_expires_at, a.token_used_at, a.dispatched_at, a.finished_at, a.delivery,"
    " prior.prior_holder, clock_timestamp() AS now, (SELECT t.settings FROM app.tenants t LIMIT 1) AS tenant_settings"
)
# Not once the execution has ended, as a claim is not taken then (_CLAIM_FAST): an end need not have moved the
# attempt (one committed after the end read its attempts), and a renewal that held let a module waiting for a thread
# start after the end, and one running go on to record its result there. Same statement, the execution by its key.
_RENEW = (
    "UPDATE app.step_attempts a SET claimed_until = clock_timestamp() + make_interval(secs => %s)"
    " WHERE a.execution_id = %s AND a.step_id = %s AND a.phase = %s AND a.attempt = %s AND a.claimed_by = %s"
    " AND a.state = 'dispatched' AND NOT EXISTS (SELECT 1 FROM app.executions e WHERE e.tenant_id = a.tenant_id"
    " AND e.id = a.execution_id AND e.status IN ('succeeded', 'failed', 'cancelled')) RETURNING a.claimed_until"
)
# Nobody's once let go: a renewal of its holder sent before the release and run after it (a heartbeat in flight)
# then finds the claim not its own and holds nothing, and the next copy's claim is no takeover of a lapsed claim.
_RELEASE = (
    "UPDATE app.step_attempts SET claimed_by = NULL, claimed_until = clock_timestamp()"
    " WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s AND claimed_by = %s"
    " AND state = 'dispatched'"
)
_ENDED_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: what was found, and the attempt's deadline on the database's clock."""

    outcome: ClaimOutcome
    attempt: Attempt | None = None
    holder: str | None = None
    """Who holds (or, for a takeover, held) the claim; None when nobody did."""
    deadline: datetime | None = None
    now: datetime | None = None
    settings: dict[str, Any] | None = None
    """The tenant's settings, when the claim read them in the same statement (None: read them separately)."""

    @property
    def remaining_s(self) -> float:
        """Seconds left until the attempt's deadline, measured on one clock (the database's)."""
        if self.deadline is None or self.now is None:
            return 0.0
        return (self.deadline - self.now).total_seconds()


def claim_attempt(conn: Conn, key: AttemptKey, *, owner: str, lease_s: float, timeout_s: float) -> Claim:
    """Claim a dispatched attempt for `owner` for `lease_s` seconds, unless it must not run now.

    The attempt row stays locked until the caller commits, so of two concurrent claimers exactly one gets it; the
    other sees the claim (held) once the first commits. A claim whose lease has lapsed (its holder died or stalled)
    is taken over. The deadline is the dispatch time plus `timeout_s`, the attempt's timeout.
    """
    execution_id, step_id, phase, number = _key_params(key)
    params = {"e": execution_id, "s": step_id, "p": phase, "a": number, "owner": owner, "lease": lease_s}
    claimed = conn.execute(_CLAIM_FAST, {**params, "timeout": timeout_s}).fetchone()
    if claimed is not None:
        attempt = _attempt(claimed)
        deadline = attempt.dispatched_at + timedelta(seconds=timeout_s)
        settings = claimed["tenant_settings"]
        return Claim(
            "claimed", attempt, claimed["prior_holder"], deadline, claimed["now"], dict(settings) if settings else {}
        )
    row = conn.execute(_CLAIM_READ, _key_params(key)).fetchone()
    if row is None:
        return Claim("missing")
    attempt = _attempt(row)
    now: datetime = row["now"]
    deadline = attempt.dispatched_at + timedelta(seconds=timeout_s)
    holder: str | None = row["claimed_by"]
    if row["execution_status"] in _ENDED_STATUSES:
        return Claim("ended", attempt, holder, deadline, now)
    if attempt.finished:
        return Claim("finished", attempt, holder, deadline, now)
    if now >= deadline:
        return Claim("late", attempt, holder, deadline, now)
    if holder is not None and row["claimed_until"] is not None and row["claimed_until"] > now:
        return Claim("held", attempt, holder, deadline, now)
    conn.execute(_CLAIM, (owner, lease_s, *_key_params(key)))
    return Claim("claimed", attempt, holder, deadline, now)


def renew_claim(conn: Conn, key: AttemptKey, *, owner: str, lease_s: float) -> bool:
    """Extend `owner`'s lease; False when the claim is no longer its own, the attempt has a result, or its execution
    has ended (the run then stops: a module not started yet never starts)."""
    return conn.execute(_RENEW, (lease_s, *_key_params(key), owner)).fetchone() is not None


def release_claim(conn: Conn, key: AttemptKey, *, owner: str) -> None:
    """Let `owner`'s lease lapse now, so a redelivery need not wait it out (the run ended without a result)."""
    conn.execute(_RELEASE, (*_key_params(key), owner))
