# intent_ref: platform.hardening
"""An approval's comment that would act where it is shown is refused with 422 and changes nothing: the approval stays
waiting and is decided by the next, clean request (its lines kept in the recorded comment)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import INTENT_APPROVER
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_approval_approvers import _asked
from tests.integration.test_verdict_handover import FlakyDurable, durable  # noqa: F401  # `durable`: the fixture

pytestmark = pytest.mark.integration
TENANT = "free-text-3-comment"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision(TENANT).id


def _decision_events(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[Any]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        events = repo.events_after(conn, execution_id, 0, 1000)
    return [
        (event.type, event.data)
        for event in events
        if event.type.startswith("approval_") and event.type != "approval_requested"
    ]


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_refused_comment_leaves_the_approval_waiting(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
    decision: str,
) -> None:
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    url = f"/api/v1/executions/{execution_id}/approvals/gate"
    headers = api.headers(TENANT, [INTENT_APPROVER])

    refused = api.client.post(url, json={"decision": decision, "comment": "ok\x1b[2J"}, headers=headers)

    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert [error["pointer"] for error in refused.json()["errors"]] == ["/comment"]
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, AttemptKey(execution_id, "gate", "run", 1))
    assert attempt is not None and attempt.state == "dispatched"  # still waiting for a decision
    assert _decision_events(app_pool, tenant, execution_id) == [] and durable.delivered == []

    decided = api.client.post(url, json={"decision": decision, "comment": "CHG-1042\nok\tgo"}, headers=headers)
    assert decided.status_code == 200, decided.text
    assert decided.json()["applied"] is True
    ((_, data),) = _decision_events(app_pool, tenant, execution_id)
    assert data["comment"] == "CHG-1042\nok\tgo"
