# intent_ref: platform.execution
"""An open event stream goes on while the process's listener cannot connect (ADR 0031, amended 2026-12-07): its
feed reads again on its own every few seconds while nobody listens, so an event appended meanwhile reaches the open
stream and a stream that resumes with `Last-Event-ID`, which joins the same feed. Before, a feed waited for the
listener's wake-up alone: while the listener could not reconnect, the execution's streams received nothing more, and
every client that reconnected joined the stale feed and received nothing either, for as long as any stream of the
execution stayed open (the JSON long poll, which re-reads on its own, was not affected)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api import admission, event_stream
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine.event_wakeup import EventWakeup
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_stream_access_ends import Seen, _read
from tests.integration.test_stream_bound_concurrent import _scope

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
MAX_S = 20
"""The streams' own end: a stream that delivers nothing more runs to it, and the test fails."""


@pytest.fixture
def listener_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventWakeup]:
    """Streams that end on their own after MAX_S, whose feeds wait on a listener the database refuses every time."""

    def refused() -> psycopg.Connection[Any]:
        raise psycopg.OperationalError("the database refuses the listener")

    down = EventWakeup(refused, reconnect_delay_s=0.2)
    monkeypatch.setattr(event_stream, "get_event_wakeup", lambda: down)
    monkeypatch.setenv("QP_EVENT_STREAM_KEEPALIVE_S", "5")
    monkeypatch.setenv("QP_EVENT_STREAM_MAX_S", str(MAX_S))
    monkeypatch.setenv("QP_TENANT_MAX_CONCURRENT_REQUESTS", "100")
    get_settings.cache_clear()
    admission.get_admission.cache_clear()
    try:
        yield down
    finally:
        down.stop()
        for name in ("QP_EVENT_STREAM_KEEPALIVE_S", "QP_EVENT_STREAM_MAX_S", "QP_TENANT_MAX_CONCURRENT_REQUESTS"):
            monkeypatch.delenv(name)
        get_settings.cache_clear()
        admission.get_admission.cache_clear()


def test_streams_deliver_an_event_appended_while_the_listener_is_down(
    api: ApiHarness, app_pool: ConnectionPool[Any], listener_down: EventWakeup
) -> None:
    handle = api.provision("stream-listener-down")
    execution = _execution(app_pool, handle.id, path=["running"])
    url = f"/api/v1/executions/{execution.id}/events"
    headers = api.headers("stream-listener-down", READER)
    recorded = list(range(1, execution.last_event_seq + 1))

    def append(event_type: str) -> int:
        with tenant_transaction(handle.id, pool=app_pool) as conn:
            return repo.append_event(conn, execution.id, event_type, "build", {"attempt": 1})

    def finish(execution_id: uuid.UUID) -> int:
        with tenant_transaction(handle.id, pool=app_pool) as conn:
            return repo.transition(conn, execution_id, "succeeded")[0].last_event_seq

    async def scenario(first: Seen, resumed: Seen) -> tuple[int, int]:
        following = asyncio.create_task(_read(api.client.app, _scope(url, headers), first))
        while first.ids != recorded and not following.done():  # the feed has read what was recorded
            await asyncio.sleep(0.05)
        appended = await asyncio.to_thread(append, "step_started")
        # A client that reconnects after the append, from the last event it had, joins the same feed.
        resuming = {**headers, "Last-Event-ID": str(recorded[-1])}
        reconnected = asyncio.create_task(_read(api.client.app, _scope(url, resuming), resumed))
        while not (appended in first.ids and appended in resumed.ids) and not (following.done() or reconnected.done()):
            await asyncio.sleep(0.05)
        # The execution ends, so that both streams end after its terminal event, not at their own end.
        terminal = await asyncio.to_thread(finish, execution.id)
        await asyncio.gather(following, reconnected)
        return appended, terminal

    first, resumed = Seen(), Seen()
    assert api.client.portal is not None
    appended, terminal = api.client.portal.call(scenario, first, resumed)

    assert listener_down.connections == 0 and not listener_down.listening.is_set()
    assert first.status == 200 and resumed.status == 200, (first.body[:300], resumed.body[:300])
    assert first.ids == [*recorded, appended, terminal], first.body[-600:]
    assert resumed.ids == [appended, terminal], resumed.body[-600:]
