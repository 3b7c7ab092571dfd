# intent_ref: platform.execution
"""An approval whose `approvers` is present but resolved to null (`"approvers": "${inputs.who}"`, `who` null) names
no one and admits no one, in either engine generation, as every other value that is not a list of ids; an approval
without `approvers`, or with an empty list, admits any Approver."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, progress
from shared.engine import steps as store
from shared.engine.steps import StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_approval_approvers import OBJECT_ID, _asked
from tests.integration.test_executions import _execution
from tests.integration.test_verdict_handover import FlakyDurable, durable  # noqa: F401  # `durable`: the fixture

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

ABSENT = object()
"""An approval step with no `approvers` key at all."""


TENANT = f"nullref-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision(TENANT).id


def _params(approvers: Any) -> dict[str, Any]:
    return {"message": "ship?"} if approvers is ABSENT else {"message": "ship?", "approvers": approvers}


def _asked_first_generation(pool: ConnectionPool[Any], tenant_id: uuid.UUID, params: dict[str, Any]) -> uuid.UUID:
    """An execution whose approval step `gate` was asked for as a first-generation run records it."""
    execution = _execution(pool, tenant_id, path=["running"])
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("gate", "approval", 1)])
    record = {"execution_id": str(execution.id), "tenant_id": str(tenant_id), "step_id": "gate", "attempt": 1}
    progress.record_progress({**record, "kind": "approval_requested", "params": params})
    return execution.id


def _admits(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> bool:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        try:
            control.decide_approval(
                conn, execution_id, "gate", "approve", principal_id=f"tid/{OBJECT_ID}", object_id=OBJECT_ID, comment=""
            )
        except control.NotAnApproverError:
            return False
    return True


@pytest.mark.parametrize("generation", ["second", "first"])
@pytest.mark.parametrize(
    ("approvers", "admitted"),
    [
        (None, False),  # read as none named: every Approver was admitted
        ("", False),  # the first generation's `or []` read it as none named
        (0, False),
        (ABSENT, True),
        ([], True),
        ([OBJECT_ID], True),
    ],
    ids=["null", "empty-string", "zero", "absent", "empty-list", "named"],
)
def test_a_present_approvers_that_resolved_to_null_admits_no_one(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, generation: str, approvers: Any, admitted: bool
) -> None:
    ask = _asked if generation == "second" else _asked_first_generation
    assert _admits(app_pool, tenant, ask(app_pool, tenant, _params(approvers))) is admitted


def test_an_approver_named_nowhere_is_refused_403_when_approvers_resolved_to_null(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # Answered 200: an Approver the step never named decided it.
    approver = api.headers(TENANT, ["Intent.Approver"], oid=str(uuid.uuid4()))
    refused = _asked(app_pool, tenant, _params(None))
    answer = api.client.post(
        f"/api/v1/executions/{refused}/approvals/gate", json={"decision": "approve"}, headers=approver
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["reason"] == "not_an_approver"
    assert durable.delivered == []

    open_to_all = _asked(app_pool, tenant, _params(ABSENT))
    answer = api.client.post(
        f"/api/v1/executions/{open_to_all}/approvals/gate", json={"decision": "approve"}, headers=approver
    )
    assert answer.status_code == 200, answer.text
    assert [instance for instance, _name, _data in durable.delivered] == [str(open_to_all)]
