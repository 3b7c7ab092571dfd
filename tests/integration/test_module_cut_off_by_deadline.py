# intent_ref: platform.execution
"""A module cut off by its attempt's deadline (an HTTP call bounded by it) is recorded as the attempt's timeout, not as
the module's failure: since reducer rules 10 the orchestrator's own timer counts from the start's record, after the
worker's deadline, so the worker's record is the one that stands, and a step that timed out read `failed`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import worker
from shared.modules import Module, ModuleContext, StepFailed
from tests.integration.test_outcome_lock_order import _started

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]


class _NoParams(BaseModel):
    pass


class _CutOff(Module[_NoParams]):
    """Fails as a call bounded by the attempt's deadline does: a moment before it (its own timeout was computed from
    the time left when it began, so it ends a hair early), when the worker's own wait has not yet ended."""

    action: ClassVar[str] = "http.request"  # the action `_started` begins
    params_model = _NoParams

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        time.sleep(max(ctx.deadline - time.monotonic() - 0.03, 0.0))
        raise StepFailed("the endpoint did not answer before the attempt's deadline")


def test_a_module_cut_off_by_its_deadline_is_recorded_timed_out(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    key, item = _started(app_pool, tenant)
    item = item.model_copy(update={"timeout_s": 1})
    module = _CutOff()
    asyncio.run(worker.run_attempt(item, {module.action: module}))
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None and attempt.state == "timed_out", attempt
    assert attempt.error is not None and attempt.error.startswith("step work timed out after 1 s")
