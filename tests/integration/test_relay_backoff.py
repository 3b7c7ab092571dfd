# intent_ref: platform.events
"""A tenant whose publish failed for a reason of its own (its partition not answering) backs off: no run, of any
instance, tries it again before its backoff has passed, so the other tenants' events wait behind its deadline at most
once per backoff, not in every run. The backoff doubles with each failure in a row up to its cap, a publish that goes
clears it, and it lives in the control plane (`control.relay_deferrals`), which every instance shares and a restart
keeps."""

from __future__ import annotations

import importlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.db.pool import build_control_pool, build_pool
from shared.db.session import platform_transaction, tenant_transaction
from shared.events import relay
from shared.events.publisher import (
    OutboundEvent,
    PartitionTimeoutError,
    PublishLinkError,
    PublishTimeoutError,
)
from shared.events.relay import relay_pending
from shared.tenants.offboarding import erase_tenant
from tests.integration.conftest import _settings
from tests.integration.test_outbox_relay import _enqueue, _unpublished
from tests.integration.test_relay_deadline import _Kept

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


class _Partitions:
    """A publisher whose publishes to the `down` tenants fail with `error` (their partition does not answer); it keeps
    the tenant of every publish it was asked for, failed or not."""

    def __init__(self, down: set[uuid.UUID] | None = None, error: type[Exception] = PartitionTimeoutError) -> None:
        self.down = {str(tenant) for tenant in down or set()}
        self.error = error
        self.tried: list[str | None] = []
        self._lock = threading.Lock()

    def publish(self, hub: str, events: Sequence[OutboundEvent], *, timeout: float | None = None) -> None:
        key = events[0].partition_key
        with self._lock:
            self.tried.append(key)
        if key in self.down:
            raise self.error(f"{hub}: not sent by its deadline: the partition did not answer")

    def close(self) -> None:
        pass


def forget_deferrals(control_pool: ConnectionPool[Any]) -> None:
    """No tenant backing off: one left by an earlier test would keep its events from the next tests' drain, and send
    them in the middle of a later test once its backoff had passed."""
    with platform_transaction(pool=control_pool) as conn:
        conn.execute("DELETE FROM control.relay_deferrals")


def backoff_passed(control_pool: ConnectionPool[Any], *tenants: uuid.UUID) -> None:
    """The tenants' backoffs over, as time would end them: their failures' time and count stay as they were."""
    with platform_transaction(pool=control_pool) as conn:
        conn.execute(
            "UPDATE control.relay_deferrals SET retry_at = failed_at WHERE tenant_id = ANY(%s)", (list(tenants),)
        )


def _deferral(control_pool: ConnectionPool[Any], tenant: uuid.UUID) -> tuple[int, float] | None:
    """The tenant's failures in a row and its backoff in seconds, or None when it is not deferred."""
    with platform_transaction(pool=control_pool) as conn:
        row = conn.execute(
            "SELECT failures, extract(epoch FROM retry_at - failed_at)::float8 AS backoff"
            " FROM control.relay_deferrals WHERE tenant_id = %s",
            (tenant,),
        ).fetchone()
    return None if row is None else (int(row["failures"]), float(row["backoff"]))


@pytest.fixture(autouse=True)
def drained(app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]) -> Iterator[None]:
    forget_deferrals(control_pool)
    relay_pending(_Kept, max_rounds=100)
    yield
    forget_deferrals(control_pool)
    relay_pending(_Kept, max_rounds=100)


def test_a_tenant_whose_partition_timed_out_is_not_tried_again_within_its_backoff_while_others_go(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)  # the oldest waiting event: its tenant comes first
    _enqueue(app_pool, other, 1)
    publisher = _Partitions(down={stuck})
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
    relay_pending(lambda: _Partitions(down={stuck}))
    _enqueue(app_pool, other, 1)
    publisher = _Partitions(down={stuck})
    relay_pending(lambda: publisher, max_tenants=1)  # the tenant backing off waits longest
    assert publisher.tried == [str(other)]
    assert _unpublished(app_pool, other) == 0


