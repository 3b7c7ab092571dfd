# intent_ref: platform.tenants
"""An erased tenant's blob whose removal failed does not outlive the erasure (ADR 0046): the erasure records the
tenant (migration 0053), a writer whose removal fails records it again, and the timer `erased_tenant_blobs` empties
the prefix, dropping the record once the prefix is empty and its seven days are up. Before, a failed removal was an
ERROR line, and the blob stayed for ever."""

from __future__ import annotations

import base64
import importlib.util
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import azure.functions as func
import psycopg
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.cosmos import DatabaseProxy
from azure.storage.blob import ContainerClient
from psycopg_pool import ConnectionPool

from shared.api.routers import tenants as tenants_router
from shared.audit import AuditRecord
from shared.audit.cosmos import CosmosAuditStore, _document, create_audit_container
from shared.audit.outbox import AuditOutbox
from shared.db.session import runtime_transaction, tenant_transaction
from shared.policy.actions import Action
from shared.tenants import erased_blobs, offboarding
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_offboarding import _artifacts, _LikeAzure, _staged_or_not, marked_for_erasure

pytestmark = pytest.mark.integration

TIMER = Path(__file__).resolve().parents[2] / "functions" / "timer_erased_tenant_blobs.py"


class _DeleteFails:
    """The artifacts container, whose next `failures` deletes of a blob under `prefix` fail as an unreachable blob
    store's would (other tests' blobs, which a sweep may meet first, are deleted as usual)."""

    def __init__(self, container: ContainerClient, prefix: str, failures: int = 1) -> None:
        self._container = container
        self._prefix = prefix
        self.failures = failures
        self.failed: list[str] = []

    def delete_blob(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.failures and name.startswith(self._prefix):
            self.failures -= 1
            self.failed.append(name)
            raise ServiceRequestError("blob storage is unreachable")
        return self._container.delete_blob(name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


class _WritesWhileErased:
    """The configured audit store, whose erase (between the erasure's two blob passes) lets a writer upload a blob:
    a step's output stored while the tenant's rows go, which only the erasure's late pass finds."""

    def __init__(self, store: Any, container: ContainerClient, name: str) -> None:
        self._store = store
        self._container = container
        self._name = name

    def erase(self, tenant_id: uuid.UUID) -> int:
        self._container.upload_blob(self._name, b"output", overwrite=True)
        return int(self._store.erase(tenant_id))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def blobs(api: ApiHarness, azurite: Any) -> ContainerClient:
    """The artifacts container of the test's Azurite (the app's settings point there too)."""
    container: ContainerClient = _artifacts(azurite)
    return container


def _left(blobs: ContainerClient, tenant_id: uuid.UUID) -> list[str]:
    return [blob.name for blob in blobs.list_blobs(name_starts_with=offboarding.tenant_blob_prefix(tenant_id))]


def _record(api: ApiHarness, tenant_id: uuid.UUID) -> dict[str, Any] | None:
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT erased_at, noted_at, swept_at, failure FROM control.erased_tenant_blobs WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchone()


def _backdate(api: ApiHarness, tenant_id: uuid.UUID, days: int = 8) -> None:
    """The record as it is `days` after its last note (past `erased_blobs.KEEP`)."""
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE control.erased_tenant_blobs SET erased_at = erased_at - %s, noted_at = noted_at - %s"
            " WHERE tenant_id = %s",
            (timedelta(days=days), timedelta(days=days), tenant_id),
        )


def _sweep(container: Any, control_pool: ConnectionPool[Any]) -> erased_blobs.SweepResult:
    # Every record of the session's database is due: other tests' erasures are swept too, so only this test's
    # tenant is looked at afterwards.
    return erased_blobs.sweep_erased_tenant_blobs(
        cast(ContainerClient, container), max_tenants=1000, control_pool=control_pool
    )


def test_a_blob_whose_late_removal_failed_is_removed_by_the_timer(
    api: ApiHarness, blobs: ContainerClient, control_pool: ConnectionPool[Any]
) -> None:
    tenant_id = api.provision("late-blob-left").id
    name = f"{offboarding.tenant_blob_prefix(tenant_id)}executions/x/outputs/run.json"
    failing = _DeleteFails(blobs, offboarding.tenant_blob_prefix(tenant_id))
    store = _WritesWhileErased(tenants_router.get_audit_store(), blobs, name)

    removed = offboarding.erase_tenant(marked_for_erasure(tenant_id), cast(ContainerClient, failing), store)

    assert removed["tenants"] == 1 and failing.failed == [name]
    assert _left(blobs, tenant_id) == [name]  # the late pass failed: the tenant is gone, its blob is not
    record = _record(api, tenant_id)
    assert record is not None and record["swept_at"] is None
    # Past its seven days, the record is kept all the same while something is left; a sweep that fails says why.
    _backdate(api, tenant_id)
    failed = _sweep(_DeleteFails(blobs, offboarding.tenant_blob_prefix(tenant_id), failures=10), control_pool)
    assert failed.failed == 1 and _left(blobs, tenant_id) == [name]
    record = _record(api, tenant_id)
    assert record is not None and "unreachable" in record["failure"]

    _sweep(blobs, control_pool)
    assert _left(blobs, tenant_id) == []
    assert _record(api, tenant_id) is None  # nothing left and its time up: dropped


def test_a_blob_a_writer_could_not_remove_is_removed_by_the_timer(
    api: ApiHarness, blobs: ContainerClient, control_pool: ConnectionPool[Any]
) -> None:
    tenant_id = api.provision("writer-blob-left").id
    offboarding.erase_tenant(marked_for_erasure(tenant_id), blobs, tenants_router.get_audit_store())
    # The erasure's record, its prefix empty and its seven days up: dropped by a sweep.
    _backdate(api, tenant_id)
    _sweep(blobs, control_pool)
    assert _record(api, tenant_id) is None

    # A writer that wrote across the erasure finds its tenant gone, and its removal fails.
    name = f"{offboarding.tenant_blob_prefix(tenant_id)}artifacts/report.json"
    blobs.upload_blob(name, b"{}", overwrite=True)
    failing = _DeleteFails(blobs, name)
    assert offboarding.kept_for_tenant(tenant_id, cast(ContainerClient, failing), name) is False
    assert failing.failed == [name] and _left(blobs, tenant_id) == [name]

    _sweep(blobs, control_pool)
    assert _left(blobs, tenant_id) == []
    # Noted just now, the record stays its seven days (a straggler's blob is still caught), then goes.
    record = _record(api, tenant_id)
    assert record is not None and record["swept_at"] is not None and record["failure"] is None
    _backdate(api, tenant_id)
    _sweep(blobs, control_pool)
    assert _record(api, tenant_id) is None


def test_every_erasure_is_recorded_and_its_record_kept_while_a_blob_lands_late(
    api: ApiHarness, blobs: ContainerClient, control_pool: ConnectionPool[Any]
) -> None:
    tenant_id = api.provision("quietly-erased").id
    blobs.upload_blob(f"{offboarding.tenant_blob_prefix(tenant_id)}artifacts/a.log", b"a", overwrite=True)
    offboarding.erase_tenant(marked_for_erasure(tenant_id), blobs, tenants_router.get_audit_store())
    assert _left(blobs, tenant_id) == [] and _record(api, tenant_id) is not None
    # Within its seven days, an empty prefix keeps its record: a writer that died between its upload and its look at
    # the tenant left a blob nobody else knows of.
    _sweep(blobs, control_pool)
    assert _record(api, tenant_id) is not None
    straggler = f"{offboarding.tenant_blob_prefix(tenant_id)}executions/y/outputs/late.json"
    blobs.upload_blob(straggler, b"late", overwrite=True)
    _sweep(blobs, control_pool)
    assert _left(blobs, tenant_id) == [] and _record(api, tenant_id) is not None


def test_a_record_whose_tenant_id_is_a_tenant_again_goes_and_its_blobs_stay(
    api: ApiHarness, blobs: ContainerClient, control_pool: ConnectionPool[Any]
) -> None:
    # The devhost seeds its demo tenants under fixed ids: erased and seeded again, the blobs are the new tenant's.
    tenant_id = api.provision("seeded-again").id
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute("INSERT INTO control.erased_tenant_blobs (tenant_id) VALUES (%s)", (tenant_id,))
    name = f"{offboarding.tenant_blob_prefix(tenant_id)}artifacts/kept.log"
    blobs.upload_blob(name, b"kept", overwrite=True)
    _sweep(blobs, control_pool)
    assert _left(blobs, tenant_id) == [name] and _record(api, tenant_id) is None


class _SeedsWhileListing:
    """The artifacts container, whose first listing lets a tenant be created under the id `reused` (the devhost's
    demo seed, while a sweep runs)."""

    def __init__(self, container: ContainerClient, control_url: str, reused: uuid.UUID) -> None:
        self._container = container
        self._control_url = control_url
        self._reused = reused
        self.seeded = False

    def list_blobs(self, *args: Any, **kwargs: Any) -> Any:
        if not self.seeded:
            self.seeded = True
            with psycopg.connect(self._control_url, autocommit=True) as conn, conn.transaction():
                conn.execute("SET LOCAL ROLE qp_platform")
                conn.execute(
                    "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
                    (self._reused, f"t-{self._reused.hex[:12]}", uuid.uuid4()),
                )
        return self._container.list_blobs(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_a_tenant_created_under_an_erased_id_during_a_sweep_keeps_its_blobs(
    api: ApiHarness, blobs: ContainerClient, control_pool: ConnectionPool[Any]
) -> None:
    erased = api.provision("erased-before-reuse").id
    offboarding.erase_tenant(marked_for_erasure(erased), blobs, tenants_router.get_audit_store())
    reused = uuid.uuid4()  # erased long ago, its record still there; seeded again while the sweep runs
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute("UPDATE control.erased_tenant_blobs SET swept_at = NULL WHERE tenant_id = %s", (erased,))
        conn.execute("INSERT INTO control.erased_tenant_blobs (tenant_id) VALUES (%s)", (reused,))
    _backdate(api, erased, days=30)  # swept first: the oldest of the unswept
    name = f"{offboarding.tenant_blob_prefix(reused)}artifacts/new-tenants.log"
    blobs.upload_blob(name, b"mine", overwrite=True)
    seeding = _SeedsWhileListing(blobs, api.control_url, reused)
    _sweep(seeding, control_pool)
    assert seeding.seeded and _left(blobs, reused) == [name] and _record(api, reused) is None


def test_no_tenant_role_reads_the_erased_tenants(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant_id = api.provision("curious-about-erasures").id
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(tenant_id, pool=app_pool) as conn:
        conn.execute("SELECT tenant_id FROM control.erased_tenant_blobs")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), runtime_transaction(pool=app_pool) as conn:
        conn.execute("INSERT INTO control.erased_tenant_blobs (tenant_id) VALUES (%s)", (uuid.uuid4(),))


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # the Cosmos stand-in's certificate
def test_an_audit_record_a_killed_copy_wrote_as_its_tenant_was_erased_goes_with_the_sweep(
    api: ApiHarness,
    blobs: ContainerClient,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    cosmos_database: DatabaseProxy,
) -> None:
    container = create_audit_container(cosmos_database, f"erased-audit-{uuid.uuid4().hex[:8]}")
    store = CosmosAuditStore(
        container, outbox=lambda write, delete: AuditOutbox(write, delete, pool=app_pool, control_pool=control_pool)
    )
    tenant_id = api.provision("late-audit-left").id
    offboarding.erase_tenant(marked_for_erasure(tenant_id), blobs, store)
    # An outbox copy's write that landed after the erasure's second pass, its copy killed before it could look at
    # the tenant and undo it: nothing in the outbox tells of it. Then the erasure's own record, which stays.
    late = _audit_record(tenant_id, "intent.update", "Intent", "an-intent")
    own = _audit_record(tenant_id, Action.TENANT_ERASE, "Tenant", str(tenant_id))
    for record in (late, own):
        store._write_copy(tenant_id, _document(record))

    result = erased_blobs.sweep_erased_tenant_blobs(
        blobs, max_tenants=1000, control_pool=control_pool, audit_store=store
    )
    left = container.query_items(
        "SELECT c.id FROM c WHERE c.tenantId = @tenantId",
        parameters=[{"name": "@tenantId", "value": str(tenant_id)}],
        partition_key=str(tenant_id),
    )
    assert [doc["id"] for doc in left] == [str(own.id)]
    assert result.records == 1  # only this test's container holds records


def _audit_record(tenant_id: uuid.UUID, action: str, resource_type: str, resource_id: str) -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant_id,
        principal_id="platform/admin",
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        decision="allow",
        reason="applied",
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        detail={},
        occurred_at=datetime.now(UTC),
    )


def test_the_timer_is_registered_and_runs_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loaded on its own: the `functions` package would build the gateway, which needs settings.
    spec = importlib.util.spec_from_file_location("erased_tenant_blobs_timer_under_test", TIMER)
    assert spec is not None and spec.loader is not None
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)
    runs: list[erased_blobs.SweepResult] = []

    def sweep() -> erased_blobs.SweepResult:
        runs.append(erased_blobs.SweepResult(1, 2, 1, 0))
        return runs[-1]

    monkeypatch.setattr(timer, "sweep_erased_tenant_blobs", sweep)
    app = func.FunctionApp()
    app.register_functions(timer.bp)
    (function,) = [f for f in app.get_functions() if f.get_function_name() == "erased_tenant_blobs"]
    function.get_user_function()(None)
    assert len(runs) == 1


