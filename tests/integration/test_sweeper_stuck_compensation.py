# intent_ref: platform.execution
"""A run started under reducer rules 7 or earlier whose compensation's parameters cannot resolve stays compensating
for ever, its orchestration running and waiting on nothing (rules 8 mended that only for runs started under it, ADR
0025). The sweeper ends such an execution failed, freeing its quota slot, and terminates its orchestration; one whose
compensation is out or due, or recent, or whose orchestration may still wait on a compensation's timer (its verdict
recorded but never raised to it), or that started under later rules, it leaves alone. Real database, the reducer and
its activities in-process; only the orchestration's status, input and terminate are a stand-in."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, machine, progress, remote, sweeper, work_queue
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT, ORCHESTRATOR
from shared.engine.start import active_executions
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.test_executions import _execution as _recorded_execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

ACTION = "build-container"
ROLLBACK = "rollback-container"
PLAN: dict[str, Any] = {
    "kind": "module",
    "remote": True,
    "timeout_s": 600,
    "compensate_remote": True,
    "compensate_timeout_s": 600,
}
STEPS: list[dict[str, Any]] = [
    # Its compensation reads an `id` that a's output does not have: it cannot resolve.
    {"id": "a", "action": ACTION, "compensate": {"action": ROLLBACK, "id": "${steps.a.output.id}"}},
    {"id": "b", "action": ACTION, "depends_on": ["a"]},
]
# Both compensations resolve (they read nothing): a, then c, then b, which fails; c is compensated first, then a.
CHAIN: list[dict[str, Any]] = [
    {"id": "a", "action": ACTION, "compensate": {"action": ROLLBACK}},
    {"id": "c", "action": ACTION, "depends_on": ["a"], "compensate": {"action": ROLLBACK}},
    {"id": "b", "action": ACTION, "depends_on": ["c"]},
]
_ACTIVITIES: dict[machine.Activity, Callable[[Any], Any]] = {
    machine.Activity.DISPATCH_STEPS: lambda batch: progress.dispatch_steps(batch).model_dump(mode="json"),
    machine.Activity.RECORD_OUTCOMES: progress.record_outcomes,
    machine.Activity.RECORD_STATUS: lambda request: progress.record_status(request).model_dump(mode="json"),
}
_BACKDATE_UPDATE = "UPDATE app.executions SET updated_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"


def _execution(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    path: list[repo.Status] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> repo.Execution:
    """An execution of an intent whose version 1 is `steps` (STEPS), written directly (the registry is not under
    test)."""
    intent_id = uuid.uuid4()
    definition = {"target": "staging", "steps": steps or STEPS}
    with tenant_transaction(tenant_id, pool=pool) as conn:
        conn.execute(
            "INSERT INTO app.intents (tenant_id, id, name, created_by) VALUES (app.current_tenant_id(), %s, %s, 't')",
            (intent_id, f"i-{intent_id.hex[:12]}"),
        )
        conn.execute(
            "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
            " created_by) VALUES (app.current_tenant_id(), %s, 1, %s, %s, 't')",
            (intent_id, Jsonb(definition), hashlib.sha256(b"{}").hexdigest()),
        )
    return _recorded_execution(pool, tenant_id, intent_id, path=path)


class Run:
    """The orchestrator in-process: the reducer, its activities run for real as each is called, external events
    applied in the order the test gives them."""

    def __init__(
        self, tenant_id: uuid.UUID, execution_id: uuid.UUID, rules: int, steps: list[dict[str, Any]] | None = None
    ) -> None:
        self.now = datetime.now(UTC)
        self.execution_id = execution_id
        self.start: dict[str, Any] = {
            "execution_id": str(execution_id),
            "tenant_id": str(tenant_id),
            "definition": {"steps": steps or STEPS},
            "plan": {step["id"]: PLAN for step in steps or STEPS},
            "rules": rules,
        }
        self.result: dict[str, Any] | None = None
        self.state, commands = machine.begin(self.start, self.now)
        self._run(commands)

    def raise_event(self, name: str, data: Any) -> None:
        self.state, commands = machine.reduce(self.state, machine.EventRaised(name, data, self.now))
        self._run(commands)

    def _run(self, commands: list[machine.Command]) -> None:
        queue = list(commands)
        while queue:
            command = queue.pop(0)
            if isinstance(command, machine.CallActivity):
                done = machine.ActivityDone(command.id, _ACTIVITIES[command.name](command.input), self.now)
                self.state, more = machine.reduce(self.state, done)
                queue.extend(more)
            elif isinstance(command, machine.Complete):
                self.result = command.result
            else:
                assert isinstance(command, machine.WaitForEvent | machine.SetTimer), command


class Durable:
    """The orchestration side: every instance runs until terminated (its reason then its output); terminations are
    recorded. A run's input is its start's, shown when asked for."""

    def __init__(self, *runs: Run, runtime: str = "Running") -> None:
        self.runtime = runtime
        self.inputs: dict[str, Any] = {str(run.execution_id): run.start for run in runs}
        self.terminated: list[tuple[str, str]] = []
        self.asked: list[str] = []

    async def get_status(self, instance_id: str, *, show_input: bool = False) -> DurableOrchestrationStatus:
        self.asked.append(instance_id)
        reasons = [reason for instance, reason in self.terminated if instance == instance_id]
        return DurableOrchestrationStatus.from_json(
            {
                "name": ORCHESTRATOR,
                "instanceId": instance_id,
                "runtimeStatus": "Terminated" if reasons else self.runtime,
                "createdTime": "2026-01-01T00:00:00Z",
                "input": self.inputs.get(instance_id) if show_input else None,
                "output": reasons[0] if reasons else None,
            }
        )

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        raise AssertionError("no start is stalled here")

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        raise AssertionError("nothing is told to these runs")

    async def terminate(self, instance_id: str, reason: str) -> None:
        self.terminated.append((instance_id, reason))


def _lease(tenant_id: uuid.UUID, action: str = ACTION) -> work_queue.Lease:
    """A remote worker leases the next queued work of `action`."""
    with tenant_transaction(tenant_id) as conn:
        (taken,) = work_queue.lease(conn, tenant_id, actions=[action], max_items=1, lease_s=60, worker="w").leases
    return taken


def _report(
    execution_id: uuid.UUID, taken: work_queue.Lease, step_id: str, result: remote.RemoteResult, phase: str = "run"
) -> Any:
    """The worker reports `result` for the leased work: answers the event its recorder raises."""
    recorded = remote.record(taken.task_token, execution_id, step_id, phase, result)
    return recorded.key.event_name, recorded.verdict


def _stuck(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, rules: int, cancelled: bool = False
) -> tuple[Run, uuid.UUID]:
    """a succeeds with an output lacking `id`, b fails for good (after a cancel, when `cancelled`, which is then the
    run's cause): a's compensation cannot resolve."""
    execution = _execution(pool, tenant_id)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("a", ACTION, 1), StepSeed("b", ACTION, 1)])
    run = Run(tenant_id, execution.id, rules)
    succeeded = remote.RemoteResult(ok=True, output={"other": 1})
    run.raise_event(*_report(execution.id, _lease(tenant_id), "a", succeeded))
    taken = _lease(tenant_id)
    if cancelled:  # what the cancel route records (202), then its event
        with tenant_transaction(tenant_id) as conn:
            control.request_cancel(conn, execution.id, "alice")
        run.raise_event(CANCEL_EVENT, {"by": "alice"})
    failure = remote.RemoteResult(ok=False, error="registry refused the image", retryable=False)
    run.raise_event(*_report(execution.id, taken, "b", failure))
    return run, execution.id


def _sweep(
    tenant_id: uuid.UUID, client: Durable, pool: ConnectionPool[Any], quiet_s: float = 0.0
) -> sweeper.TenantSweep:
    return asyncio.run(sweeper.sweep_tenant(tenant_id, client, quiet_s=quiet_s, pool=pool))


def _execution_now(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> repo.Execution:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return repo.get_execution(conn, execution_id)


def test_under_rules_7_an_unresolvable_compensation_leaves_the_run_compensating_with_nothing_out(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The hang itself, on the real activities: the run asked for nothing more and never ends."""
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=7)
    assert run.result is None and run.state.phase is machine.RunPhase.COMPENSATING
    assert run.state.compensation_failed.keys() == {"a"} and not run.state.flights and not run.state.pending
    assert _execution_now(app_pool, tenant, execution_id).status == "compensating"


