# intent_ref: platform.execution
"""The module worker on the real database: one run per attempt, no item held up by another, a deadline per item."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from shared.db.migrate import apply_migrations
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import module_threads, progress, worker
from shared.engine import steps as store
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey, Claim, Phase, StepSeed
from shared.engine.work_hub import Carried
from shared.modules import Module, ModuleContext, StepFailed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration

BOUND_S = 20.0
"""The longest any bounded wait here may take; reaching it fails the test."""


class _NoParams(BaseModel):
    pass


class _Echo(Module[_NoParams]):
    """Answers at once; counts its runs."""

    action: ClassVar[str] = "test.echo"
    params_model = _NoParams

    def __init__(self) -> None:
        self.runs: list[str] = []
        self._lock = threading.Lock()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        with self._lock:
            self.runs.append(ctx.idempotency_key)
        return {"ran": ctx.idempotency_key}


class _Gate(Module[_NoParams]):
    """Runs until the test opens it (or BOUND_S passes); counts its runs and how many ran at once."""

    action: ClassVar[str] = "test.gate"
    params_model = _NoParams

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.left = threading.Event()
        self.most_at_once = 0
        self._running = 0
        self._lock = threading.Lock()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        with self._lock:
            self.runs.append(ctx.idempotency_key)
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        self.entered.set()
        try:
            self.opened.wait(BOUND_S)
            return {"ran": ctx.idempotency_key, "late": True}
        finally:
            with self._lock:
                self._running -= 1
            self.left.set()


class _Raiser:
    """The durable client's raise_event, recording what each orchestration was told."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = threading.Condition()

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        with self._changed:
            self.raised.append((instance_id, event_name, event_data))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, str, dict[str, Any]]]], bool]) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.raised), BOUND_S)

    def to(self, execution_id: uuid.UUID) -> list[dict[str, Any]]:
        with self._changed:
            return [data for instance, _, data in self.raised if instance == str(execution_id)]


class _Batch(threading.Thread):
    """process_batch on a thread of its own, as one worker instance with its own event loop."""

    def __init__(self, items: Sequence[WorkItem], raiser: _Raiser, modules: Mapping[str, Module[Any]]) -> None:
        super().__init__(daemon=True)
        self._bodies = [item.model_dump_json() for item in items]
        self._raiser = raiser
        self._modules = modules
        self.result: int | BaseException | None = None

    def run(self) -> None:
        try:
            self.result = asyncio.run(
                worker.process_batch(self._bodies, self._raiser, self._modules, hand_back=_held_whole)
            )
        except BaseException as exc:  # handed to the test, which asserts on it
            self.result = exc

    def outcome(self) -> int | BaseException | None:
        self.join(BOUND_S)
        assert not self.is_alive(), "the batch did not end"
        return self.result


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision("claims").id


def _held_whole(carried: Sequence[Carried]) -> None:
    raise AssertionError(f"a batch here is held whole, yet {len(carried)} items were handed back")


@pytest.fixture(autouse=True)
def batches_held_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch here holds until its items end: these tests are about its items (their claims, deadlines and threads),
    and a batch run by asyncio.run would stop the items going on past its hold (test_module_work_hand_back.py)."""
    monkeypatch.setattr(worker, "BATCH_HOLD_S", BOUND_S * 3)


SETTLE_S = 5.0
"""How long a test's modules may take to return its threads after it, and before the next: a module told its
attempt is abandoned looks again within a few hundredths of a second, and none here runs past its test's end."""


def _nothing_held_nobody_waiting() -> bool:
    return not module_threads._shares.held() and not module_threads._shares._waiting


def _settled() -> bool:
    """Whether every module thread of the process came back, and no run waits for one, within SETTLE_S."""
    pause = threading.Event()
    for _ in range(int(SETTLE_S / 0.05)):
        if _nothing_held_nobody_waiting():
            return True
        pause.wait(0.05)
    return _nothing_held_nobody_waiting()


@pytest.fixture(autouse=True)
def no_module_thread_held() -> Iterator[None]:
    """Every module thread of the process back, and no run waiting for one, at each test's start and end (a module
    returning just after its test may take a moment): one a test leaves held or waiting fails that test, not a later
    one whose items it starves of a thread."""
    assert _settled(), f"at the start: threads held {module_threads._shares.held()}, {_waiting()} runs waiting"
    yield
    assert _settled(), f"at the end: threads held {module_threads._shares.held()}, {_waiting()} runs waiting"


def _waiting() -> int:
    return len(module_threads._shares._waiting)


@pytest.fixture
def gate() -> Iterator[_Gate]:
    module = _Gate()
    yield module
    module.opened.set()  # never leave a worker thread behind for the next test
    if module.entered.is_set():
        assert module.left.wait(BOUND_S)


