# intent_ref: platform.rate-limits
"""The Postgres token bucket: exact under concurrency, refills, per tenant, refused without a tenant."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.config import Settings
from shared.db.session import runtime_transaction, tenant_transaction
from shared.ratelimit import RateDecision, RateLimit, limit_for, take_request_token

pytestmark = pytest.mark.integration

_SETTINGS = {"QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true", "QP_DATABASE_CONTROL_URL": "x"}
# Refill so slow that nothing accrues during a test: the bucket holds exactly its capacity.
NO_REFILL = 1e-9


def _take(pool: ConnectionPool[Any], tenant: uuid.UUID, limit: RateLimit) -> RateDecision:
    with tenant_transaction(tenant, pool=pool) as conn:
        return take_request_token(conn, limit)


def test_exact_under_concurrency(app_pool: ConnectionPool[Any], new_tenant: Any) -> None:
    tenant = new_tenant()
    limit = RateLimit(capacity=100, refill_per_second=NO_REFILL)
    allowed = [0] * 16
    start = threading.Barrier(16)
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            start.wait()
            for _ in range(50):
                if _take(app_pool, tenant, limit).allowed:
                    allowed[slot] += 1
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(allowed) == 100
    assert sum(1 for n in allowed if n) > 1  # the grants really were contended across threads


def test_refills_over_time_up_to_capacity(app_pool: ConnectionPool[Any], new_tenant: Any) -> None:
    tenant = new_tenant()
    # One token per 100 ms: fast enough for short sleeps, slow enough that a loaded machine's few
    # milliseconds between takes cannot refill a whole token.
    limit = RateLimit(capacity=2, refill_per_second=10)
    assert [_take(app_pool, tenant, limit).allowed for _ in range(2)] == [True, True]
    refused = _take(app_pool, tenant, limit)
    assert not refused.allowed and 0 < refused.retry_after_s <= 0.1 + 1e-9
    time.sleep(0.15)
    assert _take(app_pool, tenant, limit).allowed
    time.sleep(0.5)  # five tokens' worth of time, but the bucket holds 2
    assert [_take(app_pool, tenant, limit).allowed for _ in range(3)] == [True, True, False]


def test_an_empty_bucket_says_when_to_retry(app_pool: ConnectionPool[Any], new_tenant: Any) -> None:
    tenant = new_tenant()
    limit = RateLimit(capacity=1, refill_per_second=0.5)  # one token every 2 s
    first = _take(app_pool, tenant, limit)
    assert first == RateDecision(allowed=True, retry_after_s=0.0)
    second = _take(app_pool, tenant, limit)
    assert not second.allowed
    assert 1.5 < second.retry_after_s <= 2.0
    assert second.retry_after_header == "2"
    # Refused takes do not consume: the wait keeps shrinking rather than growing.
    time.sleep(0.1)
    third = _take(app_pool, tenant, limit)
    assert not third.allowed and third.retry_after_s < second.retry_after_s


def test_tenants_do_not_share_buckets(app_pool: ConnectionPool[Any], new_tenant: Any) -> None:
    tenant_a, tenant_b = new_tenant(), new_tenant()
    limit = RateLimit(capacity=3, refill_per_second=NO_REFILL)
    assert [_take(app_pool, tenant_a, limit).allowed for _ in range(4)] == [True, True, True, False]
    assert [_take(app_pool, tenant_b, limit).allowed for _ in range(4)] == [True, True, True, False]
    with tenant_transaction(tenant_a, pool=app_pool) as conn:
        # A sees and can change only its own bucket.
        assert [r["tenant_id"] for r in conn.execute("SELECT tenant_id FROM app.rate_buckets")] == [tenant_a]
        assert conn.execute("UPDATE app.rate_buckets SET tokens = 1000 WHERE tenant_id = %s", (tenant_b,)).rowcount == 0
    assert not _take(app_pool, tenant_b, limit).allowed


def test_no_tenant_context_is_refused_not_shared(app_pool: ConnectionPool[Any], new_tenant: Any) -> None:
    tenant = new_tenant()
    limit = RateLimit(capacity=1, refill_per_second=NO_REFILL)
    # Every attempt fails: there is no tenant-less bucket that a first call could create and later ones drain.
    for _ in range(2):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            with runtime_transaction(pool=app_pool) as conn:
                take_request_token(conn, limit)
    assert _take(app_pool, tenant, limit).allowed  # and no tenant's bucket was touched


def test_the_runtime_role_cannot_delete_or_truncate_buckets(app_pool: ConnectionPool[Any], new_tenant: Any) -> None:
    tenant = new_tenant()
    limit = RateLimit(capacity=1, refill_per_second=NO_REFILL)
    assert _take(app_pool, tenant, limit).allowed
    for statement in ("DELETE FROM app.rate_buckets", "TRUNCATE app.rate_buckets"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with tenant_transaction(tenant, pool=app_pool) as conn:
                conn.execute(statement)  # type: ignore[arg-type]
    assert not _take(app_pool, tenant, limit).allowed  # a refused reset leaves the bucket empty


def test_limit_for_reads_tenant_quotas_with_platform_defaults() -> None:
    settings = Settings(QP_DATABASE_URL="x", QP_RATE_LIMIT_PER_MINUTE=120, QP_RATE_LIMIT_BURST=7, **_SETTINGS)
    assert limit_for({}, settings) == RateLimit(capacity=7, refill_per_second=2.0)
    assert limit_for({"requests_per_minute": 30, "burst": 5}, settings) == RateLimit(5, 0.5)
    # A malformed quota falls back to the platform default instead of taking the tenant offline.
    for bad in (True, -1, 0, "100", float("nan"), None):
        assert limit_for({"requests_per_minute": bad, "burst": bad}, settings) == RateLimit(7, 2.0)
    for capacity, refill in ((0.5, 1.0), (1, 0.0), (1, float("inf"))):
        with pytest.raises(ValueError):
            RateLimit(capacity, refill)
