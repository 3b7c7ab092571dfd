# intent_ref: platform.execution
"""A result whose task token was never used, sent after its attempt ended without one, is 409 `lease-expired` (ADR
0027) however that attempt ended: by its lease's expiry (which any lease poll of the tenant records), by a cancel
told on a heartbeat, or by its execution's end; `task-token-used` stays the answer to a token that was used."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.db.session import tenant_transaction
from shared.engine import control, sweeper, work_queue
from shared.engine import steps as store
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_verdict_handover import FlakyDurable
from tests.security.test_task_token_no_trace import RemoteAttempt, remote_attempt

pytestmark = pytest.mark.integration
TENANT = "late-results"
RESULTS: dict[str, dict[str, Any]] = {
    "complete": {"output": {"image": "myapp:1.2.3"}},
    "fail": {"error": "registry returned 503", "retryable": True},
}


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[FlakyDurable]:
    client = FlakyDurable()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    yield client
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision(TENANT).id


def _report(api: ApiHarness, attempt: RemoteAttempt, route: str) -> Any:
    url = attempt.url().replace("/complete", f"/{route}")
    return api.client.post(url, json={"task_token": attempt.token, **RESULTS[route]})


def _attempt(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> store.Attempt:
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        found = store.get_attempt(conn, attempt.key)
    assert found is not None
    return found


def _lease_runs_out(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> None:
    """The lease's end moved into the past, as the time a worker took without heartbeating would."""
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        conn.execute(
            "UPDATE app.work_items SET lease_expires_at = clock_timestamp() - interval '1 second'"
            " WHERE execution_id = %s",
            (attempt.key.execution_id,),
        )


def _another_poll(api: ApiHarness) -> None:
    """Any lease poll of the tenant, for any action: it ends the tenant's expired leases first."""
    body = {"actions": ["nothing-queued"], "wait_s": 0, "worker": "w-2"}
    polled = api.client.post("/api/v1/work/lease", json=body, headers=api.headers(TENANT, ["Module.Worker"]))
    assert polled.status_code == 200, polled.text


def _assert_lease_expired(answer: Any, *words: str) -> None:
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["type"].endswith("/lease-expired"), problem
    assert "the result was not recorded" in problem["detail"], problem
    for word in words:
        assert word in problem["detail"], problem


@pytest.mark.parametrize("route", list(RESULTS))
def test_a_late_result_before_anything_ended_the_attempt_is_lease_expired(
    route: str, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    _lease_runs_out(app_pool, attempt)
    _assert_lease_expired(_report(api, attempt, route))
    assert _attempt(app_pool, attempt).state == "dispatched"


@pytest.mark.parametrize("route", list(RESULTS))
def test_a_late_result_after_a_lease_poll_ended_the_attempt_is_lease_expired_not_token_used(
    route: str, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    _lease_runs_out(app_pool, attempt)
    _another_poll(api)
    ended = _attempt(app_pool, attempt)
    assert (ended.state, ended.error, ended.token_used_at) == ("timed_out", work_queue.LEASE_EXPIRED_ERROR, None)
    delivered = len(durable.delivered)  # the poll raised the timeout's verdict

    answer = _report(api, attempt, route)
    _assert_lease_expired(answer, "timed_out")  # was 409 task-token-used: "its result is recorded already"
    assert _attempt(app_pool, attempt) == ended  # nothing recorded, the token still unused
    assert len(durable.delivered) == delivered


@pytest.mark.parametrize("route", list(RESULTS))
def test_a_result_after_a_cancel_ended_the_attempt_on_its_heartbeat_is_lease_expired(
    route: str, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, attempt.key.execution_id, "alice")
        (item,), _ = work_queue.list_items(conn, execution_id=attempt.key.execution_id)
    assert item.lease_id is not None
    beat = api.client.post(
        f"/api/v1/work/{item.id}/heartbeat",
        json={"lease_id": str(item.lease_id), "extend_s": 60},
        headers=api.headers(TENANT, ["Module.Worker"]),
    )
    assert beat.status_code == 200 and beat.json()["state"] == "cancelled", beat.text
    ended = _attempt(app_pool, attempt)
    assert (ended.state, ended.token_used_at) == ("abandoned", None)

    answer = _report(api, attempt, route)
    _assert_lease_expired(answer, "abandoned", work_queue.CANCELLED_LEASED)
    assert _attempt(app_pool, attempt) == ended


def test_a_result_after_its_execution_was_ended_is_lease_expired(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    assert sweeper.end_execution(tenant, attempt.key.execution_id, "orchestration gone", pool=app_pool) is not None
    ended = _attempt(app_pool, attempt)
    assert (ended.state, ended.token_used_at) == ("abandoned", None)

    answer = _report(api, attempt, "complete")
    _assert_lease_expired(answer, "abandoned", "orchestration gone")
    assert _attempt(app_pool, attempt) == ended


def test_another_result_with_a_used_token_after_the_lease_ran_out_is_still_task_token_used(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    assert _report(api, attempt, "complete").status_code == 200
    _lease_runs_out(app_pool, attempt)
    _another_poll(api)
    refused = _report(api, attempt, "fail")
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/task-token-used")
    assert _attempt(app_pool, attempt).state == "succeeded"


def test_a_heartbeat_after_a_lease_poll_ended_the_attempt_does_not_say_a_result_was_recorded(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        (item,), _ = work_queue.list_items(conn, execution_id=attempt.key.execution_id)
    _lease_runs_out(app_pool, attempt)
    _another_poll(api)
    beat = api.client.post(
        f"/api/v1/work/{item.id}/heartbeat",
        json={"lease_id": str(item.lease_id), "extend_s": 60},
        headers=api.headers(TENANT, ["Module.Worker"]),
    )
    assert beat.status_code == 409, beat.text
    detail = beat.json()["detail"]
    assert "timed_out" in detail and "no result was recorded" in detail, detail
    assert "recorded already" not in detail
