# intent_ref: platform.hardening
"""A refused remote completion leaves no trace, and a stored output can be neither replaced nor tampered with."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from shared.api.durable import get_durable_client
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import payloads, remote, task_tokens, work_queue, worker
from shared.engine import steps as store
from shared.engine.protocol import WorkItem
from shared.engine.steps import AttemptKey, StepSeed
from shared.modules import Module, ModuleContext
from shared.tenants.offboarding import tenant_blob_prefix
from tests.integration.api_harness import ApiHarness
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration

# Every table a completion writes (or a token check could), and the one holding the signing keys.
TABLES = (
    "step_attempts",
    "work_items",
    "execution_steps",
    "execution_events",
    "outbox",
    "audit_events",
    "executions",
    "task_token_keys",
)


class RecordingClient:
    """The orchestration client of the request: records what would be raised."""

    def __init__(self) -> None:
        self.raised: list[tuple[str, str, Any]] = []

    async def raise_event(self, instance_id: str, name: str, data: Any) -> None:
        self.raised.append((instance_id, name, data))


@dataclass(frozen=True)
class RemoteAttempt:
    tenant_id: uuid.UUID
    key: AttemptKey
    token: str

    def url(self, *, execution_id: uuid.UUID | None = None, step_id: str | None = None) -> str:
        return (
            f"/api/v1/executions/{execution_id or self.key.execution_id}/steps/{step_id or self.key.step_id}/complete"
        )


@pytest.fixture(scope="module")
def tenants(api: ApiHarness) -> dict[str, uuid.UUID]:
    return {name: api.provision(name).id for name in ("victim", "attacker")}


@pytest.fixture
def client(api: ApiHarness) -> Iterator[RecordingClient]:
    recording = RecordingClient()
    api.client.app.dependency_overrides[get_durable_client] = lambda: recording  # type: ignore[attr-defined]
    yield recording
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def artifacts(api: ApiHarness, azurite: Any) -> ContainerClient:
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        get_settings().QP_ARTIFACTS_CONTAINER
    )
    if not container.exists():
        container.create_container()
    return container


def big_output(marker: str) -> dict[str, Any]:
    """An output whose JSON is over the inline limit, so it would be stored as a blob."""
    return {"marker": marker, "padding": "x" * (get_settings().QP_PAYLOAD_INLINE_MAX_BYTES + 1)}


def remote_attempt(
    pool: ConnectionPool[Any],
    tenant_id: uuid.UUID,
    *,
    expires_at: datetime | None = None,
    steps: tuple[str, ...] = ("build", "deploy"),
) -> RemoteAttempt:
    """An execution whose first step has a dispatched remote attempt, queued and leased as a worker would (ADR
    0027), with the real task token of its lease (its expiry moved to `expires_at` when given)."""
    execution = _execution(pool, tenant_id, path=["running"])
    key = AttemptKey(execution.id, steps[0], "run", 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed(step, "build-container", 3) for step in steps])
        store.begin_attempt(conn, key, action="build-container", remote=True)
        work_queue.enqueue(conn, key, action="build-container", params={}, timeout_s=600)
        leases = work_queue.lease(
            conn, tenant_id, actions=["build-container"], max_items=100, lease_s=600, worker="test-worker"
        ).leases
        (lease,) = [lease for lease in leases if lease.item.key == key]
        token = lease.task_token
        if expires_at is not None:
            nonce = str(lease.item.lease_id)
            token = task_tokens.issue(conn, tenant_id, key, 0, nonce=nonce, expires_at=expires_at).token
            conn.execute(
                "UPDATE app.step_attempts SET token_expires_at = %s WHERE token_nonce = %s", (expires_at, nonce)
            )
    return RemoteAttempt(tenant_id, key, token)


def trace(api: ApiHarness, artifacts: ContainerClient) -> tuple[object, ...]:
    """Everything a completion could leave behind: the rows of its tables and every stored blob's name and etag."""
    blobs = sorted((blob.name, blob.etag) for blob in artifacts.list_blobs())
    return (*(api.table_snapshot(table) for table in TABLES), blobs)


