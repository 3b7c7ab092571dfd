# intent_ref: platform.execution
"""What a suspension does to work already under way (ADR 0027 and 0014, amended 2026-12-07).

A worker's lease long poll that was waiting when its tenant was suspended leases nothing more and is answered as the
tenant's new requests are, 403 `tenant-suspended` (recorded as their denial is), within seconds; before, it handed out
work queued after the suspension, with a task token the completion route accepted. The lease statement itself leases
nothing while the tenant is not active. A start that stalled is left pending while its tenant is suspended and starts
once it is active again; before, the sweeper ended it `failed` for good."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api import event_stream
from shared.api.problems import TENANT_NOT_PROVISIONED
from shared.api.routers import work
from shared.db.session import tenant_transaction
from shared.engine import sweeper, work_queue
from shared.engine.protocol import ORCHESTRATOR
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_execution_sweeper import FakeDurable, Tenant, _get, _moved, _recorded
from tests.integration.test_lease_poll_disconnect import Client, _poll, durable  # noqa: F401  # the fixture
from tests.integration.test_verdict_handover import FlakyDurable

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

WAIT_S = 30
"""The longest wait a lease poll may ask for: far past a look at its tenant."""
LATE_S = 3 * event_stream.TENANT_LOOK_S
"""How long after the suspension work is queued in the reviewer's order: past the poll's look at its tenant (one
interval at most), with room for a slow machine, and well inside the poll's wait."""
OPERATORS = "susp-operators"


def _set_status(api: ApiHarness, tenant_id: uuid.UUID, status: str) -> None:  # noqa: F811  # the fixture
    """Suspend or reactivate the tenant as an operator does (the control plane clears the directory's cache)."""
    if OPERATORS not in api.tenants:
        api.provision(OPERATORS)
    admin = api.headers(OPERATORS, ["Platform.Admin"])
    url = f"/api/v1/tenants/{tenant_id}"
    etag = api.client.get(url, headers=admin).headers["etag"]
    changed = api.client.patch(url, json={"status": status}, headers={**admin, "If-Match": etag})
    assert changed.status_code == 200 and changed.json()["status"] == status, changed.text


def _waiting_poll(
    api: ApiHarness,  # noqa: F811  # the fixture
    monkeypatch: pytest.MonkeyPatch,
    token: str,
    action: str,
) -> tuple[Client, Callable[[], None]]:
    """A lease poll for `action`, sent and found waiting (its first round leased nothing); the callable waits for
    its answer."""
    waiting = threading.Event()
    idle = work.idle

    async def observed_idle(*args: Any, **kwargs: Any) -> bool:
        waiting.set()
        return await idle(*args, **kwargs)

    monkeypatch.setattr(work, "idle", observed_idle)
    client = Client()
    answered = _poll(api, client, token, action, wait_s=WAIT_S)
    assert waiting.wait(20), "the poll never waited"
    return client, lambda: answered.result(timeout=WAIT_S + 10)


def _open_items(pool: ConnectionPool[Any], tenant_id: uuid.UUID, key: AttemptKey) -> list[tuple[str, str | None]]:
    """The execution's open items: status and who leased them."""
    with tenant_transaction(tenant_id, pool=pool) as conn:
        items, now, _ = work_queue.list_page(
            conn, action=None, status=None, execution_id=key.execution_id, cursor=None, limit=10
        )
    return [(item.status(now), item.leased_by) for item in items]


def _lease(pool: ConnectionPool[Any], tenant_id: uuid.UUID, action: str) -> list[AttemptKey]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        leases = work_queue.lease(conn, tenant_id, actions=[action], max_items=10, lease_s=60, worker="w").leases
    return [lease.item.key for lease in leases]


def _assert_refused_as_suspended(api: ApiHarness, client: Client, tenant: str) -> None:  # noqa: F811  # the fixture
    assert client.status == 403, client.answer
    assert (client.answer["reason"], client.answer["type"].rsplit("/", 1)[-1]) == (
        "tenant_suspended",
        "tenant-suspended",
    ), client.answer
    denials = [row["reason"] for row in api.audit_rows(tenant) if row["decision"] == "deny"]
    assert denials == ["tenant_suspended"], denials


@pytest.mark.parametrize("queued", ["after its look", "before its look"])
def test_a_waiting_lease_poll_leases_nothing_once_its_tenant_is_suspended(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    durable: FlakyDurable,  # noqa: F811  # the fixture
    monkeypatch: pytest.MonkeyPatch,
    queued: str,
) -> None:
    name = f"susp-lease-{uuid.uuid4().hex[:6]}"
    handle = api.provision(name)
    token = api.token(name, ["Module.Worker"], claims={"idtyp": "app"})
    action = f"sl-{uuid.uuid4().hex[:6]}"
    client, answer = _waiting_poll(api, monkeypatch, token, action)

    _set_status(api, handle.id, "suspended")
    if queued == "after its look":
        # The reviewer's order: a running execution queues its next remote step once the poll has looked.
        at = time.monotonic()
        while time.monotonic() < at + LATE_S:
            time.sleep(0.1)
    # Queued at once, it wakes the poll before its look at the tenant: the lease statement hands out nothing then.
    key = _queued(app_pool, handle.id, action, path=["running"])
    answer()

    _assert_refused_as_suspended(api, client, name)
    assert _open_items(app_pool, handle.id, key) == [("queued", None)]
    _set_status(api, handle.id, "active")
    assert _lease(app_pool, handle.id, action) == [key]