def _dispatched(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    action: str,
    *,
    timeout_s: int = 60,
    awaited: bool = False,
    phase: Phase = "run",
) -> WorkItem:
    """An attempt as the dispatch records it (`awaited`: one that waits for its result, ADR 0034), and its item."""
    execution = _execution(pool, tenant_id, path=["running"])
    key = AttemptKey(execution.id, "work", phase, 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("work", action, 1)])
        store.begin_attempt(conn, key, action=action, remote=False, awaited=awaited)
    return WorkItem(
        tenant_id=tenant_id,
        execution_id=execution.id,
        step_id="work",
        phase=phase,
        attempt=1,
        action=action,
        params={},
        remote=False,
        timeout_s=timeout_s,
    )


def _until(predicate: Callable[[], bool]) -> bool:
    """Whether `predicate` became true within BOUND_S."""
    pause = threading.Event()
    for _ in range(int(BOUND_S / 0.05)):
        if predicate():
            return True
        pause.wait(0.05)
    return predicate()


def _row(pool: ConnectionPool[Any], item: WorkItem) -> dict[str, Any]:
    with tenant_transaction(item.tenant_id, pool=pool) as conn:
        row = conn.execute(
            "SELECT state, error, output, claimed_by, claims FROM app.step_attempts"
            " WHERE execution_id = %s AND step_id = %s AND phase = %s AND attempt = %s",
            (item.execution_id, item.step_id, item.phase, item.attempt),
        ).fetchone()
    assert row is not None
    return dict(row)


# ---------------------------------------------------------------------------------------- at most one run
def test_two_copies_of_one_item_in_one_batch_run_the_module_once(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action)
    raiser = _Raiser()
    raised = asyncio.run(worker.process_batch([item.model_dump_json()] * 2, raiser, {echo.action: echo}))
    assert echo.runs == [f"{item.execution_id}:work:1"]
    assert raised == 1 and raiser.to(item.execution_id) == [{"ok": True, "output": {"ran": echo.runs[0]}}]
    row = _row(app_pool, item)
    assert (row["state"], row["claims"]) == ("succeeded", 1)


