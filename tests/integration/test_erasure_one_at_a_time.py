# intent_ref: platform.tenants
"""A tenant's erasure runs one at a time, its rows going in short transactions: an erasure sent again while one runs
is refused at once (409 `erasure-in-progress`) and holds no connection, other tenants' requests and events go on
while a big tenant's rows go, and the orchestrations of the executions it deleted are recorded for the sweeper before
its purge after the rows (ADR 0012 and 0046, amended 2026-12-08)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from starlette.testclient import TestClient

from shared.api.durable import get_durable_client
from shared.api.routers import tenants as tenants_router
from shared.audit import get_audit_store
from shared.auth.principal import Requester
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.storage.blob import request_container
from shared.tenants import erased_orchestrations, offboarding
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_erase_races import _Durable, _erasure_waits_on_a_lock, durable  # noqa: F401
from tests.integration.test_executions import _execution
from tests.integration.test_offboarding import _relayed_now, _tenant_row_counts, marked_for_erasure

pytestmark = pytest.mark.integration

ADMIN = ["Platform.Admin"]
OPERATOR = "erasure-one-at-a-time-operator"
WAIT_S = 30.0
"""A guard against a hung test only: every wait here ends on an event long before it."""


def _send_erasure(api: ApiHarness, tenant: TenantHandle) -> Any:
    return api.client.post(
        f"/api/v1/tenants/{tenant.id}/erase",
        json={"confirm_name": tenant.name},
        headers=api.headers(OPERATOR, ADMIN),
    )


@contextmanager
def _modules_locked(api: ApiHarness) -> Iterator[None]:
    """An administrator's SHARE lock of app.modules until the block ends: an erasure deleting the tenant's modules
    waits for it, as it waits for a big tenant's long delete."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("LOCK TABLE app.modules IN SHARE MODE")
        yield
        conn.commit()


def _erase_held_at_the_modules(api: ApiHarness, tenant: TenantHandle, pool: ThreadPoolExecutor) -> Any:
    """Send the tenant's erasure; once it waits for app.modules (the caller holds its lock), its future."""
    erasing = pool.submit(_send_erasure, api, tenant)
    while not _erasure_waits_on_a_lock(api):
        assert not erasing.done(), erasing.result().text
        threading.Event().wait(0.05)
    return erasing


def _erase_records(api: ApiHarness, tenant_id: UUID) -> int:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT count(*) FROM app.audit_events WHERE tenant_id = %s AND action = 'tenant.erase'", (tenant_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def _in_progress(answer: Any) -> bool:
    return (
        answer.status_code == 409
        and answer.headers["content-type"] == "application/problem+json"
        and answer.json()["type"].endswith("erasure-in-progress")
        and int(answer.headers["retry-after"]) >= 1
    )


def test_erasures_sent_again_while_one_deletes_rows_are_refused_and_other_tenants_are_served(
    api: ApiHarness, durable: _Durable
) -> None:
    # Each erasure sent again waited for the running one's lock of the tenant row, holding one of the control plane's
    # four connections, which also resolve every tenant's token: with three waiting, another tenant's request got 503.
    api.provision(OPERATOR)
    tenant = api.provision("erased-once", status="suspended")
    api.provision("served-beside-an-erasure")
    with ThreadPoolExecutor(4) as pool:
        with _modules_locked(api):
            erasing = _erase_held_at_the_modules(api, tenant, pool)
            again = [pool.submit(_send_erasure, api, tenant) for _ in range(3)]
            wait(again, timeout=WAIT_S)
            answered_while_held = [future.result() for future in again if future.done()]
            served = api.client.get("/api/v1/tenant", headers=api.headers("served-beside-an-erasure", ["Tenant.Admin"]))
        for future in again:
            future.result(WAIT_S)
        erased = erasing.result(WAIT_S)
    assert len(answered_while_held) == 3
    assert all(_in_progress(answer) for answer in answered_while_held), [a.text for a in answered_while_held]
    assert served.status_code == 200, served.text
    assert erased.status_code == 200, erased.text
    assert _erase_records(api, tenant.id) == 1
    assert _send_erasure(api, tenant).status_code == 404


class _HeldInItsFirstPurge(_Durable):
    """The orchestrations as `_Durable`, the first purge held (its request's event loop free) until `go_on`."""

    def __init__(self) -> None:
        super().__init__()
        self.purging, self.go_on = threading.Event(), threading.Event()

    async def purge_instance_history(self, instance_id: str) -> Any:
        if not self.purging.is_set():
            self.purging.set()
            assert await asyncio.to_thread(self.go_on.wait, WAIT_S)
        return await super().purge_instance_history(instance_id)


