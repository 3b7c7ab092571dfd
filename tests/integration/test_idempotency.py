# intent_ref: platform.idempotency
"""Idempotency keys and the outbox against the real database, concurrency included."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import platform_transaction, tenant_transaction
from shared.events.outbox import enqueue
from shared.idempotency import IdempotencyKeyError, StoredResponse, claim, complete, fingerprint
from shared.idempotency_expiry import delete_expired_keys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenant_ids(new_tenant: Callable[[], uuid.UUID]) -> tuple[uuid.UUID, uuid.UUID]:
    return new_tenant(), new_tenant()


def _create_once(
    app_pool: ConnectionPool[Any], tenant_id: uuid.UUID, key: str, body: dict[str, Any], delay: float = 0.0
) -> tuple[StoredResponse, bool]:
    """The pattern a route uses: claim, do the work, complete; returns (response, whether it was a replay)."""
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        replay = claim(conn, key, fingerprint("POST", "/things", body))
        if replay is not None:
            return replay, True
        event_id = enqueue(conn, "thing.created", "things/1", body)
        time.sleep(delay)
        response = StoredResponse(201, {"event_id": str(event_id)}, {"Location": "/things/1"})
        complete(conn, key, response)
        return response, False


def _outbox_count(app_pool: ConnectionPool[Any], tenant_id: uuid.UUID) -> int:
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        return int(conn.execute("SELECT count(*) AS n FROM app.outbox").fetchone()["n"])


def test_same_key_same_body_replays(app_pool: ConnectionPool[Any], tenant_ids: tuple[uuid.UUID, uuid.UUID]) -> None:
    before = _outbox_count(app_pool, tenant_ids[0])
    first, replayed_first = _create_once(app_pool, tenant_ids[0], "k-replay", {"a": 1})
    second, replayed_second = _create_once(app_pool, tenant_ids[0], "k-replay", {"a": 1})
    assert (replayed_first, replayed_second) == (False, True)
    assert second == first
    assert _outbox_count(app_pool, tenant_ids[0]) == before + 1


def test_same_key_other_body_is_refused(app_pool: ConnectionPool[Any], tenant_ids: tuple[uuid.UUID, uuid.UUID]) -> None:
    _create_once(app_pool, tenant_ids[0], "k-other", {"a": 1})
    before = _outbox_count(app_pool, tenant_ids[0])
    with pytest.raises(IdempotencyKeyError, match="different request"):
        _create_once(app_pool, tenant_ids[0], "k-other", {"a": 2})
    assert _outbox_count(app_pool, tenant_ids[0]) == before


def test_malformed_key_is_refused(app_pool: ConnectionPool[Any], tenant_ids: tuple[uuid.UUID, uuid.UUID]) -> None:
    for key in ("", "has space", "x" * 256):
        with pytest.raises(IdempotencyKeyError):
            _create_once(app_pool, tenant_ids[0], key, {})


def test_keys_belong_to_their_tenant(app_pool: ConnectionPool[Any], tenant_ids: tuple[uuid.UUID, uuid.UUID]) -> None:
    _, replayed_a = _create_once(app_pool, tenant_ids[0], "k-shared", {"a": 1})
    _, replayed_b = _create_once(app_pool, tenant_ids[1], "k-shared", {"b": 1})
    assert (replayed_a, replayed_b) == (False, False)


def test_concurrent_duplicates_do_the_work_once(
    app_pool: ConnectionPool[Any], tenant_ids: tuple[uuid.UUID, uuid.UUID]
) -> None:
    before = _outbox_count(app_pool, tenant_ids[1])
    results: list[tuple[StoredResponse, bool]] = []
    errors: list[BaseException] = []

    def attempt(delay: float) -> None:
        try:
            results.append(_create_once(app_pool, tenant_ids[1], "k-race", {"race": True}, delay=delay))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(0.3 if i == 0 else 0.0,)) for i in range(4)]
    threads[0].start()
    time.sleep(0.1)  # the slow one claims first; the others then wait on its row
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert sorted(replayed for _, replayed in results) == [False, True, True, True]
    assert len({response.body["event_id"] for response, _ in results}) == 1
    assert _outbox_count(app_pool, tenant_ids[1]) == before + 1


def test_outbox_rows_are_tenant_scoped(app_pool: ConnectionPool[Any], tenant_ids: tuple[uuid.UUID, uuid.UUID]) -> None:
    with tenant_transaction(tenant_ids[0], pool=app_pool) as conn:
        event_id = enqueue(conn, "intent.created", "intents/x", {"name": "x"})
    with tenant_transaction(tenant_ids[1], pool=app_pool) as conn:
        assert conn.execute("SELECT count(*) AS n FROM app.outbox WHERE id = %s", (event_id,)).fetchone()["n"] == 0
    with tenant_transaction(tenant_ids[0], pool=app_pool) as conn:
        row = conn.execute("SELECT event_type, data FROM app.outbox WHERE id = %s", (event_id,)).fetchone()
    assert row == {"event_type": "intent.created", "data": {"name": "x"}}


def test_expired_keys_are_deleted_with_their_answers_and_live_ones_kept(
    pg: Any,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    tenant_ids: tuple[uuid.UUID, uuid.UUID],
) -> None:
    run = uuid.uuid4().hex[:8]
    for tenant_id in tenant_ids:
        for state in ("expired", "live"):
            _create_once(app_pool, tenant_id, f"{run}-{state}", {"secret": "whsec_x"})
    with platform_transaction(pool=control_pool) as conn:
        for state in ("expired", "live"):
            claim(conn, f"{run}-{state}", "f", principal=f"operator-{run}")
            complete(conn, f"{run}-{state}", StoredResponse(201, {"id": state}, {}), principal=f"operator-{run}")
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        for table in ("app.idempotency_keys", "control.idempotency_keys"):
            admin.execute(
                f"UPDATE {table} SET expires_at = now() - interval '1 minute' WHERE key = %s",  # noqa: S608
                (f"{run}-expired",),
            )
        result = delete_expired_keys(pool=app_pool, control_pool=control_pool)
        left = admin.execute(
            "SELECT 'tenant', key FROM app.idempotency_keys WHERE key LIKE %(run)s"
            " UNION ALL SELECT 'control', key FROM control.idempotency_keys WHERE key LIKE %(run)s ORDER BY 1, 2",
            {"run": f"{run}-%"},
        ).fetchall()
    assert result.failed_tenants == 0 and result.tenant_keys >= 2 and result.control_keys >= 1
    assert left == [("control", f"{run}-live"), ("tenant", f"{run}-live"), ("tenant", f"{run}-live")]
    # A key deleted on expiry may be used again, for another request.
    _, replayed = _create_once(app_pool, tenant_ids[0], f"{run}-expired", {"another": "body"})
    assert replayed is False


def test_a_tenants_backlog_of_expired_keys_goes_in_one_run_within_its_budget(
    pg: Any,
    app_pool: ConnectionPool[Any],
    control_pool: ConnectionPool[Any],
    new_tenant: Callable[[], uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One batch per tenant per run deleted fewer keys a minute than a tenant may create: its expired keys, and the
    # sealed secrets in their answers, piled up for days. A run now deletes batch after batch within its budget.
    from shared import idempotency_expiry

    monkeypatch.setattr(idempotency_expiry, "MAX_KEYS_PER_TENANT", 10)
    tenant_id = new_tenant()

    def expire(count: int) -> None:
        with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
            admin.execute(
                "INSERT INTO app.idempotency_keys (tenant_id, key, fingerprint, expires_at)"
                " SELECT %s, 'backlog-' || n, 'f', now() - interval '1 minute' FROM generate_series(1, %s) AS n",
                (tenant_id, count),
            )

    def left() -> int:
        with tenant_transaction(tenant_id, pool=app_pool) as conn:
            return int(conn.execute("SELECT count(*) AS n FROM app.idempotency_keys").fetchone()["n"])

    expire(35)
    delete_expired_keys(pool=app_pool, control_pool=control_pool)
    assert left() == 0
    # Past its budget a run still deletes each tenant's first batch, and leaves the rest to the next run. Counted by
    # the run's transactions of this tenant, not by the keys left: another test's run may delete them meanwhile.
    batches: list[uuid.UUID] = []
    pinned = idempotency_expiry.tenant_transaction

    def counted(tenant: uuid.UUID, **options: Any) -> Any:
        batches.append(tenant)
        return pinned(tenant, **options)

    monkeypatch.setattr(idempotency_expiry, "tenant_transaction", counted)
    monkeypatch.setattr(idempotency_expiry, "RUN_BUDGET_S", 0.0)
    expire(35)
    delete_expired_keys(pool=app_pool, control_pool=control_pool)
    assert batches.count(tenant_id) <= 1  # 4 batches without the budget (none if another run took them all first)


def test_a_batch_of_expired_keys_deletes_at_most_its_keys_whatever_the_plan(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    # `IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` rescanned per outer row (a nested loop) skipped the keys the
    # delete had just removed and took the next ones: a batch of 7 deleted all 30 (migration 0077).
    tenant_id = new_tenant()
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "INSERT INTO app.idempotency_keys (tenant_id, key, fingerprint, expires_at) SELECT %s, 'batch-' || n,"
            " 'f', now() - interval '1 hour' + n * interval '1 second' FROM generate_series(1, 30) AS n",
            (tenant_id,),
        )
    with tenant_transaction(tenant_id, pool=app_pool) as conn:
        for setting in ("enable_hashjoin", "enable_mergejoin", "enable_hashagg", "enable_material", "enable_sort"):
            conn.execute(f"SET LOCAL {setting} = off")  # noqa: S608  # a fixed name of this list
        removed = conn.execute("SELECT app.delete_expired_idempotency_keys(7) AS removed").fetchone()
        left = conn.execute("SELECT count(*) AS n FROM app.idempotency_keys").fetchone()
    assert removed is not None and removed["removed"] == 7
    assert left is not None and left["n"] == 23
