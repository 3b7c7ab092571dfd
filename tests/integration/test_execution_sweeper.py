# intent_ref: platform.execution
"""The stuck-execution sweeper on the real database (only the orchestration side is a fake): stalled starts taken
over once and started with the request's input, quiet executions whose orchestration ended end failed, per tenant."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import platform_transaction, tenant_transaction
from shared.engine import control, sweeper
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT, ORCHESTRATOR
from shared.engine.start import StartRequest, active_executions, start_execution
from shared.engine.steps import AttemptKey
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]
_BACKDATE_CLAIM = "UPDATE app.executions SET start_claimed_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"
_BACKDATE_UPDATE = "UPDATE app.executions SET updated_at = clock_timestamp() - interval '10 minutes' WHERE id = %s"


def _status(runtime: str, output: Any = None) -> DurableOrchestrationStatus:
    """A status as the SDK parses it from the Durable HTTP API."""
    return DurableOrchestrationStatus.from_json(
        {
            "name": ORCHESTRATOR,
            "instanceId": "x",
            "runtimeStatus": runtime,
            "createdTime": "2024-01-01T00:00:00Z",
            "output": output,
        }
    )


class FakeDurable:
    """The orchestration side: answers get_status from a table (absent: no such instance), records start_new."""

    def __init__(self, statuses: dict[uuid.UUID, DurableOrchestrationStatus] | None = None) -> None:
        self.statuses = {str(key): value for key, value in (statuses or {}).items()}
        self.asked: list[str] = []
        self.started: list[tuple[str, str, Any]] = []
        self.raised: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()

    async def get_status(self, instance_id: str) -> DurableOrchestrationStatus:
        with self._lock:
            self.asked.append(instance_id)
            # The SDK answers a 404 with an empty (falsy) status object (and a 500's error body with another).
            found = self.statuses.get(instance_id)
            return DurableOrchestrationStatus.from_json("") if found is None else found

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        assert instance_id is not None
        with self._lock:
            self.started.append((orchestration_function_name, instance_id, client_input))
            self.statuses[instance_id] = _status("Pending")
        return instance_id

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        with self._lock:
            self.raised.append((instance_id, event_name, event_data))

    def started_ids(self) -> list[str]:
        with self._lock:
            return [instance_id for _, instance_id, _ in self.started]


class Tenant:
    """A fresh tenant of this module (each test its own, so no test sees another's executions), its intent, and
    another for children (a child may not run the intent running above it)."""

    def __init__(self, api: ApiHarness) -> None:
        self.name = f"sweep-{uuid.uuid4().hex[:8]}"
        self.id = api.provision(
            self.name, allowed_modules=["wait"], quotas={"requests_per_minute": 10_000, "burst": 1_000}
        ).id
        self.intent, self.child_intent = (self._intent(api) for _ in range(2))

    def _intent(self, api: ApiHarness) -> uuid.UUID:
        body = {
            "name": f"sweep-{uuid.uuid4().hex[:10]}",
            "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
        }
        created = api.client.post("/api/v1/intents", json=body, headers=api.headers(self.name, AUTHOR))
        assert created.status_code == 201, created.text
        return uuid.UUID(created.json()["id"])


def _recorded(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    intent_id: uuid.UUID,
    *,
    stale: bool = True,
    key: str | None = None,
    parent: uuid.UUID | None = None,
) -> tuple[uuid.UUID, dict[str, Any]]:
    """What a request that died between commit and launch leaves: a pending row holding the start claim."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        tenant = get_tenant(conn, tenant_id)
        assert tenant is not None
        started = start_execution(
            conn,
            tenant.facts(),
            StartRequest(
                intent_id=intent_id,
                idempotency_key=key,
                requester=Requester("tester", frozenset(), app_only=False),
                parent_execution_id=parent,
                parent_step_id="child" if parent else None,
            ),
            max_concurrent=1000,
            authorize=lambda _item: None,
        )
        assert started.orchestration_input is not None
        if stale:
            conn.execute(_BACKDATE_CLAIM, (started.execution.id,))
    return started.execution.id, started.orchestration_input


def _moved(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    intent_id: uuid.UUID,
    path: list[repo.Status],
    *,
    quiet: bool = True,
) -> uuid.UUID:
    """An execution its orchestration moved along `path`, last changed ten minutes ago when `quiet`."""
    execution_id, _ = _recorded(pool, tenant_id, intent_id, stale=False)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        for status in path:
            repo.transition(conn, execution_id, status)
        if quiet:
            conn.execute(_BACKDATE_UPDATE, (execution_id,))
    return execution_id


def _get(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> repo.Execution:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return repo.get_execution(conn, execution_id)


def test_discovery_answers_only_the_ids_of_tenants_with_candidates(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    pg: Any,
) -> None:
    a, b, c = Tenant(api), Tenant(api), Tenant(api)
    _recorded(app_pool, a.id, a.intent)  # a stalled start
    # b: a fresh claim, a stalled child (its parent's orchestration starts it), a recent run, an old end.
    _recorded(app_pool, b.id, b.intent, stale=False)
    parent = _moved(app_pool, b.id, b.intent, ["running"], quiet=False)
    _recorded(app_pool, b.id, b.child_intent, parent=parent)
    _moved(app_pool, b.id, b.intent, ["running", "succeeded"])
    _moved(app_pool, c.id, c.intent, ["running", "waiting"])  # quiet and unfinished

    found = sweeper.stuck_tenants(10_000, control_pool=control_pool)
    assert a.id in found and c.id in found and b.id not in found
    assert len(found) == len(set(found))
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        result, definer, config = conn.execute(  # type: ignore[misc]
            "SELECT pg_get_function_result(p.oid), p.prosecdef, p.proconfig FROM pg_proc p WHERE p.oid ="
            " 'app.execution_sweep_tenants(double precision, double precision, integer, uuid[])'::regprocedure"
        ).fetchone()
    assert (result, definer, config) == ("SETOF uuid", True, ['search_path=""'])
    # The control plane reaches the ids through the function only, never the rows; the runtime role not at all.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), platform_transaction(pool=control_pool) as conn:
        conn.execute("SELECT tenant_id FROM app.executions")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(a.id, pool=app_pool) as conn:
        conn.execute("SELECT * FROM app.execution_sweep_tenants(60, 300, 10)")


def test_a_stalled_start_is_taken_over_once_and_started_with_the_requests_input(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    a = Tenant(api)
    key = f"sweep-{uuid.uuid4().hex[:8]}"
    stalled, expected_input = _recorded(app_pool, a.id, a.intent, key=key)
    fresh, _ = _recorded(app_pool, a.id, a.intent, stale=False)
    parent = _moved(app_pool, a.id, a.intent, ["running"], quiet=False)
    child, _ = _recorded(app_pool, a.id, a.child_intent, parent=parent)

    client = FakeDurable()
    result = asyncio.run(sweeper.sweep_tenant(a.id, client, pool=app_pool))
    assert client.started == [(ORCHESTRATOR, str(stalled), expected_input)]
    assert (result.started, result.ended) == (1, 0)
    after = _get(app_pool, a.id, stalled)
    assert after.status == "pending"  # the orchestration records its own start
    assert after.start_claimed_at is not None and after.start_claimed_at > after.created_at
    assert (_get(app_pool, a.id, fresh).status, _get(app_pool, a.id, child).status) == ("pending", "pending")

    # The claim is fresh now: neither another run nor a repeat of the idempotent request starts it again.
    again = FakeDurable()
    asyncio.run(sweeper.sweep_tenant(a.id, again, pool=app_pool))
    assert again.started == []
    with tenant_transaction(a.id, pool=app_pool) as conn:
        tenant = get_tenant(conn, a.id)
        assert tenant is not None
        replay = start_execution(
            conn,
            tenant.facts(),
            StartRequest(
                intent_id=a.intent, idempotency_key=key, requester=Requester("tester", frozenset(), app_only=False)
            ),
            max_concurrent=1000,
            authorize=lambda _item: None,
        )
    assert (replay.execution.id, replay.created, replay.orchestration_input) == (stalled, False, None)


def test_two_sweepers_never_both_take_one_claim(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    d = Tenant(api)
    stalled = [str(_recorded(app_pool, d.id, d.intent)[0]) for _ in range(6)]
    client = FakeDurable()
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        asyncio.run(sweeper.sweep_tenant(d.id, client, pool=app_pool))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(client.started_ids()) == Counter(stalled)  # every stalled start, each exactly once


def _allow_modules(api: ApiHarness, tenant_id: uuid.UUID, modules: list[str]) -> None:
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        conn.execute("UPDATE app.tenants SET allowed_modules = %s WHERE id = %s", (modules, tenant_id))


def test_a_start_that_already_ran_or_cannot_be_rebuilt_is_not_started_again(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    e = Tenant(api)
    running, _ = _recorded(app_pool, e.id, e.intent)  # its starter got as far as starting it
    crashed, _ = _recorded(app_pool, e.id, e.intent)  # started, and its orchestration failed before recording
    gated, _ = _recorded(app_pool, e.id, e.intent)  # its module was taken from the tenant since
    client = FakeDurable({running: _status("Running"), crashed: _status("Failed", "boom")})
    _allow_modules(api, e.id, [])
    try:
        result = asyncio.run(sweeper.sweep_tenant(e.id, client, pool=app_pool))
    finally:
        _allow_modules(api, e.id, ["wait"])
    assert client.started == []
    assert (result.started, result.ended) == (0, 2)
    assert _get(app_pool, e.id, running).status == "pending"
    assert (_get(app_pool, e.id, crashed).status, _get(app_pool, e.id, crashed).error) == (
        "failed",
        "orchestration failed: boom",
    )
    refused = _get(app_pool, e.id, gated)
    assert refused.status == "failed"
    assert refused.error is not None and refused.error.startswith("the orchestration could not be started:")


def test_a_quiet_execution_whose_orchestration_ended_ends_failed_through_the_transition(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    c = Tenant(api)
    failed = _moved(app_pool, c.id, c.intent, ["running"])
    terminated = _moved(app_pool, c.id, c.intent, ["running", "waiting"])
    purged = _moved(app_pool, c.id, c.intent, ["running", "compensating"])
    alive = _moved(app_pool, c.id, c.intent, ["running"])
    recent = _moved(app_pool, c.id, c.intent, ["running"], quiet=False)
    client = FakeDurable(
        {
            failed: _status("Failed", "Orchestrator function failed: KeyError"),
            terminated: _status("Terminated", "operator stop"),
            alive: _status("Running"),
            recent: _status("Failed", "not looked at"),
        }
    )
    with tenant_transaction(c.id, pool=app_pool) as conn:
        assert active_executions(conn) == 5

    result = asyncio.run(sweeper.sweep_tenant(c.id, client, pool=app_pool))
    assert str(recent) not in client.asked  # not quiet: not even asked
    expected = {
        failed: "orchestration failed: Orchestrator function failed: KeyError",
        terminated: "orchestration was terminated: operator stop",
        purged: "orchestration was terminated: its instance no longer exists",
    }
    for execution_id, cause in expected.items():
        ended = _get(app_pool, c.id, execution_id)
        assert (ended.status, ended.error, ended.finished_at is not None) == ("failed", cause, True)
        with tenant_transaction(c.id, pool=app_pool) as conn:
            last = repo.events_after(conn, execution_id, 0, 100)[-1]
            outbox = conn.execute(
                "SELECT data FROM app.outbox WHERE event_type = 'execution.failed' AND subject = %s",
                (f"executions/{execution_id}",),
            ).fetchall()
        assert (last.type, last.data["to"], last.data["error"]) == ("execution_failed", "failed", cause)
        assert [row["data"]["error"] for row in outbox] == [cause]
    assert (_get(app_pool, c.id, alive).status, _get(app_pool, c.id, recent).status) == ("running", "running")
    assert (result.ended, result.checked) == (3, 4)
    with tenant_transaction(c.id, pool=app_pool) as conn:
        assert active_executions(conn) == 2  # the ended ones' quota slots are free again

    # Ended once: a second sweeper that saw the same statuses changes nothing.
    assert not sweeper.end_execution(c.id, failed, "orchestration failed: again", pool=app_pool)
    assert _get(app_pool, c.id, failed).error == expected[failed]


# The host's answer when reading a status fails (its store briefly unreachable): a 500 whose body the SDK keeps as the
# attributes of an otherwise empty status, which read as "no such instance" ended running executions for good.
HOST_ERROR = {
    "Message": "Something went wrong while processing your request",
    "ExceptionMessage": "The remote server returned an error: (503) Server Busy.",
}


def test_a_status_the_host_could_not_read_ends_nothing_and_starts_nothing(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    c = Tenant(api)
    quiet = _moved(app_pool, c.id, c.intent, ["running", "waiting"])
    stalled, _ = _recorded(app_pool, c.id, c.intent)
    unreadable = DurableOrchestrationStatus.from_json(HOST_ERROR)
    client = FakeDurable({quiet: unreadable, stalled: unreadable})

    result = asyncio.run(sweeper.sweep_tenant(c.id, client, pool=app_pool))
    assert {str(quiet), str(stalled)} <= set(client.asked)
    assert (_get(app_pool, c.id, quiet).status, _get(app_pool, c.id, stalled).status) == ("waiting", "pending")
    assert client.started == [] and result.ended == 0


def test_an_ended_executions_open_steps_end_with_it_and_its_running_child_is_cancelled(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    e = Tenant(api)
    parent = _moved(app_pool, e.id, e.intent, ["running"], quiet=False)
    child, _ = _recorded(app_pool, e.id, e.child_intent, stale=False, parent=parent)
    with tenant_transaction(e.id, pool=app_pool) as conn:
        repo.transition(conn, child, "running")
        store.begin_attempt(conn, AttemptKey(parent, "pause", "run", 1), action="wait", remote=False)
        store.set_child(conn, parent, "pause", child)
        conn.execute(_BACKDATE_UPDATE, (parent,))
    client = FakeDurable({parent: _status("Terminated", "operator stop"), child: _status("Running")})

    result = asyncio.run(sweeper.sweep_tenant(e.id, client, pool=app_pool))
    assert result.ended == 1
    with tenant_transaction(e.id, pool=app_pool) as conn:
        step = store.list_steps(conn, parent)[0]
        attempt = store.get_attempt(conn, AttemptKey(parent, "pause", "run", 1))
        cancelled_child = repo.get_execution(conn, child)
        stream = [event.type for event in repo.events_after(conn, parent, 0, 100)]
    cause = "orchestration was terminated: operator stop"
    assert (step["state"], step["error"]) == ("cancelled", cause)
    assert stream[-2:] == ["step_cancelled", "execution_failed"]  # the execution's end stays the last word
    assert attempt is not None and attempt.state == "abandoned"
    # The child runs on under a parent that has ended: it is told to cancel, as a stopping run would tell it.
    assert cancelled_child.status == "running" and cancelled_child.cancel_requested_at is not None
    assert client.raised == [(str(child), "cancel", {"by": f"execution:{parent}"})]


def test_status_calls_per_tenant_are_capped(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    d = Tenant(api)
    quiet = [_moved(app_pool, d.id, d.intent, ["running", "waiting"]) for _ in range(5)]
    stalled = [_recorded(app_pool, d.id, d.intent)[0] for _ in range(2)]
    client = FakeDurable(dict.fromkeys(quiet, _status("Running")))
    result = asyncio.run(sweeper.sweep_tenant(d.id, client, budget=3, pool=app_pool))
    # Stalled starts first (they are certainly stuck), then what the budget leaves for the quiet ones.
    assert (result.checked, result.started, len(client.asked)) == (3, 2, 3)
    assert client.asked[:2] == [str(execution_id) for execution_id in stalled]
    assert {_get(app_pool, d.id, execution_id).status for execution_id in quiet} == {"waiting"}


def test_sweeping_one_tenant_never_touches_another_tenants_executions(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    a, b = Tenant(api), Tenant(api)
    _recorded(app_pool, a.id, a.intent)
    stalled_b, _ = _recorded(app_pool, b.id, b.intent)
    quiet_b = _moved(app_pool, b.id, b.intent, ["running"])
    before = (_get(app_pool, b.id, stalled_b), _get(app_pool, b.id, quiet_b))
    client = FakeDurable()  # every instance unknown: b's quiet execution would be ended if it were reached
    result = asyncio.run(sweeper.sweep_tenant(a.id, client, pool=app_pool))
    assert result.started == 1
    assert {str(stalled_b), str(quiet_b)}.isdisjoint(client.asked + client.started_ids())
    assert (_get(app_pool, b.id, stalled_b), _get(app_pool, b.id, quiet_b)) == before
    with tenant_transaction(a.id, pool=app_pool) as conn:
        row = conn.execute("SELECT count(*) AS n FROM app.executions WHERE tenant_id = %s", (b.id,)).fetchone()
    assert row == {"n": 0}


def test_a_running_execution_past_its_steps_timeout_is_recorded_stalled_once(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    name = f"stall-{uuid.uuid4().hex[:8]}"
    tenant_id = api.provision(
        name, allowed_modules=["artifact.write"], quotas={"requests_per_minute": 10_000, "burst": 1_000}
    ).id
    step = {"action": "artifact.write", "name": "a.json", "content": {"a": 1}}
    body = {
        "name": f"stall-{uuid.uuid4().hex[:10]}",
        "definition": {
            "target": "staging",
            "steps": [{"id": "slow", "timeout_s": 1, **step}, {"id": "fresh", "timeout_s": 600, **step}],
        },
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    execution_id = _moved(app_pool, tenant_id, uuid.UUID(created.json()["id"]), ["running"], quiet=False)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        for step_id in ("slow", "fresh"):
            key = AttemptKey(execution_id, step_id, "run", 1)
            store.begin_attempt(conn, key, action="artifact.write", remote=False)
        conn.execute(_BACKDATE_UPDATE, (execution_id,))
    time.sleep(1.5)  # "slow" is past its 1 s timeout now: its orchestrator's timer should have ended it
    client = FakeDurable({execution_id: _status("Running")})

    for _ in range(2):
        asyncio.run(sweeper.sweep_tenant(tenant_id, client, pool=app_pool, stall_grace_s=0.0))
        with tenant_transaction(tenant_id, pool=app_pool) as conn:
            conn.execute(_BACKDATE_UPDATE, (execution_id,))  # quiet again: the next run looks at it again

    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        stalled = [e for e in repo.events_after(conn, execution_id, 0, 100) if e.type == "execution_stalled"]
        execution = repo.get_execution(conn, execution_id)
    assert [(e.step_id, e.data["attempt"]) for e in stalled] == [("slow", 1)]  # once, and not the fresh step
    assert "past its 1 s timeout" in stalled[0].data["reason"]
    assert execution.status == "running"  # recorded, nothing else changed
    assert client.asked.count(str(execution_id)) == 2


def test_a_cancel_recorded_but_never_told_to_its_running_execution_is_raised_again_once(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
) -> None:
    # A cancel whose raise failed is recorded and answered 503 ("send it again"); a client that gave up left a run
    # that learns of it only from its event (one waiting on an approval) waiting as long as its steps allowed.
    g = Tenant(api)
    untold = _moved(app_pool, g.id, g.intent, ["running", "waiting"], quiet=False)
    told = _moved(app_pool, g.id, g.intent, ["running", "waiting"], quiet=False)
    with tenant_transaction(g.id, pool=app_pool) as conn:
        for execution_id in (untold, told):
            control.request_cancel(conn, execution_id, "tid/alice")
        store.mark_cancel_handed_over(conn, told)
        for execution_id in (untold, told):
            conn.execute(_BACKDATE_UPDATE, (execution_id,))
    client = FakeDurable({untold: _status("Running"), told: _status("Running")})
    asyncio.run(sweeper.sweep_tenant(g.id, client, pool=app_pool))
    assert client.raised == [(str(untold), CANCEL_EVENT, {"by": "tid/alice"})]
    with tenant_transaction(g.id, pool=app_pool) as conn:
        assert store.cancel_handed_over(conn, untold)
        conn.execute(_BACKDATE_UPDATE, (untold,))
    again = FakeDurable({untold: _status("Running"), told: _status("Running")})
    asyncio.run(sweeper.sweep_tenant(g.id, again, pool=app_pool))
    assert again.raised == []  # handed over: raised no more


def test_a_cancel_raised_again_into_a_hung_task_hub_holds_the_run_only_its_bound(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Hung(FakeDurable):
        async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
            await asyncio.sleep(30)

    h = Tenant(api)
    untold = _moved(app_pool, h.id, h.intent, ["running", "waiting"], quiet=False)
    with tenant_transaction(h.id, pool=app_pool) as conn:
        control.request_cancel(conn, untold, "tid/alice")
        conn.execute(_BACKDATE_UPDATE, (untold,))
    monkeypatch.setattr(sweeper, "STATUS_CALL_BOUND_S", 0.2)
    began = time.monotonic()
    asyncio.run(sweeper.sweep_tenant(h.id, Hung({untold: _status("Running")}), pool=app_pool))
    assert time.monotonic() - began < 10
    with tenant_transaction(h.id, pool=app_pool) as conn:
        assert not store.cancel_handed_over(conn, untold)  # not taken: raised again by a later run
