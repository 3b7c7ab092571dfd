# intent_ref: platform.execution
"""The start service on the real database, without any edge: refusals are domain errors, the decision is asked on
the intent as it is stored, a launch the orchestration client refuses is recorded or handed back, and a taken-over
start whose orchestration exists is not started again."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import psycopg
import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from psycopg.rows import dict_row

from shared.api.durable import get_durable_client
from shared.auth.principal import Requester
from shared.db import tenant_locks
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine import sweeper
from shared.engine.progress import record_progress
from shared.engine.protocol import ORCHESTRATOR
from shared.engine.start import (
    STALE_START_S,
    IntentNotFoundError,
    Started,
    StartForbiddenError,
    StartRequest,
    claim_stale_start,
)
from shared.engine.start_service import (
    REQUESTER_UNKNOWN,
    OrchestrationUnavailableError,
    authorize_child,
    begin,
    launch,
)
from shared.engine.steps import AttemptKey, StepSeed
from shared.policy.authorizer import Decision, Resource
from shared.registry import service as registry
from shared.tenants.models import Tenant
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
EXECUTOR = ["Intent.Executor", "Intent.Deployer"]


class Decider:
    """A policy decision that answers `allowed` and remembers what it was asked."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.asked: list[tuple[str, Resource]] = []

    def __call__(self, action: str, resource: Resource) -> Decision:
        self.asked.append((action, resource))
        return Decision(self.allowed, "permit" if self.allowed else "no_permit", ())


