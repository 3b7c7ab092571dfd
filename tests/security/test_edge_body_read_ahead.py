# intent_ref: platform.hardening
"""The edge reads a request's body whole before sign-in, whatever the method: a DELETE whose body comes slowly
holds none of its tenant's admitted places while it waits. A client that goes away mid-body is answered nothing,
with no ERROR record (no 500 to count as a failure of the app). A body labelled with a Content-Encoding other than
identity is refused 415, nothing written; and an execute request whose Idempotency-Key header and body key differ
is refused 400 `invalid-idempotency-key`, nothing recorded.

The app is driven at the ASGI level on the harness's event loop, through the gateway's boundary as the function app
serves it."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from starlette.requests import Request
from starlette.types import Message

from shared.api.adapter import CLIENT_CLOSED_REQUEST, asgi_gateway, serve
from shared.api.admission import get_admission
from shared.api.durable import get_durable_client
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

ADMIN = ["Tenant.Admin"]
AUTHOR = ["Intent.Author", "Intent.Reader"]
EXECUTOR = ["Intent.Executor"]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision("read-ahead", allowed_modules=["wait"]).id


def _scope(api: ApiHarness, method: str, path: str, headers: dict[str, str]) -> Message:
    sent = {"host": "testserver", "content-type": "application/json", **headers}
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in sent.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@dataclass
class Upload:
    """A client that sends the first piece of its body, then nothing until it is told to go away."""

    first: bytes
    asked: int = 0
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    leave: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[Message] = field(default_factory=list)

    async def receive(self) -> Message:
        self.asked += 1
        if self.asked == 1:
            return {"type": "http.request", "body": self.first, "more_body": True}
        self.waiting.set()  # the app waits for the rest of the body
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def statuses(self) -> list[int]:
        return [int(m["status"]) for m in self.sent if m["type"] == "http.response.start"]


async def _stalled(app: Any, scope: Message, tenant_id: uuid.UUID) -> tuple[int, Upload]:
    """Run one request whose body stalls after its first piece; the tenant's requests in flight while it waits,
    then the client goes away and the app ends."""
    upload = Upload(b"{")
    task = asyncio.create_task(asgi_gateway(app).app(copy.deepcopy(scope), upload.receive, upload.send))
    async with asyncio.timeout(30):  # a guard against a hang
        await upload.waiting.wait()
        in_flight = get_admission().gate(tenant_id).in_flight
        upload.leave.set()
        await task
    return in_flight, upload


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_delete_whose_body_stalls_holds_no_admitted_place_and_its_client_leaving_is_no_500(
    api: ApiHarness, tenant: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/api/v1/policies/{uuid.uuid4()}"
    scope = _scope(api, "DELETE", path, {**api.headers("read-ahead", ADMIN), "content-length": "2"})
    assert api.client.portal is not None
    with caplog.at_level(logging.INFO):
        in_flight, upload = api.client.portal.call(_stalled, api.client.app, scope, tenant)
    # No place held while the body was pending; nothing sent and no ERROR once its client left.
    assert (in_flight, upload.statuses, _errors(caplog)) == (0, [], [])
    assert get_admission().gate(tenant).in_flight == 0

    # A DELETE whose body does come is still refused, as before: read at the edge, refused by the route.
    refused = api.client.request("DELETE", path, content=b"{}", headers=api.headers("read-ahead", ADMIN))
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["pointer"] == ""


@pytest.mark.parametrize("signed_in", [False, True])
def test_a_post_whose_client_leaves_mid_body_is_answered_nothing_and_logs_no_error(
    api: ApiHarness, tenant: uuid.UUID, caplog: pytest.LogCaptureFixture, signed_in: bool
) -> None:
    headers = {"content-length": "20", **(api.headers("read-ahead", AUTHOR) if signed_in else {})}
    scope = _scope(api, "POST", "/api/v1/intents", headers)
    assert api.client.portal is not None
    with caplog.at_level(logging.INFO):
        in_flight, upload = api.client.portal.call(_stalled, api.client.app, scope, tenant)
    assert in_flight == 0
    assert upload.statuses == [], upload.sent
    assert _errors(caplog) == []


async def _through_adapter(app: Any, scope: Message) -> tuple[int, list[Message]]:
    """A request through the gateway adapter whose client leaves mid-body: the status the host is handed, and what
    the host's client would be sent."""
    upload = Upload(b'{"name": ')
    upload.leave.set()
    request = Request(copy.deepcopy(scope), upload.receive)
    response = await serve(asgi_gateway(app), request)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async with asyncio.timeout(30):
        await response(request.scope, request.receive, send)
    return response.status_code, sent


