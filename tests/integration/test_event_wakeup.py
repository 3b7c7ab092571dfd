# intent_ref: platform.execution
"""The events long poll is woken by NOTIFY through one process-wide listener, which survives a dropped connection."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.api.admission import get_admission
from shared.api.routers import executions as executions_router
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import event_wakeup
from shared.engine import executions as repo
from shared.engine.event_wakeup import EventWakeup, ThreadWaiter, forget_event_wakeup, get_event_wakeup
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
NEVER_S = 600.0
"""A re-check interval (while listening) longer than any wait: only a notification can end the wait early."""
IDLE_WAIT_S = 5
"""A long poll's wait past the short re-check interval (DOWN_RECHECK_S) and up to its tenant's first look."""
SECOND_EVENT_AFTER_S = 20.0
"""If the poll has not answered by then, a second event is appended: a poll that only woke at the end of its
30 s wait answers with both, and the test fails."""


@pytest.fixture(scope="module", autouse=True)
def _tenant(api: ApiHarness) -> Iterator[None]:
    api.provision("alpha")
    yield
    forget_event_wakeup()


def _running_execution(pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> repo.Execution:
    """A running execution (its first event is seq 1), written directly."""
    intent_id = uuid.uuid4()
    with tenant_transaction(tenant_id, pool=pool) as conn:
        conn.execute(
            "INSERT INTO app.intents (tenant_id, id, name, created_by) VALUES (app.current_tenant_id(), %s, %s, 't')",
            (intent_id, f"w-{intent_id.hex[:12]}"),
        )
        conn.execute(
            "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
            " created_by) VALUES (app.current_tenant_id(), %s, 1, %s, %s, 't')",
            (intent_id, Jsonb({"target": "staging", "steps": []}), hashlib.sha256(b"{}").hexdigest()),
        )
        execution, _ = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=intent_id,
            intent_version=1,
            target="staging",
            input={},
            requester=Requester("tester", frozenset(), app_only=False),
            idempotency_key=None,
        )
        execution, _ = repo.transition(conn, execution.id, "running")
    return execution


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def _poll_while_another_connection_appends(
    api: ApiHarness, pool: ConnectionPool[Any], wakeup: EventWakeup
) -> list[tuple[int, str]]:
    """Long-poll after seq 1; once the poll waits (subscribed, permit given back), append seq 2 elsewhere."""
    tenant = api.tenants["alpha"].id
    execution = _running_execution(pool, tenant)
    gate = get_admission().gate(tenant)
    answered = threading.Event()
    failures: list[BaseException] = []

    def producer() -> None:
        try:
            _eventually(lambda: wakeup.waiter_count >= 1 and gate.in_flight == 0, "the long poll waits")
            with tenant_transaction(tenant, pool=pool) as conn:
                repo.append_event(conn, execution.id, "step_started", "build")
            if not answered.wait(SECOND_EVENT_AFTER_S):
                with tenant_transaction(tenant, pool=pool) as conn:
                    repo.append_event(conn, execution.id, "step_completed", "build")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        response = api.client.get(
            f"/api/v1/executions/{execution.id}/events",
            params={"after": 1, "wait": 30},
            headers=api.headers("alpha", READER),
        )
    finally:
        answered.set()
        thread.join()
    assert not failures, failures
    assert response.status_code == 200, response.text
    assert wakeup.waiter_count == 0  # the poll unsubscribed when it answered
    return [(e["seq"], e["type"]) for e in response.json()["items"]]


def test_a_waiting_long_poll_is_woken_by_an_append_on_another_connection(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_wakeup, "LISTENING_RECHECK_S", NEVER_S)
    wakeup = get_event_wakeup()
    assert wakeup is not None
    assert _poll_while_another_connection_appends(api, app_pool, wakeup) == [(2, "step_started")]


def test_the_listener_reconnects_after_its_connection_is_dropped(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_wakeup, "LISTENING_RECHECK_S", NEVER_S)
    wakeup = get_event_wakeup()
    assert wakeup is not None
    wakeup.start()
    _eventually(lambda: wakeup.backend_pid is not None, "the listener connects")
    dropped, before = wakeup.backend_pid, wakeup.connections
    with psycopg.connect(api.admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (dropped,))
    _eventually(
        lambda: wakeup.connections > before and wakeup.backend_pid not in (None, dropped), "the listener reconnects"
    )
    # The new connection listens: a notification, not a re-check, still ends the wait.
    assert _poll_while_another_connection_appends(api, app_pool, wakeup) == [(2, "step_started")]


def test_waiters_are_woken_when_the_listener_reconnects(api: ApiHarness) -> None:
    """Notifications sent while nobody listened are lost: a reconnect wakes every waiter to re-read."""
    wakeup = EventWakeup(lambda: psycopg.connect(api.app_url, autocommit=True), reconnect_delay_s=0.05)

    async def scenario() -> bool:
        waiter = wakeup.subscribe(uuid.uuid4())
        try:
            await asyncio.to_thread(_eventually, lambda: wakeup.backend_pid is not None, "the listener connects")
            before = wakeup.connections
            with psycopg.connect(api.admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (wakeup.backend_pid,))
            deadline = time.monotonic() + 20
            while True:
                await asyncio.wait_for(waiter.event.wait(), max(0.0, deadline - time.monotonic()))
                if wakeup.connections > before:
                    return True  # woken after the reconnect
                waiter.clear()  # the first connect's wake-up: wait for the next one
        finally:
            waiter.close()

    try:
        assert asyncio.run(scenario())
    finally:
        wakeup.stop()


def test_waiters_are_woken_when_the_listener_loses_its_connection(api: ApiHarness) -> None:
    """Notifications are lost from the moment the connection drops: every waiter is woken then (not only at the
    reconnect, which may take long or never come), reads again and from then on waits the short re-check interval,
    not the long one it was waiting out."""
    wakeup = EventWakeup(lambda: psycopg.connect(api.app_url, autocommit=True), reconnect_delay_s=NEVER_S)

    async def scenario() -> None:
        waiter = wakeup.subscribe(uuid.uuid4())
        try:
            await asyncio.wait_for(waiter.event.wait(), 20)  # the connect's wake-up
            waiter.clear()
            with psycopg.connect(api.admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (wakeup.backend_pid,))
            await asyncio.wait_for(waiter.event.wait(), 20)
        finally:
            waiter.close()

    try:
        asyncio.run(scenario())
        # Woken by the drop: no reconnect has been tried yet, and the waiters now re-read every DOWN_RECHECK_S.
        assert wakeup.connections == 1 and not wakeup.listening.is_set()
        assert event_wakeup.recheck_s(wakeup) == event_wakeup.DOWN_RECHECK_S
    finally:
        wakeup.stop()


FLAPS = 12
"""How many times the flapping listener's connection is dropped as soon as it is made."""


