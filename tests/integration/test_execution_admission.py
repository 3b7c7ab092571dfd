# intent_ref: platform.execution
"""Admission into the engine on the real database (only the orchestration side is a fake, the sweeper tests'):
past its starting share a tenant's top-level starts are queued, let in oldest first as far as the share has room,
never twice, never by the stalled-start takeover, and a child is never queued."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import platform_transaction, tenant_transaction
from shared.engine import admission, control, sweeper
from shared.engine import executions as repo
from shared.engine.protocol import ORCHESTRATOR
from shared.engine.start import ExecutionCounts, Started, StartRequest, execution_counts, start_execution
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_execution_sweeper import AUTHOR, FakeDurable

pytestmark = pytest.mark.integration


class Tenant:
    """A fresh tenant whose starting share is `share`, and its intent (one short wait)."""

    def __init__(self, api: ApiHarness, share: int) -> None:
        self.name = f"admit-{uuid.uuid4().hex[:8]}"
        quotas = {"requests_per_minute": 10_000, "burst": 1_000, "max_starting_executions": share}
        self.id = api.provision(self.name, allowed_modules=["wait"], quotas=quotas).id
        body = {
            "name": f"admit-{uuid.uuid4().hex[:10]}",
            "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
        }
        created = api.client.post("/api/v1/intents", json=body, headers=api.headers(self.name, AUTHOR))
        assert created.status_code == 201, created.text
        self.intent = uuid.UUID(created.json()["id"])
        self.share = share


def _start(
    pool: ConnectionPool[Any],
    tenant: Tenant,
    *,
    key: str | None = None,
    parent: uuid.UUID | None = None,
    share: int | None = None,
) -> Started:
    """A start as the start service makes it, with the tenant's share (or `share`)."""
    with tenant_transaction(tenant.id, pool=pool) as conn:
        facts = get_tenant(conn, tenant.id)
        assert facts is not None
        return start_execution(
            conn,
            facts.facts(),
            StartRequest(
                intent_id=tenant.intent,
                idempotency_key=key,
                requester=Requester("tester", frozenset(), app_only=False),
                parent_execution_id=parent,
                parent_step_id="child" if parent else None,
            ),
            max_concurrent=1000,
            max_starting=tenant.share if share is None else share,
            authorize=lambda _item: None,
        )


def _get(pool: ConnectionPool[Any], tenant: Tenant, execution_id: uuid.UUID) -> repo.Execution:
    with tenant_transaction(tenant.id, pool=pool) as conn:
        return repo.get_execution(conn, execution_id)


def _move(pool: ConnectionPool[Any], tenant: Tenant, execution_id: uuid.UUID, *path: repo.Status) -> None:
    with tenant_transaction(tenant.id, pool=pool) as conn:
        for status in path:
            repo.transition(conn, execution_id, status)


def _counts(pool: ConnectionPool[Any], tenant: Tenant) -> ExecutionCounts:
    with tenant_transaction(tenant.id, pool=pool) as conn:
        return execution_counts(conn)