def test_the_lease_statement_leases_nothing_while_the_tenant_is_suspended(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision(f"susp-statement-{uuid.uuid4().hex[:6]}")
    action = f"ss-{uuid.uuid4().hex[:6]}"
    key = _queued(app_pool, handle.id, action, path=["running"])

    _set_status(api, handle.id, "suspended")
    # A call admitted before the suspension (or from the directory's few seconds of cache) gets nothing.
    assert _lease(app_pool, handle.id, action) == []
    assert _open_items(app_pool, handle.id, key) == [("queued", None)]
    _set_status(api, handle.id, "active")
    assert _lease(app_pool, handle.id, action) == [key]


def test_a_waiting_lease_poll_whose_tenant_is_erased_is_answered_as_an_unknown_tenants_request(
    api: ApiHarness,  # noqa: F811  # the fixture
    durable: FlakyDurable,  # noqa: F811  # the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"susp-erased-{uuid.uuid4().hex[:6]}"
    api.provision(name)
    token = api.token(name, ["Module.Worker"], claims={"idtyp": "app"})
    client, answer = _waiting_poll(api, monkeypatch, token, f"se-{uuid.uuid4().hex[:6]}")
    # The directory as it answers once the erasure removed the tenant's row (no tenant for its Entra tenant).
    monkeypatch.setattr(event_stream.tenant_directory, "cached", lambda entra_tenant_id: (True, None))
    answer()
    assert client.status == 401, client.answer
    assert client.answer["detail"] == TENANT_NOT_PROVISIONED


def test_an_active_tenants_waiting_lease_poll_leases_work_queued_after_its_looks(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    durable: FlakyDurable,  # noqa: F811  # the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"susp-active-{uuid.uuid4().hex[:6]}"
    handle = api.provision(name)
    token = api.token(name, ["Module.Worker"], claims={"idtyp": "app"})
    action = f"sa-{uuid.uuid4().hex[:6]}"
    client, answer = _waiting_poll(api, monkeypatch, token, action)
    at = time.monotonic()
    while time.monotonic() < at + LATE_S:
        time.sleep(0.1)
    key = _queued(app_pool, handle.id, action, path=["running"])
    answer()
    assert client.status == 200, client.answer
    assert [item["execution_id"] for item in client.answer["items"]] == [str(key.execution_id)]


def test_a_stalled_start_of_a_suspended_tenant_stays_pending_and_starts_once_it_is_active(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = Tenant(api)
    stalled, expected_input = _recorded(app_pool, tenant.id, tenant.intent)
    _set_status(api, tenant.id, "suspended")

    # The sweep claims nothing of a suspended tenant: no status call, nothing started or ended.
    client = FakeDurable()
    result = asyncio.run(sweeper.sweep_tenant(tenant.id, client, pool=app_pool))
    assert (result.started, result.ended, client.asked, client.started) == (0, 0, [], [])
    # A start claimed before the suspension and rebuilt after it (the reviewer's repro) is left pending too.
    assert sweeper.start_input(tenant.id, stalled, pool=app_pool) is None
    assert _get(app_pool, tenant.id, stalled).status == "pending"

    _set_status(api, tenant.id, "active")
    assert _get(app_pool, tenant.id, stalled).status == "pending"
    result = asyncio.run(sweeper.sweep_tenant(tenant.id, client, pool=app_pool))
    assert client.started == [(ORCHESTRATOR, str(stalled), expected_input)]
    assert (result.started, result.ended) == (1, 0)


def test_a_suspended_tenants_stalled_start_does_not_rank_it_first_in_the_sweepers_list(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
) -> None:
    # Left pending while its tenant is suspended, a stalled start kept the tenant first in every run's list (stalled
    # starts first): a hundred such tenants would have kept every other tenant out of the capped list.
    held, running, quiet = Tenant(api), Tenant(api), Tenant(api)
    _recorded(app_pool, held.id, held.intent)
    _recorded(app_pool, running.id, running.intent)
    _moved(app_pool, running.id, running.intent, ["running", "waiting"])
    _moved(app_pool, quiet.id, quiet.intent, ["running", "waiting"])
    for tenant in (held, running):
        _set_status(api, tenant.id, "suspended")
    found = sweeper.stuck_tenants(10_000, control_pool=control_pool)
    assert quiet.id in found and held.id not in found
    # A suspended tenant's quiet running executions are still found (they go on, and can be stuck).
    assert running.id in found


def test_a_stalled_start_of_an_erased_tenant_still_ends_failed(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = Tenant(api)
    stalled, _ = _recorded(app_pool, tenant.id, tenant.intent)
    # The tenant as the rebuild finds it once its row is gone (its executions go with it in a real erasure).
    monkeypatch.setattr(sweeper, "get_tenant", lambda conn, tenant_id: None)
    cause = sweeper.start_input(tenant.id, stalled, pool=app_pool)
    assert cause == f"the orchestration could not be started: tenant {tenant.id} is not active"
    assert _get(app_pool, tenant.id, stalled).status == "failed"
