# intent_ref: platform.tenants
"""A stalled start of a tenant erased as the sweeper starts it, on a task hub that does not answer in time: a start
cut off that the task hub applies after the sweeper's look at the tenant, and a purge whose terminate is cut off,
leave no orchestration behind for good; a later run purges what is left (ADR 0046, amended 2026-12-07), and the run
that cut the calls off is not held by the erasure's settle wait. Real database and erasure; only the orchestration
side is a stand-in."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import sweeper
from shared.engine.executions import ExecutionNotFoundError
from shared.engine.start import StartRequest, start_execution
from shared.engine.start_service import launch
from shared.tenants import erased_orchestrations
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_erase_launch_race import _suspend, _tenant_with_intent
from tests.integration.test_erase_races import _erase
from tests.integration.test_execution_sweeper import _recorded
from tests.integration.test_offboarding import _tenant_row_counts
from tests.integration.test_sweeper_hung_calls import (  # noqa: F401  # the fixture: records a test leaves go
    BOUND_S,
    GUARD_S,
    HUNG_S,
    _bounded_run,
    forget_erased_orchestrations,
)
from tests.integration.test_sweeper_relaunch_erased import _ErasedBeforeStart

pytestmark = pytest.mark.integration

LATE_S = BOUND_S + 0.5
"""How long after a start is asked for (and cut off, BOUND_S) the task hub applies it."""


class LateStart(_ErasedBeforeStart):
    """A task hub that applies a start LATE_S after it was asked for and never answers it; `before_start` (the
    tenant's erasure) runs first."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        assert instance_id is not None
        before, self.before_start = self.before_start, None
        if before is not None:
            before()
        asyncio.get_running_loop().call_later(LATE_S, self.start, instance_id)
        await asyncio.sleep(HUNG_S)
        raise AssertionError("cut off before")


class HungTerminates(_ErasedBeforeStart):
    """The erased start answered, but terminates never answered while `hangs`."""

    def __init__(self) -> None:
        super().__init__()
        self.hangs = True
        self.tried: list[str] = []

    async def terminate(self, instance_id: str, reason: str) -> None:
        if self.hangs:
            self.tried.append(instance_id)
            await asyncio.sleep(HUNG_S)
        await super().terminate(instance_id, reason)


def _record(api: ApiHarness, instance_id: uuid.UUID) -> tuple[Any, ...] | None:
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        return conn.execute(
            "SELECT tenant_id, due_at > now(), failure FROM control.erased_tenant_orchestrations"
            " WHERE instance_id = %s",
            (instance_id,),
        ).fetchone()


def _stalled_start(api: ApiHarness, app_pool: ConnectionPool[Any], client: Any, name: str) -> tuple[Any, uuid.UUID]:
    """A tenant with a stalled start whose erasure `client` runs as the start is asked for."""
    tenant, intent_id = _tenant_with_intent(api, f"{name}-{uuid.uuid4().hex[:6]}")
    stalled, _ = _recorded(app_pool, tenant.id, intent_id)
    client.before_start = lambda: _erased(api, tenant)
    return tenant, stalled


def _erased(api: ApiHarness, tenant: TenantHandle) -> None:
    _suspend(api, tenant)
    erased = _erase(api, tenant)
    assert erased.status_code == 200, erased.text


@pytest.fixture()
def durable_of(api: ApiHarness) -> Any:
    """Makes a stand-in the API's orchestration side too (the erasure purges on it)."""
    chosen: list[Any] = []
    api.client.app.dependency_overrides[get_durable_client] = lambda: chosen[0]  # type: ignore[attr-defined]

    def use(client: Any) -> Any:
        chosen.append(client)
        return client

    yield use
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


def test_a_cut_off_start_that_lands_after_its_tenants_erasure_is_purged_by_a_later_run(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, durable_of: Any
) -> None:
    # The sweeper looked at the tenant once, straight after the cut-off, and its purge found nothing; the task hub
    # then applied the start, and the orchestration, its history holding the erased tenant's input, ran on for good.
    client = durable_of(LateStart())
    tenant, stalled = _stalled_start(api, app_pool, client, "late-start")
    _bounded_run(monkeypatch, [], purge_erased=True)
    # due once the start has landed (the client's 240 s)
    monkeypatch.setattr(erased_orchestrations, "LATE_START_S", LATE_S)

    async def runs() -> tuple[sweeper.TenantSweep, dict[str, str], sweeper.SweepResult]:
        first = await sweeper.sweep_tenant(tenant.id, client, pool=app_pool)
        await asyncio.sleep(2 * LATE_S)
        landed = dict(client.instances)
        return first, landed, await sweeper.sweep(client, pool=app_pool)

    first, landed, later = asyncio.run(asyncio.wait_for(runs(), GUARD_S))

    assert client.before_start is None and first.started == 0
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0
    assert landed == {str(stalled): "Running"}  # the start the task hub applied after the sweeper's look
    assert later.purged == 1 and client.instances == {} and client.purged == [str(stalled)]
    assert _record(api, stalled) is None  # gone, so no longer looked for


def test_a_cut_off_start_of_a_tenant_still_there_is_left_to_it(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, durable_of: Any
) -> None:
    """Recorded all the same (the tenant may be erased before the start lands), the record of a tenant found there
    once it is due is dropped: its orchestration is its own, and its erasure purges it as any of its executions."""
    client = durable_of(LateStart())
    tenant, stalled = _stalled_start(api, app_pool, client, "late-start-kept")
    client.before_start = None
    _bounded_run(monkeypatch, [], purge_erased=True)

    async def first_run() -> None:
        await sweeper.sweep_tenant(tenant.id, client, pool=app_pool)
        await asyncio.sleep(2 * LATE_S)

    asyncio.run(asyncio.wait_for(first_run(), GUARD_S))
    record = _record(api, stalled)
    assert record is not None and record[:2] == (tenant.id, True)  # not due before a late start could land
    asyncio.run(asyncio.wait_for(sweeper.sweep(client, pool=app_pool), GUARD_S))
    assert _record(api, stalled) is not None and client.instances == {str(stalled): "Running"}

    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        conn.execute(
            "UPDATE control.erased_tenant_orchestrations SET due_at = now() WHERE instance_id = %s", (stalled,)
        )
    result = asyncio.run(asyncio.wait_for(sweeper.sweep(client, pool=app_pool), GUARD_S))

    assert result.purged == 0 and _record(api, stalled) is None
    assert client.instances == {str(stalled): "Running"} and client.purged == []


def test_an_erased_starts_cut_off_terminate_holds_the_run_no_settle_wait_and_is_purged_later(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
    durable_of: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its purge waited the erasure's 30 s for the orchestration to end after a terminate the bound had cut off, and
    # logged that cut-off as an instance ended meanwhile (410) or not there (404).
    client = durable_of(HungTerminates())
    tenant, stalled = _stalled_start(api, app_pool, client, "erased-hung-terminate")
    _bounded_run(monkeypatch, [], purge_erased=True)
    erasure, erasing_s = client.before_start, []

    def timed_erasure() -> None:
        began = time.monotonic()
        erasure()
        erasing_s.append(time.monotonic() - began)

    client.before_start = timed_erasure
    began = time.monotonic()
    with caplog.at_level(logging.INFO):
        result = asyncio.run(asyncio.wait_for(sweeper.sweep_tenant(tenant.id, client, pool=app_pool), GUARD_S))
    took = time.monotonic() - began - sum(erasing_s)

    assert result.started == 1 and client.tried == [str(stalled)]
    assert took < 4 * BOUND_S + 1.0
    assert client.instances == {str(stalled): "Running"}  # not terminated yet
    assert "for an erasure was not answered in time" in caplog.text and "purged as it is" not in caplog.text
    record = _record(api, stalled)
    assert record is not None and record[:2] == (tenant.id, False)  # due at once: its tenant is gone

    client.hangs = False
    later = asyncio.run(asyncio.wait_for(sweeper.sweep(client, pool=app_pool), GUARD_S))

    assert later.purged == 1 and client.instances == {} and client.purged == [str(stalled)]
    assert _record(api, stalled) is None


class LandedThenFailed(_ErasedBeforeStart):
    """A task hub that creates the instance and then fails the call (a connection reset after it; a 500, the
    client's own timeout alike); `before_start` (the tenant's erasure) runs first."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        assert instance_id is not None
        before, self.before_start = self.before_start, None
        if before is not None:
            before()
        self.start(instance_id)
        raise ConnectionResetError("Connection reset by peer")


def _due_now(api: ApiHarness, instance_id: uuid.UUID) -> None:
    """What LATE_START_S later makes of a record: due."""
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        conn.execute(
            "UPDATE control.erased_tenant_orchestrations SET due_at = now() WHERE instance_id = %s", (instance_id,)
        )


def _purged_later(api: ApiHarness, app_pool: ConnectionPool[Any], client: Any, instance_id: uuid.UUID) -> None:
    """A later run, once the record is due, terminates and purges the orchestration and drops the record."""
    _due_now(api, instance_id)
    later = asyncio.run(asyncio.wait_for(sweeper.sweep(client, pool=app_pool), GUARD_S))
    assert later.purged == 1 and client.instances == {} and client.purged == [str(instance_id)]
    assert _record(api, instance_id) is None


def test_a_failed_start_the_task_hub_applied_is_purged_once_its_tenant_is_gone(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, durable_of: Any
) -> None:
    # Only a start cut off by the bound was recorded: one that raised (a connection reset after the task hub created
    # the instance) was left pending and never looked at for an erased tenant, and its orchestration outlived it.
    client = durable_of(LandedThenFailed())
    tenant, stalled = _stalled_start(api, app_pool, client, "landed-failed")
    _bounded_run(monkeypatch, [], purge_erased=True)

    first = asyncio.run(asyncio.wait_for(sweeper.sweep_tenant(tenant.id, client, pool=app_pool), GUARD_S))

    assert client.before_start is None and first.started == 0
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0 and client.instances == {str(stalled): "Running"}
    assert _record(api, stalled) == (tenant.id, True, None)  # due once a late start could have landed
    _purged_later(api, app_pool, client, stalled)


def test_a_failed_launch_the_task_hub_applied_is_purged_once_its_tenant_is_gone(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, durable_of: Any
) -> None:
    # The request's path: its launch caught the client's error and answered (here: the execution gone with its
    # tenant) before anything looked at the tenant, so the orchestration the task hub had created outlived it.
    client = durable_of(LandedThenFailed())
    tenant, intent_id = _tenant_with_intent(api, f"launch-failed-{uuid.uuid4().hex[:6]}")
    with tenant_transaction(tenant.id, pool=app_pool) as conn:
        found = get_tenant(conn, tenant.id)
        assert found is not None
        started = start_execution(
            conn,
            found.facts(),
            StartRequest(intent_id=intent_id, input={}, requester=Requester("tester", frozenset(), app_only=False)),
            max_concurrent=1000,
            authorize=lambda _item: None,
        )
    _erased(api, tenant)
    _bounded_run(monkeypatch, [], purge_erased=True)

    with pytest.raises(ExecutionNotFoundError):
        asyncio.run(launch(client, started, tenant.id))

    launched = started.execution.id
    assert client.instances == {str(launched): "Running"}
    assert _record(api, launched) == (tenant.id, True, None)
    _purged_later(api, app_pool, client, launched)


class FailsAfterRows(_ErasedBeforeStart):
    """The erasure's orchestration side: its first purge finds no orchestration, which starts right after (a start
    accepted before the suspension); its purge after the rows fails while `fails`."""

    def __init__(self) -> None:
        super().__init__()
        self.fails = True
        self.looked: list[str] = []

    async def purge_instance_history(self, instance_id: str) -> Any:
        if instance_id not in self.looked:
            self.looked.append(instance_id)
            answer = await super().purge_instance_history(instance_id)
            self.start(instance_id)
            return answer
        if self.fails:
            raise ConnectionResetError("Connection reset by peer")
        return await super().purge_instance_history(instance_id)


def test_what_an_erasures_purge_after_its_rows_leaves_is_purged_by_a_later_run(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, durable_of: Any
) -> None:
    # A failure of the erasure's purge after its rows was only logged: the tenant gone, no erasure could be asked
    # again, and the orchestration, its history holding the tenant's input, outlived it.
    client = durable_of(FailsAfterRows())
    tenant, stalled = _stalled_start(api, app_pool, client, "after-rows")
    client.before_start = None

    _erased(api, tenant)

    assert client.looked == [str(stalled)] and client.instances == {str(stalled): "Terminated"}
    assert _record(api, stalled) == (tenant.id, False, None)  # due at once: its tenant is gone
    client.fails = False
    _bounded_run(monkeypatch, [], purge_erased=True)
    later = asyncio.run(asyncio.wait_for(sweeper.sweep(client, pool=app_pool), GUARD_S))
    assert later.purged == 1 and client.instances == {} and client.purged == [str(stalled)]
    assert _record(api, stalled) is None


class _Meanwhile:
    """A control-plane connection on which `then` runs (committing from another connection) right after `after`."""

    def __init__(self, conn: Any, after: str, then: list[Callable[[], None]]) -> None:
        self._conn = conn
        self._after = after
        self._then = then

    def execute(self, query: Any, params: Any = None) -> Any:
        result = self._conn.execute(query, params)
        if query == self._after and self._then:
            self._then.pop()()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _meanwhile(monkeypatch: pytest.MonkeyPatch, after: str, then: Callable[[], None]) -> list[Callable[[], None]]:
    """Runs `then` once, right after the purge's statement `after`; answers what is still to run."""
    real, pending = erased_orchestrations.platform_transaction, [then]

    @contextmanager
    def racing(*, pool: Any = None) -> Iterator[Any]:
        with real(pool=pool) as conn:
            yield _Meanwhile(conn, after, pending)

    monkeypatch.setattr(erased_orchestrations, "platform_transaction", racing)
    return pending


def _as_platform(api: ApiHarness, statement: str, params: tuple[Any, ...]) -> None:
    with psycopg.connect(api.control_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_platform")
        conn.execute(statement, params)


_NOTE_DUE = (
    "INSERT INTO control.erased_tenant_orchestrations (instance_id, tenant_id, due_at)"
    " VALUES (%s, %s, now() - interval '1 second')"
)
"""A note due as of a transaction begun before the purge's (one due at once takes its own transaction's now())."""


def _purge(client: Any) -> int:
    return asyncio.run(
        asyncio.wait_for(
            erased_orchestrations.purge_erased_orchestrations(client, settle_s=BOUND_S, within_s=2.0), GUARD_S
        )
    )


def test_a_living_tenants_record_noted_as_due_records_are_read_is_not_purged(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The records of living tenants were dropped in one statement and the due ones read in the next: a record of a
    # tenant still there committed between them (a failed start, due at once) was read as due, and the purge
    # terminated and purged that living tenant's orchestration.
    tenant = api.provision(f"living-{uuid.uuid4().hex[:6]}")
    running = uuid.uuid4()
    client = _ErasedBeforeStart()
    client.start(str(running))
    pending = _meanwhile(
        monkeypatch, erased_orchestrations._FORGET_LIVING, lambda: _as_platform(api, _NOTE_DUE, (running, tenant.id))
    )

    purged = _purge(client)

    assert pending == []  # noted between the two statements
    assert purged == 0 and client.instances == {str(running): "Running"} and client.purged == []


def test_an_orchestration_whose_tenant_is_there_again_once_read_as_due_is_not_purged(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenant is looked at again right before each purge: a tenant row of the id again (the devhost seeds its demo
    tenants under fixed ids) after the due records were read owns the orchestration, and its record is dropped."""
    tenant_id, running = uuid.uuid4(), uuid.uuid4()
    _as_platform(api, _NOTE_DUE, (running, tenant_id))
    client = _ErasedBeforeStart()
    client.start(str(running))

    def tenant_again() -> None:
        _as_platform(
            api,
            "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
            (tenant_id, f"again-{uuid.uuid4().hex[:6]}", uuid.uuid4()),
        )

    pending = _meanwhile(monkeypatch, erased_orchestrations._DUE_ORCHESTRATIONS, tenant_again)

    purged = _purge(client)

    assert pending == []  # there again once the due records were read
    assert purged == 0 and client.instances == {str(running): "Running"} and client.purged == []
    assert _record(api, running) is None
