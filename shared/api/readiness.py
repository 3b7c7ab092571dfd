# intent_ref: platform.gateway
"""Readiness checks of the dependencies the API cannot serve without: Postgres and blob storage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from azure.storage.blob import BlobServiceClient

from shared.config import get_settings
from shared.db.pool import get_control_pool, get_pool
from shared.storage.blob import blob_service_client

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one dependency check."""

    name: str
    ok: bool
    detail: str = ""


def check_postgres() -> CheckResult:
    """Borrow a connection of each login (tenant requests, control plane) and run one statement on it."""
    for login, pool in (("app", get_pool), ("control", get_control_pool)):
        try:
            with pool().connection(timeout=_PROBE_TIMEOUT_S) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            # Either login down stops the API: tenant lookups need the control plane, every request the app login.
            logger.warning("readiness: postgres (%s login) is down: %s", login, exc)
            return CheckResult("postgres", False, f"{login} login: {type(exc).__name__}")
    return CheckResult("postgres", True)


@lru_cache(maxsize=1)
def _probe_client() -> BlobServiceClient:
    # No retries and short timeouts: a readiness probe must answer fast, not wait out a backoff.
    return blob_service_client(
        get_settings(), retry_total=0, connection_timeout=_PROBE_TIMEOUT_S, read_timeout=_PROBE_TIMEOUT_S
    )


def check_blob_storage() -> CheckResult:
    """Ask the blob service whether the artifacts container exists."""
    try:
        _probe_client().get_container_client(get_settings().QP_ARTIFACTS_CONTAINER).exists()
        return CheckResult("blob_storage", True)
    except Exception as exc:
        logger.warning("readiness: blob storage is down: %s", exc)
        return CheckResult("blob_storage", False, type(exc).__name__)


CHECKS: tuple[Callable[[], CheckResult], ...] = (check_postgres, check_blob_storage)


def run_checks() -> list[CheckResult]:
    """Run every readiness check."""
    return [check() for check in CHECKS]