def test_a_flapping_listener_wakes_its_waiters_at_most_once_per_short_interval(api: ApiHarness) -> None:
    """Each wake-up is a read for every feed and long poll of the process: a listener whose connection drops as soon
    as it is made wakes its waiters for the changes at most once per DOWN_RECHECK_S, not at each connect and each
    drop (6 drops in 6 s woke a waiter 11 times)."""
    wakeup = EventWakeup(lambda: psycopg.connect(api.app_url, autocommit=True), reconnect_delay_s=0.2)

    def flap() -> None:
        with psycopg.connect(api.admin_url, autocommit=True) as admin:
            for _ in range(FLAPS):
                _eventually(lambda: wakeup.backend_pid is not None, "the listener connects")
                admin.execute("SELECT pg_terminate_backend(%s)", (wakeup.backend_pid,))
                _eventually(lambda: wakeup.backend_pid is None, "the listener loses its connection")

    async def scenario() -> tuple[int, float]:
        waiter = wakeup.subscribe(uuid.uuid4())
        wakeups = 0

        async def count() -> None:
            nonlocal wakeups
            while True:
                await waiter.event.wait()
                waiter.clear()
                wakeups += 1

        counting = asyncio.create_task(count())
        try:
            started = time.monotonic()
            await asyncio.to_thread(flap)
            await asyncio.to_thread(_eventually, wakeup.listening.is_set, "the listener is back")
            # What was put off comes within DOWN_RECHECK_S of the last change: counted too.
            await asyncio.sleep(event_wakeup.DOWN_RECHECK_S + 0.5)
            return wakeups, time.monotonic() - started
        finally:
            counting.cancel()
            waiter.close()

    try:
        wakeups, elapsed = asyncio.run(scenario())
    finally:
        wakeup.stop()
    assert wakeup.connections > FLAPS
    # The first connect's wake-up, then at most one per DOWN_RECHECK_S (a generous factor: a count bound).
    assert 1 <= wakeups <= 2 + 1.5 * elapsed / event_wakeup.DOWN_RECHECK_S, (wakeups, elapsed)


