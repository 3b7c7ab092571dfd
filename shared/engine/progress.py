# intent_ref: platform.execution
"""What the orchestrator's activities do: record progress in Postgres (idempotently) and dispatch module work."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from shared.check_gate import UNBOUNDED
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import machine, work_queue
from shared.engine import steps as store
from shared.engine.control import AlreadyFailingError, AlreadyFinishedError, cancel_held, parent_principal
from shared.engine.dispatch_results import await_results, raised_verdict, verdicts
from shared.engine.payloads import claim_check
from shared.engine.protocol import WorkItem
from shared.engine.start import (
    ChildRefusedError,
    InputCheck,
    PendingInputCheck,
    StartError,
    StartForbiddenError,
    StartRequest,
    authorized_item,
    descendant_limit,
    input_to_check,
    rebuild_input,
    start_execution,
)
from shared.engine.start_service import authorize_child, checked_first
from shared.engine.steps import AttemptKey
from shared.engine.work_hub import publish_work
from shared.free_text import neutralised
from shared.modules import BUILTIN_MODULES
from shared.observability.tracing import continued_span, current_traceparent, execution_attributes
from shared.policy.facts import TenantFacts
from shared.registry import service as registry
from shared.registry.catalog import IntentRunParams
from shared.registry.repository import find_head
from shared.tenants.models import Tenant
from shared.tenants.repository import get_tenant

logger = logging.getLogger(__name__)


class DispatchRequest(BaseModel):
    """The dispatch_step activity's input: one attempt of a step's work or of its compensation."""

    model_config = ConfigDict(extra="forbid")

    execution_id: UUID
    tenant_id: UUID
    step_id: str
    phase: Literal["run", "compensate"]
    attempt: int
    action: str
    params: dict[str, Any]
    remote: bool
    timeout_s: int | None = None

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.execution_id, self.step_id, self.phase, self.attempt)


def dispatch_step(raw: dict[str, Any]) -> None:
    """Record the attempt, then put built-in work on `module-work` (remote work goes to the tenant's queue in the
    same transaction). Run again after a crash, it records nothing new and publishes the same work again, which the
    worker recognises as a duplicate."""
    request = DispatchRequest.model_validate(raw)
    with tenant_transaction(request.tenant_id) as conn:
        item = _record_dispatch(conn, request)
    publish_work([item] if item is not None else [])


def _record_dispatch(conn: store.Conn, request: DispatchRequest, *, awaited: bool = False) -> WorkItem | None:
    """Record a module attempt; a remote one is queued for the tenant's own workers (ADR 0027: nothing of it goes
    on the shared hub), a built-in one answers the work item to publish. `awaited`: the dispatch waits for the
    built-in attempt's result and answers it itself (ADR 0034)."""
    key = request.key
    store.begin_attempt(
        conn,
        key,
        action=request.action,
        remote=request.remote,
        step_state="waiting" if request.remote and request.phase == "run" else None,
        awaited=awaited,
    )
    if request.remote:
        timeout_s = request.timeout_s or get_settings().QP_TASK_TOKEN_TTL_S
        work_queue.enqueue(conn, key, action=request.action, params=request.params, timeout_s=timeout_s)
        return None
    return WorkItem(
        tenant_id=request.tenant_id,
        execution_id=request.execution_id,
        step_id=request.step_id,
        phase=request.phase,
        attempt=request.attempt,
        action=request.action,
        params=request.params,
        remote=False,
        timeout_s=request.timeout_s,
    )


class ProgressRequest(BaseModel):
    """The record_progress activity's input: what happened, to which execution, step and attempt."""

    model_config = ConfigDict(extra="allow")

    kind: Literal[
        "execution",
        "skipped",
        "retrying",
        "abandon",
        "approval_requested",
        "begin",
        "settle",
        "start_child",
        "step_failed",
    ]
    execution_id: UUID
    tenant_id: UUID
    step_id: str | None = None
    phase: Literal["run", "compensate"] = "run"
    attempt: int = 1

    def field(self, name: str, default: Any = None) -> Any:
        return (self.model_extra or {}).get(name, default)

    @property
    def key(self) -> AttemptKey:
        assert self.step_id is not None  # every step kind names its step
        return AttemptKey(self.execution_id, self.step_id, self.phase, self.attempt)


def abandon_step(conn: store.Conn, key: AttemptKey, reason: str) -> None:
    """End a step that will not finish: its attempt abandoned, the step cancelled with `reason` (each once); for a
    compensation, the step compensation_failed. The step's move is the one event (ADR 0015): the attempt has none.
    A run attempt its recorder ended first with a failure no retry follows keeps that end (`_ended_for_good`)."""
    if store.get_attempt(conn, key) is not None:
        ended, applied = store.finish_attempt(conn, key, ok=False, error=reason, retryable=False, state="abandoned")
        if not applied and _ended_for_good(ended):
            return
    _end_abandoned_step(conn, key, reason)


def _ended_for_good(attempt: store.Attempt) -> bool:
    """Whether a run attempt found ended is its step's end already: a failure with no retry (an approval rejected
    after the cancel was recorded, before the run ended its waits), during the cancel (ADR 0014, rules 7). Moved on
    to cancelled it ended twice: `step_failed` then `step_cancelled`, both published. A retry pause's attempt failed
    retryable, and its step still moves from `failed` when the pause ends."""
    return attempt.key.phase == "run" and attempt.state in ("failed", "timed_out") and not attempt.retryable


