# intent_ref: platform.tenant-isolation
"""SQL in one tenant's transaction leaves nothing on its pooled connection, or table, that reaches another tenant."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.db.migrate import apply_migrations
from shared.db.pool import build_pool
from shared.db.session import TamperedSessionError, runtime_transaction, tenant_transaction, tenant_write
from shared.ratelimit import RateLimit, take_tenant_token

pytestmark = pytest.mark.integration

LIMIT = RateLimit(capacity=1000, refill_per_second=100)
FORMER_MIGRATION_KEY = zlib.crc32(b"quantum-migrations:app")
"""The advisory key the migration runner serialised on before it locked its table."""
# The tables on which the runtime held table-level UPDATE and holds no DELETE (which allows every lock mode too).
LOCK_GUARDED_TABLES = ("rate_buckets", "intents", "work_pollers", "tenant_locks")
# Every mode LOCK TABLE grants only with table-level UPDATE, DELETE or TRUNCATE: each conflicts with the ROW EXCLUSIVE
# every write takes (SHARE UPDATE EXCLUSIVE with itself and with maintenance), so a transaction holding one holds up
# other tenants' work on the table.
STRONG_LOCK_MODES = ("SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")


@pytest.fixture
def one_connection(pg) -> Iterator[ConnectionPool[Any]]:  # type: ignore[no-untyped-def]
    """A pool of the app's login holding a single connection, so every borrower gets the same session."""
    settings = Settings(
        QP_DATABASE_URL=pg.app_url,
        QP_DATABASE_CONTROL_URL=pg.control_url,
        QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true",
        QP_DATABASE_POOL_MAX=1,
    )
    pool = build_pool(pg.app_url, settings)
    yield pool
    pool.close()


def _settings_of(pg: Any, tenant: uuid.UUID) -> Any:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:  # the ground truth, past row-level security
        row = conn.execute("SELECT settings FROM app.tenants WHERE id = %s", (tenant,)).fetchone()
    assert row is not None
    return row[0]


def _replace_prepared_statements(conn: psycopg.Connection[Any], attacker: uuid.UUID) -> None:
    """What SQL in the attacker's transaction can do to its session's prepared statements: put its own text under
    the name of the app's rate-limit take and tenant pin, and under the names the driver gives those it prepares."""
    rows = conn.execute("SELECT name, statement, parameter_types::text AS types FROM pg_prepared_statements").fetchall()
    targets = {
        row["name"]: row for row in rows if "take_request_token" in row["statement"] or "pin_tenant" in row["statement"]
    }
    taken = {row["name"] for row in rows}
    take_body = sql.SQL(
        # Whichever tenant's transaction runs it: that tenant's settings say the attacker owns them.
        'WITH owned AS (UPDATE app.tenants SET settings = settings || \'{"owned_by": "attacker"}\'::jsonb'
        " WHERE id = app.current_tenant_id() RETURNING 1)"
        " SELECT allowed, retry_after_s FROM app.take_request_token($1, $2)"
    )
    pin_body = sql.SQL("SELECT app.pin_tenant({}::uuid) WHERE $1 IS NOT NULL").format(sql.Literal(str(attacker)))
    replacements: list[tuple[str, str, sql.Composable]] = []
    for name, row in targets.items():
        conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))
        body = pin_body if "pin_tenant" in row["statement"] else take_body
        replacements.append((name, row["types"].strip("{}"), body))
    replacements += [
        (name, "double precision, double precision", take_body)
        for name in (f"_pg3_{n}" for n in range(20))
        if name not in taken
    ]
    for name, types, body in replacements:
        conn.execute(
            sql.SQL("PREPARE {} ({}) AS {}").format(sql.Identifier(name), sql.SQL(types), body)  # type: ignore[arg-type]
        )


