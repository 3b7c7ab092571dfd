# intent_ref: platform.execution
"""An execution's events are read by size as well as by number (ADR 0031, amended 2026-12-07): one read, of a JSON page
or of a stream's feed or backlog, holds about READ_BYTES of their JSON whatever its `limit` (at least one event) and
takes from Postgres only what it returns (and the next event), and a JSON page is built and rendered off the event
loop; the pages and the stream still give every event once, in order, to the terminal one, and the Python client
follows a page shorter than its `limit` to the end.

A stream resumed past the last event (a Last-Event-ID the execution never had) starts at its last event, so it sends
what follows and the terminal event; one of an execution that has ended with nothing past where it resumes is 204 (an
EventSource stops reconnecting), or the JSON page to a client that also takes JSON."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool
from quantum_platform import Client, StaticToken
from quantum_platform.cli import _recorded_events
from starlette.concurrency import run_in_threadpool

from shared.api import event_stream
from shared.api.routers import executions as route
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_stream_bound_concurrent import _scope
from tests.integration.test_stream_stalled_clients import _client, limits  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
EVENTS = 60
OUTPUT = {"v": [{"k": 1}] * 6_000}
"""Some 48 KB of small objects as JSON, under the 64 KiB inline bound: about 1.2 MB of Python objects decoded, and an
event carries it twice (`data.output`, `result`), so a page of 500 such events took some 600 MB to answer."""
JSON = {"Accept": "application/json"}


def _recorded(api: ApiHarness, pool: ConnectionPool[Any], name: str) -> uuid.UUID:
    """An ended execution of EVENTS big step events (and its start and end) of a new tenant `name`."""
    handle = api.provision(name)
    execution = _execution(pool, handle.id, path=["running"])
    with tenant_transaction(handle.id, pool=pool) as conn:
        for index in range(EVENTS):
            repo.append_event(conn, execution.id, "step_completed", f"s{index}", {"attempt": 1, "output": OUTPUT})
        repo.transition(conn, execution.id, "succeeded")
    return execution.id


def _api_client(api: ApiHarness, name: str) -> Client:
    """The Python client, talking to the app in this process."""
    token = api.token(name, READER)
    return Client("http://testserver", credential=StaticToken(token), transport=api.client._transport)


def test_a_json_page_holds_about_a_mebibyte_whatever_its_limit_and_the_pages_hold_every_event(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    execution_id = _recorded(api, app_pool, "read-bytes-pages")
    url = f"/api/v1/executions/{execution_id}/events"
    headers = {**api.headers("read-bytes-pages", READER), **JSON}
    after, seqs, sizes = 0, [], []
    while True:
        answer = api.client.get(url, params={"after": after, "limit": route.MAX_EVENTS}, headers=headers)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        if not page["items"]:
            break
        sizes.append(len(answer.content))
        seqs += [item["seq"] for item in page["items"]]
        assert page["next_after"] == page["items"][-1]["seq"]
        after = page["next_after"]
    # Every page held at most READ_BYTES (the events' JSON as Postgres writes it is bigger than the answer's), so the
    # history (some 6 MB) came in several; every event once, in order, to the terminal one.
    assert max(sizes) <= route.READ_BYTES, sizes
    assert len(sizes) >= 5, sizes
    assert seqs == list(range(1, EVENTS + 3)) and page["status"] == "succeeded"
    # The client's listing (`qp events`) goes on past a page shorter than its limit, to the end.
    with _api_client(api, "read-bytes-pages") as client:
        listed = list(_recorded_events(client, str(execution_id), 0))
    assert [event["seq"] for event in listed] == seqs
    completed = listed[1]
    assert completed["type"] == "step_completed" and completed["result"] == completed["data"]["output"] == OUTPUT


def test_a_stream_reads_about_a_mebibyte_at_a_time_and_sends_every_event_to_the_terminal_one(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    limits: Any,  # noqa: F811  # the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits(keepalive_s=15, max_s=220)
    execution_id = _recorded(api, app_pool, "read-bytes-stream")
    reads: list[tuple[int, int]] = []
    read = route._read_stream

    def counted(tenant_id: uuid.UUID, execution: uuid.UUID, after: int, limit: int) -> Any:
        progress, events = read(tenant_id, execution, after, limit)
        reads.append((len(events), sum(len(route.event_out(event).model_dump_json()) for event in events)))
        return progress, events

    monkeypatch.setattr(route, "_read_stream", counted)
    scope = _scope(f"/api/v1/executions/{execution_id}/events", api.headers("read-bytes-stream", READER))
    scope["query_string"] = f"limit={route.MAX_EVENTS}".encode()
    assert api.client.portal is not None
    seen = api.client.portal.call(_client, api.client.app, scope)
    assert seen.status == 200 and seen.finished
    assert seen.ids == list(range(1, EVENTS + 3))
    # The feed's and the backlog's reads each held at most READ_BYTES of rendered events (or one event), asking for
    # up to 500; and a read cut by its bytes did not pass for the end of an execution that had ended.
    assert all(count == 1 or size <= route.READ_BYTES for count, size in reads), reads
    assert len(reads) >= 5, reads


def test_a_read_takes_from_postgres_only_the_events_it_returns_and_the_next(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    execution_id = _recorded(api, app_pool, "read-bytes-cost")
    stats = "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'execution_events'"
    params = {"execution_id": execution_id, "after": 0, "limit": route.MAX_EVENTS, "bytes": route.READ_BYTES}
    with tenant_transaction(api.tenants["read-bytes-cost"].id, pool=app_pool) as conn:
        before = conn.execute(stats).fetchone()
        returned = [row for row in conn.execute(route._STREAM_READ, params).fetchall() if row["seq"] is not None]
        fetched = conn.execute(stats).fetchone()
    assert before is not None and fetched is not None
    # A few of the 62 events fit a read; sizing all that `limit` allows (each of them written out as JSON to count it)
    # to return those few cost Postgres a page's worth again for each page of a client walking the history.
    assert 1 < len(returned) < EVENTS
    assert fetched["idx_tup_fetch"] - before["idx_tup_fetch"] <= len(returned) + 1


def test_concurrent_big_pages_are_built_off_the_event_loop(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    limits: Any,  # noqa: F811  # the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits(keepalive_s=15, max_s=220)  # and the tenant's requests in flight far above the five pages
    execution_id = _recorded(api, app_pool, "read-bytes-loop")
    url = f"/api/v1/executions/{execution_id}/events"
    headers = {**api.headers("read-bytes-loop", READER), **JSON}
    on_loop: list[bool] = []
    shown = route.event_out

    def watched(event: repo.ExecutionEvent) -> route.ExecutionEventOut:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return shown(event)

    monkeypatch.setattr(route, "event_out", watched)
    stalls: list[float] = []
    done = threading.Event()

    async def ticker() -> None:
        # How long the loop went without running this, each time.
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            stalls.append(time.monotonic() - last)
            last = time.monotonic()

    assert api.client.portal is not None
    ticking = api.client.portal.start_task_soon(ticker)

    def page() -> int:
        answer = api.client.get(url, params={"limit": route.MAX_EVENTS}, headers=headers)
        assert answer.status_code == 200, answer.text
        return len(answer.content)

    try:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            sizes = list(pool.map(lambda _: page(), range(5)))
    finally:
        done.set()
        ticking.result(timeout=10)
    assert all(size <= route.READ_BYTES for size in sizes), sizes
    # Every event of every page was shown (validated, then rendered with its page) on a worker thread, never on the
    # loop that serves every other request of the process.
    assert on_loop and not any(on_loop), on_loop.count(True)
    # A generous guard only (the review saw the loop held 12.6 s of 18, 1.16 s at a time; here some 0.02 to 0.5 s,
    # the longest a full garbage collection of the process, which holds every thread): what shows that the pages are
    # built off the loop is the assertion above, and what bounds their cost is their size.
    assert stalls and max(stalls) < 2.0, max(stalls)


def test_a_stream_resumed_past_the_last_event_sends_what_follows_and_the_terminal_event(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    limits: Any,  # noqa: F811  # the fixture imported above
) -> None:
    limits(keepalive_s=1, max_s=8)  # without the fix the stream waits past event 50 to its end: no events
    handle = api.provision("resumed-past-last")
    execution = _execution(app_pool, handle.id, path=["running"])  # event 1
    headers = {**api.headers("resumed-past-last", READER), "Last-Event-ID": "50"}
    scope = _scope(f"/api/v1/executions/{execution.id}/events", headers)

    def finish() -> None:
        with tenant_transaction(handle.id, pool=app_pool) as conn:
            repo.append_event(conn, execution.id, "step_completed", "s", {"attempt": 1, "output": {"ok": True}})
            repo.transition(conn, execution.id, "succeeded")

    async def scenario() -> Any:
        reading = asyncio.create_task(_client(api.client.app, scope))
        await asyncio.sleep(0.5)  # the stream is open and waiting
        await run_in_threadpool(finish)
        return await reading

    assert api.client.portal is not None
    seen = api.client.portal.call(scenario)
    assert seen.status == 200 and seen.finished
    assert seen.ids == [2, 3]


def test_an_ended_stream_resumed_at_or_past_its_end_is_204_or_the_json_page(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    handle = api.provision("resumed-at-end")
    execution = _execution(app_pool, handle.id, path=["running", "succeeded"])  # events 1 and 2
    url = f"/api/v1/executions/{execution.id}/events"
    stream = {**api.headers("resumed-at-end", READER), "Accept": event_stream.MEDIA_TYPE}
    for last in ("2", "50"):
        answer = api.client.get(url, headers={**stream, "Last-Event-ID": last})
        assert (answer.status_code, answer.content) == (204, b""), answer.text
    answer = api.client.get(url, params={"after": 2}, headers=stream)
    assert answer.status_code == 204
    # Before the end it still streams, to the terminal event.
    answer = api.client.get(url, headers={**stream, "Last-Event-ID": "1"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(event_stream.MEDIA_TYPE)
    assert b"id: 2\n" in answer.content
    # A client that takes JSON too (the Python client does) gets the page saying the run ended, and stops.
    both = {**stream, "Accept": "text/event-stream, application/json;q=0.9", "Last-Event-ID": "50"}
    answer = api.client.get(url, headers=both)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json()["status"] == "succeeded" and answer.json()["items"] == []
    with _api_client(api, "resumed-at-end") as client:
        assert list(client.stream(url, after=2)) == []


AFTER, LATER = 300, 310


def _write_later(pool: ConnectionPool[Any], tenant: uuid.UUID, execution_id: uuid.UUID) -> threading.Thread:
    """A thread that, half a second on, records LATER step events and the execution's end."""

    def write() -> None:
        time.sleep(0.5)
        for index in range(LATER):
            with tenant_transaction(tenant, pool=pool) as conn:
                repo.append_event(conn, execution_id, "step_completed", f"s{index}", {"attempt": 1, "output": {}})
        with tenant_transaction(tenant, pool=pool) as conn:
            repo.transition(conn, execution_id, "succeeded")

    return threading.Thread(target=write)


