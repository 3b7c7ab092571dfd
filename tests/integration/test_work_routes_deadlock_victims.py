# intent_ref: platform.execution
"""A remote worker's request that Postgres ends as a deadlock's victim is run again, never answered 503 (ADR 0027):
a completion and a heartbeat took the attempt before the execution, the sweeper's end the reverse; a lease ending a
stale item took the execution before the attempt, a recorded timeout the reverse. Each request here waited first, so
it was the one the deadlock detector ended. Since ADR 0014's one order (2026-12-06) none of them meets a deadlock; the
requests still answer as they must."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, progress, sweeper
from shared.engine import machine_types as mt
from shared.engine import steps as store
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_expiry_lock_order import _until_done_or_blocked
from tests.integration.test_outcome_lock_order import _Hold, _leased, _race_held, _Threads
from tests.integration.test_verdict_handover import durable  # noqa: F401  # the fixture

# Every request here raises its events on a Durable client that delivers them all.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("durable")]
TENANT = "deadlock-victims"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision(TENANT).id


def _against_the_sweepers_end(
    pg: Any, pool: ConnectionPool[Any], tenant: uuid.UUID, key: AttemptKey, request: Any, monkeypatch: Any
) -> Any:
    """`request` sent while the sweeper's end holds the execution (paused after reading its steps); the end then
    abandons the attempt the request holds. Answers the response."""
    hold = _Hold(monkeypatch, "sweeper", (store, "list_steps"))
    # The request holds the attempt and waits for the execution.
    answers = _race_held(
        pg,
        hold,
        ("sweeper", lambda: sweeper.end_execution(tenant, key.execution_id, "stalled", pool=pool)),
        ("request", request),
    )
    assert not isinstance(answers["sweeper"], BaseException), answers
    return answers["request"]


def test_a_completion_meeting_the_sweepers_end_is_answered_409_not_503(
    pg: Any, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, lease = _leased(app_pool, tenant)
    url = f"/api/v1/executions/{key.execution_id}/steps/build/complete"
    body = {"task_token": lease.task_token, "output": {"built": True}}
    answer = _against_the_sweepers_end(pg, app_pool, tenant, key, lambda: api.client.post(url, json=body), monkeypatch)
    # Recorded again after the end committed: the attempt has ended, so the token is spent for nothing.
    assert answer.status_code == 409, answer.text
    with tenant_transaction(tenant, pool=app_pool) as conn:
        attempt = store.get_attempt(conn, key)
    assert attempt is not None and attempt.state == "abandoned"


def test_a_heartbeat_meeting_the_sweepers_end_is_not_answered_503(
    pg: Any, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, lease = _leased(app_pool, tenant)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, key.execution_id, "alice")  # the heartbeat ends the attempt (the cancel's way)
    url = f"/api/v1/work/{lease.item.id}/heartbeat"
    body = {"lease_id": str(lease.item.lease_id), "extend_s": 60}
    headers = api.headers(TENANT, ["Module.Worker"])
    answer = _against_the_sweepers_end(
        pg, app_pool, tenant, key, lambda: api.client.post(url, json=body, headers=headers), monkeypatch
    )
    # Beaten again: the attempt is ended (409), or the end had not committed yet and the beat saw the cancel.
    assert answer.status_code in (200, 409), answer.text
    assert answer.status_code == 409 or answer.json()["state"] == "cancelled"


def test_a_lease_ending_a_stale_item_that_meets_its_timeout_is_answered_200_not_503(
    pg: Any, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    action = f"dv-{uuid.uuid4().hex[:6]}"
    key = _queued(app_pool, tenant, action, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, key.execution_id, "alice")  # its cancel missed the item: the lease ends it
    timeout = mt.Outcome(step_id="build", phase="run", attempt=1, ok=False, error="timed out", state="timed_out")
    batch = mt.RecordOutcomes(execution_id=str(key.execution_id), tenant_id=str(tenant), outcomes=[timeout])
    # The orchestration's timeout holds the attempt (its result written) and is about to append its event.
    hold = _Hold(monkeypatch, "timeout", (store, "append_event"), before=True)
    body = {"actions": [action], "max_items": 1, "lease_s": 60, "worker": "w"}
    headers = api.headers(TENANT, ["Module.Worker"])
    # The lease takes the stale item's attempt before the execution, without waiting (it held the execution and
    # waited for the attempt, which the timeout held while it waited for the execution).
    threads = _Threads()
    threads.start("timeout", lambda: progress.record_outcomes(batch))
    assert hold.holding.wait(20) and hold.pid is not None
    lease = threads.start("lease", lambda: api.client.post("/api/v1/work/lease", json=body, headers=headers))
    _until_done_or_blocked(pg.admin_url, lease, hold.pid)
    hold.release.set()
    answers = threads.join()
    assert answers["timeout"] == [{"ok": False, "error": "timed out", "retryable": True, "state": "timed_out"}]
    assert answers["lease"].status_code == 200, answers["lease"].text
    assert answers["lease"].json()["items"] == []
