# intent_ref: platform.execution
"""A retry onto another version reuses a step's output only where the step runs exactly as it ran: the same step
(a declaration's come from its blueprint version) reading the same inputs (its declared values, input defaults)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.api.durable import get_durable_client
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.control import NotRetryableError, retry_request
from shared.engine.start import StartRequest
from shared.engine.steps import StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import (
    ADMIN,
    AUTHOR,
    BLUEPRINTS,
    EXECUTOR,
    INTENTS,
    READER,
    SEED_BLUEPRINT,
    SEED_DECLARATION,
    create,
    etag_of,
    intent_body,
    problem,
    provision,
    put,
    wait_step,
)
from tests.integration.test_start_service import TaskHub

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
            authorize=lambda _item: None,  # the comparison's rules alone: the caller's decision is tested below
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


# ---- a retry decides on the version it runs before it compares it ------------------------------------------------

SECRET_RUNS = (
    'forbid (principal, action in [QP::Action::"intent.read", QP::Action::"intent.execute"], resource) '
    'when { resource.labels.contains("secret=yes") } unless { principal.roles.contains("Intent.Author") };'
)
"""Only authors read or run what is labelled secret."""


@pytest.fixture
def hub(api: ApiHarness) -> Iterator[TaskHub]:
    task_hub = TaskHub()
    api.client.app.dependency_overrides[get_durable_client] = lambda: task_hub  # type: ignore[attr-defined]
    yield task_hub
    api.client.app.dependency_overrides.pop(get_durable_client, None)  # type: ignore[attr-defined]


def _executions(api: ApiHarness, tenant: str) -> list[Any]:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        return conn.execute(
            "SELECT * FROM app.executions WHERE tenant_id = %s ORDER BY created_at, id", (api.tenants[tenant].id,)
        ).fetchall()


def test_a_retry_onto_a_version_the_caller_may_not_run_is_403_before_its_steps_are_compared(
    api: ApiHarness, hub: TaskHub
) -> None:
    """The version a retry runs is decided on before its steps are compared with the ones reused: a caller refused
    version 2 was answered 409 naming the step version 2 changes (a read of it, when reading it is refused)."""
    tenant = provision(api, "retry-secret")
    policy = {"name": "secret-runs", "policy": SECRET_RUNS}
    assert api.client.post("/api/v1/policies", json=policy, headers=api.headers(tenant, ADMIN)).status_code == 201
    intent = create(api, tenant, intent_body("retry-secret", wait_step("a"), wait_step("b")))["id"]
    failed = _failed_run(api, tenant, intent, ["a"], "b")
    secret = intent_body("retry-secret", wait_step("a", 2), wait_step("b"), labels={"secret": "yes"})
    assert put(api, tenant, intent, secret, etag=f'"{intent}.v1"').status_code == 200
    caller = api.headers(tenant, [*EXECUTOR, *READER])
    assert problem(api.client.get(f"{INTENTS}/{intent}/versions/2", headers=caller), 403)
    path = f"/api/v1/executions/{failed}/retry"
    before = _executions(api, tenant)

    refused = problem(api.client.post(path, json={"version": 2}, headers=caller), 403)
    assert refused["type"].endswith("/forbidden") and "changes steps" not in refused["detail"], refused
    # The current version refused, a version the intent does not have is refused alike: nothing of it is told.
    assert problem(api.client.post(path, json={"version": 999}, headers=caller), 403)["type"].endswith("/forbidden")
    # A version 3 the caller may run again (version 1's steps, unlabelled): version 2 is still decided on itself, and
    # a version the intent does not have is then 404.
    plain = intent_body("retry-secret", wait_step("a"), wait_step("b"))
    assert put(api, tenant, intent, plain, etag=f'"{intent}.v2"').status_code == 200
    assert problem(api.client.post(path, json={"version": 2}, headers=caller), 403)["type"].endswith("/forbidden")
    assert problem(api.client.post(path, json={"version": 999}, headers=caller), 404)["type"].endswith("/not-found")
    assert _executions(api, tenant) == before and hub.calls == []
    # Version 3 runs as the retried one did: the retry reuses step a.
    retried = api.client.post(path, json={"version": 3}, headers=caller)
    assert retried.status_code == 202, retried.text
    assert len(_executions(api, tenant)) == len(before) + 1
