# intent_ref: platform.tenants
"""A request that waited on its tenant's row while the erasure held it, on a route that records its allow decision
inside its transaction: answered as an unknown tenant's (401), and the allow record is not written after it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.problems import error_response
from shared.db.session import tenant_transaction, when_released
from shared.registry import service as registry_service
from shared.tenants.offboarding import TENANT_TABLES
from tests.integration.api_harness import ApiHarness, TenantHandle, api  # noqa: F401  # the fixture
from tests.integration.test_erase_launch_race import _erased_while_it_waits
from tests.integration.test_erase_launch_race import durable as durable  # noqa: F401  # the fixture
from tests.integration.test_offboarding import _tenant_row_counts
from tests.integration.test_registry_api import INTENTS
from tests.integration.test_registry_check_outside_txn import _body, _created, _tenant

pytestmark = pytest.mark.integration

ADMIN = ["Tenant.Admin"]
_POLICY = 'forbid (principal, action == QP::Action::"tenant.settings.read", resource) when { false };'


def _create_policy(api: ApiHarness, name: str) -> Callable[[], Any]:
    body = {"name": f"p-{uuid.uuid4().hex[:8]}", "policy": _POLICY}
    return lambda: api.client.post("/api/v1/policies", json=body, headers=api.headers(name, ADMIN))


# A cancel or an approval is not here: it holds its execution's rows when it meets the tenant row, so the erasure's
# delete of them and its wait on the tenant row are a deadlock, and one of the two is its victim (503, Retry-After).
ROUTES = {"create-policy": _create_policy}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_request_auditing_its_allow_inside_its_transaction_is_answered_401_when_its_tenant_went(
    api: ApiHarness, durable: Any, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The allow record, joined to the request's transaction, waited on the tenant row and then met the tenant gone;
    # written again on its own after the rollback, the database refused it (no record of a tenant whose row is gone),
    # and that refusal replaced the foreign key's error: the request answered 500. The record itself now holds the
    # tenant row as a foreign key would (migration 0060): it waits on the erasure and is refused, and that refusal is
    # answered as a refused foreign key to the tenant is.
    name = f"erased-under-{route}"
    tenant = api.provision(name)
    call = ROUTES[route](api, name)
    # The tenant's rate bucket is there by now: the request waits on the tenant row in its route, not in its admission.
    warm = api.client.get("/api/v1/policies", headers=api.headers(name, ADMIN))
    assert warm.status_code == 200, warm.text
    unknown = api.client.post("/api/v1/policies", json={}, headers=api.headers(str(uuid.uuid4()), ADMIN))
    assert unknown.status_code == 401, unknown.text

    with ThreadPoolExecutor(1) as pool:
        answer_of = _erased_while_it_waits(api, tenant.id, pool, call)
        with caplog.at_level(logging.INFO):
            answer: httpx.Response = answer_of.result(60)

    assert answer.status_code == 401, answer.text
    assert answer.json() == unknown.json()
    assert answer.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    counts = _tenant_row_counts(api, tenant.id)
    assert set(counts.values()) == {0}, counts
    # The allow record met the erased tenant in its own insert (migration 0060): refused there, it left nothing to be
    # written after the rollback, and nothing failed but the request's transaction.
    assert [r.getMessage() for r in caplog.records if r.name == "shared.db.session"] == []
    assert not any(r.name == "shared.policy.decisions" for r in caplog.records)
    # Answered 401, and still told at WARNING: an erasure cut the request short.
    assert any(
        r.name == "shared.api.problems"
        and r.levelno == logging.WARNING
        and "erased meanwhile" in r.getMessage()
        and "audit_events" in r.getMessage()
        for r in caplog.records
    )


def test_a_failing_rollback_time_callback_is_raised_chained_to_the_transactions_own_error(
    app_pool: ConnectionPool[Any], new_tenant: Any
) -> None:
    # A deferred callback is a decision's record: it is never lost in silence (ADR 0017), and what rolled the
    # transaction back is kept as its cause. (A record whose tenant is gone drops itself, without an error.)
    tenant = new_tenant()

    def refused() -> None:
        raise RuntimeError("the record written after the rollback")

    ran: list[str] = []
    with pytest.raises(RuntimeError, match="the record written after the rollback") as raised:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            when_released(conn, refused, only="rollback")
            when_released(conn, lambda: ran.append("after"))
            raise LookupError("what rolled it back")
    assert ran == ["after"]  # the others still ran
    assert isinstance(raised.value.__cause__, LookupError)

    with pytest.raises(RuntimeError, match="the record written after the rollback"):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            when_released(conn, refused, only="commit")


def _tenant_reference_refused(pg: Any) -> psycopg.errors.ForeignKeyViolation:
    """A real refusal of a row naming a tenant that has no row (written past row-level security, as a bug would)."""
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        try:
            conn.execute(
                "INSERT INTO app.intents (tenant_id, id, name, created_by) VALUES (%s, %s, 'x', 'test')",
                (uuid.uuid4(), uuid.uuid4()),
            )
        except psycopg.errors.ForeignKeyViolation as exc:
            conn.rollback()
            return exc
    raise AssertionError("the row was taken")


@pytest.mark.parametrize("erased", [False, True])
def test_a_refused_reference_to_a_tenant_is_a_401_only_when_the_transactions_tenant_is_gone(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Any, erased: bool
) -> None:
    # Every `_tenant_id_fkey` violation was answered 401 "not provisioned": one met while the transaction's tenant
    # is still there (a write naming another tenant) is a bug, then hidden from the log and shown to the caller as
    # its token's fault.
    tenant_id = uuid.uuid4() if erased else new_tenant()
    refused = _tenant_reference_refused(pg)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        with tenant_transaction(tenant_id, pool=app_pool):
            raise refused
    answer = error_response(raised.value, instance="/refused", request_id="r-1")
    assert answer.status_code == (401 if erased else 500)


def test_a_plan_whose_tenant_is_erased_during_its_check_is_not_a_500(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant(api, "erased-plan")
    item_id = _created(api, tenant, _body(f"p-{uuid.uuid4().hex[:6]}"))
    tenant_id = api.tenants[tenant].id
    real = registry_service.check_outside

    def erase_then_check(*args: Any, **kwargs: Any) -> Any:
        with psycopg.connect(api.admin_url, dbname="quantum") as erasing:
            erasing.execute("SELECT 1 FROM app.tenants WHERE id = %s FOR UPDATE", (tenant_id,))
            for table in TENANT_TABLES:
                erasing.execute(f"DELETE FROM app.{table} WHERE tenant_id = %s", (tenant_id,))  # noqa: S608
            erasing.execute("DELETE FROM app.tenants WHERE id = %s", (tenant_id,))
        return real(*args, **kwargs)

    monkeypatch.setattr(registry_service, "check_outside", erase_then_check)
    response = api.client.post(f"{INTENTS}/{item_id}/plan", headers=api.headers(tenant, ["Intent.Reader"]))
    # Its item went with the tenant: answered as a plan of an unknown item is, the read's allow record dropped (no
    # record is taken for a tenant whose row is gone), not a 500 for that refused record.
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"