def _end_abandoned_step(conn: store.Conn, key: AttemptKey, reason: str) -> None:
    """`abandon_step`'s move of the step, for a caller that has ended its attempt already."""
    if key.phase == "run":
        # `failed`: a step whose attempt failed and whose retry is abandoned before it was recorded.
        moves_from = ("pending", "running", "waiting", "retrying", "failed")
        _cancel_step(conn, key.execution_id, key.step_id, reason, moves_from)
    else:
        end_compensation(conn, key, reason)


def end_compensation(conn: store.Conn, key: AttemptKey, reason: str) -> None:
    """A compensating step whose compensation will not finish (its attempt abandoned, or its retry never to come)
    ends compensation_failed with `reason`, and its event (once)."""
    if store.end_compensation_step(conn, key, reason):
        data = {"attempt": key.attempt, "error": reason, "reason": "abandoned"}
        repo.append_event(conn, key.execution_id, "compensation_failed", key.step_id, data)


def _cancel_step(conn: store.Conn, execution_id: UUID, step_id: str, reason: str, moves_from: tuple[str, ...]) -> None:
    """The step cancelled with `reason` and its event, if it is in one of `moves_from` (once)."""
    if store.move_step(conn, execution_id, step_id, "cancelled", moves_from, finished=True, error=reason):
        repo.append_event(conn, execution_id, "step_cancelled", step_id, {"reason": reason})


def record_progress(raw: dict[str, Any]) -> Any:
    """Apply one progress record; each kind is idempotent, so a re-executed activity records once."""
    request = ProgressRequest.model_validate(raw)
    if request.kind == "start_child":
        return _start_child(request)
    if request.kind == "settle":
        return _settle(request)
    with tenant_transaction(request.tenant_id) as conn:
        if request.kind == "execution":
            return _move(
                conn,
                request.execution_id,
                request.field("status"),
                output=request.field("output"),
                error=request.field("error"),
            )
        step_id = request.step_id
        assert step_id is not None  # every other kind names its step
        if request.kind == "skipped":
            if store.move_step(conn, request.execution_id, step_id, "skipped", ("pending",), finished=True):
                repo.append_event(conn, request.execution_id, "step_skipped", step_id, {"reason": "when is false"})
        elif request.kind == "step_failed":
            if store.move_step(
                conn, request.execution_id, step_id, "failed", ("pending",), finished=True, error=request.field("error")
            ):
                repo.append_event(
                    conn,
                    request.execution_id,
                    "step_failed",
                    step_id,
                    {"attempt": request.attempt, "error": request.field("error")},
                )
        elif request.kind == "retrying":
            retry_at = datetime.fromisoformat(request.field("retry_at"))
            if store.move_step(
                conn,
                request.execution_id,
                step_id,
                "retrying",
                ("failed",),
                retry_at=retry_at,
                error=request.field("error"),
            ):
                repo.append_event(
                    conn,
                    request.execution_id,
                    "step_retrying",
                    step_id,
                    {
                        "attempt": request.attempt,
                        "next_attempt": request.field("next_attempt"),
                        "max_attempts": request.field("max_attempts"),
                        "retry_at": request.field("retry_at"),
                        "error": request.field("error"),
                    },
                )
        elif request.kind == "abandon":
            abandon_step(conn, request.key, str(request.field("reason", "cancelled")))
        elif request.kind == "approval_requested":
            params = request.field("params") or {}
            _, new = store.begin_attempt(conn, request.key, action="approval", remote=False, step_state="waiting")
            if new:
                repo.append_event(
                    conn,
                    request.execution_id,
                    "approval_requested",
                    step_id,
                    {
                        "attempt": request.attempt,
                        "message": shown_message(params.get("message")),
                        # As resolved, as the second generation records it: `or []` read a null, an empty string
                        # or a zero as none named, and so admitted every Approver.
                        "approvers": params.get("approvers", []),
                    },
                )
        elif request.kind == "begin":
            store.begin_attempt(conn, request.key, action=str(request.field("action")), remote=False)
    return None


def _move(
    conn: store.Conn,
    execution_id: UUID,
    status: repo.Status,
    *,
    output: Any,
    error: str | None,
    current: repo.Execution | None = None,
) -> dict[str, Any]:
    """Move the execution to `status` unless it is there already (a re-executed activity) or has ended; `current`:
    the execution as this transaction holds it (`repo.hold_execution`, or a move of this transaction since), if the
    caller does.

    Returns the status it is in afterwards and whether a cancel was requested, so the orchestrator's first
    record learns of a cancel that came before it started.
    """
    return _move_answer(_moved(conn, execution_id, status, output=output, error=error, current=current))


def _moved(
    conn: store.Conn,
    execution_id: UUID,
    status: repo.Status,
    *,
    output: Any,
    error: str | None,
    current: repo.Execution | None = None,
) -> repo.Execution:
    """`_move`, answering the execution as it is afterwards (held by this transaction once it moved)."""
    # A row this transaction holds cannot change under it: moved as it was read, not locked and read again. One
    # read without the lock is taken again under it by the first move.
    held = current is not None
    current = current or repo.get_execution(conn, execution_id)
    if current.status != status and not current.terminal:
        if (current.status, status) not in repo.TRANSITIONS and (current.status, "running") in repo.TRANSITIONS:
            # An execution that ends while recorded as waiting resumes first: the stream shows both moves.
            current = _transition(conn, current, "running", held=held, output=None, error=None)
            held = True
        current = _transition(conn, current, status, held=held, output=output, error=error)
    return current


