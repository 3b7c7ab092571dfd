# intent_ref: platform.tenant-isolation
"""A pass over the tenants a cross-tenant finder named: each tenant's work on its own, one tenant's failure logged and
counted without keeping the others back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar
from uuid import UUID

T = TypeVar("T")

logger = logging.getLogger(__name__)


def each_tenant(
    tenants: Iterable[UUID], work: Callable[[UUID], T], *, what: str, failures_expected: bool = False
) -> tuple[list[T], int]:
    """`work` for each tenant in turn; returns the results of those that succeeded and how many failed. A failure is
    logged with its traceback, or as a warning when `failures_expected` (an outage the next pass waits out)."""
    results: list[T] = []
    failed = 0
    for tenant_id in tenants:
        try:
            results.append(work(tenant_id))
        except Exception as exc:  # one tenant's trouble must not keep the others' work back
            if failures_expected:
                logger.warning("%s: tenant %s failed, left for the next run: %s", what, tenant_id, exc)
            else:
                logger.exception("%s: tenant %s failed, left for the next run", what, tenant_id)
            failed += 1
    return results, failed
