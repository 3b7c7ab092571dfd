# intent_ref: platform.tenant-isolation
"""The request path's transactions: batched writes commit or leave nothing, session state never carries over."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from shared.audit import AuditRecord
from shared.audit.postgres import PostgresAuditStore
from shared.config import Settings
from shared.db.pool import build_pool
from shared.db.session import platform_transaction, tenant_transaction, tenant_write, transaction_bag, when_released
from shared.ratelimit import RateLimit, take_tenant_token

pytestmark = pytest.mark.integration

NO_REFILL = 1e-9


@pytest.fixture
def one_connection(pg) -> Iterator[ConnectionPool[Any]]:  # type: ignore[no-untyped-def]
    """A pool of the app's login holding a single connection, so every borrower gets the same session."""
    pool = build_pool(pg.app_url, _settings(pg))
    yield pool
    pool.close()


@pytest.fixture
def one_control_connection(pg) -> Iterator[ConnectionPool[Any]]:  # type: ignore[no-untyped-def]
    """A pool of the control plane's login holding a single connection."""
    pool = build_pool(pg.control_url, _settings(pg))
    yield pool
    pool.close()


def _settings(pg: Any) -> Settings:
    return Settings(
        QP_DATABASE_URL=pg.app_url,
        QP_DATABASE_CONTROL_URL=pg.control_url,
        QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true",
        QP_DATABASE_POOL_MAX=1,
    )


def _record(tenant: uuid.UUID, action: str = "intent.read") -> AuditRecord:
    return AuditRecord.new(
        tenant_id=tenant,
        principal_id="test/test",
        action=action,
        resource_type="Intent",
        resource_id="x",
        decision="allow",
        reason="allowed",
    )


def _audit_ids(pg: Any, tenant: uuid.UUID) -> set[uuid.UUID]:
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        return {row[0] for row in conn.execute("SELECT id FROM app.audit_events WHERE tenant_id = %s", (tenant,))}


def test_a_batched_write_commits_and_its_results_are_read_after_the_block(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Any
) -> None:
    tenant = new_tenant()
    record = _record(tenant)
    with tenant_write(tenant, pool=app_pool) as conn:
        PostgresAuditStore().record_in(conn, record)
        pinned = conn.execute("SELECT app.current_tenant_id() AS tenant")
    assert pinned.fetchone() == {"tenant": tenant}
    assert record.id in _audit_ids(pg, tenant)  # committed: another session sees it


def test_a_failed_batched_write_leaves_nothing_and_a_clean_connection(
    pg: Any, one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    tenant, other = new_tenant(), new_tenant()
    kept, foreign = _record(tenant), _record(other)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with tenant_write(tenant, pool=one_connection) as conn:
            PostgresAuditStore().record_in(conn, kept)
            PostgresAuditStore().record_in(conn, foreign)  # another tenant's row: refused by row-level security
    assert kept.id not in _audit_ids(pg, tenant)
    assert foreign.id not in _audit_ids(pg, other)
    # The statement before the refused one is gone too: BEGIN, both INSERTs and COMMIT were one transaction.
    with one_connection.connection() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}


