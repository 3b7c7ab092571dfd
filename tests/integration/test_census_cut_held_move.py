# intent_ref: platform.execution
"""A status change of an execution its transaction holds reads and locks the row once (the hold), not again."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import machine, progress
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _events, _execution

pytestmark = pytest.mark.integration

# The execution's row by its id: a plain read, a hold (NO KEY UPDATE) or a transition's lock (UPDATE).
_ROW_READ = re.compile(r"FROM app\.executions WHERE id = %s(?: FOR (?:NO KEY )?UPDATE)?$")


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:
    return api.provision("census-cut-held-move").id


@contextmanager
def _statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement sent through a cursor while the block runs, as its text."""
    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def counted(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, sql.Composable):
            sent.append(query.as_string(cursor.connection))
        else:
            sent.append(query.decode() if isinstance(query, bytes) else str(query))
        return execute(cursor, query, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(psycopg.Cursor, "execute", counted)
        yield sent


def _row_reads(sent: list[str]) -> list[str]:
    return [statement for statement in sent if _ROW_READ.search(statement)]


def _outbox(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[tuple[str, Any]]:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        rows = conn.execute(
            "SELECT event_type AS type, data FROM app.outbox WHERE subject = %s ORDER BY position",
            (f"executions/{execution_id}",),
        ).fetchall()
    return [(row["type"], row["data"]) for row in rows]


def test_a_first_dispatch_reads_its_execution_once(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution = _execution(app_pool, tenant)
    batch = machine.DispatchSteps(execution_id=str(execution.id), tenant_id=str(tenant), status=machine.Status.RUNNING)
    with tenant_transaction(tenant, pool=app_pool) as conn, _statements(monkeypatch) as sent:
        recorded = progress._record_batch(conn, batch, carrying=False)
    # The hold alone: the move to running was a second lock and read, the answer's status a third read.
    assert len(_row_reads(sent)) == 1, _row_reads(sent)
    assert _row_reads(sent)[0].endswith("FOR NO KEY UPDATE")
    assert recorded.moved == {"status": "running", "cancel_requested": False}
    assert [(e.type, e.data) for e in _events(app_pool, tenant, execution.id)] == [
        ("execution_started", {"from": "pending", "to": "running"})
    ]
    assert [kind for kind, _ in _outbox(app_pool, tenant, execution.id)] == ["execution.started"]


def test_a_dispatch_that_waits_reads_its_execution_once(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution = _execution(app_pool, tenant, path=["running"])
    batch = machine.DispatchSteps(execution_id=str(execution.id), tenant_id=str(tenant), status=machine.Status.WAITING)
    with tenant_transaction(tenant, pool=app_pool) as conn, _statements(monkeypatch) as sent:
        recorded = progress._record_batch(conn, batch, carrying=False)
    assert len(_row_reads(sent)) == 1, _row_reads(sent)
    assert recorded.moved == {"status": "waiting", "cancel_requested": False}
    assert [e.type for e in _events(app_pool, tenant, execution.id)] == ["execution_started", "execution_waiting"]


def test_a_recorded_success_reads_its_execution_once(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution = _execution(app_pool, tenant, path=["running"])
    finish = progress._Finish(execution.id, {"a": {"n": 1}}, {})
    with tenant_transaction(tenant, pool=app_pool) as conn, _statements(monkeypatch) as sent:
        finish.record(conn, {})
    assert len(_row_reads(sent)) == 1, _row_reads(sent)
    assert finish.moved == {"status": "succeeded", "cancel_requested": False}
    with tenant_transaction(tenant, pool=app_pool) as conn:
        ended = repo.get_execution(conn, execution.id)
    assert ended.status == "succeeded" and ended.output == {"a": {"n": 1}} and ended.finished_at is not None
    assert [(e.type, e.data) for e in _events(app_pool, tenant, execution.id)][-1] == (
        "execution_completed",
        {"from": "running", "to": "succeeded"},
    )
    assert [kind for kind, _ in _outbox(app_pool, tenant, execution.id)] == [
        "execution.started",
        "execution.completed",
    ]


def test_a_move_through_running_from_waiting_locks_once_after_its_read(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unheld (record_status): one read, then one lock for both moves, the second made on the row the first holds."""
    execution = _execution(app_pool, tenant, path=["running", "waiting"])
    request = machine.RecordStatus(
        execution_id=str(execution.id), tenant_id=str(tenant), status=machine.Status.SUCCEEDED, output={"n": 2}
    )
    with _statements(monkeypatch) as sent:
        answer = progress.record_status(request)
    assert len(_row_reads(sent)) == 2, _row_reads(sent)
    assert answer.status is machine.Status.SUCCEEDED
    assert [e.type for e in _events(app_pool, tenant, execution.id)][-2:] == [
        "execution_resumed",
        "execution_completed",
    ]
