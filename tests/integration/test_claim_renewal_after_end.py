# intent_ref: platform.execution
"""A module worker's claim is not renewed once its execution has ended, as it is not taken then (ADR 0026): an end
need not have moved the attempt (one committed after the end read its attempts), and a renewal that held let a module
go on running, and record its result, after its execution's end."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import worker
from shared.modules import Module, ModuleContext
from tests.integration.test_outcome_lock_order import _started

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

BOUND_S = 5.0


class _NoParams(BaseModel):
    pass


class _UntilAbandoned(Module[_NoParams]):
    """Runs until nobody waits for it any more (or BOUND_S passes, then answers as if it had finished)."""

    action: ClassVar[str] = "http.request"  # the action `_started` begins
    params_model = _NoParams

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.abandoned = False

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        self.entered.set()
        self.abandoned = ctx.abandoned.wait(BOUND_S)
        return {"finished": True}


def _end(pool: ConnectionPool[Any], tenant: uuid.UUID, execution_id: uuid.UUID) -> None:
    """The execution ends without its attempt moved (as an end that never read it)."""
    with tenant_transaction(tenant, pool=pool) as conn:
        repo.transition(conn, execution_id, "cancelled", error="cancelled")


def test_a_claim_is_not_renewed_after_its_execution_ended(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    key, _ = _started(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert store.claim_attempt(conn, key, owner="w1", lease_s=15, timeout_s=60).outcome == "claimed"
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert store.renew_claim(conn, key, owner="w1", lease_s=15)
    _end(app_pool, tenant, key.execution_id)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert not store.renew_claim(conn, key, owner="w1", lease_s=15)
        attempt = store.get_attempt(conn, key)
    assert attempt is not None and attempt.state == "dispatched"  # the end did not move it


def test_a_running_module_is_abandoned_and_records_nothing_once_its_execution_ended(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = new_tenant()
    key, item = _started(app_pool, tenant)
    module = _UntilAbandoned()
    monkeypatch.setattr(worker, "HEARTBEAT_S", 0.05)  # the next renewal comes at once
    answer: list[Any] = []
    running = threading.Thread(
        target=lambda: answer.append(asyncio.run(worker.run_attempt(item, {module.action: module})))
    )
    running.start()
    assert module.entered.wait(BOUND_S)
    _end(app_pool, tenant, key.execution_id)
    running.join(BOUND_S * 2)
    assert not running.is_alive()
    assert answer == [None]  # its claim was lost: nothing raised
    assert module.abandoned  # told to stop, not left to run on
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None and attempt.state == "dispatched"  # no result recorded after the end
