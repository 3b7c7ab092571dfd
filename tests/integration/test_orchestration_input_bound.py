# intent_ref: platform.execution
"""An execution's orchestration input is bounded (QP_MAX_ORCHESTRATION_INPUT_BYTES, measured as the Durable client
serializes it, non-ASCII escaped): a start over it is refused before anything is recorded, by every way in (execute,
retry, the intent-requests ingress, an intent.run step's child), and the sweeper ends a stalled start over it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest
from psycopg.types.json import Jsonb

from shared.api.durable import get_durable_client
from shared.auth.principal import Requester
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import sweeper
from shared.engine.durable_client import DurableClient
from shared.engine.progress import record_progress
from shared.engine.start import InputTooLargeError
from shared.engine.steps import AttemptKey, StepSeed
from shared.ingress.process import process_batch
from shared.ingress.request import IngressEvent
from shared.registry import service as registry
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_ingress_rejections import NoOrchestrations, _stored, _validator
from tests.integration.test_start_service import (
    AUTHOR,
    EXECUTOR,
    Client,
    Decider,
    _age_claim,
    _parent,
    _provision,
    _start,
    _status,
)

pytestmark = pytest.mark.integration

BOUND = 8192
"""A bound the tests' inputs are measured against: TEXT, escaped, is over it; the same count of ASCII is not."""
TEXT = "é" * 2000
"""4,000 bytes as UTF-8 and 2,000 characters, but 12,000 bytes as the Durable client sends it (each escaped)."""
PLAIN = "a" * 2000

SetBound = Callable[[int], None]


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch) -> Iterator[SetBound]:
    """Sets QP_MAX_ORCHESTRATION_INPUT_BYTES for the test (the settings read again), and restores it after."""

    def set_bound(limit: int) -> None:
        monkeypatch.setenv("QP_MAX_ORCHESTRATION_INPUT_BYTES", str(limit))
        get_settings.cache_clear()

    yield set_bound
    monkeypatch.undo()
    get_settings.cache_clear()


def _executions(api: ApiHarness, tenant_id: uuid.UUID) -> int:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT count(*) FROM app.executions WHERE tenant_id = %s", (tenant_id,)).fetchone()
    assert row is not None
    return int(row[0])


def _post(api: ApiHarness, path: str, body: dict[str, Any], headers: dict[str, str], client: Client) -> Any:
    overrides = api.client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[get_durable_client] = lambda: client
    try:
        return api.client.post(path, json=body, headers=headers)
    finally:
        overrides.pop(get_durable_client, None)


def _too_large(response: Any) -> dict[str, Any]:
    """The 413 problem document of a start refused for its orchestration input."""
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    document: dict[str, Any] = response.json()
    assert document["type"].rsplit("/", 1)[-1] == "orchestration-input-too-large"
    assert document["limit"] == BOUND and document["size"] > BOUND
    return document


def test_an_execute_over_the_bound_is_413_and_records_and_starts_nothing(api: ApiHarness, bound: SetBound) -> None:
    name = f"bound-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _provision(api, name)
    bound(BOUND)
    client = Client()
    path = f"/api/v1/intents/{intent_id}/execute"
    headers = {**api.headers(name, EXECUTOR), "Idempotency-Key": f"large-{uuid.uuid4().hex}"}
    refused = _post(api, path, {"input": {"text": TEXT}}, headers, client)
    document = _too_large(refused)
    # Measured as sent: each é escaped to six bytes (as UTF-8 or unescaped it is well within the bound).
    assert document["size"] > 6 * len(TEXT) and len(json.dumps({"text": TEXT}, ensure_ascii=False)) < BOUND // 2
    assert (_executions(api, tenant.id), client.calls) == (0, [])
    # Its key recorded nothing either: the same request is refused again, not replayed.
    assert _post(api, path, {"input": {"text": TEXT}}, headers, client).status_code == 413
    # As many characters of ASCII are within it, and start.
    accepted = _post(api, path, {"input": {"text": PLAIN}}, api.headers(name, EXECUTOR), client)
    assert accepted.status_code == 202, accepted.text
    assert _executions(api, tenant.id) == 1 and len(client.calls) == 1


def test_a_retry_whose_reused_outputs_are_over_the_bound_is_413(api: ApiHarness, bound: SetBound) -> None:
    name = f"bound-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _provision(api, name)
    bound(BOUND)
    started = _post(api, f"/api/v1/intents/{intent_id}/execute", {}, api.headers(name, EXECUTOR), Client())
    assert started.status_code == 202, started.text
    execution_id = uuid.UUID(started.json()["execution_id"])
    with tenant_transaction(tenant.id) as conn:
        repo.transition(conn, execution_id, "running")
        repo.transition(conn, execution_id, "failed", error="the next step failed")
        conn.execute(
            "UPDATE app.execution_steps SET state = 'succeeded', output = %s WHERE execution_id = %s",
            (Jsonb({"text": TEXT}), execution_id),
        )
    client = Client()
    refused = _post(api, f"/api/v1/executions/{execution_id}/retry", {}, api.headers(name, EXECUTOR), client)
    _too_large(refused)
    assert (_executions(api, tenant.id), client.calls) == (1, [])
    bound(1_000_000)  # the same retry within a larger bound starts
    retried = _post(api, f"/api/v1/executions/{execution_id}/retry", {}, api.headers(name, EXECUTOR), client)
    assert retried.status_code == 202, retried.text
    assert client.calls[0][2]["reused"] == {"pause": {"text": TEXT}}