def test_a_stream_asked_for_events_after_a_number_past_the_end_sends_only_those(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    limits: Any,  # noqa: F811  # the fixture imported above
) -> None:
    # `after` is the client's own ask (the Python client resumes with it): only a Last-Event-ID past the end, a number
    # no event had, is moved back to the last event.
    limits(keepalive_s=1, max_s=30)
    handle = api.provision("after-past-end")
    execution = _execution(app_pool, handle.id, path=["running"])  # event 1
    scope = _scope(f"/api/v1/executions/{execution.id}/events", api.headers("after-past-end", READER))
    scope["query_string"] = f"after={AFTER}".encode()
    writer = _write_later(app_pool, handle.id, execution.id)

    async def scenario() -> Any:
        reading = asyncio.create_task(_client(api.client.app, scope))
        await asyncio.sleep(0.2)
        writer.start()
        return await reading

    assert api.client.portal is not None
    seen = api.client.portal.call(scenario)
    writer.join()
    assert seen.status == 200 and seen.finished
    assert seen.ids == list(range(AFTER + 1, LATER + 3))


def test_the_client_following_after_a_number_past_the_end_gets_the_events_above_it(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    limits: Any,  # noqa: F811  # the fixture imported above
) -> None:
    limits(keepalive_s=1, max_s=30)
    handle = api.provision("after-past-end-client")
    execution = _execution(app_pool, handle.id, path=["running"])  # event 1
    writer = _write_later(app_pool, handle.id, execution.id)
    writer.start()
    with _api_client(api, "after-past-end-client") as client:
        seqs = [event["seq"] for event in client.stream(f"/api/v1/executions/{execution.id}/events", after=AFTER)]
    writer.join()
    assert seqs == list(range(AFTER + 1, LATER + 3))