def test_two_workers_taking_one_item_at_once_run_it_once(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = _dispatched(app_pool, tenant, gate.action)
    claims: list[str] = []
    claim_attempt = store.claim_attempt

    def observed(conn: store.Conn, key: AttemptKey, **kwargs: Any) -> Claim:
        claim = claim_attempt(conn, key, **kwargs)
        claims.append(claim.outcome)
        return claim

    monkeypatch.setattr(store, "claim_attempt", observed)
    raiser = _Raiser()
    first = _Batch([item], raiser, {gate.action: gate})
    first.start()
    assert gate.entered.wait(BOUND_S)
    second = _Batch([item], raiser, {gate.action: gate})
    second.start()
    # The second copy finds the claim held and waits for the first one's result instead of running the module.
    assert _until(lambda: "held" in claims)
    gate.opened.set()
    assert first.outcome() == 1 and second.outcome() == 1
    assert len(gate.runs) == 1 and gate.most_at_once == 1
    verdict = {"ok": True, "output": {"ran": gate.runs[0], "late": True}}
    assert raiser.to(item.execution_id) == [verdict, verdict]
    assert claims.count("claimed") == 1 and claims[-1] == "finished"
    assert _row(app_pool, item)["claims"] == 1


def test_a_claim_whose_holder_died_is_taken_over_once_its_lease_lapses(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        # A holder that claimed it a moment ago and then died: its lease runs 1.5 s more, and is never renewed.
        conn.execute(
            "UPDATE app.step_attempts SET claimed_by = 'a-dead-host:1:0', claims = 1,"
            " claimed_until = clock_timestamp() + interval '1.5 seconds' WHERE execution_id = %s",
            (item.execution_id,),
        )
    outcome = worker.run_item(item, {echo.action: echo})
    assert outcome is not None and outcome.verdict == {"ok": True, "output": {"ran": f"{item.execution_id}:work:1"}}
    assert len(echo.runs) == 1
    row = _row(app_pool, item)
    assert row["state"] == "succeeded" and row["claims"] == 2 and row["claimed_by"] != "a-dead-host:1:0"


def test_a_compensation_runs_under_a_key_of_its_own(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    # An event.emit undone by an event.emit, an http.request by an http.request: under the step's own key the
    # undo's event id and Idempotency-Key were the step's, and a receiver deduplicating on them dropped the undo.
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action, phase="compensate")
    outcome = worker.run_item(item, {echo.action: echo})
    assert echo.runs == [f"{item.execution_id}:work:compensate:1"]
    assert outcome is not None and outcome.verdict == {"ok": True, "output": {"ran": echo.runs[0]}}
    assert _row(app_pool, item)["state"] == "succeeded"


def test_a_finished_attempt_is_not_run_again_and_its_verdict_is_raised_again(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.finish_attempt(
            conn, AttemptKey(item.execution_id, "work", "run", 1), ok=False, error="cancelled", state="abandoned"
        )
    outcome = worker.run_item(item, {echo.action: echo})
    assert echo.runs == []
    assert outcome is not None and outcome.verdict["state"] == "abandoned"


# ----------------------------------------------------------------------------- ended executions, deadlines
def test_an_attempt_of_an_ended_execution_is_not_run(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, item.execution_id, "failed", error="another step failed")
    raiser = _Raiser()
    assert asyncio.run(worker.process_batch([item.model_dump_json()], raiser, {echo.action: echo})) == 0
    assert echo.runs == [] and raiser.raised == []
    assert _row(app_pool, item)["state"] == "dispatched"


def test_an_item_past_its_deadline_is_not_started(pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action, timeout_s=60)
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        # Dispatched a minute and a second ago: the item spent its whole timeout waiting for delivery.
        conn.execute(
            "UPDATE app.step_attempts SET dispatched_at = clock_timestamp() - interval '61 seconds'"
            " WHERE execution_id = %s",
            (item.execution_id,),
        )
    outcome = worker.run_item(item, {echo.action: echo})
    assert echo.runs == []
    assert outcome is not None
    assert outcome.verdict == {
        "ok": False,
        "error": "step work timed out after 60 s (not started before its deadline)",
        "retryable": True,
        "state": "timed_out",
    }
    assert _row(app_pool, item)["state"] == "timed_out"


def test_a_running_item_is_abandoned_at_its_deadline_and_its_late_result_is_not_recorded(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate
) -> None:
    item = _dispatched(app_pool, tenant, gate.action, timeout_s=1)
    raiser = _Raiser()
    batch = _Batch([item], raiser, {gate.action: gate})
    batch.start()
    assert batch.outcome() == 1
    # The batch has ended while the module is still running: it was left behind at its deadline.
    assert gate.entered.is_set() and not gate.left.is_set()
    [verdict] = raiser.to(item.execution_id)
    assert verdict["state"] == "timed_out"
    assert verdict["error"] == "step work timed out after 1 s (abandoned at its deadline while still running)"
    gate.opened.set()
    assert gate.left.wait(BOUND_S)
    row = _row(app_pool, item)
    assert (row["state"], row["output"]) == ("timed_out", None)


# ------------------------------------------------------------------------------------ no head-of-line block
def test_one_slow_item_holds_up_none_of_the_others_in_its_batch(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate
) -> None:
    echo = _Echo()
    slow = _dispatched(app_pool, tenant, gate.action)
    fast = [_dispatched(app_pool, tenant, echo.action) for _ in range(8)]
    raiser = _Raiser()
    batch = _Batch([slow, *fast], raiser, {gate.action: gate, echo.action: echo})
    batch.start()
    fast_ids = {str(item.execution_id) for item in fast}
    assert raiser.wait_for(lambda raised: {instance for instance, _, _ in raised} >= fast_ids)
    # Every other item succeeded and its verdict was raised while the slow one still runs.
    assert gate.entered.is_set() and not gate.left.is_set() and batch.is_alive()
    assert all(_row(app_pool, item)["state"] == "succeeded" for item in fast)
    assert _row(app_pool, slow)["state"] == "dispatched" and raiser.to(slow.execution_id) == []
    gate.opened.set()
    assert batch.outcome() == 9
    assert _row(app_pool, slow)["state"] == "succeeded"


def test_one_tenants_slow_modules_take_at_most_its_share_of_the_threads(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, gate: _Gate
) -> None:
    echo = _Echo()
    other = api.provision("claims-other").id
    # More slow items of one tenant than the process has threads: alone, they would take every one of them.
    slow = [_dispatched(app_pool, tenant, gate.action) for _ in range(module_threads.MODULE_THREADS + 2)]
    fast = _dispatched(app_pool, other, echo.action)
    raiser = _Raiser()
    batch = _Batch([*slow, fast], raiser, {gate.action: gate, echo.action: echo})
    batch.start()
    assert raiser.wait_for(lambda raised: any(instance == str(fast.execution_id) for instance, _, _ in raised))
    # The other tenant's item ran and was answered while the slow ones still wait for the gate.
    assert _row(app_pool, fast)["state"] == "succeeded" and not gate.opened.is_set()
    assert _until(lambda: len(gate.runs) == module_threads.TENANT_SHARE)
    assert gate.most_at_once == module_threads.TENANT_SHARE < module_threads.MODULE_THREADS
    gate.opened.set()
    assert batch.outcome() == len(slow) + 1  # the waiting ones ran once a place in the share came free
    assert all(_row(app_pool, item)["state"] == "succeeded" for item in slow)


class _Unstorable(Module[_NoParams]):
    """Returns what a hostile endpoint's JSON can hold and Postgres cannot store (a NUL, a lone surrogate)."""

    action: ClassVar[str] = "test.unstorable"
    params_model = _NoParams
    outputs: ClassVar[list[Any]] = []

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        output = self.outputs[ctx.attempt - 1]
        if isinstance(output, Exception):
            raise output
        return output


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ({"body": {"name": "a\x00b"}}, "/body/name: NUL"),
        ({"body": ["fine", "\ud800"]}, "/body/1: a lone surrogate"),
        ({"body": _nested(200)}, "it nests deeper than 128 levels"),
        (StepFailed("answered 'a\x00b'", retryable=False), "answered 'a\\u0000b'"),
    ],
    ids=["nul", "lone-surrogate", "too-deep", "nul-in-the-failure"],
)
def test_an_output_that_cannot_be_stored_fails_its_step_and_not_the_batch(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, output: Any, why: str
) -> None:
    module = _Unstorable()
    _Unstorable.outputs = [output]
    item = _dispatched(app_pool, tenant, module.action)
    raiser = _Raiser()
    batch = _Batch([item], raiser, {module.action: module})
    batch.start()
    assert batch.outcome() == 1  # recorded and raised: nothing left for a retry or the step's timeout
    row = _row(app_pool, item)
    assert row["state"] == "failed" and row["output"] is None
    stored = (
        why if isinstance(output, Exception) else f"{module.action} returned an output that cannot be stored: {why}"
    )
    assert row["error"].startswith(stored), row
    (verdict,) = raiser.to(item.execution_id)
    assert verdict["ok"] is False and verdict["retryable"] is False


class _FailingRaiser(_Raiser):
    """A durable client whose raise_event fails as the SDK does for the given status (its own message)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self._message = message

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        raise Exception(self._message.format(instance_id=instance_id))  # noqa: TRY002  # the SDK's own type


@pytest.mark.parametrize(
    "message",
    ["Instance with ID {instance_id} is gone: either completed or failed", "No instance with ID {instance_id} found."],
    ids=["410-gone", "404-not-found"],
)
def test_a_verdict_for_an_orchestration_that_is_gone_is_dropped_without_failing_the_batch(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, message: str
) -> None:
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action)
    batch = _Batch([item], _FailingRaiser(message), {echo.action: echo})
    batch.start()
    assert batch.outcome() == 0  # nothing raised, and nothing for a retry to do
    assert _row(app_pool, item)["state"] == "succeeded"


def test_a_verdict_that_could_not_be_raised_for_another_reason_fails_the_batch_for_its_retry(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    echo = _Echo()
    item = _dispatched(app_pool, tenant, echo.action)
    batch = _Batch([item], _FailingRaiser("Webhook returned unrecognized status code 503"), {echo.action: echo})
    batch.start()
    assert isinstance(batch.outcome(), RuntimeError)
    assert _row(app_pool, item)["state"] == "succeeded"  # recorded: the retry raises it again without running it


def test_module_work_is_keyed_by_attempt_and_a_repeated_dispatch_keeps_its_key(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    apply_migrations(pg.owner_url, Path("devhost/eventhubs/migrations"), schema="devhost_eventhubs")
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("a", "test.echo", 1), StepSeed("b", "test.echo", 1)])
    for step_id in ("a", "b", "a"):  # the last one is a re-executed dispatch of "a"
        progress.dispatch_step(
            {
                "execution_id": str(execution.id),
                "tenant_id": str(tenant),
                "step_id": step_id,
                "phase": "run",
                "attempt": 1,
                "action": "test.echo",
                "params": {},
                "remote": False,
                "timeout_s": 30,
            }
        )
    with psycopg.connect(pg.owner_url) as conn:
        keys = [
            row[0]
            for row in conn.execute(
                "SELECT partition_key FROM devhost_eventhubs.events WHERE hub = 'module-work'"
                " AND convert_from(body, 'UTF8')::jsonb ->> 'execution_id' = %s",
                (str(execution.id),),
            ).fetchall()
        ]
    # Each attempt its own key (a slow one holds up only what shares its partition); both copies of "a" share one.
    assert sorted(keys) == [f"{execution.id}:a:run:1", f"{execution.id}:a:run:1", f"{execution.id}:b:run:1"]
