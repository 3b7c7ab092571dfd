# intent_ref: platform.execution
"""Each read of the JSON long poll of an execution's events is one statement in one transaction, as a read of its
server-sent stream is: the status and the events after `after` come from one snapshot. Its answers are what the
execution's row and events say, page by page, at once or after a wait.

Statements are counted as the app sends them, per transaction, with the stream's counting fixture."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api.routers.executions import event_out
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.integration.test_stream_simpler_reads import Sent, sent  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]


def _expected(
    app_pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID, after: int, limit: int
) -> dict[str, Any]:
    """The page the execution's row and events make, read apart from the API."""
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        status = repo.get_execution(conn, execution_id).status
        events = repo.events_after(conn, execution_id, after, limit)
    return {
        "execution_id": str(execution_id),
        "status": status,
        "items": [event_out(event).model_dump(mode="json") for event in events],
        "next_after": events[-1].seq if events else after,
    }


def _one_statement_each(reads: list[list[str]]) -> None:
    assert reads, "no read of the events"
    for read in reads:
        assert [text.split()[0] for text in read] == ["prologue", "SELECT", "COMMIT"], read
        assert "app.executions" in read[1], read


def test_a_long_poll_read_is_one_statement_and_answers_as_before(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    sent: Sent,  # noqa: F811  # the fixture imported above
) -> None:
    handle = api.provision("long-poll-one-read")
    headers = api.headers("long-poll-one-read", READER)
    execution = _execution(app_pool, handle.id, path=["running", "waiting", "running", "succeeded"])
    url = f"/api/v1/executions/{execution.id}/events"
    for after, limit, wait in [(0, 100, 0), (0, 2, 0), (2, 2, 5), (3, 100, 5), (4, 100, 5), (1000, 100, 0)]:
        sent.transactions.clear()
        answer = api.client.get(url, params={"after": after, "limit": limit, "wait": wait}, headers=headers)
        assert answer.status_code == 200, answer.text
        reads = sent.reading("execution_events")
        assert answer.json() == _expected(app_pool, handle.id, execution.id, after, limit), (after, limit)
        # The execution is over: each poll answers after its one read, waiting or not.
        assert len(reads) == 1, reads
        _one_statement_each(reads)


def test_a_waiting_long_poll_rereads_in_one_statement_each_time(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    sent: Sent,  # noqa: F811  # the fixture imported above
) -> None:
    handle = api.provision("long-poll-rereads")
    headers = api.headers("long-poll-rereads", READER)
    execution = _execution(app_pool, handle.id, path=["running"])
    last = _expected(app_pool, handle.id, execution.id, 0, 100)["next_after"]
    sent.transactions.clear()
    answer = api.client.get(
        f"/api/v1/executions/{execution.id}/events", params={"after": last, "wait": 2.5}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"execution_id": str(execution.id), "status": "running", "items": [], "next_after": last}
    # Nothing came: read at the start and again at least once before the wait ran out, each read one statement.
    reads = sent.reading("execution_events")
    assert len(reads) >= 2, reads
    _one_statement_each(reads)


def test_a_long_poll_of_an_unknown_execution_is_not_found(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
) -> None:
    api.provision("long-poll-unknown")
    missing = uuid.uuid4()
    answer = api.client.get(
        f"/api/v1/executions/{missing}/events",
        params={"wait": 1},
        headers=api.headers("long-poll-unknown", READER),
    )
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == f"No execution {missing}."