def test_the_sweeper_ends_a_run_stuck_compensating_and_terminates_its_orchestration(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Before: its orchestration still ran, so the sweeper only looked for stalled attempts (none) and the execution
    stayed compensating for ever, holding its tenant's quota slot."""
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=7)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert active_executions(conn) == 1
    client = Durable(run)

    result = _sweep(tenant, client, app_pool)

    ended = _execution_now(app_pool, tenant, execution_id)
    assert (result.ended, result.checked) == (1, 1)
    assert ended.status == "failed" and ended.finished_at is not None
    assert ended.error is not None and "registry refused the image" in ended.error
    assert "compensation" in ended.error
    assert [instance for instance, _ in client.terminated] == [str(execution_id)]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert active_executions(conn) == 0  # its quota slot is free
        events = [event.type for event in repo.events_after(conn, execution_id, 0, 1000)]
    assert events[-1] == "execution_failed" and events.count("execution_failed") == 1

    # Ended, it is no longer a quiet execution: a later run neither asks after it nor terminates anything again.
    again = _sweep(tenant, client, app_pool)
    assert (again.ended, again.checked) == (0, 0) and len(client.terminated) == 1


def test_a_run_stuck_compensating_after_a_cancel_ends_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Its cancel was answered 202, "ends cancelled", and a run under rules 8 does end so: the sweeper's end keeps
    that promise rather than ending it failed."""
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=7, cancelled=True)
    assert run.result is None and run.state.cancelled
    client = Durable(run)

    result = _sweep(tenant, client, app_pool)

    ended = _execution_now(app_pool, tenant, execution_id)
    assert result.ended == 1 and [instance for instance, _ in client.terminated] == [str(execution_id)]
    assert ended.status == "cancelled" and ended.error is not None and ended.error.startswith("cancelled; ")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert active_executions(conn) == 0
        events = [event.type for event in repo.events_after(conn, execution_id, 0, 1000)]
    assert events[-1] == "execution_cancelled" and "execution_failed" not in events

    # What a run under rules 8 records for the same history.
    same, same_id = _stuck(app_pool, tenant, rules=machine.RULES, cancelled=True)
    assert same.result is not None and same.result["status"] == "cancelled"
    assert _execution_now(app_pool, tenant, same_id).status == "cancelled"


def test_a_stuck_compensation_whose_orchestration_is_suspended_is_left_to_its_operator(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Suspended, an orchestration is held by someone on purpose: not terminated behind their back."""
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=7)
    client = Durable(run, runtime="Suspended")

    result = _sweep(tenant, client, app_pool)

    assert (result.ended, result.checked) == (0, 1) and client.terminated == []
    assert _execution_now(app_pool, tenant, execution_id).status == "compensating"


