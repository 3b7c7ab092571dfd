# intent_ref: platform.tenants
"""A tenant erased while its writers and orchestration starts are still at work: the erasure completes and leaves
no row and no orchestration behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import psycopg
import pytest
from azure.durable_functions.models.OrchestrationRuntimeStatus import OrchestrationRuntimeStatus
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.db import session
from shared.db.pool import build_pool
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.tenants import offboarding
from shared.tenants.offboarding import tenant_exists
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.conftest import _settings
from tests.integration.test_executions import _execution, _intent
from tests.integration.test_offboarding import _tenant_row_counts, marked_for_erasure

pytestmark = pytest.mark.integration

ADMIN = ["Platform.Admin"]
_ACTIVE = {"Running", "Pending"}


class _Durable:
    """The orchestration side as the erasure calls it: instances by id and status; a purge of one not terminal is
    refused as the host refuses it (412, raised by the client as a bare Exception). `before_purge` runs at the start
    of each purge, for what happens meanwhile (an orchestration's start under way)."""

    def __init__(self, before_purge: Callable[[str], None] | None = None) -> None:
        self.instances: dict[str, str] = {}
        self.before_purge = before_purge
        self.purged: list[str] = []
        self._lock = threading.Lock()

    def start(self, instance_id: str) -> None:
        with self._lock:
            self.instances[instance_id] = "Running"

    async def get_status(self, instance_id: str) -> Any:
        with self._lock:
            status = self.instances.get(instance_id)
        runtime = None if status is None else OrchestrationRuntimeStatus(status)
        return SimpleNamespace(runtime_status=runtime)

    async def terminate(self, instance_id: str, reason: str) -> None:
        with self._lock:
            if instance_id not in self.instances:
                raise Exception(f"No instance with ID '{instance_id}' found.")
            if self.instances[instance_id] in _ACTIVE:
                self.instances[instance_id] = "Terminated"

    async def purge_instance_history(self, instance_id: str) -> Any:
        if self.before_purge is not None:
            self.before_purge(instance_id)
        with self._lock:
            status = self.instances.get(instance_id)
            if status is None:
                return SimpleNamespace(instances_deleted=0)
            if status in _ACTIVE:
                raise Exception("The operation failed with an unexpected status code 412")
            del self.instances[instance_id]
            self.purged.append(instance_id)
            return SimpleNamespace(instances_deleted=1)


@pytest.fixture()
def durable(api: ApiHarness) -> Iterator[_Durable]:
    client = _Durable()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    yield client
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


def _erase(api: ApiHarness, tenant: TenantHandle) -> Any:
    api.provision("erase-race-operator")
    return api.client.post(
        f"/api/v1/tenants/{tenant.id}/erase",
        json={"confirm_name": tenant.name},
        headers=api.headers("erase-race-operator", ADMIN),
    )


def _nothing_left(api: ApiHarness, tenant: TenantHandle) -> None:
    counts = _tenant_row_counts(api, tenant.id)
    assert counts.pop("audit_events") == 1  # the erasure's own record
    assert set(counts.values()) == {0}, counts


def _erasure_waits_on_a_lock(api: ApiHarness) -> bool:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = 'qp_control'"
        ).fetchone()
    return bool(row and row[0])


def _erase_under_a_writer(api: ApiHarness, app_pool: ConnectionPool[Any], tenant: TenantHandle) -> Any:
    """Erase `tenant` while a writer (a cancel) adds an event under one of its executions and commits only once the
    erasure waits for its rows."""
    execution = _execution(app_pool, tenant.id)
    writing, commit = threading.Event(), threading.Event()

    def writer() -> None:
        with tenant_transaction(tenant.id, pool=app_pool) as conn:
            repo.append_event(conn, execution.id, "cancel_requested")
            writing.set()
            assert commit.wait(60)

    with ThreadPoolExecutor(2) as pool:
        written = pool.submit(writer)
        assert writing.wait(30)
        erased = pool.submit(_erase, api, tenant)
        deadline = time.monotonic() + 60
        while not erased.done() and not _erasure_waits_on_a_lock(api) and time.monotonic() < deadline:
            time.sleep(0.05)
        commit.set()  # the writer commits while the erasure waits for its rows
        written.result(60)
        return erased.result(120)


