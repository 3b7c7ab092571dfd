# intent_ref: platform.execution
"""A worker's lease long poll whose client has hung up leases nothing (ADR 0027, amended 2026-12-06): work queued
while it waited, or before it began, stays queued, and a live worker gets it. The app is called as the Functions
host calls it, with a `receive` that reports the client's disconnect."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from psycopg_pool import ConnectionPool
from starlette.types import Message

from shared.api.durable import get_durable_client
from shared.api.routers import work
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_verdict_handover import FlakyDurable

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]
TENANT = "hung-up-polls"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811  # the fixture
    return api.provision(TENANT).id


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[FlakyDurable]:  # noqa: F811  # the fixture
    client = FlakyDurable()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    yield client
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


class Client:
    """One lease request sent to the app; `hang_up` is the client going away (Ctrl-C, a crash, its own timeout)."""

    def __init__(self) -> None:
        self.gone = threading.Event()
        self.answer: dict[str, Any] = {}
        self.status: int | None = None

    def hang_up(self) -> None:
        self.gone.set()

    def receive(self, body: bytes) -> Callable[[], Awaitable[Message]]:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Answered at once when the client is gone, as uvicorn's receive does; otherwise it waits for the end
            # (`Request.is_disconnected()` cancels it at its first wait).
            while not self.gone.is_set():
                await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

        return receive

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body" and message.get("body"):
            self.answer = json.loads(message["body"])


def _poll(api: ApiHarness, client: Client, token: str, action: str, wait_s: float) -> Future[None]:  # noqa: F811
    """Send a lease poll for `action` to the app on its own event loop; the future ends with the app's answer."""
    body = json.dumps(
        {"actions": [action], "max_items": 1, "lease_s": 60, "wait_s": wait_s, "worker": "hung-up"}
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/work/lease",
        "raw_path": b"/api/v1/work/lease",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "extensions": {},
        "state": dict(api.client.app_state),
    }
    portal = api.client.portal
    assert portal is not None
    app = api.client.app
    return portal.start_task_soon(app, scope, client.receive(body), client.send)


def _queue(api: ApiHarness, token: str, key: AttemptKey) -> list[dict[str, Any]]:  # noqa: F811
    """The execution's open items as the tenant's workers list them."""
    listed = api.client.get("/api/v1/work", params={"execution_id": str(key.execution_id)}, headers=_auth(token))
    assert listed.status_code == 200, listed.text
    return list(listed.json()["items"])


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _live_lease(api: ApiHarness, token: str, action: str) -> list[dict[str, Any]]:  # noqa: F811
    answer = api.client.post(
        "/api/v1/work/lease",
        json={"actions": [action], "max_items": 1, "lease_s": 60, "wait_s": 0, "worker": "alive"},
        headers=_auth(token),
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


def test_work_queued_after_a_waiting_poll_hung_up_stays_queued_for_a_live_worker(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = api.token(TENANT, ["Module.Worker"], claims={"idtyp": "app"})
    action = f"hu-{uuid.uuid4().hex[:6]}"
    waiting = threading.Event()
    idle = work.idle

    async def observed_idle(*args: Any, **kwargs: Any) -> bool:
        waiting.set()  # its round found nothing: the poll waits for the queue's notification
        return await idle(*args, **kwargs)

    monkeypatch.setattr(work, "idle", observed_idle)
    client = Client()
    answered = _poll(api, client, token, action, wait_s=20)
    assert waiting.wait(20), "the poll never waited"
    client.hang_up()
    key = _queued(app_pool, tenant, action, path=["running"])  # wakes the poll

    answered.result(timeout=30)
    assert client.status == 200 and client.answer == {"items": []}, client.answer
    assert [(i["status"], i["leased_by"]) for i in _queue(api, token, key)] == [("queued", None)]
    (item,) = _live_lease(api, token, action)
    assert (item["execution_id"], item["step_id"], item["attempt"]) == (str(key.execution_id), "build", 1)


def test_a_poll_whose_client_hung_up_before_it_began_leases_nothing(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
) -> None:
    token = api.token(TENANT, ["Module.Worker"], claims={"idtyp": "app"})
    action = f"hu-{uuid.uuid4().hex[:6]}"
    key = _queued(app_pool, tenant, action, path=["running"])
    client = Client()
    client.hang_up()

    _poll(api, client, token, action, wait_s=0).result(timeout=30)
    assert client.status == 200 and client.answer == {"items": []}, client.answer
    assert [(i["status"], i["leased_by"]) for i in _queue(api, token, key)] == [("queued", None)]
    (item,) = _live_lease(api, token, action)
    assert item["execution_id"] == str(key.execution_id)
