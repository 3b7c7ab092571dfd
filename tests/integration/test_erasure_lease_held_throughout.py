# intent_ref: platform.tenants
"""A tenant's erasure holds its lease throughout and reaches its end whatever its rows hold: an erasure whose lease ran
out and was taken by another stops at its next transaction (409), so only one answers 200 and one record stays; the
executions' references to their parent and root are looked up by index; a tenant row held by anything but an erasure
is a 503, not an erasure in progress; executions naming each other in a cycle are erased; and what a transaction
removed is counted once, though it ran again (ADR 0012, amended 2026-12-08)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.audit import get_audit_store
from shared.config import get_settings
from shared.storage.blob import request_container
from shared.tenants import offboarding
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_erase_races import _Durable, durable  # noqa: F401
from tests.integration.test_erasure_one_at_a_time import (
    OPERATOR,
    WAIT_S,
    _erase_held_at_the_modules,
    _erase_records,
    _HeldInItsFirstPurge,
    _in_progress,
    _modules_locked,
    _send_erasure,
)
from tests.integration.test_executions import _execution
from tests.integration.test_offboarding import _tenant_row_counts, marked_for_erasure

pytestmark = pytest.mark.integration

ADMIN = ["Platform.Admin"]


def _lease_run_out(api: ApiHarness, tenant_id: UUID) -> None:
    """The erasure's lease as renewals that failed for ERASURE_LEASE_S leave it: run out, its holder unchanged."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        changed = conn.execute(
            "UPDATE control.tenant_erasures SET lease_until = now() - interval '1 second' WHERE tenant_id = %s",
            (tenant_id,),
        ).rowcount
    assert changed == 1


def _waiting_for_the_modules(api: ApiHarness) -> int:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'app.modules'::regclass AND NOT granted"
        ).fetchone()
    return int(row[0]) if row else 0


def test_an_erasure_whose_lease_was_taken_between_its_batches_stops(api: ApiHarness, durable: _Durable) -> None:
    # The renewals stopped without a word once they found no lease, and no batch looked at it: an erasure sent again
    # after the lease ran out took it while the first still deleted, and both answered 200, each writing its record.
    api.provision(OPERATOR)
    tenant = api.provision("erased-after-losing-its-lease", status="suspended")
    with ThreadPoolExecutor(2) as pool:
        with _modules_locked(api):
            first = _erase_held_at_the_modules(api, tenant, pool)
            _lease_run_out(api, tenant.id)
            second = pool.submit(_send_erasure, api, tenant)
            # Both at the same table: the first goes on first, once the lock is let go.
            while _waiting_for_the_modules(api) < 2:
                assert not second.done(), second.result().text
                threading.Event().wait(0.05)
        answers = [first.result(WAIT_S), second.result(WAIT_S)]
    assert [answer.status_code for answer in answers] == [409, 200], [a.text for a in answers]
    assert _in_progress(answers[0])
    assert _erase_records(api, tenant.id) == 1
    counts = _tenant_row_counts(api, tenant.id)
    counts.pop("audit_events")
    assert set(counts.values()) == {0}, counts