def rewrite_claims(token: str, **changes: str) -> str:
    """The token with its claims changed and its signature kept (what a forger who lacks the key can do)."""
    prefix, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    moved = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{moved}.{signature}"


def stored_output(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> Any:
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        return {step["step_id"]: step["output"] for step in store.list_steps(conn, attempt.key.execution_id)}[
            attempt.key.step_id
        ]


# ------------------------------------------------------------------------------- refused tokens leave no trace
def _forged(pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> tuple[str, str, int]:
    victim = remote_attempt(pool, tenants["victim"])
    prefix, payload, signature = victim.token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return victim.url(), f"{prefix}.{payload}.{flipped}", 401


def _expired(pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> tuple[str, str, int]:
    victim = remote_attempt(pool, tenants["victim"], expires_at=datetime.now(UTC) - timedelta(minutes=1))
    return victim.url(), victim.token, 401


def _other_tenants_claims(pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> tuple[str, str, int]:
    # The attacker's own valid token, its claims pointed at the victim's attempt: the victim's key refuses it.
    victim = remote_attempt(pool, tenants["victim"])
    own = remote_attempt(pool, tenants["attacker"])
    forged = rewrite_claims(own.token, t=str(tenants["victim"]), e=str(victim.key.execution_id))
    return victim.url(), forged, 401


def _other_tenants_token_on_victims_url(
    pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> tuple[str, str, int]:
    victim = remote_attempt(pool, tenants["victim"])
    own = remote_attempt(pool, tenants["attacker"])
    return victim.url(), own.token, 403


def _another_execution(pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> tuple[str, str, int]:
    first = remote_attempt(pool, tenants["victim"])
    second = remote_attempt(pool, tenants["victim"])
    return second.url(), first.token, 403


def _another_step(pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> tuple[str, str, int]:
    victim = remote_attempt(pool, tenants["victim"])
    return victim.url(step_id="deploy"), victim.token, 403


REFUSALS: dict[str, Callable[[ConnectionPool[Any], dict[str, uuid.UUID]], tuple[str, str, int]]] = {
    "bad-signature": _forged,
    "expired": _expired,
    "other-tenants-claims": _other_tenants_claims,
    "other-tenants-token": _other_tenants_token_on_victims_url,
    "another-execution": _another_execution,
    "another-step": _another_step,
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_token_leaves_no_trace(
    case: str,
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenants: dict[str, uuid.UUID],
    artifacts: ContainerClient,
    client: RecordingClient,
) -> None:
    url, token, status = REFUSALS[case](app_pool, tenants)
    before = trace(api, artifacts)
    response = api.client.post(url, json={"task_token": token, "output": big_output("attacker")})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert trace(api, artifacts) == before
    assert client.raised == []


def test_a_spent_token_leaves_no_trace_and_the_first_result_stands(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenants: dict[str, uuid.UUID],
    artifacts: ContainerClient,
    client: RecordingClient,
) -> None:
    victim = remote_attempt(app_pool, tenants["victim"])
    first = api.client.post(victim.url(), json={"task_token": victim.token, "output": big_output("worker")})
    assert first.status_code == 200, first.text
    reference = stored_output(app_pool, victim)
    before = trace(api, artifacts)

    for body in (
        {"task_token": victim.token, "output": big_output("attacker")},
        {"task_token": victim.token, "output": {"small": "attacker"}},
    ):
        again = api.client.post(victim.url(), json=body)
        assert again.status_code == 409, again.text
        assert again.json()["type"].endswith("task-token-used")
    failed = api.client.post(
        victim.url().replace("/complete", "/fail"), json={"task_token": victim.token, "error": "attacker"}
    )
    assert failed.status_code == 409, failed.text

    assert trace(api, artifacts) == before
    assert payloads.load(reference, tenants["victim"])["marker"] == "worker"
    assert len(client.raised) == 1  # the first completion only


def test_a_token_whose_attempt_ended_leaves_no_trace(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenants: dict[str, uuid.UUID],
    artifacts: ContainerClient,
    client: RecordingClient,
) -> None:
    victim = remote_attempt(app_pool, tenants["victim"])
    with tenant_transaction(victim.tenant_id, pool=app_pool) as conn:
        store.finish_attempt(conn, victim.key, ok=False, error="no result in time", state="timed_out")
    before = trace(api, artifacts)
    response = api.client.post(victim.url(), json={"task_token": victim.token, "output": big_output("late")})
    assert response.status_code == 409, response.text
    assert "timed_out" in response.json()["detail"]
    assert trace(api, artifacts) == before
    assert client.raised == []


# ------------------------------------------------------------------------------------ stored outputs immutable
def test_a_completion_stores_its_output_under_its_digest(
    api: ApiHarness,
    app_pool: ConnectionPool[Any],
    tenants: dict[str, uuid.UUID],
    artifacts: ContainerClient,
    client: RecordingClient,
) -> None:
    victim = remote_attempt(app_pool, tenants["victim"])
    output = big_output("worker")
    response = api.client.post(victim.url(), json={"task_token": victim.token, "output": output})
    assert response.status_code == 200, response.text
    reference = stored_output(app_pool, victim)
    body = json.dumps(output, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hashlib.sha256(body).hexdigest()
    assert reference[payloads.BLOB_REF]["sha256"] == digest
    assert reference[payloads.BLOB_REF]["name"] == (
        f"{tenant_blob_prefix(victim.tenant_id)}executions/{victim.key.execution_id}/.outputs/"
        f"{remote.lease_folder(victim.key, task_tokens.read_claims(victim.token).nonce)}/sha256-{digest}.json"
    )
    assert artifacts.download_blob(reference[payloads.BLOB_REF]["name"]).readall() == body
    assert client.raised == [(str(victim.key.execution_id), "run:build:1", {"ok": True, "output": reference})]


def test_racing_completions_record_one_result_and_keep_its_output(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    victim = remote_attempt(app_pool, tenants["victim"])
    start = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def report(marker: str) -> None:
        start.wait()
        try:
            outcomes[marker] = remote.record(
                victim.token,
                victim.key.execution_id,
                "build",
                "run",
                remote.RemoteResult(ok=True, output=big_output(marker)),
            )
        except remote.TokenUsedError as exc:
            outcomes[marker] = exc

    threads = [threading.Thread(target=report, args=(marker,)) for marker in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [marker for marker, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    assert len(winners) == 1 and len(outcomes) == 2, outcomes
    loser = next(marker for marker in outcomes if marker not in winners)
    assert isinstance(outcomes[loser], remote.TokenUsedError)
    reference = stored_output(app_pool, victim)
    assert outcomes[winners[0]].verdict == {"ok": True, "output": reference}
    assert payloads.load(reference, victim.tenant_id)["marker"] == winners[0]


def test_storing_the_same_output_again_is_a_success_and_another_never_replaces_it(
    api: ApiHarness, tenants: dict[str, uuid.UUID], artifacts: ContainerClient
) -> None:
    key = AttemptKey(uuid.uuid4(), "build", "run", 1)
    first = payloads.claim_check(tenants["victim"], key, big_output("one"))
    assert payloads.claim_check(tenants["victim"], key, big_output("one")) == first  # a redelivered result
    second = payloads.claim_check(tenants["victim"], key, big_output("two"))  # the same attempt, other bytes
    assert second[payloads.BLOB_REF]["name"] != first[payloads.BLOB_REF]["name"]
    assert payloads.load(first, tenants["victim"])["marker"] == "one"
    assert payloads.load(second, tenants["victim"])["marker"] == "two"


@pytest.mark.parametrize("tampering", ["same-length", "longer", "shorter", "deleted"])
def test_a_blob_tampered_in_storage_is_detected_on_load(
    tampering: str, api: ApiHarness, tenants: dict[str, uuid.UUID], artifacts: ContainerClient
) -> None:
    key = AttemptKey(uuid.uuid4(), "build", "run", 1)
    reference = payloads.claim_check(tenants["victim"], key, big_output("worker"))
    name = reference[payloads.BLOB_REF]["name"]
    original = artifacts.download_blob(name).readall()
    tampered = {
        "same-length": original.replace(b'"worker"', b'"hacker"'),
        "longer": original.replace(b'"worker"', b'"attacker"'),
        "shorter": original.replace(b'"worker"', b'"x"'),
    }.get(tampering)
    if tampered is None:
        artifacts.delete_blob(name)
    else:
        assert tampered != original
        artifacts.upload_blob(name, tampered, overwrite=True)
    with pytest.raises(payloads.StoredOutputError, match="missing" if tampered is None else "sha256"):
        payloads.load(reference, tenants["victim"])
    # What the orchestrator's load_output activity reads, for the parts later steps reference.
    with pytest.raises(payloads.StoredOutputError):
        payloads.load_parts(tenants["victim"], reference, [("marker",)])


def test_a_reference_outside_the_tenants_prefix_is_refused_before_reading(
    api: ApiHarness, tenants: dict[str, uuid.UUID]
) -> None:
    key = AttemptKey(uuid.uuid4(), "build", "run", 1)
    reference = payloads.claim_check(tenants["victim"], key, big_output("victim"))
    with pytest.raises(payloads.StoredOutputError, match="prefix"):
        payloads.load(reference, tenants["attacker"])
    escaping = {
        payloads.BLOB_REF: {
            **reference[payloads.BLOB_REF],
            "name": (f"{tenant_blob_prefix(tenants['attacker'])}../{reference[payloads.BLOB_REF]['name']}"),
        }
    }
    with pytest.raises(payloads.StoredOutputError, match="prefix"):
        payloads.load(escaping, tenants["attacker"])
    unchecked = {payloads.BLOB_REF: {k: v for k, v in reference[payloads.BLOB_REF].items() if k != "sha256"}}
    with pytest.raises(payloads.StoredOutputError, match="sha256"):
        payloads.load(unchecked, tenants["victim"])


def test_an_output_stored_under_an_old_fixed_name_still_loads_and_is_checked(
    api: ApiHarness, tenants: dict[str, uuid.UUID], artifacts: ContainerClient
) -> None:
    execution_id = uuid.uuid4()
    name = f"{tenant_blob_prefix(tenants['victim'])}executions/{execution_id}/outputs/build.run.1.json"
    body = json.dumps(big_output("old"), separators=(",", ":")).encode()
    artifacts.upload_blob(name, body)
    reference = {
        payloads.BLOB_REF: {
            "container": artifacts.container_name,
            "name": name,
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    }
    assert payloads.load(reference, tenants["victim"])["marker"] == "old"
    assert payloads.load_parts(tenants["victim"], reference, [("marker",)]) == {"marker": "old"}
    artifacts.upload_blob(name, body.replace(b'"old"', b'"new"'), overwrite=True)  # what overwrite=True allowed
    with pytest.raises(payloads.StoredOutputError, match="sha256"):
        payloads.load(reference, tenants["victim"])


class _NoParams(BaseModel):
    pass


class _BigOutput(Module[_NoParams]):
    """A built-in action whose output is over the inline limit."""

    action = "test.big-output"
    params_model = _NoParams

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        return big_output(f"built-in {ctx.attempt}")


def test_the_module_worker_stores_outputs_the_same_way(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID], artifacts: ContainerClient
) -> None:
    execution = _execution(app_pool, tenants["victim"], path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenants["victim"], pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", _BigOutput.action, 1)])
        store.begin_attempt(conn, key, action=_BigOutput.action, remote=False)
    item = WorkItem(
        tenant_id=tenants["victim"],
        execution_id=execution.id,
        step_id="build",
        phase="run",
        attempt=1,
        action=_BigOutput.action,
        params={},
        remote=False,
    )
    outcome = worker.run_item(item, {_BigOutput.action: _BigOutput()})
    assert outcome is not None
    reference = outcome.verdict["output"]
    assert reference[payloads.BLOB_REF]["name"].endswith(
        f"/.outputs/sha256-{reference[payloads.BLOB_REF]['sha256']}.json"
    )
    assert payloads.load(reference, tenants["victim"])["marker"] == "built-in 1"
    # A redelivered item finds the attempt finished and stores nothing more.
    before = trace(api, artifacts)
    again = worker.run_item(item, {_BigOutput.action: _BigOutput()})
    assert again is not None and again.verdict == outcome.verdict
    assert trace(api, artifacts) == before
