# intent_ref: platform.events
"""Retention of delivered webhook deliveries and published outbox rows (ADR 0049, migrations 0073 and 0076), against
the real database: what is past its period goes, in bounded runs, each tenant's through its own transaction; what is
recent, pending, failed or unpublished stays."""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, runtime_transaction, tenant_transaction
from shared.events import retention

pytestmark = pytest.mark.integration

TIMER = Path(__file__).resolve().parents[2] / "functions" / "timer_event_retention.py"

# Each row by its message id (deliveries) or subject (outbox), with its state and age in days.
DELIVERIES = {
    "delivered-old": ("delivered", 8),
    "delivered-recent": ("delivered", 6),
    "failed-old": ("failed", 60),
    "pending-old": ("pending", 60),
}
EVENTS = {"published-old": 8, "published-recent": 6, "unpublished-old": None}
_SEEDED: list[uuid.UUID] = []
"""The module's tenants, whose rows its end removes."""


@pytest.fixture(scope="module")
def admin(pg: Any) -> Iterator[psycopg.Connection[Any]]:
    """The superuser's connection: seeds rows as old as a test needs, and removes the module's rows at its end (the
    runtime deletes neither table's rows, and an old unpublished event left behind would reach later tests' relay)."""
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as conn:
        yield conn
        for table in ("webhook_deliveries", "webhook_subscriptions", "outbox"):
            conn.execute(f"DELETE FROM app.{table} WHERE tenant_id = ANY(%s)", (_SEEDED,))  # noqa: S608


def _tenant(admin: psycopg.Connection[Any], new_tenant: Callable[[], uuid.UUID]) -> tuple[uuid.UUID, uuid.UUID]:
    """A tenant with one (disabled) webhook subscription: (tenant id, subscription id)."""
    tenant_id, subscription_id = new_tenant(), uuid.uuid4()
    _SEEDED.append(tenant_id)
    admin.execute(
        "INSERT INTO app.webhook_subscriptions (tenant_id, id, url, event_types, secret, enabled)"
        " VALUES (%s, %s, 'https://receiver.example/hook', '{*}', 'whsec_test', false)",
        (tenant_id, subscription_id),
    )
    return tenant_id, subscription_id


def _delivery(
    admin: psycopg.Connection[Any], tenant: tuple[uuid.UUID, uuid.UUID], name: str, state: str, days: int
) -> None:
    """A delivery in `state`, created (and delivered, if it is) `days` ago."""
    admin.execute(
        "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload, state,"
        " attempts, created_at, next_attempt_at, delivered_at) VALUES (%(tenant)s, %(subscription)s, %(name)s,"
        " 'intent.created', '{}', %(state)s, 1, now() - make_interval(days => %(days)s), now() + interval '1 day',"
        " CASE WHEN %(state)s = 'delivered' THEN now() - make_interval(days => %(days)s) END)",
        {"tenant": tenant[0], "subscription": tenant[1], "name": name, "state": state, "days": days},
    )


def _event(admin: psycopg.Connection[Any], tenant_id: uuid.UUID, name: str, days: int | None) -> None:
    """An outbox row published `days` ago, or never published (None) and 60 days old."""
    admin.execute(
        "INSERT INTO app.outbox (tenant_id, event_type, subject, data, occurred_at, published_at)"
        " VALUES (%(tenant)s, 'intent.created', %(name)s, '{}', now() - make_interval(days => %(age)s),"
        " CASE WHEN %(published)s THEN now() - make_interval(days => %(age)s) END)",
        {"tenant": tenant_id, "name": name, "age": days if days is not None else 60, "published": days is not None},
    )


def _seed(admin: psycopg.Connection[Any], new_tenant: Callable[[], uuid.UUID]) -> uuid.UUID:
    tenant = _tenant(admin, new_tenant)
    for name, (state, days) in DELIVERIES.items():
        _delivery(admin, tenant, name, state, days)
    for name, published_days in EVENTS.items():
        _event(admin, tenant[0], name, published_days)
    return tenant[0]


def _left(admin: psycopg.Connection[Any], tenant_id: uuid.UUID) -> tuple[set[str], set[str]]:
    """The tenant's deliveries (message ids) and outbox rows (subjects) still there."""
    deliveries = admin.execute("SELECT message_id FROM app.webhook_deliveries WHERE tenant_id = %s", (tenant_id,))
    events = admin.execute("SELECT subject FROM app.outbox WHERE tenant_id = %s", (tenant_id,))
    return {row[0] for row in deliveries}, {row[0] for row in events}


