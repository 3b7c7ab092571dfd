# intent_ref: platform.hardening
"""A caller without the role hears 403 before its body is looked at, whatever the body, and is audited once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

TENANT = "gate"
READER, AUTHOR, EXECUTOR = ["Intent.Reader"], ["Intent.Author"], ["Intent.Executor"]
APPROVER, ADMIN = ["Intent.Approver"], ["Tenant.Admin"]
OPERATOR = ["Platform.Admin"]  # no tenant role at all
TABLES = (
    "tenants",
    "intents",
    "intent_versions",
    "executions",
    "execution_steps",
    "tenant_policies",
    "modules",
    "idempotency_keys",
    "outbox",
)
UNPARSEABLE = b'{"name": "half'


class RecordingClient:
    """The Durable client the start routes use; records what it was asked to start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start_new(self, _name: str, instance_id: str, _input: Any) -> str:
        self.started.append(instance_id)
        return instance_id

    async def raise_event(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Fixture:
    """What the routes act on: real rows of the tenant, so a refused request has something it could have changed."""

    intent: str
    blueprint: str
    execution: str


def _step() -> dict[str, Any]:
    return {"id": "pause", "action": "wait", "seconds": 1}


@pytest.fixture(scope="module")
def durable(api: ApiHarness) -> Iterator[RecordingClient]:
    client = RecordingClient()
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = lambda: client
    yield client
    app.dependency_overrides.pop(get_durable_client, None)


@pytest.fixture(scope="module")
def rows(api: ApiHarness, durable: RecordingClient, app_pool: ConnectionPool[Any]) -> Fixture:
    api.provision(TENANT, allowed_modules=["wait"], quotas={"requests_per_minute": 100_000, "burst": 10_000})
    author = api.headers(TENANT, AUTHOR)
    intent = api.client.post(
        "/api/v1/intents",
        headers=author,
        json={"name": "gated", "definition": {"target": "staging", "steps": [_step()]}},
    )
    blueprint = api.client.post(
        "/api/v1/blueprints", headers=author, json={"name": "gated-blueprint", "definition": {"steps": [_step()]}}
    )
    assert intent.status_code == blueprint.status_code == 201, (intent.text, blueprint.text)
    started = api.client.post(
        f"/api/v1/intents/{intent.json()['id']}/execute", json={}, headers=api.headers(TENANT, EXECUTOR)
    )
    assert started.status_code == 202, started.text
    execution = started.json()["execution_id"]
    with tenant_transaction(api.tenants[TENANT].id, pool=app_pool) as conn:
        repo.transition(conn, uuid.UUID(execution), "failed", error="for the retry route")
    return Fixture(intent.json()["id"], blueprint.json()["id"], execution)


@dataclass(frozen=True)
class Case:
    """One route with a body, a caller without its role, a body that does not validate and one with a NUL."""

    method: str
    path: str
    roles: list[str]
    action: str
    malformed: Any
    nul: Any


def _cases(fx: Fixture, tenant_id: uuid.UUID) -> list[Case]:
    entra = str(uuid.uuid4())
    intent, blueprint, execution = fx.intent, fx.blueprint, fx.execution
    return [
        Case(
            "POST",
            "/api/v1/tenants",
            ADMIN,
            "tenant.create",
            {"name": 5},
            {"name": "evil\u0000", "entra_tenant_id": entra},
        ),
        Case(
            "PATCH",
            f"/api/v1/tenants/{tenant_id}",
            ADMIN,
            "tenant.update",
            {"status": "gone"},
            {"display_name": "x\u0000"},
        ),
        Case(
            "POST",
            f"/api/v1/tenants/{tenant_id}/erase",
            ADMIN,
            "tenant.erase",
            {"confirm_name": []},
            {"confirm_name": "gate\u0000"},
        ),
        Case(
            "PATCH",
            "/api/v1/tenant",
            READER,
            "tenant.settings.update",
            {"settings": "all"},
            {"settings": {"feature.x\u0000": True}},
        ),
        Case(
            "POST",
            "/api/v1/policies",
            READER,
            "policy.create",
            {"name": 1},
            {"name": "p", "policy": "forbid (principal, action, resource);\u0000"},
        ),
        Case("POST", "/api/v1/modules", READER, "module.register", {"action": 1}, {"action": "helm\u0000"}),
        Case("POST", "/api/v1/intents", READER, "intent.create", {"name": 7}, {"name": "n\u0000", "definition": {}}),
        Case("POST", "/api/v1/intents/validate", READER, "intent.create", [1, 2], {"name": "n\u0000"}),
        Case("PUT", f"/api/v1/intents/{intent}", READER, "intent.update", "text", {"name": "gated\u0000"}),
        Case(
            "POST",
            f"/api/v1/intents/{intent}/rollback",
            READER,
            "intent.rollback",
            {"to_version": "one"},
            {"to_version": 1, "x": "\u0000"},
        ),
        Case("POST", f"/api/v1/intents/{intent}/plan", OPERATOR, "intent.read", {"x": 1}, {"x": "\u0000"}),
        Case("POST", "/api/v1/blueprints", READER, "blueprint.create", {"name": 7}, {"name": "b\u0000"}),
        Case("POST", "/api/v1/blueprints/validate", READER, "blueprint.create", 3, {"name": "b\u0000"}),
        Case("PUT", f"/api/v1/blueprints/{blueprint}", READER, "blueprint.update", None, {"name": "b\u0000"}),
        Case(
            "POST",
            f"/api/v1/blueprints/{blueprint}/rollback",
            READER,
            "blueprint.rollback",
            {"to_version": -1},
            {"to_version": "\u0000"},
        ),
        Case(
            "POST",
            f"/api/v1/intents/{intent}/execute",
            READER,
            "intent.execute",
            {"input": "x"},
            {"input": {"a": "\u0000"}},
        ),
        Case(
            "POST",
            f"/api/v1/executions/{execution}/cancel",
            OPERATOR,
            "execution.cancel",
            {"why": 1},
            {"why": "\u0000"},
        ),
        Case(
            "POST",
            f"/api/v1/executions/{execution}/approvals/pause",
            READER,
            "execution.approve",
            {"decision": "maybe"},
            {"decision": "approve", "comment": "ok\u0000"},
        ),
        Case(
            "POST",
            f"/api/v1/executions/{execution}/retry",
            READER,
            "intent.execute",
            {"version": 0},
            {"version": 1, "note": "\u0000"},
        ),
    ]


def _send(api: ApiHarness, case: Case, body: Any, roles: list[str] | None = None) -> Any:
    headers = {**api.headers(TENANT, case.roles if roles is None else roles), "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.client.request(case.method, case.path, content=content, headers=headers)


def test_without_the_role_any_body_is_403_audited_once_and_changes_nothing(
    api: ApiHarness,
    rows: Fixture,
) -> None:
    cases = _cases(rows, api.tenants[TENANT].id)
    before = [api.table_snapshot(table) for table in TABLES]
    for case in cases:
        for label, body in (("malformed", case.malformed), ("nul", case.nul), ("unparseable", UNPARSEABLE)):
            where = f"{case.method} {case.path} ({label})"
            seen = len(api.audit_rows(TENANT))
            response = _send(api, case, body)
            assert response.status_code == 403, (where, response.text)
            assert response.headers["content-type"] == "application/problem+json", where
            problem = response.json()
            assert (problem["status"], problem["reason"]) == (403, "role_required"), where
            assert "errors" not in problem, where  # nothing about the body's shape
            added = api.audit_rows(TENANT)[seen:]
            assert [(r["action"], r["decision"], r["reason"], r["detail"]) for r in added] == [
                (case.action, "deny", "role_required", {"stage": "role"})
            ], where
    assert [api.table_snapshot(table) for table in TABLES] == before


def test_the_deny_record_names_the_resource_of_the_path(api: ApiHarness, rows: Fixture) -> None:
    case = Case("PUT", f"/api/v1/intents/{rows.intent}", READER, "intent.update", None, None)
    seen = len(api.audit_rows(TENANT))
    assert _send(api, case, UNPARSEABLE).status_code == 403
    (record,) = api.audit_rows(TENANT)[seen:]
    assert (record["resource_type"], record["resource_id"]) == ("Intent", rows.intent)
    assert record["principal_id"].startswith(f"{api.tenants[TENANT].entra_id}/")


def test_with_the_role_the_body_is_still_validated(api: ApiHarness, rows: Fixture) -> None:
    allowed = [
        (Case("POST", "/api/v1/intents", AUTHOR, "intent.create", None, None), {"name": 7}),
        (
            Case("POST", f"/api/v1/intents/{rows.intent}/execute", EXECUTOR, "intent.execute", None, None),
            {"input": "x"},
        ),
        (
            Case(
                "POST",
                f"/api/v1/executions/{rows.execution}/approvals/pause",
                APPROVER,
                "execution.approve",
                None,
                None,
            ),
            {"decision": "maybe"},
        ),
        (Case("PATCH", "/api/v1/tenant", ADMIN, "tenant.settings.update", None, None), {"settings": "all"}),
    ]
    before = [api.table_snapshot(table) for table in TABLES]
    for case, body in allowed:
        for sent in (body, UNPARSEABLE):
            seen = len(api.audit_rows(TENANT))
            response = _send(api, case, sent)
            assert response.status_code == 422, (case.path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["errors"], case.path
            assert [r for r in api.audit_rows(TENANT)[seen:] if r["decision"] == "deny"] == []
    assert [api.table_snapshot(table) for table in TABLES] == before


def test_a_nul_from_a_caller_with_the_role_is_refused_after_the_decision(
    api: ApiHarness,
    rows: Fixture,
) -> None:
    case = Case("POST", "/api/v1/intents", AUTHOR, "intent.create", None, None)
    seen = len(api.audit_rows(TENANT))
    response = _send(api, case, {"name": "n\u0000", "definition": {"steps": [_step()]}})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert api.audit_rows(TENANT)[seen:] == []


def test_a_decision_is_recorded_once_per_request(api: ApiHarness, rows: Fixture) -> None:
    # Allowed: the pre-check adds nothing to the route's own record.
    seen = len(api.audit_rows(TENANT))
    assert api.client.get("/api/v1/tenant", headers=api.headers(TENANT, ADMIN)).status_code == 200
    assert [(r["action"], r["decision"]) for r in api.audit_rows(TENANT)[seen:]] == [("tenant.settings.read", "allow")]
    # Passes the pre-check (a requester may cancel its own), refused on the loaded execution: one deny, the route's.
    seen = len(api.audit_rows(TENANT))
    someone_else = api.headers(TENANT, READER, oid=str(uuid.uuid4()))
    response = api.client.post(f"/api/v1/executions/{rows.execution}/cancel", headers=someone_else)
    assert response.status_code == 403, response.text
    decisions = [(r["action"], r["decision"], r["detail"]) for r in api.audit_rows(TENANT)[seen:]]
    assert decisions == [("execution.read", "allow", {}), ("execution.cancel", "deny", {})]


def test_a_missing_token_is_401_before_the_body(api: ApiHarness, rows: Fixture) -> None:
    response = api.client.post("/api/v1/intents", content=UNPARSEABLE, headers={"Content-Type": "application/json"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