def test_two_erasures_at_once_one_erases_and_the_other_is_refused(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable
) -> None:
    # Both answered 200, and the later one's pass over the audit trail after its rows could remove the earlier one's
    # record, or leave two. The first here is held in its purge while the second is sent.
    api.provision(OPERATOR)
    tenant = api.provision("erased-twice-at-once", status="suspended")
    held = _HeldInItsFirstPurge()
    held.start(str(_execution(app_pool, tenant.id).id))
    api.client.app.dependency_overrides[get_durable_client] = lambda: held  # type: ignore[attr-defined]
    purging, go_on = held.purging, held.go_on
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_send_erasure, api, tenant)
        try:
            assert purging.wait(WAIT_S)
            second = pool.submit(_send_erasure, api, tenant).result(WAIT_S)
        finally:
            go_on.set()
        answers = [first.result(WAIT_S), second]
    assert sorted(answer.status_code for answer in answers) == [200, 409], [a.text for a in answers]
    assert _in_progress(answers[1])
    assert _erase_records(api, tenant.id) == 1
    counts = _tenant_row_counts(api, tenant.id)
    counts.pop("audit_events")
    assert set(counts.values()) == {0}, counts


def test_another_tenants_events_relay_while_a_tenant_is_erased(api: ApiHarness, durable: _Durable) -> None:
    # The row deletion was one transaction across every table, with a transaction id from its start: the relay sends
    # only the events of transactions older than every one running, so no tenant's events or webhooks went out while
    # a big tenant's rows went.
    api.provision(OPERATOR)
    tenant = api.provision("erased-beside-events", status="suspended")
    other = api.provision("relayed-beside-an-erasure")
    with ThreadPoolExecutor(1) as pool:
        with _modules_locked(api):
            erasing = _erase_held_at_the_modules(api, tenant, pool)
            while_held = _relayed_now(other.id, 1)
        erased = erasing.result(WAIT_S)
    assert erased.status_code == 200, erased.text
    assert while_held == 1
    assert _relayed_now(other.id, 2) == 1


class _HostKilled(BaseException):
    """The host ended mid-request: nothing after it runs."""


