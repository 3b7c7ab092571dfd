# intent_ref: platform.ingress
"""A tenant's record of rejected intent-requests events stays bounded on the real database: each new row trims that
tenant's oldest beyond the kept count and any past the retention, never another tenant's, and the app itself can
delete nothing but by that rule (migration 0026)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.db.session import runtime_transaction, tenant_transaction
from shared.ingress.rejections import NewRejection, list_rejections, record_rejection

pytestmark = pytest.mark.integration

_FLOOR = 100  # what the database keeps whatever a caller asks


def _rejection(sequence_number: int) -> NewRejection:
    return NewRejection(
        hub="intent-requests",
        partition_id="0",
        sequence_number=sequence_number,
        enqueued_time=None,
        reason="invalid_request",
        detail={"type": "about:blank", "title": "Invalid", "status": 422},
    )


def _record(pool: ConnectionPool[Any], tenant: uuid.UUID, first: int, count: int, **trim: Any) -> list[bool]:
    recorded = []
    for sequence_number in range(first, first + count):
        with tenant_transaction(tenant, pool=pool) as conn:
            recorded.append(record_rejection(conn, _rejection(sequence_number), **trim))
    return recorded


def _sequence_numbers(pool: ConnectionPool[Any], tenant: uuid.UUID) -> list[int]:
    with tenant_transaction(tenant, pool=pool) as conn:
        page, _ = list_rejections(conn, limit=10_000)
    return [rejection.sequence_number for rejection in page]


def test_a_tenant_keeps_its_newest_rejections_and_no_other_tenant_is_trimmed(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    flooding, quiet = new_tenant(), new_tenant()
    _record(app_pool, quiet, 0, 5, keep=_FLOOR)
    _record(app_pool, flooding, 0, _FLOOR + 30, keep=_FLOOR)
    # The newest 100 of the flooding tenant, newest first; the quiet tenant's five untouched.
    assert _sequence_numbers(app_pool, flooding) == list(range(_FLOOR + 29, 29, -1))
    assert _sequence_numbers(app_pool, quiet) == [4, 3, 2, 1, 0]


def test_a_redelivered_event_trims_nothing(app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]) -> None:
    tenant = new_tenant()
    assert _record(app_pool, tenant, 0, _FLOOR, keep=_FLOOR) == [True] * _FLOOR
    assert _record(app_pool, tenant, 0, 1, keep=_FLOOR) == [False]  # the oldest again: recorded once, kept
    assert len(_sequence_numbers(app_pool, tenant)) == _FLOOR
    assert _sequence_numbers(app_pool, tenant)[-1] == 0


def test_rejections_past_the_retention_go_at_the_tenants_next_rejection(
    pg: Any, app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = new_tenant(), new_tenant()
    _record(app_pool, tenant, 0, 3)
    _record(app_pool, other, 0, 3)
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin:
        admin.execute(
            "UPDATE app.ingress_rejections SET created_at = now() - interval '31 days'"
            " WHERE tenant_id = ANY(%s) AND sequence_number < 2",
            ([tenant, other],),
        )
    _record(app_pool, tenant, 3, 1, retention=timedelta(days=30))
    assert _sequence_numbers(app_pool, tenant) == [3, 2]
    # Another tenant's old rows wait for its own next rejection.
    assert sorted(_sequence_numbers(app_pool, other)) == [0, 1, 2]


def test_no_caller_can_trim_below_the_floors(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _record(app_pool, tenant, 0, _FLOOR + 5, keep=_FLOOR)
    with tenant_transaction(tenant, pool=app_pool) as conn:
        removed = conn.execute("SELECT app.trim_ingress_rejections(0, interval '0 seconds') AS n").fetchone()
    assert removed == {"n": 0}  # keep 0 and age 0 ask for everything; the floors keep 100 and a day's worth
    assert len(_sequence_numbers(app_pool, tenant)) == _FLOOR


def test_the_app_deletes_no_rejection_itself_and_trims_nothing_without_a_tenant(
    app_pool: ConnectionPool[Any], new_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant = new_tenant()
    _record(app_pool, tenant, 0, 2)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with tenant_transaction(tenant, pool=app_pool) as conn:
            conn.execute("DELETE FROM app.ingress_rejections")
    with runtime_transaction(pool=app_pool) as conn:
        removed = conn.execute("SELECT app.trim_ingress_rejections(100, interval '1 day') AS n").fetchone()
    assert removed == {"n": 0}
    assert _sequence_numbers(app_pool, tenant) == [1, 0]
