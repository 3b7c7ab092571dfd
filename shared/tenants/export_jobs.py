# intent_ref: platform.tenants
"""A tenant's export as a job (ADR 0012, amended 2026-12-07): a request records it, the `tenant_exports` timer runs it.

The export copies every blob of the tenant through the host, which outlasts an HTTP request's front-end limit for a
big tenant. So `POST /tenants/{id}/export` records a job in `control.tenant_export_jobs` (migration 0070) and answers
202; `run_export_jobs` claims the oldest queued job (or a running one whose lease went stale: a host killed
mid-export) with FOR UPDATE SKIP LOCKED in a short control-plane transaction, marks it running under a lease, removes
the folder a killed attempt was writing, records the folder of this attempt, runs `export_tenant` outside any
transaction while a thread renews the lease, and records the outcome. Every update of an attempt is fenced by its
number: an attempt taken for dead changes nothing of the next one, and removes what it wrote itself. A failed attempt
records its failure first, then removes what it wrote, bounded like every removal here (`CLEANUP_BUDGET_S`,
`CLEANUP_MAX_BLOBS`, the first refused delete): what is left stays listed for the next runs.

Every attempt's folder is listed in the job's `cleanup_folders` (migration 0071) before anything is written, and leaves
the list only when the attempt succeeds; each run first removes listed folders (any job's, a few per run), dropping a
name once its folder is listed empty and its writer has surely stopped. So what a failed, killed or lost attempt wrote
is removed by the timer even when storage refused the first removal. A database error in the job's own bookkeeping
ends the job `database-unavailable` and stops the run, rather than leaving it `running` until its lease runs out. A
listed name that is not a folder of the job's tenant's exports is never removed (it is logged and dropped). A run
that cannot have its storage client claims no job: the jobs wait queued for storage rather than failing one a run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.storage.blob import ContainerClient
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.audit import AuditStore
from shared.config import get_settings
from shared.db.session import platform_transaction
from shared.storage.blob import artifacts_container
from shared.tenants.offboarding import (
    NOTE_ERASED_TENANT,
    ExportTooLongError,
    TenantGoneError,
    export_folder,
    export_tenant,
    remove_export,
)
from shared.tenants.repository import briefly_waited, get_tenant

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
ATTEMPT_BUDGET_S = 45 * 60.0
"""An attempt's export stops (after its archive, before a blob or a chunk of one) this long after its run began and
fails `too-large`: below the host's `functionTimeout` (an hour), so the job says why rather than being ended by the
host three times."""
WRITER_BOUND_S = 3600.0
"""How long after its folder was named an attempt may still write to it: the host ends its run by then
(`functionTimeout`). A listed folder found empty is dropped from its job only past this, so one removal at least comes
after the last blob of an attempt that lost its lease and went on writing."""
CLEANUP_PER_RUN = 16
"""Listed folders one run removes at most, of jobs picked at random (none held back behind another's)."""
CLEANUP_BUDGET_S = 60.0
"""A removal pass (the run's first, of listed folders; an attempt's of its earlier attempts' folders; a failed
attempt's of its own) deletes nothing once this long has passed, and stops at the first delete storage refuses: in an
outage each delete waits out the client's retries, and the run's jobs come next. A folder not finished stays listed."""
CLEANUP_MAX_BLOBS = 1000
"""Blobs one removal pass deletes at most (as the `erased_tenant_blobs` timer): a big folder takes a few runs."""
BOOKKEEPING_PAUSES_S = (1.0, 2.0)
"""Pauses between the tries of recording a job's failure, riding out a short database outage."""
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
    "cleanup_folders",
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
# The last attempt's folder goes on the cleanup list (a job recorded before migration 0071 had it only in `folder`).
_CLAIM = sql.SQL(
    "UPDATE control.tenant_export_jobs SET status = 'running', attempts = attempts + 1,"
    " lease_until = now() + make_interval(secs => %s), started_at = coalesce(started_at, now()),"
    " cleanup_folders = CASE WHEN folder IS NULL OR folder = ANY (cleanup_folders) THEN cleanup_folders"
    " ELSE array_append(cleanup_folders, folder) END"
    " WHERE id = %s RETURNING {}"
).format(_COLUMNS)
# Every update of an attempt names it: one taken for dead (or whose job was erased) changes nothing.
_BEGIN_ATTEMPT = (
    "UPDATE control.tenant_export_jobs SET folder = %s, cleanup_folders = array_append(cleanup_folders, %s)"
    " WHERE id = %s AND attempts = %s AND status = 'running'"
)
_RENEW = (
    "UPDATE control.tenant_export_jobs SET lease_until = now() + make_interval(secs => %s)"
    " WHERE id = %s AND attempts = %s AND status = 'running'"
)
_SUCCEEDED = (
    "UPDATE control.tenant_export_jobs SET status = 'succeeded', finished_at = now(), lease_until = NULL, result = %s,"
    " cleanup_folders = array_remove(cleanup_folders, folder) WHERE id = %s AND attempts = %s AND status = 'running'"
)
# Jobs with folders to remove. The running attempt's own folder is never among them.
_CLEANUP_DUE = (
    "SELECT id, tenant_id, status, folder, cleanup_folders FROM control.tenant_export_jobs"
    " WHERE pg_catalog.cardinality(cleanup_folders) > 0 ORDER BY random() LIMIT %s"
)
_CLEANED = "UPDATE control.tenant_export_jobs SET cleanup_folders = array_remove(cleanup_folders, %s) WHERE id = %s"
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
    cleanup_folders: list[str]

    @classmethod
    def of(cls, row: DictRow) -> ExportJob:
        """The job of a row of `control.tenant_export_jobs`."""
        return cls(**{name: row[name] for name in _NAMES})


class ExportRefusedError(LookupError):
    """The tenant is gone or marked for erasure: no job is recorded."""


def hold_exportable(conn: psycopg.Connection[DictRow], tenant_id: UUID) -> None:
    """In the caller's control-plane transaction: hold the tenant row (KEY SHARE, until the transaction ends) and
    ExportRefusedError when it is gone or marked for erasure. Nothing is written. TenantRowBusyError (the transaction
    aborted) when the row's lock is not had within ROW_LOCK_WAIT_MS: an erasure's last transaction holds it, for which
    the request waited holding a connection of the control plane's small pool."""
    with briefly_waited(conn):
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
    attempt_budget_s: float = ATTEMPT_BUDGET_S,
    audit_store: AuditStore | None = None,
    control_pool: ConnectionPool[Any] | None = None,
) -> RunResult:
    """Remove the listed folders of failed, killed or lost attempts (`CLEANUP_PER_RUN` at most), then run up to
    `max_jobs` due jobs one after another, oldest first, starting none once `budget_s` has passed.

    A job's export runs to its end once begun (it cannot be resumed), or stops (after its archive, before a blob or a
    chunk of one) `attempt_budget_s` after the run began (`too-large`); a job whose attempts the host kept ending
    fails after `MAX_ATTEMPTS`. A database error in a job's bookkeeping ends it `database-unavailable` and stops the
    run. `container` is the artifacts container (the background one by default); a run that cannot have it claims no
    job and stops, the jobs waiting queued for storage."""
    began = time.monotonic()
    deadline, attempt_deadline = began + budget_s, began + attempt_budget_s
    taken = succeeded = failed = retried = 0
    blobs = container
    try:
        blobs = _clean_up(blobs, control_pool)
    except psycopg.Error as exc:
        logger.warning("export jobs: the folders to remove were not read (%s); this run stops", type(exc).__name__)
        return RunResult()
    except (AzureError, _NoStorageError) as exc:
        # Storage not reached even for its client: the folders wait for the next run, and no job is claimed (each
        # claimed would end `storage-unavailable` for good, one a run through an outage).
        _log_storage_stop(exc)
        return RunResult()
    try:
        # Before any claim, for the same reason.
        blobs = _storage(blobs) if max_jobs > 0 else blobs
    except _NoStorageError as exc:
        _log_storage_stop(exc)
        return RunResult()
    while blobs is not None and taken < max_jobs and time.monotonic() < deadline:
        try:
            job = _claim(control_pool)
        except psycopg.Error as exc:
            logger.warning("export jobs: no job was claimed (%s); this run stops", type(exc).__name__)
            break
        if job is None:
            break
        taken += 1
        retried += job.attempts > 1
        try:
            ok = _run(job, blobs, audit_store, control_pool, attempt_deadline)
        except _UnrecordedError:
            failed += 1
            break  # logged; the lease runs out and the next run takes the job
        except _StorageDownError:
            failed += 1
            break  # the jobs after it wait, queued, for a run that reaches storage
        except psycopg.Error as exc:
            failed += _database_failed(job, exc, control_pool)
            break
        succeeded += ok
        failed += not ok
    return RunResult(taken, succeeded, failed, retried)


