# intent_ref: platform.execution
"""A worker's name is shown where people read it (the execution's wait reason, the queue's list) with its acting
characters replaced, as a heartbeat's progress message is (ADR 0027, amended 2026-12-07)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import work_queue
from shared.free_text import REPLACEMENT
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_cancel_dispatch_race import _queued
from tests.integration.test_verdict_handover import durable  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration
TENANT = "worker-names"
# A screen clear, a line of its own for a log reader, a right-to-left override and a bell: each acts where shown.
ACTING = "builder\x1b[2J\u2028\u202eevil\x07\n"
SHOWN = f"builder{REPLACEMENT}[2J{REPLACEMENT}{REPLACEMENT}evil{REPLACEMENT}{REPLACEMENT}"


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811
    return api.provision(TENANT).id


def test_a_workers_name_is_shown_neutralised(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    durable: Any,  # noqa: F811
) -> None:
    headers = api.headers(TENANT, ["Module.Worker"])
    action = f"names-{uuid.uuid4().hex[:6]}"
    key = _queued(app_pool, tenant, action, path=["running"])
    body = {"actions": [action], "wait_s": 0, "worker": ACTING}
    leased = api.client.post("/api/v1/work/lease", json=body, headers=headers)
    assert leased.status_code == 200, leased.text  # never refused: the work would wait for a worker over a name
    assert len(leased.json()["items"]) == 1
    with tenant_transaction(tenant, pool=app_pool) as conn:
        (poller,) = work_queue.pollers(conn, [action]).values()
    assert poller.last_polled_by.startswith(SHOWN + " (")

    (entry,) = api.client.get(f"/api/v1/work?execution_id={key.execution_id}", headers=headers).json()["items"]
    assert entry["leased_by"].startswith(SHOWN + " (")
    reader = api.headers(TENANT, ["Intent.Reader"])
    execution = api.client.get(f"/api/v1/executions/{key.execution_id}", headers=reader)
    assert execution.status_code == 200, execution.text
    reason = execution.json()["wait_reason"]
    assert f"leased by {SHOWN} (" in reason
    assert not any(character in reason for character in "\x1b\u2028\u202e\x07\n")


def test_a_name_recorded_before_is_listed_neutralised(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
) -> None:
    headers = api.headers(TENANT, ["Module.Worker"])
    action = f"names-{uuid.uuid4().hex[:6]}"
    key = _queued(app_pool, tenant, action, path=["running"])
    with tenant_transaction(tenant, pool=app_pool) as conn:
        work_queue.lease(conn, tenant, actions=[action], max_items=1, lease_s=60, worker=ACTING)
    (entry,) = api.client.get(f"/api/v1/work?execution_id={key.execution_id}", headers=headers).json()["items"]
    assert entry["leased_by"] == SHOWN
    # And in the execution's wait reason, which shows the name as recorded too.
    reader = api.headers(TENANT, ["Intent.Reader"])
    reason = api.client.get(f"/api/v1/executions/{key.execution_id}", headers=reader).json()["wait_reason"]
    assert f"leased by {SHOWN} " in reason and ACTING not in reason