def test_a_writer_adding_an_event_while_the_rows_go_does_not_fail_the_erasure(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # The erasure deleted table after table: a cancel's event, added under an execution after the events were
    # deleted and before the executions were, failed the executions' delete on its foreign key, and the erasure
    # answered 500 whenever the tenant's last requests or activities were still at work.
    tenant = api.provision("erased-under-a-writer", status="suspended")
    answer = _erase_under_a_writer(api, app_pool, tenant)
    assert answer.status_code == 200, answer.text
    _nothing_left(api, tenant)


def test_writers_the_erasure_cannot_outlast_get_a_problem_that_a_retry_resolves(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past its runs the erasure answers 503 with Retry-After, its tenant's rows all still there, never a 500.
    monkeypatch.setattr(offboarding, "ROW_ERASE_ATTEMPTS", 1, raising=False)
    tenant = api.provision("erased-under-writers", status="suspended")
    answer = _erase_under_a_writer(api, app_pool, tenant)
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json" and answer.headers["retry-after"]
    counts = _tenant_row_counts(api, tenant.id)
    assert (counts["tenants"], counts["executions"], counts["execution_events"]) == (1, 1, 1)
    again = _erase(api, tenant)
    assert again.status_code == 200, again.text
    _nothing_left(api, tenant)


def test_an_orchestration_starting_while_it_is_purged_is_terminated_and_purged(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # Its start under way when the erasure looked (no instance yet), the orchestration was running by the purge,
    # which the host refused (412): the erasure answered 500.
    tenant = api.provision("erased-while-starting", status="suspended")
    starting = str(_execution(app_pool, tenant.id).id)

    def started_meanwhile(instance_id: str) -> None:
        if instance_id == starting and instance_id not in durable.purged and instance_id not in durable.instances:
            durable.start(instance_id)

    durable.before_purge = started_meanwhile
    answer = _erase(api, tenant)
    assert answer.status_code == 200, answer.text
    assert durable.purged == [starting] and durable.instances == {}
    assert answer.json()["removed"]["orchestrations"] == 1
    _nothing_left(api, tenant)


def test_an_orchestration_started_after_the_first_purge_does_not_outlive_the_tenant(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # An execution accepted just before the suspension took effect started its orchestration after the erasure had
    # listed and purged the tenant's: the erasure answered 200 and the orchestration, its input the tenant's data,
    # stayed in the task hub.
    tenant = api.provision("erased-with-a-late-start", status="suspended")
    first = str(_execution(app_pool, tenant.id).id)
    durable.start(first)
    late: list[str] = []

    def accepted_meanwhile(instance_id: str) -> None:
        if instance_id == first and not late:
            late.append(str(_execution(app_pool, tenant.id).id))
            durable.start(late[0])

    durable.before_purge = accepted_meanwhile
    answer = _erase(api, tenant)
    assert answer.status_code == 200, answer.text
    assert sorted(durable.purged) == sorted([first, *late]) and durable.instances == {}
    assert answer.json()["removed"]["orchestrations"] == 2
    _nothing_left(api, tenant)


class _NoAudit:
    def erase(self, tenant_id: UUID) -> int:
        return 0


def _qp_app_lock_waiters(pg: Any) -> int:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = 'qp_app'"
        ).fetchone()
    return int(row[0]) if row else 0


class _AfterTheLock:
    """The erasure's control connection, which runs `then` once it holds the tenant row (its FOR UPDATE)."""

    def __init__(self, conn: psycopg.Connection[Any], then: Callable[[], None]) -> None:
        self._conn, self._then = conn, then

    def execute(self, query: Any, params: Any = None) -> Any:
        result = self._conn.execute(query, params)
        if query == offboarding._LOCK_TENANT:
            self._then()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _erase_with(monkeypatch: pytest.MonkeyPatch, after_the_lock: Callable[[], None]) -> None:
    real = session.platform_transaction

    @contextmanager
    def watched() -> Iterator[Any]:
        with real() as conn:
            yield _AfterTheLock(conn, after_the_lock)

    monkeypatch.setattr(offboarding, "platform_transaction", watched)
    monkeypatch.setattr(offboarding, "delete_tenant_blobs", lambda *a, **k: 0)


def test_the_erasure_needs_no_pooled_connection_its_waiting_writers_hold(
    pg: Any, control_pool: ConnectionPool[Any], new_tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The erasure took the tenant row and only then borrowed a tenant connection for the execution ids; the tenant's
    # writers waiting on that row each held one, so with the pool full of them it waited for them as they waited for
    # it, until the pool's timeout (PoolTimeout, 503, never retried).
    tenant_id = new_tenant()
    small = build_pool(pg.app_url, _settings(pg), min_size=1, max_size=2)
    monkeypatch.setattr(session, "get_pool", lambda: small)
    monkeypatch.setattr(session, "get_control_pool", lambda: control_pool)
    results: list[Any] = []

    def writer() -> None:  # any transaction naming the tenant row: it waits on the erasure's lock
        try:
            results.append(tenant_exists(tenant_id))
        except Exception as exc:  # noqa: BLE001  # a writer's answer is not what is tested
            results.append(exc)

    writers = [threading.Thread(target=writer) for _ in range(2)]

    def writers_fill_the_pool() -> None:
        for thread in writers:
            thread.start()
        deadline = time.monotonic() + 30
        # Each writer holds a connection waiting on the row, or waits for one the erasure holds.
        while _qp_app_lock_waiters(pg) + small.get_stats().get("requests_waiting", 0) < 2:
            assert time.monotonic() < deadline, "the writers never came"
            time.sleep(0.05)

    _erase_with(monkeypatch, writers_fill_the_pool)
    try:
        final: list[str] = []
        offboarding.erase_tenant(marked_for_erasure(tenant_id), None, _NoAudit(), executions=final)  # type: ignore[arg-type]
        for thread in writers:
            thread.join(60)
    finally:
        small.close()
    assert final == []
    assert True not in results, results  # none of them found the tenant


def test_an_execution_created_after_the_list_is_listed_or_refused(
    pg: Any,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the tenant row's lock buys: with a plain read of the row, an execution committed after the erasure's id
    # list went with the rows unlisted, and its orchestration outlived the tenant.
    tenant_id = new_tenant()
    intent_id = _intent(app_pool, tenant_id)
    monkeypatch.setattr(session, "get_pool", lambda: app_pool)
    monkeypatch.setattr(session, "get_control_pool", lambda: control_pool)
    monkeypatch.setattr(offboarding, "delete_tenant_blobs", lambda *a, **k: 0)
    real = offboarding.listed_execution_ids
    created: list[Any] = []

    def writer() -> None:
        try:
            created.append(_execution(app_pool, tenant_id, intent_id))
        except Exception as exc:  # noqa: BLE001  # refused once the erasure has committed: what is tested below
            created.append(exc)

    def listed_then_a_start_comes(conn: Any) -> list[str]:
        ids = real(conn)
        thread = threading.Thread(target=writer)
        thread.start()
        deadline = time.monotonic() + 30
        # It commits at once, or waits on the tenant row for the erasure.
        while not created and not _qp_app_lock_waiters(pg):
            assert time.monotonic() < deadline, "the start neither committed nor waited"
            time.sleep(0.05)
        return ids

    monkeypatch.setattr(offboarding, "listed_execution_ids", listed_then_a_start_comes)
    final: list[str] = []
    offboarding.erase_tenant(marked_for_erasure(tenant_id), None, _NoAudit(), executions=final)  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while not created:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (outcome,) = created
    assert isinstance(outcome, Exception) or str(outcome.id) in final, (
        "an execution was deleted unlisted: its orchestration is never purged"
    )


def test_a_purge_refused_for_another_reason_is_not_waited_out_as_one_still_running() -> None:
    # The host's 412 was told by a bare "412" anywhere in the error: an instance id holding those digits in another
    # refusal was waited on until the settle time, and the erasure answered "ask again" for a failure it hid.
    instance_id = "a4120000-0000-4000-8000-000000000412"

    class _Refusing(_Durable):
        async def purge_instance_history(self, instance_id: str) -> Any:
            raise Exception(f"The operation failed with an unexpected status code 500 for '{instance_id}'")

    with pytest.raises(Exception, match="status code 500") as raised:
        asyncio.run(offboarding.purge_orchestrations([instance_id], _Refusing(), settle_s=1))
    assert not isinstance(raised.value, offboarding.ErasureContendedError)
