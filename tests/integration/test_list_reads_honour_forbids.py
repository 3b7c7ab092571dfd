# intent_ref: platform.registry
"""The executions, modules and work listings honour a tenant's read forbids: an execution or module a policy forbids
the caller to read is left out of `GET /executions`, `GET /modules` and `GET /work` (as its own GET refuses it), one
audit record per outcome (ADR 0011, amended 2026-12-07)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import work_queue
from shared.engine.steps import AttemptKey, StepSeed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_registry_api import ADMIN, AUTHOR, READER, create, intent_body, problem, provision

pytestmark = pytest.mark.integration

EXECUTIONS, MODULES, WORK = "/api/v1/executions", "/api/v1/modules", "/api/v1/work"
WORKER = ["Module.Worker"]
REMOTE_ACTION = "build-container"
SECRET_EXECUTIONS = (
    'forbid (principal, action == QP::Action::"execution.read", resource) '
    'when { resource.labels.contains("secret=yes") } unless { principal.roles.contains("Intent.Author") };'
)
"""Nobody but authors may read executions of intents labelled secret."""
HIDDEN_MODULE = (
    'forbid (principal, action == QP::Action::"module.read", resource) '
    f'when {{ resource.name == "{REMOTE_ACTION}" }} unless {{ principal.roles.contains("Intent.Author") }};'
)


def _forbid(api: ApiHarness, tenant: str, name: str, policy: str) -> None:  # noqa: F811  # the fixture's type
    body = {"name": name, "policy": policy}
    response = api.client.post("/api/v1/policies", json=body, headers=api.headers(tenant, ADMIN))
    assert response.status_code == 201, response.text


def _listed(response: Any, field: str = "id") -> list[str]:
    assert response.status_code == 200, response.text
    return [item[field] for item in response.json()["items"]]


def _executions(
    api: ApiHarness,  # noqa: F811
    pool: ConnectionPool[Any],
    tenant: str,
    labels: dict[str, str],
    count: int = 1,
) -> list[str]:
    """`count` running executions of a new intent labelled `labels`, oldest first."""
    intent = uuid.UUID(create(api, tenant, intent_body(f"i-{uuid.uuid4().hex[:10]}", labels=labels))["id"])
    tenant_id = api.tenants[tenant].id
    return [str(_execution(pool, tenant_id, intent, ["running"]).id) for _ in range(count)]


def _queue(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: str) -> str:
    """A remote step of the execution with its first attempt queued; the work item's id."""
    key = AttemptKey(uuid.UUID(execution_id), "remote", "run", 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, key.execution_id, [StepSeed(key.step_id, REMOTE_ACTION, 3)])
        store.begin_attempt(conn, key, action=REMOTE_ACTION, remote=True, step_state="waiting")
        work_queue.enqueue(conn, key, action=REMOTE_ACTION, params={}, timeout_s=600)
        items, _ = work_queue.list_items(conn, execution_id=key.execution_id)
    return str(items[0].id)


def _list_records(api: ApiHarness, tenant: str, response: Any) -> list[dict[str, Any]]:  # noqa: F811
    request_id = response.headers["x-request-id"]
    return [
        row
        for row in api.audit_rows(tenant)
        if row["request_id"] == request_id and row["detail"].get("operation") == "list"
    ]


def test_an_execution_listing_leaves_out_what_a_tenant_forbids_reading(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = provision(api, "lrf-executions")
    _forbid(api, tenant, "hide-secret", SECRET_EXECUTIONS)
    (plain,) = _executions(api, app_pool, tenant, {"team": "web"})
    (secret,) = _executions(api, app_pool, tenant, {"secret": "yes"})
    reader, author = api.headers(tenant, READER), api.headers(tenant, AUTHOR)
    assert problem(api.client.get(f"{EXECUTIONS}/{secret}", headers=reader), 403)["reason"] == (
        "denied_by_tenant_policy"
    )
    listed = api.client.get(EXECUTIONS, headers=reader)
    assert _listed(listed) == [plain]
    assert sorted((row["decision"], row["detail"]["items"]) for row in _list_records(api, tenant, listed)) == [
        ("allow", [plain]),
        ("deny", [secret]),
    ]
    # Whoever the forbid does not cover lists both, newest first.
    assert _listed(api.client.get(EXECUTIONS, headers=author)) == [secret, plain]


def test_a_page_of_forbidden_executions_is_empty_and_still_names_the_next(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = provision(api, "lrf-pages")
    _forbid(api, tenant, "hide-secret", SECRET_EXECUTIONS)
    plain = _executions(api, app_pool, tenant, {}, count=2)
    secret = _executions(api, app_pool, tenant, {"secret": "yes"}, count=2)
    reader = api.headers(tenant, READER)
    first = api.client.get(EXECUTIONS, params={"limit": 2}, headers=reader)
    assert _listed(first) == [] and first.json()["next_cursor"] is not None
    rest = api.client.get(EXECUTIONS, params={"limit": 2, "cursor": first.json()["next_cursor"]}, headers=reader)
    assert _listed(rest) == plain[::-1] and rest.json()["next_cursor"] is None
    assert [(row["decision"], len(row["detail"]["items"])) for row in _list_records(api, tenant, first)] == [
        ("deny", len(secret))
    ]


def test_a_module_listing_leaves_out_a_module_a_tenant_forbids_reading(api: ApiHarness) -> None:  # noqa: F811
    tenant = provision(api, "lrf-modules")
    reader, author = api.headers(tenant, READER), api.headers(tenant, AUTHOR)
    assert REMOTE_ACTION in _listed(api.client.get(MODULES, headers=reader), "action")
    _forbid(api, tenant, "hide-builder", HIDDEN_MODULE)
    problem(api.client.get(f"{MODULES}/{REMOTE_ACTION}", headers=reader), 403)
    listed = api.client.get(MODULES, headers=reader)
    actions = _listed(listed, "action")
    assert REMOTE_ACTION not in actions and "wait" in actions
    denied = [row["detail"]["items"] for row in _list_records(api, tenant, listed) if row["decision"] == "deny"]
    assert denied == [[REMOTE_ACTION]]
    assert REMOTE_ACTION in _listed(api.client.get(MODULES, headers=author), "action")


def test_a_work_listing_leaves_out_the_items_of_an_execution_a_tenant_forbids_reading(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
) -> None:
    tenant = provision(api, "lrf-work")
    _forbid(api, tenant, "hide-secret", SECRET_EXECUTIONS)
    tenant_id = api.tenants[tenant].id
    (plain,) = _executions(api, app_pool, tenant, {})
    (secret,) = _executions(api, app_pool, tenant, {"secret": "yes"})
    plain_item, secret_item = _queue(app_pool, tenant_id, plain), _queue(app_pool, tenant_id, secret)
    assert _listed(api.client.get(WORK, headers=api.headers(tenant, READER))) == [plain_item]
    assert _listed(api.client.get(WORK, params={"execution_id": secret}, headers=api.headers(tenant, READER))) == []
    assert _listed(api.client.get(WORK, headers=api.headers(tenant, AUTHOR))) == [plain_item, secret_item]
    # A worker, whose roles read no execution, still lists the queue it leases from, less what the forbid names.
    listed = api.client.get(WORK, headers=api.headers(tenant, WORKER))
    assert _listed(listed) == [plain_item]
    records = sorted(
        (row["reason"], row["detail"]["executions"], row["detail"].get("listed"))
        for row in _list_records(api, tenant, listed)
    )
    # Only the forbid's denial is recorded: what the worker was shown, its listing's own permission let it see.
    assert records == [("denied_by_tenant_policy", [secret], None)]
