# intent_ref: platform.execution
"""A child's step output shaped like a child's own output keeps the references inside it literal: only the outputs
of executions the database says its intent.run steps started are read, each from its own execution's folder."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import payloads, task_tokens, work_queue
from shared.engine import steps as store
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _intent
from tests.integration.test_literal_blob_outputs import SECRET, client, other_output, tenant  # noqa: F401
from tests.security.test_task_token_no_trace import RecordingClient, RemoteAttempt, stored_output

pytestmark = pytest.mark.integration


def _child(pool: ConnectionPool[Any], tenant_id: uuid.UUID, parent: uuid.UUID | None, step: str | None) -> uuid.UUID:
    """An execution started by `parent`'s step `step` (a root one without them), running."""
    intent_id = _intent(pool, tenant_id)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        execution, _ = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=intent_id,
            intent_version=1,
            target="staging",
            input={},
            requester=Requester("tester", frozenset(), app_only=False),
            parent_execution_id=parent,
            parent_step_id=step,
        )
        repo.transition(conn, execution.id, "running")
    return execution.id


def _remote_step(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> RemoteAttempt:
    """The remote attempt of the execution's module step `remote`, leased with its real task token (ADR 0027)."""
    key = AttemptKey(execution_id, "remote", "run", 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution_id, [StepSeed("remote", "build-container", 3)])
        store.begin_attempt(conn, key, action="build-container", remote=True)
        work_queue.enqueue(conn, key, action="build-container", params={}, timeout_s=600)
        leases = work_queue.lease(
            conn, tenant_id, actions=["build-container"], max_items=100, lease_s=600, worker="test-worker"
        ).leases
        (lease,) = [lease for lease in leases if lease.item.key == key]
    assert task_tokens.read_claims(lease.task_token).key == key
    return RemoteAttempt(tenant_id, key, lease.task_token)


def _padding() -> str:
    return "x" * (get_settings().QP_PAYLOAD_INLINE_MAX_BYTES + 1)


def _stored(tenant_id: uuid.UUID, execution_id: uuid.UUID, step: str, output: Any) -> Any:
    reference = payloads.claim_check(tenant_id, AttemptKey(execution_id, step, "run", 1), output, limit=0)
    assert payloads.is_blob_ref(reference)
    return reference


def test_a_child_module_steps_stored_output_shaped_like_a_childs_is_not_descended_into(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,  # noqa: F811  # the fixture
    client: RecordingClient,  # noqa: F811  # the fixture
    other_output: Any,  # noqa: F811  # the fixture
) -> None:
    # A worker of the child's module step returns an object whose `outputs` names another execution's output: read
    # as a grandchild's, the parent's load_output spliced that output into the parent's step parameters.
    parent = _child(app_pool, tenant, None, None)
    y = _remote_step(app_pool, tenant, _child(app_pool, tenant, parent, "c"))
    shaped = {"outputs": {"z": other_output}, "padding": _padding()}
    assert api.client.post(y.url(), json={"task_token": y.token, "output": shaped}).status_code == 200
    child_output = {"execution_id": str(y.key.execution_id), "outputs": {"remote": stored_output(app_pool, y)}}
    got = payloads.load_parts(tenant, child_output, [("outputs", "remote")], child=True)
    assert got["outputs"]["remote"] == shaped  # read from the child's folder, and kept as the worker gave it
    assert got["outputs"]["remote"]["outputs"]["z"] == other_output
    deep = payloads.load_parts(tenant, child_output, [("outputs", "remote", "outputs", "z", "secret")])
    assert deep == {"outputs": {"remote": {"outputs": {"z": {}}}}}
    whole = payloads.load_parts(tenant, child_output, [("outputs",)])
    assert whole["outputs"]["remote"]["outputs"]["z"] == other_output


def test_a_small_inline_step_output_shaped_like_a_childs_is_not_descended_into(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,  # noqa: F811  # the fixture
    other_output: Any,  # noqa: F811  # the fixture
) -> None:
    # Another step of the child stored a large output, so the child's output is loaded: the small one stays inline.
    parent = _child(app_pool, tenant, None, None)
    child = _child(app_pool, tenant, parent, "c")
    big = _stored(tenant, child, "big", {"n": _padding()})
    child_output = {"execution_id": str(child), "outputs": {"big": big, "remote": {"outputs": {"z": other_output}}}}
    whole = payloads.load_parts(tenant, child_output, [("outputs",)])
    assert whole["outputs"] == {"big": {"n": _padding()}, "remote": {"outputs": {"z": other_output}}}
    along = payloads.load_parts(tenant, child_output, [("outputs", "remote", "outputs", "z", "secret")])
    assert along == {"outputs": {"remote": {"outputs": {"z": {}}}}}


def test_a_grandchilds_outputs_are_read_only_under_the_step_that_started_it(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,  # noqa: F811  # the fixture
    other_output: Any,  # noqa: F811  # the fixture
) -> None:
    parent = _child(app_pool, tenant, None, None)
    child = _child(app_pool, tenant, parent, "c")
    grandchild = _child(app_pool, tenant, child, "g")
    deep = _stored(tenant, grandchild, "s", {"secret": "own"})
    nested = {"execution_id": str(grandchild), "outputs": {"s": deep}}
    # Step `g` started the grandchild; step `m` is a module step whose output names that very grandchild.
    child_output = {
        "execution_id": str(child),
        "outputs": {"g": _stored(tenant, child, "g", nested), "m": nested},
    }
    got = payloads.load_parts(tenant, child_output, [("outputs", "g", "outputs", "s", "secret"), ("outputs", "m")])
    assert got == {"outputs": {"g": {"outputs": {"s": {"secret": "own"}}}, "m": nested}}
    whole = payloads.load_parts(tenant, child_output, [("outputs",)])
    assert whole["outputs"] == {
        "g": {"execution_id": str(grandchild), "outputs": {"s": {"secret": "own"}}},
        "m": nested,
    }
    # The child's output stored as the parent's step's blob: its execution must be a child of that parent.
    stored = _stored(tenant, parent, "c", child_output)
    secret = [("outputs", "g", "outputs", "s", "secret")]
    assert payloads.load_parts(tenant, stored, secret) == {"outputs": {"g": {"outputs": {"s": {"secret": "own"}}}}}
    elsewhere = _stored(tenant, _child(app_pool, tenant, None, None), "m", child_output)
    assert payloads.load_parts(tenant, elsewhere, secret) == {"outputs": {"g": {}}}  # the reference, not read
    # An output naming an execution that is nobody's child is no child's output, whoever asks.
    root = {"execution_id": str(parent), "outputs": {"z": other_output}}
    assert payloads.load_parts(tenant, root, [("outputs", "z", "secret")]) == {"outputs": {"z": {}}}


def test_a_childs_step_output_outside_its_folder_is_refused(
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,  # noqa: F811  # the fixture
    other_output: Any,  # noqa: F811  # the fixture
) -> None:
    parent = _child(app_pool, tenant, None, None)
    child = _child(app_pool, tenant, parent, "c")
    child_output = {"execution_id": str(child), "outputs": {"a": other_output}}
    with pytest.raises(payloads.StoredOutputError, match="not in the folder of child execution"):
        payloads.load_parts(tenant, child_output, [("outputs", "a", "secret")])
    assert SECRET not in str(payloads.load_parts(tenant, child_output, [("status",)]))
