# intent_ref: platform.execution
"""What a retry reuses of the execution it retries: the outputs of its succeeded steps, never an approval."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.control import retry_request
from shared.engine.steps import StepSeed
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration


def test_a_retry_reuses_succeeded_work_but_asks_for_its_approvals_again(
    app_pool: ConnectionPool[Any], new_tenant: Any
) -> None:
    # A reused approval let the Approver who retried carry it into their own request (a self-approval in effect),
    # or carry it to a version whose later steps changed.
    tenant_id: uuid.UUID = new_tenant()
    failed = _execution(app_pool, tenant_id, path=["running", "failed"])
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(
            conn,
            failed.id,
            [
                StepSeed("build", "artifact.write", 1),
                StepSeed("gate", "approval", 1),
                StepSeed("ship", "http.request", 1),
            ],
        )
        conn.execute(
            "UPDATE app.execution_steps SET state = 'succeeded', output = %s::jsonb"
            " WHERE execution_id = %s AND step_id IN ('build', 'gate')",
            ('{"done": true}', failed.id),
        )
        conn.execute(
            "UPDATE app.execution_steps SET state = 'failed' WHERE execution_id = %s AND step_id = 'ship'",
            (failed.id,),
        )
        request = retry_request(
            conn,
            repo.get_execution(conn, failed.id),
            version=None,
            requester=Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Approver"}), app_only=False),
            idempotency_key=None,
        )
    assert request.reused == {"build": {"done": True}}
    assert request.retry_of == failed.id