def test_the_adapter_hands_its_host_no_5xx_for_a_client_that_left_mid_body(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    scope = _scope(api, "POST", "/api/v1/intents", {"content-length": "40"})
    assert api.client.portal is not None
    with caplog.at_level(logging.INFO):
        status, _sent = api.client.portal.call(_through_adapter, api.client.app, scope)
    assert status == CLIENT_CLOSED_REQUEST
    assert _errors(caplog) == []


@pytest.mark.parametrize("coding", ["gzip", "identity, br", "GZIP"])
def test_a_body_with_a_content_coding_is_refused_415_and_nothing_is_written(
    api: ApiHarness, tenant: uuid.UUID, coding: str
) -> None:
    before = api.table_snapshot("intents")
    body = {
        "name": f"coded-{uuid.uuid4().hex[:8]}",
        "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
    }
    headers = {**api.headers("read-ahead", AUTHOR), "Content-Type": "application/json", "Content-Encoding": coding}
    refused = api.client.post("/api/v1/intents", content=json.dumps(body).encode(), headers=headers)
    assert refused.status_code == 415, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/unsupported-media-type")
    assert api.table_snapshot("intents") == before


def test_a_body_with_the_identity_coding_is_taken(api: ApiHarness, tenant: uuid.UUID) -> None:
    body = {
        "name": f"plain-{uuid.uuid4().hex[:8]}",
        "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
    }
    headers = {**api.headers("read-ahead", AUTHOR), "Content-Encoding": "identity"}
    created = api.client.post("/api/v1/intents", json=body, headers=headers)
    assert created.status_code == 201, created.text


class _Orchestrations:
    """The orchestration client the execute route is given: records the starts."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start_new(self, _name: str, instance_id: str, _value: Any) -> str:
        self.started.append(instance_id)
        return instance_id

    async def get_status(self, _instance_id: str) -> None:
        return None


@pytest.fixture
def orchestrations(api: ApiHarness) -> Iterator[_Orchestrations]:
    bound = _Orchestrations()
    overrides = api.client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[get_durable_client] = lambda: bound
    try:
        yield bound
    finally:
        overrides.pop(get_durable_client, None)


def _executions(api: ApiHarness, intent_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        return conn.execute(
            "SELECT id, idempotency_key FROM app.executions WHERE intent_id = %s", (intent_id,)
        ).fetchall()


def test_an_execute_with_differing_header_and_body_keys_is_400_and_records_nothing(
    api: ApiHarness, tenant: uuid.UUID, orchestrations: _Orchestrations
) -> None:
    body = {
        "name": f"keys-{uuid.uuid4().hex[:8]}",
        "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers("read-ahead", AUTHOR))
    assert created.status_code == 201, created.text
    intent_id = str(created.json()["id"])
    path = f"/api/v1/intents/{intent_id}/execute"
    headers = {**api.headers("read-ahead", EXECUTOR), "Idempotency-Key": "from-the-header"}

    refused = api.client.post(path, json={"idempotency_key": "from-the-body"}, headers=headers)
    assert refused.status_code == 400, refused.text
    problem = refused.json()
    assert problem["type"].endswith("/invalid-idempotency-key")
    assert problem["errors"][0]["pointer"] == "/idempotency_key"
    assert _executions(api, intent_id) == []
    assert orchestrations.started == []

    # The same key in both is one key: started once, and a retry with the body's key alone replays it.
    started = api.client.post(path, json={"idempotency_key": "from-the-header"}, headers=headers)
    assert started.status_code == 202, started.text
    again = api.client.post(
        path, json={"idempotency_key": "from-the-header"}, headers=api.headers("read-ahead", EXECUTOR)
    )
    assert again.status_code == 202, again.text
    assert again.json()["execution_id"] == started.json()["execution_id"]
    assert len(_executions(api, intent_id)) == 1