class Client:
    """The orchestration client's start: refuses with `error` when given, else records the call."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, str, Any]] = []

    async def start_new(self, name: str, instance_id: str, value: Any) -> str:
        if self.error is not None:
            raise self.error
        self.calls.append((name, instance_id, value))
        return instance_id

    async def get_status(self, _instance_id: str) -> None:
        """No such instance (what the sweeper asks before it starts a stalled start)."""
        return None


def _provision(api: ApiHarness, name: str, quotas: dict[str, Any] | None = None) -> tuple[Tenant, uuid.UUID]:
    tenant_id = api.provision(name, allowed_modules=["wait"], quotas=quotas).id
    body = {
        "name": f"pause-{uuid.uuid4().hex[:8]}",
        "definition": {"target": "production", "steps": [{"id": "pause", "action": "wait", "seconds": 1}]},
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    with tenant_transaction(tenant_id) as conn:
        tenant = get_tenant(conn, tenant_id)
    assert tenant is not None
    return tenant, uuid.UUID(created.json()["id"])


@pytest.fixture
def setup(api: ApiHarness) -> tuple[Tenant, uuid.UUID]:
    return _provision(api, f"starts-{uuid.uuid4().hex[:8]}")


def _start(tenant: Tenant, intent_id: uuid.UUID, decide: Decider, **request: Any) -> Started:
    return begin(
        tenant,
        lambda _conn: StartRequest(
            intent_id=intent_id, requester=Requester("t/o", frozenset(), app_only=False), **request
        ),
        decide=decide,
    )


def _status(tenant: Tenant, execution_id: uuid.UUID) -> str:
    with tenant_transaction(tenant.id) as conn:
        return repo.get_execution(conn, execution_id).status


def test_a_refused_decision_is_a_domain_error_with_its_reason_and_creates_nothing(
    setup: tuple[Tenant, uuid.UUID],
) -> None:
    tenant, intent_id = setup
    decide = Decider(allowed=False)
    with pytest.raises(StartForbiddenError) as refused:
        _start(tenant, intent_id, decide, idempotency_key="denied")
    assert (refused.value.action, refused.value.reason) == ("intent.execute", "no_permit")
    # Asked on the stored intent, whose production target is what makes a Deployer necessary.
    [(action, resource)] = decide.asked
    assert (action, resource.type, resource.id, resource.tenant_id) == (
        "intent.execute",
        "Intent",
        str(intent_id),
        tenant.id,
    )
    assert resource.attributes["target"] == "production"
    with tenant_transaction(tenant.id) as conn:
        assert repo.find_by_key(conn, "denied") is None


def test_an_unknown_intent_or_version_is_intent_not_found_before_any_decision(
    setup: tuple[Tenant, uuid.UUID],
) -> None:
    tenant, intent_id = setup
    decide = Decider(allowed=True)
    with pytest.raises(IntentNotFoundError):
        _start(tenant, uuid.uuid4(), decide)
    assert decide.asked == []
    with pytest.raises(IntentNotFoundError):
        _start(tenant, intent_id, decide, version=99)


def test_a_launch_starts_the_orchestration_once_and_a_replay_starts_nothing(setup: tuple[Tenant, uuid.UUID]) -> None:
    tenant, intent_id = setup
    started = _start(tenant, intent_id, Decider(allowed=True), idempotency_key="once")
    assert started.created and started.orchestration_input is not None
    client = Client()
    asyncio.run(launch(client, started, tenant.id))
    assert client.calls == [(ORCHESTRATOR, str(started.execution.id), started.orchestration_input)]
    again = _start(tenant, intent_id, Decider(allowed=True), idempotency_key="once")
    assert (again.execution.id, again.created, again.orchestration_input) == (started.execution.id, False, None)
    asyncio.run(launch(client, again, tenant.id))
    assert len(client.calls) == 1


def test_a_refused_launch_is_recorded_failed_and_reported(setup: tuple[Tenant, uuid.UUID]) -> None:
    tenant, intent_id = setup
    started = _start(tenant, intent_id, Decider(allowed=True))
    with pytest.raises(OrchestrationUnavailableError) as refused:
        asyncio.run(launch(Client(RuntimeError("task hub unreachable")), started, tenant.id))
    assert refused.value.execution_id == started.execution.id
    with tenant_transaction(tenant.id) as conn:
        execution = repo.get_execution(conn, started.execution.id)
    assert execution.status == "failed"
    assert "task hub unreachable" in (execution.error or "")


def _claimed_at(tenant: Tenant, execution_id: uuid.UUID) -> datetime | None:
    with tenant_transaction(tenant.id) as conn:
        return repo.get_execution(conn, execution_id).start_claimed_at


def test_a_refused_launch_with_a_key_stays_pending_and_a_retry_with_the_key_starts_it(api: ApiHarness) -> None:
    # Recorded failed, the execution was what the retry the 503 asks for found: 202 for a start that never ran.
    name = f"starts-{uuid.uuid4().hex[:8]}"
    _tenant, intent_id = _provision(api, name)
    headers = {**api.headers(name, EXECUTOR), "Idempotency-Key": f"retried-{uuid.uuid4().hex}"}
    down, up = Client(RuntimeError("task hub unreachable")), Client()
    overrides = api.client.app.dependency_overrides  # type: ignore[attr-defined]
    try:
        overrides[get_durable_client] = lambda: down
        refused = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=headers)
        overrides[get_durable_client] = lambda: up
        retried = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=headers)
        again = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=headers)
    finally:
        overrides.pop(get_durable_client, None)
    assert (refused.status_code, refused.json()["type"].rsplit("/", 1)[-1]) == (503, "orchestration-unavailable")
    assert (retried.status_code, retried.json()["created"]) == (202, False), retried.text
    execution_id = retried.json()["execution_id"]
    assert [(orchestrator, instance) for orchestrator, instance, _ in up.calls] == [(ORCHESTRATOR, execution_id)]
    assert refused.headers["retry-after"] == "5" and "same Idempotency-Key" in refused.json()["detail"]
    # Started once: the retry holds a fresh claim, so a further replay starts nothing.
    assert (again.status_code, again.json()["execution_id"]) == (202, execution_id) and len(up.calls) == 1
    status = api.client.get(f"/api/v1/executions/{execution_id}", headers=api.headers(name, ["Intent.Reader"]))
    assert (status.json()["status"], status.json().get("error")) == ("pending", None)


def test_a_refused_launch_with_a_key_is_left_to_the_sweeper_when_no_retry_comes(
    setup: tuple[Tenant, uuid.UUID],
) -> None:
    tenant, intent_id = setup
    started = _start(tenant, intent_id, Decider(allowed=True), idempotency_key=f"abandoned-{uuid.uuid4().hex}")
    with pytest.raises(OrchestrationUnavailableError) as refused:
        asyncio.run(launch(Client(RuntimeError("task hub unreachable")), started, tenant.id))
    assert (_status(tenant, started.execution.id), _claimed_at(tenant, started.execution.id)) == ("pending", None)
    assert refused.value.pending
    client = Client()
    result = asyncio.run(sweeper.sweep_tenant(tenant.id, client))
    assert result.started == 1
    assert [instance for _, instance, _ in client.calls] == [str(started.execution.id)]


def test_a_refused_launch_keeps_a_claim_another_starter_took_over_meanwhile(setup: tuple[Tenant, uuid.UUID]) -> None:
    tenant, intent_id = setup
    started = _start(tenant, intent_id, Decider(allowed=True), idempotency_key=f"slow-{uuid.uuid4().hex}")
    with tenant_transaction(tenant.id) as conn:  # what a takeover after a launch slower than the stale age does
        assert claim_stale_start(conn, started.execution.id, 0)
    taken = _claimed_at(tenant, started.execution.id)
    with pytest.raises(OrchestrationUnavailableError):
        asyncio.run(launch(Client(RuntimeError("timed out")), started, tenant.id))
    assert taken is not None and _claimed_at(tenant, started.execution.id) == taken


def test_concurrent_starts_with_one_key_at_the_quota_edge_are_replays_not_refusals(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second request looked its key up before the first committed, then took the lock and met the first's
    # execution in the quota: 429 execution-quota, where the first's replay was due.
    tenant, intent_id = _provision(api, f"edge-{uuid.uuid4().hex[:8]}", {"max_concurrent_executions": 1})
    key = f"edge-{uuid.uuid4().hex}"
    hold = tenant_locks.hold
    raced: list[bool] = []
    first: list[Started] = []

    def hold_after_the_first_commits(conn: Any, purpose: Any) -> None:
        """The lock, taken only after a concurrent request with the same key has committed its execution."""
        if not raced:
            raced.append(True)  # the first request's own lock passes straight through
            # On a thread of its own, as a concurrent request is: it borrows its own connection.
            with ThreadPoolExecutor(max_workers=1) as other:
                committed = other.submit(_start, tenant, intent_id, Decider(allowed=True), idempotency_key=key)
                first.append(committed.result())
        hold(conn, purpose)

    monkeypatch.setattr(tenant_locks, "hold", hold_after_the_first_commits)
    second = _start(tenant, intent_id, Decider(allowed=True), idempotency_key=key)
    [winner] = first
    assert winner.created
    assert (second.execution.id, second.created, second.orchestration_input) == (winner.execution.id, False, None)


def test_a_launch_that_is_not_to_record_failure_hands_the_error_back_and_stays_pending(
    setup: tuple[Tenant, uuid.UUID],
) -> None:
    tenant, intent_id = setup
    started = _start(tenant, intent_id, Decider(allowed=True))
    with pytest.raises(ConnectionError, match="task hub unreachable"):
        asyncio.run(launch(Client(ConnectionError("task hub unreachable")), started, tenant.id, record_failure=False))
    # Its claim given back: the caller's own retry (the ingress's batch, seconds later) takes the start over at once.
    assert (_status(tenant, started.execution.id), _claimed_at(tenant, started.execution.id)) == ("pending", None)


class TaskHub:
    """The orchestration side as the devhost (and a host with overridableExistingInstanceStates NonRunningStates)
    behaves: an instance id that exists is refused with "already exists" (the SDK raises the 409's body); the
    status of one that does not is the SDK's empty status, and `hidden` ones exist without being seen yet.
    `fail_call` makes that start_new call (1-based, over all calls) fail as an outage; `asked` lists status reads."""

    def __init__(self, fail_call: int | None = None) -> None:
        self.fail_call = fail_call
        self.calls: list[str] = []
        self.instances: set[str] = set()
        self.hidden: set[str] = set()
        self.asked: list[str] = []

    async def get_status(self, instance_id: str) -> DurableOrchestrationStatus:
        self.asked.append(instance_id)
        if instance_id not in self.instances - self.hidden:
            return DurableOrchestrationStatus.from_json("")
        return DurableOrchestrationStatus.from_json(
            {
                "name": ORCHESTRATOR,
                "instanceId": instance_id,
                "runtimeStatus": "Pending",
                "createdTime": "2024-01-01T00:00:00Z",
            }
        )

    async def start_new(self, name: str, instance_id: str, value: Any) -> str:
        self.calls.append(instance_id)
        if len(self.calls) == self.fail_call:
            raise ConnectionError("orchestration client unavailable")
        if instance_id in self.instances:
            raise Exception(
                {"Message": f"An Orchestration instance with the instance ID '{instance_id}' already exists."}
            )
        self.instances.add(instance_id)
        return instance_id


def _age_claim(api: ApiHarness, execution_id: uuid.UUID | str, seconds: float) -> None:
    """What `seconds` of waiting does to the claim (a backlog in which the orchestration has not recorded running)."""
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.executions SET start_claimed_at = start_claimed_at - make_interval(secs => %s) WHERE id = %s",
            (seconds, execution_id),
        )


def test_a_retry_after_the_claim_went_stale_answers_202_and_does_not_start_a_started_orchestration(
    api: ApiHarness,
) -> None:
    # It took the stale claim over and called start_new again: refused, the retry of a started execution was answered
    # 503 orchestration-unavailable (and gave the claim back).
    name = f"starts-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _provision(api, name)
    headers = {**api.headers(name, EXECUTOR), "Idempotency-Key": f"late-{uuid.uuid4().hex}"}
    hub = TaskHub()
    overrides = api.client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[get_durable_client] = lambda: hub
    try:
        first = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=headers)
        assert (first.status_code, first.json()["created"]) == (202, True), first.text
        execution_id = uuid.UUID(first.json()["execution_id"])
        _age_claim(api, execution_id, STALE_START_S + 1)
        retried = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=headers)
    finally:
        overrides.pop(get_durable_client, None)
    assert (retried.status_code, retried.json()["created"]) == (202, False), retried.text
    assert retried.json()["execution_id"] == str(execution_id)
    assert hub.calls == [str(execution_id)]  # started once in total
    # The claim the retry took is kept: the orchestration records the start, the sweeper leaves it alone meanwhile.
    assert _status(tenant, execution_id) == "pending" and _claimed_at(tenant, execution_id) is not None


def test_a_takeover_refused_because_the_instance_exists_counts_as_started(
    api: ApiHarness, setup: tuple[Tenant, uuid.UUID]
) -> None:
    # The status read did not see the instance yet (a store that shows it late): the refusal is the first starter's
    # success, not an outage to answer 503 for, to fail the ingress's batch for, or to give the claim back over.
    tenant, intent_id = setup
    key = f"raced-{uuid.uuid4().hex}"
    started = _start(tenant, intent_id, Decider(allowed=True), idempotency_key=key)
    hub = TaskHub()
    asyncio.run(launch(hub, started, tenant.id))
    hub.hidden.add(str(started.execution.id))
    _age_claim(api, started.execution.id, STALE_START_S + 1)
    replayed = _start(tenant, intent_id, Decider(allowed=True), idempotency_key=key)
    assert not replayed.created and replayed.orchestration_input is not None  # the stale start, taken over
    for record_failure in (True, False):  # the API's launch and the ingress's alike
        asyncio.run(launch(hub, replayed, tenant.id, record_failure=record_failure))
    assert hub.instances == {str(started.execution.id)}
    assert _status(tenant, started.execution.id) == "pending"
    assert _claimed_at(tenant, started.execution.id) == replayed.execution.start_claimed_at


def _parent(tenant: Tenant, intent_id: uuid.UUID, requester: Requester) -> repo.Execution:
    with tenant_transaction(tenant.id) as conn:
        parent, _ = repo.create_execution(
            conn,
            execution_id=uuid.uuid4(),
            intent_id=intent_id,
            intent_version=1,
            target="staging",
            input={},
            requester=requester,
        )
    return parent


def _audited(api: ApiHarness, request_id: str) -> list[dict[str, Any]]:
    """The audit records of one request id (read as the admin, bypassing RLS)."""
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM app.audit_events WHERE request_id = %s", (request_id,)).fetchall()


def _decide_child(tenant: Tenant, intent_id: uuid.UUID, parent: repo.Execution) -> None:
    with tenant_transaction(tenant.id) as conn:
        authorize_child(conn, tenant, parent, "run-child")(registry.get(conn, "intent", intent_id))


@pytest.mark.parametrize(
    ("roles", "reason"),
    [
        ({"Intent.Executor"}, "production_requires_deployer"),
        ({"Intent.Reader"}, "production_requires_deployer"),
        ({"Intent.Deployer"}, None),
    ],
)
def test_a_child_start_is_decided_for_the_parents_requester_and_audited(
    api: ApiHarness, setup: tuple[Tenant, uuid.UUID], roles: set[str], reason: str | None
) -> None:
    tenant, production_intent = setup
    requester = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset(roles), app_only=False)
    parent = _parent(tenant, production_intent, requester)
    with tenant_transaction(tenant.id) as conn:
        assert repo.get_execution(conn, parent.id).requester == requester  # recorded as asked
    if reason is None:
        _decide_child(tenant, production_intent, parent)
    else:
        with pytest.raises(StartForbiddenError) as refused:
            _decide_child(tenant, production_intent, parent)
        assert refused.value.reason == reason
    [record] = _audited(api, f"{parent.id}/run-child")
    assert (record["principal_id"], record["action"], record["resource_id"]) == (
        requester.id,
        "intent.execute",
        str(production_intent),
    )
    assert record["decision"] == ("allow" if reason is None else "deny")
    assert record["detail"] == {"parent_execution_id": str(parent.id), "parent_step_id": "run-child"}


def test_a_parent_recorded_before_its_requesters_roles_were_kept_starts_no_child(
    api: ApiHarness, setup: tuple[Tenant, uuid.UUID]
) -> None:
    tenant, intent_id = setup
    deployer = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False)
    parent = _parent(tenant, intent_id, deployer)
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:  # what migration 0023 gave the rows before it
        conn.execute(
            "UPDATE app.executions SET requester_roles = DEFAULT, requester_app_only = DEFAULT WHERE id = %s",
            (parent.id,),
        )
    with tenant_transaction(tenant.id) as conn:
        legacy = repo.get_execution(conn, parent.id)
    assert legacy.requester == Requester(deployer.id, frozenset(), app_only=False)
    with pytest.raises(StartForbiddenError) as refused:
        _decide_child(tenant, intent_id, legacy)
    assert refused.value.reason == "production_requires_deployer"


def test_a_requester_that_is_no_principal_starts_no_child(setup: tuple[Tenant, uuid.UUID]) -> None:
    tenant, intent_id = setup
    parent = _parent(tenant, intent_id, Requester("tester", frozenset({"Intent.Deployer"}), app_only=False))
    with pytest.raises(StartForbiddenError) as refused:
        _decide_child(tenant, intent_id, parent)
    assert refused.value.reason == REQUESTER_UNKNOWN


def test_a_child_pinning_a_version_that_does_not_exist_fails_its_step_and_nothing_else(
    setup: tuple[Tenant, uuid.UUID],
) -> None:
    # The unknown version escaped the dispatch: its whole level's batch failed and was retried, siblings included.
    tenant, intent_id = setup
    deployer = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False)
    parent = _parent(tenant, intent_id, deployer)
    with tenant_transaction(tenant.id) as conn:
        name = registry.get(conn, "intent", intent_id).head.name
        store.seed_steps(conn, parent.id, [StepSeed("run-child", "intent.run", 1)])
    answer = record_progress(
        {
            "kind": "start_child",
            "execution_id": str(parent.id),
            "tenant_id": str(tenant.id),
            "step_id": "run-child",
            "attempt": 1,
            "params": {"intent": name, "version": 99},
        }
    )
    verdict = answer["verdict"]
    assert verdict["ok"] is False and verdict["retryable"] is False
    assert f"child intent {name} cannot start" in verdict["error"] and "99" in verdict["error"]
    with tenant_transaction(tenant.id) as conn:
        attempt = store.get_attempt(conn, AttemptKey(parent.id, "run-child", "run", 1))
        children = conn.execute("SELECT count(*) AS n FROM app.executions WHERE parent_execution_id = %s", (parent.id,))
        assert attempt is not None and attempt.state == "failed"
        assert children.fetchone()["n"] == 0
