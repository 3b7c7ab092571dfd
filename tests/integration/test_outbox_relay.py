# intent_ref: platform.events
"""The outbox relay on the real database: at least once, once per run, per-tenant keys, no cross-tenant reads."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, tenant_transaction
from shared.events.outbox import enqueue
from shared.events.publisher import OutboundEvent
from shared.events.relay import PLATFORM_EVENTS_HUB, pending_tenants, relay_pending, relay_tenant

# relay_pending takes one pool for both of its transactions; the process-wide pools give each its own login.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


class Recorder:
    """A publisher that keeps what it was given; it can be slow, or fail after the send (a lost acknowledgement)."""

    def __init__(self, *, delay: float = 0.0, fail_after_send: bool = False) -> None:
        self.sent: list[tuple[str, OutboundEvent]] = []
        self.delay = delay
        self.fail_after_send = fail_after_send
        self._lock = threading.Lock()

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        with self._lock:
            self.sent.extend((hub, event) for event in events)
        time.sleep(self.delay)
        if self.fail_after_send:
            raise ConnectionError("the connection dropped after the events were sent")

    def close(self) -> None:
        pass

    def ids(self, tenant_id: uuid.UUID | None = None) -> list[str]:
        with self._lock:
            return [e.body["id"] for _, e in self.sent if tenant_id is None or e.partition_key == str(tenant_id)]


@pytest.fixture
def tenants(new_tenant: Callable[[], uuid.UUID]) -> tuple[uuid.UUID, uuid.UUID]:
    return new_tenant(), new_tenant()


# A tenant whose send failed backs off (migration 0054, tests/integration/test_relay_backoff.py): left so, its events
# stay out of the drain until its backoff has passed, and then go in the middle of a later test.
_FORGET_DEFERRALS = "DELETE FROM control.relay_deferrals"
_BACKOFF_PASSED = "UPDATE control.relay_deferrals SET retry_at = failed_at WHERE tenant_id = %s"


def _drain() -> None:
    with platform_transaction() as conn:
        conn.execute(_FORGET_DEFERRALS)
    relay_pending(lambda: Recorder(), max_rounds=100)


@pytest.fixture(autouse=True)
def drained(app_pool: ConnectionPool[Any]) -> Iterator[None]:
    """Start each test with nothing waiting (other modules of the session leave events behind), and leave nothing."""
    _drain()
    yield
    _drain()


def _enqueue(pool: ConnectionPool[Any], tenant_id: uuid.UUID, count: int, kind: str = "thing.created") -> list[str]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return [str(enqueue(conn, kind, f"things/{n}", {"n": n})) for n in range(count)]


def _unpublished(pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> int:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute("SELECT count(*) AS n FROM app.outbox WHERE published_at IS NULL").fetchone()
        assert row is not None
        return int(row["n"])


def test_events_are_relayed_once_in_order_and_a_second_run_sends_nothing(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant = tenants[0]
    ids = _enqueue(app_pool, tenant, 5)
    recorder = Recorder()
    first = relay_pending(lambda: recorder, batch_size=2)
    assert (first.published, first.failed_tenants) == (5, 0)
    assert recorder.ids(tenant) == ids  # in the order they were recorded, over several batches
    hub, event = recorder.sent[0]
    assert hub == PLATFORM_EVENTS_HUB
    assert event.body["type"] == "thing.created" and event.body["subject"] == "things/0"
    assert event.body["data"] == {"n": 0} and event.body["tenant_id"] == str(tenant) and event.body["time"]
    assert dict(event.properties) == {
        "event_id": ids[0],
        "event_type": "thing.created",
        "tenant_id": str(tenant),
        "subject": "things/0",
    }
    assert _unpublished(app_pool, tenant) == 0

    again = Recorder()
    second = relay_pending(lambda: again)
    assert (second.published, again.sent) == (0, [])


def test_a_send_whose_acknowledgement_is_lost_goes_again_with_the_same_ids(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant = tenants[0]
    ids = _enqueue(app_pool, tenant, 3)
    lost = Recorder(fail_after_send=True)
    result = relay_pending(lambda: lost)
    assert (result.published, result.failed_tenants) == (0, 1)
    assert lost.ids(tenant) == ids  # they did reach the hub...
    assert _unpublished(app_pool, tenant) == 3  # ...but were not marked, so they go again

    with platform_transaction() as conn:
        conn.execute(_BACKOFF_PASSED, (tenant,))  # once the tenant's backoff has passed
    retry = Recorder()
    assert relay_pending(lambda: retry).published == 3
    assert retry.ids(tenant) == ids  # same event ids: a consumer drops the duplicates
    assert _unpublished(app_pool, tenant) == 0


def test_each_tenant_is_its_own_partition_key_and_one_tenants_failure_spares_the_other(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    ids_a, ids_b = _enqueue(app_pool, a, 2), _enqueue(app_pool, b, 3)
    recorder = Recorder()
    assert relay_pending(lambda: recorder).published == 5
    keys = {
        event.body["id"]: (event.partition_key, event.properties["tenant_id"], event.body["tenant_id"])
        for _, event in recorder.sent
    }
    assert {keys[i] for i in ids_a} == {(str(a), str(a), str(a))}
    assert {keys[i] for i in ids_b} == {(str(b), str(b), str(b))}

    class FailsForA(Recorder):
        def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
            if any(event.partition_key == str(a) for event in events):
                raise ConnectionError("tenant a's send failed")
            super().publish(hub, events)

    _enqueue(app_pool, a, 1)
    later_b = _enqueue(app_pool, b, 1)
    partial = FailsForA()
    result = relay_pending(lambda: partial)
    assert (result.published, result.failed_tenants, partial.ids()) == (1, 1, later_b)
    assert (_unpublished(app_pool, a), _unpublished(app_pool, b)) == (1, 0)


def test_two_relays_at_once_never_send_the_same_events(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    ids = _enqueue(app_pool, tenants[0], 6) + _enqueue(app_pool, tenants[1], 6)
    recorder = Recorder(delay=0.3)  # long enough for the runs to overlap on both tenants
    runs = [
        threading.Thread(target=relay_pending, args=(lambda: recorder,), kwargs={"batch_size": 3}) for _ in range(3)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert Counter(recorder.ids()) == Counter(ids)  # every event, each exactly once


def test_relaying_one_tenant_touches_only_its_rows(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    _enqueue(app_pool, a, 2)
    _enqueue(app_pool, b, 2)
    recorder = Recorder()
    assert relay_tenant(a, recorder, pool=app_pool) == 2
    assert {event.partition_key for _, event in recorder.sent} == {str(a)}
    assert (_unpublished(app_pool, a), _unpublished(app_pool, b)) == (0, 2)


def test_a_tenant_transaction_neither_sees_nor_marks_another_tenants_events(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    ids_b = _enqueue(app_pool, b, 2)
    with tenant_transaction(a, pool=app_pool) as conn:
        seen = conn.execute(
            "SELECT id FROM app.outbox WHERE id = ANY(%s) OR tenant_id = %s", ([uuid.UUID(i) for i in ids_b], b)
        ).fetchall()
        marked = conn.execute("UPDATE app.outbox SET published_at = now() WHERE tenant_id = %s", (b,)).rowcount
    assert (seen, marked) == ([], 0)
    assert _unpublished(app_pool, b) == 2
    # Only published_at is writable: an event's content cannot be rewritten, not even the tenant's own.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(b, pool=app_pool) as conn:
        conn.execute("UPDATE app.outbox SET data = '{}'::jsonb")


def test_the_pending_tenants_function_answers_tenant_ids_and_nothing_else(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], pg: Any, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    _enqueue(app_pool, a, 2)
    assert pending_tenants(100, pool=control_pool) == [a]  # b has nothing waiting
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        result, definer, config = conn.execute(
            "SELECT pg_get_function_result(p.oid), p.prosecdef, p.proconfig FROM pg_proc p"
            " WHERE p.oid = 'app.outbox_pending_tenants(integer)'::regprocedure"
        ).fetchone()  # type: ignore[misc]
    assert (result, definer, config) == ("SETOF uuid", True, ['search_path=""'])
    # The control plane reaches the ids through the function only, never the rows; the runtime role not at all.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), platform_transaction(pool=control_pool) as conn:
        conn.execute("SELECT tenant_id FROM app.outbox")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(a, pool=app_pool) as conn:
        conn.execute("SELECT * FROM app.outbox_pending_tenants(10)")
    # Nor can the runtime login become the control plane to call it (ADR 0018).
    with pytest.raises(psycopg.errors.InsufficientPrivilege), platform_transaction(pool=app_pool) as conn:
        conn.execute("SELECT * FROM app.outbox_pending_tenants(10)")
    relay_pending(lambda: Recorder())
    assert pending_tenants(100, pool=control_pool) == []


def test_an_event_carries_the_trace_of_the_transaction_that_recorded_it(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    tenant = tenants[0]
    context = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1))
    with trace.use_span(NonRecordingSpan(context)):
        traced = _enqueue(app_pool, tenant, 1)
    untraced = _enqueue(app_pool, tenant, 1)
    recorder = Recorder()
    relay_pending(lambda: recorder)
    properties = {event.body["id"]: dict(event.properties) for _, event in recorder.sent}
    assert properties[traced[0]]["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert "traceparent" not in properties[untraced[0]]


def test_an_event_that_commits_late_is_not_overtaken_by_one_recorded_after_it(
    app_pool: ConnectionPool[Any], tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    # The first event's transaction began first but committed last: the relay sent the second one, then the first.
    tenant = tenants[0]
    with psycopg.connect(app_pool.conninfo, autocommit=True) as first_conn:
        first = first_conn.transaction()
        first.__enter__()
        first_conn.execute("SET LOCAL ROLE qp_runtime")
        first_conn.execute("SELECT app.pin_tenant(%s)", (tenant,))
        early = str(
            first_conn.execute(
                "INSERT INTO app.outbox (tenant_id, event_type, subject, data) VALUES (%s, 'thing.created',"
                " 'things/early', '{}') RETURNING id",
                (tenant,),
            ).fetchone()[0]  # type: ignore[index]
        )
        (late,) = _enqueue(app_pool, tenant, 1)  # recorded after it, committed before it
        recorder = Recorder()
        relay_pending(lambda: recorder)
        assert recorder.ids(tenant) == []  # held until the older transaction has ended
        first.__exit__(None, None, None)
    relay_pending(lambda: recorder)
    assert recorder.ids(tenant) == [early, late]


def test_a_tenant_whose_events_cannot_be_sent_is_tried_once_a_run(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Retried in every round of the run, its oldest events came first each time and every other tenant's later
    # batches waited out its send's timeout again (10 rounds: 10 timeouts).
    bad, good = new_tenant(), new_tenant()
    with tenant_transaction(bad, pool=app_pool) as conn:
        enqueue(conn, "execution.started", "executions/x", {"n": 0})
    with tenant_transaction(good, pool=app_pool) as conn:
        for n in range(5):
            enqueue(conn, "execution.started", "executions/y", {"n": n})
    sends: Counter[str] = Counter()

    class Publisher:
        def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
            if events[0].partition_key == str(bad):
                sends["bad"] += 1
                raise RuntimeError("send timed out")
            sends["good"] += len(events)

    result = relay_pending(Publisher, batch_size=2, pool=app_pool, control_pool=control_pool)
    assert sends == {"bad": 1, "good": 5}
    assert result.failed_tenants == 1
