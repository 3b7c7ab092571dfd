# intent_ref: platform.execution
"""What the work queue reads and keeps stays bounded by live work, not history or callers (ADR 0027, amended
2026-12-06): the expiry reads only open attempts, and lease calls record pollers only for real actions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.api.routers import work as work_router
from shared.db.session import tenant_transaction
from shared.engine import work_queue
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued

pytestmark = pytest.mark.integration
FINISHED = 20_000
BACKLOG = 1000
# The attempts and items of ended remote steps, leased once, as history accumulates them (nothing prunes them); and a
# backlog of queued ones (open attempts). Enough of both that the planner, left to itself, read the history.
_ROWS = """
WITH g AS (SELECT gen_random_uuid() AS ex, gen_random_uuid() AS lease, i FROM generate_series(1, %(n)s) AS i),
attempts AS (
    INSERT INTO app.step_attempts (tenant_id, execution_id, step_id, phase, attempt, action, remote, state,
                                   dispatched_at, finished_at)
    SELECT %(tenant)s, ex, 'build', 'run', 1, 'build-container', true, %(state)s, now() - interval '1 day',
           CASE WHEN %(state)s <> 'dispatched' THEN now() - interval '1 day' END FROM g RETURNING 1)
INSERT INTO app.work_items (tenant_id, execution_id, step_id, phase, attempt, action, params, enqueued_at, deadline,
                            lease_id, leased_by, leased_at, lease_expires_at)
SELECT %(tenant)s, ex, 'build', 'run', 1, 'build-container', '{}'::jsonb, now() - interval '1 day',
       now() + interval '1 hour', CASE WHEN %(state)s <> 'dispatched' THEN lease END, 'w', now() - interval '1 day',
       now() - interval '1 day' + i * interval '1 ms'
  FROM g
"""


class NoOrchestrations:
    """The request's Durable client: verdicts raised are dropped (no orchestration waits in these tests)."""

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        return None


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[None]:  # noqa: F811  # the fixture imported above
    api.client.app.dependency_overrides[get_durable_client] = NoOrchestrations  # type: ignore[attr-defined]
    yield
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


def _scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "Relation Name" in plan:
        yield plan
    for child in plan.get("Plans", []):
        yield from _scans(child)


def _rows_read(plan: dict[str, Any]) -> dict[str, int]:
    """Per table of the work queue, the rows its scans read (kept or filtered out), over all their loops; fails on a
    sequential scan of one."""
    read: dict[str, int] = {"step_attempts": 0, "work_items": 0}
    for node in _scans(plan):
        table = node["Relation Name"]
        if table not in read:
            continue
        assert node["Node Type"] != "Seq Scan", f"a sequential scan of {table}"
        per_loop = (
            node["Actual Rows"] + node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
        )
        read[table] += per_loop * node["Actual Loops"]
    return read


def _explain(conn: psycopg.Connection[Any], query: sql.Composable, params: Any) -> dict[str, Any]:
    """The executed plan of `query` (EXPLAIN ANALYZE: the rows each node really read, not estimates)."""
    row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query, params).fetchone()
    assert row is not None
    document = row["QUERY PLAN"] if isinstance(row, dict) else row[0]
    plan: dict[str, Any] = document[0]["Plan"]
    return plan


def test_the_lease_expiry_reads_open_attempts_only_however_long_the_history(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    pg: Any,
) -> None:
    handle = api.provision("history")
    action = f"history-{uuid.uuid4().hex[:6]}"
    ran_out = _queued(app_pool, handle.id, action, path=["running"])
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        (lease,) = work_queue.lease(conn, handle.id, actions=[action], max_items=1, lease_s=60, worker="w").leases
        conn.execute(
            "UPDATE app.work_items SET lease_expires_at = clock_timestamp() - interval '1 s' WHERE id = %s",
            (lease.item.id,),
        )
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
        with admin.transaction():
            # Only the rows matter here, not their executions and steps: foreign keys are not checked.
            admin.execute("SET LOCAL session_replication_role = replica")
            admin.execute(_ROWS, {"n": FINISHED, "tenant": handle.id, "state": "succeeded"})
            admin.execute(_ROWS, {"n": BACKLOG, "tenant": handle.id, "state": "dispatched"})
        admin.execute("ANALYZE app.step_attempts")
        admin.execute("ANALYZE app.work_items")
        counts = admin.execute(
            "SELECT count(*) FILTER (WHERE tenant_id = %s) AS tenant, count(*) AS everyone FROM app.step_attempts"
            " WHERE state = 'dispatched'",
            (handle.id,),
        ).fetchone()
        finder = admin.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'app.work_expired_lease_tenants(integer)'::regprocedure"
        ).fetchone()
    assert counts is not None and finder is not None
    tenant_open, everyone_open = counts
    assert tenant_open == BACKLOG + 1 and 2 * tenant_open < FINISHED

    # As each lease call and re-check runs it: the runtime role, pinned to the tenant. Each open attempt is read at
    # most twice (found, then joined back for the chosen items); none of the history.
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        read = _rows_read(_explain(conn, work_queue._EXPIRED, {"limit": 100}))
    assert read["step_attempts"] <= 2 * tenant_open and read["work_items"] <= 2 * tenant_open, read
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        assert [attempt.key for attempt in work_queue.expire_leases(conn)] == [ran_out]

    # The sweeper's finder (every 30 s), as its owner runs it: every tenant's open attempts, none of the history.
    with psycopg.connect(pg.owner_url) as owner:
        body = sql.SQL(finder[0].replace("max_tenants", "100"))  # noqa: S608  # the function's own text
        read = _rows_read(_explain(owner, body, None))
    assert read["step_attempts"] <= everyone_open and read["work_items"] <= everyone_open, read