def test_an_erasure_whose_lease_was_taken_before_its_rows_stops(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # Held in its first purge while its lease ran out and another erasure ran to its end: it then went on, erased the
    # audit trail (the other's record with it) and answered 200 as well.
    api.provision(OPERATOR)
    tenant = api.provision("erased-by-the-lease-taker", status="suspended")
    held = _HeldInItsFirstPurge()
    held.start(str(_execution(app_pool, tenant.id).id))
    api.client.app.dependency_overrides[get_durable_client] = lambda: held  # type: ignore[attr-defined]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_send_erasure, api, tenant)
        try:
            assert held.purging.wait(WAIT_S)
            _lease_run_out(api, tenant.id)
            second = _send_erasure(api, tenant)
        finally:
            held.go_on.set()
        answers = [first.result(WAIT_S), second]
    assert [answer.status_code for answer in answers] == [409, 200], [a.text for a in answers]
    assert _erase_records(api, tenant.id) == 1


@contextmanager
def _row_held(api: ApiHarness, tenant_id: UUID) -> Iterator[None]:
    """An administrator's NO KEY UPDATE lock of the tenant row (a change of it under way) until the block ends."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("SELECT 1 FROM app.tenants WHERE id = %s FOR NO KEY UPDATE", (tenant_id,))
        yield
        conn.rollback()


def _unavailable(answer: Any) -> bool:
    return (
        answer.status_code == 503
        and answer.json()["type"].endswith("dependency-unavailable")
        and int(answer.headers["retry-after"]) >= 1
    )


def test_a_tenant_row_held_by_anything_but_an_erasure_is_a_503(api: ApiHarness, durable: _Durable) -> None:
    # An active tenant's change, its row held by another change, was told that an erasure of it was running (409).
    api.provision(OPERATOR)
    headers = api.headers(OPERATOR, ADMIN)
    active = api.provision("changed-while-held")
    with _row_held(api, active.id):
        changed = api.client.patch(
            f"/api/v1/tenants/{active.id}", json={"display_name": "renamed"}, headers={**headers, "If-Match": "*"}
        )
    assert _unavailable(changed), changed.text
    # A first erasure (nothing marked, no lease) of a suspended tenant whose row is held: the mark's wait.
    suspended = api.provision("erased-while-held", status="suspended")
    with _row_held(api, suspended.id):
        refused = _send_erasure(api, suspended)
    assert _unavailable(refused), refused.text
    assert _send_erasure(api, suspended).status_code == 200


def _cycle(api: ApiHarness, app_pool: ConnectionPool[Any], tenant: TenantHandle) -> list[str]:
    """Two executions of the tenant naming each other (one retries the other, which names it as its parent), as hand
    edits or a restore leave them; their ids."""
    first, second = _execution(app_pool, tenant.id), _execution(app_pool, tenant.id)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE app.executions SET retry_of = %s WHERE id = %s", (second.id, first.id))
        conn.execute(
            "UPDATE app.executions SET parent_execution_id = %s, parent_step_id = 'run' WHERE id = %s",
            (first.id, second.id),
        )
    return sorted(str(execution.id) for execution in (first, second))


def test_executions_naming_each_other_are_erased(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # Neither is a leaf: the batches found none, went on to the intents the executions name, and met their foreign
    # keys, every run (503 on every erasure sent again).
    tenant = api.provision("erased-with-a-cycle", status="suspended")
    ids = _cycle(api, app_pool, tenant)
    final: list[str] = []
    removed = offboarding.erase_tenant(
        marked_for_erasure(tenant.id), request_container(get_settings()), get_audit_store(), executions=final
    )
    assert removed["executions"] == 2 and sorted(final) == ids
    counts = _tenant_row_counts(api, tenant.id)
    assert set(counts.values()) == {0}, counts


def test_the_batches_go_on_past_executions_naming_each_other(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # On a cycle the batches returned: every table after the executions (policies, rate buckets, locks, modules, the
    # audit's rows) was left to the last transaction, deleted unbounded while it held the tenant row.
    tenant = api.provision("erased-past-a-cycle", status="suspended")
    ids = _cycle(api, app_pool, tenant)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "INSERT INTO app.rate_buckets (tenant_id, tokens, updated_at, allowed) VALUES (%s, 1, now(), true)",
            (tenant.id,),
        )
        conn.execute(
            "INSERT INTO app.modules (tenant_id, action, params_schema, timeout_s, created_by)"
            " VALUES (%s, 'cycle.module', '{\"type\": \"object\"}'::jsonb, 600, 'test')",
            (tenant.id,),
        )
    marked_for_erasure(tenant.id)
    erased = offboarding._Erased(listing=True, purged=frozenset())
    offboarding._erase_batches(tenant.id, erased)
    counts = _tenant_row_counts(api, tenant.id)
    assert counts.pop("tenants") == 1  # the tenant row, for the last transaction
    assert set(counts.values()) == {0}, counts
    assert sorted(erased.executions) == ids and erased.removed["executions"] == 2
    assert erased.removed["rate_buckets"] == 1 and erased.removed["modules"] == 1
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        noted = conn.execute(
            "SELECT instance_id::text FROM control.erased_tenant_orchestrations WHERE tenant_id = %s ORDER BY 1",
            (tenant.id,),
        ).fetchall()
    assert [row[0] for row in noted] == ids  # recorded for the sweeper with their deletion


@contextmanager
def _last_transaction_deadlocked_once(api: ApiHarness) -> Iterator[None]:
    """The row deletion's last transaction fails once, at its note of the erased tenant, as a deadlock does (the
    sequence's count outlives the rollback); run again, it commits."""
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE public.erasure_deadlocks_once")
        conn.execute(
            "CREATE FUNCTION public.erasure_deadlocks_once() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
            " SET search_path = '' AS $$ BEGIN"
            " IF pg_catalog.nextval('public.erasure_deadlocks_once') = 1 THEN"
            " RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER erasure_deadlocks_once BEFORE INSERT ON control.erased_tenant_blobs"
            " FOR EACH ROW EXECUTE FUNCTION public.erasure_deadlocks_once()"
        )
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER erasure_deadlocks_once ON control.erased_tenant_blobs")
            conn.execute("DROP FUNCTION public.erasure_deadlocks_once()")
            conn.execute("DROP SEQUENCE public.erasure_deadlocks_once")


def test_what_a_transaction_run_again_removed_is_counted_once(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # The executions' count and ids were merged before the last transaction committed: rolled back and run again, it
    # counted and listed them twice. Here its executions are a cycle (deleted by a batch of their own).
    tenant = api.provision("erased-counted-once", status="suspended")
    ids = _cycle(api, app_pool, tenant)
    final: list[str] = []
    with _last_transaction_deadlocked_once(api):
        removed = offboarding.erase_tenant(
            marked_for_erasure(tenant.id), request_container(get_settings()), get_audit_store(), executions=final
        )
    assert removed["executions"] == 2 and sorted(final) == ids
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0


EXECUTIONS = 20_000
"""Executions of one tenant for the planner's estimates: a big tenant's, as its erasure meets them."""


def _lookup_plan(conn: psycopg.Connection[Any], column: str, tenant_id: UUID, execution_id: UUID) -> str:
    """The plan of the lookup a foreign key of `column` runs for each execution deleted: its own query's shape,
    prepared as the key's check prepares it, planned as the session's plan_cache_mode says."""
    conn.execute(
        psycopg.sql.SQL(
            "PREPARE reference_lookup (uuid, uuid) AS"
            " SELECT 1 FROM ONLY app.executions x WHERE $1 = tenant_id AND $2 = {} FOR KEY SHARE OF x"
        ).format(psycopg.sql.Identifier(column))
    )
    try:
        row = conn.execute(
            psycopg.sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE reference_lookup ({}, {})").format(
                psycopg.sql.Literal(str(tenant_id)), psycopg.sql.Literal(str(execution_id))
            )
        ).fetchone()
    finally:
        conn.execute("DEALLOCATE reference_lookup")
    assert row is not None
    return json.dumps(row[0])


def test_the_executions_references_to_their_parent_and_root_are_looked_up_by_index(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    # Each execution an erasure deleted had its parent and root references checked by a read of every execution of the
    # tenant (no index of parent_execution_id; root_execution_id's only over active ones): 26 ms per row at 50,000.
    tenant = api.provision("big-tenant-of-executions")
    parent = _execution(app_pool, tenant.id)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "INSERT INTO app.executions (tenant_id, intent_id, intent_version, target, status, input, requested_by,"
            " parent_execution_id, parent_step_id, root_execution_id)"
            " SELECT tenant_id, intent_id, intent_version, target, 'succeeded', input, requested_by,"
            " CASE WHEN n %% 4 = 0 THEN id END, CASE WHEN n %% 4 = 0 THEN 'run' END, CASE WHEN n %% 4 = 0 THEN id END"
            " FROM app.executions, generate_series(1, %s) AS n WHERE tenant_id = %s AND id = %s",
            (EXECUTIONS, tenant.id, parent.id),
        )
        conn.commit()
        conn.execute("ANALYZE app.executions")
        conn.commit()
        leaf = conn.execute(
            "SELECT id FROM app.executions WHERE tenant_id = %s AND parent_execution_id IS NOT NULL LIMIT 1",
            (tenant.id,),
        ).fetchone()
        assert leaf is not None
        for mode in ("force_custom_plan", "force_generic_plan"):
            conn.execute(psycopg.sql.SQL("SET plan_cache_mode = {}").format(psycopg.sql.Literal(mode)))
            for column, index in (
                ("parent_execution_id", "executions_tenant_parent"),
                ("root_execution_id", "executions_tenant_root"),
                ("retry_of", "executions_one_retry"),
            ):
                plan = _lookup_plan(conn, column, tenant.id, leaf[0])
                assert f'"Index Name": "{index}"' in plan, (mode, column, plan)
        conn.rollback()
