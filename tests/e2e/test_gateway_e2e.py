# intent_ref: platform.gateway
"""The platform's own function_app.py served by the devhost: health, readiness, problem+json, start-up checks."""

from __future__ import annotations

import httpx
import pytest

from devhost.child import PROJECT_ROOT, free_port
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e


def test_health_and_ready_answer_200(devhost_factory: DevhostFactory) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT)
    health = httpx.get(f"{host.base_url}/api/health", headers={"X-Request-Id": "e2e-1"})
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.headers["x-request-id"] == "e2e-1"
    ready = httpx.get(f"{host.base_url}/api/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"postgres": "ok", "blob_storage": "ok"}}
    # HEAD reaches the app (its own answer: the route takes GET only) and carries no body, so the next request on the
    # same connection is read intact.
    with httpx.Client(base_url=host.base_url) as client:
        head = client.head("/api/health")
        assert (head.status_code, head.headers["allow"], head.content) == (405, "GET", b"")
        assert client.get("/api/health").json()["status"] == "ok"


def test_unknown_route_is_problem_json(devhost_factory: DevhostFactory) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT)
    response = httpx.get(f"{host.base_url}/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["instance"] == "/api/v1/nothing-here"


def test_ready_is_503_naming_blob_storage_when_it_is_down(devhost_factory: DevhostFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    connection_string = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
        f"KBHBeksoGMGw==;BlobEndpoint={dead};"
    )
    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_BLOB_CONNECTION_STRING": connection_string})
    response = httpx.get(f"{host.base_url}/api/ready", timeout=30)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert "blob_storage" in body["detail"] and "postgres" not in body["detail"]
    assert body["checks"]["postgres"] == "ok"


def test_malformed_setting_stops_start_up_naming_it(devhost_factory: DevhostFactory) -> None:
    with pytest.raises(RuntimeError, match="QP_TASK_HUB"):
        devhost_factory(app_dir=PROJECT_ROOT, env={"QP_TASK_HUB": "not a valid hub!"})
