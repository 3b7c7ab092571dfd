# intent_ref: platform.tenants
"""An operator stops a suspended tenant's executions; an erasure's mark is audited and required (ADR 0027, 0012).

A suspended tenant's own principals are refused everything, their cancels included, and reactivating the tenant to
cancel let it act again meanwhile: a Platform.Admin cancels its executions through the control plane, a page at a
time, as the execution's own cancel does (recorded, queued remote work ended and handed over, the run told). The
erasure's mark, where an erasure becomes irreversible, has an audit record of its own, and `erase_tenant` erases no
tenant that is not marked, whoever calls it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.api.routers import tenants as tenants_router
from shared.audit import get_audit_store
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import control, work_queue
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT
from shared.policy.actions import Action
from shared.storage.blob import request_container
from shared.tenants import offboarding
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_cancel_races import _until_someone_waits_for
from tests.integration.test_executions import _execution
from tests.integration.test_offboarding import _tenant_row_counts

pytestmark = pytest.mark.integration

OPERATORS = "cancel-operators"


class _Hub:
    """The task hub as a cancel raises to it: instances it runs take events; a raise to any other is answered as the
    host answers one to an instance that does not exist."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.delivered: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Deliver to a running instance; refuse as the host does for any other."""
        with self._lock:
            if instance_id not in self.running:
                raise Exception(f"No instance with ID '{instance_id}' found.")
            self.delivered.append((instance_id, name, data))


@pytest.fixture
def hub(api: ApiHarness) -> Iterator[_Hub]:  # noqa: F811  # the fixture
    """The requests' Durable client, for the test."""
    client = _Hub()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    yield client
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


def _admin(api: ApiHarness) -> dict[str, str]:  # noqa: F811  # the fixture
    """A Platform.Admin's headers, of the operators' tenant."""
    if OPERATORS not in api.tenants:
        api.provision(OPERATORS)
    return api.headers(OPERATORS, ["Platform.Admin"])


def _suspend(api: ApiHarness, tenant: TenantHandle) -> None:  # noqa: F811  # the fixture
    """Suspend the tenant as an operator does (the directory's cache cleared)."""
    url = f"/api/v1/tenants/{tenant.id}"
    admin = _admin(api)
    etag = api.client.get(url, headers=admin).headers["etag"]
    changed = api.client.patch(url, json={"status": "suspended"}, headers={**admin, "If-Match": etag})
    assert changed.status_code == 200, changed.text


def _cancel(api: ApiHarness, tenant: TenantHandle, headers: dict[str, str], **params: Any) -> Any:  # noqa: F811
    """The operator's cancel of the tenant's executions, with `params` (limit, cursor)."""
    return api.client.post(f"/api/v1/tenants/{tenant.id}/executions/cancel", params=params, headers=headers)


def _suspended_with(
    api: ApiHarness,  # noqa: F811  # the fixture
    pool: ConnectionPool[Any],
    name: str,
    count: int,
    *,
    running: bool = True,
) -> tuple[TenantHandle, list[str]]:
    """A tenant `name` with `count` executions (their ids in order; running, or pending as started), then suspended."""
    tenant = api.provision(name)
    path: list[repo.Status] | None = ["running"] if running else None
    ids = sorted(str(_execution(pool, tenant.id, path=path).id) for _ in range(count))
    _suspend(api, tenant)
    return tenant, ids


def _cancel_through(
    api: ApiHarness,  # noqa: F811  # the fixture
    tenant: TenantHandle,
    client: _Hub,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str] | None = None,
) -> Any:
    """The operator's cancel of the tenant's executions one at a time, `client` the requests' Durable client."""
    monkeypatch.setattr(control, "OPERATOR_CANCELS_AT_ONCE", 1)
    overrides = api.client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[get_durable_client] = lambda: client
    try:
        return _cancel(api, tenant, headers or _admin(api))
    finally:
        overrides.pop(get_durable_client)


