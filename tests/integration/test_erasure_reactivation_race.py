# intent_ref: platform.tenants
"""A tenant set active while its erasure runs: the erasure marks the tenant first, the status change is refused, and
the erasure completes (sent again when it failed); an active tenant is refused before anything of it goes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from starlette.concurrency import run_in_threadpool

from shared.api.routers import tenants as tenants_router
from shared.policy.actions import Action
from shared.tenants import offboarding
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_erase_races import _Durable, durable  # noqa: F401  # the fixture
from tests.integration.test_offboarding import _tenant_row_counts

pytestmark = pytest.mark.integration

ADMIN = ["Platform.Admin"]


def _admin(api: ApiHarness) -> dict[str, str]:
    """A Platform.Admin's headers, of an operators' tenant of its own."""
    api.provision("reactivation-operator")
    return api.headers("reactivation-operator", ADMIN)


def _set_status(api: ApiHarness, admin: dict[str, str], tenant: TenantHandle, status: str) -> Any:
    """PATCH the tenant's status with its current ETag, as an operator does."""
    url = f"/api/v1/tenants/{tenant.id}"
    etag = api.client.get(url, headers=admin).headers["etag"]
    return api.client.patch(url, json={"status": status}, headers={**admin, "If-Match": etag})


def _erase(api: ApiHarness, admin: dict[str, str], tenant: TenantHandle) -> Any:
    return api.client.post(f"/api/v1/tenants/{tenant.id}/erase", json={"confirm_name": tenant.name}, headers=admin)


def _with_blob(api: ApiHarness, tenant: TenantHandle) -> str:
    """Write a blob under the tenant's prefix; its name."""
    name = f"{tenant.id}/kept/evidence.txt"
    tenants_router.request_container(tenants_router.get_settings()).upload_blob(name, b"kept", overwrite=True)
    return name


def _blob_exists(name: str) -> bool:
    return bool(tenants_router.request_container(tenants_router.get_settings()).get_blob_client(name).exists())


def _erasing_since(api: ApiHarness, tenant: TenantHandle) -> Any:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT erasing_since FROM app.tenants WHERE id = %s", (tenant.id,)).fetchone()
    return row[0] if row else None


def test_a_resume_during_the_erasure_is_refused_and_the_erasure_completes(
    api: ApiHarness,  # noqa: F811
    durable: _Durable,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _admin(api)
    victim = api.provision("resumed-mid-erasure")
    assert _set_status(api, admin, victim, "suspended").status_code == 200
    original = tenants_router.purge_orchestrations
    seen: list[Any] = []

    async def purge_then_resume(*args: Any, **kwargs: Any) -> Any:
        # Another operator resumes the tenant while this erasure is under way (after its status check).
        seen.append(await run_in_threadpool(_set_status, api, admin, victim, "active"))
        return await original(*args, **kwargs)

    monkeypatch.setattr(tenants_router, "purge_orchestrations", purge_then_resume)
    erased = _erase(api, admin, victim)
    [resumed] = seen
    assert resumed.status_code == 409, resumed.text
    assert resumed.json()["type"].endswith("tenant-erasing")
    assert "irreversible" in resumed.json()["detail"] and "send it again" in resumed.json()["detail"]
    assert erased.status_code == 200, erased.text
    assert api.client.get(f"/api/v1/tenants/{victim.id}", headers=admin).status_code == 404
    assert _tenant_row_counts(api, victim.id)["tenants"] == 0


def test_an_active_tenant_is_refused_before_anything_goes(
    api: ApiHarness,  # noqa: F811
    durable: _Durable,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _admin(api)
    tenant = api.provision("resumed-before-erasure")
    blob = _with_blob(api, tenant)
    assert _set_status(api, admin, tenant, "suspended").status_code == 200
    real = tenants_router._authorized_tenant

    def read_then_resume(*args: Any, **kwargs: Any) -> Any:
        # The erasure's unlocked read sees the tenant suspended; an operator resumes it right after.
        read = real(*args, **kwargs)
        if args[1] is Action.TENANT_ERASE:
            assert _set_status(api, admin, tenant, "active").status_code == 200
        return read

    monkeypatch.setattr(tenants_router, "_authorized_tenant", read_then_resume)
    purged: list[Any] = []

    async def purge(*args: Any, **kwargs: Any) -> int:
        purged.append(args)
        return 0

    monkeypatch.setattr(tenants_router, "purge_orchestrations", purge)
    refused = _erase(api, admin, tenant)
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("erasure-refused")
    assert "The tenant is active: suspend it first" in refused.json()["detail"]
    assert purged == [] and _blob_exists(blob)
    assert _erasing_since(api, tenant) is None
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 1


def test_an_interrupted_erasure_keeps_its_mark_and_completes_when_sent_again(
    api: ApiHarness,  # noqa: F811
    durable: _Durable,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _admin(api)
    tenant = api.provision("interrupted-erasure")
    blob = _with_blob(api, tenant)
    assert _set_status(api, admin, tenant, "suspended").status_code == 200

    def storage_down(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("blob storage unavailable")

    monkeypatch.setattr(offboarding, "delete_tenant_blobs", storage_down)
    interrupted = _erase(api, admin, tenant)
    assert interrupted.status_code == 500, interrupted.text
    monkeypatch.undo()

    read = api.client.get(f"/api/v1/tenants/{tenant.id}", headers=admin)
    assert read.status_code == 200 and read.json()["erasing_since"] is not None
    assert read.json()["status"] == "suspended"
    resumed = _set_status(api, admin, tenant, "active")
    assert resumed.status_code == 409, resumed.text
    assert resumed.json()["type"].endswith("tenant-erasing")
    # A change that keeps the status is no status change: the mark refuses status changes only.
    assert _set_status(api, admin, tenant, "suspended").status_code == 200

    again = _erase(api, admin, tenant)
    assert again.status_code == 200, again.text
    assert api.client.get(f"/api/v1/tenants/{tenant.id}", headers=admin).status_code == 404
    assert not _blob_exists(blob)


def test_no_write_makes_a_marked_tenant_active(api: ApiHarness) -> None:  # noqa: F811
    tenant = api.provision("marked-in-the-table", status="suspended")
    offboarding.begin_erasure(tenant.id)
    with pytest.raises(psycopg.errors.CheckViolation, match="tenants_erasing_suspended"):
        with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE qp_platform")
            conn.execute("UPDATE app.tenants SET status = 'active' WHERE id = %s", (tenant.id,))


def test_the_row_deletion_refuses_a_tenant_no_longer_marked(api: ApiHarness) -> None:  # noqa: F811
    tenant = api.provision("unmarked-under-the-lock", status="suspended")
    offboarding.begin_erasure(tenant.id)
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute("UPDATE app.tenants SET erasing_since = NULL WHERE id = %s", (tenant.id,))
    # Each batch looks, and the last transaction again under the row's lock.
    with pytest.raises(offboarding.ErasureRefusedError):
        offboarding._erase_batches(tenant.id, offboarding._Erased(listing=False, purged=frozenset()))
    with pytest.raises(offboarding.ErasureRefusedError):
        offboarding._erase_rest(tenant.id, offboarding._Erased(listing=False, purged=frozenset()))
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 1
