# intent_ref: platform.audit
"""Refused requests on the faster request path: they change nothing, and every denial's record is durable."""

from __future__ import annotations

import uuid

import pytest

from shared.api.problems import ProblemError
from shared.api.security import RequestContext, authorize, tenant_resource
from shared.auth.principal import Principal
from shared.db.session import platform_transaction, tenant_transaction
from shared.policy.actions import Action
from shared.tenants.repository import tenant_directory
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author"]


def _definition(name: str) -> dict[str, object]:
    return {
        "name": name,
        "definition": {
            "target": "staging",
            "steps": [{"id": "ping", "action": "http.request", "url": "https://ci.example/ping"}],
        },
    }


def _intents(api: ApiHarness, tenant: str) -> list[tuple[object, ...]]:
    return [row for row in api.table_snapshot("intents") if row[0] == api.tenants[tenant].id]


def test_a_request_over_the_rate_changes_nothing_and_records_nothing(api: ApiHarness) -> None:
    api.provision("slow", quotas={"requests_per_minute": 1, "burst": 1})
    headers = api.headers("slow", AUTHOR)
    assert api.client.post("/api/v1/intents", json=_definition("first"), headers=headers).status_code == 201
    intents, audit = _intents(api, "slow"), api.audit_rows("slow")
    refused = api.client.post("/api/v1/intents", json=_definition("second"), headers=headers)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert _intents(api, "slow") == intents
    assert api.audit_rows("slow") == audit  # admission control, not an authorization decision


def test_a_forbidden_create_changes_nothing_and_its_denial_is_recorded(api: ApiHarness) -> None:
    api.provision("readers")
    intents, before = _intents(api, "readers"), len(api.audit_rows("readers"))
    refused = api.client.post(
        "/api/v1/intents", json=_definition("nope"), headers=api.headers("readers", ["Intent.Reader"])
    )
    assert refused.status_code == 403
    assert _intents(api, "readers") == intents
    rows = api.audit_rows("readers")[before:]
    assert [(r["action"], r["decision"]) for r in rows] == [("intent.create", "deny")]


def test_a_denial_inside_the_callers_transaction_outlives_its_rollback(api: ApiHarness) -> None:
    handle = api.provision("rollback")
    tenant = tenant_directory.resolve(platform_transaction, handle.entra_id)
    assert tenant is not None
    principal = Principal(
        tenant_id=handle.id,
        entra_tenant_id=handle.entra_id,
        object_id=uuid.uuid4(),
        roles=frozenset({"Intent.Reader"}),
        scopes=frozenset(),
        app_only=False,
    )
    context = RequestContext(principal, tenant, f"req-{uuid.uuid4().hex[:8]}")
    resource = tenant_resource("Intent", uuid.uuid4(), handle.id, target="staging", labels={})
    with pytest.raises(ProblemError) as refused, tenant_transaction(handle.id) as conn:
        authorize(context, Action.INTENT_CREATE, resource, conn=conn)  # the 403 rolls this transaction back
    assert refused.value.status == 403
    rows = [r for r in api.audit_rows("rollback") if r["request_id"] == context.request_id]
    assert [(r["action"], r["decision"]) for r in rows] == [("intent.create", "deny")]
