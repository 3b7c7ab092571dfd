# intent_ref: platform.tenants
"""A step's upload (a stored output, an artifact) and a tenant's erasure: a blob written after the erasure's last pass
is removed again by its writer, who looks at the tenant after the write. A module running across the erasure uploaded
after that pass, and the blob outlived the tenant for ever."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, cast

import pytest
from azure.storage.blob import ContainerClient
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from shared.api.routers import tenants as tenants_router
from shared.config import get_settings
from shared.engine import payloads, remote, worker
from shared.engine.steps import AttemptKey
from shared.modules import Module, ModuleContext, StepFailed, run_module
from shared.modules.artifact_write import ArtifactWriteModule
from shared.storage.blob import request_container
from shared.tenants import offboarding
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_module_worker_claims import (  # noqa: F401  # batches_held_whole: the fixture
    BOUND_S,
    _Batch,
    _dispatched,
    _Raiser,
    batches_held_whole,
)
from tests.integration.test_offboarding import _artifacts, _HeldUpload, marked_for_erasure
from tests.security.test_task_token_no_trace import remote_attempt

pytestmark = pytest.mark.integration

BIG = {"body": "x" * 400_000}
"""An output over the inline limit: claim-checked to `<tenant>/executions/<execution>/outputs/...`."""


class _NoParams(BaseModel):
    pass


class _SlowBig(Module[_NoParams]):
    """A built-in module still running (an http.request waiting on a slow server) when the erasure comes."""

    action: ClassVar[str] = "test.slow-big"
    params_model = _NoParams

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        self.entered.set()
        self.opened.wait(BOUND_S)
        return BIG


class _LateContainer:
    """An artifact.write container factory that waits until the test lets the module go on (started, not stored)."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> ContainerClient:
        self.entered.set()
        self.opened.wait(BOUND_S)
        return self._container


@pytest.fixture
def no_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker waits for the module's result without renewing its claim: after the erasure a renewal finds no
    attempt and the batch ends at once, while the module's thread goes on to its upload unobserved."""
    monkeypatch.setattr(worker, "HEARTBEAT_S", BOUND_S * 3)


def _left(blobs: ContainerClient, tenant_id: uuid.UUID) -> list[str]:
    return [blob.name for blob in blobs.list_blobs(name_starts_with=offboarding.tenant_blob_prefix(tenant_id))]


def _erase(tenant_id: uuid.UUID, blobs: ContainerClient) -> dict[str, int]:
    return offboarding.erase_tenant(marked_for_erasure(tenant_id), blobs, tenants_router.get_audit_store())


def _erased_while_uploading(
    tenant_id: uuid.UUID, blobs: ContainerClient, held: _HeldUpload, upload: Callable[[], Any]
) -> Any:
    """Run `upload` until it uploads through `held`, erase the tenant meanwhile (both its blob passes), then let the
    upload finish; answers what `upload` raised."""
    with ThreadPoolExecutor(1) as pool:
        uploading = pool.submit(upload)
        assert held.uploading.wait(BOUND_S)
        assert _erase(tenant_id, blobs)["tenants"] == 1
        held.finish.set()
        failure = uploading.exception(BOUND_S)
    assert failure is not None, "the upload answered as if its blob were kept"
    return failure


@pytest.fixture
def blobs(azurite: Any) -> ContainerClient:
    """The artifacts container of the test's Azurite (where the app's settings store outputs too)."""
    container: ContainerClient = _artifacts(azurite)
    return container


def test_a_module_running_across_the_erasure_leaves_no_output_blob(
    api: ApiHarness, blobs: ContainerClient, app_pool: ConnectionPool[Any], no_heartbeat: None
) -> None:
    tenant_id = api.provision("erased-mid-run").id
    module = _SlowBig()
    batch = _Batch([_dispatched(app_pool, tenant_id, module.action)], _Raiser(), {module.action: module})
    batch.start()
    try:
        assert module.entered.wait(BOUND_S)
        _erase(tenant_id, blobs)
    finally:
        module.opened.set()
    batch.outcome()  # the attempt went with its tenant, so nothing is recorded: a batch error, logged
    assert _left(blobs, tenant_id) == []


