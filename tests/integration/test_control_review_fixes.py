# intent_ref: platform.execution
"""What people do to an execution, as a review found it wanting: a cancel's verdicts are raised until the task hub
takes them (ADR 0027, amended 2026-12-07), an execution is retried once, an approve after a cancel records nothing,
and a caller an approval does not name is refused whatever its state (ADR 0014, amended 2026-12-07)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.auth.principal import Requester
from shared.db import migrate, tenant_locks
from shared.db.session import tenant_transaction
from shared.engine import control
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.protocol import CANCEL_EVENT
from shared.engine.start import Started
from shared.engine.start_service import begin_deciding, fail_start
from shared.engine.steps import AttemptKey
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_approval_approvers import OBJECT_ID, _asked
from tests.integration.test_approval_races import _until_blocked
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_executions import _execution
from tests.integration.test_start_service import Decider, TaskHub, _provision
from tests.integration.test_verdict_handover import TRANSIENT, FlakyDurable
from tests.integration.test_work_verdict_hand_over import _raise_again, _raised

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("process_pools")]

TENANT = f"control-fixes-{uuid.uuid4().hex[:8]}"
EXECUTOR = ["Intent.Executor", "Intent.Deployer"]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811
    return api.provision(TENANT).id


@pytest.fixture
def durable(api: ApiHarness) -> Iterator[FlakyDurable]:  # noqa: F811
    client = FlakyDurable()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    yield client
    api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]


def _attempt(pool: ConnectionPool[Any], tenant_id: uuid.UUID, key: AttemptKey) -> store.Attempt:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        found = store.get_attempt(conn, key)
    assert found is not None
    return found


CANCELLED_VERDICT = {
    "ok": False,
    "error": "cancelled before a worker took it",
    "retryable": False,
    "state": "abandoned",
}


# ------------------------------------------------------------------------------------------ a cancel's verdicts
def test_a_cancels_verdict_whose_raise_failed_is_raised_again_by_the_sweeper(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cancel ended the queued item and raised its verdict once: that raise failed, the attempt stayed abandoned
    # with nothing marked, a repeated cancel found nothing left to end, and the run waited for the step's timeout.
    key = _queued(app_pool, tenant, f"queued-{uuid.uuid4().hex[:6]}", path=["running"])
    durable.failures = [None, TRANSIENT]  # the cancel's own event is taken, its verdict's raise fails
    headers = api.headers(TENANT, EXECUTOR)
    first = api.client.post(f"/api/v1/executions/{key.execution_id}/cancel", headers=headers)
    assert first.status_code == 202, first.text
    assert [name for _, name, _ in durable.delivered] == [CANCEL_EVENT]
    assert _attempt(app_pool, tenant, key).delivery == "raising"
    again = api.client.post(f"/api/v1/executions/{key.execution_id}/cancel", headers=headers)
    assert again.status_code == 202, again.text
    assert _raised(durable, key) == []  # nothing left for a repeat to end: the sweeper's to raise

    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    # Raised again, it says the cancel came first: it may reach the run before a cancel whose raise failed too,
    # and is then a step ended by the cancel, not a failure (ADR 0014, rules 7).
    assert _raised(hub, key) == [{**CANCELLED_VERDICT, "cancel_first": True}]
    assert _attempt(app_pool, tenant, key).delivery == "handed_over"


def test_a_cancels_verdicts_wait_for_the_sweeper_when_the_cancels_own_raise_failed(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Handed over at once although the cancel's own event was not, the abandoned step's verdict reached the run before
    # any cancel and read as the step's failure: the run ended failed under a cancel answered "send it again".
    key = _queued(app_pool, tenant, f"queued-{uuid.uuid4().hex[:6]}", path=["running"])
    durable.failures = [TRANSIENT]  # the cancel's own event is not taken
    answer = api.client.post(f"/api/v1/executions/{key.execution_id}/cancel", headers=api.headers(TENANT, EXECUTOR))
    assert answer.status_code == 503, answer.text
    assert durable.delivered == [] and _attempt(app_pool, tenant, key).delivery == "raising"
    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    assert _raised(hub, key) == [{**CANCELLED_VERDICT, "cancel_first": True}]


def test_a_cancels_verdict_taken_at_once_is_not_raised_again(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = _queued(app_pool, tenant, f"queued-{uuid.uuid4().hex[:6]}", path=["running"])
    answer = api.client.post(f"/api/v1/executions/{key.execution_id}/cancel", headers=api.headers(TENANT, EXECUTOR))
    assert answer.status_code == 202, answer.text
    assert _raised(durable, key) == [CANCELLED_VERDICT]
    assert _attempt(app_pool, tenant, key).delivery == "handed_over"
    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    assert _raised(hub, key) == []


def test_a_child_cancels_verdict_whose_raise_failed_is_raised_again_by_the_sweeper(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stopping parent's cancel of its child ends the child's queued work too, and raised its verdicts once.
    key = _queued(app_pool, tenant, f"child-{uuid.uuid4().hex[:6]}", path=["running"])
    client = FlakyDurable(None, TRANSIENT)
    told = asyncio.run(control.cancel_child(tenant, key.execution_id, uuid.uuid4(), client, pool=app_pool))
    assert told is True
    assert [name for _, name, _ in client.delivered] == [CANCEL_EVENT]
    assert _attempt(app_pool, tenant, key).delivery == "raising"

    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    # Raised again, it says the cancel came first: it may reach the run before a cancel whose raise failed too,
    # and is then a step ended by the cancel, not a failure (ADR 0014, rules 7).
    assert _raised(hub, key) == [{**CANCELLED_VERDICT, "cancel_first": True}]
    assert _attempt(app_pool, tenant, key).delivery == "handed_over"


def test_a_child_cancels_verdict_taken_at_once_is_not_raised_again(
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = _queued(app_pool, tenant, f"child-{uuid.uuid4().hex[:6]}", path=["running"])
    client = FlakyDurable()
    assert asyncio.run(control.cancel_child(tenant, key.execution_id, uuid.uuid4(), client, pool=app_pool)) is True
    assert [name for _, name, _ in client.delivered] == [CANCEL_EVENT, key.event_name]
    assert _attempt(app_pool, tenant, key).delivery == "handed_over"
    hub = FlakyDurable()
    _raise_again(monkeypatch, hub, app_pool, control_pool)
    assert _raised(hub, key) == []


# ------------------------------------------------------------------------------------------ one retry
@pytest.fixture
def hub(api: ApiHarness) -> Iterator[TaskHub]:  # noqa: F811
    task_hub = TaskHub()
    api.client.app.dependency_overrides[get_durable_client] = lambda: task_hub  # type: ignore[attr-defined]
    yield task_hub
    api.client.app.dependency_overrides.pop(get_durable_client, None)  # type: ignore[attr-defined]


def _failed(api: ApiHarness, name: str) -> tuple[uuid.UUID, uuid.UUID]:  # noqa: F811
    """A tenant `name` and a failed execution of its intent."""
    tenant, intent_id = _provision(api, name)
    started = api.client.post(f"/api/v1/intents/{intent_id}/execute", json={}, headers=api.headers(name, EXECUTOR))
    assert started.status_code == 202, started.text
    failed = uuid.UUID(started.json()["execution_id"])
    fail_start(tenant.id, failed, "for the test")
    return tenant.id, failed


def _retries(tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[uuid.UUID]:
    with tenant_transaction(tenant_id) as conn:
        rows = conn.execute("SELECT id FROM app.executions WHERE retry_of = %s", (execution_id,)).fetchall()
    return [row["id"] for row in rows]


def _already_retried(answer: Any, retry_id: str) -> None:
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert body["type"].endswith("/already-retried") and body["retry_id"] == retry_id, body


def test_a_second_retry_of_an_execution_is_409_naming_the_first(api: ApiHarness, hub: TaskHub) -> None:  # noqa: F811
    # Both keyless retries started, and both ran every step after the reused ones: each side effect twice.
    name = f"retry-once-{uuid.uuid4().hex[:8]}"
    tenant_id, failed = _failed(api, name)
    path, headers = f"/api/v1/executions/{failed}/retry", api.headers(name, EXECUTOR)
    first = api.client.post(path, json={}, headers=headers)
    assert (first.status_code, first.json()["created"]) == (202, True), first.text
    retry_id = first.json()["execution_id"]

    _already_retried(api.client.post(path, json={}, headers=headers), retry_id)
    _already_retried(api.client.post(path, json={}, headers={**headers, "Idempotency-Key": "another"}), retry_id)
    assert _retries(tenant_id, failed) == [uuid.UUID(retry_id)]
    assert hub.calls == [str(failed), retry_id]  # the execution, then its one retry: nothing more started
    # The history goes on by retrying the retry.
    fail_start(tenant_id, uuid.UUID(retry_id), "for the test")
    onwards = api.client.post(f"/api/v1/executions/{retry_id}/retry", json={}, headers=headers)
    assert onwards.status_code == 202, onwards.text


def test_a_retry_repeated_with_its_key_is_answered_as_first(api: ApiHarness, hub: TaskHub) -> None:  # noqa: F811
    name = f"retry-key-{uuid.uuid4().hex[:8]}"
    tenant_id, failed = _failed(api, name)
    path = f"/api/v1/executions/{failed}/retry"
    headers = {**api.headers(name, EXECUTOR), "Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    first = api.client.post(path, json={}, headers=headers)
    assert (first.status_code, first.json()["created"]) == (202, True), first.text
    again = api.client.post(path, json={}, headers=headers)
    assert (again.status_code, again.json()["execution_id"], again.json()["created"]) == (
        202,
        first.json()["execution_id"],
        False,
    ), again.text
    assert _retries(tenant_id, failed) == [uuid.UUID(first.json()["execution_id"])]


def test_two_retries_at_once_start_one(api: ApiHarness, hub: TaskHub, pg: Any) -> None:  # noqa: F811
    # Both let go together, once the tenant's start lock is free: the second reads the first's execution.
    name = f"retry-race-{uuid.uuid4().hex[:8]}"
    tenant_id, failed = _failed(api, name)
    with tenant_transaction(tenant_id) as conn:
        tenant = get_tenant(conn, tenant_id)
        execution = repo.get_execution(conn, failed)
    assert tenant is not None
    requester = Requester("t/o", frozenset(), app_only=False)
    answers: list[Started | control.AlreadyRetriedError] = []
    failures: list[BaseException] = []

    def retry() -> None:
        try:
            answers.append(
                begin_deciding(
                    tenant,
                    lambda conn, authorize: control.retry_request(
                        conn, execution, version=None, requester=requester, idempotency_key=None, authorize=authorize
                    ),
                    decide=Decider(True),
                )
            )
        except control.AlreadyRetriedError as exc:
            answers.append(exc)
        except BaseException as exc:  # reported below: an exception in a thread would otherwise pass unseen
            failures.append(exc)

    with tenant_transaction(tenant_id) as blocker:
        tenant_locks.hold(blocker, "executions")
        threads = [threading.Thread(target=retry) for _ in range(2)]
        for thread in threads:
            thread.start()
        _until_blocked(pg.admin_url, blocker.info.backend_pid, 2)
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    started = [answer for answer in answers if isinstance(answer, Started)]
    refused = [answer for answer in answers if isinstance(answer, control.AlreadyRetriedError)]
    assert len(started) == 1 and len(refused) == 1, answers
    assert refused[0].retry_id == started[0].execution.id
    assert _retries(tenant_id, failed) == [started[0].execution.id]


def test_the_index_keeps_one_retry_per_execution(app_pool: ConnectionPool[Any], tenant: uuid.UUID) -> None:
    # The belt under the route's check (migration 0065): a second row with the same retry_of is refused.
    retried = _execution(app_pool, tenant, path=["running", "failed"])

    def insert() -> None:
        with tenant_transaction(tenant, pool=app_pool) as conn:
            repo.create_execution(
                conn,
                execution_id=uuid.uuid4(),
                intent_id=retried.intent_id,
                intent_version=1,
                target="staging",
                input={},
                requester=Requester("tester", frozenset(), app_only=False),
                retry_of=retried.id,
            )

    insert()
    with pytest.raises(psycopg.errors.UniqueViolation):
        insert()


def test_the_migration_applies_over_executions_retried_twice_before_it(
    pg: Any, app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    # Stored data may hold a second retry (nothing refused one before): the migration must still apply, building
    # the index non-unique, with nothing deleted. Run again over such rows in a transaction rolled back.
    retried = _execution(app_pool, tenant, path=["running", "failed"])
    migration = Path(migrate.APP_MIGRATIONS, "0065_one_retry_per_execution.sql").read_text(encoding="utf-8")
    with psycopg.connect(pg.admin_url, dbname="quantum") as admin:
        admin.execute("DROP INDEX app.executions_one_retry")
        for _ in range(2):
            admin.execute(
                "INSERT INTO app.executions (tenant_id, id, intent_id, intent_version, target, input, requested_by,"
                " retry_of) SELECT tenant_id, gen_random_uuid(), intent_id, intent_version, target, input,"
                " requested_by, id FROM app.executions WHERE id = %s",
                (retried.id,),
            )
        admin.execute(migration.encode())
        row = admin.execute(
            "SELECT i.indisunique, pg_catalog.pg_get_expr(i.indpred, i.indrelid) FROM pg_catalog.pg_index i"
            " WHERE i.indexrelid = 'app.executions_one_retry'::regclass"
        ).fetchone()
        count = admin.execute("SELECT count(*) FROM app.executions WHERE retry_of = %s", (retried.id,)).fetchone()
        admin.rollback()
    assert row == (False, "(retry_of IS NOT NULL)")
    assert count == (2,)


# ------------------------------------------------------------------------------------------ approvals
def _decide(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID, decision: str, object_id: str
) -> control.ApprovalOutcome:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return control.decide_approval(
            conn,
            execution_id,
            "gate",
            decision,  # type: ignore[arg-type]  # "approve" or "reject"
            principal_id=f"tid/{object_id}",
            object_id=object_id,
            comment="",
        )


def _events(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[str]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return [event.type for event in repo.events_after(conn, execution_id, 0, 1000)]


def test_an_approve_after_a_cancel_is_409_and_records_nothing(
    api: ApiHarness,  # noqa: F811
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
) -> None:
    # It answered 200 `applied: true` and recorded approval_granted and step_completed in a run ending cancelled.
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    assert api.client.post(
        f"/api/v1/executions/{execution_id}/cancel", headers=api.headers(TENANT, EXECUTOR)
    ).status_code in (202, 503)
    before = _events(app_pool, tenant, execution_id)
    answer = api.client.post(
        f"/api/v1/executions/{execution_id}/approvals/gate",
        json={"decision": "approve"},
        headers=api.headers(TENANT, ["Intent.Approver"], oid=OBJECT_ID),
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["type"].endswith("/not-waiting")
    assert _events(app_pool, tenant, execution_id) == before
    assert _attempt(app_pool, tenant, AttemptKey(execution_id, "gate", "run", 1)).state == "dispatched"
    # A rejection after the cancel is still recorded: a failure during the cancel, which ends the run cancelled.
    rejected = _decide(app_pool, tenant, execution_id, "reject", OBJECT_ID)
    assert rejected.applied is True
    assert "approval_rejected" in _events(app_pool, tenant, execution_id)


def test_an_approve_granted_before_a_cancel_is_still_answered_when_repeated(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    # Its first raise may have failed (503): the repeat is what delivers it, cancel or not.
    execution_id = _asked(app_pool, tenant, {"message": "ship?"})
    assert _decide(app_pool, tenant, execution_id, "approve", OBJECT_ID).applied is True
    with tenant_transaction(tenant, pool=app_pool) as conn:
        control.request_cancel(conn, execution_id, "alice")
    assert _decide(app_pool, tenant, execution_id, "approve", OBJECT_ID).applied is False


@pytest.mark.parametrize("decision", ["approve", "reject"])
@pytest.mark.parametrize("first", ["approve", "reject"])
def test_a_caller_the_approval_does_not_name_is_refused_once_it_is_decided(
    first: str, decision: str, app_pool: ConnectionPool[Any], tenant: uuid.UUID
) -> None:
    # The repeat's answer came before the approvers' check: 200 `applied: false` (or a 409 telling how it was
    # decided) to an Approver the approval does not name.
    execution_id = _asked(app_pool, tenant, {"message": "ship?", "approvers": [OBJECT_ID]})
    assert _decide(app_pool, tenant, execution_id, first, OBJECT_ID).applied is True
    with pytest.raises(control.NotAnApproverError):
        _decide(app_pool, tenant, execution_id, decision, "someone-else")