def _transition(
    conn: store.Conn, current: repo.Execution, status: repo.Status, *, held: bool, output: Any, error: str | None
) -> repo.Execution:
    """One move from `current`; an execution this transaction does not hold yet is locked and read first."""
    if held:
        moved, _ = repo.transition_held(conn, current, status, output=output, error=error)
    else:
        moved, _ = repo.transition(conn, current.id, status, output=output, error=error)
    return moved


def _settle(request: ProgressRequest) -> dict[str, Any]:
    """Record an outcome the orchestrator observed (a timeout, a timer, a child's end); answer the verdict applied."""
    ok = bool(request.field("ok"))
    output = request.field("output")
    if ok:
        output = claim_check(request.tenant_id, request.key, output)
    with tenant_transaction(request.tenant_id) as conn:
        attempt, _ = store.finish_attempt(
            conn,
            request.key,
            ok=ok,
            output=output,
            error=request.field("error"),
            retryable=bool(request.field("retryable", True)),
            state=request.field("state"),
        )
    return attempt.verdict()


def _start_child(request: ProgressRequest) -> dict[str, Any]:
    """Start an intent.run step's child execution (same tenant); answers its id and orchestration input, or the
    step's verdict when the child cannot start (which no retry would change)."""
    try:
        params = IntentRunParams.model_validate(request.field("params") or {})
    except ValueError as exc:
        return {"verdict": _fail_child(request, f"invalid parameters for intent.run: {exc}")}
    child = _ChildStart(request, params)
    try:
        # Its input is checked between a short read and the writing transaction, as a direct start's is: a tenant's
        # costly schema must not hold one of the pool's connections while its children start.
        # A costly check waits for its tenant's turn without a deadline: no connection is held while it waits, and
        # a 429 here would fail the dispatch, whose few quick retries a tenant's burst of large children outlasts,
        # failing the parent for good.
        answer = checked_first(child.read, child.start, tenant_id=request.tenant_id, wait_s=UNBOUNDED)
    except _RefusedFirst as refused:
        answer = refused.error
    if isinstance(answer, str):
        return {"verdict": _fail_child(request, answer)}
    return answer


class _RefusedFirst(Exception):
    """A child refused by the read before its input's check (its decision, or an unknown version): `error`, why."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class _ChildRequest:
    """A child's start request and its decision, made once: the input's check stands only for that very request's
    input, and the decision, asked again by the writing transaction, is neither made nor audited again."""

    start: StartRequest
    authorize: Callable[[registry.Item], None]


class _ChildStart:
    """An intent.run step's child start in the transactions `checked_first` runs: a short read that decides the child
    and reads what its input's check needs, then the transaction that records the attempt and starts the child (or
    finds it by its key) with that check's outcome."""

    def __init__(self, request: ProgressRequest, params: IntentRunParams) -> None:
        self.request = request
        self.params = params
        self.prepared: _ChildRequest | None = None

    def read(self) -> tuple[PendingInputCheck, TenantFacts] | None:
        """What the child's input check needs (None: nothing to check before); a refusal by the decision or of an
        unknown version, which the writing transaction would make before any check, is raised as _RefusedFirst."""
        with tenant_transaction(self.request.tenant_id) as conn:
            attempt = store.get_attempt(conn, self.request.key)
            if attempt is not None and attempt.finished:
                return None  # the writing transaction answers its recorded verdict
            tenant = get_tenant(conn, self.request.tenant_id)
            assert tenant is not None  # the execution's own tenant row
            prepared = self._prepare(conn, tenant)
            if prepared is None or tenant.status != "active":
                return None  # refused by the writing transaction, before any check
            try:
                authorized_item(conn, prepared.start, prepared.authorize)
            except StartError as exc:
                raise _RefusedFirst(_child_refusal(self.params.intent, exc)) from None
            # A replay answers its child's input rebuilt from the recorded version and input: that is what is checked.
            pending = input_to_check(conn, prepared.start, rebuilt=True)
        return None if pending is None else (pending, tenant.facts())

    def _prepare(self, conn: store.Conn, tenant: Tenant) -> _ChildRequest | None:
        """The request and decision of the child the step's intent names now (None: none is active), kept while it
        names the same one."""
        head = find_head(conn, "intent", self.params.intent)
        if head is None:
            self.prepared = None
        elif self.prepared is None or self.prepared.start.intent_id != head.id:
            key = self.request.key
            parent = repo.get_execution(conn, self.request.execution_id)
            start = StartRequest(
                intent_id=head.id,
                input=self.params.inputs,
                version=self.params.version,
                idempotency_key=f"child:{self.request.execution_id}:{key.step_id}:{key.attempt}",
                requester=parent.requester,
                parent_execution_id=parent.id,
                parent_step_id=key.step_id,
            )
            # Audited in the transaction open when it is decided: the read's, or the writing one's for a version
            # saved in between with another target or labels.
            self.prepared = _ChildRequest(start, authorize_child(None, tenant, parent, key.step_id))
        return self.prepared

    def start(self, input_check: InputCheck | None) -> dict[str, Any] | str:
        """The writing transaction: the child's id and orchestration input, its step's recorded verdict, or why the
        child cannot start."""
        key = self.request.key
        with tenant_transaction(self.request.tenant_id) as conn:
            tenant = get_tenant(conn, self.request.tenant_id)
            assert tenant is not None  # the execution's own tenant row
            attempt, _ = store.begin_attempt(conn, key, action="intent.run", remote=False)
            if attempt.finished:
                # Run before, and refused (a re-executed activity): the recorded verdict stands, even where the tree
                # has room by now, for the step is recorded failed and its orchestration may have moved on.
                return {"verdict": raised_verdict(conn, attempt)}
            prepared = self.prepared or self._prepare(conn, tenant)
            if prepared is None:
                return f"no active intent named {self.params.intent!r} in this tenant"
            try:
                started = start_execution(
                    conn,
                    tenant.facts(),
                    prepared.start,
                    # Exempt from the tenant's quota so a parent never waits on its own (ADR 0014); bounded instead
                    # by depth, no recursion, and the active descendants of its root and of all the tenant's roots.
                    max_concurrent=10**9,
                    authorize=prepared.authorize,
                    max_descendants=descendant_limit(tenant.quotas),
                    input_check=input_check,
                )
            except (StartError, ChildRefusedError) as exc:
                return _child_refusal(self.params.intent, exc)
            store.set_child(conn, self.request.execution_id, key.step_id, started.execution.id)
            # Run before (a re-executed activity): the same child, whose input is rebuilt the same way.
            child_input = started.orchestration_input or rebuild_input(
                conn, tenant.facts(), started.execution, input_check=input_check
            )
            return {"execution_id": str(started.execution.id), "input": child_input}


