# intent_ref: platform.execution
"""A repeated remote result, approval decision or cancel raises its event again only while the run may not have it
(ADR 0027, amended 2026-12-07): a first hand-over that was lost is still delivered by a repeat, and repeats of one
the task hub accepted answer the same and raise nothing, so they cannot grow the orchestration's history."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import machine_types as mt
from shared.engine import progress, remote
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT
from shared.engine.steps import AttemptKey
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_approval_approvers import OBJECT_ID, _asked
from tests.integration.test_verdict_handover import (  # noqa: F401  # `durable`: the fixture
    GONE,
    TRANSIENT,
    FlakyDurable,
    big_output,
    durable,
    report,
)
from tests.security.test_task_token_no_trace import remote_attempt

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

TENANT = f"repeats-{uuid.uuid4().hex[:8]}"
REPEATS = 5
CANCELLERS = ["Intent.Reader", "Intent.Executor", "Intent.Deployer"]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision(TENANT, quotas={"requests_per_minute": 100000, "burst": 10000}).id


def _attempt(pool: ConnectionPool[Any], tenant_id: uuid.UUID, key: AttemptKey) -> store.Attempt:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        found = store.get_attempt(conn, key)
    assert found is not None
    return found


# ------------------------------------------------------------------------------------------ remote results
@pytest.mark.parametrize(
    "body",
    [{"output": {"image": "myapp:1.2.3"}}, {"output": "big"}, {"error": "registry returned 503", "retryable": True}],
    ids=["completed", "completed-big", "failed"],
)
def test_repeats_of_a_result_handed_over_answer_200_and_raise_nothing(
    body: dict[str, Any], api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # Each repeat raised the verdict again, and the orchestration's history kept every copy (61 KB each) while it ran.
    body = {"output": big_output("worker")} if body.get("output") == "big" else body
    attempt = remote_attempt(app_pool, tenant)
    first = report(api, attempt, body)
    assert first.status_code == 200, first.text
    assert [name for _, name, _ in durable.delivered] == ["run:build:1"]
    for _ in range(REPEATS):
        again = report(api, attempt, body)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
    assert [name for _, name, _ in durable.delivered] == ["run:build:1"]
    assert _attempt(app_pool, tenant, attempt.key).delivery == "handed_over"
    # Another result for the spent token is still refused, handed over or not.
    other: dict[str, Any] = {"output": {"image": "other"}} if "error" in body else {"error": "x", "retryable": False}
    assert report(api, attempt, other).status_code == 409


def test_a_result_handed_over_is_not_taken_back_by_a_re_run_dispatch(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # A dispatch run again after it recorded the run's success takes back what it answered itself (`take_results`,
    # with every module start's key); the hand-over's mark was the dispatch's own value, so it took this too.
    attempt = remote_attempt(app_pool, tenant)
    assert report(api, attempt, {"output": {"image": "x"}}).status_code == 200
    with tenant_transaction(tenant, pool=app_pool) as conn:
        assert store.take_results(conn, [attempt.key], final=True) == []
    assert _attempt(app_pool, tenant, attempt.key).delivery == "handed_over"


def test_a_result_whose_raise_failed_is_raised_by_its_next_repeat_only(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    durable.failures = [TRANSIENT, TRANSIENT]
    body = {"output": {"image": "x"}}
    assert report(api, attempt, body).status_code == 503
    assert report(api, attempt, body).status_code == 503  # still not handed over: still raised
    assert _attempt(app_pool, tenant, attempt.key).delivery is None
    assert report(api, attempt, body).status_code == 200
    verdict = _attempt(app_pool, tenant, attempt.key).verdict()
    assert durable.delivered == [(str(attempt.key.execution_id), "run:build:1", verdict)]
    for _ in range(REPEATS):
        assert report(api, attempt, body).status_code == 200
    assert len(durable.delivered) == 1


def test_a_result_recorded_by_a_host_that_died_before_raising_is_raised_once(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    recorded = remote.record(
        attempt.token, attempt.key.execution_id, "build", "run", remote.RemoteResult(ok=True, output={"image": "x"})
    )
    key, verdict = recorded.key, recorded.verdict
    for _ in range(REPEATS):
        assert report(api, attempt, {"output": {"image": "x"}}).status_code == 200
    assert durable.delivered == [(str(key.execution_id), key.event_name, verdict)]


# ------------------------------------------------------------------------------------------ approval decisions
def _approve(api: ApiHarness, execution_id: uuid.UUID, decision: str = "approve") -> Any:
    headers = api.headers(TENANT, ["Intent.Approver"], oid=OBJECT_ID)
    return api.client.post(
        f"/api/v1/executions/{execution_id}/approvals/gate", json={"decision": decision}, headers=headers
    )


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_repeats_of_a_decision_handed_over_raise_nothing(
    decision: str, api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    first = _approve(api, execution_id, decision)
    assert first.status_code == 200, first.text
    assert first.json()["applied"] is True
    assert [name for _, name, _ in durable.delivered] == ["run:gate:1"]
    for _ in range(REPEATS):
        again = _approve(api, execution_id, decision)
        assert again.status_code == 200, again.text
        assert again.json()["applied"] is False
    assert [name for _, name, _ in durable.delivered] == ["run:gate:1"]


def test_a_decision_whose_raise_failed_is_raised_by_its_repeat_once(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    durable.failures = [TRANSIENT]
    # Recorded, but not told: 503 with Retry-After, so that the client sends it again (a 200 told it the decision
    # was on its way, and nothing raised it again).
    first = _approve(api, execution_id)
    assert first.status_code == 503 and first.headers["retry-after"], first.text
    assert first.json()["type"].endswith("/orchestration-unavailable")
    assert durable.delivered == []
    again = _approve(api, execution_id)
    assert again.status_code == 200 and again.json()["applied"] is False
    verdict = _attempt(app_pool, tenant, AttemptKey(execution_id, "gate", "run", 1)).verdict()
    assert durable.delivered == [(str(execution_id), "run:gate:1", verdict)]
    for _ in range(REPEATS):
        assert _approve(api, execution_id).status_code == 200
    assert len(durable.delivered) == 1


# ------------------------------------------------------------------------------------------ cancels
def _cancel(api: ApiHarness, execution_id: uuid.UUID) -> Any:
    return api.client.post(f"/api/v1/executions/{execution_id}/cancel", headers=api.headers(TENANT, CANCELLERS))


def _cancels(durable: FlakyDurable) -> int:
    return sum(1 for _, name, _ in durable.delivered if name == CANCEL_EVENT)


def _run_takes_the_cancel(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> None:
    """What the run records once it has taken the cancel: its approval's wait ended (the dispatch after the event)."""
    note = mt.StepNote(kind=mt.NoteKind.ABANDONED, step_id="gate", attempt=1, error="cancelled")
    progress.dispatch_steps(mt.DispatchSteps(execution_id=str(execution_id), tenant_id=str(tenant_id), notes=[note]))


