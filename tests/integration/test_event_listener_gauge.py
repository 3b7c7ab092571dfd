# intent_ref: platform.telemetry
"""`qp.event_listener.listening` says whether the process's execution event listener listens: nothing until the
process has made its listener, 1 while its LISTEN connection is up, 0 once that connection is gone and the server
refuses it a new one (live streams and long polls then read every DOWN_RECHECK_S instead of being woken)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.config import get_settings
from shared.db.bootstrap import DATABASE_NAME
from shared.engine import event_wakeup
from shared.observability import metrics, setup

pytestmark = pytest.mark.integration

BOUND_S = 30.0
"""How long the listener is given to connect, or to notice its connection is gone: a bound, not a measurement."""


def _listening(reader: InMemoryMetricReader) -> list[float]:
    """The gauge's values in one collection (empty when it reported nothing)."""
    data = reader.get_metrics_data()
    return [
        float(point.value)
        for resource in (data.resource_metrics if data is not None else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == metrics.EVENT_LISTENER_LISTENING
        for point in metric.data.data_points  # type: ignore[union-attr]
    ]


def _eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND_S} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def listener_login(pg: Any) -> Iterator[str]:
    """A login of its own for the listener, so that the server can refuse it new connections (a connection limit of
    0) while every other login of the session connects as usual; the URL of the platform's database as it."""
    role = f"qp_listener_gauge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.admin_url, dbname=DATABASE_NAME, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(DATABASE_NAME), sql.Identifier(role))
        )
    try:
        yield make_conninfo("", **{**conninfo_to_dict(pg.app_url), "user": role})
    finally:
        with psycopg.connect(pg.admin_url, dbname=DATABASE_NAME, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                (role,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> InMemoryMetricReader:
    """The platform's meters recording into a provider of the test's own (the process-wide one is set once)."""
    collected = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[collected])
    monkeypatch.setattr(metrics, "_meter", lambda: provider.get_meter("quantum-platform"))
    return collected


def test_the_gauge_says_whether_the_process_listener_listens(
    pg: Any, listener_login: str, reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process-wide listener, made from the app settings as a live stream makes it, as the listener's own login.
    monkeypatch.setenv("QP_DATABASE_URL", listener_login)
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", pg.control_url)
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    get_settings.cache_clear()
    event_wakeup.forget_event_wakeup()
    attempts: list[str] = []
    connect = event_wakeup.connect_from_settings

    def counted() -> psycopg.Connection[Any]:
        attempts.append("connect")
        return connect()

    monkeypatch.setattr(event_wakeup, "connect_from_settings", counted)
    try:
        metrics.observe_event_listener(setup.event_listener_listening)  # as start_telemetry registers it
        # Nothing until the process has made its listener, and observing it does not make one.
        assert _listening(reader) == []
        assert event_wakeup.made_event_wakeup() is None

        wakeup = event_wakeup.get_event_wakeup()
        assert wakeup is not None
        wakeup.start()
        _eventually(lambda: _listening(reader) == [1.0], "the gauge reads 1 once the listener listens")
        assert wakeup.listening.is_set() and wakeup.connections == 1
        pid = wakeup.backend_pid
        assert pid is not None

        # The server refuses the listener's login new connections, then its connection is terminated.
        role = str(conninfo_to_dict(listener_login)["user"])
        with psycopg.connect(pg.admin_url, dbname=DATABASE_NAME, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 0").format(sql.Identifier(role)))
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        _eventually(lambda: _listening(reader) == [0.0], "the gauge reads 0 once the connection is gone")
        # It stays 0 while the server refuses the listener's reconnects.
        tried = len(attempts)
        _eventually(lambda: len(attempts) >= tried + 2, "the listener tries to reconnect twice more")
        assert _listening(reader) == [0.0]
        assert wakeup.connections == 1 and not wakeup.listening.is_set()
    finally:
        event_wakeup.forget_event_wakeup()
        get_settings.cache_clear()
