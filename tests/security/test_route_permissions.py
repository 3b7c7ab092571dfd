# intent_ref: platform.hardening
"""Every API route decides the caller's role before its body, and that pre-check never refuses what the full
decision on a loaded resource could allow."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from shared.api import permissions
from shared.api.idempotency import idempotency_key
from shared.api.permissions import RESOURCE_TYPES, GuardedRoute, role_decision, route_permission
from shared.api.security import RequestContext, authenticated
from shared.auth.principal import APP_ROLES, Principal
from shared.policy.actions import Action
from shared.policy.authorizer import Resource, TenantFacts, get_authorizer
from shared.tenants.models import Tenant

TENANT = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
FACTS = TenantFacts(TENANT, "active", frozenset({"staging", "production"}), frozenset({"http"}))
# Authenticated by a task token, or open to any caller of the tenant: no role decides them.
NO_ROLE_ROUTES = {
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/schemas/intent"),
    ("POST", "/api/v1/executions/{execution_id}/steps/{step_id}/complete"),
    ("POST", "/api/v1/executions/{execution_id}/steps/{step_id}/fail"),
    ("POST", "/api/v1/executions/{execution_id}/steps/{step_id}/compensation/complete"),
    ("POST", "/api/v1/executions/{execution_id}/steps/{step_id}/compensation/fail"),
}
IDEMPOTENT_ROUTES = {
    ("POST", "/api/v1/intents"),
    ("POST", "/api/v1/blueprints"),
    ("POST", "/api/v1/intents/{intent_id}/execute"),
    ("POST", "/api/v1/executions/{execution_id}/retry"),
    ("POST", "/api/v1/webhooks"),
    ("POST", "/api/v1/webhooks/{subscription_id}/rotate-secret"),
    ("POST", "/api/v1/modules"),
    ("POST", "/api/v1/policies"),
    ("POST", "/api/v1/tenants"),
    ("POST", "/api/v1/tenants/{tenant_id}/export"),
}
_SETTINGS = {
    "QP_DATABASE_URL": "host=/nonexistent",
    "QP_DATABASE_CONTROL_URL": "host=/nonexistent",
    "QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true",
}


@pytest.fixture(scope="module")
def app() -> Iterator[FastAPI]:
    """The gateway app; building it connects to nothing."""
    from shared.api.app import create_app
    from shared.config import get_settings

    with pytest.MonkeyPatch.context() as mp:
        for key, value in _SETTINGS.items():
            if key not in os.environ:
                mp.setenv(key, value)
        get_settings.cache_clear()
        yield create_app()
    get_settings.cache_clear()


def _api_routes(app: FastAPI) -> list[tuple[str, str, APIRoute]]:
    routes = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.path.startswith("/api/v1/"):
            routes.extend((method, route.path, route) for method in sorted(route.methods))
    return routes


def test_every_api_route_decides_the_role_before_anything_else(app: FastAPI) -> None:
    routes = _api_routes(app)
    assert len(routes) > 40  # the walk sees the included routers' routes
    missing = [
        f"{method} {path}"
        for method, path, route in routes
        if (method, path) not in NO_ROLE_ROUTES
        and (not isinstance(route, GuardedRoute) or route_permission(route) is None)
    ]
    assert missing == []
    assert {(method, path) for method, path, _ in routes} >= NO_ROLE_ROUTES


def test_each_route_checks_the_action_its_resource_names(app: FastAPI) -> None:
    # The permission's path parameter must exist on the route, or the pre-check would decide on no id at all.
    for method, path, route in _api_routes(app):
        permission = route_permission(route)
        if permission is not None and permission.resource_param is not None:
            assert "{" + permission.resource_param + "}" in path, f"{method} {path}"


def test_only_the_shared_dependency_reads_the_idempotency_key(app: FastAPI) -> None:
    with_key: set[tuple[str, str]] = set()
    for method, path, route in _api_routes(app):
        assert "idempotency-key" not in {param.alias.lower() for param in route.dependant.header_params}
        if any(dependency.call is idempotency_key for dependency in route.dependant.dependencies):
            with_key.add((method, path))
    assert with_key == IDEMPOTENT_ROUTES


def test_every_route_taking_the_key_documents_its_format(app: FastAPI) -> None:
    document = app.openapi()
    for method, path in IDEMPOTENT_ROUTES:
        operation = document["paths"][path][method.lower()]
        (header,) = [p for p in operation["parameters"] if p["name"].lower() == "idempotency-key"]
        assert header["in"] == "header"
        assert "visible ASCII" in header["description"] and "400" in header["description"]
        assert header["schema"]["maxLength"] == 255
        assert {"400", "422"} <= set(operation["responses"])


def test_every_action_has_its_schema_resource_type() -> None:
    assert set(RESOURCE_TYPES) == set(Action)
    everyone = Principal(TENANT, uuid.uuid4(), uuid.uuid4(), frozenset(APP_ROLES), frozenset(), False)
    for action in Action:
        decision, resource = role_decision(everyone, FACTS, action)
        assert decision.allowed, (action, decision)
        assert resource.type == RESOURCE_TYPES[action]


def _resources(principal: Principal, kind: str) -> list[Resource]:
    """Resources of every shape a stored row or a body could give (targets, requesters, labels)."""
    if kind == "Platform":
        return [Resource.platform()]
    if kind == "Tenant":
        return [Resource.tenant(TENANT)]
    targets, labels = ("", "staging", "production"), ({}, {"team": "web"})
    shapes: dict[str, list[dict[str, Any]]] = {
        "Intent": [{"target": t, "labels": ls} for t, ls in itertools.product(targets, labels)],
        "Blueprint": [{"labels": ls} for ls in labels],
        "Execution": [
            {"target": t, "requested_by": by, "labels": ls}
            for t, by, ls in itertools.product(targets, (principal.id, "x/y"), labels)
        ],
        "Module": [{"name": "helm-upgrade"}],
    }
    return [Resource(kind, "r-1", TENANT, attributes) for attributes in shapes.get(kind, [{}])]


ROLE_SETS = [frozenset(), *(frozenset({role}) for role in sorted(APP_ROLES)), frozenset(APP_ROLES)]


@pytest.mark.parametrize("action", list(Action), ids=str)
def test_the_pre_check_refuses_exactly_when_no_resource_could_be_allowed(action: Action) -> None:
    authorizer = get_authorizer()
    for roles in ROLE_SETS:
        principal = Principal(TENANT, uuid.uuid4(), uuid.uuid4(), roles, frozenset(), False)
        could = any(
            authorizer.decide(principal, action, resource, tenant=FACTS).allowed
            for resource in _resources(principal, RESOURCE_TYPES[action])
        )
        decision, _ = role_decision(principal, FACTS, action, "r-1")
        assert decision.allowed == could, (action, sorted(roles), decision)
        if not decision.allowed:
            assert decision.reason == "role_required"


def test_a_suspended_tenant_passes_no_pre_check() -> None:
    suspended = TenantFacts(TENANT, "suspended", FACTS.allowed_targets, FACTS.allowed_modules)
    principal = Principal(TENANT, uuid.uuid4(), uuid.uuid4(), frozenset(APP_ROLES), frozenset(), False)
    for action in Action:
        decision, _ = role_decision(principal, suspended, action)
        assert (decision.allowed, decision.reason) == (False, "tenant_suspended")


class _Recorded:
    """An audit store that keeps what it is given (the pre-check writes its deny record through it)."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def record(self, record: Any, **_kwargs: Any) -> None:
        self.records.append(record)


