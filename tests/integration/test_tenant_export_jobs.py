# intent_ref: platform.tenants
"""A tenant's export is a job (ADR 0012, amended 2026-12-07: the export is a job): the request queues it and answers
202, the `tenant_exports` timer runs it, its URL answers how it went; one export of a tenant at a time, a killed
attempt retried with its folder removed, nothing left of a failed export or of one whose tenant went."""

from __future__ import annotations

import importlib.util
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import psycopg
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.storage.blob import ContainerClient

from shared.api.durable import get_durable_client
from shared.api.routers import tenants as tenants_router
from shared.tenants import export_jobs, offboarding
from shared.tenants.erased_blobs import sweep_erased_tenant_blobs
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_offboarding import ADMIN, _artifacts, _seed_data, exported_by_job, marked_for_erasure

pytestmark = pytest.mark.integration

TIMER = Path(__file__).resolve().parents[2] / "functions" / "timer_tenant_exports.py"


OPERATOR = "export-jobs-operator"


def _operator(api: ApiHarness) -> dict[str, str]:
    """A Platform.Admin's headers, of the operators' tenant `OPERATOR` (provisioned anew for each test)."""
    api.provision(OPERATOR)
    return api.headers(OPERATOR, ADMIN)


def _tenant(api: ApiHarness, label: str) -> uuid.UUID:
    """A tenant (known to the harness as `label`) with an intent."""
    handle = api.provision(label)
    _seed_data(api, handle.id)
    return uuid.UUID(str(handle.id))


def _jobs(api: ApiHarness, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """The tenant's job rows, as the owner reads them."""
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT * FROM control.tenant_export_jobs WHERE tenant_id = %s ORDER BY requested_at", (tenant_id,)
        ).fetchall()


def _drain() -> None:
    """Run every due job, as the timer's runs would one after another (other tests' queued jobs included)."""
    export_jobs.run_export_jobs(max_jobs=50)


def _exports(azurite: Any, tenant_id: uuid.UUID) -> set[str]:
    """Every blob under the tenant's exports folder, those with staged blocks only included."""
    listing = _artifacts(azurite).list_blobs(name_starts_with=f"{tenant_id}/exports/", include=["uncommittedblobs"])
    return {blob.name for blob in listing}


def test_a_request_queues_a_job_the_timer_runs_and_its_location_answers(api: ApiHarness, azurite: Any) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "queued-export")
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{tenant_id}/artifacts/build.log", b"log", overwrite=True)
    _drain()  # nothing of this tenant yet

    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)

    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["status"] == "queued" and job["tenant_id"] == str(tenant_id) and job["attempts"] == 0
    assert job["folder"] is None and job["blob_name"] is None and job["failure"] is None
    assert accepted.headers["location"] == f"/api/v1/tenants/{tenant_id}/exports/{job['id']}"
    assert accepted.headers["retry-after"] == str(export_jobs.RETRY_AFTER_S)
    assert _exports(azurite, tenant_id) == set()  # nothing is written in the request
    # The mutation is audited at the request, in the operator's trail, naming the job.
    [record] = [r for r in api.audit_rows(OPERATOR) if r["reason"] == "applied"]
    assert (record["action"], record["resource_id"]) == ("tenant.export", str(tenant_id))
    assert record["detail"]["export_id"] == job["id"]
    waiting = api.client.get(accepted.headers["location"], headers=admin)
    assert waiting.status_code == 200 and waiting.json()["status"] == "queued"
    assert waiting.headers["retry-after"] == str(export_jobs.RETRY_AFTER_S)

    _drain()

    done = api.client.get(accepted.headers["location"], headers=admin)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "succeeded" and body["attempts"] == 1 and "retry-after" not in done.headers
    assert body["started_at"] and body["finished_at"] and body["container"] == "artifacts"
    folder = body["folder"]
    assert folder.startswith(f"{tenant_id}/exports/") and folder.endswith("/")
    assert body["blob_name"] == folder + "archive.json" and body["manifest"] == folder + "manifest.json"
    assert body["blobs"] == 1 and body["blob_bytes"] == 3 and body["counts"]["intents"] == 1
    manifest = json.loads(blobs.download_blob(body["manifest"]).readall())
    assert [entry["name"] for entry in manifest["blobs"]] == ["artifacts/build.log"]
    assert blobs.download_blob(folder + "artifacts/build.log").readall() == b"log"
    archive = json.loads(blobs.download_blob(body["blob_name"]).readall())
    assert [intent["name"] for intent in archive["intents"]] == ["doomed"]
    assert _exports(azurite, tenant_id) == {body["blob_name"], body["manifest"], folder + "artifacts/build.log"}
    listed = api.client.get(f"/api/v1/tenants/{tenant_id}/exports", headers=admin)
    assert listed.status_code == 200 and [item["id"] for item in listed.json()["items"]] == [job["id"]]


def test_a_request_while_one_is_queued_or_running_answers_that_job(api: ApiHarness, azurite: Any) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "one-at-a-time")
    first = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    again = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:  # as a run would have claimed it
        conn.execute(
            "UPDATE control.tenant_export_jobs SET status = 'running', attempts = 1,"
            " lease_until = now() + interval '5 minutes' WHERE tenant_id = %s",
            (tenant_id,),
        )
    running = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    assert running.status_code == 202 and running.json()["id"] == first.json()["id"]
    assert running.json()["status"] == "running"
    assert len(_jobs(api, tenant_id)) == 1
    _drain()  # a running job whose lease holds is not taken
    assert [job["status"] for job in _jobs(api, tenant_id)] == ["running"]
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE control.tenant_export_jobs SET lease_until = now() WHERE tenant_id = %s", (tenant_id,))
    _drain()
    assert [job["status"] for job in _jobs(api, tenant_id)] == ["succeeded"]
    # Ended, it no longer answers a request: the next one is a new export.
    later = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    assert later.status_code == 202 and later.json()["id"] != first.json()["id"]
    _drain()


