# intent_ref: platform.ingress
"""Rejected intent requests on the real database: recorded for the sender's tenant only (RLS), once per event, listed
newest first with a cursor, and erased with the tenant; each record bounded in size whatever the event held, and the
event judged on the bytes its producer sent, as the trigger delivers them."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import psycopg
import pytest

from devhost.eventhubs.binding import EventHubTriggerSpec, trigger_input
from devhost.eventhubs.store import StoredEvent
from shared.accepted_json import MAX_REFUSALS
from shared.api.durable import get_durable_client
from shared.api.security import token_validator
from shared.auth.tokens import TokenValidator
from shared.db.session import tenant_transaction
from shared.ingress.process import Outcome, process_batch, process_event
from shared.ingress.rejections import MAX_DETAIL_BYTES, NewRejection, record_rejection
from shared.ingress.request import IngressEvent, from_trigger
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_offboarding import exported_by_job
from tests.unit.test_ingress import unknown_members

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


def _send(
    api: ApiHarness, tenant: str, roles: list[str], body: Any, sequence: int, enqueued_time: datetime | None = None
) -> Outcome:
    """One event at `sequence` on partition 1, enqueued now unless `enqueued_time` says when (a redelivery's)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    event = IngressEvent(
        body=raw,
        partition_id="1",
        sequence_number=sequence,
        enqueued_time=enqueued_time or datetime.now(UTC),
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
        "enqueued_time": newest["event"]["enqueued_time"],
    }
    # The rejection's own id, never the event's place on the hub (whose gaps count other producers' events).
    assert newest["detail"]["instance"] == f"intent-requests/{newest['id']}"
    assert str(seq + 4) not in json.dumps(newest)
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
        seen += [int(item["idempotency_key"].removeprefix("k")) for item in page["items"]]
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

    assert exported_by_job(api, leaving.id, admin)["counts"]["ingress_rejections"] == 1
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore
    etag = api.client.get(f"/api/v1/tenants/{leaving.id}", headers=admin).headers["etag"]
    api.client.patch(f"/api/v1/tenants/{leaving.id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag})
    erased = api.client.post(f"/api/v1/tenants/{leaving.id}/erase", json={"confirm_name": leaving.name}, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["ingress_rejections"] == 1
    assert (_rows(api, leaving.id), _rows(api, staying.id)) == (0, 1)


def _stored(api: ApiHarness, tenant_id: uuid.UUID) -> list[tuple[dict[str, Any], int]]:
    """Each rejection's problem document and the bytes of its text, as the database holds them."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        rows = conn.execute(
            "SELECT detail, octet_length(detail::text) FROM app.ingress_rejections WHERE tenant_id = %s",
            (tenant_id,),
        ).fetchall()
    return [(row[0], int(row[1])) for row in rows]


def test_events_of_a_hundred_thousand_unknown_members_are_recorded_and_listed_small(api: ApiHarness) -> None:
    tenant = api.provision("members")
    body, unknown = unknown_members()
    for sequence in range(1, 11):
        assert _send(api, "members", EXECUTOR, body, sequence).reason == "invalid"
    stored = _stored(api, tenant.id)
    assert len(stored) == 10
    for detail, size in stored:
        assert len(detail["errors"]) == MAX_REFUSALS
        assert detail["detail"] == f"{unknown} invalid field(s), the first {MAX_REFUSALS} listed"
        assert size < 4096  # 7 MB each, before the refusal named only the first few
    listing = api.client.get("/api/v1/ingress/rejections", params={"limit": 10}, headers=api.headers("members", READER))
    assert listing.status_code == 200, listing.text
    assert len(listing.json()["items"]) == 10
    assert len(listing.content) < 10 * 4096  # was 66 MB


def test_a_problem_document_over_the_bound_is_stored_as_its_summary(api: ApiHarness) -> None:
    tenant = api.provision("oversized")
    document = {
        "type": "https://quantum-platform.dev/problems/validation-error",
        "title": "Request validation failed",
        "status": 422,
        "detail": "5000 invalid field(s)",
        "instance": "intent-requests/3/1",
        "errors": [{"pointer": f"/{n}", "detail": "x" * 200} for n in range(5000)],
    }
    for sequence in range(1, 6):
        rejection = NewRejection("intent-requests", "3", sequence, None, "invalid", document)
        with tenant_transaction(tenant.id) as conn:
            assert record_rejection(conn, rejection)
    stored = _stored(api, tenant.id)
    assert len(stored) == 5
    for detail, size in stored:
        assert size <= MAX_DETAIL_BYTES
        assert "errors" not in detail and detail["truncated"] is True
        assert {name: detail[name] for name in ("type", "title", "status", "instance")} == {
            name: document[name] for name in ("type", "title", "status", "instance")
        }
    page = _list(api, "oversized", limit=5)
    assert [item["detail"]["truncated"] for item in page["items"]] == [True] * 5


def test_an_event_that_is_not_utf8_is_rejected_as_sent_through_the_trigger(api: ApiHarness) -> None:
    tenant = api.provision("bytes")
    intent_id = _intent(api, "bytes")
    raw = b'{"intent_id": "' + intent_id.encode() + b'", "input": {"who": "caf\xe9 \xff"}, "idempotency_key": "k"}'
    # The function as the app registers it, its trigger's settings read by the devhost as the Functions host reads
    # them, the invocation's data decoded by the azure.functions converter as in the Python worker.
    from functions.eventhub_intent_requests import bp  # the functions package builds the gateway: needs settings

    app = df.DFApp()
    app.register_functions(bp)
    (function,) = [f for f in app.get_functions() if f.get_function_name() == "intent_requests"]
    spec = EventHubTriggerSpec.from_function(function)
    properties = {"authorization": f"Bearer {api.token('bytes', EXECUTOR)}"}
    inputs, metadata = trigger_input(spec, 0, [StoredEvent(0, 1, 0, None, raw, properties, datetime.now(UTC))])
    events = func.eventhub.EventHubTriggerConverter.decode(inputs[spec.parameter], trigger_metadata=metadata)
    assert isinstance(events, list)
    assert [event.get_body() for event in events] == [raw]

    outcomes = asyncio.run(process_batch(from_trigger(events), NoOrchestrations(), _validator(api)))
    assert [outcome.reason for outcome in outcomes] == ["invalid"]
    (item,) = _list(api, "bytes")["items"]
    assert [error["code"] for error in item["detail"]["errors"]] == ["not_utf8"]
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        started = conn.execute("SELECT count(*) FROM app.executions WHERE tenant_id = %s", (tenant.id,)).fetchone()
    assert started == (0,)
