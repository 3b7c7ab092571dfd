# intent_ref: platform.database
"""A route's transaction from its one dependency, on the real database: opened after the permission check and
pinned to the caller's tenant, held by the request so that the route's worker thread joins it, committed before the
answer and rolled back when the route raises (ADR 0039)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import psycopg
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient

from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import ProblemError, install_problem_handlers
from shared.api.security import RequestContext, authenticated
from shared.api.transactions import TenantConnection, in_route_transaction
from shared.auth.principal import Principal
from shared.db.session import held_transaction, platform_transaction
from shared.ingress.rejections import NewRejection, record_rejection
from shared.policy.actions import Action
from shared.tenants.repository import get_tenant

pytestmark = pytest.mark.integration

MayRead = Annotated[RequestContext, Depends(permission(Action.INGRESS_REJECTION_LIST))]


def _rejection(sequence_number: int) -> NewRejection:
    return NewRejection(
        hub="intent-requests",
        partition_id="route-transactions",
        sequence_number=sequence_number,
        enqueued_time=None,
        reason="invalid",
        detail={"title": "Invalid"},
    )


def _held(context: MayRead, conn: TenantConnection) -> dict[str, Any]:
    row = conn.execute("SELECT app.current_tenant_id() AS tenant, current_user AS role").fetchone()
    assert row is not None
    return {"joined": held_transaction(context.tenant.id) is conn, "tenant": str(row["tenant"]), "role": row["role"]}


def _app() -> FastAPI:
    router = APIRouter(route_class=GuardedRoute)

    router.add_api_route("/held", _held, methods=["GET"])

    @router.post("/writes/{number}")
    def writes(number: int, context: MayRead, conn: TenantConnection) -> dict[str, bool]:
        return {"recorded": record_rejection(conn, _rejection(number))}

    @router.post("/fails-after-a-write/{number}")
    def fails(number: int, context: MayRead, conn: TenantConnection) -> None:
        record_rejection(conn, _rejection(number))
        raise ProblemError(409, "conflict", "Conflict", "refused after the write")

    @router.get("/out-of-order")
    def out_of_order(conn: TenantConnection, context: MayRead) -> None:
        raise AssertionError("never reached: the transaction is refused before the permission check")

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture
def caller(process_pools: None, new_tenant: Callable[[], uuid.UUID]) -> Iterator[tuple[TestClient, uuid.UUID]]:
    tenant_id = new_tenant()
    with platform_transaction() as conn:
        tenant = get_tenant(conn, tenant_id)
    assert tenant is not None
    roles: set[str] = {"Intent.Reader"}
    principal = Principal(tenant_id, tenant.entra_tenant_id, uuid.uuid4(), frozenset(roles), frozenset(), False)
    app = _app()
    app.dependency_overrides[authenticated] = lambda: RequestContext(principal, tenant, "req-route-transactions")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, tenant_id


def _recorded(pg: Any, tenant_id: uuid.UUID) -> list[int]:
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        rows = admin.execute(
            "SELECT sequence_number FROM app.ingress_rejections WHERE tenant_id = %s ORDER BY 1", (tenant_id,)
        ).fetchall()
    return [row[0] for row in rows]


def test_the_route_runs_in_its_callers_tenant_transaction_and_joins_it_from_its_thread(
    caller: tuple[TestClient, uuid.UUID],
) -> None:
    client, tenant_id = caller
    answer = client.get("/held")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"joined": True, "tenant": str(tenant_id), "role": "qp_runtime"}


def test_what_a_route_writes_is_committed_when_it_answers_and_rolled_back_when_it_raises(
    pg: Any, caller: tuple[TestClient, uuid.UUID]
) -> None:
    client, tenant_id = caller
    assert client.post("/writes/1").json() == {"recorded": True}
    assert _recorded(pg, tenant_id) == [1]
    refused = client.post("/fails-after-a-write/2")
    assert refused.status_code == 409 and refused.headers["content-type"].startswith("application/problem+json")
    assert _recorded(pg, tenant_id) == [1]


def test_a_route_that_asks_for_its_transaction_before_its_permission_check_fails_loudly(
    caller: tuple[TestClient, uuid.UUID],
) -> None:
    client, _ = caller
    answer = client.get("/out-of-order")
    assert answer.status_code == 500


def test_a_route_holds_one_transaction_and_only_in_a_plain_def() -> None:
    router = APIRouter(route_class=GuardedRoute)
    with pytest.raises(TypeError, match="one route transaction, in a plain `def` route"):

        @router.get("/async")
        async def on_the_event_loop(context: MayRead, conn: TenantConnection) -> None:
            """Its statements would block the event loop."""

    with pytest.raises(TypeError, match="one route transaction"):

        @router.get("/two")
        def two(context: MayRead, conn: TenantConnection, other: TenantConnection) -> None:
            """Two borrows of one pool by one request."""


def test_a_route_copied_with_its_endpoint_keeps_one_transaction(caller: tuple[TestClient, uuid.UUID]) -> None:
    client, tenant_id = caller
    # A route copied with its endpoint (as including a router may do) is wrapped again by its route class: the
    # transaction must still be opened once, around the route, and handed to it.
    wrapped = in_route_transaction(_held)
    assert in_route_transaction(wrapped) is wrapped
    copied = FastAPI()
    install_problem_handlers(copied)
    router = APIRouter(route_class=GuardedRoute)
    router.add_api_route("/held", wrapped, methods=["GET"])
    copied.include_router(router, prefix="/copied")
    copied.dependency_overrides = client.app.dependency_overrides  # type: ignore[attr-defined]
    with TestClient(copied, raise_server_exceptions=False) as other:
        answer = other.get("/copied/held")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"joined": True, "tenant": str(tenant_id), "role": "qp_runtime"}