def _pollers(api: ApiHarness, tenant_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=dict_row) as admin:
        rows = admin.execute(
            "SELECT action, last_polled_at, last_polled_by FROM app.work_pollers WHERE tenant_id = %s", (tenant_id,)
        ).fetchall()
    return {row["action"]: row for row in rows}


def _register(pool: ConnectionPool[Any], tenant_id: uuid.UUID, action: str) -> None:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        conn.execute(
            "INSERT INTO app.modules (tenant_id, action, params_schema, timeout_s, created_by)"
            " VALUES (app.current_tenant_id(), %s, '{\"type\": \"object\"}'::jsonb, 600, 'test')",
            (action,),
        )


@pytest.mark.usefixtures("durable")
def test_lease_calls_record_pollers_of_the_tenants_own_actions_only(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision("pollers")
    headers = api.headers("pollers", ["Module.Worker"])
    registered = f"registered-{uuid.uuid4().hex[:6]}"
    _register(app_pool, handle.id, registered)
    queued = f"queued-{uuid.uuid4().hex[:6]}"  # no module (it was removed, say), but an item waits for it
    _queued(app_pool, handle.id, queued, path=["running"])

    for _ in range(40):
        made_up = [f"{uuid.uuid4().hex}-" + "x" * 90 for _ in range(32)]
        answer = api.client.post("/api/v1/work/lease", json={"actions": made_up, "max_items": 1}, headers=headers)
        assert answer.status_code == 200, answer.text
    assert _pollers(api, handle.id) == {}

    # A name asked twice in one call is one row (the upsert failed on it before).
    body = {"actions": [registered, registered, queued, "made-up"], "max_items": 5, "worker": "builder-1"}
    answer = api.client.post("/api/v1/work/lease", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert [item["action"] for item in answer.json()["items"]] == [queued]
    polled = _pollers(api, handle.id)
    assert set(polled) == {registered, queued}
    assert polled[registered]["last_polled_by"].startswith("builder-1")


def test_a_poll_that_adds_a_row_trims_rows_of_removed_modules_long_unpolled(
    app_pool: ConnectionPool[Any],
    api: ApiHarness,  # noqa: F811  # the fixture imported above
) -> None:
    handle = api.provision("trim")
    kept, removed, recent, new = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("kept", "removed", "recent", "new"))
    for action in (kept, removed, recent, new):
        _register(app_pool, handle.id, action)
    old = work_queue.POLLER_MAX_AGE + timedelta(days=1)
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        work_queue.record_poll(conn, actions=[kept, removed, recent], worker="w")
    with psycopg.connect(api.admin_url, dbname="quantum") as admin:  # the runtime deletes no module (migration 0046)
        admin.execute(
            "DELETE FROM app.modules WHERE tenant_id = %s AND action = ANY(%s)", (handle.id, [removed, recent])
        )
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        conn.execute(
            "UPDATE app.work_pollers SET last_polled_at = clock_timestamp() - %s WHERE action = ANY(%s)",
            (old, [kept, removed]),
        )
        work_queue.record_poll(conn, actions=[kept], worker="w")  # renews a row, adds none: nothing trimmed
    assert set(_pollers(api, handle.id)) == {kept, removed, recent}
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        work_queue.record_poll(conn, actions=[new], worker="w")
    # Still registered (kept) or polled recently (recent): they stay. Removed and old: gone.
    assert set(_pollers(api, handle.id)) == {kept, recent, new}
    other = api.provision("trim-other")
    with tenant_transaction(other.id, pool=app_pool) as conn:
        # Another tenant's call trims nothing of this one's, whatever age it asks for.
        conn.execute("SELECT app.trim_work_pollers(interval '0 s')")
    assert set(_pollers(api, handle.id)) == {kept, recent, new}


@pytest.mark.usefixtures("durable")
def test_a_long_poll_records_its_poll_once_and_still_ends_leases_on_each_recheck(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle = api.provision("recheck")
    action = f"recheck-{uuid.uuid4().hex[:6]}"
    _register(app_pool, handle.id, action)
    recorded: list[str] = []
    expiries: list[str] = []
    record_poll, expire_leases = work_queue.record_poll, work_queue.expire_leases

    def counted_record(conn: Any, **kwargs: Any) -> None:
        recorded.append("poll")
        record_poll(conn, **kwargs)

    def counted_expire(conn: Any, **kwargs: Any) -> list[Any]:
        expiries.append("expire")
        return expire_leases(conn, **kwargs)

    monkeypatch.setattr(work_queue, "record_poll", counted_record)
    monkeypatch.setattr(work_queue, "expire_leases", counted_expire)
    monkeypatch.setattr(work_router, "FALLBACK_RECHECK_S", 0.1)
    body = {"actions": [action], "max_items": 1, "wait_s": 1}
    answer = api.client.post("/api/v1/work/lease", json=body, headers=api.headers("recheck", ["Module.Worker"]))
    assert answer.status_code == 200 and answer.json()["items"] == []
    assert len(expiries) > 1  # it re-checked, ending run-out leases each time
    assert recorded == ["poll"]
    assert set(_pollers(api, handle.id)) == {action}


ABANDONED = 4000
# Items whose attempt ended before any worker leased them (cancelled while queued, the execution ended, the step timed
# out): they stay unleased for good, and the runtime cannot delete them.
_ENDED_UNLEASED = """
WITH g AS (SELECT gen_random_uuid() AS ex FROM generate_series(1, %(n)s)),
executions AS (
    INSERT INTO app.executions (tenant_id, id, intent_id, intent_version, status, requested_by, finished_at)
    SELECT %(tenant)s, ex, gen_random_uuid(), 1, 'cancelled', 'test', now() - interval '1 day' FROM g RETURNING 1),
attempts AS (
    INSERT INTO app.step_attempts (tenant_id, execution_id, step_id, phase, attempt, action, remote, state,
                                   dispatched_at, finished_at)
    SELECT %(tenant)s, ex, 'build', 'run', 1, %(action)s, true, 'abandoned', now() - interval '1 day',
           now() - interval '1 day' FROM g RETURNING 1)
INSERT INTO app.work_items (tenant_id, execution_id, step_id, phase, attempt, action, params, enqueued_at, deadline)
SELECT %(tenant)s, ex, 'build', 'run', 1, %(action)s, '{}'::jsonb, now() - interval '1 day', now() + interval '1 hour'
  FROM g
"""


def test_items_whose_attempt_ended_unleased_are_never_read_by_a_lease_or_the_list(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision("abandoned")
    action = f"abandoned-{uuid.uuid4().hex[:6]}"
    live = _queued(app_pool, handle.id, action, path=["running"])
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin:
        with admin.transaction():
            admin.execute("SET LOCAL session_replication_role = replica")  # no intents and steps for them
            admin.execute(_ENDED_UNLEASED, {"n": ABANDONED, "tenant": handle.id, "action": action})

    params = {
        "actions": [action],
        "limit": 10,
        "worker": "w",
        "lease_s": 60,
        "terminal": sorted(work_queue.repo.TERMINAL),
    }
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        with conn.transaction(force_rollback=True):  # EXPLAIN ANALYZE runs the lease: nothing of it is kept
            read = _rows_read(_explain(conn, work_queue._LEASE, params))
        listed = {"action": action, "status": "queued", "execution": None, "limit": 10, "after_at": None}
        listed_read = _rows_read(_explain(conn, work_queue._LIST, {**listed, "after_id": None}))
    # The live item only, however many ended ones: found from its open attempt, read again to lock it, then read and
    # written by the update that leases it (its node counted too).
    assert read["work_items"] <= 4 and read["step_attempts"] <= 2, read
    assert listed_read["work_items"] <= 1, listed_read

    with tenant_transaction(handle.id, pool=app_pool) as conn:
        items, _ = work_queue.list_items(conn, action=action, status="queued")
        assert [item.key for item in items] == [live]
        round_ = work_queue.lease(conn, handle.id, actions=[action], max_items=10, lease_s=60, worker="w")
    assert [lease.item.key for lease in round_.leases] == [live] and round_.ended == []
