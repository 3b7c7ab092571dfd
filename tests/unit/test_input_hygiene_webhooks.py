# intent_ref: platform.events
"""A webhook subscription lists each event type once (`["*", "*"]` was stored as sent), and the rotation of its
secret, which takes no body, refuses one (`{"secret": ...}` was answered 200 with a secret the platform drew).

Through the app without I/O, as tests/unit/edge_harness.py sets it up: a real validator reads the issuer's documents
from memory, the tenant comes from a stand-in directory cache and the rate token is always granted; both refusals come
before any transaction, so the database is one that does not exist."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from devhost.identity import SigningKey
from shared.api.routers.webhooks import SubscriptionIn, SubscriptionPatch
from shared.auth.principal import TENANT_ADMIN
from tests.unit.edge_harness import (  # noqa: F401  # the fixtures client, key, validator
    bearer,
    client,
    key,
    validation_problem,
    validator,
)

URL = "https://hooks.contoso.example/quantum"


@pytest.fixture()
def admin(key: SigningKey) -> dict[str, str]:
    return bearer(key, TENANT_ADMIN)


# ---- each event type once --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_types", "repeated"),
    [
        (["*", "*"], "'*' is listed twice (entries 0 and 1)"),
        (["execution.completed", "execution.failed", "execution.completed"], "(entries 0 and 2)"),
        (["execution.failed"] * 50, "'execution.failed' is listed twice (entries 0 and 1)"),
    ],
)
def test_a_subscription_with_a_repeated_event_type_is_refused(
    client: TestClient, admin: dict[str, str], event_types: list[str], repeated: str
) -> None:
    answer = client.post("/api/v1/webhooks", json={"url": URL, "event_types": event_types}, headers=admin)

    problem = validation_problem(answer)
    assert [error["pointer"] for error in problem["errors"]] == ["/event_types"], problem
    assert repeated in problem["errors"][0]["detail"], problem


def test_a_change_that_repeats_an_event_type_is_refused(client: TestClient, admin: dict[str, str]) -> None:
    answer = client.patch(f"/api/v1/webhooks/{uuid.uuid4()}", json={"event_types": ["*", "*"]}, headers=admin)

    problem = validation_problem(answer)
    assert [error["pointer"] for error in problem["errors"]] == ["/event_types"], problem


def test_distinct_event_types_keep_their_order() -> None:
    kinds = ["execution.failed", "step.failed", "execution.completed"]
    assert SubscriptionIn.model_validate({"url": URL, "event_types": kinds}).event_types == kinds
    assert SubscriptionPatch.model_validate({"event_types": kinds}).event_types == kinds
    with pytest.raises(ValidationError) as caught:
        SubscriptionPatch.model_validate({"event_types": ["*", "*"]})
    assert [error["type"] for error in caught.value.errors()] == ["repeated_event_type"]


# ---- a rotation takes no body --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b'{"secret": "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', b"{}", b"[]", b'"x"', b"null"]
)
def test_a_rotation_refuses_a_body(client: TestClient, admin: dict[str, str], body: bytes) -> None:
    headers = admin | {"Content-Type": "application/json"}
    answer = client.post(f"/api/v1/webhooks/{uuid.uuid4()}/rotate-secret", content=body, headers=headers)

    problem = validation_problem(answer)
    assert problem["errors"] == [{"pointer": "", "detail": "this request takes no body: send it without one"}]


def test_a_rotation_without_a_body_passes_the_check(client: TestClient, admin: dict[str, str]) -> None:
    # On to its transaction, which this test's database cannot give: whatever the answer, not the body's refusal.
    answer = client.post(f"/api/v1/webhooks/{uuid.uuid4()}/rotate-secret", headers=admin)
    assert answer.status_code != 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "takes no body" not in answer.text


def test_the_refusal_comes_after_the_permission_check(client: TestClient, key: SigningKey) -> None:
    answer = client.post(
        f"/api/v1/webhooks/{uuid.uuid4()}/rotate-secret",
        json={"secret": "whsec_x"},
        headers=bearer(key, "Intent.Reader"),
    )
    # Refused by the permission check, whose deny record this test's database cannot take (then 503): never the
    # body's refusal, which would tell a caller without the role what the route takes.
    assert answer.status_code in (403, 503), answer.text
    assert "takes no body" not in answer.text


def test_the_document_describes_the_refusal(client: TestClient) -> None:
    operation = client.app.openapi()["paths"]["/api/v1/webhooks/{subscription_id}/rotate-secret"]["post"]  # type: ignore[attr-defined]
    assert "requestBody" not in operation
    assert "takes no body" in operation["description"] and "422" in operation["responses"]