def _execution_row(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> repo.Execution:
    """The execution as recorded now."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return repo.get_execution(conn, execution_id)


def _requested_by(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> str | None:
    """Who the execution's cancel is recorded as requested by."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        found = conn.execute("SELECT cancel_requested_by FROM app.executions WHERE id = %s", (execution_id,))
        return None if (row := found.fetchone()) is None else row["cancel_requested_by"]


def _operator_id(api: ApiHarness) -> str:  # noqa: F811  # the fixture
    """The principal id the operators' tokens carry, as the audit trail names it."""
    return str(api.audit_rows(OPERATORS)[-1]["principal_id"])


def _cancel_records(api: ApiHarness, trail: str, tenant_id: uuid.UUID) -> list[dict[str, Any]]:  # noqa: F811
    """The records of an operator's cancels of the tenant's executions in `trail`."""
    return [
        r
        for r in api.audit_rows(trail)
        if r["action"] == Action.EXECUTION_CANCEL and r["resource_id"] == str(tenant_id)
    ]


def _audited(records: list[dict[str, Any]]) -> list[str]:
    """The executions the records name, one per record."""
    return [execution for r in records for execution in r["detail"]["executions"]]


def test_an_operator_cancels_a_suspended_tenants_executions(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    hub: _Hub,
) -> None:
    tenant = api.provision("cancelled-by-operator")
    action = f"op-cancel-{uuid.uuid4().hex[:6]}"
    queued = _queued(app_pool, tenant.id, action, path=["running"])
    running = queued.execution_id
    hub.running.add(str(running))
    pending = _execution(app_pool, tenant.id).id  # its start stalled: no orchestration runs it
    ended = _execution(app_pool, tenant.id, path=["running", "succeeded"]).id
    _suspend(api, tenant)

    # The tenant's own principals are refused while it is suspended: only the control plane can stop its runs.
    own = api.client.post(
        f"/api/v1/executions/{running}/cancel", headers=api.headers("cancelled-by-operator", ["Intent.Executor"])
    )
    assert own.status_code == 403, own.text
    assert own.json()["reason"] == "tenant_suspended"

    first = _cancel(api, tenant, _admin(api))
    assert first.status_code == 202, first.text
    items = {item["execution_id"]: item for item in first.json()["items"]}
    assert set(items) == {str(running), str(pending)} and str(ended) not in items
    assert first.json()["next_cursor"] is None
    assert items[str(running)] == {
        "execution_id": str(running),
        "outcome": "cancel-requested",
        "status": "running",
        "handed_over": True,
    }
    assert items[str(pending)]["status"] == "cancelled" and items[str(pending)]["handed_over"]

    operator = _operator_id(api)
    row = _execution_row(app_pool, tenant.id, running)
    assert row.cancel_requested_at is not None and _requested_by(app_pool, tenant.id, running) == operator
    assert _execution_row(app_pool, tenant.id, pending).status == "cancelled"
    with tenant_transaction(tenant.id, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, queued)
        told = store.cancel_handed_over(conn, running)
    # The queued remote work ended at once and its verdict handed over after the cancel's own event.
    assert attempt is not None and (attempt.state, attempt.error) == ("abandoned", work_queue.CANCELLED_QUEUED)
    assert attempt.delivery == "handed_over" and told
    assert [name for instance, name, _ in hub.delivered if instance == str(running)] == [CANCEL_EVENT, "run:build:1"]
    assert hub.delivered[0][2] == {"by": operator}

    # Audited as the operator's action, each cancel once, in its own trail and in the tenant's.
    for trail in (OPERATORS, "cancelled-by-operator"):
        records = _cancel_records(api, trail, tenant.id)
        assert all(r["principal_id"] == operator and r["detail"]["recorded"] for r in records)
        assert sorted(_audited(records)) == sorted([str(running), str(pending)])

    # A repeat records nothing more and raises nothing the hub took; what has not ended is listed again, as a
    # cancel already requested, and is not audited a second time.
    again = _cancel(api, tenant, _admin(api))
    assert again.status_code == 202, again.text
    assert again.json()["items"] == [
        {"execution_id": str(running), "outcome": "already-requested", "status": "running", "handed_over": True}
    ]
    assert len(hub.delivered) == 2
    assert _execution_row(app_pool, tenant.id, running).cancel_requested_at == row.cancel_requested_at
    for trail in (OPERATORS, "cancelled-by-operator"):
        assert len(_cancel_records(api, trail, tenant.id)) == 2


def test_the_cancel_is_paged(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    hub: _Hub,
) -> None:
    tenant, ids = _suspended_with(api, app_pool, "cancel-paged", 3)
    hub.running.update(ids)

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        page = _cancel(api, tenant, _admin(api), limit=2, **({"cursor": cursor} if cursor else {}))
        assert page.status_code == 202, page.text
        seen += [item["execution_id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    bad = _cancel(api, tenant, _admin(api), cursor="not-a-cursor")
    assert bad.status_code == 400, bad.text


def test_an_active_tenant_and_a_tenant_principal_are_refused(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    hub: _Hub,
) -> None:
    tenant = api.provision("cancel-refused")
    execution = _execution(app_pool, tenant.id, path=["running"]).id
    hub.running.add(str(execution))

    active = _cancel(api, tenant, _admin(api))
    assert active.status_code == 409, active.text
    assert active.json()["type"].endswith("tenant-active")

    _suspend(api, tenant)
    api.provision("cancel-bystander")
    for roles in (["Tenant.Admin"], ["Intent.Executor"]):
        refused = _cancel(api, tenant, api.headers("cancel-bystander", roles))
        assert refused.status_code == 403, refused.text
    # The suspended tenant's own principals, whatever their roles, are refused as suspended.
    for roles in (["Tenant.Admin"], ["Intent.Executor"]):
        refused = _cancel(api, tenant, api.headers("cancel-refused", roles))
        assert refused.status_code == 403, refused.text
        assert refused.json()["reason"] == "tenant_suspended"
    assert _execution_row(app_pool, tenant.id, execution).cancel_requested_at is None
    assert hub.delivered == []


def test_the_erasure_mark_is_audited_when_it_is_set(
    api: ApiHarness,  # noqa: F811
    hub: _Hub,  # the tenant has no orchestration to purge
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = api.provision("mark-audited")
    _suspend(api, tenant)

    def storage_down(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("blob storage unavailable")

    # Interrupted after the mark: the erasure's own record (written last) is not there to say who began it.
    monkeypatch.setattr(offboarding, "delete_tenant_blobs", storage_down)
    erased = api.client.post(
        f"/api/v1/tenants/{tenant.id}/erase", json={"confirm_name": tenant.name}, headers=_admin(api)
    )
    assert erased.status_code == 500, erased.text
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT erasing_since FROM app.tenants WHERE id = %s", (tenant.id,)).fetchone()
    assert row is not None and row[0] is not None
    marks = [
        r
        for r in api.audit_rows(OPERATORS)
        if r["action"] == Action.TENANT_ERASE and r["resource_type"] == "Tenant" and r["resource_id"] == str(tenant.id)
    ]
    assert [m["detail"] for m in marks] == [{"tenant_name": tenant.name, "erasing_since": row[0].isoformat()}]


def test_erase_tenant_refuses_a_tenant_not_marked(api: ApiHarness) -> None:  # noqa: F811
    container = request_container(get_settings())
    for status in ("suspended", "active"):
        tenant = api.provision(f"unmarked-{status}", status=status)
        blob = f"{tenant.id}/kept/evidence.txt"
        container.upload_blob(blob, b"kept", overwrite=True)
        refused = offboarding.ErasureNotBegunError if status == "suspended" else offboarding.ErasureRefusedError
        with pytest.raises(refused):
            offboarding.erase_tenant(tenant.id, container, get_audit_store())
        assert _tenant_row_counts(api, tenant.id)["tenants"] == 1
        assert container.get_blob_client(blob).exists()


class _HungHub(_Hub):
    """A task hub that takes no raise: each hangs far past the bound an operator's cancel gives it. At each raise,
    whether the cancel was audited by then, in the operators' trail and the tenant's."""

    def __init__(self, api: ApiHarness, trail: str, tenant_id: uuid.UUID) -> None:  # noqa: F811
        super().__init__()
        self._api, self._trail, self._tenant_id = api, trail, tenant_id
        self.audited_at_raise: dict[str, bool] = {}

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Note whether the cancel raised was audited in both trails, then hang."""
        self.audited_at_raise[instance_id] = all(
            instance_id in _audited(_cancel_records(self._api, trail, self._tenant_id))
            for trail in (OPERATORS, self._trail)
        )
        await asyncio.sleep(HUNG_S)


HUNG_S = 5.0


def test_a_hung_task_hub_holds_the_page_within_bounds(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, ids = _suspended_with(api, app_pool, "cancel-hung-hub", 4)
    client = _HungHub(api, "cancel-hung-hub", tenant.id)
    monkeypatch.setattr(control, "OPERATOR_RAISE_BOUND_S", 0.3)
    monkeypatch.setattr(control, "OPERATOR_PAGE_BOUND_S", 0.5)
    admin = _admin(api)
    began = time.monotonic()
    page = _cancel_through(api, tenant, client, monkeypatch, admin)
    took = time.monotonic() - began
    assert page.status_code == 202, page.text
    # Each raise cut off at its bound (not handed over: the sweeper raises it again), and no execution started past
    # the page's bound: the answer comes in about a second, not HUNG_S for one execution, nor for each.
    assert took < 3.0, took
    handled = [item["execution_id"] for item in page.json()["items"]]
    assert 0 < len(handled) < len(ids) and handled == ids[: len(handled)]
    assert all(not item["handed_over"] for item in page.json()["items"])
    assert page.json()["next_cursor"] is not None
    # Every cancel was audited in both trails before its raise, and none recorded is left unaudited.
    assert client.audited_at_raise == dict.fromkeys(handled, True)
    recorded = [e for e in ids if _execution_row(app_pool, tenant.id, uuid.UUID(e)).cancel_requested_at is not None]
    assert recorded == handled
    for trail in (OPERATORS, "cancel-hung-hub"):
        assert sorted(_audited(_cancel_records(api, trail, tenant.id))) == handled


class _ReactivatingHub(_Hub):
    """A task hub on whose first raise the tenant is reactivated (as a concurrent operator's PATCH would)."""

    def __init__(self, api: ApiHarness, tenant_id: uuid.UUID) -> None:  # noqa: F811
        super().__init__()
        self._api, self._tenant_id = api, tenant_id

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Reactivate the tenant once, then deliver."""
        if not self.delivered:
            with psycopg.connect(self._api.admin_url, dbname="quantum") as conn:
                conn.execute("UPDATE app.tenants SET status = 'active' WHERE id = %s", (self._tenant_id,))
        await super().raise_event(instance_id, name, data)


def test_a_tenant_reactivated_meanwhile_stops_the_page(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, ids = _suspended_with(api, app_pool, "cancel-reactivated", 3)
    client = _ReactivatingHub(api, tenant.id)
    client.running.update(ids)
    stopped = _cancel_through(api, tenant, client, monkeypatch)
    assert stopped.status_code == 409, stopped.text
    assert stopped.json()["type"].endswith("tenant-active")
    # What was done before the reactivation is reported (and audited); the rest is the tenant's own again.
    assert [item["execution_id"] for item in stopped.json()["items"]] == ids[:1]
    assert _audited(_cancel_records(api, "cancel-reactivated", tenant.id)) == ids[:1]
    for execution in ids[1:]:
        assert _execution_row(app_pool, tenant.id, uuid.UUID(execution)).cancel_requested_at is None


class _ErasingHub(_Hub):
    """A task hub on whose first raise the tenant is erased (its erasure marked and run, as the erase route does)."""

    def __init__(self, tenant_id: uuid.UUID, admin_url: str) -> None:
        super().__init__()
        self._tenant_id, self._admin_url = tenant_id, admin_url

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Erase the tenant once, then deliver."""
        if not self.delivered:
            with psycopg.connect(self._admin_url, dbname="quantum") as conn:
                conn.execute(
                    "UPDATE app.tenants SET erasing_since = clock_timestamp() WHERE id = %s", (self._tenant_id,)
                )
            await asyncio.to_thread(
                offboarding.erase_tenant, self._tenant_id, request_container(get_settings()), get_audit_store()
            )
        await super().raise_event(instance_id, name, data)


def test_a_tenant_erased_meanwhile_ends_the_page(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, ids = _suspended_with(api, app_pool, "cancel-erased", 3)
    client = _ErasingHub(tenant.id, api.admin_url)
    client.running.update(ids)
    ended = _cancel_through(api, tenant, client, monkeypatch)
    # Not a failure: the page ends with what it did, which the operator's trail keeps (the tenant's is erased).
    assert ended.status_code == 202, ended.text
    assert [item["execution_id"] for item in ended.json()["items"]] == ids[:1]
    assert ended.json()["next_cursor"] is None
    assert _audited(_cancel_records(api, OPERATORS, tenant.id)) == ids[:1]


def test_a_cursor_of_another_tenant_is_refused(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    hub: _Hub,
) -> None:
    first, second = api.provision("cancel-cursor-a"), api.provision("cancel-cursor-b")
    for tenant in (first, second):
        hub.running.update(str(_execution(app_pool, tenant.id, path=["running"]).id) for _ in range(2))
        _suspend(api, tenant)
    page = _cancel(api, first, _admin(api), limit=1)
    assert page.status_code == 202, page.text
    cursor = page.json()["next_cursor"]
    assert cursor is not None
    # Resumed on another tenant, it would skip that tenant's executions up to the first's position.
    refused = _cancel(api, second, _admin(api), cursor=cursor)
    assert refused.status_code == 400, refused.text
    assert all(_requested_by(app_pool, second.id, uuid.UUID(e)) is None for e in _not_ended(app_pool, second.id))


def _not_ended(pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> list[str]:
    """The tenant's executions not ended."""
    return [str(e) for e in control.not_ended_executions(tenant_id, after=None, limit=100, pool=pool)]


def _cancels_raised(hub: _Hub) -> list[str]:
    """The executions the hub took a cancel for, in id order, once per raise."""
    return sorted(instance for instance, name, _ in hub.delivered if name == CANCEL_EVENT)


def test_an_operators_record_failing_once_is_written_again_and_fails_no_cancel(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    hub: _Hub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, ids = _suspended_with(api, app_pool, "cancel-record-fails-once", 3)
    hub.running.update(ids)
    admin = _admin(api)
    failures = [RuntimeError("audit store unavailable")]
    written = tenants_router.record_mutation

    def fails_once(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        written(*args, **kwargs)

    # The first operator's record fails after its cancel committed: raised at the transaction's exit, it answered
    # 500, the cancel was never raised, and the record was lost (a repeat is not audited as recorded).
    monkeypatch.setattr(tenants_router, "record_mutation", fails_once)
    monkeypatch.setattr(control, "OPERATOR_CANCELS_AT_ONCE", 1)
    page = _cancel(api, tenant, admin)
    assert page.status_code == 202, page.text
    assert [item["outcome"] for item in page.json()["items"]] == ["cancel-requested"] * 3
    assert _cancels_raised(hub) == ids
    for trail in (OPERATORS, "cancel-record-fails-once"):
        records = _cancel_records(api, trail, tenant.id)
        assert sorted(_audited(records)) == ids and all(r["detail"]["recorded"] for r in records)


def test_an_operators_record_that_cannot_be_written_is_answered_after_the_raises(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    hub: _Hub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant, ids = _suspended_with(api, app_pool, "cancel-record-fails", 3)
    hub.running.update(ids)
    admin = _admin(api)

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(tenants_router, "record_mutation", unavailable)
    monkeypatch.setattr(control, "OPERATOR_CANCELS_AT_ONCE", 1)
    with caplog.at_level(logging.ERROR, logger=tenants_router.__name__):
        page = _cancel(api, tenant, admin)
    # Every cancel done and raised; the failure answered only then, naming what the operator's trail lacks.
    assert page.status_code == 503, page.text
    assert page.headers["content-type"].startswith("application/problem+json")
    assert [item["execution_id"] for item in page.json()["items"]] == ids
    assert sorted(page.json()["unaudited"]) == ids
    assert _cancels_raised(hub) == ids
    assert all(_execution_row(app_pool, tenant.id, uuid.UUID(e)).cancel_requested_at is not None for e in ids)
    assert sorted(_audited(_cancel_records(api, "cancel-record-fails", tenant.id))) == ids
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert all(execution in logged for execution in ids)


def test_concurrent_operator_cancels_of_one_execution_record_it_once(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = api.provision("cancel-concurrent-operators")
    execution = _execution(app_pool, tenant.id, path=["running"]).id
    _suspend(api, tenant)
    client = _Hub()
    client.running.add(str(execution))
    audits: dict[str, list[bool]] = {"first": [], "second": []}
    second: list[threading.Thread] = []

    def cancel(who: str, audit: control.OperatorAudit) -> control.OperatorCancel:
        return asyncio.run(control.operator_cancel(client, tenant.id, execution, who, audit, pool=app_pool))

    def audit_second(conn: Any, execution_id: uuid.UUID, recorded: bool) -> None:
        audits["second"].append(recorded)

    def audit_first(conn: Any, execution_id: uuid.UUID, recorded: bool) -> None:
        # The second cancel is sent while the first holds the execution, and this one commits once it waits.
        audits["first"].append(recorded)
        thread = threading.Thread(target=cancel, args=("op-second", audit_second), daemon=True)
        second.append(thread)
        thread.start()
        _until_someone_waits_for(api, conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"])

    first = cancel("op-first", audit_first)
    second[0].join(15)
    assert not second[0].is_alive()
    assert first.outcome == "cancel-requested" and audits["first"] == [True]
    # The second found the cancel recorded: a repeat, never audited as recording it (it read `before` unlocked, and
    # both were audited as recorded and both raised).
    assert audits["second"] in ([], [False])
    assert _requested_by(app_pool, tenant.id, execution) == "op-first"


def test_a_reactivation_waits_for_the_operators_record(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = api.provision("cancel-reactivation-waits")
    execution = _execution(app_pool, tenant.id, path=["running"]).id
    _suspend(api, tenant)
    client = _Hub()
    client.running.add(str(execution))
    changes: list[str] = []

    def reactivate(conn: Any, execution_id: uuid.UUID, recorded: bool) -> None:
        """Inside the record's transaction: the control plane's status change, as its PATCH takes the row."""
        with psycopg.connect(api.admin_url, dbname="quantum") as other:
            other.execute("SET lock_timeout = '2s'")
            try:
                other.execute("SELECT 1 FROM app.tenants WHERE id = %s FOR NO KEY UPDATE", (tenant.id,))
                other.execute("UPDATE app.tenants SET status = 'active' WHERE id = %s", (tenant.id,))
            except psycopg.errors.LockNotAvailable:
                changes.append("waited")
            else:
                changes.append("reactivated")

    done = asyncio.run(control.operator_cancel(client, tenant.id, execution, "op", reactivate, pool=app_pool))
    # Under KEY SHARE the reactivation committed while the record was open, and the cancel on an active tenant.
    assert changes == ["waited"]
    assert done.outcome == "cancel-requested"
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT status FROM app.tenants WHERE id = %s", (tenant.id,)).fetchone()
    assert row is not None and row[0] == "suspended"


class _ErasingUnstartedHub(_Hub):
    """A task hub that runs nothing, on whose first raise the tenant is erased: every raise answered as for an
    instance that does not exist, so a pending execution is ended once its tenant is gone."""

    def __init__(self, tenant_id: uuid.UUID, admin_url: str) -> None:
        super().__init__()
        self._erasing = _ErasingHub(tenant_id, admin_url)

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Erase the tenant once; refuse as the host does for an instance it does not run."""
        if not self._erasing.delivered:
            self._erasing.running.add(instance_id)
            await self._erasing.raise_event(instance_id, name, data)
        await super().raise_event(instance_id, name, data)


def test_a_tenant_erased_before_a_pending_execution_ends_ends_the_page(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pending: no orchestration runs them.
    tenant, ids = _suspended_with(api, app_pool, "cancel-erased-pending", 3, running=False)
    admin = _admin(api)
    client = _ErasingUnstartedHub(tenant.id, api.admin_url)
    ended = _cancel_through(api, tenant, client, monkeypatch, admin)
    # The first's cancel was recorded and audited, then its tenant erased before its end: not a failure (500), the
    # page ends with what it did, as for any tenant gone.
    assert ended.status_code == 202, ended.text
    assert [(item["execution_id"], item["outcome"]) for item in ended.json()["items"]] == [(ids[0], "cancel-requested")]
    assert ended.json()["next_cursor"] is None
    assert _audited(_cancel_records(api, OPERATORS, tenant.id)) == ids[:1]
