# intent_ref: platform.rate-limits
"""Per-tenant request rate limits: a token bucket in Postgres, taken in a short tenant transaction of its own."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from shared.config import Settings, get_settings
from shared.db.session import tenant_write

logger = logging.getLogger(__name__)

_TAKE = "SELECT allowed, retry_after_s FROM app.take_request_token(%s, %s)"


@dataclass(frozen=True)
class RateLimit:
    """A bucket of `capacity` requests (the burst), refilled at `refill_per_second`."""

    capacity: float
    refill_per_second: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capacity) and self.capacity >= 1):
            raise ValueError("capacity must be a finite number >= 1")
        if not (math.isfinite(self.refill_per_second) and self.refill_per_second > 0):
            raise ValueError("refill_per_second must be a finite number > 0")


@dataclass(frozen=True)
class RateDecision:
    """Whether the request may proceed and, if not, how long until a token is available."""

    allowed: bool
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """The `Retry-After` value: whole seconds, rounded up, at least 1 (0 would invite a hot loop)."""
        return str(max(1, math.ceil(self.retry_after_s)))


def take_request_token(conn: psycopg.Connection[Any], limit: RateLimit) -> RateDecision:
    """Take one token from the current tenant's bucket, inside the caller's tenant transaction.

    Without a tenant context the database refuses (row-level security raises InsufficientPrivilege):
    there is no shared bucket.
    """
    return _decision(conn.cursor(row_factory=tuple_row).execute(_TAKE, (limit.capacity, limit.refill_per_second)))


def take_tenant_token(tenant_id: UUID, limit: RateLimit, *, pool: ConnectionPool[Any] | None = None) -> RateDecision:
    """Take one token from `tenant_id`'s bucket in a transaction of its own: one round trip to the server."""
    with tenant_write(tenant_id, pool=pool) as conn:
        # The commit needs no WAL flush: the bucket is UNLOGGED, so a crash empties it anyway, and losing a few
        # consumed tokens only lets a few extra requests through once. Waiting for the flush cost an fsync per
        # request (docs/adr/0017-request-path-performance.md).
        conn.execute("SET LOCAL synchronous_commit = off")
        cursor = conn.cursor(row_factory=tuple_row).execute(_TAKE, (limit.capacity, limit.refill_per_second))
    return _decision(cursor)


def _decision(cursor: psycopg.Cursor[tuple[Any, ...]]) -> RateDecision:
    row = cursor.fetchone()
    if row is None:  # the function always returns one row; None would mean the schema is not what we expect
        raise RuntimeError("app.take_request_token returned no row")
    allowed, retry_after_s = row
    return RateDecision(allowed=bool(allowed), retry_after_s=float(retry_after_s))


def _positive_number(quotas: Mapping[str, Any], key: str, default: int) -> float:
    value = quotas.get(key)
    if value is None:
        return float(default)
    # bool is an int in Python; `true` in a quota is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        # A bad quota must not take the tenant offline: fall back to the platform default, loudly.
        logger.warning("ignoring invalid tenant quota %s=%r; using the platform default %s", key, value, default)
        return float(default)
    return float(value)


def limit_for(quotas: Mapping[str, Any], settings: Settings | None = None) -> RateLimit:
    """The tenant's limit from its quotas (`requests_per_minute`, `burst`), else the platform defaults."""
    settings = settings or get_settings()
    per_minute = _positive_number(quotas, "requests_per_minute", settings.QP_RATE_LIMIT_PER_MINUTE)
    burst = _positive_number(quotas, "burst", settings.QP_RATE_LIMIT_BURST)
    # A burst below one request would refuse everything; one request is the smallest useful bucket.
    return RateLimit(capacity=max(1.0, burst), refill_per_second=per_minute / 60.0)