def test_an_orchestration_started_late_is_purged_though_the_host_ends_after_the_rows(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An execution accepted just before the suspension started its orchestration after the erasure's first purge; its
    # id, read under the tenant row's lock, was only in memory until the purge after the rows: a host ended between
    # the two left the orchestration, its input the tenant's data, for ever.
    api.provision(OPERATOR)
    tenant = api.provision("erased-then-host-killed", status="suspended")
    first = str(_execution(app_pool, tenant.id).id)
    durable.start(first)
    late: list[str] = []

    def accepted_meanwhile(instance_id: str) -> None:
        if instance_id == first and not late:
            late.append(str(_execution(app_pool, tenant.id).id))
            durable.start(late[0])

    killed: list[list[str]] = []

    async def host_killed(tenant_id: UUID, instance_ids: list[str], client: Any) -> int:
        killed.append(instance_ids)
        raise _HostKilled

    durable.before_purge = accepted_meanwhile
    monkeypatch.setattr(tenants_router, "_purge_after_rows", host_killed)
    # A client of its own, each request in an event loop of its own (not entered): the host's end takes no other.
    own = TestClient(api.client.app)  # type: ignore[attr-defined]
    with pytest.raises(_HostKilled):
        own.post(
            f"/api/v1/tenants/{tenant.id}/erase",
            json={"confirm_name": tenant.name},
            headers=api.headers(OPERATOR, ADMIN),
        )
    assert killed == [late]
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0
    assert late and late[0] in durable.instances
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        noted = conn.execute(
            "SELECT instance_id::text FROM control.erased_tenant_orchestrations WHERE tenant_id = %s", (tenant.id,)
        ).fetchall()
    assert [row[0] for row in noted] == late
    purged = asyncio.run(erased_orchestrations.purge_erased_orchestrations(durable, settle_s=5.0, within_s=WAIT_S))
    assert purged == 1 and durable.instances == {}
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        left = conn.execute(
            "SELECT count(*) FROM control.erased_tenant_orchestrations WHERE tenant_id = %s", (tenant.id,)
        ).fetchone()
    assert left is not None and left[0] == 0


def test_a_change_or_an_export_request_while_the_erasure_holds_the_tenant_row_is_refused(
    api: ApiHarness, durable: _Durable
) -> None:
    # A change of the tenant (its row's NO KEY UPDATE) and an export request (its KEY SHARE) waited for the erasure's
    # last transaction, which holds the row FOR UPDATE, each holding a connection of the control plane's few. Held
    # here at its delete of the tenant's export jobs (an administrator's lock of that table).
    api.provision(OPERATOR)
    tenant = api.provision("erased-while-changed", status="suspended")
    headers = api.headers(OPERATOR, ADMIN)
    with ThreadPoolExecutor(3) as pool:
        with psycopg.connect(api.admin_url, dbname="quantum") as conn:
            conn.execute("LOCK TABLE control.tenant_export_jobs IN SHARE MODE")
            erasing = pool.submit(_send_erasure, api, tenant)
            while not _erasure_waits_on_a_lock(api):
                assert not erasing.done(), erasing.result().text
                threading.Event().wait(0.05)
            sent = [
                pool.submit(
                    api.client.patch,
                    f"/api/v1/tenants/{tenant.id}",
                    json={"display_name": "renamed"},
                    headers={**headers, "If-Match": "*"},
                ),
                pool.submit(api.client.post, f"/api/v1/tenants/{tenant.id}/export", headers=headers),
            ]
            wait(sent, timeout=WAIT_S)
            answered_while_held = [future.result() for future in sent if future.done()]
            conn.commit()
        for future in sent:
            future.result(WAIT_S)
        erased = erasing.result(WAIT_S)
    assert len(answered_while_held) == 2
    assert all(_in_progress(answer) for answer in answered_while_held), [a.text for a in answered_while_held]
    assert erased.status_code == 200, erased.text


def test_an_erasure_ended_between_its_batches_is_completed_when_sent_again(
    api: ApiHarness, app_pool: ConnectionPool[Any], durable: _Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rows go in batches, each committed: a host ended after them and before the last transaction leaves the tenant
    # row, marked, with the executions gone. Their ids were recorded with them, kept while the tenant is there, and
    # purged by the sweeper once it is gone: here one orchestration landed after the rows went.
    monkeypatch.setattr(offboarding, "ERASE_BATCH_ROWS", 1)
    api.provision(OPERATOR)
    tenant = api.provision("erased-across-a-host-end", status="suspended")
    parent = _execution(app_pool, tenant.id)
    # A child and a retry naming it: batches of one row take them before it (its foreign keys refuse it first).
    with tenant_transaction(tenant.id, pool=app_pool) as conn:
        child, retry = (
            repo.create_execution(
                conn,
                execution_id=uuid4(),
                intent_id=parent.intent_id,
                intent_version=1,
                target="staging",
                input={"version": "1.2.3"},
                requester=Requester("tester", frozenset(), app_only=False),
                **links,
            )[0]
            for links in (
                {"parent_execution_id": parent.id, "parent_step_id": "run", "root_execution_id": parent.id},
                {"retry_of": parent.id},
            )
        )
    ids = sorted(str(execution.id) for execution in (parent, child, retry))
    marked_for_erasure(tenant.id)

    def host_ended(*args: Any) -> None:
        raise _HostKilled

    with monkeypatch.context() as patched:
        patched.setattr(offboarding, "_erase_rest", host_ended)
        with pytest.raises(_HostKilled):
            offboarding.erase_tenant(tenant.id, request_container(get_settings()), get_audit_store(), executions=[])
    counts = _tenant_row_counts(api, tenant.id)
    assert (counts["tenants"], counts["executions"]) == (1, 0)  # each execution in a batch of its own
    durable.start(ids[0])  # its start landed after its row went
    assert asyncio.run(erased_orchestrations.purge_erased_orchestrations(durable, settle_s=5.0, within_s=WAIT_S)) == 0
    assert _noted(api, tenant.id) == ids  # kept while the tenant is there
    erased = _send_erasure(api, tenant)
    assert erased.status_code == 200, erased.text
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0
    assert asyncio.run(erased_orchestrations.purge_erased_orchestrations(durable, settle_s=5.0, within_s=WAIT_S)) == 1
    assert durable.instances == {} and _noted(api, tenant.id) == []


def _noted(api: ApiHarness, tenant_id: UUID) -> list[str]:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        rows = conn.execute(
            "SELECT instance_id::text FROM control.erased_tenant_orchestrations WHERE tenant_id = %s ORDER BY 1",
            (tenant_id,),
        ).fetchall()
    return [row[0] for row in rows]


def test_an_erasure_whose_lease_is_held_is_refused_until_it_runs_out(api: ApiHarness, durable: _Durable) -> None:
    # A host ended mid-erasure leaves its lease: the erasure sent again is refused, with how long to wait, until it
    # runs out, and then completes.
    api.provision(OPERATOR)
    tenant = api.provision("erased-after-a-lease", status="suspended")
    offboarding.begin_erasure(tenant.id, holder=uuid4())
    refused = _send_erasure(api, tenant)
    assert _in_progress(refused), refused.text
    assert int(refused.headers["retry-after"]) <= offboarding.ERASURE_LEASE_S
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE control.tenant_erasures SET lease_until = now() - interval '1 second' WHERE tenant_id = %s",
            (tenant.id,),
        )
    erased = _send_erasure(api, tenant)
    assert erased.status_code == 200, erased.text
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT count(*) FROM control.tenant_erasures WHERE tenant_id = %s", (tenant.id,)).fetchone()
    assert row is not None and row[0] == 0