def _child_refusal(intent: str, exc: StartError | ChildRefusedError) -> str:
    """Why a child cannot start, as its step's error."""
    if isinstance(exc, StartForbiddenError):
        return f"child intent {intent} cannot start: its requester may not execute it ({exc.reason})"
    # A child refused its place in the tree fails its step as any refused start does, not retryable: a recursion or
    # a depth is refused again, and a tree at its bound should shrink, not be asked again.
    return f"child intent {intent} cannot start: {exc}"


def _fail_child(request: ProgressRequest, error: str) -> dict[str, Any]:
    """Record the intent.run step's attempt failed with `error`, not retryable; answers its verdict."""
    with tenant_transaction(request.tenant_id) as conn:
        if store.get_attempt(conn, request.key) is None:
            store.begin_attempt(conn, request.key, action="intent.run", remote=False)
        attempt, _ = store.finish_attempt(conn, request.key, ok=False, error=error, retryable=False)
        # Its dispatch's answer says whether a cancel was recorded as the dispatch committed; one since is told here.
        return raised_verdict(conn, attempt)


# ---------------------------------------------------------------------------------- second-generation activities
MAX_CARRIED_LEVELS = 16
"""Levels one dispatch carries on to at most (ADR 0036), so that one activity stays short."""


def dispatch_steps(batch: machine.DispatchSteps) -> machine.DispatchAnswer:
    """Dispatch a batch (`_dispatch`); a carrying one then carries on (ADR 0036): it reduces its own answer as the
    orchestration will, and while that asks for one more carrying dispatch of quick built-in steps only, it runs
    that dispatch too, answering each level it carried on to in `then`."""
    if batch.carry is None:
        return _dispatch(batch)
    carrier = _Carrier(batch.carry)
    answer = _dispatch(batch, carrying=True, then=carrier.prepare)
    return answer.model_copy(update={"then": carrier.carry_on(answer)})


@dataclass(frozen=True)
class _Next:
    """The level a carrying dispatch carries on to: the orchestration's state once it has reduced the answer before
    it, the activity call it would schedule, and that call's batch."""

    state: machine.State
    call: machine.CallActivity
    batch: machine.DispatchSteps


@dataclass(frozen=True)
class _Prepared:
    """A next level recorded in the transaction that took the last result of the level before it."""

    after: machine.DispatchAnswer
    next: _Next
    recorded: _Recorded


class _Carrier:
    """Carries a dispatch on through quick levels (ADR 0036). The next level's records are written in the
    transaction that takes the last result of the level before it, when every result came within the wait: one
    transaction per level fewer, and none between a step's result and its successor's start."""

    def __init__(self, carry: machine.Carry) -> None:
        self._state = machine.State.model_validate(carry.state)
        self._activity_id = carry.activity_id
        self._levels_left = MAX_CARRIED_LEVELS
        self._wait_s = get_settings().QP_DISPATCH_RESULT_WAIT_MS / 1000
        self._prepared: _Prepared | None = None

    def _next(self, answer: machine.DispatchAnswer) -> _Next | None:
        """The level to carry on to after `answer`, as the orchestration will reduce it; None when it asks for
        anything else (or the carried levels are used up)."""
        if self._levels_left <= 0:
            return None
        done = machine.ActivityDone(self._activity_id, answer.model_dump(mode="json"), datetime.now(UTC))
        state, commands = machine.reduce(self._state, done)
        call = machine.carried_on(state, commands)
        if call is None:
            return None
        batch = call.input
        assert isinstance(batch, machine.DispatchSteps)  # carried_on answers dispatches only
        if not all(_awaits(start, self._wait_s) for start in batch.starts):
            return None  # the orchestration asks for it: a step that may take long is not waited for here
        return _Next(state, call, batch)

    def prepare(self, conn: store.Conn, answer: machine.DispatchAnswer) -> None:
        """In the transaction that takes a level's last result: record the level it carries on to, if any."""
        found = self._next(answer)
        if found is not None:
            self._prepared = _Prepared(answer, found, _record_batch(conn, found.batch, carrying=True))

    def carry_on(self, answer: machine.DispatchAnswer) -> list[machine.Carried]:
        """Run the levels this dispatch carries on to, each answered in turn."""
        rounds: list[machine.Carried] = []
        while True:
            prepared, self._prepared = self._prepared, None
            recorded: _Recorded | None = None
            if prepared is not None and prepared.after == answer:
                found: _Next | None = prepared.next
                recorded = prepared.recorded
            else:
                # Not prepared (a result came after the wait, or there was nothing to take): reduced here.
                found = self._next(answer)
            if found is None:
                return rounds
            self._state, self._activity_id = found.state, found.call.id
            self._levels_left -= 1
            batch = found.batch
            attributes = execution_attributes(tenant_id=batch.tenant_id, execution_id=batch.execution_id)
            with continued_span("activity dispatch_steps", current_traceparent(), attributes):
                answer = _dispatch(batch, carrying=True, recorded=recorded, then=self.prepare)
            rounds.append(machine.Carried(id=found.call.id, batch_sha256=batch.digest(), answer=answer))


