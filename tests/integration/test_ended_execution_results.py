# intent_ref: platform.execution
"""An open remote attempt of an execution that has ended takes no result and no heartbeat: 409 `lease-expired`, as
the built-in worker's claim of one is refused (ADR 0027)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import remote, work_queue
from shared.engine import steps as store
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_refused_completion_blobs import _blobs
from tests.security.test_task_token_no_trace import RecordingClient, RemoteAttempt, big_output, remote_attempt

pytestmark = pytest.mark.integration
TENANT = "ended-results"


@pytest.fixture
def client(api: ApiHarness) -> Iterator[RecordingClient]:  # noqa: F811  # the fixture
    recording = RecordingClient()
    api.client.app.dependency_overrides[get_durable_client] = lambda: recording  # type: ignore[attr-defined]
    yield recording
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811  # the fixture
    return api.provision(TENANT).id


def _end(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> None:
    """The execution moved to an end with its attempt left open (no path of the engine's is needed for it)."""
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        repo.transition(conn, attempt.key.execution_id, "failed")


def _attempt(pool: ConnectionPool[Any], attempt: RemoteAttempt) -> store.Attempt:
    with tenant_transaction(attempt.tenant_id, pool=pool) as conn:
        found = store.get_attempt(conn, attempt.key)
    assert found is not None
    return found


def _assert_ended(answer: Any) -> None:
    assert answer.status_code == 409, answer.text
    assert answer.json()["type"].endswith("/lease-expired") and answer.json()["detail"] == remote.EXECUTION_ENDED


def test_a_result_and_a_heartbeat_for_an_ended_execution_are_lease_expired(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    client: RecordingClient,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        (item,), _ = work_queue.list_items(conn, execution_id=attempt.key.execution_id)
    _end(app_pool, attempt)
    before = _attempt(app_pool, attempt)
    answer = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": big_output("late")})
    _assert_ended(answer)
    beat = api.client.post(
        f"/api/v1/work/{item.id}/heartbeat",
        json={"lease_id": str(item.lease_id), "extend_s": 60},
        headers=api.headers(TENANT, ["Module.Worker"]),
    )
    _assert_ended(beat)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        (after,), _ = work_queue.list_items(conn, execution_id=attempt.key.execution_id)
    assert after.lease_expires_at == item.lease_expires_at  # not extended
    assert _attempt(app_pool, attempt) == before and before.state == "dispatched" and before.token_used_at is None
    assert _blobs(attempt) == [] and client.raised == []


def test_a_result_whose_execution_ended_during_its_upload_is_lease_expired(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    client: RecordingClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    stored = remote.claim_check

    def upload_then_end(*args: Any, **kwargs: Any) -> Any:
        reference = stored(*args, **kwargs)
        _end(app_pool, attempt)
        return reference

    monkeypatch.setattr(remote, "claim_check", upload_then_end)
    answer = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": big_output("late")})
    _assert_ended(answer)
    assert _attempt(app_pool, attempt).token_used_at is None
    assert _blobs(attempt) == [] and client.raised == []


def test_a_copy_of_a_recorded_result_after_the_run_ended_is_answered_as_its_repeat(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    client: RecordingClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker's retry copy passes the first checks, its first try records (200) and the run ends before the copy
    # spends: the result was recorded, so the copy is its repeat, not "nothing was recorded".
    attempt = remote_attempt(app_pool, tenant)
    output = big_output("same")
    stored = remote.claim_check

    def upload_then_first_records(*args: Any, **kwargs: Any) -> Any:
        reference = stored(*args, **kwargs)
        monkeypatch.setattr(remote, "claim_check", stored)
        first = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": output})
        assert first.status_code == 200, first.text
        _end(app_pool, attempt)
        return reference

    monkeypatch.setattr(remote, "claim_check", upload_then_first_records)
    copy = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": output})
    assert copy.status_code == 200, copy.text


def test_an_end_racing_a_result_waits_for_it_so_the_terminal_event_stays_last(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    client: RecordingClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    real_finish, enders = store.finish_attempt, []

    def end_meanwhile(*args: Any, **kwargs: Any) -> Any:
        ender = threading.Thread(target=_end, args=(app_pool, attempt))
        ender.start()
        enders.append(ender)
        time.sleep(0.5)  # the end commits now unless the spend holds the execution
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(store, "finish_attempt", end_meanwhile)
    answer = api.client.post(attempt.url(), json={"task_token": attempt.token, "output": big_output("late")})
    for ender in enders:
        ender.join()
    assert answer.status_code == 200, answer.text
    with tenant_transaction(tenant, pool=app_pool) as conn:
        rows = conn.execute(
            "SELECT type FROM app.execution_events WHERE execution_id = %s ORDER BY seq", (attempt.key.execution_id,)
        ).fetchall()
    types = [row["type"] for row in rows]
    assert types[-1] == "execution_failed" and "step_completed" in types, types
