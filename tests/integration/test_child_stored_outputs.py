# intent_ref: platform.execution
"""A child execution's step outputs stored as blobs are read where a parent's references lead (rules 4): they met
the blob's reference instead of the output."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.auth.principal import Requester
from shared.db.pool import get_pool
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import payloads
from shared.engine.payloads import StoredOutputError, claim_check, load_parts
from shared.engine.steps import AttemptKey
from tests.integration.test_executions import _intent

pytestmark = pytest.mark.integration


@pytest.fixture
def container(azurite: Any) -> ContainerClient:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("artifacts")
    if not client.exists():
        client.create_container()
    return client


def _child(tenant_id: uuid.UUID) -> uuid.UUID:
    """A child execution of a root one (what the loader asks the database before reading its step outputs)."""
    intent_id = _intent(get_pool(), tenant_id)
    made: list[uuid.UUID] = []
    with tenant_transaction(tenant_id) as conn:
        for parent in (None, "root"):
            execution, _ = repo.create_execution(
                conn,
                execution_id=uuid.uuid4(),
                intent_id=intent_id,
                intent_version=1,
                target="staging",
                input={},
                requester=Requester("tester", frozenset(), app_only=False),
                parent_execution_id=made[0] if parent else None,
                parent_step_id="child" if parent else None,
            )
            made.append(execution.id)
    return made[1]


def _stored(tenant_id: uuid.UUID, output: Any, container: ContainerClient, execution_id: uuid.UUID) -> Any:
    key = AttemptKey(execution_id, "step", "run", 1)
    reference = claim_check(tenant_id, key, output, limit=16, container=container)
    assert payloads.is_blob_ref(reference)
    return reference


def test_a_path_through_a_childs_stored_output_reads_it(
    container: ContainerClient, process_pools: None, new_tenant: Any
) -> None:
    tenant = new_tenant()
    c1 = _child(tenant)
    big = _stored(tenant, {"body": "B" * 100, "status": 200}, container, c1)
    kept = _stored(tenant, {"unread": "long enough to be stored"}, container, c1)
    child = {"execution_id": str(c1), "outputs": {"big": big, "small": {"n": 1}, "other": kept}}
    parts = load_parts(tenant, child, [("outputs", "big", "body"), ("outputs", "small")], container=container)
    assert parts == {"outputs": {"big": {"body": "B" * 100}, "small": {"n": 1}}}
    # A reference to all of the child's outputs reads every stored one beneath it.
    whole = load_parts(tenant, child, [("outputs",)], container=container)
    assert (
        whole["outputs"]["other"] == {"unread": "long enough to be stored"} and whole["outputs"]["big"]["status"] == 200
    )


def test_stored_outputs_of_another_tenant_or_beyond_the_budget_are_not_read(
    container: ContainerClient, monkeypatch: pytest.MonkeyPatch, process_pools: None, new_tenant: Any
) -> None:
    tenant, other = new_tenant(), new_tenant()
    c2 = _child(tenant)
    foreign = {"execution_id": str(c2), "outputs": {"theirs": _stored(other, {"secret": "x" * 40}, container, c2)}}
    with pytest.raises(StoredOutputError, match="prefix"):
        load_parts(tenant, foreign, [("outputs", "theirs")], container=container)
    monkeypatch.setattr(payloads, "MAX_NESTED_LOAD_BYTES", 150)
    c3 = _child(tenant)
    many = {
        "execution_id": str(c3),
        "outputs": {f"s{i}": _stored(tenant, {"v": "y" * 60}, container, c3) for i in range(3)},
    }
    with pytest.raises(StoredOutputError, match="more than 150 bytes"):
        load_parts(tenant, many, [("outputs",)], container=container)