@dataclass(frozen=True)
class _Recorded:
    """What a dispatch's transaction recorded, for what the dispatch does once it has committed."""

    items: list[WorkItem]
    awaited: list[AttemptKey]
    children: list[machine.StepStart]
    moved: dict[str, Any]
    refused: bool
    answer: machine.DispatchAnswer | None = None
    """The whole answer already (the execution has ended): nothing is published, started or awaited."""


def _dispatch(
    batch: machine.DispatchSteps,
    *,
    carrying: bool = False,
    recorded: _Recorded | None = None,
    then: Callable[[store.Conn, machine.DispatchAnswer], None] | None = None,
) -> machine.DispatchAnswer:
    """Record a batch's notes and starts in one transaction (`_record_batch`; or take `recorded`, written in a
    transaction of the caller's), then publish its module work in one send and start its child executions; then wait
    a moment for the results of its built-in attempts and answer those recorded meanwhile (ADR 0034). `then` runs in
    the transaction that takes the last result, with the answer, when every one came within the wait."""
    tenant_id, execution_id = UUID(batch.tenant_id), UUID(batch.execution_id)
    if recorded is None:
        with tenant_transaction(tenant_id) as conn:
            recorded = _record_batch(conn, batch, carrying=carrying)
    if recorded.answer is not None:
        return recorded.answer
    publish_work(recorded.items)
    children: dict[str, machine.ChildStart] = {}
    for start in recorded.children:
        started = _start_child(
            ProgressRequest(
                kind="start_child",
                execution_id=execution_id,
                tenant_id=tenant_id,
                step_id=start.step_id,
                phase="run",
                attempt=start.attempt,
                action=start.action,
                params=start.params,
            )
        )
        children[start.step_id] = machine.ChildStart.model_validate(started)
    awaited, wait_s = recorded.awaited, get_settings().QP_DISPATCH_RESULT_WAIT_MS / 1000
    on_all: Callable[[store.Conn, dict[str, machine.Verdict]], None] | None = None
    finish = None
    if batch.finish is not None and not recorded.refused and len(awaited) == len(batch.starts):
        finish = _Finish(execution_id, batch.finish, {key.event_name: key.step_id for key in awaited})
        on_all = finish.record
    elif then is not None:
        then_ = then

        def on_all(conn: store.Conn, answered: dict[str, machine.Verdict]) -> None:
            then_(conn, _answer(recorded, children, answered))

    results = await_results(tenant_id, awaited, wait_s, on_all)
    return _answer(recorded, children, results, None if finish is None else finish.moved)


def _answer(
    recorded: _Recorded,
    children: dict[str, machine.ChildStart],
    results: dict[str, machine.Verdict],
    moved: dict[str, Any] | None = None,
) -> machine.DispatchAnswer:
    """A dispatch's answer: the execution's status as its transaction left it (`moved`: as a recorded success left
    it), its children and the results it took."""
    moved = moved or recorded.moved
    return machine.DispatchAnswer(
        status=machine.Status(moved["status"]),
        cancel_requested=bool(moved["cancel_requested"]),
        refused=recorded.refused,
        children=children,
        results=results,
    )


