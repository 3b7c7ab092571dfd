# intent_ref: platform.execution
"""A module's output over the inline limit is stored by its attempt's deadline too: under the Blob SDK's own retries
the worker's claim check (the process's first container check, the upload, an erased tenant's removal) held the
module thread, and its tenant's share of them, about 320 s past the deadline against a store that never answered.
Cut off, it fails the attempt retryably, as the module's own storage failure does, and never records the output as
succeeded without its blob (ADR 0026)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import psycopg
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from psycopg_pool import ConnectionPool

from devhost.services import Azurite
from shared.config import Settings
from shared.engine import payloads, worker
from shared.engine.payloads import BLOB_REF
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey
from shared.modules import Module, ModuleContext, artifact_write
from shared.storage import blob
from shared.storage.blob import StorageCall, unbounded
from shared.tenants import offboarding
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_module_deadlines_first_use import (  # noqa: F401  # `store`: the fixture
    DEADLINE_S,
    _endpoint,
    _Store,
    store,
)
from tests.integration.test_module_worker_claims import (  # noqa: F401  # batches_held_whole: the fixture
    BOUND_S,
    _Batch,
    _dispatched,
    _NoParams,
    _Raiser,
    _row,
    batches_held_whole,
)
from tests.integration.test_sdk_module_deadlines import (  # noqa: F401  # `silent`, `answering`: the fixtures
    _Answering,
    _container,
    _Silent,
    answering,
    silent,
)

pytestmark = pytest.mark.integration

LARGE = {"report": "x" * (80 * 1024)}
"""An output over the default inline limit (64 KiB): the worker stores it as a blob."""


class _Large(Module[_NoParams]):
    """Returns an output too large to travel inline."""

    action: ClassVar[str] = "test.large-output"
    params_model = _NoParams

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        return LARGE


_MODULES: Mapping[str, Module[Any]] = {_Large.action: _Large()}


def _item(tenant_id: uuid.UUID) -> WorkItem:
    return WorkItem(
        tenant_id=tenant_id,
        execution_id=uuid.uuid4(),
        step_id="work",
        phase="run",
        attempt=1,
        action=_Large.action,
        params={},
        remote=False,
        timeout_s=60,
    )


class _Attempt:
    """The worker's run of one claimed attempt on a module thread of its own (the claim just taken, so not looked at
    again); `result` waits for the thread to give itself back."""

    def __init__(self, item: WorkItem, deadline_in: float, ended: threading.Event | None = None) -> None:
        deadline = time.monotonic() + deadline_in
        ended = threading.Event() if ended is None else ended
        self.ctx = ModuleContext(item.tenant_id, str(item.execution_id), item.step_id, item.attempt, deadline=deadline)
        key = AttemptKey(item.execution_id, item.step_id, item.phase, item.attempt)
        self._result: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._result = worker._run_module(
                    item,
                    key,
                    "owner",
                    self.ctx,
                    _MODULES,
                    deadline,
                    time.monotonic() + BOUND_S,
                    worker._Start(),
                    ended,
                )
            except BaseException as exc:  # the test looks at it
                self._error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def result(self, within_s: float = BOUND_S) -> dict[str, Any]:
        self._thread.join(within_s)
        assert not self._thread.is_alive(), "the claim check still held the module thread long after the deadline"
        assert self._error is None, f"the run raised instead of answering a result: {self._error!r}"
        assert isinstance(self._result, dict)
        return self._result


def _store_at(container: ContainerClient) -> Callable[..., ContainerClient]:
    """The worker's artifacts container, already checked by this process (as after its first output)."""

    def artifacts_container(settings: Settings, *, within: StorageCall = unbounded) -> ContainerClient:  # noqa: ARG001
        return container

    return artifacts_container


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No artifacts container client made yet, as in a process that has just started."""
    monkeypatch.setattr(blob, "_containers", {})
    monkeypatch.setattr(blob, "_checked", set())


def test_a_large_outputs_first_container_check_ends_its_attempt_retryably_by_its_deadline(
    silent: _Silent,  # noqa: F811
    fresh_process: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings.model_construct(
        QP_BLOB_CONNECTION_STRING=_endpoint(silent.port),
        QP_BLOB_ACCOUNT_URL=None,
        QP_ARTIFACTS_CONTAINER="artifacts",
        QP_PAYLOAD_INLINE_MAX_BYTES=64 * 1024,
    )
    monkeypatch.setattr(payloads, "get_settings", lambda: settings)
    result = _Attempt(_item(uuid.uuid4()), DEADLINE_S).result()
    assert result["ok"] is False and result["retryable"] is True and "output" not in result
    assert result["error"].startswith("the check of container 'artifacts' not done by its attempt's deadline")


def test_a_large_outputs_upload_to_a_silent_store_ends_its_attempt_retryably_by_its_deadline(
    silent: _Silent,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(_container(silent.port)))
    monkeypatch.setattr(
        payloads, "get_settings", lambda: Settings.model_construct(QP_PAYLOAD_INLINE_MAX_BYTES=64 * 1024)
    )
    result = _Attempt(_item(uuid.uuid4()), DEADLINE_S).result()
    assert result["ok"] is False and result["retryable"] is True and "output" not in result
    assert result["error"].startswith("the storing of the output ")
    assert "not done by its attempt's deadline" in result["error"]


def test_the_removal_of_an_erased_tenants_output_ends_its_attempt_for_the_erasure(
    store: _Store,  # noqa: F811
    process_pools: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The tenant (never provisioned here) reads as erased once the upload is taken; the store never answers the
    # delete that follows. The removal is tried for its own window (REMOVAL_WINDOW_S, however little is left of the
    # attempt), then named for an operator, and the attempt fails for the erasure, not retried.
    container = BlobServiceClient.from_connection_string(_endpoint(store.server_port)).get_container_client("artifacts")
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(container))
    result = _Attempt(_item(uuid.uuid4()), DEADLINE_S).result()
    assert store.deletes.is_set()
    assert result["ok"] is False and result["retryable"] is False and "output" not in result
    assert result["error"].endswith("was erased; the step's output was not stored"), result


def test_the_removal_of_an_erased_tenants_output_is_tried_though_the_erasure_ended_the_run(
    store: _Store,  # noqa: F811
    process_pools: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The erasure deletes the attempt's row, so the run's claim is found lost and nobody waits for it any more (its
    # `ended` set) while its output's tenant is looked at: bounded by that, the removal gave up before any delete.
    ended = threading.Event()
    container = BlobServiceClient.from_connection_string(_endpoint(store.server_port)).get_container_client("artifacts")
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(container))
    looked = offboarding.tenant_exists

    def erased_meanwhile(tenant_id: uuid.UUID, **kwargs: Any) -> bool:
        ended.set()
        return looked(tenant_id, **kwargs)

    monkeypatch.setattr(offboarding, "tenant_exists", erased_meanwhile)
    result = _Attempt(_item(uuid.uuid4()), DEADLINE_S, ended).result()
    assert ended.is_set() and store.deletes.is_set()
    assert result["ok"] is False and result["retryable"] is False, result


def test_the_removal_of_an_erased_tenants_output_takes_its_window_not_the_attempts_deadline(
    store: _Store,  # noqa: F811
    process_pools: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Bounded by an attempt's deadline minutes away, a delete the store never answers held the module thread (and its
    # tenant's share) for the retry window and a try's timeouts, for nobody: a failed delete is noted for the timer.
    container = BlobServiceClient.from_connection_string(_endpoint(store.server_port)).get_container_client("artifacts")
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(container))
    result = _Attempt(_item(uuid.uuid4()), 600.0).result()  # its thread back within BOUND_S, or it fails
    assert store.deletes.is_set()
    assert result["ok"] is False and result["retryable"] is False, result


def test_a_large_output_with_a_deadline_is_stored_as_before(
    azurite: Azurite,
    process_pools: None,
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The per-call options reach a real store, on the first upload and on a redelivery's look at the blob found.
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("outputs")
    if not container.exists():
        container.create_container()
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(container))
    item = _item(new_tenant())
    first = _Attempt(item, BOUND_S).result()
    again = _Attempt(item, BOUND_S).result()
    assert first["ok"] is True and again == first
    ref = first["output"][BLOB_REF]
    assert json.loads(container.download_blob(ref["name"]).readall()) == LARGE


def test_a_claim_check_given_up_is_recorded_as_the_attempts_retryable_failure(
    answering: _Answering,  # noqa: F811
    app_pool: ConnectionPool[Any],
    api: ApiHarness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A store answering 503 within a 60 s step timeout: the claim check retries for its window and gives up, and the
    # worker records the attempt failed and retryable, with no output. Before, the SDK's own retries (15 to 27 s
    # apart) ran on past the deadline, and the attempt was only abandoned as timed out.
    monkeypatch.setattr(artifact_write, "MAX_BACKOFF_S", 0.01)
    monkeypatch.setattr(artifact_write, "MAX_RETRY_WINDOW_S", 0.5)
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(_container(answering.server_port, "status-503")))
    item = _dispatched(app_pool, api.provision("claim-check").id, _Large.action)
    raiser = _Raiser()
    batch = _Batch([item], raiser, _MODULES)
    batch.start()
    assert batch.outcome() == 1
    row = _row(app_pool, item)
    assert row["state"] == "failed" and row["output"] is None, row
    assert row["error"].startswith("the storing of the output ") and "within 0.5 s of retries" in row["error"], row
    (verdict,) = raiser.to(item.execution_id)
    assert verdict["ok"] is False and verdict["retryable"] is True


def test_a_store_refusing_a_large_output_fails_its_attempt_not_the_batch(
    answering: _Answering,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 403 is not retried by the store's client: it was let out of the run, failing the whole batch (every other
    # item retried with it); it is the attempt's retryable failure, as a module's own storage error is.
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(_container(answering.server_port, "status-403")))
    monkeypatch.setattr(
        payloads, "get_settings", lambda: Settings.model_construct(QP_PAYLOAD_INLINE_MAX_BYTES=64 * 1024)
    )
    result = _Attempt(_item(uuid.uuid4()), DEADLINE_S).result()
    assert result["ok"] is False and result["retryable"] is True and "output" not in result
    assert result["error"].startswith(f"the storing of {_Large.action}'s output failed: "), result


ERASURE_HOLDS_S = 30.0
"""How long the stand-in erasure below holds its tenant's row unless the run answers first."""


