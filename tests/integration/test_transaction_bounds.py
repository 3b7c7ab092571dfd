# intent_ref: platform.database
"""Every app transaction runs under a statement_timeout and an idle_in_transaction_session_timeout (ADR 0043): a
transaction left idle is ended by the server, its locks released and its pooled connection replaced; a statement past
its bound is cancelled; either answers a request with a problem document, 503. What legitimately waits long (a lease
long poll, the relay's send) holds no statement open meanwhile and still works under bounds far below its wait."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.api.problems import DEPENDENCY_RETRY_AFTER_S, PROBLEM_JSON, error_response
from shared.config import Settings
from shared.db import session, tenant_locks
from shared.db.pool import build_pool
from shared.db.session import (
    IdleTransactionEndedError,
    bounded_lock_waits,
    platform_transaction,
    tenant_transaction,
)
from shared.events.outbox import enqueue
from shared.events.publisher import OutboundEvent
from shared.events.relay import relay_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

SMALL_MS = 300
"""The bound a test sets in place of minutes."""
WAIT_MS = 20_000
"""How long a test's own lock wait may last: without the idle bound the holder never lets go, and this fails it."""


@pytest.fixture
def one_connection(pg: Any) -> Iterator[ConnectionPool[Any]]:
    """A pool of one qp_app connection: the next borrower gets what the last one left, or its replacement."""
    settings = Settings(
        QP_DATABASE_URL=pg.app_url,
        QP_DATABASE_CONTROL_URL=pg.control_url,
        QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true",
    )
    pool = build_pool(pg.app_url, settings, min_size=1, max_size=1, name="bounds-test")
    yield pool
    pool.close()


def _answer(exc: BaseException) -> tuple[int, str, str | None]:
    """The status, media type and Retry-After a request that raised `exc` is answered with."""
    response = error_response(exc, instance="/api/v1/test", request_id="bounds-test")
    return response.status_code, response.media_type or "", response.headers.get("Retry-After")