def test_repeats_of_a_cancel_the_run_has_taken_raise_nothing(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    first = _cancel(api, execution_id)
    assert first.status_code == 202, first.text
    assert _cancels(durable) == 1
    _run_takes_the_cancel(tenant, execution_id)
    assert _attempt(app_pool, tenant, AttemptKey(execution_id, "gate", "run", 1)).state == "abandoned"
    for _ in range(REPEATS):
        again = _cancel(api, execution_id)
        assert again.status_code == 202, again.text
        assert again.json()["cancel_requested"] is True
    assert _cancels(durable) == 1


def test_a_cancel_whose_raise_failed_is_raised_by_a_repeat_until_the_run_takes_it(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # The approval waits for a person: only the cancel's event ends it, so a lost first raise must be recoverable.
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    durable.failures = [TRANSIENT]
    _assert_send_again(_cancel(api, execution_id))
    assert _cancels(durable) == 0
    assert _cancel(api, execution_id).status_code == 202
    assert durable.delivered == [(str(execution_id), CANCEL_EVENT, {"by": durable.delivered[0][2]["by"]})]
    _run_takes_the_cancel(tenant, execution_id)
    for _ in range(REPEATS):
        assert _cancel(api, execution_id).status_code == 202
    assert _cancels(durable) == 1


def _assert_send_again(answer: Any) -> None:
    """A cancel recorded whose raise failed: the client is told to send it again (the cancel itself was taken)."""
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"].endswith("orchestration-unavailable")
    assert int(answer.headers["Retry-After"]) >= 1


def _cancel_raised_at(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> Any:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute("SELECT cancel_raised_at FROM app.executions WHERE id = %s", (execution_id,)).fetchone()
    assert row is not None
    return row["cancel_raised_at"]


def test_a_cancel_whose_raise_failed_while_only_module_work_is_out_is_raised_by_its_repeat_once(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # The run's last step is out to a remote worker, nothing else: a repeat raised nothing (the run was meant to read
    # the recorded cancel from its next dispatch), but a last step's result ends the run without a dispatch, and a
    # first-generation run learns of a cancel only from its event, so the cancel accepted first was lost.
    attempt = remote_attempt(app_pool, tenant, steps=("build",))
    execution_id = attempt.key.execution_id
    durable.failures = [TRANSIENT]
    _assert_send_again(_cancel(api, execution_id))
    assert _cancels(durable) == 0 and _cancel_raised_at(app_pool, tenant, execution_id) is None
    again = _cancel(api, execution_id)
    assert again.status_code == 202, again.text
    assert again.json() == {"execution_id": str(execution_id), "status": "running", "cancel_requested": True}
    assert _cancels(durable) == 1
    assert _cancel_raised_at(app_pool, tenant, execution_id) is not None
    for _ in range(REPEATS):
        assert _cancel(api, execution_id).status_code == 202
    assert _cancels(durable) == 1
    # The worker's result still raises its verdict: the run has both events to take, the cancel first.
    assert report(api, attempt, {"output": {"image": "x"}}).status_code == 200
    assert [name for _, name, _ in durable.delivered] == [CANCEL_EVENT, "run:build:1"]


def test_repeats_of_a_cancel_handed_over_while_only_module_work_is_out_raise_nothing(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    for _ in range(REPEATS):
        assert _cancel(api, attempt.key.execution_id).status_code == 202
    assert _cancels(durable) == 1


def test_a_cancel_whose_orchestration_is_gone_is_not_raised_again(
    api: ApiHarness, app_pool: ConnectionPool[Any], tenant: uuid.UUID, durable: FlakyDurable
) -> None:
    # Nobody is left to tell (the task hub says the instance does not exist): a retry cannot deliver it, so the
    # cancel is answered 202 and counted as handed over, as a remote result to a gone orchestration is.
    attempt = remote_attempt(app_pool, tenant)
    durable.failures = [GONE]
    assert _cancel(api, attempt.key.execution_id).status_code == 202
    assert _cancel_raised_at(app_pool, tenant, attempt.key.execution_id) is not None
    for _ in range(REPEATS):
        assert _cancel(api, attempt.key.execution_id).status_code == 202
    assert _cancels(durable) == 0


# ------------------------------------------------------------------------------------------ retry body
@pytest.mark.parametrize("version", ["1", True, 1.0], ids=["string", "boolean", "float"])
def test_a_retry_version_that_is_not_an_integer_is_422(
    api: ApiHarness, tenant: uuid.UUID, durable: FlakyDurable, version: Any
) -> None:
    # "1" and true were read as version 1.
    answer = api.client.post(
        f"/api/v1/executions/{uuid.uuid4()}/retry",
        json={"version": version},
        headers=api.headers(TENANT, ["Intent.Reader", "Intent.Executor"]),
    )
    assert answer.status_code == 422, answer.text
    assert [error["pointer"] for error in answer.json()["errors"]] == ["/version"]
    assert durable.delivered == []
