# intent_ref: platform.execution
"""A retry onto another version reuses a step's output only where the step runs exactly as it ran: the same step
(a declaration's come from its blueprint version) reading the same inputs (its declared values, input defaults)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.control import NotRetryableError, retry_request
from shared.engine.start import StartRequest
from shared.engine.steps import StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import (
    AUTHOR,
    BLUEPRINTS,
    SEED_BLUEPRINT,
    SEED_DECLARATION,
    create,
    etag_of,
    intent_body,
    provision,
    put,
    wait_step,
)

pytestmark = pytest.mark.integration


def _failed_run(api: ApiHarness, tenant: str, intent_id: str, succeeded: list[str], failed: str) -> uuid.UUID:
    """A failed execution of the intent's version 1 whose `succeeded` steps have outputs and `failed` failed."""
    handle = api.tenants[tenant]
    with tenant_transaction(handle.id) as conn:
        execution, _ = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=uuid.UUID(intent_id),
            intent_version=1,
            target="production",
            input={},
            requester=Requester("tester", frozenset(), app_only=False),
        )
        store.seed_steps(conn, execution.id, [StepSeed(step, "x", 1) for step in [*succeeded, failed]])
        for step in succeeded:
            conn.execute(
                "UPDATE app.execution_steps SET state = 'succeeded', output = %s::jsonb"
                " WHERE execution_id = %s AND step_id = %s",
                (f'{{"from": "{step}"}}', execution.id, step),
            )
        conn.execute(
            "UPDATE app.execution_steps SET state = 'failed' WHERE execution_id = %s AND step_id = %s",
            (execution.id, failed),
        )
        for status in ("running", "failed"):
            repo.transition(conn, execution.id, status)  # type: ignore[arg-type]
    return execution.id


def _retry(api: ApiHarness, tenant: str, execution_id: uuid.UUID, version: int) -> StartRequest:
    with tenant_transaction(api.tenants[tenant].id) as conn:
        return retry_request(
            conn,
            repo.get_execution(conn, execution_id),
            version=version,
            requester=Requester("tester", frozenset({"Intent.Deployer"}), app_only=False),
            idempotency_key=None,
        )


def _with_inputs(body: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    body["definition"]["inputs"] = inputs
    return body


def _declare(api: ApiHarness, tenant: str, declaration_id: str, **values: Any) -> int:
    body = copy.deepcopy(SEED_DECLARATION)
    body["definition"].update(values)
    updated = put(api, tenant, declaration_id, body)
    assert updated.status_code == 200, updated.text
    return int(updated.json()["version"])


def test_a_declaration_retried_onto_a_version_with_other_declared_values_reruns_the_steps_reading_them(
    api: ApiHarness,
) -> None:
    # A declaration has no steps of its own: both versions compared as none, so a retry onto `version: 2.0.0` reused
    # the build of 1.2.3.
    tenant = provision(api, "retry-declared")
    create(api, tenant, copy.deepcopy(SEED_BLUEPRINT), BLUEPRINTS)
    declaration = create(api, tenant, copy.deepcopy(SEED_DECLARATION))
    failed = _failed_run(api, tenant, declaration["id"], ["build", "deploy"], "verify")
    same = _declare(api, tenant, declaration["id"], environment="azure-eastus")  # version 2: no step reads it
    assert set(_retry(api, tenant, failed, same).reused) == {"build", "deploy"}
    newer = _declare(api, tenant, declaration["id"], version="2.0.0")
    with pytest.raises(NotRetryableError, match="changes steps whose outputs would be reused: build$"):
        _retry(api, tenant, failed, newer)


def test_a_declaration_retried_onto_another_blueprint_version_reruns_the_steps_it_changed(api: ApiHarness) -> None:
    tenant = provision(api, "retry-blueprint")
    blueprint = create(api, tenant, copy.deepcopy(SEED_BLUEPRINT), BLUEPRINTS)
    declaration = create(api, tenant, copy.deepcopy(SEED_DECLARATION))
    failed = _failed_run(api, tenant, declaration["id"], ["build", "deploy"], "verify")
    changed = copy.deepcopy(SEED_BLUEPRINT)
    changed["definition"]["steps"][1]["params"]["replicas"] = 5
    headers = {**api.headers(tenant, AUTHOR), "If-Match": etag_of(api, tenant, blueprint["id"], BLUEPRINTS)}
    assert api.client.put(f"{BLUEPRINTS}/{blueprint['id']}", json=changed, headers=headers).status_code == 200
    repinned = _declare(api, tenant, declaration["id"])  # the update pins the blueprint's version 2
    with pytest.raises(NotRetryableError, match="changes steps whose outputs would be reused: deploy$"):
        _retry(api, tenant, failed, repinned)


def test_an_intent_retried_onto_a_version_with_another_input_default_reruns_the_steps_reading_it(
    api: ApiHarness,
) -> None:
    tenant = provision(api, "retry-defaults")
    inputs = {"type": "object", "properties": {"region": {"type": "string", "default": "westus"}}}
    place = {"id": "place", "action": "event.emit", "type": "placed", "data": {"region": "${inputs.region}"}}
    steps = [wait_step("prepare"), place, wait_step("finish")]
    intent = create(api, tenant, _with_inputs(intent_body("placed", *steps), inputs))
    failed = _failed_run(api, tenant, intent["id"], ["prepare", "place"], "finish")
    moved = copy.deepcopy(inputs)
    moved["properties"]["region"]["default"] = "eastus"
    updated = put(api, tenant, intent["id"], _with_inputs(intent_body("placed", *steps), moved))
    assert updated.status_code == 200, updated.text
    with pytest.raises(NotRetryableError, match="changes steps whose outputs would be reused: place$"):
        _retry(api, tenant, failed, int(updated.json()["version"]))
