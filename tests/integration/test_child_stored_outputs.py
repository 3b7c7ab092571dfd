# intent_ref: platform.execution
"""A child execution's step outputs stored as blobs are read where a parent's references lead (rules 4): they met
the blob's reference instead of the output."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.engine import payloads
from shared.engine.payloads import StoredOutputError, claim_check, load_parts
from shared.engine.steps import AttemptKey

pytestmark = pytest.mark.integration


@pytest.fixture
def container(azurite: Any) -> ContainerClient:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("artifacts")
    if not client.exists():
        client.create_container()
    return client


def _stored(tenant_id: uuid.UUID, output: Any, container: ContainerClient) -> Any:
    key = AttemptKey(uuid.uuid4(), "step", "run", 1)
    reference = claim_check(tenant_id, key, output, limit=16, container=container)
    assert payloads.is_blob_ref(reference)
    return reference


def test_a_path_through_a_childs_stored_output_reads_it(
    container: ContainerClient, process_pools: None, new_tenant: Any
) -> None:
    tenant = new_tenant()
    big = _stored(tenant, {"body": "B" * 100, "status": 200}, container)
    kept = _stored(tenant, {"unread": "long enough to be stored"}, container)
    child = {"execution_id": "c-1", "outputs": {"big": big, "small": {"n": 1}, "other": kept}}
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
    foreign = {"execution_id": "c-2", "outputs": {"theirs": _stored(other, {"secret": "x" * 40}, container)}}
    with pytest.raises(StoredOutputError, match="prefix"):
        load_parts(tenant, foreign, [("outputs", "theirs")], container=container)
    monkeypatch.setattr(payloads, "MAX_NESTED_LOAD_BYTES", 150)
    many = {"execution_id": "c-3", "outputs": {f"s{i}": _stored(tenant, {"v": "y" * 60}, container) for i in range(3)}}
    with pytest.raises(StoredOutputError, match="more than 150 bytes"):
        load_parts(tenant, many, [("outputs",)], container=container)
