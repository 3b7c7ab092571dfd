# intent_ref: platform.execution
"""An output shaped like a stored output's reference is the step's literal output, never another stored output."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from shared.api.durable import get_durable_client
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import machine as m
from shared.engine import payloads, worker
from shared.engine import steps as store
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey, StepSeed
from shared.modules import Module, ModuleContext
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.security.test_task_token_no_trace import RecordingClient, remote_attempt, stored_output
from tests.unit.test_engine_machine import Run

pytestmark = pytest.mark.integration
SECRET = "from-execution-X"


@pytest.fixture
def client(api: ApiHarness) -> Iterator[RecordingClient]:  # noqa: F811  # the fixture
    recording = RecordingClient()
    api.client.app.dependency_overrides[get_durable_client] = lambda: recording  # type: ignore[attr-defined]
    yield recording
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811  # the fixture
    return api.provision("literals").id


@pytest.fixture
def other_output(api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, client: RecordingClient) -> Any:  # noqa: F811
    """The reference of another execution's output of the tenant, stored as a blob (over the inline limit)."""
    x = remote_attempt(app_pool, tenant)
    output = {"secret": SECRET, "padding": "x" * (get_settings().QP_PAYLOAD_INLINE_MAX_BYTES + 1)}
    assert api.client.post(x.url(), json={"task_token": x.token, "output": output}).status_code == 200
    reference = stored_output(app_pool, x)
    assert payloads.is_blob_ref(reference)
    return reference


def next_step_params(tenant: uuid.UUID, output: Any) -> dict[str, Any]:
    """What the step after one that gave `output` is dispatched with, its stored outputs read as load_output does."""
    run = Run(
        [
            {"id": "a", "action": "x"},
            {"id": "b", "action": "x", "depends_on": ["a"], "whole": "${steps.a.output}"},
        ]
    )
    run.answer_all()
    run.result("a", output=output)
    for load in run.activities(m.Activity.LOAD_OUTPUT):
        assert isinstance(load.input, m.LoadOutput)
        paths = [tuple(p) for p in load.input.paths]
        run.answer(load, payloads.load_parts(tenant, load.input.output, paths, child=load.input.child))
    (dispatch,) = run.activities(m.Activity.DISPATCH_STEPS)
    assert isinstance(dispatch.input, m.DispatchSteps) and dispatch.input.starts[0].step_id == "b"
    return dispatch.input.starts[0].params


def test_a_workers_reference_shaped_output_is_its_literal_output(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    client: RecordingClient,
    other_output: Any,
) -> None:
    # Kept as sent, the platform read it as its own reference and spliced in the other execution's output.
    y = remote_attempt(app_pool, tenant)
    assert api.client.post(y.url(), json={"task_token": y.token, "output": other_output}).status_code == 200
    recorded = stored_output(app_pool, y)
    assert payloads.is_blob_ref(recorded) and recorded != other_output
    assert payloads.load(recorded, tenant) == other_output
    assert payloads.load_parts(tenant, recorded, [("secret",)]) == {}  # `${steps.a.output.secret}` finds nothing
    (raised,) = [data for instance, _, data in client.raised if instance == str(y.key.execution_id)]
    assert next_step_params(tenant, raised["output"]) == {"whole": other_output}
    # The same result sent again is the repeat it is; another one is refused.
    again = api.client.post(y.url(), json={"task_token": y.token, "output": other_output})
    assert again.status_code == 200, again.text
    changed = api.client.post(y.url(), json={"task_token": y.token, "output": {"$blob": 1}})
    assert changed.status_code == 409 and changed.json()["type"].endswith("/task-token-used")


def test_a_steps_output_shaped_like_a_childs_keeps_the_references_inside_it_literal(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    client: RecordingClient,
    other_output: Any,
) -> None:
    # Read as a child's output, a module step's `outputs` member had its references read: the other output again.
    y = remote_attempt(app_pool, tenant)
    shaped = {"outputs": {"s": other_output}, "padding": "x" * (get_settings().QP_PAYLOAD_INLINE_MAX_BYTES + 1)}
    assert api.client.post(y.url(), json={"task_token": y.token, "output": shaped}).status_code == 200
    (raised,) = [data for instance, _, data in client.raised if instance == str(y.key.execution_id)]
    assert payloads.is_blob_ref(raised["output"])
    assert next_step_params(tenant, raised["output"]) == {"whole": shaped}


class _NoParams(BaseModel):
    pass


class _Echo(Module[_NoParams]):
    """A built-in action whose output an outside party chose (a response body, say)."""

    action = "test.echo"
    params_model = _NoParams
    output: Any = None

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        return self.output


def test_a_modules_reference_shaped_output_is_its_literal_output(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, other_output: Any
) -> None:
    execution = _execution(app_pool, tenant, path=["running"])
    key = AttemptKey(execution.id, "fetch", "run", 1)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("fetch", _Echo.action, 1)])
        store.begin_attempt(conn, key, action=_Echo.action, remote=False)
    item = WorkItem(
        tenant_id=tenant,
        execution_id=execution.id,
        step_id="fetch",
        phase="run",
        attempt=1,
        action=_Echo.action,
        params={},
        remote=False,
    )
    module = _Echo()
    module.output = other_output
    outcome = worker.run_item(item, {_Echo.action: module})
    assert outcome is not None and outcome.verdict["ok"]
    recorded = outcome.verdict["output"]
    assert payloads.is_blob_ref(recorded) and recorded != other_output
    assert next_step_params(tenant, recorded) == {"whole": other_output}


def test_a_child_step_output_read_from_a_blob_is_not_read_again(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, other_output: Any
) -> None:
    # Inside a child's output, a step's stored output holding a reference-shaped literal, and a reference-shaped
    # literal nested in a step's own output, are what those steps gave.
    parent = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        child_execution, _ = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=parent.intent_id,
            intent_version=1,
            target="staging",
            input={},
            requester=parent.requester,
            parent_execution_id=parent.id,
            parent_step_id="c",
        )
    key = AttemptKey(child_execution.id, "a", "run", 1)
    stored = payloads.claim_check(tenant, key, other_output)
    child = {"execution_id": str(child_execution.id), "outputs": {"a": stored, "b": {"inner": other_output}}}
    assert payloads.load_parts(tenant, child, [("outputs", "a")]) == {"outputs": {"a": other_output}}
    assert payloads.load_parts(tenant, child, [("outputs",)])["outputs"] == {
        "a": other_output,
        "b": {"inner": other_output},
    }
    assert payloads.load_parts(tenant, child, [("outputs", "b", "inner", "secret")]) == {
        "outputs": {"b": {"inner": {}}}
    }
