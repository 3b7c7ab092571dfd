# intent_ref: platform.execution
"""Rules 8 (ADR 0014) on real Postgres: two stored outputs that cannot be read, read by one step."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT
from shared.engine.steps import StepSeed
from tests.integration.test_engine_runfail_cancel import (
    Driven,
    _cancel_into,
    _ended,
    _records_a_failure,
)
from tests.integration.test_executions import _execution

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

BLOB_A = {"$blob": {"container": "c", "name": "a", "size": 10, "sha256": "0" * 64}}
BLOB_B = {"$blob": {"container": "c", "name": "b", "size": 10, "sha256": "1" * 64}}
READS_BOTH: list[dict[str, Any]] = [
    {"id": "a", "action": "build-container", "depends_on": []},
    {"id": "b", "action": "build-container", "depends_on": []},
    {
        "id": "c",
        "action": "build-container",
        "depends_on": ["a", "b"],
        "v": "${steps.a.output.p}",
        "w": "${steps.b.output.p}",
    },
]


def test_a_cancel_accepted_before_the_record_ends_cancelled_when_two_outputs_cannot_be_read(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    """Both of c's stored inputs are unreadable (the blob store is away): the first failure is recorded on c and the
    second changes nothing beside it (it was applied unrecorded as the run's cause, so a cancel answered 202 before
    c's record ended the run failed, naming b, which had succeeded); the cancel read by c's record is the cause."""
    tenant_id = new_tenant()
    execution = _execution(app_pool, tenant_id)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(
            conn,
            execution.id,
            [
                StepSeed("a", "build-container", 1, reused_output=BLOB_A, reused=True),
                StepSeed("b", "build-container", 1, reused_output=BLOB_B, reused=True),
                StepSeed("c", "build-container", 1),
            ],
        )
    answers: list[str] = []
    plan = {step["id"]: {"kind": "module", "remote": True, "timeout_s": 600} for step in READS_BOTH}
    run = Driven(
        tenant_id,
        execution.id,
        READS_BOTH,
        plan,
        reused={"a": BLOB_A, "b": BLOB_B},
        before=(_records_a_failure, _cancel_into(answers, tenant_id)),
    )
    assert answers == ["accepted"]
    run.raise_event(CANCEL_EVENT, {"by": "alice"})
    ended, _, steps = _ended(app_pool, tenant_id, run, execution.id)
    assert steps["c"]["state"] == "failed"
    assert (ended.status, ended.error) == ("cancelled", "cancelled"), (ended.status, ended.error, run.result)
