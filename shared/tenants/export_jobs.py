# intent_ref: platform.tenants
"""A tenant's export as a job (ADR 0012, amended 2026-12-07): a request records it, the `tenant_exports` timer runs it.

The export copies every blob of the tenant through the host, which outlasts an HTTP request's front-end limit for a
big tenant. So `POST /tenants/{id}/export` records a job in `control.tenant_export_jobs` (migration 0070) and answers
202; `run_export_jobs` claims the oldest queued job (or a running one whose lease went stale: a host killed
mid-export) with FOR UPDATE SKIP LOCKED in a short control-plane transaction, marks it running under a lease, removes
the folder a killed attempt was writing, records the folder of this attempt, runs `export_tenant` outside any
transaction while a thread renews the lease, and records the outcome. Every update of an attempt is fenced by its
number: an attempt taken for dead changes nothing of the next one, and removes what it wrote itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from azure.core.exceptions import AzureError
from azure.storage.blob import ContainerClient
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.audit import AuditStore
from shared.config import get_settings
from shared.db.session import platform_transaction
from shared.storage.blob import artifacts_container
from shared.tenants.offboarding import TenantGoneError, export_folder, export_tenant, remove_export
from shared.tenants.repository import get_tenant

logger = logging.getLogger(__name__)

LEASE_S = 300
"""How long a running attempt holds its job without renewing it; past it, the attempt is taken for dead."""
RENEW_S = 60.0
"""How often a running attempt renews its lease."""
RUN_BUDGET_S = 600.0
"""A run starts no job once this long has passed (the host ends a run after `functionTimeout`, an hour)."""
MAX_JOBS = 4
"""Jobs one run takes at most, oldest first: the next run takes the rest."""
MAX_ATTEMPTS = 3
"""Attempts of one job: one killed that often (an export longer than the host lets a run last) fails for good."""
RETRY_AFTER_S = 30
"""What the answers tell a caller to wait before looking at a queued or running job: the timer's period."""
ACTIVE = ("queued", "running")

_NAMES = (
    "id",
    "tenant_id",
    "status",
    "requested_by",
    "requested_at",
    "started_at",
    "finished_at",
    "attempts",
    "lease_until",
    "folder",
    "result",
    "failure",
)
_COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in _NAMES)
# KEY SHARE, the lock the job's own foreign key takes: an erasure's row delete waits for the request's commit, then
# deletes the job; a mark for erasure taken before is seen here.
_EXPORTABLE = "SELECT erasing_since FROM app.tenants WHERE id = %s FOR KEY SHARE"
_ENQUEUE = sql.SQL(
    "INSERT INTO control.tenant_export_jobs (tenant_id, requested_by) VALUES (%s, %s)"
    " ON CONFLICT (tenant_id) WHERE status IN ('queued', 'running') DO NOTHING RETURNING {}"
).format(_COLUMNS)
_ACTIVE_JOB = sql.SQL(
    "SELECT {} FROM control.tenant_export_jobs WHERE tenant_id = %s AND status IN ('queued', 'running')"
).format(_COLUMNS)
_JOB = sql.SQL("SELECT {} FROM control.tenant_export_jobs WHERE tenant_id = %s AND id = %s").format(_COLUMNS)
_RECENT = sql.SQL(
    "SELECT {} FROM control.tenant_export_jobs WHERE tenant_id = %s ORDER BY requested_at DESC, id DESC LIMIT %s"
).format(_COLUMNS)
_DUE = sql.SQL(
    "SELECT {} FROM control.tenant_export_jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < now())"
    " ORDER BY requested_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
).format(_COLUMNS)
_CLAIM = sql.SQL(
    "UPDATE control.tenant_export_jobs SET status = 'running', attempts = attempts + 1,"
    " lease_until = now() + make_interval(secs => %s), started_at = coalesce(started_at, now())"
    " WHERE id = %s RETURNING {}"
).format(_COLUMNS)
# Every update of an attempt names it: one taken for dead (or whose job was erased) changes nothing.
_BEGIN_ATTEMPT = (
    "UPDATE control.tenant_export_jobs SET folder = %s WHERE id = %s AND attempts = %s AND status = 'running'"
)
_RENEW = (
    "UPDATE control.tenant_export_jobs SET lease_until = now() + make_interval(secs => %s)"
    " WHERE id = %s AND attempts = %s AND status = 'running'"
)
_SUCCEEDED = (
    "UPDATE control.tenant_export_jobs SET status = 'succeeded', finished_at = now(), lease_until = NULL, result = %s"
    " WHERE id = %s AND attempts = %s AND status = 'running'"
)
_FAILED = (
    "UPDATE control.tenant_export_jobs SET status = 'failed', finished_at = now(), lease_until = NULL, failure = %s"
    " WHERE id = %s AND attempts = %s AND status = 'running'"
)