def _record_batch(conn: store.Conn, batch: machine.DispatchSteps, *, carrying: bool) -> _Recorded:
    """A dispatch's transaction: its notes and starts (the execution's move to running first, to waiting last).

    Starts of the run phase are refused when the execution has ended or a cancel is recorded: a cancel whose event
    was not seen (raised while the orchestration continued as new) still stops the run."""
    tenant_id, execution_id = UUID(batch.tenant_id), UUID(batch.execution_id)
    items: list[WorkItem] = []
    awaited: list[AttemptKey] = []
    children: list[machine.StepStart] = []
    wait_s = get_settings().QP_DISPATCH_RESULT_WAIT_MS / 1000
    # The attempts its abandoned notes end, before the execution (ADR 0014's one order): under the execution's lock,
    # waiting for one that a decision or a timeout holds (and which then waits for the execution) was a deadlock.
    # They exist already (the orchestration saw them start); a batch without such a note takes nothing more here.
    abandoned = [_abandoned_key(execution_id, note) for note in batch.notes if note.kind not in _NOT_ABANDONED]
    if abandoned:
        store.hold_attempts(conn, abandoned)
    # Held before anything new is recorded: a cancel either commits before this (and the run starts are refused) or
    # waits for it (and its cancel_queued then sees the items queued here).
    current = repo.hold_execution(conn, execution_id)
    if current.terminal and (batch.finish is not None or carrying) and current.status == "succeeded":
        # Run again after it (or the level it carried on to last, ADR 0036) recorded the run's success with its
        # results (a crash lost its answer): the same answer again, from the results it took then.
        # Every start was awaited then (the setting may have changed since): only what it answered comes back.
        keys = [_key(execution_id, start) for start in batch.starts if start.kind is machine.StepKind.MODULE]
        taken = store.take_results(conn, keys, final=True)
        answer = machine.DispatchAnswer(
            status=machine.Status.SUCCEEDED,
            cancel_requested=current.cancel_requested_at is not None,
            results=verdicts(conn, taken),
        )
        return _Recorded([], [], [], {}, False, answer)
    if current.terminal:
        answer = machine.DispatchAnswer(
            status=machine.Status(current.status),
            cancel_requested=current.cancel_requested_at is not None,
            refused=True,
        )
        return _Recorded([], [], [], {}, True, answer)
    if batch.status is machine.Status.RUNNING and current.status == "pending":
        current = _moved(conn, execution_id, "running", output=None, error=None, current=current)
    refused = current.cancel_requested_at is not None
    for note in batch.notes:
        _note(conn, execution_id, note)
    for start in batch.starts:
        if refused and start.phase is machine.Phase.RUN:
            if start.attempt > 1:
                # A retry refused for a cancel the orchestration has not seen yet: its pause ends here, or the step
                # stays `retrying` in an execution that ends cancelled (the reducer drops it as never started).
                _cancel_step(conn, execution_id, start.step_id, "cancelled", ("retrying",))
            continue
        key = _key(execution_id, start)
        if start.kind is machine.StepKind.INTENT:
            children.append(start)
        elif start.kind is machine.StepKind.APPROVAL:
            _, new = store.begin_attempt(conn, key, action="approval", remote=False, step_state="waiting")
            if new:
                data = {
                    "attempt": start.attempt,
                    "message": shown_message(start.params.get("message")),
                    # As resolved, not `or []`: an empty string or a zero named no one, and so admitted every Approver.
                    "approvers": start.params.get("approvers", []),
                }
                repo.append_event(conn, execution_id, "approval_requested", start.step_id, data)
        elif start.kind is machine.StepKind.WAIT:
            store.begin_attempt(conn, key, action=start.action, remote=False)
        else:
            request = DispatchRequest(
                execution_id=execution_id,
                tenant_id=tenant_id,
                step_id=start.step_id,
                phase=start.phase.value,
                attempt=start.attempt,
                action=start.action,
                params=start.params,
                remote=start.remote,
                timeout_s=start.timeout_s,
            )
            waits = _awaits(start, wait_s)
            item = _record_dispatch(conn, request, awaited=waits)
            if item is not None:
                items.append(item)
            if waits:
                awaited.append(key)
    # `current` is still what the row holds: it is held, and nothing since moved it or recorded its cancel.
    if batch.status is not None and not refused:
        # Last, so a reader that sees execution_waiting can already read what it waits for.
        moved = _move(conn, execution_id, batch.status.value, output=None, error=None, current=current)
    else:
        moved = _move_answer(current)  # nothing here moves the execution
    return _Recorded(items, awaited, children, moved, refused)


class _Finish:
    """The run's success, recorded with its last level's results when every one of them is answered ok."""

    def __init__(self, execution_id: UUID, outputs: dict[str, Any], steps: dict[str, str]) -> None:
        self._execution_id, self._outputs, self._steps = execution_id, outputs, steps
        self.moved: dict[str, Any] | None = None

    def record(self, conn: store.Conn, answered: dict[str, machine.Verdict]) -> None:
        """In the transaction that took the last result: the execution succeeds, unless a result failed or a cancel
        was requested (the orchestration then decides, as without a finish)."""
        if not all(verdict.ok for verdict in answered.values()):
            return
        # Held, as a cancel holds it: one committing meanwhile is seen here rather than overtaken by the success.
        current = repo.hold_execution(conn, self._execution_id)
        if current.cancel_requested_at is not None:
            return
        outputs = {**self._outputs, **{self._steps[name]: verdict.output for name, verdict in answered.items()}}
        self.moved = _move(conn, self._execution_id, "succeeded", output=outputs, error=None, current=current)


def shown_message(message: Any) -> Any:
    """An approval's message as resolved, for the approvers: its characters that would act where it is shown
    replaced (`neutralised`, its lines kept). A literal message is refused when its version is saved; one written as a
    reference (`${inputs.note}`) is known only now, and failing its step for it would also fail a version saved
    before that rule, which must still run: there is no sender here to tell, so it is neutralised, not refused."""
    return neutralised(message, lines=True) if isinstance(message, str) else message


def _key(execution_id: UUID, start: machine.StepStart) -> AttemptKey:
    return AttemptKey(execution_id, start.step_id, start.phase.value, start.attempt)


def _awaits(start: machine.StepStart, wait_s: float) -> bool:
    """Whether the dispatch waits for this start's result: a built-in module that answers quickly (ADR 0034)."""
    if wait_s <= 0 or start.remote or start.kind is not machine.StepKind.MODULE:
        return False
    module = BUILTIN_MODULES.get(start.action)
    return module is not None and module.answers_quickly


def _move_answer(current: repo.Execution) -> dict[str, Any]:
    return {"status": current.status, "cancel_requested": current.cancel_requested_at is not None}


_NOT_ABANDONED = frozenset(
    {
        machine.NoteKind.SKIPPED,
        machine.NoteKind.FAILED,
        machine.NoteKind.RETRYING,
        machine.NoteKind.COMPENSATION_RETRYING,
        machine.NoteKind.COMPENSATION_FAILED,
    }
)
"""The notes `_note` records without ending an attempt; every other kind abandons one."""


def _abandoned_key(execution_id: UUID, note: machine.StepNote) -> AttemptKey:
    """The attempt an abandoning note ends (`_note`'s last branch)."""
    return AttemptKey(execution_id, note.step_id, "run", note.attempt)


