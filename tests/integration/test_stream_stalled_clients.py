# intent_ref: platform.execution
"""Event streams whose clients stop reading, through the gateway adapter as the function app serves them (ADR 0031):
each message carries at most PIECE_BYTES (or one event), so a stalled client holds its stream at one message, not
at the execution's history; the client is cut off when it takes nothing within the send limit, or at the stream's
end, whatever the stream is doing, and its place among its tenant's streams is given back. A client that reads
gets every event once, in order, to the terminal one, also resuming from far behind. And `?after=` is an event
number, as `Last-Event-ID` is: one past int64 is a 422.

The app is driven at the ASGI level on the harness's event loop, as the Functions worker's server drives it."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from psycopg_pool import ConnectionPool
from starlette.requests import Request
from starlette.types import Message

from shared.api import admission, event_stream
from shared.api.adapter import asgi_gateway, serve
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_stream_bound_concurrent import _receiver, _scope

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
BOUND = 3
EVENTS = 30
BIG = 100_000
"""An output that makes its event's message bigger than a piece: the history is some 4 MB, beyond a feed's tail."""


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Sets the streams' keep-alive and end; a tenant's streams bounded at BOUND, its requests far above that."""

    def set_limits(keepalive_s: float, max_s: float) -> None:
        monkeypatch.setenv("QP_EVENT_STREAM_KEEPALIVE_S", str(keepalive_s))
        monkeypatch.setenv("QP_EVENT_STREAM_MAX_S", str(max_s))
        monkeypatch.setenv("QP_EVENT_STREAMS_PER_TENANT", str(BOUND))
        monkeypatch.setenv("QP_TENANT_MAX_CONCURRENT_REQUESTS", "100")
        get_settings.cache_clear()
        admission.get_admission.cache_clear()

    yield set_limits
    for name in ("KEEPALIVE_S", "MAX_S"):
        monkeypatch.delenv(f"QP_EVENT_STREAM_{name}")
    monkeypatch.delenv("QP_EVENT_STREAMS_PER_TENANT")
    monkeypatch.delenv("QP_TENANT_MAX_CONCURRENT_REQUESTS")
    get_settings.cache_clear()
    admission.get_admission.cache_clear()


@dataclass
class Seen:
    """What one client was sent through the gateway."""

    status: int = 0
    messages: list[bytes] = field(default_factory=list)
    finished: bool = False

    @property
    def ids(self) -> list[int]:
        heads = [part.split(b"\n", 1)[0] for message in self.messages for part in message.split(b"\n\n")]
        return [int(head.removeprefix(b"id: ")) for head in heads if head.startswith(b"id: ")]


async def _client(app: Any, scope: Message, stall_after_events: int | None = None) -> Seen:
    """One request through the gateway adapter; the client takes the answer until it has `stall_after_events`
    events, then nothing more (its writes never complete). Returns once the gateway is done with it."""
    seen = Seen()
    request = Request(copy.deepcopy(scope), _receiver())

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            seen.status = message["status"]
        elif message["type"] == "http.response.body":
            seen.messages.append(message.get("body", b""))
            seen.finished = not message.get("more_body", False)
            if stall_after_events is not None and len(seen.ids) >= stall_after_events:
                await asyncio.Event().wait()

    response = await serve(asgi_gateway(app), request)
    async with asyncio.timeout(60):  # a guard against a hang, far above the limits
        await response(request.scope, request.receive, send)
    return seen


async def _clients(app: Any, scope: Message, n: int, stall_after_events: int | None) -> list[Seen]:
    return list(await asyncio.gather(*(_client(app, scope, stall_after_events) for _ in range(n))))


def _recorded(api: ApiHarness, pool: ConnectionPool[Any], name: str, *, ended: bool) -> tuple[uuid.UUID, uuid.UUID]:
    """A tenant and its execution with a history far bigger than a feed keeps: big events with small ones among."""
    handle = api.provision(name)
    execution = _execution(pool, handle.id, path=["running"])
    with tenant_transaction(handle.id, pool=pool) as conn:
        for index in range(EVENTS):
            output = {"v": "x" * (BIG if index % 3 else 10)}
            repo.append_event(conn, execution.id, "step_completed", f"s{index}", {"attempt": 1, "output": output})
        if ended:
            repo.transition(conn, execution.id, "succeeded")
    return handle.id, execution.id