def test_a_refused_pre_check_says_why_and_which_roles_would_allow_it(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    tenant = Tenant(
        id=TENANT,
        name="fabrikam",
        display_name="",
        entra_tenant_id=uuid.uuid4(),
        status="active",
        quotas={},
        allowed_modules=[],
        allowed_targets=["production"],
        created_at=now,
        updated_at=now,
    )
    reader = Principal(TENANT, tenant.entra_tenant_id, uuid.uuid4(), frozenset({"Intent.Reader"}), frozenset(), False)
    audit = _Recorded()
    monkeypatch.setattr(permissions, "get_audit_store", lambda: audit)
    app.dependency_overrides[authenticated] = lambda: RequestContext(reader, tenant, "r-1")
    try:
        with TestClient(app) as client:
            execute = client.post(f"/api/v1/intents/{uuid.uuid4()}/execute", json={})
            approve = client.post(f"/api/v1/executions/{uuid.uuid4()}/approvals/gate", json={"decision": "approve"})
    finally:
        app.dependency_overrides.pop(authenticated, None)
    assert (execute.status_code, execute.json()["reason"]) == (403, "role_required")
    assert execute.json()["detail"] == (
        "Not allowed to intent.execute: none of the caller's roles allows it"
        " (it needs one of the roles Intent.Deployer, Intent.Executor)."
    )
    assert (approve.status_code, approve.json()["reason"]) == (403, "role_required")
    assert approve.json()["detail"] == (
        "Not allowed to execution.approve: none of the caller's roles allows it (it needs the Intent.Approver role)."
    )
    assert [(r.action, r.decision, r.reason) for r in audit.records] == [
        ("intent.execute", "deny", "role_required"),
        ("execution.approve", "deny", "role_required"),
    ]