class _UnrecordedError(Exception):
    """A job's failure could not be recorded, the database refusing each try."""


class _NoStorageError(Exception):
    """The artifacts container's client could not be made, or storage did not answer (its message: the error's
    type)."""


class _StorageDownError(Exception):
    """A job ended `storage-unavailable`: the run stops rather than fail the next ones the same way."""


_REFUSALS = frozenset({401, 403, 404})
"""Storage answering the look with a refusal that does not pass on its own."""
STORAGE_LOOK_S = 5.0
"""How long the run's look at storage, before it claims a job, waits for an answer (one try, no backoff)."""


def _log_storage_stop(exc: Exception) -> None:
    """Log why storage stops the run: an outage passes (a warning); a client that cannot be made at all (a bad
    connection string), storage refusing the look (a permission missing, the container deleted under a running
    process) or an identity refused does not, and would leave every export queued with nothing else to say why."""
    cause = exc.__cause__ if isinstance(exc, _NoStorageError) else exc
    if isinstance(cause, ClientAuthenticationError) or (
        isinstance(cause, HttpResponseError) and cause.status_code in _REFUSALS
    ):
        code = getattr(cause, "error_code", None) or type(cause).__name__
        status = getattr(cause, "status_code", None)
        logger.error("export jobs: storage refused (%s %s); this run stops, the jobs waiting queued", status, code)
    elif isinstance(cause, AzureError):
        logger.warning(
            "export jobs: storage was not reached (%s); this run stops, the jobs waiting queued", type(cause).__name__
        )
    else:
        logger.error("export jobs: storage cannot be used (%s); this run stops, the jobs waiting queued", exc)