def test_a_batched_write_raises_its_failed_statements_error_not_the_aborted_commits(
    one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    # When the server's error and the end of the batch arrive in different reads (about once in 1,500 batches
    # here), psycopg raises PipelineAborted for the aborted COMMIT: an OperationalError, which callers take for an
    # unreachable database. Many batches, so that the split happens in some of them.
    tenant = new_tenant()
    raised: set[type[BaseException]] = set()
    for _ in range(3000):
        try:
            with tenant_write(tenant, pool=one_connection) as conn:
                conn.execute("SELECT 1 / 0")
        except psycopg.Error as exc:
            raised.add(type(exc))
    assert raised == {psycopg.errors.DivisionByZero}
    with one_connection.connection() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE


def test_a_failed_tenant_transaction_leaves_nothing_and_a_clean_connection(
    pg: Any, one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    tenant = new_tenant()
    record = _record(tenant)
    with pytest.raises(RuntimeError, match="the caller's failure"):
        with tenant_transaction(tenant, pool=one_connection) as conn:
            PostgresAuditStore().record_in(conn, record)
            raise RuntimeError("the caller's failure")
    assert record.id not in _audit_ids(pg, tenant)
    with one_connection.connection() as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
        # Nothing of that transaction is left on the session: no tenant, and the login's own role.
        assert conn.execute("SELECT app.current_tenant_id() AS tenant, current_user AS role").fetchone() == {
            "tenant": None,
            "role": "qp_app",
        }


def test_a_tenant_transaction_is_pinned_to_its_tenant_alone(
    one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    tenant, other = new_tenant(), new_tenant()
    with tenant_transaction(tenant, pool=one_connection) as conn:
        assert conn.execute("SELECT app.current_tenant_id() AS tenant, current_user AS role").fetchone() == {
            "tenant": tenant,
            "role": "qp_runtime",
        }
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pinned to another tenant"), conn.transaction():
            conn.execute("SELECT app.pin_tenant(%s)", (other,))
        assert conn.execute("SELECT app.current_tenant_id() AS tenant").fetchone() == {"tenant": tenant}
    with tenant_transaction(other, pool=one_connection) as conn:  # the same session, the next transaction
        assert conn.execute("SELECT app.current_tenant_id() AS tenant").fetchone() == {"tenant": other}


def test_statements_inside_a_tenant_transaction_run_one_by_one(app_pool: ConnectionPool[Any], new_tenant: Any) -> None:
    tenant = new_tenant()
    with tenant_transaction(tenant, pool=app_pool) as conn:
        # Results (and errors) are there at once, not at the end of the block.
        assert conn.execute("UPDATE app.tenants SET settings = settings").rowcount == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(
                "INSERT INTO app.audit_events (tenant_id, id, occurred_at, principal_id, action,"
                " resource_type, decision) VALUES (%s, %s, now(), 'x', 'x', 'x', 'allow')",
                (uuid.uuid4(), uuid.uuid4()),
            )
        assert conn.execute("SELECT app.current_tenant_id() AS tenant").fetchone() == {"tenant": tenant}


def test_session_state_left_by_a_borrower_is_gone_in_the_next_transaction(
    one_connection: ConnectionPool[Any], one_control_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    tenant = new_tenant()
    cases: list[tuple[ConnectionPool[Any], Callable[[], Any], LiteralString, str, str]] = [
        (
            one_connection,
            lambda: tenant_transaction(tenant, pool=one_connection),
            "SET ROLE qp_runtime",
            "qp_runtime",
            "qp_app",
        ),
        (
            one_control_connection,
            lambda: platform_transaction(pool=one_control_connection),
            "SET ROLE qp_platform",
            "qp_platform",
            "qp_control",
        ),
    ]
    for pool, transaction, set_role, role, login in cases:
        with transaction() as conn:
            # Plain SETs outlive the transaction that ran them: the session keeps them.
            conn.execute("SET lock_timeout = '123s'")
            conn.execute(set_role)
        with pool.connection() as conn:
            assert conn.execute("SHOW lock_timeout").fetchone() == {"lock_timeout": "123s"}
            assert conn.execute("SELECT current_user AS role").fetchone() == {"role": role}
        with transaction() as conn:
            assert conn.execute("SHOW lock_timeout").fetchone() == {"lock_timeout": "0"}
            assert conn.execute("SELECT current_user AS role").fetchone() == {"role": role}
        # The reset committed with that transaction and its SET LOCAL ROLE ended with it: the session is the login.
        with pool.connection() as conn:
            assert conn.execute("SELECT current_user AS role").fetchone() == {"role": login}


def test_the_token_take_keeps_its_commit_setting_to_itself(
    one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    tenant = new_tenant()
    limit = RateLimit(capacity=2, refill_per_second=NO_REFILL)
    assert [take_tenant_token(tenant, limit, pool=one_connection).allowed for _ in range(3)] == [True, True, False]
    refused = take_tenant_token(tenant, limit, pool=one_connection)
    assert refused.retry_after_s > 0
    # Asynchronous commit is for the bucket only: the next borrower (even one that resets nothing) commits durably.
    with one_connection.connection() as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == {"synchronous_commit": "on"}


def test_commit_callbacks_run_once_the_connection_is_back_and_only_after_a_commit(
    one_connection: ConnectionPool[Any], new_tenant: Any
) -> None:
    tenant = new_tenant()
    ran: list[Any] = []

    def released() -> bool:
        # The pool has one connection: borrowing it succeeds only once the transaction has handed it back.
        with one_connection.connection(timeout=1) as conn:
            return conn.info.transaction_status == TransactionStatus.IDLE

    with tenant_transaction(tenant, pool=one_connection) as conn:
        bag = transaction_bag(conn, "kept")
        assert bag is not None and transaction_bag(conn, "kept") is bag
        bag.append("queued")
        when_released(conn, lambda: ran.append(("commit", list(bag), released())), only="commit")
        when_released(conn, lambda: ran.append("rollback"), only="rollback")
    assert ran == [("commit", ["queued"], True)]

    ran.clear()
    with pytest.raises(RuntimeError, match="the caller's failure"):
        with tenant_transaction(tenant, pool=one_connection) as conn:
            assert transaction_bag(conn, "kept") == []  # a new transaction's own
            when_released(conn, lambda: ran.append("commit"), only="commit")
            when_released(conn, lambda: ran.append("rollback"), only="rollback")
            raise RuntimeError("the caller's failure")
    assert ran == ["rollback"]

    # A COMMIT that fails is a rollback too: the failed statement of a batched write surfaces at its end.
    ran.clear()
    with pytest.raises(psycopg.errors.DivisionByZero):
        with tenant_write(tenant, pool=one_connection) as conn:
            when_released(conn, lambda: ran.append("commit"), only="commit")
            when_released(conn, lambda: ran.append("rollback"), only="rollback")
            conn.execute("SELECT 1 / 0")
    assert ran == ["rollback"]

    with one_connection.connection() as unheld:
        assert transaction_bag(unheld, "kept") is None
        assert when_released(unheld, lambda: ran.append("never"), only="commit") is False
