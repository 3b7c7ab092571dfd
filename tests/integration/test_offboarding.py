# intent_ref: platform.tenants
"""Tenant offboarding: export to blob storage, then erase every row and blob; only the erasure's record stays."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError
from azure.storage.blob import BlobServiceClient
from psycopg_pool import PoolTimeout

from shared.api.durable import get_durable_client
from shared.api.routers import tenants as tenants_router
from shared.config import Settings, get_settings
from shared.db import session as db_session
from shared.db.pool import build_pool
from shared.db.session import tenant_transaction
from shared.engine import payloads, task_tokens
from shared.engine import steps as store
from shared.engine.steps import AttemptKey, StepSeed
from shared.events.outbox import enqueue
from shared.events.relay import relay_tenant
from shared.modules import ModuleContext
from shared.modules.artifact_write import ArtifactWriteModule
from shared.registry.catalog import ArtifactWriteParams
from shared.tenants import export_jobs, offboarding
from shared.tenants.models import Tenant
from shared.tenants.offboarding import TENANT_TABLES
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_webhooks import Publisher, emit, local  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration

ADMIN = ["Platform.Admin"]


def marked_for_erasure(tenant_id: uuid.UUID) -> uuid.UUID:
    """Suspend the tenant and mark it for erasure, as an operator's erasure does before anything goes: `erase_tenant`
    erases no other tenant. The tenant's id."""
    with db_session.platform_transaction() as conn:
        conn.execute("UPDATE app.tenants SET status = 'suspended' WHERE id = %s", (tenant_id,))
    offboarding.begin_erasure(tenant_id)
    return tenant_id


def exported_by_job(api: ApiHarness, tenant_id: uuid.UUID, headers: dict[str, str]) -> dict[str, Any]:
    """Request the tenant's export (202 with its job queued and its Location), run the export jobs as the timer
    `tenant_exports` does, and return the job as its Location then answers it: succeeded."""
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "queued" and accepted.json()["tenant_id"] == str(tenant_id)
    location = accepted.headers["location"]
    assert location == f"/api/v1/tenants/{tenant_id}/exports/{accepted.json()['id']}"
    export_jobs.run_export_jobs(max_jobs=50)  # jobs other tests left queued included
    job = api.client.get(location, headers=headers)
    assert job.status_code == 200, job.text
    assert job.json()["status"] == "succeeded", job.json()
    return dict(job.json())


def _tenant_row_counts(api: ApiHarness, tenant_id: uuid.UUID) -> dict[str, int]:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = 'app'"
                " AND column_name = 'tenant_id' AND table_name IN (SELECT tablename FROM pg_tables"
                " WHERE schemaname = 'app')"
            ).fetchall()
        ]
        counts = {
            t: conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
                    psycopg.sql.Identifier("app", t)
                ),
                (tenant_id,),
            ).fetchone()[0]
            for t in tables
        }
        counts["tenants"] = conn.execute("SELECT count(*) FROM app.tenants WHERE id = %s", (tenant_id,)).fetchone()[0]
    return counts


def _artifacts(azurite: Any) -> Any:
    """The artifacts container of the test's Azurite, created when missing."""
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("artifacts")
    if not blobs.exists():
        blobs.create_container()
    return blobs