def test_a_compensation_out_or_due_is_not_taken_for_a_stuck_one(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Compensating as long as one wishes, with an attempt out (a slow rollback) or a step between compensation
    attempts (its retry due), is progress the orchestration still waits for: neither is ended nor terminated."""
    tenant = new_tenant()
    out = _execution(app_pool, tenant, path=["running", "compensating"])
    between = _execution(app_pool, tenant, path=["running", "compensating"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        for execution in (out, between):
            store.seed_steps(conn, execution.id, [StepSeed("deploy", ACTION, 2)])
            store.finish_attempt(conn, _began(conn, AttemptKey(execution.id, "deploy", "run", 1)), ok=True, output={})
            _began(conn, AttemptKey(execution.id, "deploy", "compensate", 1))
        # `between`'s first rollback failed with a second attempt left: the step stays compensating, nothing out.
        store.finish_attempt(conn, AttemptKey(between.id, "deploy", "compensate", 1), ok=False, error="flaky")
    client = Durable()

    result = _sweep(tenant, client, app_pool)

    assert (result.ended, result.checked) == (0, 2) and client.terminated == []
    assert {_execution_now(app_pool, tenant, e.id).status for e in (out, between)} == {"compensating"}


def test_a_stuck_compensation_is_left_until_its_last_event_is_quiet_too(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """The execution's row last changed when it began compensating; its compensations' events are what show it
    moving since. A run whose last event is recent may be between two compensations: it is not ended yet."""
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=7)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(_BACKDATE_UPDATE, (execution_id,))  # quiet by its row; its events are seconds old
    client = Durable(run)

    result = _sweep(tenant, client, app_pool, quiet_s=sweeper.QUIET_S)

    assert (result.ended, result.checked) == (0, 1) and client.terminated == []
    assert _execution_now(app_pool, tenant, execution_id).status == "compensating"


def test_under_rules_8_the_same_run_ends_by_itself(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """What the sweeper's end stands in for: rules 8 gives the compensation up and ends the run failed."""
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=machine.RULES)
    assert run.result is not None and run.result["status"] == "failed"
    assert _execution_now(app_pool, tenant, execution_id).status == "failed"


