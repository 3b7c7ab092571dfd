# intent_ref: platform.tenant-isolation
"""A pass over the tenants a cross-tenant finder named: each tenant's work on its own, one tenant's failure logged and
named without keeping the others back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar
from uuid import UUID

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantPass(Generic[T]):
    """What a pass came to: the results of the tenants whose work succeeded and the tenants whose work failed, each
    in the order the tenants went."""

    results: list[T]
    failed: list[UUID]

    @property
    def failed_count(self) -> int:
        """How many tenants' work failed."""
        return len(self.failed)


def each_tenant(
    tenants: Iterable[UUID], work: Callable[[UUID], T], *, what: str, failures_expected: bool = False
) -> TenantPass[T]:
    """`work` for each tenant in turn; returns the results of those that succeeded and which failed. A failure is
    logged with its traceback, or as a warning when `failures_expected` (an outage the next pass waits out)."""
    results: list[T] = []
    failed: list[UUID] = []
    for tenant_id in tenants:
        try:
            results.append(work(tenant_id))
        except Exception as exc:  # one tenant's trouble must not keep the others' work back
            if failures_expected:
                logger.warning("%s: tenant %s failed, left for the next run: %s", what, tenant_id, exc)
            else:
                logger.exception("%s: tenant %s failed, left for the next run", what, tenant_id)
            failed.append(tenant_id)
    return TenantPass(results, failed)
