# intent_ref: platform.hardening
"""Every 5xx says what happened: problem+json with the request id, the cause logged under it, no internals."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from shared.api.adapter import Gateway, asgi_gateway, serve
from shared.api.middleware import ErrorBoundary
from shared.api.security import token_validator
from tests.e2e.conftest import DevhostFactory, devhost_factory  # noqa: F401  # the fixture, through `hosts`
from tests.integration.api_harness import ApiHarness
from tests.security.faulty_gateway import OUTAGES, SECRET, faulty_app

ERROR_APP = Path(__file__).parent / "error_app"
FAILING_PATHS = ["/route", "/async-route", "/dependency", "/middleware/inner", "/middleware/outer"]


def _problem(status: int, content_type: str, text: str, headers: Any, sent_id: str | None) -> dict[str, Any]:
    """The checks every 5xx must pass; returns the body for more."""
    assert content_type == "application/problem+json", text
    assert SECRET not in text and "Traceback" not in text, text
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status and body["title"]
    request_id = headers["x-request-id"]
    assert body["request_id"] == request_id
    if sent_id is not None:
        assert request_id == sent_id
    return body


def _internal_error(response: Any, sent_id: str | None) -> dict[str, Any]:
    assert response.status_code == 500, response.text
    body = _problem(500, response.headers["content-type"], response.text, response.headers, sent_id)
    assert body["type"].endswith("/internal-error")
    return body


def _logged_with_id(caplog: pytest.LogCaptureFixture, request_id: str, cause: type[BaseException]) -> None:
    """The cause was logged, traceback and all, on a line naming the request id."""
    records = [r for r in caplog.records if request_id in r.getMessage() and r.exc_info is not None]
    assert records, [r.getMessage() for r in caplog.records]
    assert any(isinstance(r.exc_info[1], cause) and SECRET in str(r.exc_info[1]) for r in records if r.exc_info)


@pytest.fixture()
def hosts(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> DevhostFactory:
    # The in-process harness of this module points these at its own setup; a devhost provisions its own.
    for name in ("QP_DATABASE_URL", "QP_DATABASE_CONTROL_URL", "QP_AUTH_METADATA_URL", "QP_AUTH_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    factory: DevhostFactory = request.getfixturevalue("devhost_factory")
    return factory


@pytest.mark.parametrize("path", FAILING_PATHS)
def test_an_error_anywhere_in_the_app_is_a_problem_500_with_the_request_id(
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # raise_server_exceptions: the test fails if anything escapes the boundary the adapter puts around the app.
    client = TestClient(ErrorBoundary(faulty_app()))
    sent = f"err-{path.strip('/').replace('/', '-')}"
    with caplog.at_level(logging.ERROR):
        response = client.get(path, headers={"X-Request-Id": sent})
    body = _internal_error(response, sent)
    assert body["instance"] == path
    _logged_with_id(caplog, sent, RuntimeError)


@pytest.mark.parametrize("path", ["/route", "/dependency", "/middleware/inner"])
def test_the_app_itself_answers_errors_inside_the_request_id_without_raising(path: str) -> None:
    # No boundary here: errors of routes, dependencies and inner middleware never leave the app at all.
    response = TestClient(faulty_app()).get(path)
    _internal_error(response, None)


def test_an_error_outside_the_request_id_middleware_still_gets_the_callers_id() -> None:
    # Without the adapter's boundary Starlette re-raises after answering; the answer itself must be complete.
    client = TestClient(faulty_app(), raise_server_exceptions=False)
    _internal_error(client.get("/middleware/outer", headers={"X-Request-Id": "outer-1"}), "outer-1")
    minted = _internal_error(client.get("/middleware/outer", headers={"X-Request-Id": "not a valid id"}), None)
    assert len(minted["request_id"]) == 36


def test_an_app_that_answers_nothing_gets_a_problem_500() -> None:
    response = TestClient(ErrorBoundary(faulty_app())).get("/middleware/silent", headers={"X-Request-Id": "silent-1"})
    _internal_error(response, "silent-1")


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_a_dependency_outage_is_a_503_with_retry_after(outage: str, caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(ErrorBoundary(faulty_app()))
    with caplog.at_level(logging.WARNING):
        response = client.get(f"/outage/{outage}", headers={"X-Request-Id": f"outage-{outage}"})
    assert response.status_code == 503, response.text
    body = _problem(503, response.headers["content-type"], response.text, response.headers, f"outage-{outage}")
    assert body["type"].endswith("/dependency-unavailable")
    assert 1 <= int(response.headers["retry-after"]) <= 5
    assert any(f"outage-{outage}" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_an_outage_raised_in_middleware_is_a_503_too() -> None:
    response = TestClient(faulty_app()).get("/middleware/inner-outage", headers={"X-Request-Id": "mw-outage"})
    assert response.status_code == 503, response.text
    assert _problem(503, response.headers["content-type"], response.text, response.headers, "mw-outage")
    assert response.headers["retry-after"]


def test_the_success_path_is_untouched() -> None:
    response = TestClient(ErrorBoundary(faulty_app())).get("/ok", headers={"X-Request-Id": "fine-1"})
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert response.headers["x-request-id"] == "fine-1"


class _RaisingGateway(Gateway):
    @property
    def app(self) -> Any:
        raise ValueError(SECRET)


def _host_request(path: str, request_id: str) -> Request:
    """A request as the worker hands it to an HTTP-stream function."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"x-request-id", request_id.encode())],
        "path_params": {"path": path.lstrip("/")},
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request(scope, receive)


