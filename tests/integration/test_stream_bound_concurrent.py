# intent_ref: platform.execution
"""A tenant's bound of open event streams (ADR 0031) under streams asked for together: the place is taken when a
stream is admitted, not when its body starts, so a burst passes no more streams than the bound; and a stream whose
client leaves before its body starts gives its place back.

The app is driven at the ASGI level on the harness's event loop, as a server drives it: each client can be held at
the moment its answer starts, before the body does (the window a burst used to slip through), or leave there."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api import admission, event_stream
from shared.config import get_settings
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration

LIMIT = 3
READER = ["Intent.Reader"]
Message = dict[str, Any]


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Streams bounded at LIMIT per tenant; the tenant's requests in flight bounded far above the burst, so that a
    refusal here is the streams' bound, never the requests'."""
    monkeypatch.setenv("QP_EVENT_STREAMS_PER_TENANT", str(LIMIT))
    monkeypatch.setenv("QP_TENANT_MAX_CONCURRENT_REQUESTS", "100")
    get_settings.cache_clear()
    admission.get_admission.cache_clear()
    yield
    monkeypatch.delenv("QP_EVENT_STREAMS_PER_TENANT")
    monkeypatch.delenv("QP_TENANT_MAX_CONCURRENT_REQUESTS")
    get_settings.cache_clear()
    admission.get_admission.cache_clear()


def _scope(path: str, headers: dict[str, str]) -> Message:
    """A GET asking for server-sent events, as an HTTP server that reports a failed write as OSError hands it over
    (ASGI spec 2.4)."""
    sent = {**headers, "accept": event_stream.MEDIA_TYPE, "host": "testserver"}
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in sent.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def _receiver() -> Any:
    """A client's receive channel: a request without a body, then nothing (the client leaves by a failed write or a
    cancel, not by a disconnect message)."""
    asked: list[bool] = []

    async def receive() -> Message:
        if not asked:
            asked.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def _burst(app: Any, scope: Message, n: int) -> list[tuple[int, str | None]]:
    """`n` requests for the stream at once, each admitted stream held where its answer starts until all `n` are
    answered; then every client leaves (its request cancelled, as the gateway does when a client goes away).
    Returns each request's status and, for a refusal, its problem type."""
    statuses: dict[int, int] = {}
    bodies: dict[int, bytes] = {}
    answered = asyncio.Event()

    def client(index: int) -> Any:
        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses[index] = message["status"]
                if len(statuses) == n:
                    answered.set()
                if message["status"] == 200:
                    await answered.wait()  # between admission and the body's start
            elif message["type"] == "http.response.body":
                bodies[index] = bodies.get(index, b"") + message.get("body", b"")

        return app(copy.deepcopy(scope), _receiver(), send)  # the app keeps its state in it

    requests = [asyncio.create_task(client(index)) for index in range(n)]

    def settled(index: int) -> bool:
        # A refusal has been answered in full; an admitted stream has begun its body (and goes on).
        return requests[index].done() if statuses.get(index) != 200 else bool(bodies.get(index))

    try:
        async with asyncio.timeout(60):
            await answered.wait()
            while not all(settled(index) for index in range(n)):
                await asyncio.sleep(0.01)
    finally:
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
    return sorted(
        (status, json.loads(bodies[index])["type"].rsplit("/", 1)[-1] if status != 200 else None)
        for index, status in statuses.items()
    )


async def _leave_before_the_body(app: Any, scope: Message, how: str) -> int:
    """One request for the stream whose client leaves once the answer starts, before any of the body: the write of
    the answer's start fails, or the request is cancelled there. Returns the status it was answered."""
    statuses: list[int] = []
    started = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
            if how == "write-fails":
                raise OSError("the client has gone")
            started.set()
            await asyncio.Event().wait()  # held until cancelled
        else:
            raise AssertionError(f"the body started: {message}")

    request = asyncio.create_task(app(copy.deepcopy(scope), _receiver(), send))
    async with asyncio.timeout(60):
        if how == "cancelled":
            await started.wait()
            request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    return statuses[0]


@pytest.fixture
def stream_scope(api: ApiHarness, app_pool: ConnectionPool[Any]) -> Message:
    """A request for the event stream of a running execution (nothing ends it) of a tenant of its own."""
    handle = api.provision("streams-bound")
    execution = _execution(app_pool, handle.id, path=["running"])
    return _scope(f"/api/v1/executions/{execution.id}/events", api.headers("streams-bound", READER))


def test_streams_asked_for_at_once_pass_no_more_than_the_bound(
    api: ApiHarness, bounded: None, stream_scope: Message
) -> None:
    assert api.client.portal is not None
    outcome = api.client.portal.call(_burst, api.client.app, stream_scope, 12)
    assert outcome == [(200, None)] * LIMIT + [(429, "too-many-streams")] * (12 - LIMIT)
    # The streams that ended gave their places back: the bound admits as many again, and no more.
    again = api.client.portal.call(_burst, api.client.app, stream_scope, LIMIT + 1)
    assert again == [(200, None)] * LIMIT + [(429, "too-many-streams")]


@pytest.mark.parametrize("how", ["write-fails", "cancelled"])
def test_a_stream_left_before_its_body_starts_gives_its_place_back(
    api: ApiHarness, bounded: None, stream_scope: Message, how: str
) -> None:
    assert api.client.portal is not None
    for _ in range(LIMIT + 1):  # more than the bound: each left its place
        assert api.client.portal.call(_leave_before_the_body, api.client.app, stream_scope, how) == 200
    outcome = api.client.portal.call(_burst, api.client.app, stream_scope, LIMIT + 1)
    assert outcome == [(200, None)] * LIMIT + [(429, "too-many-streams")]