def _seed_data(api: ApiHarness, tenant_id: uuid.UUID) -> None:
    with psycopg.connect(api.app_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
        intent_id = conn.execute(
            "INSERT INTO app.intents (tenant_id, name, created_by) VALUES (%s, 'doomed', 'x') RETURNING id",
            (tenant_id,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
            " created_by) VALUES (%s, %s, 1, '{\"steps\": []}', 'x', 'x')",
            (tenant_id, intent_id),
        )


def _tenant_tables(api: ApiHarness) -> set[str]:
    """The app's tables with a `tenant_id` column, as the schema has them."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT c.table_name FROM information_schema.columns c JOIN pg_tables t"
                " ON t.schemaname = c.table_schema AND t.tablename = c.table_name"
                " WHERE c.table_schema = 'app' AND c.column_name = 'tenant_id'"
            ).fetchall()
        }


def test_tenant_tables_list_matches_the_schema(api: ApiHarness) -> None:
    assert _tenant_tables(api) == set(TENANT_TABLES)


def test_every_tenant_table_is_exported_or_left_out_on_purpose(api: ApiHarness) -> None:
    # The export left out the webhook subscriptions, their deliveries and the domain events, which the erasure then
    # deleted: a tenant table is either archived or named, with its reason, as left out.
    exported, left_out = set(offboarding.EXPORTED_TABLES), set(offboarding.NOT_EXPORTED)
    assert exported | left_out == _tenant_tables(api), "a tenant table is neither exported nor left out on purpose"
    assert not exported & left_out
    # A withheld column exists (renamed, its value would be archived under the new name) in an exported table.
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        for table, columns in offboarding.WITHHELD_COLUMNS.items():
            found = conn.execute(
                "SELECT array_agg(column_name::text) FROM information_schema.columns"
                " WHERE table_schema = 'app' AND table_name = %s",
                (table,),
            ).fetchone()
            assert table in exported and found is not None and columns <= set(found[0]), (table, columns)


def test_export_then_erase_leaves_only_the_erasure_record(
    api: ApiHarness,
    azurite,
    request: pytest.FixtureRequest,
) -> None:
    api.provision("operator")
    admin = api.headers("operator", ADMIN)
    leaving, staying = api.provision("leaving"), api.provision("staying")
    for name, handle in (("leaving", leaving), ("staying", staying)):
        _seed_data(api, handle.id)
        # A request leaves an audit record and a rate bucket behind.
        assert api.client.get("/api/v1/tenant", headers=api.headers(name, ["Tenant.Admin"])).status_code == 200
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{leaving.id}/artifacts/build.log", b"log", overwrite=True)
    blobs.upload_blob(f"{staying.id}/artifacts/build.log", b"log", overwrite=True)
    staying_before = _tenant_row_counts(api, staying.id)

    export = exported_by_job(api, leaving.id, admin)
    archive = json.loads(blobs.download_blob(export["blob_name"]).readall())
    assert export["blob_name"].startswith(f"{leaving.id}/exports/")
    assert [i["name"] for i in archive["intents"]] == ["doomed"]
    assert len(archive["intent_versions"]) == 1 and archive["audit_events"]
    assert export["counts"]["intents"] == 1

    # This tenant has no executions, so the erasure touches no orchestration and the client is never called;
    # tests/e2e/test_offboarding_e2e.py erases executions and their histories on the devhost's Durable host.
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    refused = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json={"confirm_name": leaving.name}, headers=admin)
    assert refused.status_code == 409  # still active
    etag = api.client.get(f"/api/v1/tenants/{leaving.id}", headers=admin).headers["etag"]
    api.client.patch(f"/api/v1/tenants/{leaving.id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag})
    wrong_name = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json={"confirm_name": "nope"}, headers=admin)
    assert wrong_name.status_code == 409
    assert _tenant_row_counts(api, leaving.id)["intents"] == 1  # nothing changed yet

    erased = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json={"confirm_name": leaving.name}, headers=admin)
    assert erased.status_code == 200, erased.text
    # The artifact, the export's archive and manifest, and its copy of the artifact.
    assert erased.json()["removed"]["blobs"] == 4
    assert erased.json()["removed"]["orchestrations"] == 0

    counts = _tenant_row_counts(api, leaving.id)
    assert counts.pop("audit_events") == 1
    assert set(counts.values()) == {0}, counts
    remaining = api.audit_rows("leaving")
    assert [(r["action"], r["decision"]) for r in remaining] == [("tenant.erase", "allow")]
    assert list(blobs.list_blobs(name_starts_with=f"{leaving.id}/")) == []
    # The other tenant is untouched.
    assert _tenant_row_counts(api, staying.id) == staying_before
    assert len(list(blobs.list_blobs(name_starts_with=f"{staying.id}/"))) == 1
    assert api.client.get(f"/api/v1/tenants/{leaving.id}", headers=admin).status_code == 404


def test_an_erasure_forgets_the_tenants_create_answer(api: ApiHarness, request: pytest.FixtureRequest) -> None:
    api.provision("operator")
    admin = api.headers("operator", ADMIN)
    spec = {"name": f"brief-{uuid.uuid4().hex[:8]}", "entra_tenant_id": str(uuid.uuid4())}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    created = api.client.post("/api/v1/tenants", json=spec, headers={**admin, **key})
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    api.client.patch(
        f"/api/v1/tenants/{tenant_id}",
        json={"status": "suspended"},
        headers={**admin, "If-Match": api.client.get(f"/api/v1/tenants/{tenant_id}", headers=admin).headers["etag"]},
    )
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    erased = api.client.post(f"/api/v1/tenants/{tenant_id}/erase", json={"confirm_name": spec["name"]}, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["control_idempotency_keys"] == 1
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        left = conn.execute(
            "SELECT count(*) FROM control.idempotency_keys WHERE response_body::text LIKE %s", (f"%{tenant_id}%",)
        ).fetchone()
    assert left == (0,)
    # Nothing of the erased tenant answers the key again: a retry of it provisions a new tenant.
    again = api.client.post("/api/v1/tenants", json=spec, headers={**admin, **key})
    assert again.status_code == 201 and again.json()["id"] != tenant_id


class _EraseFailsOnce:
    """The configured audit store, whose first erase fails as a throttled or unreachable Cosmos DB would."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.erases = 0

    def erase(self, tenant_id: uuid.UUID) -> int:
        self.erases += 1
        if self.erases == 1:
            raise ServiceRequestError("the audit store is unreachable")
        return int(self._store.erase(tenant_id))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_an_erasure_whose_audit_store_fails_can_be_asked_again_and_then_completes(
    api: ApiHarness, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The audit trail outside Postgres was erased after the tenant row: when that failed, the answer was a 500, every
    # retry a 404 (the tenant was gone), and the trail stayed for ever.
    api.provision("erasing-operator")
    admin = api.headers("erasing-operator", ADMIN)
    leaving = api.provision("half-erased")
    _seed_data(api, leaving.id)
    assert api.client.get("/api/v1/tenant", headers=api.headers("half-erased", ["Tenant.Admin"])).status_code == 200
    etag = api.client.get(f"/api/v1/tenants/{leaving.id}", headers=admin).headers["etag"]
    api.client.patch(f"/api/v1/tenants/{leaving.id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag})
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    store = _EraseFailsOnce(tenants_router.get_audit_store())
    monkeypatch.setattr(tenants_router, "get_audit_store", lambda: store)

    body = {"confirm_name": leaving.name}
    failed = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json=body, headers=admin)
    assert failed.status_code >= 500 and failed.headers["content-type"] == "application/problem+json"
    assert _tenant_row_counts(api, leaving.id)["tenants"] == 1 and _tenant_row_counts(api, leaving.id)["intents"] == 1

    erased = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json=body, headers=admin)
    assert erased.status_code == 200, erased.text
    counts = _tenant_row_counts(api, leaving.id)
    assert counts.pop("audit_events") == 1  # the erasure's own record
    assert set(counts.values()) == {0}, counts


def test_an_export_streamed_in_batches_through_a_file_is_one_json_document(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read whole, a big tenant's archive held several copies of every attempt's output in memory at once: it is
    # read a batch at a time now and assembled in a temporary file past a few MiB. Both made small here.
    monkeypatch.setattr(offboarding, "EXPORT_BATCH_ROWS", 2)
    monkeypatch.setattr(offboarding, "EXPORT_SPOOL_BYTES", 64)
    api.provision("export-operator")
    exported = api.provision("exported-in-batches")
    with psycopg.connect(api.app_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        conn.execute("SELECT app.pin_tenant(%s)", (exported.id,))
        for n in range(5):
            conn.execute(
                "INSERT INTO app.intents (tenant_id, name, created_by) VALUES (%s, %s, 'x')", (exported.id, f"i{n}")
            )
    answer = exported_by_job(api, exported.id, api.headers("export-operator", ADMIN))
    blobs = _artifacts(azurite)
    archive = json.loads(blobs.download_blob(answer["blob_name"]).readall())
    assert sorted(i["name"] for i in archive["intents"]) == [f"i{n}" for n in range(5)]
    assert archive["tenant"]["id"] == str(exported.id) and archive["executions"] == []
    assert answer["counts"]["intents"] == 5 and set(answer["counts"]) == set(offboarding.EXPORTED_TABLES)


def test_an_export_carries_webhooks_deliveries_events_and_settings_but_no_secret(
    api: ApiHarness, azurite: Any, local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The archive, the tenant's data before its erasure, left out its webhook subscriptions, their deliveries, its
    # domain events and its own settings document, and the erasure then deleted them all.
    monkeypatch.setattr(offboarding, "EXPORT_BATCH_ROWS", 2)  # the new tables are read in batches too
    api.provision("webhook-export-operator")
    handle = api.provision("exported-with-webhooks")
    headers = api.headers("exported-with-webhooks", ["Tenant.Admin"])
    settings = {"allowed_hosts": ["127.0.0.1"], "audit_retention_days": 365, "feature.canary": True}
    assert api.client.patch("/api/v1/tenant", json={"settings": settings}, headers=headers).status_code == 200
    created = api.client.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hooks?team=billing", "event_types": ["*"], "description": "billing"},
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},  # its kept answer holds the secret, sealed
    )
    assert created.status_code == 201, created.text
    with tenant_transaction(handle.id) as conn:
        task_tokens.tenant_key(conn, handle.id)  # the tenant's other sealed secret
    events = emit(handle.id, "test.ping", "test.pong", "test.ping")

    answer = exported_by_job(api, handle.id, api.headers("webhook-export-operator", ADMIN))
    raw = _artifacts(azurite).download_blob(answer["blob_name"]).readall().decode()
    archive = json.loads(raw)

    assert set(archive) == {"exported_at", "tenant", *offboarding.EXPORTED_TABLES}
    assert archive["tenant"]["settings"] == settings
    [subscription] = archive["webhook_subscriptions"]
    assert subscription["id"] == created.json()["id"] and subscription["url"] == "http://127.0.0.1:9/hooks?team=billing"
    assert subscription["event_types"] == ["*"] and subscription["description"] == "billing"
    assert "secret" not in subscription
    assert sorted(d["message_id"] for d in archive["webhook_deliveries"]) == sorted(events)
    assert {d["subscription_id"] for d in archive["webhook_deliveries"]} == {subscription["id"]}
    assert sorted(e["id"] for e in archive["outbox"]) == sorted(events)
    assert [e["data"] for e in sorted(archive["outbox"], key=lambda e: e["position"])] == [{"n": n} for n in range(3)]
    counts = answer["counts"]
    assert (counts["webhook_subscriptions"], counts["webhook_deliveries"], counts["outbox"]) == (1, 3, 3)
    # No secret, sealed or plain: not the subscription's, not its kept create answer's, not the task-token key's.
    assert created.json()["secret"] not in raw and "whsec_" not in raw and "qpsealed1." not in raw


class _HeldUpload:
    """The artifacts container, whose archive upload starts and then waits until the test lets it finish."""

    def __init__(self, container: Any) -> None:
        self._container = container
        self.uploading = threading.Event()
        self.finish = threading.Event()

    def upload_blob(self, *args: Any, **kwargs: Any) -> Any:
        self.uploading.set()
        assert self.finish.wait(30)
        return self._container.upload_blob(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def _waiting_on_a_lock(api: ApiHarness) -> bool:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
    return bool(row and row[0])


class _HeldTrail:
    """The configured audit store standing in for one outside Postgres (Cosmos DB): its export hands over the trail's
    first record, read beforehand, and then waits until the test lets it go on."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.reading = threading.Event()
        self.finish = threading.Event()

    def export(self, tenant_id: uuid.UUID, **options: Any) -> Iterator[dict[str, Any]]:
        for index, row in enumerate(list(self._store.export(tenant_id, **options))):
            yield row
            if index == 0:
                self.reading.set()
                assert self.finish.wait(30)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _exported_tenant(api: ApiHarness, name: str) -> Tenant:
    """A tenant with an intent and, from one request of its admin, an audit record, as the export reads it."""
    handle = api.provision(name)
    _seed_data(api, handle.id)
    assert api.client.get("/api/v1/tenant", headers=api.headers(name, ["Tenant.Admin"])).status_code == 200
    with tenant_transaction(handle.id) as conn:
        tenant = get_tenant(conn, handle.id)
    assert tenant is not None
    return tenant


def _relayed_now(tenant_id: uuid.UUID, n: int) -> int:
    """Commit one domain event of `tenant_id`, then run its relay once; how many events went."""
    with tenant_transaction(tenant_id) as conn:
        enqueue(conn, "test.exported", f"tests/{n}", {"n": n})
    return relay_tenant(tenant_id, Publisher())


def test_another_tenants_events_relay_while_an_export_reads_and_uploads(api: ApiHarness, azurite: Any) -> None:
    # The export held its tenant row (a row lock, so a transaction id) from its first read to the end of its upload,
    # and the relay sends only the events of transactions older than every one running: no tenant's events or
    # webhooks went out until a big tenant's archive was uploaded.
    tenant = _exported_tenant(api, "exported-beside-events")
    other = api.provision("relayed-beside-an-export")
    held, trail = _HeldUpload(_artifacts(azurite)), _HeldTrail(tenants_router.get_audit_store())
    with ThreadPoolExecutor(1) as pool:
        export = pool.submit(offboarding.export_tenant, tenant, held, trail)
        try:
            assert trail.reading.wait(30)
            while_reading = _relayed_now(other.id, 1)
            trail.finish.set()
            assert held.uploading.wait(30)
            while_uploading = _relayed_now(other.id, 2)
        finally:
            trail.finish.set()
            held.finish.set()
        result = export.result(30)
    assert (while_reading, while_uploading) == (1, 1)
    archive = json.loads(_artifacts(azurite).download_blob(result.blob_name).readall())
    assert [i["name"] for i in archive["intents"]] == ["doomed"] and archive["audit_events"]


class _PausedBetweenReads:
    """The export's tenant transactions, the export pausing once its `after`-th has ended until the test lets it go
    on."""

    def __init__(self, after: int) -> None:
        self._after, self._ended = after, 0
        self.paused = threading.Event()
        self.go_on = threading.Event()

    @contextmanager
    def __call__(self, tenant_id: uuid.UUID, **options: Any) -> Iterator[Any]:
        with db_session.tenant_transaction(tenant_id, **options) as conn:
            yield conn
        self._ended += 1
        if self._ended == self._after:
            self.paused.set()
            assert self.go_on.wait(30)


def test_an_export_reads_a_page_per_transaction_and_events_relay_between(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every tenant transaction has an id from its start (the tenant pin writes a row): one held across all of a big
    # tenant's tables held back every tenant's events as long. Pages of one row here, the intent's three versions
    # (a key of three columns) in three transactions; the export paused after the second.
    monkeypatch.setattr(offboarding, "EXPORT_BATCH_ROWS", 1)
    tenant = _exported_tenant(api, "exported-by-pages")
    with psycopg.connect(api.app_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        conn.execute("SELECT app.pin_tenant(%s)", (tenant.id,))
        conn.execute(
            "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
            " created_by) SELECT tenant_id, intent_id, v, definition, definition_sha256, created_by"
            " FROM app.intent_versions CROSS JOIN generate_series(2, 3) AS v"
        )
    other = api.provision("relayed-between-pages")
    # The head, the intent's page and the empty one after it, then the versions' first two pages.
    paused = _PausedBetweenReads(after=5)
    monkeypatch.setattr(offboarding, "tenant_transaction", paused)
    with ThreadPoolExecutor(1) as pool:
        export = pool.submit(offboarding.export_tenant, tenant, _artifacts(azurite), tenants_router.get_audit_store())
        try:
            assert paused.paused.wait(30)
            between_pages = _relayed_now(other.id, 1)
        finally:
            paused.go_on.set()
        result = export.result(30)
    assert between_pages == 1
    archive = json.loads(_artifacts(azurite).download_blob(result.blob_name).readall())
    assert [v["version"] for v in archive["intent_versions"]] == [1, 2, 3] and result.counts["intent_versions"] == 3
    assert [i["name"] for i in archive["intents"]] == ["doomed"] and archive["audit_events"]


def test_every_exported_table_has_a_primary_key(api: ApiHarness) -> None:
    # The export reads each table a page at a time after the last row's primary key.
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        keyed = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app' AND k.contype = 'p'"
            ).fetchall()
        }
    assert set(offboarding.EXPORTED_TABLES) <= keyed


class _SlowUpload:
    """The artifacts container, whose archive upload takes `seconds` before it lands."""

    def __init__(self, container: Any, seconds: float) -> None:
        self._container, self._seconds = container, seconds

    def upload_blob(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._seconds)
        return self._container.upload_blob(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_an_export_whose_upload_outlasts_the_idle_bound_writes_one_archive(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Uploaded inside its transaction, an archive that took longer than the idle bound landed, then the server ended
    # the session that sat idle meanwhile: the export failed (503) and its retry wrote a second archive.
    monkeypatch.setattr(db_session, "IDLE_IN_TRANSACTION_TIMEOUT_MS", 300)
    tenant = _exported_tenant(api, "exported-slowly")
    blobs = _artifacts(azurite)
    result = offboarding.export_tenant(tenant, _SlowUpload(blobs, 1.5), tenants_router.get_audit_store())
    assert [b.name for b in blobs.list_blobs(name_starts_with=f"{tenant.id}/exports/")] == [
        result.blob_name,
        result.manifest,
    ]


@pytest.mark.parametrize("held_at", ["reading", "uploading"])
def test_an_export_across_its_tenants_erasure_leaves_no_archive(api: ApiHarness, azurite: Any, held_at: str) -> None:
    # The export read its rows, closed its transaction, then uploaded: an erasure in between finished both its blob
    # passes first, and the archive of every row of the erased tenant stayed in storage. The erasure does not wait
    # for the export (it held the tenant row, and so every tenant's events, until it had uploaded): the export looks
    # at its tenant once it has uploaded, and removes the archive of one erased meanwhile.
    tenant = _exported_tenant(api, f"exported-while-erased-{held_at}")
    blobs = _artifacts(azurite)
    held, trail = _HeldUpload(blobs), _HeldTrail(tenants_router.get_audit_store())
    if held_at == "uploading":
        trail.finish.set()
    with ThreadPoolExecutor(2) as pool:
        export = pool.submit(offboarding.export_tenant, tenant, held, trail)
        try:
            assert (trail.reading if held_at == "reading" else held.uploading).wait(30)
            erase = pool.submit(
                offboarding.erase_tenant, marked_for_erasure(tenant.id), blobs, tenants_router.get_audit_store()
            )
            deadline = time.monotonic() + 30
            while not erase.done() and time.monotonic() < deadline:
                time.sleep(0.05)
            erased_first = erase.done()
        finally:
            trail.finish.set()
            held.finish.set()
        with pytest.raises(offboarding.TenantGoneError):
            export.result(30)
        removed = erase.result(30)
    assert erased_first  # the erasure did not wait for the export
    assert removed["tenants"] == 1 and removed["intents"] == 1
    assert list(blobs.list_blobs(name_starts_with=f"{tenant.id}/")) == []
    # An export asked once the tenant is gone writes nothing.
    with pytest.raises(offboarding.TenantGoneError):
        offboarding.export_tenant(tenant, blobs)
    assert list(blobs.list_blobs(name_starts_with=f"{tenant.id}/")) == []


def test_an_operator_changes_a_tenant_while_its_export_uploads(api: ApiHarness, azurite: Any) -> None:
    # The change locked the tenant row FOR UPDATE, which waits for the export's KEY SHARE: a suspension waited for
    # the whole upload of a big tenant's archive.
    api.provision("export-change-operator")
    admin = api.headers("export-change-operator", ADMIN)
    exported = api.provision("changed-while-exported")
    blobs = _artifacts(azurite)
    held = _HeldUpload(blobs)
    with tenant_transaction(exported.id) as conn:
        tenant = get_tenant(conn, exported.id)
    assert tenant is not None
    with ThreadPoolExecutor(1) as pool:
        export = pool.submit(offboarding.export_tenant, tenant, held)
        assert held.uploading.wait(30)
        try:
            etag = api.client.get(f"/api/v1/tenants/{exported.id}", headers=admin).headers["etag"]
            suspended = api.client.patch(
                f"/api/v1/tenants/{exported.id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag}
            )
            uploading = not export.done()
        finally:
            held.finish.set()
        export.result(30)
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    assert uploading  # answered while the export still held its row


def _execution_with_blobs(tenant_id: uuid.UUID, blobs: Any, app_pool: Any) -> tuple[Any, dict[str, Any]]:
    """An execution of the tenant whose `build` step's output is over the inline limit (stored as a blob, its row
    holding the `$blob` reference) and whose `write` step wrote an artifact, each written by its real writer; the
    reference and the artifact's output."""
    execution = _execution(app_pool, tenant_id, path=["running"])
    big = {"log": "line\n" * (get_settings().QP_PAYLOAD_INLINE_MAX_BYTES // 5 + 1)}
    reference = payloads.claim_check(tenant_id, AttemptKey(execution.id, "build", "run", 1), big, container=blobs)
    assert payloads.is_blob_ref(reference)
    artifact = ArtifactWriteModule(container=lambda: blobs).run(
        ModuleContext(tenant_id, str(execution.id), "write", 1),
        ArtifactWriteParams(name="reports/summary.json", content={"ok": True}),
    )
    with tenant_transaction(tenant_id) as conn:
        store.seed_steps(
            conn,
            execution.id,
            [
                StepSeed("build", "http.request", 1, reference, True),
                StepSeed("write", "artifact.write", 1, artifact, True),
            ],
        )
    return reference, artifact


def _resolved(blobs: Any, folder: str, tenant_id: uuid.UUID, name: str) -> bytes:
    """The bytes in the export's `folder` of the tenant's blob `name`, as its rows name it."""
    prefix = f"{tenant_id}/"
    assert name.startswith(prefix)
    return bytes(blobs.download_blob(folder + name[len(prefix) :]).readall())


def test_an_export_carries_the_tenants_blobs_and_a_manifest_of_them(
    api: ApiHarness, azurite: Any, app_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The archive held a stored output only as its `$blob` reference and an artifact only as its blob's name: the
    # bytes stayed under the tenant's prefix, which its erasure empties. A small chunk here: the big output is copied
    # in several blocks, the artifact in one Put Blob.
    monkeypatch.setattr(offboarding, "EXPORT_CHUNK_BYTES", 4096, raising=False)
    api.provision("blob-export-operator")
    admin = api.headers("blob-export-operator", ADMIN)
    exported = api.provision("exported-with-blobs")
    blobs = _artifacts(azurite)
    reference, artifact = _execution_with_blobs(exported.id, blobs, app_pool)
    assert reference["$blob"]["size"] > 4096 * 2
    first = exported_by_job(api, exported.id, admin)
    body = exported_by_job(api, exported.id, admin)  # not a copy of the first: that job has ended
    assert body["id"] != first["id"]
    # Whatever the answer's shape: the exports hold both blobs' bytes.
    in_exports = {
        hashlib.sha256(blobs.download_blob(b.name).readall()).hexdigest()
        for b in blobs.list_blobs(name_starts_with=f"{exported.id}/exports/")
    }
    assert {reference["$blob"]["sha256"], artifact["sha256"]} <= in_exports
    folder = body["folder"]
    assert folder.startswith(f"{exported.id}/exports/") and folder.endswith("/") and folder != first["folder"]
    assert body["blob_name"] == folder + "archive.json" and body["manifest"] == folder + "manifest.json"
    assert body["blobs"] == 2 and body["container"] == "artifacts"

    manifest = json.loads(blobs.download_blob(body["manifest"]).readall())
    listed = {entry["name"]: entry for entry in manifest["blobs"]}
    output_name = reference["$blob"]["name"].removeprefix(f"{exported.id}/")
    artifact_name = artifact["blob_name"].removeprefix(f"{exported.id}/")
    assert set(listed) == {output_name, artifact_name}
    assert body["blob_bytes"] == manifest["blob_bytes"] == sum(entry["size"] for entry in listed.values())
    # Each copy is the source's bytes, as the manifest and the copy's own Content-MD5 say.
    for name, entry in listed.items():
        data = blobs.download_blob(folder + name).readall()
        assert data == blobs.download_blob(f"{exported.id}/{name}").readall()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
        md5 = blobs.get_blob_client(folder + name).get_blob_properties().content_settings.content_md5
        assert (
            base64.b64encode(bytes(md5)).decode()
            == entry["content_md5"]
            == base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        )
    archive_bytes = blobs.download_blob(body["blob_name"]).readall()
    assert manifest["archive"] == {
        "name": "archive.json",
        "blob_name": body["blob_name"],
        "size": len(archive_bytes),
        "sha256": hashlib.sha256(archive_bytes).hexdigest(),
    }
    # The rows' references resolve within the export, to the bytes they were made from.
    steps = {row["step_id"]: row["output"] for row in json.loads(archive_bytes)["execution_steps"]}
    stored = steps["build"]["$blob"]
    output = _resolved(blobs, folder, exported.id, stored["name"])
    assert len(output) == stored["size"] and hashlib.sha256(output).hexdigest() == stored["sha256"]
    written = _resolved(blobs, folder, exported.id, steps["write"]["blob_name"])
    assert hashlib.sha256(written).hexdigest() == steps["write"]["sha256"] and json.loads(written) == {"ok": True}
    # The folder holds the archive, the manifest and the copies, nothing else.
    in_folder = {b.name.removeprefix(folder) for b in blobs.list_blobs(name_starts_with=folder)}
    assert in_folder == {"archive.json", "manifest.json", output_name, artifact_name}


class _HeldCopy:
    """The artifacts container, whose export's first read of a blob's bytes waits until the test lets it go on."""

    def __init__(self, container: Any) -> None:
        self._container = container
        self.copying = threading.Event()
        self.finish = threading.Event()

    def download_blob(self, *args: Any, **kwargs: Any) -> Any:
        self.copying.set()
        assert self.finish.wait(30)
        return self._container.download_blob(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_an_export_whose_tenant_is_erased_while_it_copies_blobs_leaves_nothing(
    api: ApiHarness, azurite: Any, app_pool: Any
) -> None:
    # The erasure empties the prefix while the export copies: what the export writes after it (the rest of the
    # copies, the manifest) is removed by the export itself, which answers that the tenant is gone.
    tenant = _exported_tenant(api, "erased-while-its-blobs-copy")
    blobs = _artifacts(azurite)
    _execution_with_blobs(tenant.id, blobs, app_pool)
    held = _HeldCopy(blobs)
    with ThreadPoolExecutor(2) as pool:
        export = pool.submit(offboarding.export_tenant, tenant, held, tenants_router.get_audit_store())
        try:
            assert held.copying.wait(30)
            assert [b.name for b in blobs.list_blobs(name_starts_with=f"{tenant.id}/exports/")]  # its archive
            removed = offboarding.erase_tenant(marked_for_erasure(tenant.id), blobs, tenants_router.get_audit_store())
        finally:
            held.finish.set()
        with pytest.raises(offboarding.TenantGoneError):
            export.result(30)
    assert removed["tenants"] == 1
    assert list(blobs.list_blobs(name_starts_with=f"{tenant.id}/")) == []


def test_a_failed_export_removes_what_it_wrote(api: ApiHarness, azurite: Any, app_pool: Any) -> None:
    # Sent again after a failure, an export writes a whole folder of its own: the one cut short is not left beside it.
    tenant = _exported_tenant(api, "export-that-fails")
    blobs = _artifacts(azurite)
    _execution_with_blobs(tenant.id, blobs, app_pool)

    class _Failing(_HeldCopy):
        def download_blob(self, *args: Any, **kwargs: Any) -> Any:
            raise ServiceRequestError("storage went away")

    with pytest.raises(ServiceRequestError):
        offboarding.export_tenant(tenant, _Failing(blobs), tenants_router.get_audit_store())
    assert list(blobs.list_blobs(name_starts_with=f"{tenant.id}/exports/")) == []
    result = offboarding.export_tenant(tenant, blobs, tenants_router.get_audit_store())
    assert result.blobs == 2
    assert {b.name for b in blobs.list_blobs(name_starts_with=f"{tenant.id}/exports/")} == {
        result.folder + name
        for name in (
            "archive.json",
            "manifest.json",
            *(e["name"] for e in json.loads(blobs.download_blob(result.manifest).readall())["blobs"]),
        )
    }


class _LikeAzure:
    """The artifacts container, whose delete of a blob with staged blocks only answers 404 as Azure Storage does
    (the emulator deletes it)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def delete_blob(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self._container.get_blob_client(name).exists():
            raise ResourceNotFoundError("The specified blob does not exist.")
        return self._container.delete_blob(name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def _staged_or_not(blobs: Any, prefix: str) -> set[str]:
    """Every blob under `prefix`, those with staged blocks only (which a plain listing leaves out) included."""
    return {b.name for b in blobs.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"])}


class _FailsThirdRead(_HeldCopy):
    """The artifacts container (as Azure Storage deletes), whose third read of a blob's bytes fails: the big output's
    copy has staged blocks by then; the first discard of them fails too when `discard_fails`."""

    def __init__(self, container: Any, *, discard_fails: bool = False) -> None:
        super().__init__(_LikeAzure(container))
        self.reads = 0
        self.discard_fails = discard_fails

    def download_blob(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        if self.reads == 3:
            raise ServiceRequestError("storage went away")
        return self._container.download_blob(*args, **kwargs)

    def get_blob_client(self, name: str) -> Any:
        client = self._container.get_blob_client(name)
        if not self.discard_fails:
            return client
        outer = self

        class _Client:
            def commit_block_list(self, blocks: Any, **kwargs: Any) -> Any:
                if not blocks and outer.discard_fails:
                    outer.discard_fails = False
                    raise ServiceRequestError("storage went away again")
                return client.commit_block_list(blocks, **kwargs)

            def __getattr__(self, attribute: str) -> Any:
                return getattr(client, attribute)

        return _Client()


@pytest.mark.parametrize("discard_fails", [False, True], ids=["discarded-by-the-copy", "removed-by-the-cleanup"])
def test_a_copy_cut_short_leaves_no_staged_blocks(
    api: ApiHarness, azurite: Any, app_pool: Any, monkeypatch: pytest.MonkeyPatch, discard_fails: bool
) -> None:
    # A big blob is copied as staged blocks committed at the end: cut short before the commit, its blocks (the
    # tenant's bytes) were left where no plain listing shows them, so neither the export's cleanup nor an erasure
    # removed them. The copy discards them; when that fails, the export's cleanup, which lists them, does.
    monkeypatch.setattr(offboarding, "EXPORT_CHUNK_BYTES", 4096, raising=False)
    tenant = _exported_tenant(api, f"copy-cut-short-{discard_fails}".lower())
    blobs = _artifacts(azurite)
    reference, _ = _execution_with_blobs(tenant.id, blobs, app_pool)
    assert reference["$blob"]["size"] > 4096 * 3
    failing = _FailsThirdRead(blobs, discard_fails=discard_fails)
    with pytest.raises(ServiceRequestError):
        offboarding.export_tenant(tenant, failing, tenants_router.get_audit_store())
    assert failing.reads == 3 and failing.discard_fails is False
    assert _staged_or_not(blobs, f"{tenant.id}/exports/") == set()


def test_a_copy_whose_source_goes_meanwhile_leaves_no_staged_blocks(
    api: ApiHarness, azurite: Any, app_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A source removed mid-copy (a compensated artifact) is no longer the tenant's: the export goes on and answers,
    # and nothing else would remove the blocks its copy had staged.
    monkeypatch.setattr(offboarding, "EXPORT_CHUNK_BYTES", 4096, raising=False)
    tenant = _exported_tenant(api, "source-goes-mid-copy")
    blobs = _artifacts(azurite)
    reference, artifact = _execution_with_blobs(tenant.id, blobs, app_pool)
    source = reference["$blob"]["name"]

    class _SourceGoes(_HeldCopy):
        reads = 0

        def download_blob(self, name: str, *args: Any, **kwargs: Any) -> Any:
            if name == source:
                self.reads += 1
                if self.reads == 3:
                    self._container.delete_blob(source)
            return self._container.download_blob(name, *args, **kwargs)

    result = offboarding.export_tenant(tenant, _SourceGoes(_LikeAzure(blobs)), tenants_router.get_audit_store())
    assert result.blobs == 1
    copy = result.folder + artifact["blob_name"].removeprefix(f"{tenant.id}/")
    assert _staged_or_not(blobs, f"{tenant.id}/exports/") == {result.blob_name, result.manifest, copy}


def test_an_erasure_removes_staged_blocks(api: ApiHarness, azurite: Any) -> None:
    # Blocks staged under the tenant's prefix and never committed (a host that died mid-copy): a plain listing does
    # not show them, and Azure Storage answers 404 to their delete.
    tenant = _exported_tenant(api, "staged-blocks-erased")
    blobs = _artifacts(azurite)
    staged = f"{tenant.id}/exports/20260101T000000000000Z/executions/x/outputs/run.json"
    blobs.get_blob_client(staged).stage_block(base64.b64encode(b"0000000000").decode(), b"tenant data")
    assert _staged_or_not(blobs, f"{tenant.id}/") == {staged}
    assert not blobs.get_blob_client(staged).exists()  # as Azure Storage answers, its delete 404s (`_LikeAzure`)
    removed = offboarding.erase_tenant(
        marked_for_erasure(tenant.id), _LikeAzure(blobs), tenants_router.get_audit_store()
    )
    assert removed["tenants"] == 1 and removed["blobs"] >= 1
    assert _staged_or_not(blobs, f"{tenant.id}/") == set()


class _HoldSecondBlob(_HeldCopy):
    """The artifacts container, whose export's first read of its second blob's bytes waits until the test lets it
    go on (the first blob is copied by then)."""

    def __init__(self, container: Any) -> None:
        super().__init__(container)
        self.first: str | None = None

    def download_blob(self, *args: Any, **kwargs: Any) -> Any:
        if self.first is None:
            self.first = args[0]
        elif args[0] != self.first and not self.copying.is_set():
            self.copying.set()
            assert self.finish.wait(30)
        return self._container.download_blob(*args, **kwargs)


class _FailingAudit:
    """The configured audit store, whose erase fails: the erasure stops after its first blob pass, the tenant row
    left (marked)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def erase(self, tenant_id: uuid.UUID) -> int:
        raise RuntimeError("audit store unavailable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_an_export_across_an_erasure_that_fails_midway_leaves_nothing(
    api: ApiHarness, azurite: Any, app_pool: Any
) -> None:
    # The erasure deleted the archive and the first copy, then failed, its tenant row left: the export, seeing the
    # row, answered with a manifest naming blobs that were gone. A tenant marked for erasure is as good as gone.
    tenant = _exported_tenant(api, "erasure-fails-midway")
    blobs = _artifacts(azurite)
    _execution_with_blobs(tenant.id, blobs, app_pool)
    held = _HoldSecondBlob(blobs)
    with ThreadPoolExecutor(2) as pool:
        export = pool.submit(offboarding.export_tenant, tenant, held, tenants_router.get_audit_store())
        try:
            assert held.copying.wait(30)
            with pytest.raises(RuntimeError, match="audit store unavailable"):
                offboarding.erase_tenant(
                    marked_for_erasure(tenant.id), blobs, _FailingAudit(tenants_router.get_audit_store())
                )
        finally:
            held.finish.set()
        with pytest.raises(offboarding.TenantGoneError):
            export.result(30)
    assert offboarding.tenant_exists(tenant.id)  # the erasure is to be asked again
    assert _staged_or_not(blobs, f"{tenant.id}/exports/") == set()
    with pytest.raises(offboarding.TenantGoneError):  # nor does a new export begin
        offboarding.export_tenant(tenant, blobs, tenants_router.get_audit_store())
    assert _staged_or_not(blobs, f"{tenant.id}/exports/") == set()


def test_the_export_route_answers_404_for_a_tenant_marked_for_erasure(api: ApiHarness) -> None:
    api.provision("marked-export-operator")
    tenant = api.provision("marked-for-erasure-exported")
    marked_for_erasure(tenant.id)
    answer = api.client.post(
        f"/api/v1/tenants/{tenant.id}/export", headers=api.headers("marked-export-operator", ADMIN)
    )
    assert answer.status_code == 404, answer.text
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:  # and no job is recorded
        jobs = conn.execute("SELECT count(*) FROM control.tenant_export_jobs WHERE tenant_id = %s", (tenant.id,))
        assert jobs.fetchone() == (0,)


def test_a_bounded_look_at_a_tenant_gives_up_on_an_exhausted_pool_within_its_bound(
    pg: Any, new_tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `within_s` bounded the look's lock wait and its statement, not its borrow: with every pooled connection held,
    # the look waited out the pool's timeout (3 s deployed, plus a connect's 2 s) whatever its bound. Here the pool's
    # timeout outlasts the holders, so an unbounded borrow gets a connection once they let go and answers.
    settings = Settings(
        QP_DATABASE_URL=pg.app_url,
        QP_DATABASE_CONTROL_URL=pg.control_url,
        QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true",
        QP_DATABASE_POOL_MAX=2,
        QP_DATABASE_POOL_TIMEOUT_S=60.0,
    )
    pool = build_pool(pg.app_url, settings, name="exhausted")
    monkeypatch.setattr(db_session, "get_pool", lambda: pool)
    tenant_id = new_tenant()
    holding = threading.Semaphore(0)
    release = threading.Event()
    let_go = threading.Event()

    def hold() -> None:
        with pool.connection():
            holding.release()
            release.wait(30)  # only a broken test waits that long
        let_go.set()

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(settings.QP_DATABASE_POOL_MAX)]
    try:
        for holder in holders:
            holder.start()
        for _ in holders:
            assert holding.acquire(timeout=30), "the holders never got the pool's connections"
        with pytest.raises(PoolTimeout):
            offboarding.tenant_exists(tenant_id, within_s=0.5)
        assert not let_go.is_set(), "the look got a connection only once the holders let go"
        release.set()
        for holder in holders:
            holder.join(30)
        assert offboarding.tenant_exists(tenant_id, within_s=0.5) is True  # a connection free: the look answers
    finally:
        release.set()
        pool.close()