def _backlog(admin: psycopg.Connection[Any], new_tenant: Callable[[], uuid.UUID], count: int) -> uuid.UUID:
    """A tenant with `count` deliveries delivered and `count` events published long ago, and one recent of each."""
    tenant = _tenant(admin, new_tenant)
    for n in range(count):
        _delivery(admin, tenant, f"old-{n}", "delivered", 300)
        _event(admin, tenant[0], f"old-{n}", 300)
    _delivery(admin, tenant, "recent", "delivered", 1)
    _event(admin, tenant[0], "recent", 1)
    return tenant[0]


def _old(admin: psycopg.Connection[Any], tenant_id: uuid.UUID) -> tuple[int, int]:
    deliveries, events = _left(admin, tenant_id)
    return len({d for d in deliveries if d.startswith("old-")}), len({e for e in events if e.startswith("old-")})


def test_ended_rows_past_their_period_go_and_the_others_stay(
    admin: psycopg.Connection[Any],
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    tenants = [_seed(admin, new_tenant), _seed(admin, new_tenant)]
    result = retention.delete_past_retention(pool=app_pool, control_pool=control_pool)
    assert result.failed_tenants == 0 and result.deliveries >= 2 and result.events >= 2
    for tenant_id in tenants:
        # Delivered and published within the week, pending, failed (its subscription's resume point) and unpublished
        # rows all stay, whatever their age.
        assert _left(admin, tenant_id) == (
            {"delivered-recent", "failed-old", "pending-old"},
            {"published-recent", "unpublished-old"},
        )


def test_a_run_deletes_at_most_its_bound_and_the_next_runs_go_on(
    admin: psycopg.Connection[Any],
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retention, "BATCH_ROWS", 7)
    tenant_id = _backlog(admin, new_tenant, 30)
    first = retention.delete_past_retention(max_rows=20, pool=app_pool, control_pool=control_pool)
    assert (first.deliveries + first.events, first.rows_left) == (20, True)
    assert sum(_old(admin, tenant_id)) >= 40
    runs = 1
    while sum(_old(admin, tenant_id)) and runs < 10:
        result = retention.delete_past_retention(max_rows=20, pool=app_pool, control_pool=control_pool)
        assert result.deliveries + result.events <= 20
        runs += 1
    assert _old(admin, tenant_id) == (0, 0)
    assert runs >= 3  # 60 rows, 20 a run
    assert _left(admin, tenant_id) == ({"recent"}, {"recent"})


def test_every_tenant_gets_a_turn_and_backlogs_go_on_within_the_budget(
    admin: psycopg.Connection[Any],
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retention, "BATCH_ROWS", 7)
    busy, quiet = _backlog(admin, new_tenant, 30), _backlog(admin, new_tenant, 1)
    # Past its budget a run still gives every tenant its first turn, a batch of each table, and no more.
    monkeypatch.setattr(retention, "RUN_BUDGET_S", 0.0)
    result = retention.delete_past_retention(pool=app_pool, control_pool=control_pool)
    assert result.rows_left
    assert _old(admin, busy) == (23, 23)
    assert _old(admin, quiet) == (0, 0)
    # Within it, the busy tenant's turns go on, batch after batch, until its backlog is gone.
    monkeypatch.setattr(retention, "RUN_BUDGET_S", 60.0)
    retention.delete_past_retention(pool=app_pool, control_pool=control_pool)
    assert _old(admin, busy) == (0, 0)
    assert _left(admin, busy) == ({"recent"}, {"recent"})


def test_the_deletes_take_the_pinned_tenants_rows_only_and_the_finder_names_tenants_only(
    admin: psycopg.Connection[Any],
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
) -> None:
    mine, other = _seed(admin, new_tenant), _seed(admin, new_tenant)
    recent_only = _tenant(admin, new_tenant)
    _delivery(admin, recent_only, "delivered-recent", "delivered", 6)
    _event(admin, recent_only[0], "published-recent", 6)
    # The finder: the control plane's only, tenant ids only, of tenants with rows past their periods.
    with platform_transaction(pool=control_pool) as conn:
        due = {row["t"] for row in conn.execute("SELECT t FROM app.retention_due_tenants(100000) AS t")}
    assert {mine, other} <= due and recent_only[0] not in due
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(mine, pool=app_pool) as conn:
        conn.execute("SELECT app.retention_due_tenants(10)")
    # The deletes: the runtime's, in a tenant's transaction, of that tenant's rows only; with no tenant, nothing.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), platform_transaction(pool=control_pool) as conn:
        conn.execute("SELECT app.delete_delivered_webhook_deliveries(10)")
    with runtime_transaction(pool=app_pool) as conn:
        nothing = conn.execute(
            "SELECT app.delete_delivered_webhook_deliveries(1000) AS d, app.delete_published_outbox_events(1000) AS e"
        ).fetchone()
    assert nothing == {"d": 0, "e": 0}
    with tenant_transaction(mine, pool=app_pool) as conn:
        removed = conn.execute(
            "SELECT app.delete_delivered_webhook_deliveries(1000) AS d, app.delete_published_outbox_events(1000) AS e"
        ).fetchone()
    assert removed == {"d": 1, "e": 1}
    assert _left(admin, mine) == (
        {"delivered-recent", "failed-old", "pending-old"},
        {"published-recent", "unpublished-old"},
    )
    assert _left(admin, other) == (set(DELIVERIES), set(EVENTS))
    # The runtime still deletes neither table's rows itself.
    for table in ("webhook_deliveries", "outbox"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(mine, pool=app_pool) as conn:
            conn.execute(f"DELETE FROM app.{table}")  # noqa: S608


def test_the_timer_is_registered_and_runs_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loaded on its own: the `functions` package would build the gateway, which needs settings.
    spec = importlib.util.spec_from_file_location("event_retention_timer_under_test", TIMER)
    assert spec is not None and spec.loader is not None
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)
    runs: list[retention.RetentionResult] = []

    def run() -> retention.RetentionResult:
        runs.append(retention.RetentionResult(3, 4, 2, 0, rows_left=False))
        return runs[-1]

    monkeypatch.setattr(timer, "delete_past_retention", run)
    app = func.FunctionApp()
    app.register_functions(timer.bp)
    (function,) = [f for f in app.get_functions() if f.get_function_name() == "event_retention"]
    (binding,) = function.get_bindings()
    assert binding.type == "timerTrigger"
    function.get_user_function()(None)
    assert len(runs) == 1
    # Among the blueprints function_app.py registers (the package itself needs the gateway's settings to import).
    registered = (TIMER.parent / "__init__.py").read_text()
    assert "from functions.timer_event_retention import bp as event_retention_bp" in registered
    assert "\n    event_retention_bp,\n" in registered.split("blueprints = (", 1)[1]


@pytest.mark.parametrize("statement", ["app.delete_delivered_webhook_deliveries", "app.delete_published_outbox_events"])
def test_a_delete_removes_at_most_its_rows_whatever_the_plan(
    admin: psycopg.Connection[Any],
    app_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    statement: str,
) -> None:
    # `id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` rescanned per outer row (a nested loop, which a full table
    # made the planner choose) skipped the rows the delete had just removed and took the next ones: a batch of 7
    # deleted all 30 of a tenant's rows.
    tenant_id = _backlog(admin, new_tenant, 30)
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        for setting in ("enable_hashjoin", "enable_mergejoin", "enable_hashagg", "enable_material", "enable_sort"):
            conn.execute(f"SET LOCAL {setting} = off")  # noqa: S608  # a fixed name of this list
        removed = conn.execute(f"SELECT {statement}(7) AS removed").fetchone()  # noqa: S608
    assert removed is not None and removed["removed"] == 7
    deliveries, events = _old(admin, tenant_id)
    assert (deliveries if "webhook" in statement else events) == 23


def test_a_tenant_whose_turn_fails_is_left_for_the_next_run_and_the_others_turns_go_on(
    admin: psycopg.Connection[Any],
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(retention, "BATCH_ROWS", 7)
    failing, busy = _backlog(admin, new_tenant, 30), _backlog(admin, new_tenant, 30)
    # The failing tenant's deletes fail in the database (a trigger refusing them): every turn of it fails.
    refuse = f"app.refuse_deletes_{failing.hex}"
    admin.execute(
        f"CREATE FUNCTION {refuse}() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'this tenant''s deletes are refused'; END $$"
    )
    admin.execute(
        f"CREATE TRIGGER refuse_deletes_{failing.hex} BEFORE DELETE ON app.webhook_deliveries FOR EACH ROW"
        f" WHEN (OLD.tenant_id = '{failing}') EXECUTE FUNCTION {refuse}()"
    )
    try:
        with caplog.at_level(logging.ERROR):
            result = retention.delete_past_retention(pool=app_pool, control_pool=control_pool)
    finally:
        admin.execute(f"DROP TRIGGER refuse_deletes_{failing.hex} ON app.webhook_deliveries")
        admin.execute(f"DROP FUNCTION {refuse}()")
    # Its first turn failed, logged once; it took no further turns while the busy tenant's went on, round after
    # round (a batch of 7 of 30 rows a turn), until the busy tenant's backlog was gone.
    assert (result.failed_tenants, result.rows_left) == (1, False)
    [record] = [r for r in caplog.records if "event retention" in r.getMessage()]
    assert record.levelno == logging.ERROR and str(failing) in record.getMessage()
    assert _old(admin, failing) == (30, 30)
    assert _old(admin, busy) == (0, 0)
