# intent_ref: platform.execution
"""The remote worker API's numbers and flags are taken as JSON types them: a lease's `max_items`, `lease_s` and
`wait_s` and a heartbeat's `extend_s` and `percent` are refused 422 as a string or a boolean (a float field still
takes a JSON integer), validated the way FastAPI validates a parsed body."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.api.routers.task_completion import StepFailure
from shared.api.routers.work import HeartbeatRequest, LeaseRequest

LEASE = {"actions": ["build-container"]}
HEARTBEAT = {"lease_id": str(uuid.uuid4())}


def _client() -> TestClient:
    """The models behind routes of their own: the body parsed as JSON, then validated, as the work routes' are."""
    app = FastAPI()

    @app.post("/lease")
    def lease(body: LeaseRequest) -> dict[str, Any]:
        return body.model_dump(mode="json")

    @app.post("/heartbeat")
    def heartbeat(body: HeartbeatRequest) -> dict[str, Any]:
        return body.model_dump(mode="json")

    @app.post("/fail")
    def fail(body: StepFailure) -> dict[str, Any]:
        return body.model_dump(mode="json")

    return TestClient(app)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/lease", {**LEASE, "max_items": True}, "max_items"),
        ("/lease", {**LEASE, "max_items": "2"}, "max_items"),
        ("/lease", {**LEASE, "lease_s": "60"}, "lease_s"),
        ("/lease", {**LEASE, "wait_s": True}, "wait_s"),
        ("/lease", {**LEASE, "wait_s": "5"}, "wait_s"),
        ("/heartbeat", {**HEARTBEAT, "extend_s": "30"}, "extend_s"),
        ("/heartbeat", {**HEARTBEAT, "extend_s": "1e2"}, "extend_s"),
        ("/heartbeat", {**HEARTBEAT, "progress": {"percent": "40"}}, "percent"),
        ("/heartbeat", {**HEARTBEAT, "progress": {"percent": True}}, "percent"),
        ("/fail", {"task_token": "t", "error": "e", "retryable": "false"}, "retryable"),
        ("/fail", {"task_token": "t", "error": "e", "retryable": 0}, "retryable"),
    ],
)
def test_a_number_sent_as_a_string_or_a_boolean_is_refused(path: str, body: dict[str, Any], field: str) -> None:
    # Converted, `"max_items": true` leased one item, `"extend_s": "30"` extended the lease, and a worker whose
    # encoder wrote its numbers as text was never told.
    answer = _client().post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert [error["loc"][-1] for error in answer.json()["detail"]] == [field]


def test_numbers_as_json_types_them_are_taken_and_a_float_field_takes_an_integer() -> None:
    client = _client()
    lease = client.post("/lease", json={**LEASE, "max_items": 2, "lease_s": 60, "wait_s": 2.5})
    assert lease.status_code == 200, lease.text
    assert lease.json() | {"worker": None} == {
        "actions": ["build-container"],
        "max_items": 2,
        "lease_s": 60.0,
        "wait_s": 2.5,
        "worker": None,
    }
    beat = client.post("/heartbeat", json={**HEARTBEAT, "extend_s": 30, "progress": {"percent": 40}})
    assert beat.status_code == 200, beat.text
    assert (beat.json()["lease_id"], beat.json()["extend_s"], beat.json()["progress"]["percent"]) == (
        HEARTBEAT["lease_id"],
        30.0,
        40.0,
    )
    # The bounds are as they were.
    assert client.post("/lease", json={**LEASE, "max_items": 51}).status_code == 422
    assert client.post("/heartbeat", json={**HEARTBEAT, "extend_s": 4.5}).status_code == 422