def test_an_output_stored_while_its_tenant_is_erased_is_removed_by_its_writer(
    api: ApiHarness, blobs: ContainerClient
) -> None:
    tenant_id = api.provision("erased-mid-store").id
    held = _HeldUpload(blobs)
    key = AttemptKey(uuid.uuid4(), "work", "run", 1)
    refused = _erased_while_uploading(
        tenant_id, blobs, held, lambda: payloads.claim_check(tenant_id, key, BIG, container=cast(ContainerClient, held))
    )
    assert isinstance(refused, payloads.TenantErasedError) and not refused.retryable
    assert _left(blobs, tenant_id) == []
    # An output within the inline limit is no upload: the tenant is not looked at.
    assert payloads.claim_check(tenant_id, key, {"n": 1}) == {"n": 1}


def test_an_output_stored_before_the_erasure_is_removed_by_it(api: ApiHarness, blobs: ContainerClient) -> None:
    tenant_id = api.provision("erased-after-store").id
    reference = payloads.claim_check(tenant_id, AttemptKey(uuid.uuid4(), "work", "run", 1), BIG, container=blobs)
    assert _left(blobs, tenant_id) == [reference[payloads.BLOB_REF]["name"]]
    _erase(tenant_id, blobs)
    assert _left(blobs, tenant_id) == []


def test_an_artifact_write_running_across_the_erasure_leaves_no_artifact(
    api: ApiHarness, blobs: ContainerClient, app_pool: ConnectionPool[Any], no_heartbeat: None
) -> None:
    tenant_id = api.provision("erased-mid-write").id
    late = _LateContainer(blobs)
    module = ArtifactWriteModule(late)
    item = _dispatched(app_pool, tenant_id, module.action).model_copy(
        update={"params": {"name": "report.json", "content": {"ok": True}}}
    )
    batch = _Batch([item], _Raiser(), {module.action: module})
    batch.start()
    try:
        assert late.entered.wait(BOUND_S)
        _erase(tenant_id, blobs)
    finally:
        late.opened.set()
    batch.outcome()
    assert _left(blobs, tenant_id) == []


def test_an_artifact_written_while_its_tenant_is_erased_is_removed_by_its_writer(
    api: ApiHarness, blobs: ContainerClient
) -> None:
    tenant_id = api.provision("erased-mid-artifact").id
    held = _HeldUpload(blobs)
    module = ArtifactWriteModule(lambda: cast(ContainerClient, held))
    context = ModuleContext(tenant_id, str(uuid.uuid4()), "write", 1)
    params = {"name": "report.json", "content": {"ok": True}}
    refused = _erased_while_uploading(
        tenant_id, blobs, held, lambda: run_module(module.action, context, params, {module.action: module})
    )
    assert isinstance(refused, StepFailed) and "erased" in str(refused) and not refused.retryable
    assert _left(blobs, tenant_id) == []


def test_a_remote_result_stored_while_its_tenant_is_erased_answers_its_lease_gone(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch, azurite: Any
) -> None:
    # Erased after the token verified, before its output was stored: the step failure escaped as a 500.
    tenant_id = api.provision("erased-mid-completion").id
    attempt = remote_attempt(app_pool, tenant_id)
    requests = request_container(get_settings())
    stored = remote.claim_check

    def erased_first(*args: Any, **kwargs: Any) -> Any:
        _erase(tenant_id, requests)
        return stored(*args, **kwargs)

    monkeypatch.setattr(remote, "claim_check", erased_first)
    with pytest.raises(remote.LeaseExpiredError):
        remote.record(attempt.token, attempt.key.execution_id, "build", "run", remote.RemoteResult(ok=True, output=BIG))
    assert _left(requests, tenant_id) == []