def test_an_idempotency_key_replays_the_first_answer(api: ApiHarness, azurite: Any) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "keyed-export")
    keyed = {**admin, "Idempotency-Key": str(uuid.uuid4())}
    first = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=keyed)
    assert first.status_code == 202, first.text
    _drain()  # the job ends: without the key a request would queue a new one
    replay = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=keyed)
    assert replay.status_code == 202 and replay.content == first.content
    assert replay.headers["location"] == first.headers["location"]
    assert len(_jobs(api, tenant_id)) == 1
    other = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers={**admin, "Idempotency-Key": "another"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    _drain()


def test_a_killed_attempt_is_retried_once_its_lease_is_stale_and_its_folder_removed(
    api: ApiHarness, azurite: Any
) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "killed-export")
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{tenant_id}/artifacts/build.log", b"log", overwrite=True)
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    assert accepted.status_code == 202, accepted.text
    # The attempt a host killed: running, its lease run out, its folder half written (an archive, no manifest).
    partial = offboarding.export_folder(tenant_id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    blobs.upload_blob(partial + "archive.json", b"{", overwrite=True)
    blobs.upload_blob(partial + "artifacts/build.log", b"l", overwrite=True)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE control.tenant_export_jobs SET status = 'running', attempts = 1, started_at = now() - interval"
            " '1 hour', lease_until = now() - interval '1 minute', folder = %s WHERE tenant_id = %s",
            (partial, tenant_id),
        )

    _drain()

    done = api.client.get(accepted.headers["location"], headers=admin).json()
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert done["folder"] != partial
    # The killed attempt's folder is gone; the new one is whole.
    assert _exports(azurite, tenant_id) == {done["blob_name"], done["manifest"], done["folder"] + "artifacts/build.log"}


def test_a_job_killed_every_time_it_ran_fails_and_leaves_nothing(api: ApiHarness, azurite: Any) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "killed-for-good")
    blobs = _artifacts(azurite)
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    partial = offboarding.export_folder(tenant_id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    blobs.upload_blob(partial + "archive.json", b"{", overwrite=True)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE control.tenant_export_jobs SET status = 'running', attempts = %s,"
            " lease_until = now() - interval '1 minute', folder = %s WHERE tenant_id = %s",
            (export_jobs.MAX_ATTEMPTS, partial, tenant_id),
        )
    _drain()
    failed = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (failed["status"], failed["failure"], failed["folder"]) == ("failed", "attempts-exhausted", None)
    assert _exports(azurite, tenant_id) == set()


def test_an_unknown_export_or_another_tenants_is_404(api: ApiHarness, azurite: Any) -> None:
    admin = _operator(api)
    mine, theirs = _tenant(api, "export-mine"), _tenant(api, "export-theirs")
    theirs_job = api.client.post(f"/api/v1/tenants/{theirs}/export", headers=admin).json()["id"]
    for url in (f"/api/v1/tenants/{mine}/exports/{theirs_job}", f"/api/v1/tenants/{mine}/exports/{uuid.uuid4()}"):
        answer = api.client.get(url, headers=admin)
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert str(theirs) not in answer.text
    assert api.client.get(f"/api/v1/tenants/{mine}/exports", headers=admin).json()["items"] == []
    # Platform.Admin only.
    tenant_admin = api.headers("export-mine", ["Tenant.Admin"])
    assert api.client.get(f"/api/v1/tenants/{theirs}/exports/{theirs_job}", headers=tenant_admin).status_code == 403
    _drain()


def test_a_request_for_a_tenant_that_is_gone_is_404_and_writes_nothing(api: ApiHarness) -> None:
    admin = _operator(api)
    gone = uuid.uuid4()
    operator_records = len(api.audit_rows(OPERATOR))
    keyed = {**admin, "Idempotency-Key": str(uuid.uuid4())}
    answer = api.client.post(f"/api/v1/tenants/{gone}/export", headers=keyed)
    assert answer.status_code == 404, answer.text
    assert _jobs(api, gone) == []
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        kept = conn.execute("SELECT count(*) FROM control.idempotency_keys WHERE key = %s", (keyed["Idempotency-Key"],))
        assert kept.fetchone() == (0,)
    # The decision only: no mutation is recorded.
    records = api.audit_rows(OPERATOR)[operator_records:]
    assert records and all(r["reason"] != "applied" for r in records)


def test_a_tenant_erased_while_its_job_is_queued_leaves_no_job_and_no_blob(api: ApiHarness, azurite: Any) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "erased-while-queued")
    key = {**admin, "Idempotency-Key": str(uuid.uuid4())}
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=key)
    assert accepted.status_code == 202, accepted.text

    removed = offboarding.erase_tenant(
        marked_for_erasure(tenant_id), _artifacts(azurite), tenants_router.get_audit_store()
    )

    assert removed["export_jobs"] == 1 and _jobs(api, tenant_id) == []
    _drain()
    assert api.client.get(accepted.headers["location"], headers=admin).status_code == 404
    assert list(_artifacts(azurite).list_blobs(name_starts_with=f"{tenant_id}/")) == []
    # Its kept answer names the tenant: forgotten with it, and a retry of the key is a 404, not a replay.
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        kept = conn.execute(
            "SELECT count(*) FROM control.idempotency_keys WHERE response_body::text LIKE %s", (f"%{tenant_id}%",)
        )
        assert kept.fetchone() == (0,)
    assert api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=key).status_code == 404
    assert _jobs(api, tenant_id) == []


def test_a_job_whose_tenant_is_marked_for_erasure_fails_tenant_gone_and_leaves_nothing(
    api: ApiHarness, azurite: Any
) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "marked-while-queued")
    _artifacts(azurite).upload_blob(f"{tenant_id}/artifacts/build.log", b"log", overwrite=True)
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    marked_for_erasure(tenant_id)
    _drain()
    failed = api.client.get(accepted.headers["location"], headers=admin)
    assert failed.status_code == 200, failed.text
    assert (failed.json()["status"], failed.json()["failure"]) == ("failed", "tenant-gone")
    assert failed.json()["folder"] is None and failed.json()["blob_name"] is None
    assert _exports(azurite, tenant_id) == set()


