# intent_ref: platform.execution
"""A start's `intent.execute` decision comes before its input's check: a caller refused costs no check of the input
against the tenant's schema, and a start whose version changed during its check is decided (and audited) once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.api.durable import get_durable_client
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import start as engine
from shared.engine import start_service
from shared.engine.start import (
    InputCheck,
    PendingInputCheck,
    Started,
    StartForbiddenError,
    StartRequest,
    checked_input,
)
from shared.engine.start_service import begin
from shared.policy.authorizer import Decision, Resource
from shared.registry.schema_refs import evaluate_tenant_schema
from shared.tenants.models import Tenant
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
EXECUTOR_ONLY = ["Intent.Executor"]
DEPLOYER = ["Intent.Executor", "Intent.Deployer"]
INPUTS = {"type": "object", "properties": {"version": {"type": "string"}}}


class Decider:
    """A policy decision that answers `allowed` and remembers what it was asked."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.asked: list[tuple[str, Resource]] = []

    def __call__(self, action: str, resource: Resource) -> Decision:
        self.asked.append((action, resource))
        return Decision(self.allowed, "permit" if self.allowed else "no_permit", ())


class Client:
    """The orchestration client: records the starts it is asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start_new(self, _name: str, instance_id: str, _value: Any) -> str:
        self.calls.append(instance_id)
        return instance_id

    async def get_status(self, _instance_id: str) -> None:
        """No such instance."""
        return None


@pytest.fixture
def client(api: ApiHarness) -> Iterator[Client]:
    """The orchestration client the execute route is given."""
    bound = Client()
    overrides = api.client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[get_durable_client] = lambda: bound
    try:
        yield bound
    finally:
        overrides.pop(get_durable_client, None)


@pytest.fixture
def schema_checks(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The inputs checked against an intent's input schema, wherever a start checks one (the real check runs)."""
    checked: list[dict[str, Any]] = []
    evaluate = evaluate_tenant_schema

    def counted(schema: dict[str, Any], values: dict[str, Any]) -> Any:
        checked.append(values)
        return evaluate(schema, values)

    monkeypatch.setattr(engine, "evaluate_tenant_schema", counted)
    return checked


