# intent_ref: platform.events
"""A tenant whose publish failed for a reason of its own (its partition not answering) backs off: no run, of any
instance, tries it again before its backoff has passed, so the other tenants' events wait behind its deadline at most
once per backoff, not in every run. The backoff doubles with each failure in a row up to its cap, a publish that goes
clears it, and it lives in the control plane (`control.relay_deferrals`), which every instance shares and a restart
keeps."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.db.pool import build_control_pool, build_pool
from shared.db.session import IdleTransactionEndedError, platform_transaction, tenant_transaction
from shared.events import relay
from shared.events.publisher import OutboundEvent, PublishLinkError, PublishTimeoutError
from shared.events.relay import relay_pending
from shared.tenants.offboarding import erase_tenant
from tests.integration.conftest import _settings
from tests.integration.relay_harness import Partitions, backoff_passed, deferral, forget_deferrals
from tests.integration.test_offboarding import marked_for_erasure
from tests.integration.test_outbox_relay import _enqueue, _unpublished

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


@pytest.fixture(autouse=True)
def drained(app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]) -> Iterator[None]:
    forget_deferrals(control_pool)
    relay_pending(Partitions, max_rounds=100)
    yield
    forget_deferrals(control_pool)
    relay_pending(Partitions, max_rounds=100)


def test_a_tenant_whose_partition_timed_out_is_not_tried_again_within_its_backoff_while_others_go(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)  # the oldest waiting event: its tenant comes first
    _enqueue(app_pool, other, 1)
    publisher = Partitions(down={stuck})
    relay_pending(lambda: publisher)
    assert publisher.tried == [str(stuck), str(other)]
    for _ in range(3):  # the timer's next runs, each with new events of the other tenant
        _enqueue(app_pool, other, 1)
        relay_pending(lambda: publisher)
    assert publisher.tried[2:] == [str(other)] * 3, (
        "the tenant whose partition timed out was tried again in a run within its backoff: every run ended with its"
        " deadline, and the other tenants' new events waited for it"
    )
    assert (_unpublished(app_pool, stuck), _unpublished(app_pool, other)) == (1, 0)


def test_tenants_backing_off_do_not_take_the_places_of_the_tenants_a_run_relays(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)
    relay_pending(lambda: Partitions(down={stuck}))
    _enqueue(app_pool, other, 1)
    publisher = Partitions(down={stuck})
    relay_pending(lambda: publisher, max_tenants=1)  # the tenant backing off waits longest
    assert publisher.tried == [str(other)]
    assert _unpublished(app_pool, other) == 0


def test_a_second_instance_honours_the_deferral_another_recorded(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)
    _enqueue(app_pool, other, 1)
    relay_pending(lambda: Partitions(down={stuck}))
    # Another instance, or this one restarted: nothing of the first run is left in the process, and the second run
    # has pools of its own.
    importlib.reload(relay)
    _enqueue(app_pool, other, 1)
    tenant_pool = build_pool(pg.app_url, _settings(pg), min_size=1)
    control = build_control_pool(pg.control_url, _settings(pg))
    try:
        publisher = Partitions()  # its partition answers there: only the backoff keeps it back
        relay.relay_pending(lambda: publisher, pool=tenant_pool, control_pool=control)
    finally:
        tenant_pool.close()
        control.close()
    assert publisher.tried == [str(other)], (
        "the other instance tried the tenant within the backoff the first one recorded: the deferral was the first"
        " instance's alone"
    )
    assert (_unpublished(app_pool, stuck), _unpublished(app_pool, other)) == (1, 0)


def test_the_backoff_doubles_with_each_failure_in_a_row_up_to_its_cap(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck = new_tenant()
    _enqueue(app_pool, stuck, 1)
    publisher = Partitions(down={stuck})
    backoffs: list[tuple[int, float] | None] = []
    for _ in range(7):
        relay_pending(lambda: publisher)
        relay_pending(lambda: publisher)  # within the backoff: not tried
        backoffs.append(deferral(control_pool, stuck))
        backoff_passed(control_pool, stuck)
    assert publisher.tried == [str(stuck)] * 7
    assert backoffs == [(1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 480.0), (6, 900.0), (7, 900.0)]
    assert (relay.RELAY_BACKOFF_S, relay.RELAY_BACKOFF_MAX_S) == (30.0, 900.0)


def test_a_publish_that_goes_clears_the_backoff_and_the_tenant_takes_its_place_again(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)
    down = Partitions(down={stuck})
    relay_pending(lambda: down)
    backoff_passed(control_pool, stuck)
    relay_pending(lambda: down)
    assert deferral(control_pool, stuck) == (2, 60.0)
    backoff_passed(control_pool, stuck)
    answering = Partitions()
    assert relay_pending(lambda: answering).published == 1
    assert answering.tried == [str(stuck)]
    assert deferral(control_pool, stuck) is None
    # Its new events go in their order of waiting again, not after every other tenant's.
    _enqueue(app_pool, stuck, 1)
    _enqueue(app_pool, other, 1)
    relay_pending(lambda: answering)
    assert answering.tried[1:] == [str(stuck), str(other)]
    # And its next failure backs off from the start.
    _enqueue(app_pool, stuck, 1)
    relay_pending(lambda: down)
    assert deferral(control_pool, stuck) == (1, 30.0)


@pytest.mark.parametrize(
    "error", [PublishLinkError, PublishTimeoutError, PoolTimeout], ids=["link-lost", "hub-timed-out", "no-connection"]
)
def test_a_failure_that_is_not_the_tenants_own_does_not_defer_it(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    error: type[Exception],
) -> None:
    tenant, later = new_tenant(), new_tenant()
    _enqueue(app_pool, tenant, 1)
    relay_pending(lambda: Partitions(down={tenant}, error=error))
    assert deferral(control_pool, tenant) is None
    _enqueue(app_pool, later, 1)
    publisher = Partitions()
    relay_pending(lambda: publisher)
    assert publisher.tried == [str(tenant), str(later)]  # at once, in its place


class _EndsItsTransaction(Partitions):
    """A publisher whose hub answers, and which on its first publish has the server end the session of the relay's
    tenant transaction (an administrator's shutdown of that backend), as a restart or failover of the database would:
    the relay's statements after the send fail on a connection the server closed."""

    def __init__(self, admin_url: str, application_name: str) -> None:
        super().__init__()
        self.admin_url, self.application_name = admin_url, application_name
        self.ended = 0

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        super().publish(hub, events, timeout=timeout)
        if self.ended:
            return
        with psycopg.connect(self.admin_url, dbname="quantum", autocommit=True) as admin:
            # Waits for the backend to have exited: the relay's next statement meets a closed session.
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE application_name = %s AND state = 'idle in transaction'",
                (self.application_name,),
            ).fetchall()
        self.ended = sum(1 for (ended,) in rows if ended)


