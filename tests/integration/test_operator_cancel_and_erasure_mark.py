# intent_ref: platform.tenants
"""An operator stops a suspended tenant's executions; an erasure's mark is audited and required (ADR 0027, 0012).

A suspended tenant's own principals are refused everything, their cancels included, and reactivating the tenant to
cancel let it act again meanwhile: a Platform.Admin cancels its executions through the control plane, a page at a
time, as the execution's own cancel does (recorded, queued remote work ended and handed over, the run told). The
erasure's mark, where an erasure becomes irreversible, has an audit record of its own, and `erase_tenant` erases no
tenant that is not marked, whoever calls it."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.audit import get_audit_store
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import work_queue
from shared.engine.protocol import CANCEL_EVENT
from shared.policy.actions import Action
from shared.storage.blob import request_container
from shared.tenants import offboarding
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
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
        f"/api/v1/executions/{running}/cancel", headers=api.headers("cancelled-by-operator", ["Executor"])
    )
    assert own.status_code == 403, own.text

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

    # Audited as the operator's action, in its own trail and in the tenant's.
    for trail in (OPERATORS, "cancelled-by-operator"):
        [record] = [r for r in api.audit_rows(trail) if r["action"] == Action.EXECUTION_CANCEL]
        assert record["principal_id"] == operator and record["resource_id"] == str(tenant.id)
        assert sorted(record["detail"]["executions"]) == sorted([str(running), str(pending)])

    # A repeat records nothing more and raises nothing the hub took; what has not ended is listed again.
    again = _cancel(api, tenant, _admin(api))
    assert again.status_code == 202, again.text
    assert [item["execution_id"] for item in again.json()["items"]] == [str(running)]
    assert len(hub.delivered) == 2
    assert _execution_row(app_pool, tenant.id, running).cancel_requested_at == row.cancel_requested_at


def test_the_cancel_is_paged(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    hub: _Hub,
) -> None:
    tenant = api.provision("cancel-paged")
    ids = sorted(str(_execution(app_pool, tenant.id, path=["running"]).id) for _ in range(3))
    hub.running.update(ids)
    _suspend(api, tenant)

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
    for roles in (["Tenant.Admin"], ["Executor"]):
        refused = _cancel(api, tenant, api.headers("cancel-bystander", roles))
        assert refused.status_code == 403, refused.text
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