def _production_intent(api: ApiHarness, name: str) -> tuple[Tenant, str]:
    tenant_id = api.provision(name, allowed_modules=["wait"]).id
    body = {
        "name": f"pause-{uuid.uuid4().hex[:8]}",
        "definition": {
            "target": "production",
            "inputs": INPUTS,
            "steps": [{"id": "pause", "action": "wait", "seconds": 1}],
        },
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    with tenant_transaction(tenant_id) as conn:
        tenant = get_tenant(conn, tenant_id)
    assert tenant is not None
    return tenant, str(created.json()["id"])


def _execute_decisions(api: ApiHarness, name: str, intent_id: str) -> list[str]:
    return [
        row["decision"]
        for row in api.audit_rows(name)
        if row["action"] == "intent.execute" and row["resource_id"] == intent_id
    ]


@pytest.mark.parametrize("key", [None, "refused-replay"])
def test_a_caller_refused_the_execute_decision_costs_no_check_of_the_input(
    api: ApiHarness, client: Client, schema_checks: list[dict[str, Any]], key: str | None
) -> None:
    # The check against the intent's schema (seconds of CPU for a MiB of input) ran before the decision: a caller
    # refused 403 had it made for them, and the refusal's timing told them of the schema.
    name = f"order-{uuid.uuid4().hex[:8]}"
    _tenant, intent_id = _production_intent(api, name)
    path = f"/api/v1/intents/{intent_id}/execute"
    body: dict[str, Any] = {"input": {"version": 3}}  # invalid against the schema: a check made would refuse it 422
    if key is not None:
        # A replay of a start whose claim went stale is checked before its transaction too (its recorded input).
        body = {"input": {"version": "1"}, "idempotency_key": key}
        first = api.client.post(path, json=body, headers=api.headers(name, DEPLOYER))
        assert first.status_code == 202, first.text
        with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
            conn.execute(
                "UPDATE app.executions SET start_claimed_at = NULL WHERE idempotency_key = %s AND intent_id = %s",
                (key, intent_id),
            )
    schema_checks.clear()
    refused = api.client.post(path, json=body, headers=api.headers(name, EXECUTOR_ONLY))
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "production_requires_deployer"
    assert schema_checks == []
    assert _execute_decisions(api, name, intent_id).count("deny") == 1
    # The spy sees a check that is made: a Deployer's same request is checked (once, outside the transaction).
    allowed = api.client.post(path, json=body, headers=api.headers(name, DEPLOYER))
    if key is None:
        assert allowed.status_code == 422, allowed.text
        assert schema_checks == [{"version": 3}]
    else:  # the replay that takes the start over, checked on its recorded input
        assert (allowed.status_code, allowed.json()["created"]) == (202, False), allowed.text
        assert schema_checks == [{"version": "1"}] and len(client.calls) == 2


def test_a_start_whose_version_changed_during_its_check_is_decided_once(
    api: ApiHarness, schema_checks: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start's transaction decided again after the check outside it: a version saved in between had the start's
    # first transaction given up after its decision, and the second decide again, two allow records for one start.
    name = f"order-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _production_intent(api, name)
    check = checked_input
    saved: list[int] = []

    def saving_a_version_meanwhile(pending: PendingInputCheck, facts: Any) -> InputCheck:
        outcome = check(pending, facts)
        if not saved:  # an author saves version 2 (same target and labels) while the first check runs
            item = api.client.get(f"/api/v1/intents/{intent_id}", headers=api.headers(name, AUTHOR))
            steps = [{"id": "pause", "action": "wait", "seconds": 2}]
            body = {"name": item.json()["name"], "definition": {**item.json()["definition"], "steps": steps}}
            headers = {**api.headers(name, AUTHOR), "If-Match": item.headers["etag"]}
            updated = api.client.put(f"/api/v1/intents/{intent_id}", json=body, headers=headers)
            assert updated.status_code == 200, updated.text
            saved.append(updated.json()["version"])
        return outcome

    monkeypatch.setattr(start_service, "checked_input", saving_a_version_meanwhile)
    decide = Decider(allowed=True)
    # One request for every transaction, as the execute route's: the check stands for its very input.
    request = StartRequest(
        intent_id=uuid.UUID(intent_id), input={"version": "1"}, requester=Requester("t/o", frozenset(), app_only=False)
    )
    started: Started = begin(tenant, lambda _conn: request, decide=decide)
    assert saved == [2] and started.created and started.execution.intent_version == 2
    assert len(schema_checks) == 2  # checked again for version 2, outside the transaction
    assert [action for action, _ in decide.asked] == ["intent.execute"]


def test_a_refused_decision_before_the_check_answers_as_the_start_did(
    api: ApiHarness, schema_checks: list[dict[str, Any]]
) -> None:
    # Decided before the check, the refusals keep their order: an unknown intent is 404 before any decision, an
    # unknown version of a known one is 403 for a caller refused the current one, 404 for one allowed it.
    name = f"order-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _production_intent(api, name)

    def start(decide: Decider, intent: uuid.UUID, **request: Any) -> Started:
        return begin(
            tenant,
            lambda _conn: StartRequest(
                intent_id=intent, requester=Requester("t/o", frozenset(), app_only=False), **request
            ),
            decide=decide,
        )

    refuse, allow = Decider(allowed=False), Decider(allowed=True)
    with pytest.raises(engine.IntentNotFoundError):
        start(refuse, uuid.uuid4())
    assert refuse.asked == []
    with pytest.raises(StartForbiddenError):
        start(refuse, uuid.UUID(intent_id), version=99)
    with pytest.raises(engine.IntentNotFoundError):
        start(allow, uuid.UUID(intent_id), version=99)
    with pytest.raises(StartForbiddenError):
        start(refuse, uuid.UUID(intent_id), input={"version": 3})
    assert len(refuse.asked) == 2 and len(allow.asked) == 1
    assert schema_checks == []


def test_a_version_saved_during_the_check_with_another_target_is_decided_anew(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decision before the check stands only for the resource it was made on: a production version saved
    # meanwhile is not run on a decision about the staging one.
    name = f"order-{uuid.uuid4().hex[:8]}"
    tenant, intent_id = _production_intent(api, name)
    check = checked_input
    saved: list[str] = []

    def save(target: str) -> None:
        item = api.client.get(f"/api/v1/intents/{intent_id}", headers=api.headers(name, AUTHOR))
        body = {"name": item.json()["name"], "definition": {**item.json()["definition"], "target": target}}
        headers = {**api.headers(name, AUTHOR), "If-Match": item.headers["etag"]}
        updated = api.client.put(f"/api/v1/intents/{intent_id}", json=body, headers=headers)
        assert updated.status_code == 200, updated.text

    def saving_production_meanwhile(pending: PendingInputCheck, facts: Any) -> InputCheck:
        outcome = check(pending, facts)
        if not saved:
            save("production")
            saved.append("production")
        return outcome

    class StagingOnly(Decider):
        def __call__(self, action: str, resource: Resource) -> Decision:
            self.asked.append((action, resource))
            allowed = resource.attributes["target"] != "production"
            return Decision(allowed, "permit" if allowed else "production_requires_deployer", ())

    save("staging")
    monkeypatch.setattr(start_service, "checked_input", saving_production_meanwhile)
    decide = StagingOnly(allowed=True)
    request = StartRequest(
        intent_id=uuid.UUID(intent_id), input={"version": "1"}, requester=Requester("t/o", frozenset(), app_only=False)
    )
    with pytest.raises(StartForbiddenError) as refused:
        begin(tenant, lambda _conn: request, decide=decide)
    assert refused.value.reason == "production_requires_deployer" and saved == ["production"]
    assert [resource.attributes["target"] for _, resource in decide.asked] == ["staging", "production"]