def _retry_data(note: machine.StepNote) -> dict[str, Any]:
    """What a retry's event says, of a step's run or of its compensation alike."""
    return {
        "attempt": note.attempt,
        "next_attempt": note.next_attempt,
        "max_attempts": note.max_attempts,
        "retry_at": note.retry_at,
        "error": note.error,
    }


def _note(conn: store.Conn, execution_id: UUID, note: machine.StepNote) -> None:
    """Record a step move without an attempt result; each is conditional on the state it moves from."""
    step_id = note.step_id
    if note.kind is machine.NoteKind.SKIPPED:
        if store.move_step(conn, execution_id, step_id, "skipped", ("pending",), finished=True):
            repo.append_event(conn, execution_id, "step_skipped", step_id, {"reason": "when is false"})
    elif note.kind is machine.NoteKind.FAILED:
        # From `retrying` too: a retry whose parameters fail (the dispatch's bound) fails before its attempt begins,
        # and the step must read failed at that attempt, or a cancel would be taken for one that ends the run. A
        # first attempt that never began keeps the step's attempt at 0, as its attempts (none) read.
        if store.move_step(
            conn,
            execution_id,
            step_id,
            "failed",
            ("pending", "retrying"),
            finished=True,
            error=note.error,
            attempt=note.attempt if note.attempt > 1 else None,
        ):
            repo.append_event(
                conn, execution_id, "step_failed", step_id, {"attempt": note.attempt, "error": note.error}
            )
    elif note.kind is machine.NoteKind.RETRYING:
        assert note.retry_at is not None  # the reducer always says when
        if store.move_step(
            conn,
            execution_id,
            step_id,
            "retrying",
            ("failed",),
            retry_at=datetime.fromisoformat(note.retry_at),
            error=note.error,
        ):
            repo.append_event(conn, execution_id, "step_retrying", step_id, _retry_data(note))
    elif note.kind is machine.NoteKind.COMPENSATION_RETRYING:
        assert note.retry_at is not None  # the reducer always says when
        # The step stays compensating (its failed attempt left it there, steps.finish_attempt): only when is new.
        if store.note_compensation_retry(
            conn, execution_id, step_id, datetime.fromisoformat(note.retry_at), note.error
        ):
            repo.append_event(conn, execution_id, "compensation_retrying", step_id, _retry_data(note))
    elif note.kind is machine.NoteKind.COMPENSATION_FAILED:
        # Given up before it began (rules 9: its parameters cannot resolve), so no attempt moved the step to
        # compensating (a retry's attempt did): it goes there, then ends as a compensation that will not finish does,
        # compensation_failed with its event and `step.compensation_failed`, once (a re-run finds it ended).
        store.move_step(conn, execution_id, step_id, "compensating", ("succeeded",))
        end_compensation(conn, AttemptKey(execution_id, step_id, "compensate", note.attempt), note.error or "failed")
    else:
        abandon_step(conn, _abandoned_key(execution_id, note), note.error or "cancelled")


def record_outcomes(batch: machine.RecordOutcomes) -> list[dict[str, Any]]:
    """Apply outcomes the orchestration observed (timeouts, a wait's end, a child's end), each unless another was
    applied first; answers each attempt's verdict, in order."""
    tenant_id, execution_id = UUID(batch.tenant_id), UUID(batch.execution_id)
    outcomes = batch.outcomes
    keys = [AttemptKey(execution_id, o.step_id, o.phase.value, o.attempt) for o in outcomes]
    outputs = [
        claim_check(tenant_id, key, outcome.output) if outcome.ok else None
        for key, outcome in zip(keys, outcomes, strict=True)
    ]
    settling = _Settling(keys, outcomes, outputs, cancel_first=batch.cancel_first)
    with tenant_transaction(tenant_id) as conn:
        unrecorded = settling.finish_recorded(conn, range(len(keys)))
        late = settling.begin_unrecorded(conn, execution_id, unrecorded)
        if not late:
            settling.move(conn, execution_id, batch.status)
    if late:
        # Begun by the dispatch in doubt, which committed between the two reads: a result may hold them by now and
        # wait for the execution that transaction held, so they are finished in one of their own, attempts first.
        with tenant_transaction(tenant_id) as conn:
            missing = settling.finish_recorded(conn, late)
            if missing:  # committed a moment ago: only the tenant's erasure removes an attempt
                raise LookupError(f"no attempt {keys[missing[0]]}")
            settling.move(conn, execution_id, batch.status)
    return settling.answers()