def test_statements_a_tenant_transaction_prepares_never_run_in_another_tenants(
    one_connection: ConnectionPool[Any], new_tenant: Any, pg: Any
) -> None:
    attacker, victim = new_tenant(), new_tenant()
    # The victim's traffic, often enough that a driver preparing repeated statements would have prepared them.
    for _ in range(6):
        assert take_tenant_token(victim, LIMIT, pool=one_connection).allowed
    with tenant_transaction(attacker, pool=one_connection) as conn:
        _replace_prepared_statements(conn, attacker)
    # The victim's next request, on the same session, through the app's own code: the tampered session pins no
    # tenant, so nothing of the attacker's runs; it is closed (a 503 the client retries), and the pool replaces it.
    with pytest.raises(TamperedSessionError):
        take_tenant_token(victim, LIMIT, pool=one_connection)
    assert take_tenant_token(victim, LIMIT, pool=one_connection).allowed
    with tenant_write(victim, pool=one_connection) as conn:
        pinned = conn.execute("SELECT app.current_tenant_id() AS tenant")
    assert pinned.fetchone() == {"tenant": victim}
    assert "owned_by" not in _settings_of(pg, victim)


def test_a_tampered_session_is_refused_on_the_pipelined_path_too(
    one_connection: ConnectionPool[Any], new_tenant: Any, pg: Any
) -> None:
    attacker, victim = new_tenant(), new_tenant()
    for _ in range(6):  # the pipelined prologue's statements prepared
        with tenant_write(victim, pool=one_connection) as conn:
            conn.execute("SELECT 1")
    with tenant_transaction(attacker, pool=one_connection) as conn:
        _replace_prepared_statements(conn, attacker)
    with pytest.raises(TamperedSessionError), tenant_write(victim, pool=one_connection) as conn:
        conn.execute("SELECT 1")
    with tenant_write(victim, pool=one_connection) as conn:
        pinned = conn.execute("SELECT app.current_tenant_id() AS tenant")
    assert pinned.fetchone() == {"tenant": victim}


def test_a_listen_left_by_a_tenant_transaction_ends_with_the_next_transaction(
    one_connection: ConnectionPool[Any], new_tenant: Any, pg: Any
) -> None:
    attacker, victim = new_tenant(), new_tenant()
    with tenant_transaction(attacker, pool=one_connection) as conn:
        conn.execute("LISTEN execution_events")
    with psycopg.connect(pg.app_url, autocommit=True) as other:  # other tenants' traffic meanwhile
        for n in range(20):
            other.execute("SELECT pg_notify('execution_events', %s)", (f"{uuid.uuid4()}:{n}",))
    with tenant_transaction(victim, pool=one_connection) as conn:
        conn.execute("SELECT 1")
    with one_connection.connection() as conn:
        assert conn.execute("SELECT pg_listening_channels() AS channel").fetchall() == []
        # Nor does the process keep, unread, what reached the connection while it listened.
        assert not conn._notifies_backlog


def test_a_session_advisory_lock_left_by_a_tenant_transaction_is_released_by_the_next(
    one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    attacker, victim = new_tenant(), new_tenant()
    with tenant_transaction(attacker, pool=one_connection) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (FORMER_MIGRATION_KEY,))
    with tenant_transaction(victim, pool=one_connection) as conn:
        held = conn.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchall()
    assert held == []


def test_a_tenants_lock_on_the_former_migration_key_does_not_hold_up_the_migration_runner(
    one_connection: ConnectionPool[Any], new_tenant: Any, pg: Any
) -> None:
    attacker = new_tenant()
    with tenant_transaction(attacker, pool=one_connection) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (FORMER_MIGRATION_KEY,))
        # Nor can it take the lock the runner takes now: the runtime has no privilege on the tracking table.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("LOCK TABLE app.schema_migrations IN ACCESS SHARE MODE")
    # The key is still held by the pooled session (nobody borrowed it since). A runner that waited for it would fail
    # on its lock timeout instead of hanging the test.
    bounded = psycopg.conninfo.make_conninfo(pg.owner_url, options="-c lock_timeout=5s")
    assert apply_migrations(bounded) == []


@pytest.mark.parametrize("table", LOCK_GUARDED_TABLES)
@pytest.mark.parametrize("mode", ["SHARE", "ACCESS EXCLUSIVE"])
def test_a_tenant_transaction_cannot_lock_a_shared_table_against_other_tenants(
    app_pool: ConnectionPool[Any], new_tenant: Any, table: str, mode: str
) -> None:
    statement = sql.SQL("LOCK TABLE {} IN {} MODE").format(sql.Identifier("app", table), sql.SQL(mode))  # type: ignore[arg-type]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with tenant_transaction(new_tenant(), pool=app_pool) as conn:
            conn.execute(statement)