def test_a_second_instance_honours_the_deferral_another_recorded(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)
    _enqueue(app_pool, other, 1)
    relay_pending(lambda: _Partitions(down={stuck}))
    # Another instance, or this one restarted: nothing of the first run is left in the process, and the second run
    # has pools of its own.
    importlib.reload(relay)
    _enqueue(app_pool, other, 1)
    tenant_pool = build_pool(pg.app_url, _settings(pg), min_size=1)
    control = build_control_pool(pg.control_url, _settings(pg))
    try:
        publisher = _Partitions()  # its partition answers there: only the backoff keeps it back
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
    publisher = _Partitions(down={stuck})
    backoffs: list[tuple[int, float] | None] = []
    for _ in range(7):
        relay_pending(lambda: publisher)
        relay_pending(lambda: publisher)  # within the backoff: not tried
        backoffs.append(_deferral(control_pool, stuck))
        backoff_passed(control_pool, stuck)
    assert publisher.tried == [str(stuck)] * 7
    assert backoffs == [(1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 480.0), (6, 900.0), (7, 900.0)]
    assert (relay.RELAY_BACKOFF_S, relay.RELAY_BACKOFF_MAX_S) == (30.0, 900.0)


def test_a_publish_that_goes_clears_the_backoff_and_the_tenant_takes_its_place_again(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    stuck, other = new_tenant(), new_tenant()
    _enqueue(app_pool, stuck, 1)
    down = _Partitions(down={stuck})
    relay_pending(lambda: down)
    backoff_passed(control_pool, stuck)
    relay_pending(lambda: down)
    assert _deferral(control_pool, stuck) == (2, 60.0)
    backoff_passed(control_pool, stuck)
    answering = _Partitions()
    assert relay_pending(lambda: answering).published == 1
    assert answering.tried == [str(stuck)]
    assert _deferral(control_pool, stuck) is None
    # Its new events go in their order of waiting again, not after every other tenant's.
    _enqueue(app_pool, stuck, 1)
    _enqueue(app_pool, other, 1)
    relay_pending(lambda: answering)
    assert answering.tried[1:] == [str(stuck), str(other)]
    # And its next failure backs off from the start.
    _enqueue(app_pool, stuck, 1)
    relay_pending(lambda: down)
    assert _deferral(control_pool, stuck) == (1, 30.0)


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
    relay_pending(lambda: _Partitions(down={tenant}, error=error))
    assert _deferral(control_pool, tenant) is None
    _enqueue(app_pool, later, 1)
    publisher = _Partitions()
    relay_pending(lambda: publisher)
    assert publisher.tried == [str(tenant), str(later)]  # at once, in its place


def test_no_tenant_role_reaches_the_deferrals(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], pg: Any, new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _enqueue(app_pool, tenant, 1)
    relay_pending(lambda: _Partitions(down={tenant}))
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
    def list_blobs(self, *, name_starts_with: str) -> list[Any]:
        return []


class _NoAudit:
    def erase(self, tenant_id: uuid.UUID) -> int:
        return 0


def test_an_erased_tenants_deferral_goes_with_it(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _enqueue(app_pool, tenant, 1)
    relay_pending(lambda: _Partitions(down={tenant}))
    assert _deferral(control_pool, tenant) == (1, 30.0)
    erase_tenant(tenant, _NoBlobs(), _NoAudit())  # type: ignore[arg-type]
    assert _deferral(control_pool, tenant) is None


def test_tenants_whose_backoff_has_passed_go_after_the_others_least_recently_failed_first(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    a, b, c, fresh = new_tenant(), new_tenant(), new_tenant(), new_tenant()
    for tenant in (a, b, c):
        _enqueue(app_pool, tenant, 1)
    relay_pending(lambda: _Partitions(down={a, b, c}))  # they fail in their order of waiting: a, b, c
    backoff_passed(control_pool, b)
    relay_pending(lambda: _Partitions(down={b}))  # b fails again, last of the three now
    _enqueue(app_pool, fresh, 1)  # waiting for less long than any of them, and never failed
    backoff_passed(control_pool, a, b, c)
    publisher = _Partitions()
    assert relay_pending(lambda: publisher).published == 4
    assert publisher.tried == [str(fresh), str(a), str(c), str(b)]
    assert [_deferral(control_pool, tenant) for tenant in (a, b, c)] == [None, None, None]
