# intent_ref: platform.tenants
"""A tenant's export request queues a job (ADR 0012, amended 2026-12-07): the client gives it a key of its own and sends
it again after a lost answer, which the server answers with the same job."""

from __future__ import annotations

import httpx

from tests.unit.test_client_package import pauses  # noqa: F401  # the fixture
from tests.unit.test_client_requests import client, first_fails

EXPORT = "/api/v1/tenants/0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10/export"


def test_an_export_request_is_given_a_key_and_sent_again_with_it_after_a_lost_answer(pauses: list[float]) -> None:
    handler, seen = first_fails(
        lambda request: httpx.Response(503, json={"status": 503}), httpx.Response(202, json={"status": "queued"})
    )
    answer = client(handler).post(EXPORT)
    assert answer.status_code == 202
    assert len(seen) == 2 and seen[0].headers["Idempotency-Key"]
    assert seen[1].headers["Idempotency-Key"] == seen[0].headers["Idempotency-Key"]


def test_the_callers_own_key_is_kept(pauses: list[float]) -> None:
    handler, seen = first_fails(
        lambda request: httpx.Response(504, json={"title": "Gateway timeout"}), httpx.Response(202, json={})
    )
    client(handler).post(EXPORT, idempotency_key="mine")
    assert [request.headers["Idempotency-Key"] for request in seen] == ["mine", "mine"]
