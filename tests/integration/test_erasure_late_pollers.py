# intent_ref: platform.tenants
"""A worker's poll racing its tenant's erasure leaves no poller row behind: the poll waits on the tenant row the
erasure holds, and is answered as one of a tenant that does not exist once the tenant is gone (migration 0058)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.routers import work as work_router
from shared.db.migrate import APP_MIGRATIONS
from shared.db.roles import OWNER_ROLE
from shared.db.session import tenant_transaction
from shared.engine import work_queue
from shared.tenants.offboarding import TENANT_TABLES
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.lock_waits import until_done_or_waiting
from tests.integration.test_erase_launch_race import durable as durable  # noqa: F401  # the fixture
from tests.integration.test_erase_races import _erase
from tests.integration.test_offboarding import _tenant_row_counts
from tests.integration.test_work_queue_growth import _pollers, _register

pytestmark = pytest.mark.integration

WORKER = ["Module.Worker"]
MIGRATION = APP_MIGRATIONS / "0058_work_pollers_need_their_tenant.sql"


def test_a_poll_adding_its_row_while_the_erasure_holds_the_tenant_is_answered_401_and_leaves_no_row(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    durable: Any,  # noqa: F811  # the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The erasure had deleted the tenant's poller rows, under its lock on the tenant row, when a worker's poll (its
    # statement reading the tenant's modules as committed) added one: nothing made the poll wait, it committed, and
    # the row of an erased tenant stayed.
    name = "erased-under-a-poll"
    tenant = api.provision(name)
    action = f"late-poll-{uuid.uuid4().hex[:6]}"
    _register(app_pool, tenant.id, action)
    headers = api.headers(name, WORKER)
    # The tenant's rate bucket is there by now (its first token would wait on the tenant row at admission), and the
    # poll of a made-up action records nothing: the poll below is the first to add a poller row.
    warm = api.client.post("/api/v1/work/lease", json={"actions": ["made-up"], "max_items": 1}, headers=headers)
    assert warm.status_code == 200, warm.text
    assert _pollers(api, tenant.id) == {}
    unknown = api.client.post(
        "/api/v1/work/lease", json={"actions": [action]}, headers=api.headers(str(uuid.uuid4()), WORKER)
    )
    assert unknown.status_code == 401, unknown.text

    # The poll's allow record, written on its own before the poll's transaction, holds the tenant row as a foreign key
    # would (migration 0060): written while the erasure held the row, it would wait and the poll never reach its
    # poller row. So the erasure takes the row once that record has committed, and the poll goes on after that.
    authorized, locked = threading.Event(), threading.Event()
    authorize = work_router.authorize

    def authorize_then_wait(*args: Any, **kwargs: Any) -> Any:
        decision = authorize(*args, **kwargs)
        authorized.set()
        assert locked.wait(60)
        return decision

    monkeypatch.setattr(work_router, "authorize", authorize_then_wait)
    with ThreadPoolExecutor(1) as pool, psycopg.connect(api.admin_url, dbname="quantum") as erasing:
        body = {"actions": [action], "max_items": 1, "worker": "late-worker"}
        answer_of = pool.submit(api.client.post, "/api/v1/work/lease", json=body, headers=headers)
        assert authorized.wait(60)
        erasing.execute("SELECT 1 FROM app.tenants WHERE id = %s FOR UPDATE", (tenant.id,))
        # Its rate bucket last: a request admitted before the erasure reached it passes its admission.
        for table in (t for t in TENANT_TABLES if t != "rate_buckets"):
            erasing.execute(f"DELETE FROM app.{table} WHERE tenant_id = %s", (tenant.id,))  # noqa: S608
        locked.set()
        until_done_or_waiting(api.admin_url, answer_of.done, "qp_app", "INSERT INTO app.work_pollers")
        erasing.execute("DELETE FROM app.rate_buckets WHERE tenant_id = %s", (tenant.id,))
        erasing.execute("DELETE FROM app.tenants WHERE id = %s", (tenant.id,))
        erasing.commit()
        answer = answer_of.result(60)

    counts = _tenant_row_counts(api, tenant.id)
    assert counts["work_pollers"] == 0, "a poller row of the erased tenant outlived it"
    assert set(counts.values()) == {0}, counts
    assert answer.status_code == 401, answer.text
    assert answer.json() == unknown.json()
    assert answer.headers["www-authenticate"] == unknown.headers["www-authenticate"]


def test_the_erasure_waits_for_a_poll_adding_its_row_and_deletes_it(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    durable: Any,  # noqa: F811  # the fixture imported above
) -> None:
    # The other order: the poll added its row first and commits while the erasure runs. The erasure's delete did not
    # see the uncommitted row and did not wait for it; the poll's commit then left it behind the erasure.
    tenant = api.provision("poll-before-erasure", status="suspended")
    action = f"early-poll-{uuid.uuid4().hex[:6]}"
    _register(app_pool, tenant.id, action)
    polled, commit = threading.Event(), threading.Event()

    def poll() -> None:
        with tenant_transaction(tenant.id, pool=app_pool) as conn:
            work_queue.record_poll(conn, actions=[action], worker="early-worker")
            polled.set()
            assert commit.wait(60)

    with ThreadPoolExecutor(2) as pool:
        polling = pool.submit(poll)
        assert polled.wait(30)
        erased = pool.submit(_erase, api, tenant)
        until_done_or_waiting(api.admin_url, erased.done, "qp_control", "SELECT 1 FROM app.tenants")
        commit.set()
        polling.result(60)
        answer = erased.result(120)

    assert answer.status_code == 200, answer.text
    counts = _tenant_row_counts(api, tenant.id)
    assert counts["work_pollers"] == 0, "a poller row of the erased tenant outlived it"
    assert counts.pop("audit_events") == 1  # the erasure's own record
    assert set(counts.values()) == {0}, counts


def test_the_migration_removes_poller_rows_of_gone_tenants_and_keeps_the_others(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = api.provision("pollers-before-0058")
    action = f"kept-{uuid.uuid4().hex[:6]}"
    _register(app_pool, tenant.id, action)
    with tenant_transaction(tenant.id, pool=app_pool) as conn:
        work_queue.record_poll(conn, actions=[action], worker="w")
    gone = uuid.uuid4()
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        # As a database where the race above had left a row before the migration; all of it rolls back.
        conn.execute("ALTER TABLE app.work_pollers DROP CONSTRAINT work_pollers_tenant_id_fkey")
        conn.execute(
            "INSERT INTO app.work_pollers (tenant_id, action, last_polled_at, last_polled_by)"
            " VALUES (%s, %s, now(), 'w')",
            (gone, action),
        )
        conn.execute(f"SET LOCAL ROLE {OWNER_ROLE}")
        conn.execute(Path(MIGRATION).read_text().encode())
        conn.execute("RESET ROLE")
        left = conn.execute(
            "SELECT tenant_id FROM app.work_pollers WHERE tenant_id = ANY(%s)", ([tenant.id, gone],)
        ).fetchall()
        policies = conn.execute("SELECT count(*) FROM pg_policy WHERE polname LIKE 'migration_0058%'").fetchone()
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as refused:
            conn.execute(
                "INSERT INTO app.work_pollers (tenant_id, action, last_polled_at, last_polled_by)"
                " VALUES (%s, %s, now(), 'w')",
                (gone, action),
            )
        conn.rollback()
    assert left == [(tenant.id,)]
    assert policies == (0,)  # the owner's policies of the migration are gone with it
    assert refused.value.diag.constraint_name == "work_pollers_tenant_id_fkey"
