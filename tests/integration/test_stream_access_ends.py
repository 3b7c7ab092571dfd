# intent_ref: platform.execution
"""An open event stream ends when its caller's access does (ADR 0031): at its token's expiry (its `exp` plus the
validator's leeway), within seconds of its tenant's suspension, and within seconds of a tenant policy that forbids the
read, each time with a last comment saying why, as a stream ends at its own end; a long poll answers by its token's
expiry, and is refused (403) once a new policy forbids the read. Before, a stream checked its caller once, when it
started, and went on to its own end (minutes) with a token that had expired, for a suspended tenant, or for a caller a
policy added since forbade to read (whose new requests were 403).

The app is driven at the ASGI level on the harness's event loop, through the gateway adapter, as the Functions
worker's server drives it; the tokens are the harness's, one of them accepted for a few seconds more only."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from psycopg_pool import ConnectionPool
from starlette.requests import Request
from starlette.types import Message

from devhost.identity import sign_access_token
from shared.api import admission
from shared.api.adapter import asgi_gateway, serve
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine.event_wakeup import get_event_wakeup
from tests.integration.api_harness import ISSUER_BASE, ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_list_reads_honour_forbids import SECRET_EXECUTIONS, _executions, _forbid
from tests.integration.test_registry_api import provision
from tests.integration.test_stream_bound_concurrent import _receiver, _scope

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
TOKEN_EXPIRED = b": access ended: token_expired\n\n"
TENANT_SUSPENDED = b": access ended: tenant_suspended\n\n"
FORBIDDEN = b": access ended: forbidden\n\n"
NOT_FOUND = b": access ended: not_found\n\n"
UNRELATED = (
    'forbid (principal, action == QP::Action::"intent.execute", resource) when { resource.labels.contains("x=1") };'
)
VALID_S = 5
"""How much longer the short token is accepted when it is minted: time for the request that opens the stream."""
MAX_S = 40
"""The streams' own end: far past the short token's and a suspension's, and under the clients' guard."""


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Streams that send a keep-alive every second and end on their own after MAX_S."""
    monkeypatch.setenv("QP_EVENT_STREAM_KEEPALIVE_S", "1")
    monkeypatch.setenv("QP_EVENT_STREAM_MAX_S", str(MAX_S))
    monkeypatch.setenv("QP_TENANT_MAX_CONCURRENT_REQUESTS", "100")
    get_settings.cache_clear()
    admission.get_admission.cache_clear()
    yield
    for name in ("QP_EVENT_STREAM_KEEPALIVE_S", "QP_EVENT_STREAM_MAX_S", "QP_TENANT_MAX_CONCURRENT_REQUESTS"):
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    admission.get_admission.cache_clear()


@dataclass
class Seen:
    """What one client of a stream was sent through the gateway."""

    status: int = 0
    body: bytes = b""
    finished: bool = False
    """The answer ended as an answer does (its last body message), not cut off."""
    started: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the first message of the body (the stream runs)."""

    @property
    def ids(self) -> list[int]:
        heads = [part.split(b"\n", 1)[0] for part in self.body.split(b"\n\n")]
        return [int(head.removeprefix(b"id: ")) for head in heads if head.startswith(b"id: ")]


async def _read(app: Any, scope: Message, seen: Seen) -> None:
    """One client that takes everything of the stream until the gateway is done with it."""
    request = Request(copy.deepcopy(scope), _receiver())

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            seen.status = message["status"]
        elif message["type"] == "http.response.body":
            seen.body += message.get("body", b"")
            seen.finished = not message.get("more_body", False)
            seen.started.set()

    response = await serve(asgi_gateway(app), request)
    async with asyncio.timeout(MAX_S + 20):  # a guard against a hang, past the stream's own end
        await response(request.scope, request.receive, send)


def _short_token(api: ApiHarness, tenant: str) -> tuple[str, float]:
    """A Reader token of `tenant` that is accepted for VALID_S more seconds (its `exp` lies that far inside the
    leeway), and when it stops being accepted (a POSIX time)."""
    leeway = get_settings().QP_AUTH_LEEWAY_S
    tid = str(api.tenants[tenant].entra_id)
    token = sign_access_token(api.key, tenant=tid, base_url=ISSUER_BASE, roles=READER, expires_in=VALID_S - leeway)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    return token, float(expires + leeway)


def _stream_of(api: ApiHarness, pool: ConnectionPool[Any], name: str) -> tuple[uuid.UUID, str]:
    """A tenant's running execution (a few events, more to come) and its events URL."""
    handle = api.provision(name)
    execution = _execution(pool, handle.id, path=["running"])
    return execution.id, f"/api/v1/executions/{execution.id}/events"