class _Erasure(threading.Thread):
    """An erasure's transaction holding the tenant row (its FOR UPDATE, `offboarding._erase_rows`) until the test has
    its answer, or ERASURE_HOLDS_S; `released` is set just before it lets the row go."""

    def __init__(self, admin_url: str, tenant_id: uuid.UUID) -> None:
        super().__init__(daemon=True)
        self._admin_url = admin_url
        self._tenant_id = tenant_id
        self.locked = threading.Event()
        self.answered = threading.Event()
        self.released = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self._admin_url, dbname="quantum") as erasing:
            erasing.execute("SELECT 1 FROM app.tenants WHERE id = %s FOR UPDATE", (self._tenant_id,))
            self.locked.set()
            self.answered.wait(ERASURE_HOLDS_S)
            self.released.set()
            erasing.rollback()


def _outputs_container(azurite: Azurite) -> ContainerClient:
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("outputs")
    if not container.exists():
        container.create_container()
    return container


def test_the_look_at_its_tenant_while_an_erasure_holds_its_row_ends_the_attempt_before_the_row_is_let_go(
    azurite: Azurite,
    process_pools: None,
    new_tenant: Callable[[], uuid.UUID],
    pg: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The look at the tenant after the output's store waited for the erasure's lock on the tenant row as long as the
    # erasure held it (up to the 60 s statement timeout), the module thread and a pooled connection held with it,
    # whatever the attempt's deadline and though nobody waited for the run any more: the run answered only once the
    # row was let go. Now the look is bounded by a couple of seconds at most, and the attempt fails retryably.
    monkeypatch.setattr(payloads, "artifacts_container", _store_at(_outputs_container(azurite)))
    tenant_id = new_tenant()
    erasure = _Erasure(pg.admin_url, tenant_id)
    erasure.start()
    ended = threading.Event()
    nobody_waits = threading.Timer(2.0, ended.set)  # the run's end at its deadline, as `_run_claimed` sets it
    try:
        assert erasure.locked.wait(BOUND_S)
        nobody_waits.start()
        attempt = _Attempt(_item(tenant_id), 2.0, ended)
        # Waited for past the erasure's hold: whether the run answered before the row was let go decides, not a time.
        result = attempt.result(ERASURE_HOLDS_S + BOUND_S)
        answered_while_held = not erasure.released.is_set()
    finally:
        erasure.answered.set()
        nobody_waits.cancel()
        erasure.join(BOUND_S)
    assert answered_while_held, "the run answered only once the erasure let the tenant row go"
    assert result["ok"] is False and result["retryable"] is True and "output" not in result, result
    assert result["error"].startswith(f"the storing of {_Large.action}'s output failed: "), result


class _EndsWithTheUpload:
    """A container whose upload (a real one) is followed by the run's end (a cancel, say) before its tenant is looked
    at."""

    def __init__(self, container: ContainerClient, ended: threading.Event) -> None:
        self._container = container
        self._ended = ended
        self.container_name = container.container_name

    def upload_blob(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._container.upload_blob(*args, **kwargs)
        finally:
            self._ended.set()


def test_the_look_at_its_tenant_is_not_made_once_nobody_waits_for_the_run(
    azurite: Azurite,
    process_pools: None,
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Once nobody waits for the run, its store stops (ADR 0026); the look at its tenant, which an erasure holding the
    # row held up to the statement timeout, was still made then.
    ended = threading.Event()
    container = _EndsWithTheUpload(_outputs_container(azurite), ended)
    monkeypatch.setattr(payloads, "artifacts_container", lambda settings, **kwargs: container)
    looks: list[uuid.UUID] = []
    look = offboarding.tenant_exists

    def counted(tenant_id: uuid.UUID, **kwargs: Any) -> bool:
        looks.append(tenant_id)
        return look(tenant_id, **kwargs)

    monkeypatch.setattr(offboarding, "tenant_exists", counted)
    result = _Attempt(_item(new_tenant()), BOUND_S, ended).result()
    assert ended.is_set() and looks == []
    assert result["ok"] is False and result["retryable"] is True and "output" not in result, result