async def _answer(gateway: Gateway, request: Request) -> tuple[int, dict[str, str], bytes]:
    """Serve `request` through `gateway` and collect the relayed answer."""
    response = await serve(gateway, request)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await response(request.scope, request.receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_the_gateway_function_answers_a_problem_when_the_adapter_itself_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        status, headers, body = asyncio.run(
            _answer(_RaisingGateway(faulty_app()), _host_request("/api/v1/me", "adapter-1"))
        )
    assert status == 500
    _problem(500, headers["content-type"], body.decode(), headers, "adapter-1")
    _logged_with_id(caplog, "adapter-1", ValueError)
    # And the adapter the gateway function really uses, on a route that raises: a complete answer, no raise.
    status, headers, body = asyncio.run(_answer(asgi_gateway(faulty_app()), _host_request("/route", "adapter-2")))
    assert status == 500
    _problem(500, headers["content-type"], body.decode(), headers, "adapter-2")


def test_the_real_app_answers_a_failing_dependency_with_a_problem_500(api: ApiHarness) -> None:
    def broken_validator() -> Any:
        raise RuntimeError(SECRET)

    app: Any = api.client.app
    saved = app.dependency_overrides[token_validator]
    app.dependency_overrides[token_validator] = broken_validator
    try:
        response = api.client.get("/api/v1/me", headers={"Authorization": "Bearer x", "X-Request-Id": "real-1"})
    finally:
        app.dependency_overrides[token_validator] = saved
    _internal_error(response, "real-1")
    assert response.json()["instance"] == "/api/v1/me"


@pytest.mark.e2e
def test_through_a_real_devhost_every_failure_is_a_problem_body(hosts: DevhostFactory) -> None:
    host = hosts(app_dir=ERROR_APP)
    with httpx.Client(base_url=host.base_url, timeout=30) as client:
        for path in [*FAILING_PATHS, "/middleware/silent", "/adapter-broken", "/function-broken"]:
            sent = f"devhost-{path.strip('/').replace('/', '-')}"
            response = client.get(path, headers={"X-Request-Id": sent})
            _internal_error(response, sent)
            assert int(response.headers["content-length"]) > 0
            # The cause is in the host's log under the same id.
            assert sent in host.log(), path
        outage = client.get("/outage/database-refused", headers={"X-Request-Id": "devhost-outage"})
        assert outage.status_code == 503 and outage.headers["retry-after"]
        _problem(503, outage.headers["content-type"], outage.text, outage.headers, "devhost-outage")
        assert client.get("/ok").json() == {"ok": True}
    assert SECRET in host.log()  # logged for the operator, never answered to the caller