def _storage(container: ContainerClient | None) -> ContainerClient:
    """`container`, or the background artifacts container once storage answered a look at it; _NoStorageError when it
    cannot be made or does not answer, whatever the error (an outage, a bad connection string), so that none escapes
    the run. The container's client is made once per process and never looks at storage again, so a host that was
    running when storage went away would claim jobs only to fail them: the look is what tells."""
    if container is not None:
        return container
    try:
        made = artifacts_container(get_settings())
        made.get_container_properties(retry_total=0, connection_timeout=STORAGE_LOOK_S, read_timeout=STORAGE_LOOK_S)
    except Exception as exc:
        raise _NoStorageError(type(exc).__name__) from exc
    return made


def _database_failed(job: ExportJob, exc: psycopg.Error, pool: ConnectionPool[Any] | None) -> bool:
    """The job's own bookkeeping met a database error: end it `database-unavailable` (its folder is listed for
    removal), so it neither waits for its lease to run out nor counts as ended by the host; whether this ended it."""
    logger.warning("export job %s of tenant %s: its record failed (%s)", job.id, job.tenant_id, type(exc).__name__)
    return _failed_quietly(job, "database-unavailable", pool)


def _failed_quietly(job: ExportJob, kind: str, pool: ConnectionPool[Any] | None) -> bool:
    """Record the attempt's job failed with `kind`, logging how that went; whether this ended it."""
    try:
        ended = _fail(job, kind, pool)
    except _UnrecordedError:
        return True  # logged; its lease runs out, and the run counts it failed as before
    if ended:
        logger.warning("export job %s of tenant %s ends %s", job.id, job.tenant_id, kind)
    else:
        # A success whose commit was not acknowledged, an erasure or another attempt got there first.
        logger.warning("export job %s of tenant %s: no longer this attempt's, left as it is", job.id, job.tenant_id)
    return ended


def _claim(control_pool: ConnectionPool[Any] | None) -> ExportJob | None:
    """The oldest due job, marked running under a fresh lease as a new attempt, in a short transaction of its own."""
    with platform_transaction(pool=control_pool) as conn:
        due = conn.execute(_DUE).fetchone()
        if due is None:
            return None
        row = conn.execute(_CLAIM, (LEASE_S, due["id"])).fetchone()
    assert row is not None  # locked above
    return ExportJob.of(row)