class _FailingCopy:
    """The artifacts container, whose reads of a blob's bytes fail as a storage outage would."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def download_blob(self, *args: Any, **kwargs: Any) -> Any:
        raise ServiceRequestError("storage went away")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_a_failed_export_records_failed_and_leaves_no_blob(
    api: ApiHarness, azurite: Any, caplog: pytest.LogCaptureFixture
) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "failing-export")
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{tenant_id}/artifacts/build.log", b"log", overwrite=True)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)

    result = export_jobs.run_export_jobs(_FailingCopy(blobs), max_jobs=50)

    assert result.failed >= 1
    failed = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (failed["status"], failed["failure"]) == ("failed", "storage-unavailable")
    assert "storage went away" not in json.dumps(failed)  # a kind, never the error's text
    assert _exports(azurite, tenant_id) == set()
    # Failed, it no longer answers a request: a new one is a new export, which succeeds.
    assert exported_by_job(api, tenant_id, admin)["id"] != failed["id"]


def test_the_timer_is_registered_and_runs_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loaded on its own: the `functions` package would build the gateway, which needs settings.
    spec = importlib.util.spec_from_file_location("tenant_exports_timer_under_test", TIMER)
    assert spec is not None and spec.loader is not None
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)
    runs: list[export_jobs.RunResult] = []

    def run() -> export_jobs.RunResult:
        runs.append(export_jobs.RunResult(1, 1, 0, 0))
        return runs[-1]

    monkeypatch.setattr(timer, "run_export_jobs", run)
    app = func.FunctionApp()
    app.register_functions(timer.bp)
    (function,) = [f for f in app.get_functions() if f.get_function_name() == "tenant_exports"]
    function.get_user_function()(None)
    assert len(runs) == 1
    # Among the blueprints function_app.py registers (the package itself needs the gateway's settings to import).
    registered = (TIMER.parent / "__init__.py").read_text()
    assert "from functions.timer_tenant_exports import bp as tenant_exports_bp" in registered
    assert "\n    tenant_exports_bp,\n" in registered.split("blueprints = (", 1)[1]


@pytest.fixture
def _no_durable(api: ApiHarness, request: pytest.FixtureRequest) -> None:
    """The erasure route's durable client: none needed for a tenant without executions."""
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore


def test_the_erasure_route_removes_the_tenants_jobs(api: ApiHarness, azurite: Any, _no_durable: None) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "erased-through-route")
    export = exported_by_job(api, tenant_id, admin)
    name = api.tenants["erased-through-route"].name
    etag = api.client.get(f"/api/v1/tenants/{tenant_id}", headers=admin).headers["etag"]
    api.client.patch(f"/api/v1/tenants/{tenant_id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag})
    erased = api.client.post(f"/api/v1/tenants/{tenant_id}/erase", json={"confirm_name": name}, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["export_jobs"] == 1 and _jobs(api, tenant_id) == []
    assert api.client.get(f"/api/v1/tenants/{tenant_id}/exports/{export['id']}", headers=admin).status_code == 404


def _lease(api: ApiHarness, tenant_id: uuid.UUID) -> Any:
    """The lease of the tenant's (one) job."""
    [job] = _jobs(api, tenant_id)
    return job["lease_until"]


def test_a_running_attempt_renews_its_lease(api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Unrenewed, a long export's lease ran out while it ran, and another run took the job and removed its folder.
    admin = _operator(api)
    tenant_id = _tenant(api, "renewed-export")
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    monkeypatch.setattr(export_jobs, "RENEW_S", 0.05)
    leases: list[Any] = []
    real = export_jobs.export_tenant

    def slow_export(*args: Any, **kwargs: Any) -> Any:
        leases.append(_lease(api, tenant_id))
        for _ in range(100):  # until a renewal has moved the lease (or 5 s)
            time.sleep(0.05)
            if _lease(api, tenant_id) > leases[0]:
                break
        leases.append(_lease(api, tenant_id))
        return real(*args, **kwargs)

    monkeypatch.setattr(export_jobs, "export_tenant", slow_export)
    _drain()
    assert leases[1] > leases[0]
    assert api.client.get(accepted.headers["location"], headers=admin).json()["status"] == "succeeded"


def test_an_attempt_whose_job_was_taken_meanwhile_removes_what_it_wrote(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "taken-export")
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    real = export_jobs.export_tenant

    def export_then_taken(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        with psycopg.connect(api.admin_url, dbname="quantum") as conn:  # another run's claim, its lease run out
            conn.execute(
                "UPDATE control.tenant_export_jobs SET attempts = attempts + 1 WHERE tenant_id = %s", (tenant_id,)
            )
        return result

    monkeypatch.setattr(export_jobs, "export_tenant", export_then_taken)
    _drain()
    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert job["status"] == "running" and job["attempts"] == 2  # the other attempt's to end
    assert _exports(azurite, tenant_id) == set()


class _FailingStorage(_FailingCopy):
    """The artifacts container in an outage: reads of a blob's bytes and deletes both fail."""

    def delete_blob(self, *args: Any, **kwargs: Any) -> Any:
        raise ServiceRequestError("storage went away")


class _FailingDeletes:
    """The artifacts container, whose deletes fail as a storage outage would."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def delete_blob(self, *args: Any, **kwargs: Any) -> Any:
        raise ServiceRequestError("storage went away")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def _cleanup_folders(api: ApiHarness, tenant_id: uuid.UUID) -> list[str]:
    """The folders the tenant's (one) job still has to remove."""
    [job] = _jobs(api, tenant_id)
    return list(job["cleanup_folders"])


def test_a_failed_exports_folder_that_storage_kept_is_removed_by_a_later_run(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The export's own removal failed as its copy did: the folder stayed for ever, its name only in a log.
    admin = _operator(api)
    tenant_id = _tenant(api, "failed-export-kept")
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{tenant_id}/artifacts/build.log", b"log", overwrite=True)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)

    export_jobs.run_export_jobs(_FailingStorage(blobs), max_jobs=50)

    failed = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (failed["status"], failed["failure"], failed["folder"]) == ("failed", "storage-unavailable", None)
    [left] = _exports(azurite, tenant_id)  # the archive, written before the copy failed
    assert left.endswith("/archive.json")

    _drain()  # storage is back

    assert _exports(azurite, tenant_id) == set()
    # Kept listed while its writer could still be at work, then dropped once the folder is seen empty past that.
    assert _cleanup_folders(api, tenant_id) == [left[: -len("archive.json")]]
    monkeypatch.setattr(export_jobs, "WRITER_BOUND_S", 0.0)
    _drain()
    assert _cleanup_folders(api, tenant_id) == []


def test_a_killed_attempts_folder_a_retry_could_not_remove_is_removed_later(api: ApiHarness, azurite: Any) -> None:
    # The retry's removal failed and its own folder replaced the killed one's in the row: nothing removed it again.
    admin = _operator(api)
    tenant_id = _tenant(api, "killed-folder-kept")
    blobs = _artifacts(azurite)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    partial = offboarding.export_folder(tenant_id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    blobs.upload_blob(partial + "archive.json", b"{", overwrite=True)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE control.tenant_export_jobs SET status = 'running', attempts = 1,"
            " lease_until = now() - interval '1 minute', folder = %s WHERE tenant_id = %s",
            (partial, tenant_id),
        )

    export_jobs.run_export_jobs(_FailingDeletes(blobs), max_jobs=50)

    done = api.client.get(accepted.headers["location"], headers=admin).json()
    assert done["status"] == "succeeded" and done["folder"] != partial, done
    assert partial + "archive.json" in _exports(azurite, tenant_id)

    _drain()

    assert _exports(azurite, tenant_id) == {done["blob_name"], done["manifest"]}
    assert _cleanup_folders(api, tenant_id) == []  # seen empty, its writer long gone


def test_what_an_attempt_taken_for_dead_writes_after_the_retry_is_removed_by_a_later_run(
    api: ApiHarness, azurite: Any
) -> None:
    # An attempt that lost its lease but went on writing, then was killed: its late blobs outlived every removal.
    admin = _operator(api)
    tenant_id = _tenant(api, "zombie-export")
    blobs = _artifacts(azurite)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    zombie = offboarding.export_folder(tenant_id, datetime.now(UTC))
    blobs.upload_blob(zombie + "archive.json", b"{", overwrite=True)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE control.tenant_export_jobs SET status = 'running', attempts = 1,"
            " lease_until = now() - interval '1 minute', folder = %s WHERE tenant_id = %s",
            (zombie, tenant_id),
        )
    _drain()
    done = api.client.get(accepted.headers["location"], headers=admin).json()
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert _exports(azurite, tenant_id) == {done["blob_name"], done["manifest"]}

    blobs.upload_blob(zombie + "artifacts/late.log", b"late", overwrite=True)  # the first attempt, still at work
    _drain()

    assert _exports(azurite, tenant_id) == {done["blob_name"], done["manifest"]}


def test_a_database_error_in_the_jobs_bookkeeping_ends_it_database_unavailable(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It escaped the run: the job stayed running until its lease ran out, a new request was answered with it, and
    # three such were reported as ended by the host (`attempts-exhausted`).
    admin = _operator(api)
    tenant_id = _tenant(api, "database-blip")
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("the database went away")

    monkeypatch.setattr(export_jobs, "get_tenant", unavailable)
    result = export_jobs.run_export_jobs(max_jobs=50)
    monkeypatch.undo()

    assert result.failed == 1
    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["failure"], job["attempts"]) == ("failed", "database-unavailable", 1)
    # Not held for a lease: a new request is a new export, which succeeds.
    assert exported_by_job(api, tenant_id, admin)["id"] != job["id"]


def test_a_success_the_database_did_not_record_ends_the_job_and_its_folder_goes(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "unrecorded-success")
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    monkeypatch.setattr(export_jobs, "_SUCCEEDED", "SELECT pg_catalog.no_such_function(%s, %s, %s)")

    export_jobs.run_export_jobs(max_jobs=50)
    monkeypatch.undo()

    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["failure"]) == ("failed", "database-unavailable"), job
    assert _exports(azurite, tenant_id)  # the whole export, which no job names
    _drain()
    assert _exports(azurite, tenant_id) == set()


def test_an_export_past_its_attempts_deadline_fails_too_large_and_leaves_nothing(api: ApiHarness, azurite: Any) -> None:
    # Bounded only by the host's time limit, an over-long export was ended by the host three times, holding the queue.
    admin = _operator(api)
    tenant_id = _tenant(api, "too-large-export")
    _artifacts(azurite).upload_blob(f"{tenant_id}/artifacts/build.log", b"log", overwrite=True)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)

    export_jobs.run_export_jobs(max_jobs=50, attempt_budget_s=0.0)

    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["failure"], job["attempts"]) == ("failed", "too-large", 1), job
    assert _exports(azurite, tenant_id) == set()
    _drain()  # no retry
    assert api.client.get(accepted.headers["location"], headers=admin).json()["attempts"] == 1


class _SlowReads:
    """The artifacts container, whose ranged reads of a blob's bytes each take `delay_s` and are counted."""

    def __init__(self, container: Any, delay_s: float) -> None:
        self._container, self._delay_s, self.reads = container, delay_s, 0

    def download_blob(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        time.sleep(self._delay_s)
        return self._container.download_blob(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_an_export_past_its_deadline_within_one_blobs_copy_stops_before_the_next_chunk(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looked at between blobs only, one big blob's copy ran on past the deadline (to the host's time limit) and the
    # job succeeded: 40 chunks of 0.1 s each against a deadline of 0.5 s.
    admin = _operator(api)
    tenant_id = _tenant(api, "big-blob-export")
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{tenant_id}/artifacts/big.bin", b"x" * (40 * 64 * 1024), overwrite=True)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    monkeypatch.setattr(offboarding, "EXPORT_CHUNK_BYTES", 64 * 1024)
    slow = _SlowReads(blobs, 0.1)

    export_jobs.run_export_jobs(slow, max_jobs=50, attempt_budget_s=0.5)

    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["failure"], job["attempts"]) == ("failed", "too-large", 1), job
    assert slow.reads < 40
    assert _exports(azurite, tenant_id) == set()  # staged blocks included


class _SlowArchive:
    """The artifacts container, whose upload of an export's archive takes `delay_s`."""

    def __init__(self, container: Any, delay_s: float) -> None:
        self._container, self._delay_s = container, delay_s

    def upload_blob(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name.endswith("/archive.json"):
            time.sleep(self._delay_s)
        return self._container.upload_blob(name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_an_export_whose_archive_ends_past_its_deadline_fails_too_large(api: ApiHarness, azurite: Any) -> None:
    # The deadline was looked at before a blob only: a tenant of rows and no blobs went on past it.
    admin = _operator(api)
    tenant_id = _tenant(api, "slow-archive-export")
    blobs = _artifacts(azurite)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)

    export_jobs.run_export_jobs(_SlowArchive(blobs, 0.6), max_jobs=50, attempt_budget_s=0.3)

    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["failure"]) == ("failed", "too-large"), job
    assert _exports(azurite, tenant_id) == set()


def _status(api: ApiHarness, tenant_id: uuid.UUID) -> str:
    """The status of the tenant's (one) job."""
    [job] = _jobs(api, tenant_id)
    return str(job["status"])


class _DeletesSeeStatus:
    """The artifacts container, noting the tenant's job's status at each delete of one of the tenant's blobs."""

    def __init__(self, container: Any, api: ApiHarness, tenant_id: uuid.UUID) -> None:
        self._container, self._api, self._tenant_id = container, api, tenant_id
        self.seen: list[str] = []

    def delete_blob(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(f"{self._tenant_id}/"):
            self.seen.append(_status(self._api, self._tenant_id))
        return self._container.delete_blob(name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_a_failed_attempt_records_its_failure_before_it_removes_what_it_wrote(api: ApiHarness, azurite: Any) -> None:
    # Removed first (unbounded), a long export's blobs took the run to the host's time limit with the job `running`,
    # and it was retried: `too-large` was not the end.
    admin = _operator(api)
    tenant_id = _tenant(api, "fail-then-remove")
    blobs = _artifacts(azurite)
    for index in range(3):
        blobs.upload_blob(f"{tenant_id}/artifacts/{index}.log", b"log", overwrite=True)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    watching = _DeletesSeeStatus(_FailingCopy(blobs), api, tenant_id)

    export_jobs.run_export_jobs(watching, max_jobs=50)

    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["failure"]) == ("failed", "storage-unavailable"), job
    assert watching.seen and set(watching.seen) == {"failed"}
    assert _exports(azurite, tenant_id) == set()
    assert len(_cleanup_folders(api, tenant_id)) == 1  # listed until a run sees it empty past its writer's bound


def _failed_job_with_folder(api: ApiHarness, azurite: Any, label: str, count: int) -> tuple[uuid.UUID, str]:
    """A tenant whose (one) job failed and lists a folder of `count` blobs (its writer long gone): the tenant and
    the folder."""
    tenant_id = _tenant(api, label)
    blobs = _artifacts(azurite)
    _drain()
    api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=_operator(api))
    folder = offboarding.export_folder(tenant_id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    for index in range(count):
        blobs.upload_blob(f"{folder}artifacts/{index:02d}.log", b"l", overwrite=True)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE control.tenant_export_jobs SET status = 'failed', failure = 'storage-unavailable',"
            " finished_at = now(), attempts = 1, folder = %s, cleanup_folders = ARRAY[%s] WHERE tenant_id = %s",
            (folder, folder, tenant_id),
        )
    return tenant_id, folder


class _CountedDeletes:
    """The artifacts container, whose deletes are counted (`deletes`; `ours`: those under `prefix`), each taking
    `delay_s` and failing when `fail`. Other tests' listed folders may be removed in the same pass."""

    def __init__(self, container: Any, prefix: str, *, delay_s: float = 0.0, fail: bool = False) -> None:
        self._container, self._prefix, self._delay_s, self._fail = container, prefix, delay_s, fail
        self.deletes = self.ours = 0

    def delete_blob(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.deletes += 1
        self.ours += name.startswith(self._prefix)
        time.sleep(self._delay_s)
        if self._fail:
            raise ServiceRequestError("storage went away")
        return self._container.delete_blob(name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def _drained_of_exports(azurite: Any, tenant_id: uuid.UUID) -> set[str]:
    """The tenant's exports left once runs (up to 10) have found nothing more of them to remove."""
    for _ in range(10):
        if not _exports(azurite, tenant_id):
            break
        export_jobs.run_export_jobs(max_jobs=0)
    return _exports(azurite, tenant_id)


def test_a_removal_pass_stops_at_the_first_delete_storage_refuses(api: ApiHarness, azurite: Any) -> None:
    # The budget was looked at between folders only: each of a folder's deletes waited out the client's retries (a
    # minute each in an outage), an hour for 60 blobs.
    tenant_id, folder = _failed_job_with_folder(api, azurite, "refused-removal", 20)
    deletes = _CountedDeletes(_artifacts(azurite), folder, fail=True)

    export_jobs.run_export_jobs(deletes, max_jobs=0)

    assert deletes.deletes == 1  # ours, or another test's folder picked first
    assert len(_exports(azurite, tenant_id)) == 20 and _cleanup_folders(api, tenant_id) == [folder]
    assert _drained_of_exports(azurite, tenant_id) == set()  # storage is back
    assert _cleanup_folders(api, tenant_id) == []


def test_a_removal_pass_deletes_nothing_past_its_budget(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, folder = _failed_job_with_folder(api, azurite, "slow-removal", 20)
    monkeypatch.setattr(export_jobs, "CLEANUP_BUDGET_S", 0.5)
    deletes = _CountedDeletes(_artifacts(azurite), folder, delay_s=0.2)

    export_jobs.run_export_jobs(deletes, max_jobs=0)

    assert deletes.deletes < 20
    assert len(_exports(azurite, tenant_id)) == 20 - deletes.ours and _cleanup_folders(api, tenant_id) == [folder]
    monkeypatch.undo()
    assert _drained_of_exports(azurite, tenant_id) == set()


def test_a_removal_pass_deletes_at_most_its_cap_of_blobs(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, folder = _failed_job_with_folder(api, azurite, "capped-removal", 12)
    monkeypatch.setattr(export_jobs, "CLEANUP_MAX_BLOBS", 5)
    deletes = _CountedDeletes(_artifacts(azurite), folder)

    export_jobs.run_export_jobs(deletes, max_jobs=0)

    assert deletes.deletes == 5  # another test's folder picked first may have taken some
    assert len(_exports(azurite, tenant_id)) == 12 - deletes.ours and _cleanup_folders(api, tenant_id) == [folder]
    assert _drained_of_exports(azurite, tenant_id) == set()


def test_a_retry_removes_a_killed_attempts_folder_stopping_at_the_first_refused_delete(
    api: ApiHarness, azurite: Any
) -> None:
    # The removal at the start of an attempt had no bound at all.
    admin = _operator(api)
    tenant_id = _tenant(api, "killed-refused-removal")
    blobs = _artifacts(azurite)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    partial = offboarding.export_folder(tenant_id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    for index in range(20):
        blobs.upload_blob(f"{partial}artifacts/{index:02d}.log", b"l", overwrite=True)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE control.tenant_export_jobs SET status = 'running', attempts = 1,"
            " lease_until = now() - interval '1 minute', folder = %s WHERE tenant_id = %s",
            (partial, tenant_id),
        )
    deletes = _CountedDeletes(blobs, partial, fail=True)

    export_jobs.run_export_jobs(deletes, max_jobs=50)

    assert deletes.ours == 1
    done = api.client.get(accepted.headers["location"], headers=admin).json()
    assert done["status"] == "succeeded" and partial in _cleanup_folders(api, tenant_id), done
    _drain()
    assert _exports(azurite, tenant_id) == {done["blob_name"], done["manifest"]}


def test_a_listed_name_outside_the_jobs_tenants_exports_is_never_removed(api: ApiHarness, azurite: Any) -> None:
    # Whatever prefix was listed was deleted: a job of one tenant listing another's prefix emptied it, and an empty
    # name the whole container.
    mine, _ = _failed_job_with_folder(api, azurite, "bad-list-mine", 1)
    theirs = _tenant(api, "bad-list-theirs")
    blobs = _artifacts(azurite)
    kept = [f"{theirs}/artifacts/build.log", f"{mine}/artifacts/build.log", f"{mine}/exports/x"]
    for name in kept:
        blobs.upload_blob(name, b"keep", overwrite=True)
    bad = [f"{theirs}/", "", f"{mine}/exports/", f"{mine}/", f"{mine}/artifacts/", f"{mine}/exports/x"]
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute("UPDATE control.tenant_export_jobs SET cleanup_folders = %s WHERE tenant_id = %s", (bad, mine))

    export_jobs.run_export_jobs(max_jobs=0)

    for name in kept:
        assert blobs.download_blob(name).readall() == b"keep", name
    assert _cleanup_folders(api, mine) == []  # dropped, never to be removed


@pytest.mark.parametrize("error", [ServiceRequestError("storage went away"), ValueError("a bad connection string")])
def test_no_job_is_claimed_while_storage_is_not_reached(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # The first client of the process failing escaped the run after the claim: the job sat `running` until its lease
    # ran out, and counted as an attempt the host ended. Then each run through an outage claimed a job and ended it
    # `storage-unavailable` for good (3 queued jobs, 3 runs: all 3 failed); and an error that is not storage's (a
    # bad connection string) escaped the run from its first removal pass. No job is claimed without storage now.
    # A listed folder, so the run's first removal pass asks for the client too (other tests' jobs run first).
    _failed_job_with_folder(api, azurite, "storage-not-reached-listed", 1)
    admin = _operator(api)
    tenants = [_tenant(api, f"storage-not-reached-{index}") for index in range(3)]
    locations = [api.client.post(f"/api/v1/tenants/{t}/export", headers=admin).headers["location"] for t in tenants]

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(export_jobs, "artifacts_container", unreachable)
    results = [export_jobs.run_export_jobs(max_jobs=50) for _ in range(3)]
    monkeypatch.undo()

    assert [(result.taken, result.failed) for result in results] == [(0, 0)] * 3
    for location in locations:
        job = api.client.get(location, headers=admin).json()
        assert (job["status"], job["attempts"]) == ("queued", 0), job
    _drain()  # storage is back
    assert [api.client.get(location, headers=admin).json()["status"] for location in locations] == ["succeeded"] * 3


def test_no_job_is_claimed_when_storage_is_not_reached_and_no_folder_is_listed(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a listed folder the first pass never asks for the client: the claim did, then failed the job.
    admin = _operator(api)
    tenant_id = _tenant(api, "storage-not-reached-alone")
    export_jobs.run_export_jobs(max_jobs=0)
    _drained_of_exports(azurite, tenant_id)
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    monkeypatch.setattr(export_jobs, "CLEANUP_PER_RUN", 0)

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ServiceRequestError("storage went away")

    monkeypatch.setattr(export_jobs, "artifacts_container", unreachable)
    result = export_jobs.run_export_jobs(max_jobs=50)
    monkeypatch.undo()

    assert (result.taken, result.failed) == (0, 0)
    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["attempts"]) == ("queued", 0), job


def test_a_success_whose_acknowledgement_was_lost_is_not_reported_failed(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    admin = _operator(api)
    tenant_id = _tenant(api, "lost-acknowledgement")
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    real = export_jobs.platform_transaction

    @contextmanager
    def acknowledgement_lost(**kwargs: Any) -> Iterator[Any]:
        statements: list[str] = []
        with real(**kwargs) as conn:
            execute = conn.execute

            def noted(query: Any, *args: Any, **kw: Any) -> Any:
                statements.append(str(query))
                return execute(query, *args, **kw)

            monkeypatch.setattr(conn, "execute", noted)
            yield conn
        if export_jobs._SUCCEEDED in statements:  # committed, then the connection went
            raise psycopg.OperationalError("the connection was lost")

    monkeypatch.setattr(export_jobs, "platform_transaction", acknowledgement_lost)
    with caplog.at_level("WARNING", logger=export_jobs.__name__):
        result = export_jobs.run_export_jobs(max_jobs=50)
    monkeypatch.undo()

    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert job["status"] == "succeeded", job
    assert result.failed == 0
    assert "ends database-unavailable" not in caplog.text


class _Read:
    """A blob's bytes already read, as a download answers them."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readall(self) -> bytes:
        """The bytes."""
        return self._data


class _ReadsThen:
    """The artifacts container, which calls `then` once its `at`-th read of a blob's bytes is done."""

    def __init__(self, container: Any, at: int, then: Any) -> None:
        self._container, self._at, self._then, self.reads = container, at, then, 0

    def download_blob(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        read = self._container.download_blob(*args, **kwargs).readall()
        if self.reads == self._at:
            self._then()
        return _Read(read)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def _tenant_with_blobs(api: ApiHarness, azurite: Any, label: str, count: int) -> tuple[uuid.UUID, str]:
    """A tenant of `count` blobs whose export is queued (other tests' jobs run first): the tenant, its job's URL."""
    tenant_id = _tenant(api, label)
    blobs = _artifacts(azurite)
    for index in range(count):
        blobs.upload_blob(f"{tenant_id}/artifacts/{index:02d}.log", b"log", overwrite=True)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=_operator(api))
    assert accepted.status_code == 202, accepted.text
    return tenant_id, accepted.headers["location"]


def test_a_tenant_marked_mid_copy_fails_its_job_before_one_bounded_removal(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its export was removed inside the export, unbounded and trying every delete storage refused, with the job
    # `running` until it was over: 20 blobs, marked at the 15th read, 16 deletes tried with each one failing.
    tenant_id, location = _tenant_with_blobs(api, azurite, "marked-mid-copy", 20)
    monkeypatch.setattr(offboarding, "EXPORT_LOOK_S", 0.0)
    prefix = f"{tenant_id}/exports/"
    blobs = _artifacts(azurite)
    deletes = _CountedDeletes(_ReadsThen(blobs, 15, lambda: marked_for_erasure(tenant_id)), prefix, fail=True)
    watching = _DeletesSeeStatus(deletes, api, tenant_id)

    export_jobs.run_export_jobs(watching, max_jobs=50)

    job = api.client.get(location, headers=_operator(api)).json()
    assert (job["status"], job["failure"]) == ("failed", "tenant-gone"), job
    assert watching.seen == ["failed"] and deletes.ours == 1  # recorded first; stopped at the refused delete
    [folder] = _cleanup_folders(api, tenant_id)
    assert len(_exports(azurite, tenant_id)) == 16  # the archive and 15 copies, listed on the job
    monkeypatch.undo()
    assert _drained_of_exports(azurite, tenant_id) == set()  # storage is back
    assert folder.startswith(prefix)


class _MarkedAfterManifest:
    """The artifacts container, which marks the tenant for erasure once an export's manifest is written."""

    def __init__(self, container: Any, tenant_id: uuid.UUID) -> None:
        self._container, self._tenant_id = container, tenant_id

    def upload_blob(self, name: str, *args: Any, **kwargs: Any) -> Any:
        written = self._container.upload_blob(name, *args, **kwargs)
        if name.endswith("/manifest.json"):
            marked_for_erasure(self._tenant_id)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_a_tenant_marked_after_the_last_write_fails_its_job_before_one_bounded_removal(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The look after the last write removed the export unbounded, whatever the job asked, with the job `running`.
    tenant_id, location = _tenant_with_blobs(api, azurite, "marked-after-manifest", 20)
    monkeypatch.setattr(offboarding, "EXPORT_LOOK_S", 3600.0)
    blobs = _artifacts(azurite)
    deletes = _CountedDeletes(_MarkedAfterManifest(blobs, tenant_id), f"{tenant_id}/exports/", fail=True)
    watching = _DeletesSeeStatus(deletes, api, tenant_id)

    export_jobs.run_export_jobs(watching, max_jobs=50)

    job = api.client.get(location, headers=_operator(api)).json()
    assert (job["status"], job["failure"]) == ("failed", "tenant-gone"), job
    assert watching.seen == ["failed"] and deletes.ours == 1
    assert len(_exports(azurite, tenant_id)) == 22  # the archive, 20 copies and the manifest
    monkeypatch.undo()
    assert _drained_of_exports(azurite, tenant_id) == set()


def _erased_record(api: ApiHarness, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant is recorded for the `erased_tenant_blobs` timer."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        found = conn.execute("SELECT 1 FROM control.erased_tenant_blobs WHERE tenant_id = %s", (tenant_id,))
        return found.fetchone() is not None


def test_a_tenant_erased_mid_copy_whose_removal_stops_early_is_noted_for_the_sweep(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its job goes with the tenant, so what its bounded pass leaves is listed nowhere: the tenant is noted for the
    # `erased_tenant_blobs` timer, which empties its prefix.
    tenant_id, _ = _tenant_with_blobs(api, azurite, "erased-mid-copy", 20)
    monkeypatch.setattr(offboarding, "EXPORT_LOOK_S", 0.0)
    blobs = _artifacts(azurite)

    def erased() -> None:
        offboarding.erase_tenant(marked_for_erasure(tenant_id), blobs, tenants_router.get_audit_store())
        # The erasure's own record gone (as once a sweep found the prefix empty past its time): a note found is
        # the export job's.
        with psycopg.connect(api.admin_url, dbname="quantum") as conn:
            conn.execute("DELETE FROM control.erased_tenant_blobs WHERE tenant_id = %s", (tenant_id,))

    # The erasure comes once the 15th blob is read: its copy is written after the erasure's last pass.
    reads = _ReadsThen(blobs, 15, erased)
    monkeypatch.setattr(export_jobs, "CLEANUP_BUDGET_S", 0.0)  # the pass stops before any delete

    export_jobs.run_export_jobs(reads, max_jobs=50)

    assert reads.reads == 15 and _jobs(api, tenant_id) == []
    assert _erased_record(api, tenant_id)
    [left] = _exports(azurite, tenant_id)
    assert left.endswith("/artifacts/14.log")
    monkeypatch.undo()
    sweep_erased_tenant_blobs(blobs)
    assert list(blobs.list_blobs(name_starts_with=f"{tenant_id}/", include=["uncommittedblobs"])) == []


class _DiscardRefused:
    """The artifacts container, whose discards of staged blocks (an empty block list committed) fail."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def get_blob_client(self, *args: Any, **kwargs: Any) -> Any:
        return _DiscardRefused(self._container.get_blob_client(*args, **kwargs))

    def commit_block_list(self, blocks: Any, *args: Any, **kwargs: Any) -> Any:
        if not blocks:
            raise ServiceRequestError("storage went away")
        return self._container.commit_block_list(blocks, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_an_export_past_its_deadline_whose_discard_fails_is_still_too_large(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The discard's storage error replaced the deadline's: the job was recorded `storage-unavailable`.
    admin = _operator(api)
    tenant_id = _tenant(api, "discard-refused-export")
    blobs = _artifacts(azurite)
    blobs.upload_blob(f"{tenant_id}/artifacts/big.bin", b"x" * (40 * 64 * 1024), overwrite=True)
    _drain()
    accepted = api.client.post(f"/api/v1/tenants/{tenant_id}/export", headers=admin)
    monkeypatch.setattr(offboarding, "EXPORT_CHUNK_BYTES", 64 * 1024)
    # Room for the run's bookkeeping before the copy on a busy machine (0.5 s was not always), and still at most 15
    # of the 40 chunks read before the deadline.
    slow = _SlowReads(_DiscardRefused(blobs), 0.2)

    export_jobs.run_export_jobs(slow, max_jobs=50, attempt_budget_s=3.0)

    job = api.client.get(accepted.headers["location"], headers=admin).json()
    assert (job["status"], job["failure"]) == ("failed", "too-large"), job
    assert 1 < slow.reads < 40  # blocks were staged
    monkeypatch.undo()
    assert _drained_of_exports(azurite, tenant_id) == set()  # the staged blocks too


class _FailAtRead:
    """The artifacts container, whose `at`-th read of a blob's bytes (and every later one) fails."""

    def __init__(self, container: Any, at: int) -> None:
        self._container, self._at, self.reads = container, at, 0

    def download_blob(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        if self.reads >= self._at:
            raise ServiceRequestError("storage went away")
        return self._container.download_blob(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)


def test_a_failed_attempts_own_removal_deletes_at_most_the_cap_as_it_is_then(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cap was a default bound at import: the failed attempt's own pass ignored a cap set later.
    tenant_id, location = _tenant_with_blobs(api, azurite, "capped-own-removal", 10)
    monkeypatch.setattr(export_jobs, "CLEANUP_MAX_BLOBS", 3)
    deletes = _CountedDeletes(_FailAtRead(_artifacts(azurite), 8), f"{tenant_id}/exports/")

    export_jobs.run_export_jobs(deletes, max_jobs=50)

    job = api.client.get(location, headers=_operator(api)).json()
    assert (job["status"], job["failure"]) == ("failed", "storage-unavailable"), job
    assert deletes.ours == 3
    assert len(_exports(azurite, tenant_id)) == 8 - 3  # the archive and 7 copies, 3 removed
    monkeypatch.undo()
    assert _drained_of_exports(azurite, tenant_id) == set()


def test_a_running_host_whose_storage_went_away_claims_no_job(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The container's client is made once per process and never looks at storage again: on a host already running
    # when storage went away, each run claimed every queued job and ended it `storage-unavailable` for good.
    admin = _operator(api)
    tenants = [_tenant(api, f"storage-went-away-{index}") for index in range(3)]
    _drain()  # other tests' jobs and listed folders, out of the way
    locations = [api.client.post(f"/api/v1/tenants/{t}/export", headers=admin).headers["location"] for t in tenants]
    gone = ContainerClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;",
        "artifacts",
        retry_total=0,
    )
    monkeypatch.setattr(export_jobs, "artifacts_container", lambda *args, **kwargs: gone)
    results = [export_jobs.run_export_jobs(max_jobs=50) for _ in range(2)]
    monkeypatch.undo()

    assert [(result.taken, result.failed) for result in results] == [(0, 0)] * 2
    for location in locations:
        job = api.client.get(location, headers=admin).json()
        assert (job["status"], job["attempts"]) == ("queued", 0), job
    _drain()  # storage is back
    assert [api.client.get(location, headers=admin).json()["status"] for location in locations] == ["succeeded"] * 3


def test_a_job_ending_storage_unavailable_stops_the_run(api: ApiHarness, azurite: Any) -> None:
    # The next job would meet the same outage: the run went on and failed every job it could claim.
    admin = _operator(api)
    tenants = [_tenant(api, f"storage-fails-mid-run-{index}") for index in range(3)]
    for tenant_id in tenants:
        _artifacts(azurite).upload_blob(f"{tenant_id}/artifacts/build.log", b"log", overwrite=True)
    _drain()
    locations = [api.client.post(f"/api/v1/tenants/{t}/export", headers=admin).headers["location"] for t in tenants]
    result = export_jobs.run_export_jobs(_FailingStorage(_artifacts(azurite)), max_jobs=50)
    assert (result.taken, result.failed) == (1, 1)
    statuses = [api.client.get(location, headers=admin).json()["status"] for location in locations]
    assert statuses == ["failed", "queued", "queued"], statuses


class _RefusedLook:
    """The artifacts container whose look answers with a refusal (a permission missing, the container deleted)."""

    def __init__(self, status: int) -> None:
        self._status = status

    def get_container_properties(self, **kwargs: Any) -> Any:
        refused = HttpResponseError(message="refused")
        refused.status_code = self._status
        raise refused


@pytest.mark.parametrize("status", [403, 404])
def test_storage_refusing_the_look_is_logged_as_an_error(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    # A refusal does not pass on its own, and every export waits queued meanwhile: it was logged as a passing outage.
    _drain()
    monkeypatch.setattr(export_jobs, "CLEANUP_PER_RUN", 0)
    monkeypatch.setattr(export_jobs, "artifacts_container", lambda *args, **kwargs: _RefusedLook(status))
    with caplog.at_level(logging.WARNING, logger=export_jobs.__name__):
        result = export_jobs.run_export_jobs(max_jobs=50)
    assert (result.taken, result.failed) == (0, 0)
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "storage refused" in r.getMessage()]
    assert refused and str(status) in refused[0].getMessage(), [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("status", [403, 404])
def test_storage_refusing_the_look_for_a_listed_folder_is_logged_as_an_error(
    api: ApiHarness, azurite: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    # Every attempt lists its folder before it writes, so a container deleted under a running host leaves one: the
    # removal's look came first and logged the refusal as a passing outage.
    _failed_job_with_folder(api, azurite, f"refused-look-{status}", 1)
    monkeypatch.setattr(export_jobs, "artifacts_container", lambda *args, **kwargs: _RefusedLook(status))
    with caplog.at_level(logging.WARNING, logger=export_jobs.__name__):
        result = export_jobs.run_export_jobs(max_jobs=50)
    assert (result.taken, result.failed) == (0, 0)
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "storage refused" in r.getMessage()]
    assert refused and str(status) in refused[0].getMessage(), [r.getMessage() for r in caplog.records]


class _UnknownIdentity:
    """The artifacts container whose look finds no identity to sign with (no status code to tell by)."""

    def get_container_properties(self, **kwargs: Any) -> Any:
        raise ClientAuthenticationError(message="no credential")


def test_an_identity_refused_at_the_look_is_logged_as_an_error(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _drain()
    monkeypatch.setattr(export_jobs, "CLEANUP_PER_RUN", 0)
    monkeypatch.setattr(export_jobs, "artifacts_container", lambda *args, **kwargs: _UnknownIdentity())
    with caplog.at_level(logging.WARNING, logger=export_jobs.__name__):
        export_jobs.run_export_jobs(max_jobs=50)
    assert any(r.levelno == logging.ERROR and "storage refused" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