def test_staged_blocks_of_an_erased_tenant_keep_its_record_until_the_timer_removes_them(
    api: ApiHarness, blobs: ContainerClient, control_pool: ConnectionPool[Any]
) -> None:
    # Blocks staged under an erased tenant's prefix and never committed (a copy of a host that died mid-way): a plain
    # listing does not show them, so the sweep found the prefix empty and dropped the record, leaving them for good.
    tenant_id = api.provision("staged-after-erasure").id
    offboarding.erase_tenant(marked_for_erasure(tenant_id), blobs, tenants_router.get_audit_store())
    staged = f"{offboarding.tenant_blob_prefix(tenant_id)}exports/20260101T000000000000Z/artifacts/report.json"
    blobs.get_blob_client(staged).stage_block(base64.b64encode(b"0000000000").decode(), b"tenant data")
    _backdate(api, tenant_id)
    # No blob deleted this run: the look that tells the prefix empty sees the staged blocks, and keeps the record.
    erased_blobs.sweep_erased_tenant_blobs(blobs, max_tenants=1000, max_blobs=0, control_pool=control_pool)
    assert _record(api, tenant_id) is not None
    _sweep(_LikeAzure(blobs), control_pool)
    assert _staged_or_not(blobs, offboarding.tenant_blob_prefix(tenant_id)) == set()
    assert _record(api, tenant_id) is None