def test_an_idle_long_poll_reads_again_only_at_its_end_while_the_listener_listens(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the listener listens an event wakes the poll, so an idle poll does not read again every few seconds on
    its own (only after LISTENING_RECHECK_S, longer than its wait): it reads when it starts and when its wait ends."""
    wakeup = get_event_wakeup()
    assert wakeup is not None
    wakeup.start()
    _eventually(wakeup.listening.is_set, "the listener connects")
    connections = wakeup.connections
    reads: list[int] = []
    read_stream = executions_router._read_stream

    def counted(tenant_id: uuid.UUID, execution_id: uuid.UUID, after: int, limit: int) -> Any:
        reads.append(after)
        return read_stream(tenant_id, execution_id, after, limit)

    monkeypatch.setattr(executions_router, "_read_stream", counted)
    execution = _running_execution(app_pool, api.tenants["alpha"].id)
    response = api.client.get(
        f"/api/v1/executions/{execution.id}/events",
        params={"after": execution.last_event_seq, "wait": IDLE_WAIT_S},
        headers=api.headers("alpha", READER),
    )
    assert response.status_code == 200 and response.json()["items"] == [], response.text
    # It listened throughout (a lost connection or a reconnect wakes every waiter to read).
    assert wakeup.listening.is_set() and wakeup.connections == connections
    assert reads == [execution.last_event_seq] * 2, reads


def test_the_fallback_recheck_delivers_while_the_listener_is_down(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused() -> psycopg.Connection[Any]:
        raise psycopg.OperationalError("the database refuses the listener")

    down = EventWakeup(refused, reconnect_delay_s=0.2)
    monkeypatch.setattr(executions_router, "get_event_wakeup", lambda: down)
    monkeypatch.setattr(event_wakeup, "DOWN_RECHECK_S", 0.3)
    try:
        assert _poll_while_another_connection_appends(api, app_pool, down) == [(2, "step_started")]
        assert down.connections == 0 and not down.listening.is_set()
    finally:
        down.stop()


def test_an_appended_event_notifies_its_execution_and_number(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    tenant = api.tenants["alpha"].id
    execution = _running_execution(app_pool, tenant)
    with psycopg.connect(api.app_url, autocommit=True) as listener:
        listener.execute("LISTEN execution_events")
        with tenant_transaction(tenant, pool=app_pool) as conn:
            repo.append_event(conn, execution.id, "step_started", "build")
        payloads = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert payloads == [f"{execution.id}:2"]


def test_a_stop_soon_after_a_wake_up_still_wakes_the_waiters(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop ends the listening: every waiter is woken at once, to read again and then every DOWN_RECHECK_S on its
    own, even when the last wake-up for a change was less than DOWN_RECHECK_S ago (the drop's wake-up, put off by the
    rate limit, was cancelled by the stop, and the waiters slept out the long re-check)."""
    # The rate limit's window longer than any wait: only the stop can wake the waiter in time.
    monkeypatch.setattr(event_wakeup, "DOWN_RECHECK_S", NEVER_S)
    wakeup = EventWakeup(lambda: psycopg.connect(api.app_url, autocommit=True), reconnect_delay_s=NEVER_S)

    async def scenario() -> None:
        waiter = wakeup.subscribe(uuid.uuid4())
        try:
            await asyncio.wait_for(waiter.event.wait(), 20)  # the connect's wake-up
            waiter.clear()
            await asyncio.to_thread(wakeup.stop)
            await asyncio.wait_for(waiter.event.wait(), 20)
        finally:
            waiter.close()

    try:
        asyncio.run(scenario())
        assert not wakeup.listening.is_set()
        assert event_wakeup.recheck_s(wakeup) == event_wakeup.DOWN_RECHECK_S
    finally:
        wakeup.stop()


def test_an_observer_sees_the_listener_made_and_forgotten_and_never_makes_one(api: ApiHarness) -> None:
    forget_event_wakeup()
    assert event_wakeup.made_event_wakeup() is None
    made = get_event_wakeup()
    assert made is not None and event_wakeup.made_event_wakeup() is made and get_event_wakeup() is made
    forget_event_wakeup()
    assert event_wakeup.made_event_wakeup() is None
    assert get_event_wakeup() is not made
    forget_event_wakeup()


def test_a_listener_forgotten_is_never_started_again_by_a_reference_taken_before(api: ApiHarness) -> None:
    """A reference to the process's listener kept past `forget_event_wakeup` (a stream that began before it) started
    it again on its next subscribe: a connection of its own that nothing would ever stop."""
    forget_event_wakeup()
    old = get_event_wakeup()
    assert old is not None
    first = old.subscribe_thread(uuid.uuid4())
    later: ThreadWaiter | None = None
    try:
        _eventually(old.listening.is_set, "the listener listens")
        connections = old.connections
        forget_event_wakeup()
        assert not old.listening.is_set()
        later = old.subscribe_thread(uuid.uuid4())
        # Long enough for a started thread to connect and listen (it did within milliseconds here).
        assert not old.listening.wait(3), "the forgotten listener listens again"
        assert old.connections == connections and old.backend_pid is None
        assert event_wakeup.recheck_s(old) == event_wakeup.DOWN_RECHECK_S  # its waiters re-read on their own
    finally:
        first.close()
        if later is not None:
            later.close()
        old.stop()