def test_the_runtime_updates_no_table_as_a_whole(pg: Any) -> None:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        whole = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind IN ('r', 'p')"
            " AND c.relnamespace = 'app'::regnamespace AND has_table_privilege('qp_runtime', c.oid, 'UPDATE')"
        ).fetchall()
    assert whole == []


def _app_tables(pg: Any) -> list[str]:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p')"
            " AND c.relnamespace = 'app'::regnamespace ORDER BY c.relname"
        ).fetchall()
    return [row[0] for row in rows]


def test_a_tenant_transaction_can_lock_no_app_table_against_other_tenants(
    app_pool: ConnectionPool[Any], new_tenant: Any, pg: Any
) -> None:
    tables = _app_tables(pg)
    assert {"audit_outbox", "idempotency_keys", "tenant_policies", "webhook_subscriptions"} <= set(tables)
    locked: list[tuple[str, str]] = []
    with tenant_transaction(new_tenant(), pool=app_pool) as conn:
        for table in tables:
            for mode in STRONG_LOCK_MODES:
                statement = sql.SQL("LOCK TABLE {} IN {} MODE").format(
                    sql.Identifier("app", table),
                    sql.SQL(mode),  # type: ignore[arg-type]
                )
                try:
                    with conn.transaction():
                        conn.execute(statement)
                    locked.append((table, mode))
                except psycopg.errors.InsufficientPrivilege:
                    pass
    assert locked == []


def test_the_runtime_deletes_or_truncates_no_table_nor_updates_one_as_a_whole(pg: Any) -> None:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        granted = conn.execute(
            "SELECT c.relname, p.privilege FROM pg_class c CROSS JOIN unnest(ARRAY['DELETE', 'TRUNCATE', 'UPDATE'])"
            " AS p (privilege) WHERE c.relkind IN ('r', 'p') AND c.relnamespace = 'app'::regnamespace"
            " AND has_table_privilege('qp_runtime', c.oid, p.privilege) ORDER BY 1, 2"
        ).fetchall()
    assert granted == []


def test_the_delete_functions_reach_the_pinned_tenants_rows_only(
    app_pool: ConnectionPool[Any], new_tenant: Any, pg: Any
) -> None:
    owner, other = new_tenant(), new_tenant()
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:  # the rows, past row-level security
        policy = conn.execute(
            "INSERT INTO app.tenant_policies (tenant_id, name, policy, created_by) VALUES (%s, 'p', '', 't')"
            " RETURNING id",
            (owner,),
        ).fetchone()
        conn.execute(
            "INSERT INTO app.audit_outbox (tenant_id, id, document)"
            " VALUES (%s, %s, jsonb_build_object('tenantId', %s::text))",
            (owner, policy[0], str(owner)),
        )
        conn.execute(
            "INSERT INTO app.idempotency_keys (tenant_id, key, fingerprint, expires_at) VALUES (%s, 'k', 'f', now())",
            (owner,),
        )
        conn.execute(
            "INSERT INTO app.webhook_subscriptions (tenant_id, id, url, event_types, secret)"
            " VALUES (%s, %s, 'https://example.test/hook', '{*}', 'whsec_x')",
            (owner, policy[0]),
        )
        conn.execute(
            "INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)"
            " VALUES (%s, %s, 'm', 'test.event', '{}')",
            (owner, policy[0]),
        )
    calls = [
        ("SELECT app.delete_tenant_policy(%s) AS n", (policy[0],)),
        ("SELECT app.delete_webhook_subscription(%s) AS n", (policy[0],)),
        ("SELECT app.remove_audit_outbox_records(%s) AS n", ([policy[0]],)),
        ("SELECT app.forget_expired_idempotency_key(%s) AS n", ("k",)),
        ("SELECT app.delete_expired_idempotency_keys(%s) AS n", (10,)),
    ]
    # Another tenant's transaction, and one with no tenant pinned, remove nothing.
    with tenant_transaction(other, pool=app_pool) as conn:
        assert [conn.execute(statement, args).fetchone() for statement, args in calls] == [{"n": 0}] * len(calls)
    with runtime_transaction(pool=app_pool) as conn:
        assert [conn.execute(statement, args).fetchone() for statement, args in calls] == [{"n": 0}] * len(calls)
    with tenant_transaction(owner, pool=app_pool) as conn:
        removed = [conn.execute(statement, args).fetchone() for statement, args in calls]
    assert removed == [{"n": 1}, {"n": 1}, {"n": 1}, {"n": 1}, {"n": 0}]  # the key went with the call before
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM app.webhook_deliveries WHERE tenant_id = %s)"
            " + (SELECT count(*) FROM app.tenant_policies WHERE tenant_id = %s)",
            (owner, owner),
        ).fetchone()
    assert left == (0,)


