# intent_ref: platform.tenants
"""Offboarding a tenant that has executions, on the devhost: the export carries them and their blobs (a stored output,
an artifact), and the erasure removes every row, blob and orchestration history of the tenant (counted afterwards),
running orchestrations included."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from azure.storage.blob import BlobServiceClient
from psycopg import sql

from tests.e2e.test_executions_e2e import Platform, start_platform_host

pytestmark = pytest.mark.e2e


@pytest.fixture()
def platform(pg: Any, azurite: Any, tmp_path: Path) -> Iterator[Platform]:
    # A small inline limit: the `fetch` step's output (the platform's own OpenAPI document) is stored as a blob.
    host = start_platform_host(pg, azurite, tmp_path / "devhost.log", env={"QP_PAYLOAD_INLINE_MAX_BYTES": "1024"})
    yield Platform(host, pg.root, pg.owner_url)
    host.stop()


def _rows(pg: Any, tenant_id: str) -> dict[str, int]:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT c.table_name FROM information_schema.columns c"
                " JOIN pg_tables t ON t.schemaname = c.table_schema AND t.tablename = c.table_name"
                " WHERE c.table_schema = 'app' AND c.column_name = 'tenant_id'"
            )
        ]
        return {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(sql.Identifier("app", table)),
                (tenant_id,),
            ).fetchone()[0]
            for table in tables
        }


def _orchestrations(pg: Any, instance_ids: list[str]) -> int:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        instances = conn.execute(
            "SELECT count(*) FROM devhost_durable.instances WHERE instance_id = ANY(%s)", (instance_ids,)
        ).fetchone()[0]
        history = conn.execute(
            "SELECT count(*) FROM devhost_durable.history WHERE instance_id = ANY(%s)", (instance_ids,)
        ).fetchone()[0]
    return int(instances) + int(history)


def test_erasure_removes_executions_and_their_orchestration_histories(
    platform: Platform, pg: Any, azurite: Any
) -> None:
    admin = platform.headers(["Platform.Admin"])
    entra_id = str(uuid.uuid4())
    name = f"leaving-{uuid.uuid4().hex[:6]}"
    created = httpx.post(
        f"{platform.base}/api/v1/tenants",
        headers=admin,
        json={
            "name": name,
            "entra_tenant_id": entra_id,
            "allowed_modules": ["artifact", "approval", "wait", "http"],
            "allowed_targets": ["staging"],
        },
    )
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    member = platform.headers(["Intent.Author", "Intent.Executor", "Intent.Reader"], tenant=entra_id)
    allowed = httpx.patch(
        f"{platform.base}/api/v1/tenant",
        json={"settings": {"allowed_hosts": ["127.0.0.1"]}},
        headers=platform.headers(["Tenant.Admin"], tenant=entra_id),
    )
    assert allowed.status_code == 200, allowed.text
    intent = httpx.post(
        f"{platform.base}/api/v1/intents",
        headers=member,
        json={
            "name": "doomed",
            "definition": {
                "target": "staging",
                "steps": [
                    {"id": "write", "action": "artifact.write", "name": "a.json", "content": {}},
                    {"id": "fetch", "action": "http.request", "url": f"{platform.base}/api/openapi.json"},
                    {"id": "gate", "action": "approval"},
                ],
            },
        },
    ).json()["id"]
    finished = httpx.post(f"{platform.base}/api/v1/intents/{intent}/execute", headers=member).json()["execution_id"]
    waiting = httpx.post(f"{platform.base}/api/v1/intents/{intent}/execute", headers=member).json()["execution_id"]
    reader = {"Authorization": member["Authorization"]}
    for execution_id in (finished, waiting):
        _wait_status(platform, execution_id, reader, "waiting")
    httpx.post(f"{platform.base}/api/v1/executions/{finished}/cancel", headers=member)
    _wait_status(platform, finished, reader, "cancelled")
    instance_ids = [finished, waiting]
    assert _orchestrations(pg, instance_ids) > 0

    accepted = httpx.post(f"{platform.base}/api/v1/tenants/{tenant_id}/export", headers=admin)
    assert accepted.status_code == 202, accepted.text
    exported = _wait_export(platform, accepted.headers["location"], admin)  # run by the devhost's timer
    assert exported["counts"]["executions"] == 2 and exported["counts"]["execution_events"] > 0
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("artifacts")
    _assert_export_holds_its_blobs(blobs, exported, tenant_id)

    current = httpx.get(f"{platform.base}/api/v1/tenants/{tenant_id}", headers=admin)
    httpx.patch(
        f"{platform.base}/api/v1/tenants/{tenant_id}",
        json={"status": "suspended"},
        headers={**admin, "If-Match": current.headers["etag"]},
    )
    erased = httpx.post(
        f"{platform.base}/api/v1/tenants/{tenant_id}/erase", json={"confirm_name": name}, headers=admin, timeout=60
    )
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["orchestrations"] == 2  # the cancelled one, and the running one terminated

    assert _orchestrations(pg, instance_ids) == 0
    counts = _rows(pg, tenant_id)
    assert counts.pop("audit_events") == 1  # the erasure's own record
    assert set(counts.values()) == {0}, counts
    assert list(blobs.list_blobs(name_starts_with=f"{tenant_id}/")) == []


def _assert_export_holds_its_blobs(blobs: Any, answer: dict[str, Any], tenant_id: str) -> None:
    """The export's folder holds every blob of the tenant (both executions' stored outputs and artifacts) as the
    manifest lists it, and each reference of the archive's steps resolves there to the bytes it was made from."""
    folder = answer["folder"]
    manifest = json.loads(blobs.download_blob(answer["manifest"]).readall())
    listed = {entry["name"]: entry for entry in manifest["blobs"]}
    outside = {
        b.name.removeprefix(f"{tenant_id}/")
        for b in blobs.list_blobs(name_starts_with=f"{tenant_id}/")
        if not b.name.startswith(f"{tenant_id}/exports/")
    }
    assert set(listed) == outside and answer["blobs"] == len(listed) == 4  # per execution: an output, an artifact
    for name, entry in listed.items():
        data = blobs.download_blob(folder + name).readall()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    steps = json.loads(blobs.download_blob(answer["blob_name"]).readall())["execution_steps"]
    for step in steps:
        if step["step_id"] == "fetch":
            named, digest = step["output"]["$blob"]["name"], step["output"]["$blob"]["sha256"]
        elif step["step_id"] == "write":
            named, digest = step["output"]["blob_name"], step["output"]["sha256"]
        else:
            continue
        assert named.startswith(f"{tenant_id}/")
        data = blobs.download_blob(folder + named.removeprefix(f"{tenant_id}/")).readall()
        assert hashlib.sha256(data).hexdigest() == digest
    assert {s["step_id"] for s in steps if s["output"] is not None} >= {"fetch", "write"}


def _wait_export(platform: Platform, location: str, headers: dict[str, str]) -> dict[str, Any]:
    """The export job at `location` once it has ended (the `tenant_exports` timer runs every 30 s): succeeded."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = httpx.get(f"{platform.base}{location}", headers=headers).json()
        if job["status"] not in ("queued", "running"):
            assert job["status"] == "succeeded", job
            return dict(job)
        time.sleep(1)
    raise AssertionError(f"the export at {location} did not end")


def _wait_status(platform: Platform, execution_id: str, headers: dict[str, str], status: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = httpx.get(f"{platform.base}/api/v1/executions/{execution_id}", headers=headers).json()["status"]
        if found == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"{execution_id} never reached {status}")