class _Settling:
    """One record_outcomes call's outcomes, and the verdicts applied so far (by position).

    Lock order (ADR 0014): every recorder of a result (the module worker, a remote completion, a heartbeat's
    abandon, a decision) takes the attempt's row before the execution's, so the outcome of a recorded attempt does
    too (the execution first deadlocked with them: the result that held the attempt first was the victim).
    Only an attempt that is not recorded (its dispatch failed, and may or may not have committed) needs the
    execution first, as a dispatch holds it before beginning any: a dispatch whose commit is still in doubt is waited
    for, and a cancel or an end is seen before anything of a start that failed is recorded. A new attempt is begun under
    that lock (nobody else can hold its row); one found there, committed meanwhile, is left for a transaction of
    its own, where it is held first again."""

    def __init__(
        self, keys: list[AttemptKey], outcomes: list[machine.Outcome], outputs: list[Any], *, cancel_first: bool
    ) -> None:
        self._keys, self._outcomes, self._outputs = keys, outcomes, outputs
        self._cancel_first = cancel_first  # RecordOutcomes.cancel_first: the run reads it (rules 7)
        self._verdicts: dict[int, dict[str, Any]] = {}

    def finish_recorded(self, conn: store.Conn, indices: Sequence[int]) -> list[int]:
        """Apply the outcomes at `indices` whose attempt is recorded, their rows held first (in key order, so two
        callers never wait on each other's), the execution's then taken by their events; answers the positions
        whose attempt is not recorded (LookupError for one that names no action: it was started, so it must be)."""
        keys, outcomes = self._keys, self._outcomes
        if len(indices) == 1 and outcomes[indices[0]].action is None:
            found = {indices[0]: True}  # one attempt: finish_attempt's own update holds it first
        else:
            ordered = sorted(indices, key=lambda i: (keys[i].step_id, keys[i].phase, keys[i].attempt))
            found = {i: store.hold_attempt(conn, keys[i]) is not None for i in ordered}
        unrecorded: list[int] = []
        for index in indices:
            if found[index]:
                self._apply(conn, index)
            elif outcomes[index].action is None:
                raise LookupError(f"no attempt {keys[index]}")
            else:
                unrecorded.append(index)
        return unrecorded

    def begin_unrecorded(self, conn: store.Conn, execution_id: UUID, indices: Sequence[int]) -> list[int]:
        """Under the execution's lock, begin and end each of these attempts that is still not recorded (unless its
        dispatch would refuse it now); answers the positions of those recorded meanwhile, not applied here."""
        if not indices:
            return []
        execution = repo.hold_execution(conn, execution_id)
        late: list[int] = []
        for index in indices:
            key, action = self._keys[index], self._outcomes[index].action
            assert action is not None  # finish_recorded answers only outcomes that name their action
            if store.get_attempt(conn, key) is not None:
                late.append(index)
            elif execution.terminal or (key.phase == "run" and execution.cancel_requested_at is not None):
                # Its dispatch would have refused it now: nothing is begun, and nothing written after an end.
                error = self._outcomes[index].error
                verdict = {"ok": False, "error": error, "retryable": False, "state": "failed"}
                if self._cancel_first and key.phase == "run" and execution.cancel_requested_at is not None:
                    verdict["cancel_first"] = True  # as `raised_verdict` says of a recorded failure
                self._verdicts[index] = verdict
            else:
                # Its dispatch failed before its start committed: recorded, ended, so that the step reads failed
                # (whence its retry moves it) and no later start of this attempt runs its work.
                store.begin_attempt(conn, key, action=action, remote=False)
                self._apply(conn, index)
        return late

    def _apply(self, conn: store.Conn, index: int) -> None:
        """Apply one outcome to its recorded attempt (once: a result recorded first stands, and is its verdict)."""
        key, outcome = self._keys[index], self._outcomes[index]
        if outcome.state == "abandoned":
            # A child its stopping parent told to cancel, ended cancelled (rules 5): its step ends as every step a
            # stop ends, cancelled, not failed; a result recorded first (a timeout) stands, and its step with it.
            reason = outcome.error or "cancelled"
            attempt, applied = store.finish_attempt(
                conn, key, ok=False, error=reason, retryable=False, state="abandoned"
            )
            if applied:
                _end_abandoned_step(conn, key, reason)
        else:
            attempt, _ = store.finish_attempt(
                conn,
                key,
                ok=outcome.ok,
                output=self._outputs[index],
                error=outcome.error,
                retryable=True,
                state=outcome.state,  # type: ignore[arg-type]  # the reducer names only attempt states
            )
        self._verdicts[index] = raised_verdict(conn, attempt) if self._cancel_first else attempt.verdict()
        if outcome.action == "intent.run" and not attempt.verdict()["ok"]:
            _stop_orphaned_child(conn, key)

    @staticmethod
    def move(conn: store.Conn, execution_id: UUID, status: machine.Status | None) -> None:
        """The execution's move the batch asks for, after its outcomes (the execution's row after the attempts')."""
        if status is not None:
            _move(conn, execution_id, status.value, output=None, error=None)

    def answers(self) -> list[dict[str, Any]]:
        """Each attempt's verdict, in the batch's order."""
        return [self._verdicts[index] for index in range(len(self._keys))]


def _stop_orphaned_child(conn: store.Conn, key: AttemptKey) -> None:
    """The child an intent.run attempt had started before its dispatch failed for good: the attempt is over, so the
    child would run for no one (and a retry starts another). Cancelled at once while no orchestration runs it (the
    sweeper would otherwise start it), else its cancel recorded, which its next dispatch obeys."""
    child = repo.find_by_key(conn, f"child:{key.execution_id}:{key.step_id}:{key.attempt}")
    if child is None or child.terminal:
        return
    # The child's open attempts before its row, once, for either move below (ADR 0014: request_cancel's order).
    held, _ = store.hold_open_attempts(conn, child.id)
    if repo.transition_from(conn, child.id, "pending", "cancelled", error="its parent's step ended") is None:
        # Not pending (held: what was read is what it is): ended meanwhile, or a failure ends it on its own: nothing
        # to stop.
        with contextlib.suppress(AlreadyFinishedError, AlreadyFailingError):
            cancel_held(conn, held, parent_principal(key.execution_id))


def record_status(request: machine.RecordStatus) -> machine.StatusAnswer:
    """Move the execution to a status (idempotent); answers where it is afterwards."""
    with tenant_transaction(UUID(request.tenant_id)) as conn:
        moved = _move(
            conn, UUID(request.execution_id), request.status.value, output=request.output, error=request.error
        )
    return machine.StatusAnswer(status=machine.Status(moved["status"]), cancel_requested=moved["cancel_requested"])