def test_a_tenant_whose_transaction_the_database_ended_is_not_deferred_and_the_run_ends(
    pg: Any, app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    _enqueue(app_pool, tenant, 1)  # the oldest waiting event: its tenant comes first
    _enqueue(app_pool, other, 1)
    name = f"relay-{uuid.uuid4().hex[:12]}"
    pool = build_pool(make_conninfo(pg.app_url, application_name=name), _settings(pg), min_size=1, max_size=1)
    publisher = _EndsItsTransaction(pg.admin_url, name)
    try:
        result = relay_pending(lambda: publisher, pool=pool, control_pool=control_pool)
    finally:
        pool.close()
    assert publisher.ended == 1
    assert deferral(control_pool, tenant) is None, (
        "the tenant was backed off for the database's failure: nothing of it was its partition's"
    )
    assert publisher.tried == [str(tenant)], (
        "the run went on after the database ended a tenant's transaction: every other tenant's meets the same database"
    )
    assert (result.published, result.failed_tenants) == (0, 1)
    assert (_unpublished(app_pool, tenant), _unpublished(app_pool, other)) == (1, 1)  # rolled back: they go again
    answering = Partitions()
    assert relay_pending(lambda: answering).published == 2
    assert answering.tried == [str(tenant), str(other)]  # at once, in its place


@pytest.mark.parametrize(
    "error",
    [
        PoolTimeout,
        psycopg.OperationalError,
        psycopg.errors.AdminShutdown,
        psycopg.errors.TooManyConnections,
    ],
    ids=["no-connection", "connection-lost", "admin-shutdown", "too-many-connections"],
)
def test_a_transient_failure_of_the_database_defers_no_tenant_and_ends_the_run(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    error: type[Exception],
) -> None:
    tenant, other = new_tenant(), new_tenant()
    _enqueue(app_pool, tenant, 1)
    _enqueue(app_pool, other, 1)
    failing = Partitions({tenant}, error=error)
    result = relay_pending(lambda: failing)
    assert deferral(control_pool, tenant) is None
    assert failing.tried == [str(tenant)]
    assert (result.published, result.failed_tenants) == (0, 1)
    answering = Partitions()
    assert relay_pending(lambda: answering).published == 2
    assert answering.tried == [str(tenant), str(other)]


@pytest.mark.parametrize(
    "error",
    [psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected],
    ids=["serialization-failure", "deadlock"],
)
def test_a_lost_transaction_defers_no_tenant_and_the_others_go(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    error: type[Exception],
) -> None:
    # One transaction's bad luck: ending the run there, a deadlock that recurred would keep every other tenant back.
    tenant, other = new_tenant(), new_tenant()
    _enqueue(app_pool, tenant, 1)
    _enqueue(app_pool, other, 1)
    failing = Partitions({tenant}, error=error)
    result = relay_pending(lambda: failing)
    assert deferral(control_pool, tenant) is None
    assert failing.tried == [str(tenant), str(other)]
    assert (result.published, result.failed_tenants) == (1, 1)
    assert (_unpublished(app_pool, tenant), _unpublished(app_pool, other)) == (1, 0)
    answering = Partitions()
    assert relay_pending(lambda: answering).published == 1
    assert answering.tried == [str(tenant)]  # at once, in its place


@pytest.mark.parametrize(
    "error",
    [IdleTransactionEndedError, psycopg.errors.OutOfMemory],
    ids=["idle-transaction-ended", "out-of-memory"],
)
def test_a_failure_its_own_publish_may_cause_again_defers_the_tenant_and_the_others_go(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    error: type[Exception],
) -> None:
    # Not the database away: its own publish outlived the idle bound, or its own batch took the memory; ending the run
    # for it, undeferred and first in the order, would end every run before any other tenant's turn.
    tenant, other = new_tenant(), new_tenant()
    _enqueue(app_pool, tenant, 1)
    _enqueue(app_pool, other, 1)
    failing = Partitions({tenant}, error=error)
    assert relay_pending(lambda: failing).published == 1
    assert failing.tried == [str(tenant), str(other)]
    assert deferral(control_pool, tenant) == (1, 30.0)


def test_a_statement_timeout_on_a_tenants_own_rows_still_defers_it_and_the_others_go(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # Not the database's as a whole: it would come back in every run and, its tenant first, end each before the others.
    tenant, other = new_tenant(), new_tenant()
    _enqueue(app_pool, tenant, 1)
    _enqueue(app_pool, other, 1)
    failing = Partitions({tenant}, error=psycopg.errors.QueryCanceled)
    assert relay_pending(lambda: failing).published == 1
    assert failing.tried == [str(tenant), str(other)]
    assert deferral(control_pool, tenant) == (1, 30.0)


def test_no_tenant_role_reaches_the_deferrals(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], pg: Any, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _enqueue(app_pool, tenant, 1)
    relay_pending(lambda: Partitions(down={tenant}))
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        definer, config = conn.execute(
            "SELECT p.prosecdef, p.proconfig FROM pg_proc p"
            " WHERE p.oid = 'app.outbox_relay_turns(integer)'::regprocedure"
        ).fetchone()  # type: ignore[misc]
    assert (definer, config) == (True, ['search_path=""'])
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute("SELECT * FROM control.relay_deferrals")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute("SELECT * FROM app.outbox_relay_turns(10)")
    # The control plane reads which tenants wait, never their rows.
    with platform_transaction(pool=control_pool) as conn:
        assert conn.execute(
            "SELECT count(*) AS n FROM control.relay_deferrals WHERE tenant_id = %s", (tenant,)
        ).fetchone() == {"n": 1}


class _NoBlobs:
    def list_blobs(self, *, name_starts_with: str, include: list[str] | None = None) -> list[Any]:
        return []


class _NoAudit:
    def erase(self, tenant_id: uuid.UUID) -> int:
        return 0


def test_an_erased_tenants_deferral_goes_with_it(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _enqueue(app_pool, tenant, 1)
    relay_pending(lambda: Partitions(down={tenant}))
    assert deferral(control_pool, tenant) == (1, 30.0)
    erase_tenant(marked_for_erasure(tenant), _NoBlobs(), _NoAudit())  # type: ignore[arg-type]
    assert deferral(control_pool, tenant) is None


def test_tenants_whose_backoff_has_passed_go_after_the_others_least_recently_failed_first(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    a, b, c, fresh = new_tenant(), new_tenant(), new_tenant(), new_tenant()
    for tenant in (a, b, c):
        _enqueue(app_pool, tenant, 1)
    relay_pending(lambda: Partitions(down={a, b, c}))  # they fail in their order of waiting: a, b, c
    backoff_passed(control_pool, b)
    relay_pending(lambda: Partitions(down={b}))  # b fails again, last of the three now
    _enqueue(app_pool, fresh, 1)  # waiting for less long than any of them, and never failed
    backoff_passed(control_pool, a, b, c)
    publisher = Partitions()
    assert relay_pending(lambda: publisher).published == 4
    assert publisher.tried == [str(fresh), str(a), str(c), str(b)]
    assert [deferral(control_pool, tenant) for tenant in (a, b, c)] == [None, None, None]
