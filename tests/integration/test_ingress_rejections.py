# intent_ref: platform.ingress
"""Rejected intent requests on the real database: recorded for the sender's tenant only (RLS), once per event, listed
newest first with a cursor, and erased with the tenant."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from shared.api.durable import get_durable_client
from shared.api.security import token_validator
from shared.auth.tokens import TokenValidator
from shared.ingress.process import Outcome, process_event
from shared.ingress.request import IngressEvent
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

EXECUTOR = ["Intent.Executor"]
READER = ["Intent.Reader"]


class NoOrchestrations:
    """A rejected event never reaches the orchestration client; any call fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the orchestration client was used: {name}")


def _validator(api: ApiHarness) -> TokenValidator:
    validator: TokenValidator = api.client.app.dependency_overrides[token_validator]()  # type: ignore[attr-defined]
    return validator


def _send(api: ApiHarness, tenant: str, roles: list[str], body: Any, sequence: int) -> Outcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    event = IngressEvent(
        body=raw,
        partition_id="1",
        sequence_number=sequence,
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {api.token(tenant, roles)}"},
    )
    return asyncio.run(process_event(event, NoOrchestrations(), _validator(api)))


def _list(api: ApiHarness, tenant: str, **params: Any) -> dict[str, Any]:
    response = api.client.get("/api/v1/ingress/rejections", params=params, headers=api.headers(tenant, READER))
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def _intent(api: ApiHarness, tenant: str) -> str:
    body = {
        "name": f"i-{uuid.uuid4().hex[:8]}",
        "definition": {
            "target": "staging",
            "steps": [{"action": "http.request", "method": "GET", "url": "https://example.com/health"}],
        },
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(tenant, ["Intent.Author"]))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _rows(api: ApiHarness, tenant_id: uuid.UUID) -> int:
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        row = conn.execute("SELECT count(*) FROM app.ingress_rejections WHERE tenant_id = %s", (tenant_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_rejections_belong_to_the_sender_and_no_other_tenant_sees_them(api: ApiHarness) -> None:
    sender, other = api.provision("sender"), api.provision("other")
    own_intent, foreign_intent = _intent(api, "sender"), _intent(api, "other")
    seq = int(uuid.uuid4().int % 1_000_000)
    cases = [
        (EXECUTOR, {"intent_id": foreign_intent, "idempotency_key": "a"}, "not_found", 404),
        (READER, {"intent_id": own_intent, "idempotency_key": "b"}, "forbidden", 403),
        (EXECUTOR, {"intent": "nope", "idempotency_key": "c"}, "not_found", 404),
        (EXECUTOR, {"intent": "x", "tenant_id": str(other.id), "idempotency_key": "d"}, "invalid", 422),
        (EXECUTOR, b"{not json", "invalid", 422),
    ]
    for offset, (roles, body, reason, _status) in enumerate(cases):
        outcome = _send(api, "sender", roles, body, seq + offset)
        assert (outcome.reason, outcome.execution_id) == (reason, None), body

    page = _list(api, "sender")
    assert [item["reason"] for item in page["items"]] == [case[2] for case in reversed(cases)]
    assert [item["detail"]["status"] for item in page["items"]] == [case[3] for case in reversed(cases)]
    newest = page["items"][0]
    assert newest["event"] == {
        "hub": "intent-requests",
        "partition_id": "1",
        "sequence_number": seq + 4,
        "enqueued_time": newest["event"]["enqueued_time"],
    }
    assert newest["detail"]["instance"] == f"intent-requests/1/{seq + 4}"
    assert page["items"][1]["idempotency_key"] == "d"
    assert page["items"][1]["detail"]["errors"][0]["pointer"] == "/tenant_id"
    assert all(item["requested_by"].startswith(str(sender.entra_id)) for item in page["items"])

    assert _list(api, "other")["items"] == []
    assert _rows(api, other.id) == 0
    # The database itself: another tenant's context, and no context at all, see none of them.
    for context, expected in ((None, 0), (other.id, 0), (sender.id, len(cases))):
        with psycopg.connect(api.app_url, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE qp_runtime")
            if context is not None:
                conn.execute("SELECT app.pin_tenant(%s)", (context,))
            assert conn.execute("SELECT count(*) FROM app.ingress_rejections").fetchone() == (expected,), context
    with psycopg.connect(api.app_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE qp_runtime")
        conn.execute("SELECT app.pin_tenant(%s)", (sender.id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # qp_runtime may only append
            conn.execute("DELETE FROM app.ingress_rejections")


def test_a_redelivered_rejection_is_recorded_once_and_never_holds_the_token(api: ApiHarness) -> None:
    api.provision("redelivered")
    token = api.token("redelivered", EXECUTOR)
    event = IngressEvent(
        body=b'{"intent": "missing", "idempotency_key": "k"}',
        partition_id="2",
        sequence_number=99,
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {token}"},
    )
    for _ in range(2):
        assert asyncio.run(process_event(event, NoOrchestrations(), _validator(api))).reason == "not_found"
    assert _rows(api, api.tenants["redelivered"].id) == 1
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        stored = conn.execute(
            "SELECT row_to_json(r)::text FROM app.ingress_rejections r WHERE tenant_id = %s",
            (api.tenants["redelivered"].id,),
        ).fetchone()
    assert stored is not None and token not in stored[0] and token.split(".")[2] not in stored[0]


def test_the_listing_is_newest_first_and_pages_with_a_cursor(api: ApiHarness) -> None:
    api.provision("pager")
    for sequence in range(1, 6):
        assert _send(api, "pager", EXECUTOR, {"idempotency_key": f"k{sequence}"}, sequence).reason == "invalid"
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = _list(api, "pager", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [item["event"]["sequence_number"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == ([5, 4, 3, 2, 1], 3)
    bad = api.client.get(
        "/api/v1/ingress/rejections", params={"cursor": "bm9wZQ"}, headers=api.headers("pager", READER)
    )
    assert bad.status_code == 400, bad.text
    assert api.client.get("/api/v1/ingress/rejections").status_code == 401


def test_rejections_are_erased_with_their_tenant(api: ApiHarness, request: pytest.FixtureRequest) -> None:
    api.provision("ops")
    admin = api.headers("ops", ["Platform.Admin"])
    leaving, staying = api.provision("leaving"), api.provision("staying")
    for name in ("leaving", "staying"):
        assert _send(api, name, EXECUTOR, {"intent": "gone", "idempotency_key": "k"}, 1).reason == "not_found"
    assert (_rows(api, leaving.id), _rows(api, staying.id)) == (1, 1)

    export = api.client.post(f"/api/v1/tenants/{leaving.id}/export", headers=admin)
    assert export.status_code == 201, export.text
    assert export.json()["counts"]["ingress_rejections"] == 1
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    etag = api.client.get(f"/api/v1/tenants/{leaving.id}", headers=admin).headers["etag"]
    api.client.patch(f"/api/v1/tenants/{leaving.id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag})
    erased = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json={"confirm_name": leaving.name}, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["ingress_rejections"] == 1
    assert (_rows(api, leaving.id), _rows(api, staying.id)) == (0, 1)
