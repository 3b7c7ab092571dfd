# intent_ref: platform.execution
"""The tenant's queue listing (`GET /api/v1/work`) is cursor-paginated on its sort key: a queue longer than the
largest page is listed whole, pages follow (enqueued_at, id) through ties and through items queued between pages,
`next_cursor` is set only when more items follow, and a cursor this list did not issue is a 400 problem."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import work_queue
from shared.engine.steps import AttemptKey, StepSeed
from shared.pagination import encode_cursor, list_cursor
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration

WORKER = ["Module.Worker"]
ACTION = "build-container"


def _queue(pool: ConnectionPool[Any], tenant_id: uuid.UUID, count: int, *, action: str = ACTION) -> uuid.UUID:
    """A running execution with `count` remote steps, each with its first attempt queued (one transaction)."""
    execution = _execution(pool, tenant_id, path=["running"])
    step_ids = [f"s{number:04d}" for number in range(count)]
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed(step_id, action, 3) for step_id in step_ids])
        for step_id in step_ids:
            key = AttemptKey(execution.id, step_id, "run", 1)
            store.begin_attempt(conn, key, action=action, remote=True, step_state="waiting")
            work_queue.enqueue(conn, key, action=action, params={}, timeout_s=600)
    return execution.id


def _stored_order(api: ApiHarness, execution_id: uuid.UUID) -> list[str]:  # noqa: F811  # the fixture's type
    """The execution's item ids in the list's order, read as the admin."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        rows = conn.execute(
            "SELECT id FROM app.work_items WHERE execution_id = %s ORDER BY enqueued_at, id", (execution_id,)
        ).fetchall()
    return [str(row[0]) for row in rows]


def _pages(api: ApiHarness, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:  # noqa: F811
    """Every page of the listing, following `next_cursor` until it is null."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor is not None else {})}
        answer = api.client.get("/api/v1/work", params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor does not move on"


def _problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    return body


def test_a_queue_longer_than_the_largest_page_is_listed_whole(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision("work-cursor-long")
    execution_id = _queue(app_pool, handle.id, 501)
    headers = api.headers("work-cursor-long", WORKER)
    pages = _pages(api, headers, execution_id=str(execution_id), limit=500)
    assert [len(page["items"]) for page in pages] == [500, 1]
    listed = [item["id"] for page in pages for item in page["items"]]
    assert listed == _stored_order(api, execution_id)
    # The defaults still answer the first 100, with a cursor to the rest.
    first = api.client.get("/api/v1/work", params={"execution_id": str(execution_id)}, headers=headers).json()
    assert [item["id"] for item in first["items"]] == listed[:100] and first["next_cursor"] is not None


def test_pages_follow_the_sort_key_through_ties_and_items_queued_between_pages(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision("work-cursor-order")
    headers = api.headers("work-cursor-order", WORKER)
    action = f"order-{uuid.uuid4().hex[:6]}"
    execution_id = _queue(app_pool, handle.id, 7, action=action)
    # Five items queued at the same instant: only the id orders them, so a cursor of the time alone would skip or
    # repeat some.
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE app.work_items SET enqueued_at = (SELECT min(enqueued_at) FROM app.work_items"
            " WHERE execution_id = %s) WHERE execution_id = %s AND step_id < 's0005'",
            (execution_id, execution_id),
        )
    expected = _stored_order(api, execution_id)

    first = api.client.get("/api/v1/work", params={"action": action, "limit": 2}, headers=headers).json()
    assert [item["id"] for item in first["items"]] == expected[:2] and first["next_cursor"]
    later = _queue(app_pool, handle.id, 1, action=action)  # queued after the first page was read
    rest = _pages(api, headers, action=action, limit=2)[1:]
    second = api.client.get(
        "/api/v1/work", params={"action": action, "limit": 2, "cursor": first["next_cursor"]}, headers=headers
    ).json()
    assert [item["id"] for item in second["items"]] == expected[2:4]

    listed = [item["id"] for page in rest for item in page["items"]]
    assert listed == [*expected[2:], *_stored_order(api, later)]
    assert [len(page["items"]) for page in rest] == [2, 2, 2]
    # No cursor on the last page, even a full one; none either when everything fits the first.
    assert rest[-1]["next_cursor"] is None
    whole = api.client.get("/api/v1/work", params={"action": action}, headers=headers).json()
    assert len(whole["items"]) == 8 and whole["next_cursor"] is None


def test_a_cursor_this_list_did_not_issue_is_refused(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision("work-cursor-foreign")
    headers = api.headers("work-cursor-foreign", [*WORKER, "Intent.Reader"])
    action = f"foreign-{uuid.uuid4().hex[:6]}"
    _queue(app_pool, handle.id, 3, action=action)
    _execution(app_pool, handle.id)  # a second execution: the executions list has a next page
    issued = api.client.get("/api/v1/work", params={"action": action, "limit": 1}, headers=headers).json()
    at, item_id = json.loads(base64.urlsafe_b64decode(issued["next_cursor"] + "==="))["after"]
    executions_cursor = api.client.get("/api/v1/executions", params={"limit": 1}, headers=headers).json()["next_cursor"]
    assert executions_cursor
    naive = datetime.fromisoformat(at).astimezone(UTC).replace(tzinfo=None).isoformat()
    for cursor in [
        "not a cursor",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        executions_cursor,
        list_cursor("intents", {"name": "build"}),
        list_cursor("work", {"name": "build"}),
        encode_cursor({"after": [at, item_id]}),  # the position without the list's mark
        list_cursor("work", {"after": at}),
        list_cursor("work", {"after": [at]}),
        list_cursor("work", {"after": [at, 7]}),
        list_cursor("work", {"after": [at, "not-a-uuid"]}),
        list_cursor("work", {"after": ["yesterday", item_id]}),
        list_cursor("work", {"after": [naive, item_id]}),
    ]:
        body = _problem(api.client.get("/api/v1/work", params={"cursor": cursor}, headers=headers), 400)
        assert body["type"].endswith("invalid-cursor"), (cursor, body)
    # The one it issued pages on.
    page = api.client.get(
        "/api/v1/work", params={"action": action, "limit": 1, "cursor": issued["next_cursor"]}, headers=headers
    )
    assert page.status_code == 200 and len(page.json()["items"]) == 1