def test_a_pipelined_pin_replaced_by_one_that_pins_nothing_never_runs(
    one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    attacker, victim = new_tenant(), new_tenant()
    for _ in range(6):  # often enough that a driver preparing repeated statements would have prepared the prologue's
        with tenant_write(victim, pool=one_connection) as conn:
            conn.execute("SELECT 1")
    with tenant_transaction(attacker, pool=one_connection) as conn:
        # Under the name the driver gave the pin, a statement that pins nothing: the check inside app.pin_tenant
        # (migration 0047) never ran, and every later pipelined transaction on the session ran with no tenant.
        for row in conn.execute("SELECT name, statement FROM pg_prepared_statements").fetchall():
            if "pin_tenant" in row["statement"]:
                conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(row["name"])))
                conn.execute(
                    sql.SQL("PREPARE {} (uuid) AS SELECT NULL::void WHERE $1 IS NOT NULL").format(
                        sql.Identifier(row["name"])
                    )
                )
    for _ in range(2):
        try:
            with tenant_write(victim, pool=one_connection) as conn:
                pinned = conn.execute("SELECT app.current_tenant_id() AS tenant").fetchone()
        except TamperedSessionError:
            continue  # refused and closed: the property holds
        assert pinned == {"tenant": victim}


@pytest.mark.parametrize(
    "setting", ["default_transaction_read_only = on", "default_transaction_isolation = 'serializable'"]
)
def test_a_session_default_left_by_a_tenant_changes_nothing_of_the_next_transactions(
    one_connection: ConnectionPool[Any], new_tenant: Any, setting: str
) -> None:
    attacker, victim = new_tenant(), new_tenant()
    with tenant_transaction(attacker, pool=one_connection) as conn:
        conn.execute(f"SET SESSION {setting}")
    # It took effect at the next BEGIN, before the reset: every write refused until a transaction committed.
    for _ in range(2):
        with tenant_transaction(victim, pool=one_connection) as conn:
            conn.execute("UPDATE app.tenants SET settings = settings WHERE id = %s", (victim,))
            seen = conn.execute(
                "SELECT current_setting('transaction_read_only') AS ro, current_setting('transaction_isolation') AS iso"
            ).fetchone()
        assert seen == {"ro": "off", "iso": "read committed"}
        with tenant_write(victim, pool=one_connection) as conn:
            conn.execute("UPDATE app.tenants SET settings = settings WHERE id = %s", (victim,))


def test_a_holdable_cursor_left_by_a_tenant_is_closed_before_the_next_transaction(
    one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    from shared.audit.postgres import _exported

    attacker, victim = new_tenant(), new_tenant()
    with tenant_transaction(attacker, pool=one_connection) as conn:
        # Under the audit export's cursor name, WITH HOLD: it outlived the transaction, and every later export on the
        # session failed (DuplicateCursor) for as long as the connection lived.
        conn.execute("DECLARE export_audit_events CURSOR WITH HOLD FOR SELECT 1")
    with tenant_transaction(victim, pool=one_connection) as conn:
        assert list(_exported(conn, victim)) == []
        assert conn.execute("SELECT count(*) AS n FROM pg_cursors WHERE is_holdable").fetchone() == {"n": 0}
