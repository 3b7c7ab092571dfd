# intent_ref: platform.execution
"""An execution's stored outputs and its steps' artifacts live in disjoint folders: an artifact.write step named
`outputs` wrote where the stored outputs were, and could replace, pre-empt or (compensated) delete one."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from shared.config import get_settings
from shared.engine import payloads
from shared.engine.steps import AttemptKey
from shared.modules import ModuleContext, run_module
from shared.modules.artifact_write import ArtifactWriteModule
from shared.registry.model import assign_step_ids
from shared.registry.references import STEP_ID_PATTERN
from shared.storage.blob import artifacts_container
from shared.tenants.offboarding import tenant_blob_prefix
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

OUTPUT = {"report": "x" * 100}


def _body(output: Any) -> bytes:
    return json.dumps(output, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811  # the fixture
    return api.provision("outputs-apart").id


@pytest.fixture
def container(api: ApiHarness) -> ContainerClient:  # noqa: F811  # the fixture (its settings)
    return artifacts_container(get_settings())


def test_no_step_id_names_the_stored_outputs_folder() -> None:
    assert re.fullmatch(STEP_ID_PATTERN, payloads.OUTPUTS_FOLDER) is None
    assert payloads.OUTPUTS_FOLDER not in assign_step_ids([(None, payloads.OUTPUTS_FOLDER)])


def test_an_artifact_of_a_step_named_outputs_leaves_the_stored_outputs_alone(tenant: uuid.UUID) -> None:
    execution = uuid.uuid4()
    key = AttemptKey(execution, "fetch", "run", 1)
    reference = payloads.claim_check(tenant, key, OUTPUT, limit=10)
    stored = f"sha256-{hashlib.sha256(_body(OUTPUT)).hexdigest()}.json"
    step = ModuleContext(tenant_id=tenant, execution_id=str(execution), step_id="outputs", attempt=1)
    params = {"name": stored, "content": {"forged": True}}
    written = run_module("artifact.write", step, params)
    assert written["blob_name"] != reference[payloads.BLOB_REF]["name"]
    assert payloads.load(reference, tenant) == OUTPUT
    # Its compensation deletes the artifact only.
    module = ArtifactWriteModule()
    undo = ModuleContext(
        tenant_id=tenant, execution_id=str(execution), step_id="outputs", attempt=1, phase="compensate"
    )
    module.compensate(undo, module.parse(params), written)
    assert payloads.load(reference, tenant) == OUTPUT
    # Written before the artifact, the same name is not pre-empted either.
    later = {"later": "y" * 100}
    later_name = f"sha256-{hashlib.sha256(_body(later)).hexdigest()}.json"
    run_module("artifact.write", step, {"name": later_name, "content": {"forged": True}})
    assert payloads.load(payloads.claim_check(tenant, key, later, limit=10), tenant) == later


def test_a_blob_under_an_outputs_name_holding_other_bytes_is_replaced(
    tenant: uuid.UUID, container: ContainerClient
) -> None:
    execution = uuid.uuid4()
    digest = hashlib.sha256(_body(OUTPUT)).hexdigest()
    name = payloads.blob_name(tenant, execution, digest)
    container.upload_blob(name, b'{"forged":true}')
    reference = payloads.claim_check(tenant, AttemptKey(execution, "fetch", "run", 1), OUTPUT, limit=10)
    assert reference[payloads.BLOB_REF]["name"] == name
    assert payloads.load(reference, tenant) == OUTPUT
    # One holding these very bytes is kept as it is.
    etag = container.get_blob_client(name).get_blob_properties().etag
    assert payloads.claim_check(tenant, AttemptKey(execution, "other", "run", 1), OUTPUT, limit=10) == reference
    assert container.get_blob_client(name).get_blob_properties().etag == etag


def test_a_reference_to_the_old_outputs_folder_still_loads(tenant: uuid.UUID, container: ContainerClient) -> None:
    body = _body(OUTPUT)
    digest = hashlib.sha256(body).hexdigest()
    name = f"{tenant_blob_prefix(tenant)}executions/{uuid.uuid4()}/outputs/sha256-{digest}.json"
    container.upload_blob(name, body)
    reference = {
        payloads.BLOB_REF: {"container": container.container_name, "name": name, "size": len(body), "sha256": digest}
    }
    assert payloads.load(reference, tenant) == OUTPUT
