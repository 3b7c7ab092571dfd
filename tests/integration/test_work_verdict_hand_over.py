# intent_ref: platform.execution
"""The verdicts that a lease expiry, a heartbeat's cancel or a stale item end (ADR 0027, amended 2026-12-07): a slow
task hub does not hold a lease answer past the leases it hands out, and a verdict whose raise failed, was cut off, or
whose host died after the commit is raised again by the sweeper until the task hub takes it."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.api.routers import work
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import remote, sweeper, work_queue
from shared.engine import steps as store
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_lease_expired_answer import _lease_runs_out
from tests.integration.test_verdict_handover import GONE, TRANSIENT, FlakyDurable
from tests.integration.test_work_queue_growth import _explain, _rows_read
from tests.security.test_task_token_no_trace import remote_attempt

pytestmark = pytest.mark.integration
TENANT = "verdict-hand-over"


class SlowDurable:
    """A task hub in a brownout: each raise is answered after `delay_s` (well inside the client's own 240 s)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        await asyncio.sleep(self.delay_s)


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811
    return api.provision(TENANT).id


def _poll(api: ApiHarness, client: Any, actions: list[str], lease_s: float = 60) -> Any:  # noqa: F811
    """One lease poll of the tenant's worker, its raises going to `client`."""
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    try:
        body = {"actions": actions, "max_items": 1, "lease_s": lease_s, "wait_s": 0, "worker": "w"}
        return api.client.post("/api/v1/work/lease", json=body, headers=api.headers(TENANT, ["Module.Worker"]))
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


class Refusing(FlakyDurable):
    """A task hub that refuses every raise for now, or answers that the orchestration is gone for those of `gone`;
    `asked` names every instance a raise was tried for."""

    def __init__(self, gone: frozenset[str] | set[str] = frozenset()) -> None:
        super().__init__()
        self.gone = gone
        self.asked: list[str] = []

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        self.asked.append(instance_id)
        raise RuntimeError(GONE.format(instance_id) if instance_id in self.gone else TRANSIENT)


def _delivery(pool: ConnectionPool[Any], tenant_id: uuid.UUID, key: AttemptKey) -> str | None:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None
    return attempt.delivery


def _raise_again(
    monkeypatch: pytest.MonkeyPatch, client: FlakyDurable, pool: ConnectionPool[Any], control: ConnectionPool[Any]
) -> None:
    """One sweeper pass of the verdicts still to hand over, without its grace (time passed)."""
    monkeypatch.setattr(sweeper, "VERDICT_GRACE_S", 0.0)
    asyncio.run(sweeper.raise_verdicts_again(client, pool=pool, control_pool=control))


def _raised(client: FlakyDurable, key: AttemptKey) -> list[Any]:
    return [
        data for instance, name, data in client.delivered if (instance, name) == (str(key.execution_id), key.event_name)
    ]


def test_a_slow_task_hub_does_not_hold_the_answer_past_its_leases(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The round commits its leases (their clocks start), then raises the verdicts of what it ended: one after another
    # and each unbounded, a task hub answering in 8 s handed out a 5 s lease that had run out on arrival.
    expired = remote_attempt(app_pool, tenant)
    _lease_runs_out(app_pool, expired)
    action = f"slow-hub-{uuid.uuid4().hex[:6]}"
    _queued(app_pool, tenant, action, path=["running"])
    started = time.monotonic()
    answer = _poll(api, SlowDurable(8.0), [action], lease_s=5)
    received = datetime.now(UTC)
    assert answer.status_code == 200, answer.text
    (item,) = answer.json()["items"]
    assert datetime.fromisoformat(item["lease_expires_at"]) > received
    assert time.monotonic() - started < work.VERDICT_RAISE_BOUND_S + 2.0
    # Cut off, the verdict is not lost: still to be handed over, the sweeper raises it.
    assert _delivery(app_pool, tenant, expired.key) == "raising"
    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    assert [verdict["state"] for verdict in _raised(hub, expired.key)] == ["timed_out"]
    assert _delivery(app_pool, tenant, expired.key) == "handed_over"


def test_an_expiry_verdict_whose_raise_failed_is_raised_again_until_taken(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The poll ended the attempt timed out and committed; its one raise failed and nothing raised it again: the step
    # waited for its own timeout, its retry kept from starting.
    expired = remote_attempt(app_pool, tenant)
    _lease_runs_out(app_pool, expired)
    refusing = Refusing()
    assert _poll(api, refusing, ["nothing-queued"]).status_code == 200
    assert str(expired.key.execution_id) in refusing.asked
    assert _delivery(app_pool, tenant, expired.key) == "raising"
    still = Refusing()  # the task hub still away: the next pass tries again
    _raise_again(monkeypatch, still, app_pool, control_pool)
    assert _delivery(app_pool, tenant, expired.key) == "raising"
    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    (verdict,) = _raised(hub, expired.key)
    assert verdict["ok"] is False and verdict["state"] == "timed_out" and verdict["retryable"] is True
    assert _delivery(app_pool, tenant, expired.key) == "handed_over"
    again = FlakyDurable()
    _raise_again(monkeypatch, again, app_pool, control_pool)
    assert _raised(again, expired.key) == []  # taken: never raised again


def test_a_verdict_raised_on_the_poll_is_not_raised_again(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expired = remote_attempt(app_pool, tenant)
    _lease_runs_out(app_pool, expired)
    hub = FlakyDurable()
    assert _poll(api, hub, ["nothing-queued"]).status_code == 200
    assert len(_raised(hub, expired.key)) == 1
    assert _delivery(app_pool, tenant, expired.key) == "handed_over"
    again = FlakyDurable()
    _raise_again(monkeypatch, again, app_pool, control_pool)
    assert _raised(again, expired.key) == []


def test_the_sweepers_expiry_and_a_heartbeats_cancel_are_raised_again(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sweeper's own expiry raised each verdict once, and a heartbeat that ended its attempt for a cancel too.
    swept = remote_attempt(app_pool, tenant)
    _lease_runs_out(app_pool, swept)
    asyncio.run(sweeper.expire_work_leases(Refusing(), pool=app_pool, control_pool=control_pool))
    assert _delivery(app_pool, tenant, swept.key) == "raising"

    beaten = remote_attempt(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute(
            "UPDATE app.executions SET cancel_requested_at = clock_timestamp() WHERE id = %s",
            (beaten.key.execution_id,),
        )
        row = conn.execute(
            "SELECT id, lease_id FROM app.work_items WHERE execution_id = %s", (beaten.key.execution_id,)
        ).fetchone()
    assert row is not None
    api.client.app.dependency_overrides[get_durable_client] = lambda: Refusing()  # type: ignore[attr-defined]
    try:
        beat = api.client.post(
            f"/api/v1/work/{row['id']}/heartbeat",
            json={"lease_id": str(row["lease_id"]), "extend_s": 60},
            headers=api.headers(TENANT, ["Module.Worker"]),
        )
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]
    assert beat.status_code == 200 and beat.json()["state"] == "cancelled", beat.text
    assert _delivery(app_pool, tenant, beaten.key) == "raising"

    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    assert [verdict["state"] for verdict in _raised(hub, swept.key)] == ["timed_out"]
    assert [verdict["state"] for verdict in _raised(hub, beaten.key)] == ["abandoned"]
    assert _delivery(app_pool, tenant, swept.key) == _delivery(app_pool, tenant, beaten.key) == "handed_over"


def test_a_verdict_nobody_waits_for_is_handed_over_without_a_raise(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its execution ended since (or its orchestration is gone): it leaves the sweeper's list, raised or not.
    ended = remote_attempt(app_pool, tenant)
    gone = remote_attempt(app_pool, tenant)
    for attempt in (ended, gone):
        _lease_runs_out(app_pool, attempt)
    assert _poll(api, Refusing(), ["nothing-queued"]).status_code == 200
    with tenant_transaction(tenant, pool=app_pool) as conn:
        repo.transition(conn, ended.key.execution_id, "failed", error="ended meanwhile")
    hub = Refusing(gone={str(gone.key.execution_id)})
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    assert str(ended.key.execution_id) not in hub.asked and str(gone.key.execution_id) in hub.asked
    assert _delivery(app_pool, tenant, ended.key) == _delivery(app_pool, tenant, gone.key) == "handed_over"


HISTORY = 20_000
_HISTORY_ROWS = """
INSERT INTO app.step_attempts (tenant_id, execution_id, step_id, phase, attempt, action, remote, state, error,
                               dispatched_at, finished_at)
SELECT %(tenant)s, gen_random_uuid(), 'build', 'run', 1, 'build-container', true,
       CASE WHEN i %% 2 = 0 THEN 'timed_out' ELSE 'succeeded' END, NULL,
       now() - interval '1 day', now() - interval '1 day'
  FROM generate_series(1, %(n)s) AS i
"""


def test_finding_the_verdicts_to_raise_again_reads_none_of_the_history(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    pg: Any,
) -> None:
    # Every ended remote attempt stays, and the sweeper looks for these every run: it reads the few still to hand
    # over (index step_attempts_raising), never the ended attempts before them.
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        with admin.transaction():
            admin.execute("SET LOCAL session_replication_role = replica")  # no execution rows for the history
            admin.execute(_HISTORY_ROWS, {"tenant": tenant, "n": HISTORY})
        admin.execute("ANALYZE app.step_attempts")
        finder = _explain(
            admin,
            sql.SQL(
                "SELECT DISTINCT a.tenant_id FROM app.step_attempts a WHERE a.delivery = 'raising'"
                " AND a.finished_at < clock_timestamp() - make_interval(secs => 0) LIMIT 100"
            ),
            None,
        )
    assert _rows_read(finder)["step_attempts"] < 100
    params = {"terminal": sorted(repo.TERMINAL), "grace_s": 0.0, "limit": 100}
    with tenant_transaction(tenant, pool=app_pool) as conn:
        plan = _explain(conn, sql.SQL(work_queue._STILL_RAISING), params)
    assert _rows_read(plan)["step_attempts"] < 100


def test_a_slow_task_hub_holds_the_sweepers_raises_no_longer_than_the_runs_budget(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each tenant's raises were bounded, the run's not: with a task hub answering in 10 s, three tenants with verdicts
    # to raise again held the run 15 s (up to 100 tenants, minutes), every later step of the sweep waiting.
    tenants = [api.provision(f"verdict-budget-{index}").id for index in range(3)]
    for tenant_id in tenants:
        _lease_runs_out(app_pool, remote_attempt(app_pool, tenant_id))
    asyncio.run(sweeper.expire_work_leases(Refusing(), pool=app_pool, control_pool=control_pool))
    monkeypatch.setattr(sweeper, "VERDICT_GRACE_S", 0.0)
    monkeypatch.setattr(sweeper, "RAISE_RUN_BUDGET_S", 1.0)
    started = time.monotonic()
    asyncio.run(sweeper.raise_verdicts_again(SlowDurable(10.0), pool=app_pool, control_pool=control_pool))
    took = time.monotonic() - started
    assert took < 1.0 + remote.CANCEL_GRACE_S + 3.0, f"the run's raises took {took:.1f} s"
    # Cut off, none is lost: a later run, the hub answering again, hands every one over.
    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    for tenant_id in tenants:
        with tenant_transaction(tenant_id, pool=app_pool) as conn:
            assert work_queue.raising_verdicts(conn, grace_s=0.0) == []
