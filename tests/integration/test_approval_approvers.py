# intent_ref: platform.execution
"""Who may decide an approval: any Approver when it names no one, else only those it names, and no one when its
`approvers` (given by a reference) resolved to anything but a list of ids."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, progress
from shared.engine import machine_types as mt
from shared.engine import steps as store
from shared.engine.steps import StepSeed
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

OBJECT_ID = "6f2c1d4e-0b7a-4c3e-9d51-2a8f0e6b7c39"


def _asked(pool: ConnectionPool[Any], tenant_id: uuid.UUID, params: dict[str, Any]) -> uuid.UUID:
    """An execution whose approval step `gate` was asked for, as a dispatch records it, with `params` resolved."""
    execution = _execution(pool, tenant_id, path=["running"])
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("gate", "approval", 1)])
    start = mt.StepStart(step_id="gate", phase="run", attempt=1, kind="approval", action="approval", params=params)
    progress.dispatch_steps(mt.DispatchSteps(execution_id=str(execution.id), tenant_id=str(tenant_id), starts=[start]))
    return execution.id


def _decide(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> bool:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        try:
            control.decide_approval(
                conn, execution_id, "gate", "approve", principal_id=f"tid/{OBJECT_ID}", object_id=OBJECT_ID, comment=""
            )
        except control.NotAnApproverError:
            return False
    return True


@pytest.mark.parametrize(
    ("approvers", "admitted"),
    [
        (None, True),
        ([], True),
        ([OBJECT_ID], True),
        (["someone-else"], False),
        ("", False),  # was `or []`: named no one, so admitted every Approver
        (OBJECT_ID[:8], False),  # was a substring test
        (f"{OBJECT_ID},someone-else", False),
        (0, False),
        (5, False),  # was a TypeError: a 500
        ({OBJECT_ID: True}, False),
        ([OBJECT_ID, 5], False),
    ],
)
def test_an_approval_admits_only_the_approvers_it_names_as_a_list(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID], approvers: Any, admitted: bool
) -> None:
    tenant = new_tenant()
    params: dict[str, Any] = {"message": "ship?"} if approvers is None else {"message": "ship?", "approvers": approvers}
    assert _decide(app_pool, tenant, _asked(app_pool, tenant, params)) is admitted