@dataclass(frozen=True)
class ExportJob:
    """One export job as recorded: its state, and when succeeded where the export is (`result`)."""

    id: UUID
    tenant_id: UUID
    status: str
    requested_by: str
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    lease_until: datetime | None
    folder: str | None
    result: dict[str, Any] | None
    failure: str | None

    @classmethod
    def of(cls, row: DictRow) -> ExportJob:
        """The job of a row of `control.tenant_export_jobs`."""
        return cls(**{name: row[name] for name in _NAMES})


class ExportRefusedError(LookupError):
    """The tenant is gone or marked for erasure: no job is recorded."""


def hold_exportable(conn: psycopg.Connection[DictRow], tenant_id: UUID) -> None:
    """In the caller's control-plane transaction: hold the tenant row (KEY SHARE, until the transaction ends) and
    ExportRefusedError when it is gone or marked for erasure. Nothing is written."""
    row = conn.execute(_EXPORTABLE, (tenant_id,)).fetchone()
    if row is None or row["erasing_since"] is not None:
        raise ExportRefusedError(str(tenant_id))


def enqueue_export(conn: psycopg.Connection[DictRow], tenant_id: UUID, requested_by: str) -> tuple[ExportJob, bool]:
    """In the caller's control-plane transaction, after `hold_exportable`: a new queued job of the tenant, or the one
    already queued or running (one export of a tenant at a time); with whether this call created it."""
    # Twice at most: the job that kept this one out may have ended between the insert and the read.
    for _ in range(2):
        created = conn.execute(_ENQUEUE, (tenant_id, requested_by)).fetchone()
        if created is not None:
            return ExportJob.of(created), True
        active = conn.execute(_ACTIVE_JOB, (tenant_id,)).fetchone()
        if active is not None:
            return ExportJob.of(active), False
    raise RuntimeError("an export job of the tenant kept ending and starting")  # pragma: no cover


def get_export_job(conn: psycopg.Connection[DictRow], tenant_id: UUID, job_id: UUID) -> ExportJob | None:
    """The tenant's job `job_id` (None for an unknown id, or one of another tenant)."""
    row = conn.execute(_JOB, (tenant_id, job_id)).fetchone()
    return ExportJob.of(row) if row else None


def recent_export_jobs(conn: psycopg.Connection[DictRow], tenant_id: UUID, limit: int) -> list[ExportJob]:
    """The tenant's `limit` most recently requested jobs, newest first."""
    return [ExportJob.of(row) for row in conn.execute(_RECENT, (tenant_id, limit)).fetchall()]


@dataclass(frozen=True)
class RunResult:
    """What one run did: jobs it took, and how they ended (`retried`: jobs whose killed attempt it removed first)."""

    taken: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0