def _began(conn: store.Conn, key: AttemptKey) -> AttemptKey:
    store.begin_attempt(conn, key, action=ACTION if key.phase == "run" else ROLLBACK, remote=True)
    return key


def _backdate(pg: Any, execution_id: uuid.UUID, seconds: float) -> None:
    """Everything that says when the run last moved, `seconds` earlier: its stream, its attempts' dispatch, its row
    (the app's login may not rewrite the stream; the server's own may)."""
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.execution_events SET occurred_at = occurred_at - make_interval(secs => %s)"
            " WHERE execution_id = %s",
            (seconds, execution_id),
        )
        conn.execute(
            "UPDATE app.step_attempts SET dispatched_at = dispatched_at - make_interval(secs => %s)"
            " WHERE execution_id = %s",
            (seconds, execution_id),
        )
        conn.execute(
            "UPDATE app.executions SET updated_at = updated_at - make_interval(secs => %s) WHERE id = %s",
            (seconds, execution_id),
        )


def _lost_verdict(pool: ConnectionPool[Any], tenant_id: uuid.UUID, rules: int) -> tuple[Run, uuid.UUID, Any]:
    """a and c succeed, b fails for good; the run dispatches c's compensation (600 s allowed), whose worker completes
    it, but the verdict is never raised to the run: it waits on that attempt's timer. Answers the lost event too."""
    execution = _execution(pool, tenant_id, steps=CHAIN)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed(step["id"], ACTION, 1) for step in CHAIN])
    run = Run(tenant_id, execution.id, rules, steps=CHAIN)
    succeeded = remote.RemoteResult(ok=True, output={"id": "x"})
    for step_id in ("a", "c"):
        run.raise_event(*_report(execution.id, _lease(tenant_id), step_id, succeeded))
    failure = remote.RemoteResult(ok=False, error="registry refused the image", retryable=False)
    run.raise_event(*_report(execution.id, _lease(tenant_id), "b", failure))
    taken = _lease(tenant_id, ROLLBACK)
    assert taken.item.key == AttemptKey(execution.id, "c", "compensate", 1)
    lost = _report(execution.id, taken, "c", succeeded, phase="compensate")
    assert run.state.phase is machine.RunPhase.COMPENSATING and "c" in run.state.flights
    with tenant_transaction(tenant_id, pool=pool) as conn:
        states = {step["step_id"]: step["state"] for step in store.list_steps(conn, execution.id)}
        assert not [a for a in store.list_attempts(conn, execution.id) if a.state == "dispatched"]
    assert states["c"] == "compensated" and _execution_now(pool, tenant_id, execution.id).status == "compensating"
    return run, execution.id, lost


