# intent_ref: platform.access-control
"""Tenant forbids decide on the content they name: a new version's target and labels, and an execution's labels."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

INTENTS, BLUEPRINTS = "/api/v1/intents", "/api/v1/blueprints"
AUTHOR = ["Intent.Author", "Intent.Reader"]
REGISTRY_TABLES = ("intents", "intent_versions", "outbox")


def add_policy(api: ApiHarness, tenant: str, name: str, text: str) -> None:
    saved = api.client.post(
        "/api/v1/policies", json={"name": name, "policy": text}, headers=api.headers(tenant, ["Tenant.Admin"])
    )
    assert saved.status_code == 201, saved.text


def body(name: str, target: str | None = "staging", **labels: str) -> dict[str, Any]:
    definition: dict[str, Any] = {"steps": [{"id": "w", "action": "wait", "seconds": 1}]}
    if target is not None:
        definition["target"] = target
    return {"name": name, "labels": labels, "definition": definition}


def create(api: ApiHarness, tenant: str, content: dict[str, Any], path: str = INTENTS) -> str:
    created = api.client.post(path, json=content, headers=api.headers(tenant, AUTHOR))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def put(api: ApiHarness, tenant: str, item: str, content: dict[str, Any], path: str = INTENTS) -> Any:
    etag = api.client.get(f"{path}/{item}", headers=api.headers(tenant, AUTHOR)).headers["etag"]
    return api.client.put(f"{path}/{item}", json=content, headers={**api.headers(tenant, AUTHOR), "If-Match": etag})


def snapshot(api: ApiHarness) -> list[list[tuple[Any, ...]]]:
    return [api.table_snapshot(table) for table in REGISTRY_TABLES]


def rollback(api: ApiHarness, tenant: str, item: str, to_version: int) -> Any:
    return api.client.post(
        f"{INTENTS}/{item}/rollback", json={"to_version": to_version}, headers=api.headers(tenant, AUTHOR)
    )


def read(api: ApiHarness, tenant: str, item: str) -> tuple[int, str, dict[str, str]]:
    current = api.client.get(f"{INTENTS}/{item}", headers=api.headers(tenant, AUTHOR)).json()
    return current["version"], current["definition"]["target"], current["labels"]


def test_update_and_rollback_are_decided_on_the_version_they_create(api: ApiHarness) -> None:
    api.provision("content", allowed_modules=["wait"])
    # Saved before the tenant's forbids: versions they would refuse now, to roll back to.
    moving, was_prod, was_frozen, frozen = (
        create(api, "content", content)
        for content in (
            body("moving"),
            body("was-prod", "production"),
            body("was-frozen", freeze="true"),
            body("frozen", freeze="true"),
        )
    )
    assert put(api, "content", was_prod, body("was-prod")).status_code == 200
    assert put(api, "content", was_frozen, body("was-frozen")).status_code == 200
    blueprint = create(api, "content", body("bp", None), BLUEPRINTS)
    actions = ", ".join(f'QP::Action::"{action}"' for action in ("intent.create", "intent.update", "intent.rollback"))
    add_policy(
        api,
        "content",
        "no-prod-authoring",
        f'forbid (principal, action in [{actions}], resource) when {{ resource.target == "production" }};',
    )
    actions += ', QP::Action::"blueprint.update"'
    add_policy(
        api,
        "content",
        "frozen",
        f'forbid (principal, action in [{actions}], resource) when {{ resource.labels.contains("freeze=true") }};',
    )
    assert (
        api.client.post(INTENTS, json=body("prod", "production"), headers=api.headers("content", AUTHOR)).status_code
        == 403
    )

    # Moved to what the tenant forbids, by an update or a rollback: refused, and nothing changed.
    before = snapshot(api)
    for refused in (
        put(api, "content", moving, body("moving", "production")),
        put(api, "content", moving, body("moving", freeze="true")),
        put(api, "content", blueprint, body("bp", None, freeze="true"), BLUEPRINTS),
        rollback(api, "content", was_prod, 1),
        rollback(api, "content", was_frozen, 1),
    ):
        assert refused.status_code == 403, refused.text
        assert refused.json()["reason"] == "denied_by_tenant_policy"
    assert snapshot(api) == before
    assert read(api, "content", moving) == (1, "staging", {})
    assert read(api, "content", was_prod) == (2, "staging", {})
    assert read(api, "content", was_frozen) == (2, "staging", {})
    denied = [
        (row["action"], row["detail"])
        for row in api.audit_rows("content")
        if row["decision"] == "deny" and row["resource_id"] in (moving, was_prod, was_frozen, blueprint)
    ]
    assert denied == [
        ("intent.update", {"from_version": 1, "version": 2}),
        ("intent.update", {"from_version": 1, "version": 2}),
        ("blueprint.update", {"from_version": 1, "version": 2}),
        ("intent.rollback", {"to_version": 1, "version": 3}),
        ("intent.rollback", {"to_version": 1, "version": 3}),
    ]

    # The stored version still decides too: a frozen intent cannot be thawed by an update.
    assert put(api, "content", frozen, body("frozen")).status_code == 403
    assert read(api, "content", frozen) == (1, "staging", {"freeze": "true"})

    # What the tenant allows still saves.
    assert put(api, "content", moving, body("moving", team="web")).status_code == 200
    assert rollback(api, "content", moving, 1).status_code == 200
    assert read(api, "content", moving) == (3, "staging", {})
    assert put(api, "content", blueprint, body("bp", None, team="web"), BLUEPRINTS).status_code == 200


class Durable:
    """An orchestration client that accepts every event (no orchestration runs in these tests)."""

    async def start_new(self, name: str, instance_id: str, value: Any) -> str:
        return instance_id

    async def raise_event(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[None]:
    overrides = api.client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[get_durable_client] = Durable
    yield
    overrides.pop(get_durable_client, None)


def waiting_execution(api: ApiHarness, tenant: str, intent: str, requester: dict[str, str]) -> str:
    """An execution of `intent` running and waiting at its approval step (as the orchestration would leave it)."""
    started = api.client.post(f"{INTENTS}/{intent}/execute", json={"input": {}}, headers=requester)
    assert started.status_code == 202, started.text
    execution = uuid.UUID(started.json()["execution_id"])
    with tenant_transaction(api.tenants[tenant].id) as conn:
        repo.transition(conn, execution, "running")
        key = AttemptKey(execution, "approve", "run", 1)
        store.begin_attempt(conn, key, action="approval", remote=False, step_state="waiting")
        repo.append_event(conn, execution, "approval_requested", "approve", {"attempt": 1, "approvers": []})
    return str(execution)


@pytest.mark.usefixtures("durable")
def test_execution_decisions_see_the_labels_of_the_intent_version_it_runs(api: ApiHarness) -> None:
    api.provision("labels", quotas={"requests_per_minute": 100000, "burst": 10000}, allowed_modules=["approval"])
    requester = api.headers("labels", ["Intent.Executor", *AUTHOR], oid=str(uuid.uuid4()))
    approver = api.headers("labels", ["Intent.Approver"], oid=str(uuid.uuid4()))
    operator = api.headers("labels", ["Intent.Executor", "Intent.Reader"], oid=str(uuid.uuid4()))
    steps = [{"id": "approve", "action": "approval"}]
    frozen, free = (
        create(api, "labels", {"name": name, "labels": labels, "definition": {"target": "staging", "steps": steps}})
        for name, labels in (("frozen", {"freeze": "true"}), ("free", {"freeze": "false"}))
    )
    add_policy(
        api,
        "labels",
        "freeze-control",
        'forbid (principal, action in [QP::Action::"execution.approve", QP::Action::"execution.cancel"], resource)'
        ' when { resource.labels.contains("freeze=true") };',
    )
    held, other = waiting_execution(api, "labels", frozen, requester), waiting_execution(api, "labels", free, requester)
    decision = {"decision": "approve"}

    refused = api.client.post(f"/api/v1/executions/{held}/approvals/approve", json=decision, headers=approver)
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "denied_by_tenant_policy"
    assert api.client.post(f"/api/v1/executions/{held}/cancel", headers=operator).status_code == 403
    with tenant_transaction(api.tenants["labels"].id) as conn:
        unchanged = repo.get_execution(conn, uuid.UUID(held))
        steps_now = {step["step_id"]: step["state"] for step in store.list_steps(conn, unchanged.id)}
    assert (unchanged.status, steps_now) == ("running", {"approve": "waiting"})
    approved = api.client.post(f"/api/v1/executions/{other}/approvals/approve", json=decision, headers=approver)
    assert approved.status_code == 200, approved.text
    assert api.client.post(f"/api/v1/executions/{other}/cancel", headers=operator).status_code == 202

    # Reading: the execution, its events, and a retry (which reads it first).
    assert api.client.get(f"/api/v1/executions/{held}", headers=operator).status_code == 200
    add_policy(
        api,
        "labels",
        "freeze-read",
        'forbid (principal, action == QP::Action::"execution.read", resource)'
        ' when { resource.labels.contains("freeze=true") };',
    )
    assert api.client.get(f"/api/v1/executions/{held}", headers=operator).status_code == 403
    assert api.client.get(f"/api/v1/executions/{held}/events", headers=operator).status_code == 403
    assert api.client.post(f"/api/v1/executions/{held}/retry", json={}, headers=operator).status_code == 403
    assert api.client.get(f"/api/v1/executions/{other}", headers=operator).status_code == 200
    assert api.client.get(f"/api/v1/executions/{other}/events", headers=operator).status_code == 200
    denied = {
        row["action"]
        for row in api.audit_rows("labels")
        if row["decision"] == "deny" and row["resource_id"] == held and row["reason"] == "denied_by_tenant_policy"
    }
    assert denied == {"execution.approve", "execution.cancel", "execution.read"}