def test_each_transaction_gets_its_logins_bounds_whatever_an_earlier_one_set(
    one_connection: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    with tenant_transaction(tenant, pool=one_connection) as conn:
        # Plain SETs outlive their transaction: SQL in it could lift the bounds of every later borrower.
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET idle_in_transaction_session_timeout = 0")
    shown = (
        "SELECT current_setting('statement_timeout') AS s, current_setting('idle_in_transaction_session_timeout') AS i"
    )
    with tenant_transaction(tenant, pool=one_connection) as conn:
        assert conn.execute(shown).fetchone() == {"s": "1min", "i": "5min"}
    with platform_transaction(pool=control_pool) as conn:
        assert conn.execute(shown).fetchone() == {"s": "10min", "i": "5min"}
    # Transaction-local: the session itself keeps no bound of the transaction's.
    with one_connection.connection() as conn:
        assert conn.execute(shown).fetchone() == {"s": "0", "i": "0"}


def test_a_transaction_left_idle_is_ended_its_locks_released_and_its_connection_replaced(
    monkeypatch: pytest.MonkeyPatch,
    pg: Any,
    one_connection: ConnectionPool[Any],
    app_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    monkeypatch.setattr(session, "IDLE_IN_TRANSACTION_TIMEOUT_MS", SMALL_MS)
    tenant = new_tenant()
    with pytest.raises(IdleTransactionEndedError) as ended:
        with tenant_transaction(tenant, pool=one_connection) as conn:
            stuck_pid = conn.info.backend_pid
            tenant_locks.hold(conn, "executions")  # a tenant's starts wait for this row
            # While this transaction sits idle (a request stuck between statements), another session wants the row:
            # it gets it once the server has ended the idle one, not WAIT_MS later with LockNotAvailable.
            with bounded_lock_waits(WAIT_MS), tenant_transaction(tenant, pool=app_pool) as other:
                tenant_locks.hold(other, "executions")
            conn.execute("SELECT 1")  # the stuck request moves on, and learns its transaction is gone
    assert isinstance(ended.value.__cause__, psycopg.errors.IdleInTransactionSessionTimeout)
    assert _answer(ended.value) == (503, PROBLEM_JSON, str(DEPENDENCY_RETRY_AFTER_S))

    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        gone = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (stuck_pid,)).fetchone()
    assert gone == (0,)
    # The pool discarded the closed connection: its next borrower gets a new session, and the row.
    with tenant_transaction(tenant, pool=one_connection) as conn:
        assert conn.info.backend_pid != stuck_pid
        assert tenant_locks.try_hold(conn, "executions")


def test_a_statement_past_its_bound_is_cancelled_and_the_connection_serves_the_next_transaction(
    monkeypatch: pytest.MonkeyPatch,
    one_connection: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    monkeypatch.setattr(session, "STATEMENT_TIMEOUT_MS", SMALL_MS)
    tenant = new_tenant()
    with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout") as cancelled:
        with tenant_transaction(tenant, pool=one_connection) as conn:
            kept_pid = conn.info.backend_pid
            conn.execute("SELECT pg_sleep(3)")
    assert _answer(cancelled.value) == (503, PROBLEM_JSON, str(DEPENDENCY_RETRY_AFTER_S))
    with tenant_transaction(tenant, pool=one_connection) as conn:
        assert conn.info.backend_pid == kept_pid  # a cancelled statement leaves a usable session: no reconnect
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}

    # The control plane has a bound of its own; its login's transactions are bounded by it too.
    monkeypatch.setattr(session, "CONTROL_STATEMENT_TIMEOUT_MS", SMALL_MS)
    with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
        with platform_transaction(pool=control_pool) as conn:
            conn.execute("SELECT pg_sleep(3)")


class NoOrchestrations:
    """The request's Durable client: no orchestration waits on a lease poll that leases nothing."""

    async def raise_event(self, instance_id: str, name: str, data: Any = None) -> None:
        return None


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[None]:  # noqa: F811  # the fixture imported above
    api.client.app.dependency_overrides[get_durable_client] = NoOrchestrations  # type: ignore[attr-defined]
    yield
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


@pytest.mark.usefixtures("durable")
def test_a_lease_long_poll_longer_than_both_bounds_holds_no_transaction_while_it_waits(
    monkeypatch: pytest.MonkeyPatch,
    api: ApiHarness,  # noqa: F811  # the fixture imported above
) -> None:
    monkeypatch.setattr(session, "IDLE_IN_TRANSACTION_TIMEOUT_MS", SMALL_MS)
    monkeypatch.setattr(session, "STATEMENT_TIMEOUT_MS", SMALL_MS)
    api.provision("long-poll")
    body = {"actions": [f"nothing-queued-{uuid.uuid4().hex[:6]}"], "max_items": 1, "wait_s": 1.5}
    answer = api.client.post("/api/v1/work/lease", json=body, headers=api.headers("long-poll", ["Module.Worker"]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


class SlowPublisher:
    """An Event Hubs send that takes longer than the statement bound (a slow hub, a first token)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.sent: list[OutboundEvent] = []

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        time.sleep(self.delay_s)
        self.sent.extend(events)

    def close(self) -> None:
        pass


@pytest.mark.usefixtures("process_pools")
def test_the_relays_send_inside_its_transaction_counts_against_the_idle_bound_not_the_statement_bound(
    monkeypatch: pytest.MonkeyPatch, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    monkeypatch.setattr(session, "STATEMENT_TIMEOUT_MS", SMALL_MS)
    tenant = new_tenant()
    with tenant_transaction(tenant, pool=app_pool) as conn:
        event_id = enqueue(conn, "thing.created", "things/1", {"n": 1})
    publisher = SlowPublisher(delay_s=3 * SMALL_MS / 1000)
    assert relay_tenant(tenant, publisher, pool=app_pool) == 1
    assert [event.body["id"] for event in publisher.sent] == [str(event_id)]