def _assert_bounded(seen: Seen) -> None:
    for message in seen.messages:
        frames = [part for part in message.split(b"\n\n") if part]
        assert len(message) <= event_stream.PIECE_BYTES or len(frames) == 1, (len(message), len(frames))


def test_clients_that_stop_reading_are_cut_off_and_their_places_given_back(
    api: ApiHarness, app_pool: ConnectionPool[Any], limits: Any
) -> None:
    limits(keepalive_s=0.05, max_s=225)  # a client must take each message within 0.1 s
    tenant_id, execution_id = _recorded(api, app_pool, "stalled-streams", ended=False)
    scope = _scope(f"/api/v1/executions/{execution_id}/events", api.headers("stalled-streams", READER))
    assert api.client.portal is not None
    for _ in range(2):  # as many again as the bound: the first ones gave their places back
        seen = api.client.portal.call(_clients, api.client.app, scope, BOUND, 2)
        assert [s.status for s in seen] == [200] * BOUND
        for one in seen:
            _assert_bounded(one)
            assert one.ids[:2] == [1, 2] and not one.finished
        assert tenant_id not in event_stream._OPEN


def test_a_client_that_stops_reading_is_cut_off_at_the_streams_end(
    api: ApiHarness, app_pool: ConnectionPool[Any], limits: Any
) -> None:
    limits(keepalive_s=120, max_s=1)  # the send limit is four minutes away; the stream's end is not
    tenant_id, execution_id = _recorded(api, app_pool, "stalled-end", ended=False)
    scope = _scope(f"/api/v1/executions/{execution_id}/events", api.headers("stalled-end", READER))
    assert api.client.portal is not None
    seen = api.client.portal.call(_client, api.client.app, scope, 1)
    assert seen.status == 200 and seen.ids[:1] == [1] and not seen.finished
    _assert_bounded(seen)
    assert tenant_id not in event_stream._OPEN


@pytest.mark.parametrize("last_event_id", [None, "2", "25"])
def test_a_client_that_reads_gets_each_event_once_to_the_terminal_one(
    api: ApiHarness, app_pool: ConnectionPool[Any], limits: Any, last_event_id: str | None
) -> None:
    limits(keepalive_s=15, max_s=220)
    _, execution_id = _recorded(api, app_pool, "reading-stream", ended=True)
    headers = api.headers("reading-stream", READER)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    scope = _scope(f"/api/v1/executions/{execution_id}/events", headers)
    assert api.client.portal is not None
    seen = api.client.portal.call(_client, api.client.app, scope)
    start = int(last_event_id or 0)
    with tenant_transaction(api.tenants["reading-stream"].id, pool=app_pool) as conn:
        recorded = repo.events_after(conn, execution_id, start, 1000)
    assert seen.status == 200 and seen.finished
    assert seen.ids == [event.seq for event in recorded] == list(range(start + 1, EVENTS + 3))
    assert recorded[-1].type == "execution_completed"
    _assert_bounded(seen)


def test_after_is_an_event_number(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    handle = api.provision("after-bound")
    execution = _execution(app_pool, handle.id, path=["running", "succeeded"])
    url = f"/api/v1/executions/{execution.id}/events"
    headers = api.headers("after-bound", READER)
    for accept in ("application/json", event_stream.MEDIA_TYPE):
        refused = api.client.get(url, params={"after": str(2**63)}, headers={**headers, "Accept": accept})
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert [error["pointer"] for error in refused.json()["errors"]] == ["/query/after"]
    last = api.client.get(url, params={"after": str(2**63 - 1)}, headers=headers)
    assert last.status_code == 200, last.text
    assert last.json()["items"] == [] and last.json()["next_after"] == 2**63 - 1