def _clean_up(container: ContainerClient | None, pool: ConnectionPool[Any] | None) -> ContainerClient | None:
    """Remove up to `CLEANUP_PER_RUN` listed folders of jobs picked at random; the container (asked for only when
    there is a folder to remove)."""
    with platform_transaction(pool=pool) as conn:
        rows = conn.execute(_CLEANUP_DUE, (CLEANUP_PER_RUN,)).fetchall()
    budget, until, blobs = CLEANUP_PER_RUN, time.monotonic() + CLEANUP_BUDGET_S, CLEANUP_MAX_BLOBS
    for row in rows:
        # A running job's own folder is its live attempt's (or one taken for dead, which its next claim lists).
        folders = [name for name in row["cleanup_folders"] if row["status"] != "running" or name != row["folder"]]
        if not folders or budget <= 0:
            continue
        container = _storage(container)
        blobs, _ = _remove_listed(row["id"], row["tenant_id"], folders[:budget], container, pool, until, blobs)
        budget -= len(folders[:budget])
    return container


def _remove_listed(
    job_id: UUID,
    tenant_id: UUID,
    folders: Sequence[str],
    container: ContainerClient,
    pool: ConnectionPool[Any] | None,
    until: float,
    max_blobs: int | None = None,
) -> tuple[int, bool]:
    """Remove the blobs of each listed folder of the job, none past `until` (a `time.monotonic()` value) nor beyond
    `max_blobs` deletes, stopping at the first delete storage refuses; drop a name from the list once its folder is
    listed empty and its writer has surely stopped (`WRITER_BOUND_S`), or at once when it is not a folder of the
    job's tenant's exports (bad data: never removed). `max_blobs` is `CLEANUP_MAX_BLOBS` as it is at the call. The
    deletes left of `max_blobs` (none once a removal stopped early: the pass is over), and whether the pass went
    through every folder (False: it stopped early, at a bound or a failure)."""
    max_blobs = CLEANUP_MAX_BLOBS if max_blobs is None else max_blobs
    for folder in folders:
        if time.monotonic() >= until or max_blobs <= 0:
            return max_blobs, False  # the next run goes on
        removal = remove_export(tenant_id, container, folder, until=until, limit=max_blobs)
        max_blobs -= removal.tried
        if removal.refused or (removal.empty and _writer_stopped(folder)):
            with platform_transaction(pool=pool) as conn:
                conn.execute(_CLEANED, (folder, job_id))
        elif removal.stopped:
            return 0, False  # a failure or a bound: the rest waits for the next run
    return max_blobs, True


