# intent_ref: platform.execution
"""One read of an execution's event stream is one statement in one transaction: the execution's status and its
events after a seq come from one snapshot, so the status never gets ahead of the events (a terminal status comes
with its terminal event, which the same transaction wrote) nor behind them.

Statements are counted as the app sends them, per transaction, by wrapping the driver's execute and commit."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.api import event_stream
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution
from tests.unit.test_event_stream_bounds import ids_in

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]


@dataclass
class Sent:
    """What the app sent, per connection: each transaction (from the BEGIN of its prologue to its end) as the list
    of its round trips."""

    open: dict[int, list[str]] = field(default_factory=dict)
    transactions: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def statement(self, conn: psycopg.Connection[Any], query: Any) -> None:
        text = query.as_string(conn) if isinstance(query, sql.Composable) else query
        text = text.decode() if isinstance(text, bytes) else str(text)
        with self.lock:
            if text.startswith("BEGIN"):
                self.open[id(conn)] = ["prologue"]
            elif id(conn) in self.open:
                self.open[id(conn)].append(text)

    def end(self, conn: psycopg.Connection[Any], how: str) -> None:
        with self.lock:
            sent = self.open.pop(id(conn), None)
            if sent is not None:
                self.transactions.append([*sent, how])

    def reading(self, table: str) -> list[list[str]]:
        """The transactions that read `table`."""
        return [sent for sent in self.transactions if any(f"app.{table}" in text for text in sent)]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    """Every statement and commit the app sends while the test runs, in its transactions."""
    record = Sent()
    execute, commit, rollback = psycopg.Cursor.execute, psycopg.Connection.commit, psycopg.Connection.rollback

    def counted_execute(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        record.statement(self.connection, query)
        return execute(self, query, *args, **kwargs)

    def counted_commit(self: psycopg.Connection[Any]) -> None:
        record.end(self, "COMMIT")
        commit(self)

    def counted_rollback(self: psycopg.Connection[Any]) -> None:
        record.end(self, "ROLLBACK")
        rollback(self)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
    monkeypatch.setattr(psycopg.Connection, "commit", counted_commit)
    monkeypatch.setattr(psycopg.Connection, "rollback", counted_rollback)
    yield record


def _recorded(app_pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> list[int]:
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        return [event.seq for event in repo.events_after(conn, execution_id, 0, 1000)]


def test_a_stream_read_is_one_statement_in_one_transaction(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
    sent: Sent,
) -> None:
    handle = api.provision("stream-one-read")
    execution = _execution(app_pool, handle.id, path=["running", "waiting", "running", "succeeded"])
    recorded = _recorded(app_pool, handle.id, execution.id)
    sent.transactions.clear()
    answer = api.client.get(
        f"/api/v1/executions/{execution.id}/events",
        headers={**api.headers("stream-one-read", READER), "Accept": event_stream.MEDIA_TYPE},
    )
    assert answer.status_code == 200, answer.text
    assert ids_in(answer.content) == recorded and len(recorded) == 4
    reads = sent.reading("execution_events")
    # The execution is over and its events fit one page: its stream reads once, and ends after the terminal event.
    assert len(reads) == 1, reads
    assert [text.split()[0] for text in reads[0]] == ["prologue", "SELECT", "COMMIT"], reads[0]
    assert "app.executions" in reads[0][1]


def test_a_stream_resumed_after_the_terminal_event_ends_with_no_content(
    api: ApiHarness,  # noqa: F811  # the fixture imported above
    app_pool: ConnectionPool[Any],
) -> None:
    handle = api.provision("stream-resumed-at-end")
    execution = _execution(app_pool, handle.id, path=["running", "failed"])
    recorded = _recorded(app_pool, handle.id, execution.id)
    headers = {**api.headers("stream-resumed-at-end", READER), "Accept": event_stream.MEDIA_TYPE}
    url = f"/api/v1/executions/{execution.id}/events"
    for last in range(recorded[-1]):
        answer = api.client.get(url, headers={**headers, "Last-Event-ID": str(last)})
        assert answer.status_code == 200, answer.text
        assert ids_in(answer.content) == recorded[last:]
    # Resumed at the terminal event or beyond it (a number it never sent), nothing follows: 204, which stops an
    # EventSource's reconnects (an empty 200 invited one a second for ever, ADR 0031).
    for last in (recorded[-1], 1000):
        answer = api.client.get(url, headers={**headers, "Last-Event-ID": str(last)})
        assert answer.status_code == 204 and answer.content == b"", (last, answer.status_code, answer.text)
