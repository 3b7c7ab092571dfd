# intent_ref: platform.gateway
"""The gateway's conventions without I/O: problem+json, request ids, body limits, liveness."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from shared.api import readiness
from shared.api.app import create_app
from shared.config import get_settings
from shared.db.pool import close_pool


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("QP_MAX_BODY_BYTES", "2048")
    get_settings.cache_clear()
    app = create_app()

    @app.post("/api/echo")
    def echo(payload: dict[str, int]) -> dict[str, int]:
        return payload

    @app.get("/api/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    close_pool()
    readiness._probe_client.cache_clear()
    get_settings.cache_clear()


def test_health_answers_ok(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {}}


def test_unknown_route_is_problem_json(client: TestClient) -> None:
    response = client.get("/api/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404 and body["title"] == "Not found" and body["instance"] == "/api/nope"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/intents/"), ("POST", "/api/v1/intents/"), ("GET", "/api/health/"), ("GET", "/api/v1/me/")],
)
def test_a_trailing_slash_is_not_redirected_but_a_404_problem(client: TestClient, method: str, path: str) -> None:
    # It was a 307 before authentication, its Location built from whatever Host the client sent.
    response = client.request(method, path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["instance"] == path


def test_request_id_is_echoed_or_minted(client: TestClient) -> None:
    echoed = client.get("/api/health", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    minted = client.get("/api/health", headers={"X-Request-Id": "bad id with spaces"})
    assert minted.headers["x-request-id"] not in ("", "bad id with spaces")
    assert len(minted.headers["x-request-id"]) == 36


def test_validation_errors_carry_json_pointers(client: TestClient) -> None:
    response = client.post("/api/echo", json={"a": "not-a-number"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["pointer"] == "/a"


def test_body_over_limit_is_413(client: TestClient) -> None:
    response = client.post(
        "/api/echo", content=b'{"a": 1' + b" " * 4096 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"]


def test_unexpected_error_hides_internals(client: TestClient) -> None:
    response = client.get("/api/boom")
    assert response.status_code == 500
    assert "secret internals" not in response.text
    assert response.json()["title"] == "Internal server error"


def test_ready_names_what_is_down(client: TestClient) -> None:
    response = client.get("/api/ready")
    assert response.status_code == 503
    body = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert "postgres" in body["detail"]
    assert body["checks"]["postgres"].startswith("down")
    assert (body["instance"], response.headers["retry-after"]) == ("/api/ready", "5")
    assert body["request_id"] == response.headers["x-request-id"]  # as on every other problem