def test_an_ingress_event_over_the_bound_is_rejected_413_and_its_batch_not_failed(
    api: ApiHarness, bound: SetBound
) -> None:
    name = f"bound-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _provision(api, name)
    bound(BOUND)
    body = {"intent_id": str(intent_id), "input": {"text": TEXT}, "idempotency_key": "large"}
    event = IngressEvent(
        body=json.dumps(body, ensure_ascii=False).encode(),
        partition_id="1",
        sequence_number=int(uuid.uuid4().int % 1_000_000),
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {api.token(name, EXECUTOR)}"},
    )
    # Raised, the batch was retried (the partition held for every tenant) and then dropped with nothing recorded.
    outcomes = asyncio.run(process_batch([event], NoOrchestrations(), _validator(api)))
    assert [(outcome.reason, outcome.execution_id) for outcome in outcomes] == [("invalid", None)]
    [(document, _size)] = _stored(api, tenant.id)
    assert document["status"] == 413 and document["limit"] == BOUND and document["size"] > BOUND
    assert document["type"].rsplit("/", 1)[-1] == "orchestration-input-too-large"
    assert _executions(api, tenant.id) == 0


def test_a_child_over_the_bound_fails_its_step_and_starts_nothing(api: ApiHarness, bound: SetBound) -> None:
    tenant_name = f"bound-{uuid.uuid4().hex[:8]}"
    tenant, parent_intent = _provision(api, tenant_name)
    child = {
        "name": f"child-{uuid.uuid4().hex[:8]}",
        "definition": {"target": "production", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
    }
    created = api.client.post("/api/v1/intents", json=child, headers=api.headers(tenant_name, AUTHOR))
    assert created.status_code == 201, created.text
    deployer = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False)
    parent = _parent(tenant, parent_intent, deployer)
    with tenant_transaction(tenant.id) as conn:
        name = registry.get(conn, "intent", uuid.UUID(created.json()["id"])).head.name
        store.seed_steps(conn, parent.id, [StepSeed("run-child", "intent.run", 1)])
    bound(BOUND)
    answer = record_progress(
        {
            "kind": "start_child",
            "execution_id": str(parent.id),
            "tenant_id": str(tenant.id),
            "step_id": "run-child",
            "attempt": 1,
            "params": {"intent": name, "inputs": {"text": TEXT}},
        }
    )
    verdict = answer["verdict"]
    assert verdict["ok"] is False and verdict["retryable"] is False
    assert f"child intent {name} cannot start" in verdict["error"] and f"{BOUND} bytes" in verdict["error"]
    with tenant_transaction(tenant.id) as conn:
        attempt = store.get_attempt(conn, AttemptKey(parent.id, "run-child", "run", 1))
        children = conn.execute("SELECT count(*) AS n FROM app.executions WHERE parent_execution_id = %s", (parent.id,))
        assert attempt is not None and attempt.state == "failed"
        row = children.fetchone()
        assert row is not None and row["n"] == 0


def test_a_stalled_start_over_the_bound_is_ended_failed_by_the_sweeper(api: ApiHarness, bound: SetBound) -> None:
    # Recorded under a larger bound (or before there was one), it failed every launch and was started again for ever.
    tenant, intent_id = _provision(api, f"bound-{uuid.uuid4().hex[:8]}")
    started = _start(tenant, intent_id, Decider(allowed=True), input={"text": TEXT})
    assert started.created and _status(tenant, started.execution.id) == "pending"  # never launched
    bound(BOUND)
    client = Client()
    # The client is asked only for a status and a start here (the sweeper's other calls are for running executions).
    result = asyncio.run(sweeper.sweep_tenant(tenant.id, cast(DurableClient, client), start_grace_s=0))
    assert (result.ended, result.started, client.calls) == (1, 0, [])
    with tenant_transaction(tenant.id) as conn:
        ended = repo.get_execution(conn, started.execution.id)
    assert ended.status == "failed" and ended.error is not None
    assert f"more than the {BOUND} bytes allowed" in ended.error


def test_a_replay_taking_over_a_stalled_start_over_the_bound_is_refused(api: ApiHarness, bound: SetBound) -> None:
    # The rebuilt input is measured as a new start's is: launched, it failed the same way every time.
    tenant, intent_id = _provision(api, f"bound-{uuid.uuid4().hex[:8]}")
    request: dict[str, Any] = {"input": {"text": TEXT}, "idempotency_key": f"stalled-{uuid.uuid4().hex}"}
    started = _start(tenant, intent_id, Decider(allowed=True), **request)
    _age_claim(api, started.execution.id, 120)  # its starter died: a replay takes its start over
    bound(BOUND)
    with pytest.raises(InputTooLargeError) as refused:
        _start(tenant, intent_id, Decider(allowed=True), **request)
    assert (refused.value.limit, refused.value.size > BOUND) == (BOUND, True)
    assert _status(tenant, started.execution.id) == "pending"  # left to the sweeper, which ends it (above)