def run_export_jobs(
    container: ContainerClient | None = None,
    *,
    max_jobs: int = MAX_JOBS,
    budget_s: float = RUN_BUDGET_S,
    audit_store: AuditStore | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> RunResult:
    """Run up to `max_jobs` due jobs one after another, oldest first, starting none once `budget_s` has passed.

    A job's export runs to its end once begun (it cannot be resumed); the host's time limit bounds it, and a job whose
    attempts the host kept ending fails after `MAX_ATTEMPTS`. `container` is the artifacts container (the background
    one by default, asked for only when there is a job)."""
    deadline = time.monotonic() + budget_s
    taken = succeeded = failed = retried = 0
    blobs = container
    while taken < max_jobs and time.monotonic() < deadline:
        job = _claim(control_pool)
        if job is None:
            break
        taken += 1
        retried += job.attempts > 1
        blobs = blobs if blobs is not None else artifacts_container(get_settings())
        if _run(job, blobs, audit_store, control_pool):
            succeeded += 1
        else:
            failed += 1
    return RunResult(taken, succeeded, failed, retried)


def _claim(control_pool: ConnectionPool[Any] | None) -> ExportJob | None:
    """The oldest due job, marked running under a fresh lease as a new attempt, in a short transaction of its own."""
    with platform_transaction(pool=control_pool) as conn:
        due = conn.execute(_DUE).fetchone()
        if due is None:
            return None
        row = conn.execute(_CLAIM, (LEASE_S, due["id"])).fetchone()
    assert row is not None  # locked above
    return ExportJob.of(row)


def _run(
    job: ExportJob, container: ContainerClient, audit_store: AuditStore | None, pool: ConnectionPool[Any] | None
) -> bool:
    """One attempt of `job`: the killed attempt's folder removed, this one's recorded, the export run; whether it
    succeeded."""
    if job.folder is not None:
        # A killed attempt's folder, without its manifest or with it: no half export is left beside the new one.
        logger.warning(
            "export job %s of tenant %s: attempt %d removes its last one's folder", job.id, job.tenant_id, job.attempts
        )
        remove_export(job.tenant_id, container, job.folder)
    if job.attempts > MAX_ATTEMPTS:
        return _fail(job, "attempts-exhausted", pool)
    with platform_transaction(pool=pool) as conn:
        tenant = get_tenant(conn, job.tenant_id)
    if tenant is None or tenant.erasing_since is not None:
        return _fail(job, "tenant-gone", pool)
    folder = export_folder(job.tenant_id, datetime.now(UTC))
    with platform_transaction(pool=pool) as conn:
        if not conn.execute(_BEGIN_ATTEMPT, (folder, job.id, job.attempts)).rowcount:
            return False  # erased meanwhile (its jobs went with it), or taken by another run: nothing written yet
    try:
        with _leased(job, pool):
            result = export_tenant(tenant, container, audit_store, folder=folder)
    except TenantGoneError:
        return _fail(job, "tenant-gone", pool)
    except Exception as exc:
        # The export removed what it wrote; the kind is recorded, the error itself logged for operators only.
        kind = _failure_kind(exc)
        logger.exception("export job %s of tenant %s failed (%s)", job.id, job.tenant_id, kind)
        return _fail(job, kind, pool)
    outcome = {
        "container": container.container_name,
        "blob_name": result.blob_name,
        "manifest": result.manifest,
        "counts": result.counts,
        "blobs": result.blobs,
        "blob_bytes": result.blob_bytes,
    }
    with platform_transaction(pool=pool) as conn:
        recorded = conn.execute(_SUCCEEDED, (Jsonb(outcome), job.id, job.attempts)).rowcount
    if not recorded:
        # Taken for dead (its lease not renewed) and claimed again, or erased: the export is no job's, so it goes.
        logger.warning(
            "export job %s of tenant %s: attempt %d lost its job; its folder is removed",
            job.id,
            job.tenant_id,
            job.attempts,
        )
        remove_export(job.tenant_id, container, folder)
        return False
    logger.info("export job %s of tenant %s succeeded: %d blobs", job.id, job.tenant_id, result.blobs)
    return True


def _fail(job: ExportJob, kind: str, pool: ConnectionPool[Any] | None) -> bool:
    """Record the attempt's job failed with `kind` (nothing when the job is gone or another attempt's); False."""
    with platform_transaction(pool=pool) as conn:
        conn.execute(_FAILED, (kind, job.id, job.attempts))
    return False


def _failure_kind(exc: Exception) -> str:
    """A short kind for a failed export's job: what a caller may see, never the error's text."""
    if isinstance(exc, AzureError):
        return "storage-unavailable"
    if isinstance(exc, psycopg.Error):
        return "database-unavailable"
    return "export-failed"


@contextmanager
def _leased(job: ExportJob, pool: ConnectionPool[Any] | None) -> Iterator[None]:
    """Renew the attempt's lease every `RENEW_S` while the block runs, from a thread of its own."""
    done = threading.Event()

    def renew() -> None:
        """Renew the lease until the block has ended or the job is no longer this attempt's."""
        while not done.wait(RENEW_S):
            try:
                with platform_transaction(pool=pool) as conn:
                    kept = conn.execute(_RENEW, (LEASE_S, job.id, job.attempts)).rowcount
            except Exception as exc:
                # The next renewal may get through; past the lease, another run takes the job, and this attempt's
                # record of its outcome then finds it another's.
                logger.warning("export job %s: its lease was not renewed (%s)", job.id, type(exc).__name__)
                continue
            if not kept:
                return  # erased meanwhile, or another attempt's: the export finds out by itself

    renewer = threading.Thread(target=renew, name=f"export-job-{job.id}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
