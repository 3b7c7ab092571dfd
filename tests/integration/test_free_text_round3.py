# intent_ref: platform.hardening
"""Free text, third round, against the real database: a worker's heartbeat whose progress message holds a line break
or a control character keeps its lease and records the message neutralised (a heartbeat refused for another reason
changes nothing, its lease neither extended nor ended); an approval's message resolved at run time reaches the
approvers neutralised, in a dispatch and in a first-generation run's record, and the approval still waits."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import control, progress, work_queue
from shared.engine import executions as repo
from shared.engine import steps as store
from shared.engine.steps import AttemptKey, StepSeed
from shared.free_text import unshown_problem
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_approval_approvers import OBJECT_ID, _asked
from tests.integration.test_executions import _execution
from tests.integration.test_verdict_handover import FlakyDurable, durable  # noqa: F401  # `durable`: the fixture

pytestmark = pytest.mark.integration
TENANT = "free-text-3"
WORKER = ["Module.Worker"]


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision(TENANT).id


def _leased(api: ApiHarness, pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> dict[str, Any]:
    """A remote attempt queued and leased through the lease route, as a worker takes it: the leased item."""
    action = f"ft3-{uuid.uuid4().hex[:6]}"
    execution = _execution(pool, tenant_id, path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", action, 1)])
        store.begin_attempt(conn, key, action=action, remote=True)
        work_queue.enqueue(conn, key, action=action, params={}, timeout_s=3600)
    body = {"actions": [action], "lease_s": 60, "worker": "builder-1"}
    leased = api.client.post("/api/v1/work/lease", json=body, headers=api.headers(TENANT, WORKER))
    assert leased.status_code == 200, leased.text
    (item,) = leased.json()["items"]
    return dict(item)


def _row(pool: ConnectionPool[Any], tenant_id: uuid.UUID, item_id: str) -> dict[str, Any]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        row = conn.execute(
            "SELECT lease_id, lease_expires_at, heartbeat_at, progress FROM app.work_items WHERE id = %s", (item_id,)
        ).fetchone()
    assert row is not None
    return dict(row)


def _beat(api: ApiHarness, item: dict[str, Any], progress_: dict[str, Any], extend_s: float = 600) -> Any:
    body = {"lease_id": item["lease_id"], "extend_s": extend_s, "progress": progress_}
    return api.client.post(item["heartbeat_url"], json=body, headers=api.headers(TENANT, WORKER))


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("layer 3 of 7\nlayer 4 of 7", "layer 3 of 7\nlayer 4 of 7"),
        ("pushing\r\n\x1b[32mdone\x1b[0m", "pushing\n\ufffd[32mdone\ufffd[0m"),
        ("42%\r", "42%\ufffd"),
        ("tag \u202e3.2.1", "tag \ufffd3.2.1"),
    ],
)
def test_a_heartbeat_keeps_its_lease_whatever_its_progress_message_holds(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
    message: str,
    shown: str,
) -> None:
    item = _leased(api, app_pool, tenant)
    before = _row(app_pool, tenant, item["id"])

    beat = _beat(api, item, {"percent": 40, "message": message})

    assert beat.status_code == 200, beat.text
    assert beat.json()["state"] == "leased"
    after = _row(app_pool, tenant, item["id"])
    assert after["lease_expires_at"] > before["lease_expires_at"]  # extended: 600 s asked, 60 s held before
    assert after["progress"] == {"percent": 40, "message": shown}
    assert unshown_problem(after["progress"]["message"], lines=True) is None
    listed = api.client.get("/api/v1/work", headers=api.headers(TENANT, WORKER)).json()["items"]
    assert [entry["progress"] for entry in listed if entry["id"] == item["id"]] == [{"percent": 40, "message": shown}]
    assert durable.delivered == []


@pytest.mark.parametrize(
    ("progress_", "pointer"),
    [
        ({"message": "x" * 501}, "/progress/message"),
        ({"message": ""}, "/progress/message"),
        ({"percent": 101}, "/progress/percent"),
    ],
)
def test_a_refused_heartbeat_changes_nothing_and_the_lease_holds(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    durable: FlakyDurable,
    progress_: dict[str, Any],
    pointer: str,
) -> None:
    item = _leased(api, app_pool, tenant)
    assert _beat(api, item, {"percent": 10, "message": "started"}).status_code == 200
    before = _row(app_pool, tenant, item["id"])

    refused = _beat(api, item, progress_)

    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert [error["pointer"] for error in refused.json()["errors"]] == [pointer]
    assert _row(app_pool, tenant, item["id"]) == before  # neither extended nor ended, its progress kept
    again = _beat(api, item, {"percent": 20, "message": "still going"})
    assert again.status_code == 200 and again.json()["state"] == "leased", again.text


# ---- an approval's message resolved at run time ----------------------------------------------------------------------

RESOLVED = "Ship \u202eexe.txt\u202c to production?\r\n\x1b[2JSee CHG-1042.\tThanks"
SHOWN = "Ship \ufffdexe.txt\ufffd to production?\n\ufffd[2JSee CHG-1042.\tThanks"


def _requested(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[dict[str, Any]]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        events = repo.events_after(conn, execution_id, 0, 1000)
    return [event.data for event in events if event.type == "approval_requested"]


def _approve(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> control.ApprovalOutcome:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        return control.decide_approval(
            conn, execution_id, "gate", "approve", principal_id=f"tid/{OBJECT_ID}", object_id=OBJECT_ID, comment=""
        )


def test_a_resolved_approval_message_reaches_the_approvers_neutralised_and_the_approval_waits(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
) -> None:
    execution_id = _asked(app_pool, tenant, {"message": RESOLVED, "approvers": [OBJECT_ID]})

    assert _requested(app_pool, tenant, execution_id) == [{"attempt": 1, "message": SHOWN, "approvers": [OBJECT_ID]}]
    assert _approve(app_pool, tenant, execution_id).applied  # asked, not failed: it is decided as any other


def test_a_first_generation_runs_approval_message_is_neutralised_too(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
) -> None:
    execution = _execution(app_pool, tenant, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("gate", "approval", 1)])
    record = {"execution_id": str(execution.id), "tenant_id": str(tenant), "step_id": "gate", "attempt": 1}
    progress.record_progress({**record, "kind": "approval_requested", "params": {"message": RESOLVED}})

    assert _requested(app_pool, tenant, execution.id) == [{"attempt": 1, "message": SHOWN, "approvers": []}]
    assert _approve(app_pool, tenant, execution.id).applied


def test_a_resolved_approval_message_for_people_is_shown_as_written(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
) -> None:
    text = "Ship 1.2.3 to Zürich?\nChange log:\t\u05e9\u05dc\u05d5\u05dd \U0001f680"
    execution_id = _asked(app_pool, tenant, {"message": text})
    assert _requested(app_pool, tenant, execution_id) == [{"attempt": 1, "message": text, "approvers": []}]
