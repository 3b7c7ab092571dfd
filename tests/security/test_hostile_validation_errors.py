# intent_ref: platform.hardening
"""A body of a hundred thousand members no route has is answered with a short problem document: the first few
errors, each cut, and the count of all; a body with a few bad fields still gets every one of them listed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.accepted_json import MAX_REFUSALS
from shared.api.durable import get_durable_client
from shared.api.problems import MAX_LISTED_ERRORS, FieldError, problem_document
from shared.registry.problems import MAX_REPORTED_ERRORS
from shared.registry.schema_refs import MAX_MESSAGE_LENGTH
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

TENANT = "hostile-members"
ROLES = ["Intent.Author", "Intent.Executor", "Tenant.Admin"]
UNKNOWN = 100_000
SMALL = 8 * 1024


def _members_body(first: dict[str, Any]) -> bytes:
    """About 1 MB: `first`'s members, then UNKNOWN members that no request model has (`"0":0,"1":0,...`)."""
    members = ",".join(f'"{n}":0' for n in range(UNKNOWN))
    return (json.dumps(first)[:-1] + "," + members + "}").encode()


class _NoOrchestrations:
    """The Durable client the execute route takes; never reached, since the body is refused first."""

    async def start_new(self, *_args: Any) -> str:
        raise AssertionError("a refused body started an orchestration")


@pytest.fixture(scope="module")
def intent_id(api: ApiHarness) -> Iterator[str]:
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = _NoOrchestrations
    api.provision(TENANT, allowed_modules=["wait"], quotas={"requests_per_minute": 100_000, "burst": 10_000})
    created = api.client.post(
        "/api/v1/intents",
        headers=api.headers(TENANT, ROLES),
        json={"name": "hostile", "definition": {"target": "staging", "steps": [{"action": "wait", "seconds": 1}]}},
    )
    assert created.status_code == 201, created.text
    yield created.json()["id"]
    app.dependency_overrides.pop(get_durable_client, None)


def _send(api: ApiHarness, method: str, path: str, body: bytes) -> httpx.Response:
    headers = {**api.headers(TENANT, ROLES), "Content-Type": "application/json"}
    return api.client.request(method, path, headers=headers, content=body)


def _problem(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text[:2000]
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert document["status"] == 422
    return document


def _field_routes(intent: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Routes whose body is a request model that forbids other members, with a body they would otherwise take."""
    return [
        ("POST", f"/api/v1/intents/{intent}/execute", {"input": {}}),
        ("PATCH", "/api/v1/tenant", {"settings": {"feature.x": True}}),
        ("POST", "/api/v1/webhooks", {"url": "https://hooks.example.com/x", "event_types": ["*"]}),
    ]


@pytest.mark.parametrize("route", range(3), ids=["execute", "tenant-settings", "webhook-create"])
def test_a_megabyte_of_unknown_members_is_answered_with_the_first_few_and_their_count(
    api: ApiHarness, intent_id: str, route: int
) -> None:
    method, path, first = _field_routes(intent_id)[route]
    body = _members_body(first)
    assert 900_000 < len(body) < 1024 * 1024  # within the default body limit
    response = _send(api, method, path, body)
    document = _problem(response)
    assert len(response.content) < SMALL, len(response.content)
    assert document["type"].endswith("/validation-error")
    assert document["detail"] == f"{UNKNOWN} invalid field(s), the first {MAX_REFUSALS} listed"
    assert document["errors"] == [
        {"pointer": f"/{n}", "detail": "Extra inputs are not permitted"} for n in range(MAX_REFUSALS)
    ]


def test_a_megabyte_of_unknown_members_in_a_definition_is_answered_in_a_few_kilobytes(
    api: ApiHarness, intent_id: str
) -> None:
    # The registry reports its own problems (up to MAX_REPORTED_ERRORS of its checks); its document is bounded too.
    body = _members_body(
        {"name": "flood", "definition": {"target": "staging", "steps": [{"action": "wait", "seconds": 1}]}}
    )
    response = _send(api, "POST", "/api/v1/intents", body)
    document = _problem(response)
    assert len(response.content) < SMALL, len(response.content)
    errors = document["errors"]
    assert 0 < len(errors) <= MAX_REPORTED_ERRORS
    assert str(UNKNOWN) in document["detail"] and f"the first {len(errors)} of" in document["detail"]
    assert errors[0] == {"pointer": "/0", "detail": "Extra inputs are not permitted", "code": "extra_forbidden"}


def test_a_long_member_name_is_cut_in_the_pointer(api: ApiHarness, intent_id: str) -> None:
    name = "m" * 100_000
    response = _send(api, "PATCH", "/api/v1/tenant", json.dumps({"settings": {}, name: 1}).encode())
    document = _problem(response)
    assert len(response.content) < SMALL
    [error] = document["errors"]
    assert len(error["pointer"]) == MAX_MESSAGE_LENGTH
    assert error["pointer"] == "/" + "m" * (MAX_MESSAGE_LENGTH - 4) + "..."
    assert document["detail"] == "1 invalid field(s)"


def test_a_few_bad_fields_are_all_listed_as_before(api: ApiHarness, intent_id: str) -> None:
    response = _send(
        api,
        "POST",
        "/api/v1/webhooks",
        json.dumps({"url": 5, "event_types": [], "description": "d" * 501, "colour": "red"}).encode(),
    )
    document = _problem(response)
    assert document["detail"] == "4 invalid field(s)"
    assert sorted(e["pointer"] for e in document["errors"]) == ["/colour", "/description", "/event_types", "/url"]
    assert all(e["detail"] for e in document["errors"])
    execute = _send(
        api, "POST", f"/api/v1/intents/{intent_id}/execute", json.dumps({"version": 0, "plan_hash": "x"}).encode()
    )
    document = _problem(execute)
    assert document["detail"] == "2 invalid field(s)"
    assert sorted(e["pointer"] for e in document["errors"]) == ["/plan_hash", "/version"]


def test_no_problem_document_lists_more_than_its_bound() -> None:
    many = [FieldError(pointer=f"/{n}", detail="x" * 1000) for n in range(1000)]
    document = problem_document(422, "validation-error", "Request validation failed", "Many.", errors=many)
    assert [e["pointer"] for e in document["errors"]] == [f"/{n}" for n in range(MAX_LISTED_ERRORS)]
    assert {len(e["detail"]) for e in document["errors"]} == {MAX_MESSAGE_LENGTH}
    assert document["detail"] == f"Many; the first {MAX_LISTED_ERRORS} of 1000 are listed."
    coded = [{"pointer": "/" + "p" * 1000, "detail": "d", "code": "c"}] * 1000
    document = problem_document(422, "invalid-definition", "Unprocessable content", extensions={"errors": coded})
    assert len(document["errors"]) == MAX_LISTED_ERRORS
    assert document["errors"][0] == {
        "pointer": "/" + "p" * (MAX_MESSAGE_LENGTH - 4) + "...",
        "detail": "d",
        "code": "c",
    }
    assert document["detail"] == f"1000 errors; the first {MAX_LISTED_ERRORS} of 1000 are listed."
    few = [{"pointer": "/a", "detail": "d", "code": "c"}, "not an object"]
    document = problem_document(422, "x", "Unprocessable content", "Two.", extensions={"errors": few})
    assert document["errors"] == few and document["detail"] == "Two."