def test_a_run_waiting_on_a_compensations_timer_is_not_taken_for_a_stuck_one(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Its compensation's verdict was recorded but never raised: the attempt reads succeeded, its step compensated,
    nothing is out and the stream is quiet, yet the orchestration waits on the attempt's timer (600 s), which would
    carry it on to the next compensation. Before: quiet for QUIET_S, it was terminated and ended failed, and a's
    compensation never ran."""
    tenant = new_tenant()
    run, execution_id, lost = _lost_verdict(app_pool, tenant, rules=machine.RULES)
    _backdate(pg, execution_id, 400)
    client = Durable(run)

    result = _sweep(tenant, client, app_pool, quiet_s=sweeper.QUIET_S)

    assert (result.ended, result.checked) == (0, 1) and client.terminated == []
    assert _execution_now(app_pool, tenant, execution_id).status == "compensating"
    # Its timer (or a late raise) tells it, and the remaining compensation goes out.
    run.raise_event(*lost)
    assert _lease(tenant, ROLLBACK).item.key == AttemptKey(execution_id, "a", "compensate", 1)


def test_under_rules_7_a_stuck_run_waits_for_every_compensations_deadline_and_grace(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Under the rules that can hang, the same run is judged by its compensation's deadline: 400 s after its dispatch
    (600 s allowed, 120 s of grace) it is left; 800 s after, its timer would have moved it, so it waits on nothing."""
    tenant = new_tenant()
    run, execution_id, _ = _lost_verdict(app_pool, tenant, rules=7)
    _backdate(pg, execution_id, 400)
    client = Durable(run)

    early = _sweep(tenant, client, app_pool, quiet_s=sweeper.QUIET_S)

    assert (early.ended, early.checked) == (0, 1) and client.terminated == []
    assert _execution_now(app_pool, tenant, execution_id).status == "compensating"

    _backdate(pg, execution_id, 400)
    late = _sweep(tenant, client, app_pool, quiet_s=sweeper.QUIET_S)

    assert late.ended == 1 and [instance for instance, _ in client.terminated] == [str(execution_id)]
    assert _execution_now(app_pool, tenant, execution_id).status == "failed"


@pytest.mark.parametrize(
    ("rules", "shown", "ends"),
    [
        (machine.RULES, "start", False),
        (machine.RULES, "continued", False),  # after continue-as-new its input is the state it carries
        (8, "start", False),
        (7, "continued", True),
        (7, "no rules", True),  # a start input naming no rules is the oldest rules'
    ],
)
def test_only_a_run_started_under_rules_7_or_earlier_is_ended_as_stuck(
    pg: Any,
    app_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    rules: int,
    shown: str,
    ends: bool,
) -> None:
    """Every deadline long past and nothing out or recent: stuck by its rows. Rules 8 and later never hang so (the run
    gave its compensation up and carried on), so such a run waits on something; before, it was terminated anyway."""
    tenant = new_tenant()
    run, execution_id, _ = _lost_verdict(app_pool, tenant, rules=rules)
    _backdate(pg, execution_id, 2000)
    client = Durable(run)
    if shown == "continued":
        client.inputs[str(execution_id)] = {"machine": run.state.model_dump(mode="json")}
    elif shown == "no rules":
        del client.inputs[str(execution_id)]["rules"]

    result = _sweep(tenant, client, app_pool, quiet_s=sweeper.QUIET_S)

    assert (result.ended, len(client.terminated)) == ((1, 1) if ends else (0, 0))
    status = _execution_now(app_pool, tenant, execution_id).status
    assert status == ("failed" if ends else "compensating")


def test_a_cancelled_stuck_run_whose_end_failed_after_its_terminate_still_ends_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The terminate went through, then the end gave up a bounded lock wait. Before: the next run saw a terminated
    orchestration and ended it failed, breaking the cancel answered 202 "ends cancelled"."""
    tenant = new_tenant()
    run, execution_id = _stuck(app_pool, tenant, rules=7, cancelled=True)
    client = Durable(run)
    end_execution = sweeper.end_execution
    failures = [psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")]

    def held_once(*args: Any, **kwargs: Any) -> sweeper.Ended | None:
        if failures:
            raise failures.pop()
        return end_execution(*args, **kwargs)

    monkeypatch.setattr(sweeper, "end_execution", held_once)

    with pytest.raises(psycopg.errors.LockNotAvailable):
        _sweep(tenant, client, app_pool)
    assert [instance for instance, _ in client.terminated] == [str(execution_id)]
    assert _execution_now(app_pool, tenant, execution_id).status == "compensating"

    result = _sweep(tenant, client, app_pool)

    ended = _execution_now(app_pool, tenant, execution_id)
    assert result.ended == 1 and len(client.terminated) == 1
    assert ended.status == "cancelled" and ended.error == client.terminated[0][1]
    assert ended.error.startswith("cancelled; ")
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert active_executions(conn) == 0
        events = [event.type for event in repo.events_after(conn, execution_id, 0, 1000)]
    assert events[-1] == "execution_cancelled" and "execution_failed" not in events


def test_a_cancelled_compensating_run_whose_orchestration_is_gone_ends_cancelled(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Its instance no longer exists (purged, or never kept): still the cancel's promise, not a failure."""
    tenant = new_tenant()
    _, execution_id = _stuck(app_pool, tenant, rules=7, cancelled=True)

    class Gone(Durable):
        async def get_status(self, instance_id: str, *, show_input: bool = False) -> DurableOrchestrationStatus:
            return DurableOrchestrationStatus.from_json("")  # the SDK's answer to a 404

    result = _sweep(tenant, Gone(), app_pool)

    ended = _execution_now(app_pool, tenant, execution_id)
    assert result.ended == 1 and ended.status == "cancelled"
    assert ended.error == "cancelled; orchestration was terminated: its instance no longer exists"