def test_a_stream_ends_when_its_token_expires(api: ApiHarness, app_pool: ConnectionPool[Any], limits: None) -> None:
    _, url = _stream_of(api, app_pool, "stream-token")
    token, _ = _short_token(api, "stream-token")
    seen = Seen()
    assert api.client.portal is not None
    api.client.portal.call(_read, api.client.app, _scope(url, {"Authorization": f"Bearer {token}"}), seen)

    assert seen.status == 200 and seen.ids, seen.body[:300]
    # It ended as a stream ends, after a last comment saying why, not at its own end.
    assert seen.finished and seen.body.endswith(TOKEN_EXPIRED), seen.body[-300:]
    # The token is refused now, as the client's reconnect with it would be.
    assert api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_stream_ends_when_its_tenant_is_suspended(
    api: ApiHarness, app_pool: ConnectionPool[Any], limits: None
) -> None:
    api.provision("stream-operators")
    admin = api.headers("stream-operators", ["Platform.Admin"])
    _, url = _stream_of(api, app_pool, "stream-suspended")
    headers = api.headers("stream-suspended", READER)
    tenant_id = api.tenants["stream-suspended"].id

    def suspend() -> httpx.Response:
        etag = api.client.get(f"/api/v1/tenants/{tenant_id}", headers=admin).headers["etag"]
        patched: httpx.Response = api.client.patch(
            f"/api/v1/tenants/{tenant_id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag}
        )
        return patched

    async def scenario(seen: Seen) -> httpx.Response:
        reading = asyncio.create_task(_read(api.client.app, _scope(url, headers), seen))
        await seen.started.wait()
        # The operator suspends the tenant while its stream is open (through the API, on another thread).
        suspended = await asyncio.to_thread(suspend)
        await reading
        return suspended

    seen = Seen()
    assert api.client.portal is not None
    suspended = api.client.portal.call(scenario, seen)

    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended", suspended.text
    assert seen.status == 200 and seen.ids, seen.body[:300]
    assert seen.finished and seen.body.endswith(TENANT_SUSPENDED), seen.body[-300:]
    # The client's reconnect is refused, as every request of the tenant is.
    again = api.client.get(url, headers={**headers, "Accept": "text/event-stream"})
    assert again.status_code == 403 and again.json()["reason"] == "tenant_suspended", again.text


def test_a_stream_ends_when_a_tenant_policy_forbids_reading_it(
    api: ApiHarness, app_pool: ConnectionPool[Any], limits: None
) -> None:
    tenant = provision(api, "stream-forbidden")
    (secret,) = _executions(api, app_pool, tenant, {"secret": "yes"})
    url = f"/api/v1/executions/{secret}/events"
    headers = api.headers(tenant, READER)

    async def scenario(seen: Seen) -> None:
        reading = asyncio.create_task(_read(api.client.app, _scope(url, headers), seen))
        await seen.started.wait()
        # The tenant's admin forbids reading secret executions while the stream is open (on another thread).
        await asyncio.to_thread(_forbid, api, tenant, "hide-secret", SECRET_EXECUTIONS)
        await reading

    seen = Seen()
    assert api.client.portal is not None
    api.client.portal.call(scenario, seen)

    assert seen.status == 200 and seen.ids, seen.body[:300]
    assert seen.finished and seen.body.endswith(FORBIDDEN), seen.body[-300:]
    # The client's reconnect is refused, as a new request for the execution is.
    again = api.client.get(url, headers={**headers, "Accept": "text/event-stream"})
    assert again.status_code == 403 and again.json()["reason"] == "denied_by_tenant_policy", again.text


