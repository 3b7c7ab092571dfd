# intent_ref: platform.execution
"""What a retry reuses of the execution it retries: the outputs of its succeeded steps, never an approval, and never
a step after one that runs again."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.control import retry_request
from shared.engine.steps import StepSeed
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration

APPROVER = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Approver"}), app_only=False)


def _anyone(_item: Any) -> None:
    """The start's decision, allowing: what is reused is under test here, not who may retry."""


def _intent(pool: ConnectionPool[Any], tenant_id: uuid.UUID, steps: list[dict[str, Any]]) -> uuid.UUID:
    """An intent whose version 1 has `steps`, written directly (the registry is not under test here)."""
    intent_id = uuid.uuid4()
    definition = {"target": "staging", "steps": steps}
    with tenant_transaction(tenant_id, pool=pool) as conn:
        conn.execute(
            "INSERT INTO app.intents (tenant_id, id, name, created_by) VALUES (app.current_tenant_id(), %s, %s, 't')",
            (intent_id, f"i-{intent_id.hex[:12]}"),
        )
        conn.execute(
            "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
            " created_by) VALUES (app.current_tenant_id(), %s, 1, %s, %s, 't')",
            (intent_id, Jsonb(definition), hashlib.sha256(repr(steps).encode()).hexdigest()),
        )
    return intent_id


def _retried(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, steps: list[dict[str, Any]], states: dict[str, str]
) -> Any:
    """The retry request of a failed execution of an intent of `steps` whose step rows ended in `states`."""
    failed = _execution(pool, tenant_id, _intent(pool, tenant_id, steps), path=["running", "failed"])
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, failed.id, [StepSeed(step["id"], step["action"], 1) for step in steps])
        for step_id, state in states.items():
            conn.execute(
                "UPDATE app.execution_steps SET state = %s, output = %s WHERE execution_id = %s AND step_id = %s",
                (state, Jsonb({"from": step_id}) if state == "succeeded" else None, failed.id, step_id),
            )
        request = retry_request(
            conn,
            repo.get_execution(conn, failed.id),
            version=None,
            requester=APPROVER,
            idempotency_key=None,
            authorize=_anyone,
        )
    assert request.retry_of == failed.id
    return request


def _step(step_id: str, action: str, *after: str) -> dict[str, Any]:
    return {"id": step_id, "action": action, **({"depends_on": list(after)} if after else {})}


def test_a_retry_reuses_succeeded_work_but_asks_for_its_approvals_again(
    app_pool: ConnectionPool[Any], new_tenant: Any
) -> None:
    # A reused approval let the Approver who retried carry it into their own request (a self-approval in effect),
    # or carry it to a version whose later steps changed.
    steps = [
        _step("build", "artifact.write"),
        _step("gate", "approval", "build"),
        _step("ship", "http.request", "build"),
    ]
    request = _retried(app_pool, new_tenant(), steps, {"build": "succeeded", "gate": "succeeded", "ship": "failed"})
    assert request.reused == {"build": {"from": "build"}}


@pytest.mark.parametrize("runs_again", ["approval", "compensated"])
def test_a_retry_reuses_no_step_after_one_that_runs_again(
    app_pool: ConnectionPool[Any], new_tenant: Any, runs_again: str
) -> None:
    # Reused past an approval asked again (or a step undone and run again), `deploy` was ready at once: it ran
    # before the new decision, and `verify`, which reads the approval's output, failed unresolved.
    steps = [
        _step("build", "artifact.write"),
        _step("approve", "approval" if runs_again == "approval" else "http.request", "build"),
        _step("deploy", "http.request", "approve"),
        _step("notes", "event.emit", "build"),
        _step("verify", "http.request", "deploy"),
    ]
    states = {
        "build": "succeeded",
        "approve": "succeeded" if runs_again == "approval" else "compensated",
        "deploy": "succeeded",
        "notes": "succeeded",
        "verify": "failed",
    }
    request = _retried(app_pool, new_tenant(), steps, states)
    assert request.reused == {"build": {"from": "build"}, "notes": {"from": "notes"}}


def test_a_retry_reuses_steps_after_a_skipped_step_whose_dependencies_are_reused(
    app_pool: ConnectionPool[Any], new_tenant: Any
) -> None:
    steps = [
        _step("build", "artifact.write"),
        {**_step("optional", "event.emit", "build"), "when": "${inputs.version} == 'never'"},
        _step("deploy", "http.request", "optional"),
        _step("verify", "http.request", "deploy"),
    ]
    states = {"build": "succeeded", "optional": "skipped", "deploy": "succeeded", "verify": "failed"}
    request = _retried(app_pool, new_tenant(), steps, states)
    assert request.reused == {"build": {"from": "build"}, "deploy": {"from": "deploy"}}


def test_a_retry_onto_a_version_that_runs_a_step_skipped_before_reuses_nothing_after_it(
    app_pool: ConnectionPool[Any], new_tenant: Any
) -> None:
    # Version 2 drops the `when` that skipped `optional`: it runs in the retry, so `deploy`, reused past it, was
    # ready at once with an output made without it.
    tenant_id = new_tenant()
    v1 = [
        _step("build", "artifact.write"),
        {**_step("optional", "event.emit", "build"), "when": "${inputs.version} == 'never'"},
        _step("deploy", "http.request", "optional"),
        _step("verify", "http.request", "deploy"),
    ]
    v2 = [v1[0], _step("optional", "event.emit", "build"), v1[2], v1[3]]
    intent_id = _intent(app_pool, tenant_id, v1)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        conn.execute(
            "INSERT INTO app.intent_versions (tenant_id, intent_id, version, definition, definition_sha256,"
            " created_by) VALUES (app.current_tenant_id(), %s, 2, %s, %s, 't')",
            (intent_id, Jsonb({"target": "staging", "steps": v2}), hashlib.sha256(repr(v2).encode()).hexdigest()),
        )
    failed = _execution(app_pool, tenant_id, intent_id, path=["running", "failed"])
    states = {"build": "succeeded", "optional": "skipped", "deploy": "succeeded", "verify": "failed"}
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        store.seed_steps(conn, failed.id, [StepSeed(step["id"], step["action"], 1) for step in v1])
        for step_id, state in states.items():
            conn.execute(
                "UPDATE app.execution_steps SET state = %s, output = %s WHERE execution_id = %s AND step_id = %s",
                (state, Jsonb({"from": step_id}) if state == "succeeded" else None, failed.id, step_id),
            )
        request = retry_request(
            conn,
            repo.get_execution(conn, failed.id),
            version=2,
            requester=APPROVER,
            idempotency_key=None,
            authorize=_anyone,
        )
    assert request.reused == {"build": {"from": "build"}}
