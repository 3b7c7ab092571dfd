# intent_ref: platform.ingress
"""The ingress's launches on the real database: a launch that fails is started by the batch's own retry (not left to
the sweeper), and a redelivery that takes over a start whose orchestration already exists starts nothing again."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from shared.api.security import token_validator
from shared.auth.tokens import TokenValidator
from shared.engine.start import STALE_START_S
from shared.ingress.process import process_batch, process_event
from shared.ingress.request import IngressEvent
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_ingress_rejections import _intent
from tests.integration.test_start_service import TaskHub, _age_claim

pytestmark = pytest.mark.integration

EXECUTOR = ["Intent.Executor"]


def _validator(api: ApiHarness) -> TokenValidator:
    validator: TokenValidator = api.client.app.dependency_overrides[token_validator]()  # type: ignore[attr-defined]
    return validator


def _event(api: ApiHarness, tenant: str, body: dict[str, Any], sequence: int) -> IngressEvent:
    return IngressEvent(
        body=json.dumps(body).encode(),
        partition_id="1",
        sequence_number=sequence,
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {api.token(tenant, EXECUTOR)}"},
    )


def _executions(api: ApiHarness, tenant_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """The tenant's executions by id (read as the admin)."""
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=psycopg.rows.dict_row) as conn:
        rows = conn.execute("SELECT id, status FROM app.executions WHERE tenant_id = %s", (tenant_id,)).fetchall()
    return {str(row["id"]): row for row in rows}


def test_a_launch_that_fails_is_started_by_the_batchs_retry(api: ApiHarness) -> None:
    # Its claim was kept: the retry (5 s later, in place) found it fresh, counted the event done without starting
    # anything, and the batch was checkpointed with the execution pending until the sweeper's grace ran out.
    tenant = api.provision("relaunch", quotas={"max_concurrent_executions": 100})
    intent_id = _intent(api, "relaunch")
    base = int(uuid.uuid4().int % 1_000_000)
    events = [
        _event(api, "relaunch", {"intent_id": intent_id, "input": {"n": n}, "idempotency_key": f"n-{n}"}, base + n)
        for n in range(12)
    ]
    hub = TaskHub(fail_call=10)
    with pytest.raises(RuntimeError, match="1 of 12 intent requests did not complete"):
        asyncio.run(process_batch(events, hub, _validator(api)))
    failed = hub.calls[9]
    assert failed not in hub.instances and len(hub.instances) == 11
    assert _executions(api, tenant.id)[failed]["status"] == "pending"

    hub.fail_call = None
    outcomes = asyncio.run(process_batch(events, hub, _validator(api)))  # the retry policy's run of the same batch
    assert hub.calls[12:] == [failed]  # the failed one, and no other, started by the retry
    assert hub.instances == set(_executions(api, tenant.id)) and len(hub.instances) == 12
    assert [outcome.created for outcome in outcomes] == [False] * 12


def test_a_redelivery_after_the_claim_went_stale_does_not_start_a_started_orchestration_again(api: ApiHarness) -> None:
    # It took the stale claim over and called start_new again: refused ("already exists"), the event failed its batch
    # on every retry.
    tenant = api.provision("redelivered")
    intent_id = _intent(api, "redelivered")
    event = _event(api, "redelivered", {"intent_id": intent_id, "idempotency_key": "once"}, 1)
    hub = TaskHub()
    first = asyncio.run(process_event(event, hub, _validator(api)))
    assert first.created and first.execution_id is not None
    _age_claim(api, first.execution_id, STALE_START_S + 1)

    again = asyncio.run(process_event(event, hub, _validator(api)))  # the same event, redelivered
    assert (again.execution_id, again.created, again.reason) == (first.execution_id, False, None)
    assert hub.calls == [str(first.execution_id)]  # started once in total
    assert hub.asked == [str(first.execution_id)]  # the takeover asked the task hub before starting anything
    assert _executions(api, tenant.id)[str(first.execution_id)]["status"] == "pending"