def _writer_stopped(folder: str) -> bool:
    """Whether the attempt that named `folder` (after the time it began, `export_folder`) can no longer be writing."""
    try:
        began = datetime.strptime(folder.rstrip("/").rsplit("/", 1)[-1], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return True  # not a name an attempt gives: no writer to wait for
    return datetime.now(UTC) - began > timedelta(seconds=WRITER_BOUND_S)


def _run(
    job: ExportJob,
    container: ContainerClient,
    audit_store: AuditStore | None,
    pool: ConnectionPool[Any] | None,
    deadline: float,
) -> bool:
    """One attempt of `job`: the folders of its earlier attempts removed, this one's listed, the export run; whether
    it succeeded. A database error of its own bookkeeping is raised (psycopg.Error)."""
    if job.cleanup_folders:
        # A killed attempt's folder, without its manifest or with it: no half export is left beside the new one.
        logger.warning(
            "export job %s of tenant %s: attempt %d removes its last ones' folders", job.id, job.tenant_id, job.attempts
        )
        # Bounded as the run's first pass: what is left stays listed, beside the new attempt's folder until then.
        _remove_listed(job.id, job.tenant_id, job.cleanup_folders, container, pool, _cleanup_until())
    if job.attempts > MAX_ATTEMPTS:
        _fail(job, "attempts-exhausted", pool)
        return False
    with platform_transaction(pool=pool) as conn:
        tenant = get_tenant(conn, job.tenant_id)
    if tenant is None or tenant.erasing_since is not None:
        _fail(job, "tenant-gone", pool)
        return False
    folder = export_folder(job.tenant_id, datetime.now(UTC))
    with platform_transaction(pool=pool) as conn:
        if not conn.execute(_BEGIN_ATTEMPT, (folder, folder, job.id, job.attempts)).rowcount:
            return False  # erased meanwhile (its jobs went with it), or taken by another run: nothing written yet
    try:
        with _leased(job, pool):
            result = export_tenant(
                tenant, container, audit_store, folder=folder, deadline=deadline, remove_on_failure=False
            )
    except TenantGoneError:
        try:
            _fail(job, "tenant-gone", pool)
        finally:
            # Recorded first, then removed in one bounded pass, as any failure: removed first and unbounded inside the
            # export, a big tenant's blobs held the job `running` for as long. Even when the failure was not recorded:
            # the job may have gone with its tenant, and nothing else lists the folder.
            _remove_gone(job, folder, container, pool)
        return False
    except Exception as exc:
        # The failure is recorded first, then what the export wrote removed, bounded (the folder stays listed until
        # the timer sees it empty): removed first and unbounded, a long export's removal ran the run to the host's
        # time limit with the job still `running`, and it was retried. The kind is recorded, the error itself
        # logged for operators only.
        kind = _failure_kind(exc)
        logger.exception("export job %s of tenant %s failed (%s)", job.id, job.tenant_id, kind)
        _fail(job, kind, pool)
        _remove_listed(job.id, job.tenant_id, [folder], container, pool, _cleanup_until())
        if kind == "storage-unavailable":
            # The next job would meet the same outage and fail for good too: the run stops here.
            raise _StorageDownError(job.id) from exc
        return False
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
        # Taken for dead (its lease not renewed) and claimed again, or erased: the export is no job's, so it goes (and
        # stays listed for the timer, if the job is still there).
        logger.warning(
            "export job %s of tenant %s: attempt %d lost its job; its folder is removed",
            job.id,
            job.tenant_id,
            job.attempts,
        )
        remove_export(job.tenant_id, container, folder, until=_cleanup_until(), limit=CLEANUP_MAX_BLOBS)
        return False
    logger.info("export job %s of tenant %s succeeded: %d blobs", job.id, job.tenant_id, result.blobs)
    return True


def _remove_gone(job: ExportJob, folder: str, container: ContainerClient, pool: ConnectionPool[Any] | None) -> None:
    """Remove the folder of an attempt whose tenant went meanwhile, in one bounded pass; when the pass stops early
    and the tenant row is gone (its jobs with it: nothing lists the folder now), note the tenant for the
    `erased_tenant_blobs` timer, which empties its prefix."""
    _, whole = _remove_listed(job.id, job.tenant_id, [folder], container, pool, _cleanup_until())
    if whole:
        return
    try:
        with platform_transaction(pool=pool) as conn:
            if get_tenant(conn, job.tenant_id) is None:
                conn.execute(NOTE_ERASED_TENANT, (job.tenant_id,))
                noted = True
            else:
                noted = False  # its job lists the folder: the next runs go on
    except Exception as exc:
        logger.error(
            "export job %s of erased tenant %s: its folder %r was not all removed nor noted for removal (%s);"
            " remove it",
            job.id,
            job.tenant_id,
            folder,
            type(exc).__name__,
        )
        return
    if noted:
        logger.warning(
            "export job %s of erased tenant %s: its folder %r was not all removed; the erased_tenant_blobs timer"
            " removes it",
            job.id,
            job.tenant_id,
            folder,
        )


def _cleanup_until() -> float:
    """The end of a removal pass begun now (`CLEANUP_BUDGET_S`), a `time.monotonic()` value."""
    return time.monotonic() + CLEANUP_BUDGET_S


def _fail(job: ExportJob, kind: str, pool: ConnectionPool[Any] | None) -> bool:
    """Record the attempt's job failed with `kind`; whether a row was updated (not when the job is gone, ended or
    another attempt's). Tried again after each of `BOOKKEEPING_PAUSES_S`; _UnrecordedError when the database refused
    every try."""
    for pause in (*BOOKKEEPING_PAUSES_S, None):
        try:
            with platform_transaction(pool=pool) as conn:
                return bool(conn.execute(_FAILED, (kind, job.id, job.attempts)).rowcount)
        except psycopg.Error as exc:
            if pause is None:
                logger.error(
                    "export job %s of tenant %s: its failure (%s) was not recorded (%s); its lease runs out",
                    job.id,
                    job.tenant_id,
                    kind,
                    type(exc).__name__,
                )
                raise _UnrecordedError(str(job.id)) from exc
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _failure_kind(exc: Exception) -> str:
    """A short kind for a failed export's job: what a caller may see, never the error's text."""
    if isinstance(exc, ExportTooLongError):
        return "too-large"
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