def test_a_stream_whose_execution_is_deleted_ends_not_found(
    api: ApiHarness, app_pool: ConnectionPool[Any], limits: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The execution's row goes while its stream is open, and a tenant policy that has nothing to do with it is added:
    the read decided again finds no execution, and the stream ends saying so, as an expected end (no error logged).
    Before, it ended with no last comment and an ERROR with the 404's traceback."""
    tenant = provision(api, "stream-deleted")
    (execution_id,) = _executions(api, app_pool, tenant, {"team": "web"})
    url = f"/api/v1/executions/{execution_id}/events"
    headers = api.headers(tenant, READER)

    def delete_and_add_a_policy() -> None:
        with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as admin, admin.transaction():
            admin.execute("SET LOCAL session_replication_role = replica")  # the row alone, its events left behind
            admin.execute("DELETE FROM app.executions WHERE id = %s", (execution_id,))
        _forbid(api, tenant, "unrelated", UNRELATED)

    async def scenario(seen: Seen) -> None:
        reading = asyncio.create_task(_read(api.client.app, _scope(url, headers), seen))
        await seen.started.wait()
        await asyncio.to_thread(delete_and_add_a_policy)
        await reading

    seen = Seen()
    assert api.client.portal is not None
    with caplog.at_level(logging.INFO):
        api.client.portal.call(scenario, seen)

    assert seen.status == 200 and seen.ids, seen.body[:300]
    assert seen.finished and seen.body.endswith(NOT_FOUND), seen.body[-300:]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]
    again = api.client.get(url, headers={**headers, "Accept": "text/event-stream"})
    assert again.status_code == 404, again.text


def test_a_waiting_long_poll_is_refused_when_a_tenant_policy_forbids_reading(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    tenant = provision(api, "poll-forbidden")
    (secret,) = _executions(api, app_pool, tenant, {"secret": "yes"})
    answers: list[httpx.Response] = []
    polling = threading.Thread(
        target=lambda: answers.append(
            api.client.get(
                f"/api/v1/executions/{secret}/events",
                params={"after": 1_000, "wait": 30},
                headers=api.headers(tenant, READER),
            )
        )
    )
    polling.start()
    wakeup = get_event_wakeup()
    assert wakeup is not None
    _sleep_until(lambda: wakeup.waiter_count > 0 or not polling.is_alive())  # the poll waits, let in
    _forbid(api, tenant, "hide-secret", SECRET_EXECUTIONS)
    polling.join()

    [answer] = answers
    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["reason"] == "denied_by_tenant_policy", answer.text


def test_a_long_poll_answers_by_its_tokens_expiry(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    handle = api.provision("poll-token")
    execution = _execution(app_pool, handle.id, path=["running"])
    token, expires = _short_token(api, "poll-token")
    answers: list[httpx.Response] = []

    def poll() -> None:
        answers.append(
            api.client.get(
                f"/api/v1/executions/{execution.id}/events",
                params={"after": execution.last_event_seq, "wait": 30},
                headers={"Authorization": f"Bearer {token}"},
            )
        )

    polling = threading.Thread(target=poll)
    polling.start()
    # An event recorded once the token is refused (well after, so that the answer is on its way by then): a poll
    # held past the token's expiry would be woken by it and send it on the expired token.
    _sleep_until(lambda: time.time() > expires + 3)
    with tenant_transaction(handle.id, pool=app_pool) as conn:
        repo.append_event(conn, execution.id, "step_started", "late", {"attempt": 1})
    polling.join()

    [answer] = answers
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert page["items"] == [] and page["next_after"] == execution.last_event_seq, page


def _sleep_until(reached: Callable[[], bool]) -> None:
    while not reached():
        time.sleep(0.1)