def test_past_the_starting_share_a_start_is_queued_and_a_child_never_is(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    t = Tenant(api, share=2)
    first, second = _start(app_pool, t), _start(app_pool, t)
    assert first.orchestration_input is not None and second.orchestration_input is not None
    assert not first.execution.queued and first.execution.start_claimed_at is not None

    third = _start(app_pool, t)
    assert (third.created, third.orchestration_input) == (True, None)  # nothing for the caller to start
    queued = _get(app_pool, t, third.execution.id)
    assert (queued.status, queued.queued, queued.start_claimed_at) == ("pending", True, None)

    # A child is started by its parent's orchestration, under way: never queued, and never counted.
    _move(app_pool, t, first.execution.id, "running")
    child = _start(app_pool, t, parent=first.execution.id)
    assert child.orchestration_input is not None and not child.execution.queued

    # The first is under way, so a place is free; but a start behind a queue queues: first come, first in.
    fourth = _start(app_pool, t)
    assert fourth.orchestration_input is None and _get(app_pool, t, fourth.execution.id).queued
    assert _counts(app_pool, t) == ExecutionCounts(active=5, starting=1, queued=2)


def test_admission_lets_in_the_oldest_as_far_as_the_share_has_room(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    t = Tenant(api, share=1)
    starting = _start(app_pool, t).execution.id
    queued = [_start(app_pool, t).execution.id for _ in range(3)]

    client = FakeDurable()
    assert asyncio.run(admission.admit(client, t.id, pool=app_pool)) == 0  # no room: nothing claimed
    assert client.started == [] and all(_get(app_pool, t, q).queued for q in queued)

    _move(app_pool, t, starting, "running")  # its orchestration got under way
    assert asyncio.run(admission.admit(client, t.id, pool=app_pool)) == 1
    ((name, instance, orchestration_input),) = client.started
    assert (name, instance) == (ORCHESTRATOR, str(queued[0]))
    assert orchestration_input["execution_id"] == str(queued[0]) and orchestration_input["definition"]["steps"]
    let_in = _get(app_pool, t, queued[0])
    assert (let_in.status, let_in.queued) == ("pending", False) and let_in.start_claimed_at is not None
    # Let in but not yet under way (its orchestration records that): it holds the place.
    assert asyncio.run(admission.admit(client, t.id, pool=app_pool)) == 0

    _move(app_pool, t, queued[0], "running")
    assert asyncio.run(admission.admit(client, t.id, pool=app_pool)) == 1
    assert client.started_ids() == [str(queued[0]), str(queued[1])]


def test_admissions_at_once_never_pass_the_share(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    t = Tenant(api, share=3)
    queued = {str(_start(app_pool, t, share=0).execution.id) for _ in range(10)}
    client = FakeDurable()
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        asyncio.run(admission.admit(client, t.id, pool=app_pool))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = client.started_ids()
    assert len(started) == 3 and len(set(started)) == 3 and set(started) <= queued
    assert _counts(app_pool, t) == ExecutionCounts(active=10, starting=3, queued=7)


def test_a_queued_execution_is_no_stalled_start(
    api: ApiHarness, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    t = Tenant(api, share=1)
    _start(app_pool, t)  # holds the place, freshly claimed
    key = f"admit-{uuid.uuid4().hex[:8]}"
    queued = _start(app_pool, t, key=key).execution.id
    # Unclaimed (start_claimed_at is null): to the takeover rules, a start whose claim is long stale.
    assert t.id not in sweeper.stuck_tenants(10_000, control_pool=control_pool)
    client = FakeDurable()
    asyncio.run(sweeper.sweep_tenant(t.id, client, pool=app_pool))
    assert client.started == []
    replay = _start(app_pool, t, key=key)  # the client repeats its request
    assert (replay.execution.id, replay.created, replay.orchestration_input) == (queued, False, None)
    assert _get(app_pool, t, queued).queued


def test_a_cancelled_queued_execution_is_never_let_in(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    t = Tenant(api, share=1)
    holder = _start(app_pool, t).execution.id
    cancelled, kept = _start(app_pool, t).execution.id, _start(app_pool, t).execution.id
    with tenant_transaction(t.id, pool=app_pool) as conn:
        control.request_cancel(conn, cancelled, "tester")
    _move(app_pool, t, cancelled, "cancelled")  # what the cancel route does to an execution no orchestration runs
    _move(app_pool, t, holder, "running", "succeeded")

    client = FakeDurable()
    assert asyncio.run(admission.admit(client, t.id, pool=app_pool)) == 1
    assert client.started_ids() == [str(kept)]
    assert _get(app_pool, t, cancelled).status == "cancelled"


def test_the_finder_answers_only_ids_of_tenants_with_a_queue(
    api: ApiHarness, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], pg: Any
) -> None:
    with_queue, without = Tenant(api, share=1), Tenant(api, share=1)
    _start(app_pool, with_queue)
    _start(app_pool, with_queue)
    _start(app_pool, without)

    found = admission.queued_tenants(10_000, control_pool=control_pool)
    assert with_queue.id in found and without.id not in found
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        definer, config = conn.execute(  # type: ignore[misc]
            "SELECT p.prosecdef, p.proconfig FROM pg_proc p"
            " WHERE p.oid = 'app.execution_queued_tenants(integer)'::regprocedure"
        ).fetchone()
    assert (definer, config) == (True, ['search_path=""'])
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(with_queue.id, pool=app_pool) as conn:
        conn.execute("SELECT * FROM app.execution_queued_tenants(10)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), platform_transaction(pool=control_pool) as conn:
        conn.execute("SELECT queued FROM app.executions")
