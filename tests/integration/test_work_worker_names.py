# intent_ref: platform.execution
"""A worker's name is shown where people read it (the execution's wait reason, the queue's list) with its acting
characters replaced, as a heartbeat's progress message is (ADR 0027, amended 2026-12-07)."""

from __future__ import annotations

import json
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


def _posted(api: ApiHarness, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:  # noqa: F811
    """POST `body` as JSON with its non-ASCII escaped: a lone surrogate is sent as `\\udXXX`, as JSON can write it."""
    sent = {**headers, "Content-Type": "application/json"}
    return api.client.post(path, content=json.dumps(body), headers=sent)


def _documented(api: ApiHarness, schema: str, field: str) -> str:  # noqa: F811
    schemas = api.client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    description: str = schemas[schema]["properties"][field]["description"]
    return description


def test_a_nul_in_a_name_or_progress_is_refused_as_documented_and_other_controls_replaced(
    api: ApiHarness,  # noqa: F811
    tenant: uuid.UUID,
    app_pool: ConnectionPool[Any],
    durable: Any,  # noqa: F811
) -> None:
    # What the API says of both fields: other controls replaced, a NUL or lone surrogate refused as in every body.
    for schema, field in (("LeaseRequest", "worker"), ("Progress", "message")):
        described = _documented(api, schema, field)
        assert "U+0000-" not in described and "never refused" not in described, described
        assert "NUL (U+0000)" in described and "422 `unstorable_text`" in described, described
        assert "replaced by U+FFFD" in described, described

    headers = api.headers(TENANT, ["Module.Worker"])
    action = f"names-{uuid.uuid4().hex[:6]}"
    _queued(app_pool, tenant, action, path=["running"])
    for name in ("builder\x00", "builder\ud800"):
        refused = _posted(api, "/api/v1/work/lease", {"actions": [action], "worker": name}, headers)
        assert refused.status_code == 422, refused.text
        assert [error["code"] for error in refused.json()["errors"]] == ["unstorable_text"]
    leased = api.client.post("/api/v1/work/lease", json={"actions": [action], "worker": "b\x1b1"}, headers=headers)
    assert leased.status_code == 200, leased.text
    (item,) = leased.json()["items"]

    beat = f"/api/v1/work/{item['id']}/heartbeat"
    for message in ("layer\x00", "layer\udfff"):
        body = {"lease_id": item["lease_id"], "extend_s": 60, "progress": {"message": message}}
        refused = _posted(api, beat, body, headers)
        assert refused.status_code == 422, refused.text
        assert [error["code"] for error in refused.json()["errors"]] == ["unstorable_text"]
    body = {"lease_id": item["lease_id"], "extend_s": 60, "progress": {"message": "layer\x1b3"}}
    assert api.client.post(beat, json=body, headers=headers).status_code == 200
    (entry,) = [
        entry
        for entry in api.client.get(f"/api/v1/work?action={action}", headers=headers).json()["items"]
        if entry["id"] == item["id"]
    ]
    assert entry["leased_by"].startswith(f"b{REPLACEMENT}1")
    assert entry["progress"]["message"] == f"layer{REPLACEMENT}3"
