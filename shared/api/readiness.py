# intent_ref: platform.gateway
"""Readiness checks of the dependencies the API cannot serve without: Postgres and blob storage."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from azure.storage.blob import BlobServiceClient
from starlette.concurrency import run_in_threadpool

from shared.config import Settings, get_settings
from shared.db.pool import get_control_pool, get_pool
from shared.storage.blob import blob_service_client

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0

REUSED_FOR_S = 1.5
"""How long one probe's results answer every readiness request of the process: a probe borrows a connection of
each pool and calls blob storage, which a burst of probes must not do once each."""

_WAIT_S = 3 * _PROBE_TIMEOUT_S + 1.0
"""The longest a request waits for the probe in flight: its three checks' own timeouts, and a second."""


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


@dataclass(frozen=True)
class _Probe:
    """One probe's results, when they were taken, and under which settings (a test's new settings are a new app)."""

    results: tuple[CheckResult, ...]
    at: float
    settings: Settings


_last: _Probe | None = None
_in_flight: tuple[asyncio.AbstractEventLoop, asyncio.Task[list[CheckResult]]] | None = None


async def current_checks() -> list[CheckResult]:
    """The checks' results, at most REUSED_FOR_S old: one probe at a time per process, on one worker thread, and
    every other request meanwhile waits for it on the event loop (holding no thread), at most _WAIT_S."""
    last = _last
    if last is not None and last.settings is get_settings() and time.monotonic() - last.at < REUSED_FOR_S:
        return list(last.results)
    try:
        # Shielded: a request that gives up (its client gone, its bound reached) leaves the probe to the others.
        return await asyncio.wait_for(asyncio.shield(_probe_task()), _WAIT_S)
    except TimeoutError:
        logger.warning("readiness: the probe in flight took longer than %.0f s", _WAIT_S)
        return [CheckResult("probe", False, "TimeoutError")]


def _probe_task() -> asyncio.Task[list[CheckResult]]:
    """The probe in flight on this event loop, or a new one."""
    global _in_flight
    loop = asyncio.get_running_loop()
    if _in_flight is not None and _in_flight[0] is loop and not _in_flight[1].done():
        return _in_flight[1]
    task = loop.create_task(_probe())
    _in_flight = (loop, task)
    return task


async def _probe() -> list[CheckResult]:
    """Run every check on a worker thread and keep the results for the requests of the next REUSED_FOR_S."""
    global _last
    settings = get_settings()
    results = await run_in_threadpool(run_checks)
    _last = _Probe(tuple(results), time.monotonic(), settings)
    return results
