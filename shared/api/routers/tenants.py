# intent_ref: platform.tenants
"""The control plane: Platform.Admin provisions, reads and changes tenants."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

import psycopg
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from shared.api.accepted_input import TakesNoBody, no_body_doc
from shared.api.durable import get_durable_client
from shared.api.idempotency import idempotency_key as idempotency_key_header
from shared.api.idempotency import remember, replay_or_claim
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import DEPENDENCY_RETRY_AFTER_S, ProblemError
from shared.api.responses import (
    AUTH_ERRORS,
    BAD_CURSOR,
    BAD_IDEMPOTENCY_KEY,
    CONFLICT,
    INVALID,
    NOT_FOUND,
    PRECONDITION_FAILED,
    PRECONDITION_REQUIRED,
)
from shared.api.security import RequestContext, authorize, record_mutation, record_tenant_event
from shared.api.transactions import ControlConnection
from shared.audit import get_audit_store
from shared.config import get_settings
from shared.db.session import platform_transaction, when_released
from shared.engine import control
from shared.etags import if_match_tags
from shared.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    InvalidCursorError,
    cursor_text,
    decode_cursor,
    list_cursor,
    marked_list_position,
)
from shared.policy.actions import Action
from shared.policy.authorizer import Resource
from shared.storage.blob import request_container
from shared.tenants.erased_orchestrations import forget_purged_orchestrations, note_erased_orchestrations
from shared.tenants.export_jobs import (
    ACTIVE,
    RETRY_AFTER_S,
    ExportJob,
    ExportRefusedError,
    enqueue_export,
    get_export_job,
    hold_exportable,
    recent_export_jobs,
)
from shared.tenants.models import Tenant, TenantCreate, TenantPage, TenantStatus, TenantUpdate
from shared.tenants.offboarding import (
    ERASURE_RENEW_S,
    ERASURE_RETRY_AFTER_S,
    ErasureContendedError,
    ErasureInProgressError,
    ErasureRefusedError,
    TenantGoneError,
    begin_erasure,
    end_erasure_lease,
    erase_tenant,
    execution_ids,
    purge_orchestrations,
    renew_erasure_lease,
)
from shared.tenants.repository import (
    TenantConflictError,
    TenantRowBusyError,
    briefly_waited,
    create_tenant,
    erasure_under_way,
    etag,
    get_tenant,
    list_tenants,
    tenant_directory,
    update_tenant,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/tenants", tags=["tenants"], route_class=GuardedRoute)
_PLATFORM = Resource("Platform", "platform", None, {})


def _not_found(tenant_id: UUID) -> ProblemError:
    return ProblemError(404, "not-found", "Not found", f"No tenant {tenant_id}.")


def _authorized_tenant(
    context: RequestContext, action: Action, tenant_id: UUID, conn: psycopg.Connection[Any] | None = None
) -> Tenant:
    """Decide `action` on the control plane for this tenant, then load it (404 when it does not exist); in `conn`
    when the caller holds a control-plane transaction."""
    authorize(context, action, _PLATFORM, detail={"tenant_id": str(tenant_id)})
    if conn is None:
        with platform_transaction() as own:
            tenant = get_tenant(own, tenant_id)
    else:
        tenant = get_tenant(conn, tenant_id)
    if tenant is None:
        raise _not_found(tenant_id)
    return tenant


def _audit_change(
    conn: psycopg.Connection[Any], context: RequestContext, action: Action, tenant: Tenant, detail: dict[str, Any]
) -> None:
    """The change in `conn` is audited in it (a record about a tenant, which the control plane may add to the
    operator's trail: migration 0028), so it commits exactly with the change; once committed, the tenant directory
    forgets what it cached."""
    record_mutation(context, action, Resource("Tenant", str(tenant.id), None, {}), detail, conn=conn)
    when_released(conn, tenant_directory.forget, only="commit")


@router.post(
    "",
    status_code=201,
    response_model=Tenant,
    summary="Provision a tenant",
    responses={**AUTH_ERRORS, 400: BAD_IDEMPOTENCY_KEY, 409: CONFLICT, 422: INVALID},
)
def create(
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_CREATE))],
    spec: TenantCreate,
    request: Request,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    conn: ControlConnection,
) -> Tenant | Response:
    """Provision a tenant (Platform.Admin). With `Idempotency-Key` (the caller's own) a retry gets the first answer
    instead of 409."""
    authorize(context, Action.TENANT_CREATE, _PLATFORM, detail={"name": spec.name})
    replay = replay_or_claim(
        conn, idempotency_key, request, spec.model_dump(mode="json"), principal=context.principal.id
    )
    if replay is not None:
        return replay
    try:
        tenant = create_tenant(conn, spec)
    except TenantConflictError:
        raise ProblemError(
            409, "conflict", "Conflict", "A tenant with this name or Entra tenant id is already provisioned."
        ) from None
    headers = {"ETag": etag(tenant), "Location": f"/api/v1/tenants/{tenant.id}"}
    content = tenant.model_dump(mode="json")
    remember(conn, idempotency_key, 201, content, headers, principal=context.principal.id)
    _audit_change(conn, context, Action.TENANT_CREATE, tenant, {"name": tenant.name, "status": tenant.status})
    return JSONResponse(content, status_code=201, headers=headers)


@router.get(
    "", response_model=TenantPage, summary="List tenants", responses={**AUTH_ERRORS, 400: BAD_CURSOR, 422: INVALID}
)
def list_all(
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_LIST))],
    conn: ControlConnection,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
    status: TenantStatus | None = None,
) -> TenantPage:
    """Tenants by name, cursor-paginated (Platform.Admin)."""
    authorize(context, Action.TENANT_LIST, _PLATFORM)
    return list_tenants(conn, limit=limit, after_name=cursor_text(decode_cursor(cursor), "name"), status=status)


@router.get(
    "/{tenant_id}",
    response_model=Tenant,
    summary="Read a tenant",
    responses={**AUTH_ERRORS, 404: NOT_FOUND, 422: INVALID},
)
def read(
    tenant_id: UUID,
    response: Response,
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_READ))],
    conn: ControlConnection,
) -> Tenant:
    """One tenant with its ETag (Platform.Admin)."""
    tenant = _authorized_tenant(context, Action.TENANT_READ, tenant_id, conn)
    response.headers["ETag"] = etag(tenant)
    return tenant


@router.patch(
    "/{tenant_id}",
    response_model=Tenant,
    summary="Change a tenant",
    responses={
        **AUTH_ERRORS,
        404: NOT_FOUND,
        409: {
            **CONFLICT,
            "description": "The change would suspend the caller's own tenant (`self-suspension`), or would change the"
            " status of a tenant whose erasure has begun (`tenant-erasing`), or the tenant's erasure is deleting its"
            " row (`erasure-in-progress`, with Retry-After)",
        },
        412: PRECONDITION_FAILED,
        422: INVALID,
        428: PRECONDITION_REQUIRED,
    },
)
def patch(
    tenant_id: UUID,
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_UPDATE))],
    conn: ControlConnection,
    change: TenantUpdate,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> Tenant:
    """Change status, quotas or allow-lists; `If-Match` with the tenant's ETag is required (Platform.Admin). The
    caller's own tenant cannot be suspended (409), nor the status of a tenant being erased changed (409)."""
    authorize(context, Action.TENANT_UPDATE, _PLATFORM, detail={"tenant_id": str(tenant_id)})
    if not if_match:
        raise ProblemError(
            428, "precondition-required", "Precondition required", "Send If-Match with the tenant's ETag."
        )
    # Held from the check to the write: two changes sent with one ETag both passed an unlocked read, and both applied.
    # Waited for briefly: an erasure's last transaction holds the row, and the change waited holding a connection of
    # the control plane's small pool.
    try:
        with briefly_waited(conn):
            current = get_tenant(conn, tenant_id, for_update=True)
    except TenantRowBusyError:
        raise _row_busy(conn, tenant_id) from None
    if current is None:
        raise _not_found(tenant_id)
    tags = if_match_tags(if_match)  # None for `*`: any current tenant
    if tags is not None and etag(current) not in tags:
        raise ProblemError(
            412, "precondition-failed", "Precondition failed", "The tenant changed since that ETag was issued."
        )
    if current.erasing_since is not None and change.status is not None and change.status != current.status:
        # Set active while its erasure ran, the tenant was erased all the same: its erasure had passed its check.
        raise _erasing(current.erasing_since)
    if change.status == "suspended" and tenant_id == context.tenant.id:
        # A suspended tenant's callers are refused everything, the control plane included: suspending the tenant
        # the caller's token belongs to (the operators' own, ADR 0042) would leave no one able to undo it.
        raise ProblemError(
            409,
            "self-suspension",
            "Conflict",
            "A Platform.Admin cannot suspend its own tenant: no operator could call the control plane afterwards.",
        )
    tenant = update_tenant(conn, tenant_id, change)
    assert tenant is not None  # it existed inside this transaction
    _audit_change(conn, context, Action.TENANT_UPDATE, tenant, change.model_dump(mode="json", exclude_unset=True))
    response.headers["ETag"] = etag(tenant)
    return tenant


def _erasing(since: datetime) -> ProblemError:
    """The refusal of a status change of a tenant whose erasure has begun (it is marked, ADR 0012)."""
    return ProblemError(
        409,
        "tenant-erasing",
        "Conflict",
        f"The tenant's erasure began at {since.isoformat()} and is"
        " irreversible once begun (its orchestrations, blobs or audit trail may be gone already): its status cannot"
        " change. Complete the erasure: send it again (POST .../erase), which goes on from where it stopped.",
    )


def _erasure_in_progress(retry_after_s: int) -> ProblemError:
    """The refusal of a request on a tenant whose erasure is running: another erasure, an export request or a change
    of the tenant while its rows go (each used to wait for it, holding a connection of the control plane's few)."""
    return ProblemError(
        409,
        "erasure-in-progress",
        "Conflict",
        "An erasure of the tenant is running. Nothing was done: send the request again after Retry-After; an erasure"
        " sent again then completes what is left, or answers 404 once the tenant is gone.",
        headers={"Retry-After": str(retry_after_s)},
    )


def _row_busy(conn: psycopg.Connection[Any], tenant_id: UUID) -> ProblemError:
    """The refusal of a request that did not have the tenant row's lock within ROW_LOCK_WAIT_MS (`conn`'s transaction
    is usable again): 409 `erasure-in-progress` when the tenant is marked or an erasure holds its lease, else 503 (a
    change of the row, an administrator's lock). An active tenant's change was told that an erasure of it was
    running."""
    if erasure_under_way(conn, tenant_id):
        return _erasure_in_progress(ERASURE_RETRY_AFTER_S)
    return _row_held()


def _row_held() -> ProblemError:
    """503 for a tenant row held past ROW_LOCK_WAIT_MS by anything but an erasure: nothing was done."""
    return ProblemError(
        503,
        "dependency-unavailable",
        "Service unavailable",
        "The tenant's row is held by another change. Nothing was done: send the request again after Retry-After.",
        headers={"Retry-After": str(ERASURE_RETRY_AFTER_S)},
    )


def _erasure_refused(status: str) -> ProblemError:
    """The refusal of an erasure of a tenant that is not suspended."""
    return ProblemError(
        409,
        "erasure-refused",
        "Conflict",
        f"The tenant is {status}: suspend it first, then confirm the erasure with its exact name.",
    )


ExportStatus = Literal["queued", "running", "succeeded", "failed"]


class TenantExportJob(BaseModel):
    """An export of a tenant, run in the background: its state, and once `succeeded` where it was written (a folder of
    the artifacts container holding the archive of its rows, a copy of each of its blobs and the manifest; download
    the folder before erasing the tenant, which removes it)."""

    id: UUID = Field(description="The export's id")
    tenant_id: UUID
    status: ExportStatus = Field(
        description="`queued` (waiting for the exports timer, every 30 s), `running`, `succeeded` (the fields of the"
        " export below are set) or `failed` (`failure` says why; whatever of the export was written is removed, by"
        " the exports timer when storage refused it at first)"
    )
    requested_at: datetime
    started_at: datetime | None = Field(description="When its first attempt began")
    finished_at: datetime | None = Field(description="When it succeeded or failed")
    attempts: int = Field(description="Attempts begun: one the host ended (a restart) is retried from the start")
    failure: str | None = Field(
        description="When failed: `tenant-gone` (erased, or marked for erasure, before or while it ran),"
        " `storage-unavailable`, `database-unavailable` (also when the job's own record failed), `too-large` (its"
        " blobs were still being copied 45 minutes into its run), `attempts-exhausted` (ended by the host each time it"
        " ran) or `export-failed`; request a new export to try again"
    )
    container: str | None = Field(description="When succeeded: the artifacts container")
    folder: str | None = Field(
        description="When succeeded: the export's folder, `<tenant>/exports/<time>/`: download every blob under it"
    )
    blob_name: str | None = Field(
        description="When succeeded: the archive of the tenant's rows, `<folder>archive.json`"
    )
    manifest: str | None = Field(
        description="When succeeded: `<folder>manifest.json`, written last: each blob copied (its name in the folder,"
        " size, sha256, Content-MD5) and the archive's size and sha256"
    )
    counts: dict[str, int] | None = Field(description="When succeeded: the archive's rows of each kind")
    blobs: int | None = Field(
        description="When succeeded: blobs of the tenant copied into the folder (stored step outputs, artifacts)"
    )
    blob_bytes: int | None = Field(description="When succeeded: their bytes, in all")


class TenantExportJobs(BaseModel):
    """A tenant's most recent exports, newest first."""

    items: list[TenantExportJob]


def _export_job(job: ExportJob) -> TenantExportJob:
    """The answer for a recorded job: the export's fields only once it succeeded, the failure's kind once it failed."""
    done = job.result if job.status == "succeeded" and job.result is not None else {}
    return TenantExportJob(
        id=job.id,
        tenant_id=job.tenant_id,
        status=job.status,
        requested_at=job.requested_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        failure=job.failure if job.status == "failed" else None,
        container=done.get("container"),
        folder=job.folder if done else None,
        blob_name=done.get("blob_name"),
        manifest=done.get("manifest"),
        counts=done.get("counts"),
        blobs=done.get("blobs"),
        blob_bytes=done.get("blob_bytes"),
    )


def _export_path(tenant_id: UUID, export_id: UUID) -> str:
    """The job's URL, as the API's other Locations are written."""
    return f"/api/v1/tenants/{tenant_id}/exports/{export_id}"


def _job_headers(job: TenantExportJob) -> dict[str, str]:
    """Location of the job, and while it is not done, when to look again."""
    headers = {"Location": _export_path(job.tenant_id, job.id)}
    if job.status in ACTIVE:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return headers


class TenantErasure(BaseModel):
    """The confirmation an erasure needs: the tenant's name, typed out."""

    model_config = {"json_schema_extra": {"examples": [{"confirm_name": "northwind"}]}}

    confirm_name: str


class TenantErased(BaseModel):
    """What an erasure removed."""

    tenant_id: UUID
    removed: dict[str, int]


@router.post(
    "/{tenant_id}/export",
    status_code=202,
    response_model=TenantExportJob,
    summary="Export a tenant's data and blobs to blob storage (a background job)",
    responses={
        202: {
            "description": "The export is queued (or was already queued or running): poll its `Location`",
            "headers": {
                "Location": {"description": "The export's URL.", "schema": {"type": "string"}},
                "Retry-After": {"description": "Seconds to wait before polling it.", "schema": {"type": "integer"}},
            },
        },
        **AUTH_ERRORS,
        400: BAD_IDEMPOTENCY_KEY,
        404: NOT_FOUND,
        409: {**CONFLICT, "description": "The tenant's erasure is deleting its row (`erasure-in-progress`)"},
        422: no_body_doc("the tenant id is not a UUID, or the Idempotency-Key was used for another request"),
    },
)
def export(
    tenant_id: UUID,
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_EXPORT))],
    _no_body: TakesNoBody,
    request: Request,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    conn: ControlConnection,
) -> Response:
    """Queue an export of the tenant (Platform.Admin) and answer 202 with the job, its URL in `Location` and
    `Retry-After`; poll `GET .../exports/{export_id}` until it is `succeeded` or `failed`. One export of a tenant runs
    at a time: while one is queued or running, a request is answered with that job (`status` tells which). With
    `Idempotency-Key` (the caller's own) a retry gets the first answer.

    The export is a folder of its own, `<tenant>/exports/<time>/` in the artifacts container: `archive.json`, a JSON
    archive of its records (the tenant with its settings, its intents and versions, executions with their steps,
    attempts, work items and events, policies, modules, ingress rejections, webhook subscriptions without their
    signing secrets and deliveries, domain events and audit trail; left out: secrets, kept idempotency answers, rate
    counters, locks and worker poll times); a copy of every blob of the tenant (step outputs stored as blobs,
    `artifact.write` artifacts; not earlier exports) under its name relative to the tenant's prefix, so a `$blob`
    reference or artifact `blob_name` `<tenant>/<path>` is `<folder><path>`; and `manifest.json`, written last, with
    each blob's size, sha256 and Content-MD5. The succeeded job names the folder: download it (`az storage blob
    download-batch --pattern '<folder>*'`, or azcopy) before erasing the tenant, whose erasure removes it with every
    other blob of the tenant and its export jobs (ADR 0012). 404, and nothing recorded, for a tenant that does not
    exist or is marked for erasure; an export whose tenant is erased while it runs fails (`tenant-gone`), and what any
    failed export wrote is removed (by the exports timer, when storage refused the removal at first). The request
    takes no body: a body is refused with 422 and writes nothing."""
    authorize(context, Action.TENANT_EXPORT, _PLATFORM, detail={"tenant_id": str(tenant_id)})
    try:
        # The tenant first, written nothing yet (its row held in KEY SHARE until the commit, so an erasure's row delete
        # waits for this job and then removes it): a key's retry after the erasure is a 404, not a replay.
        hold_exportable(conn, tenant_id)
    except ExportRefusedError:
        raise _not_found(tenant_id) from None
    except TenantRowBusyError:
        raise _row_busy(conn, tenant_id) from None
    replay = replay_or_claim(conn, idempotency_key, request, None, principal=context.principal.id)
    if replay is not None:
        return replay
    job, created = enqueue_export(conn, tenant_id, context.principal.id)
    answer = _export_job(job)
    headers = _job_headers(answer)
    headers["Retry-After"] = str(RETRY_AFTER_S)
    content = answer.model_dump(mode="json")
    remember(conn, idempotency_key, 202, content, headers, principal=context.principal.id)
    if created:
        detail = {"export_id": str(job.id), "status": job.status}
        record_mutation(context, Action.TENANT_EXPORT, Resource("Tenant", str(tenant_id), None, {}), detail, conn=conn)
    return JSONResponse(content, status_code=202, headers=headers)


EXPORTS_LIST_MAX = 50
"""Export jobs a listing answers at most: the most recent ones."""


@router.get(
    "/{tenant_id}/exports",
    response_model=TenantExportJobs,
    summary="List a tenant's recent exports",
    responses={**AUTH_ERRORS, 422: INVALID},
)
def list_exports(
    tenant_id: UUID,
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_EXPORT))],
    conn: ControlConnection,
    limit: int = Query(20, ge=1, le=EXPORTS_LIST_MAX),
) -> TenantExportJobs:
    """The tenant's `limit` most recent exports, newest first, each as its own URL answers it (Platform.Admin). A
    tenant that does not exist, or was erased (its exports go with it), has none."""
    authorize(context, Action.TENANT_EXPORT, _PLATFORM, detail={"tenant_id": str(tenant_id)})
    return TenantExportJobs(items=[_export_job(job) for job in recent_export_jobs(conn, tenant_id, limit)])


@router.get(
    "/{tenant_id}/exports/{export_id}",
    response_model=TenantExportJob,
    summary="Read a tenant's export",
    responses={
        200: {
            "description": "The export; while it is queued or running, `Retry-After` says when to look again",
            "headers": {
                "Retry-After": {"description": "Seconds to wait before polling again.", "schema": {"type": "integer"}}
            },
        },
        **AUTH_ERRORS,
        404: NOT_FOUND,
        422: INVALID,
    },
)
def read_export(
    tenant_id: UUID,
    export_id: UUID,
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_EXPORT))],
    conn: ControlConnection,
    response: Response,
) -> TenantExportJob:
    """One export of the tenant (Platform.Admin): `queued`, `running`, `succeeded` with where it was written, or
    `failed` with why. 404 for an unknown export, another tenant's, or one of a tenant since erased."""
    authorize(
        context, Action.TENANT_EXPORT, _PLATFORM, detail={"tenant_id": str(tenant_id), "export_id": str(export_id)}
    )
    job = get_export_job(conn, tenant_id, export_id)
    if job is None:
        raise ProblemError(404, "not-found", "Not found", f"No export {export_id} of tenant {tenant_id}.")
    answer = _export_job(job)
    if answer.status in ACTIVE:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return answer


@router.post(
    "/{tenant_id}/erase",
    response_model=TenantErased,
    summary="Erase a tenant (GDPR offboarding)",
    responses={
        **AUTH_ERRORS,
        404: NOT_FOUND,
        422: INVALID,
        409: {
            **CONFLICT,
            "description": "The tenant is not suspended, or `confirm_name` is not its exact name (`erasure-refused`,"
            " `detail` says which), or another erasure of it is running (`erasure-in-progress`, with Retry-After)",
        },
    },
)
async def erase(
    tenant_id: UUID,
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_ERASE))],
    body: TenantErasure,
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> TenantErased:
    """Remove every orchestration, row, blob and record of a suspended tenant. The tenant is marked first
    (`erasing_since`): its status cannot change from then on, and an erasure that failed or was interrupted is sent
    again to complete it. One erasure of a tenant runs at a time: one sent while another runs is refused (409
    `erasure-in-progress`, with Retry-After), as is a change or an export request of the tenant while its row goes.

    What the erasure keeps, and for how long (ADR 0012): the erasure's own audit record in the erased tenant's trail,
    and the mark's and the erasure's records (naming the tenant) in the operator's own trail, under its retention; the
    tenant's id in the control plane's list of erased prefixes, which a timer keeps emptying of blobs written late, for
    at least seven days and until the prefix is empty (ADR 0046); the ids of orchestrations that may outlive it, with
    the tenant's id, until each is purged; Postgres point-in-time-restore backups, 14 days; the audit store's Cosmos DB
    continuous backup, 7 days; its deleted blobs and containers in the storage account's soft delete, 14 days; log
    lines carrying the tenant's id in Log Analytics, 90 days; and its events and intent
    requests already sent to Event Hubs, 1 day."""
    tenant = await run_in_threadpool(_authorized_tenant, context, Action.TENANT_ERASE, tenant_id)
    # Each refusal names its own cause: an admin who had suspended the tenant was told to suspend it first.
    if tenant.status != "suspended":
        raise _erasure_refused(tenant.status)
    if body.confirm_name != tenant.name:
        raise ProblemError(
            409,
            "erasure-refused",
            "Conflict",
            "confirm_name does not match the tenant's name; send its exact name (case and spaces included).",
        )

    def audit_mark(conn: psycopg.Connection[Any], marked: Tenant) -> None:
        """Audit the mark in its own transaction, as the operator's change of the tenant."""
        # The mark is where the erasure becomes irreversible: recorded with it, so an erasure interrupted before its
        # end (whose record is written last) still names who began it and when.
        assert marked.erasing_since is not None  # just set
        detail = {"tenant_name": marked.name, "erasing_since": marked.erasing_since.isoformat()}
        _audit_change(conn, context, Action.TENANT_ERASE, marked, detail)

    # Marked before anything goes, suspended as it is marked: from now on its status cannot change. The checks above
    # read it unlocked, and an operator's PATCH to active meanwhile was answered 200 and the tenant erased all the same.
    # With the mark, this erasure's lease: another erasure of the tenant is refused at once while this one runs. It
    # waited for this one's row lock, holding a connection of the control plane's few (with them all taken, every
    # tenant's token lookups failed), and two at once both answered 200, the second's late pass removing the first's
    # record.
    holder = uuid4()
    try:
        await run_in_threadpool(begin_erasure, tenant_id, audit=audit_mark, holder=holder)
    except TenantGoneError:
        raise _not_found(tenant_id) from None
    except ErasureInProgressError as exc:
        raise _erasure_in_progress(exc.retry_after_s) from None
    except TenantRowBusyError:
        raise _row_held() from None
    except ErasureRefusedError as exc:
        raise _erasure_refused(exc.status) from None
    renewal = asyncio.create_task(_keep_erasure_lease(tenant_id, holder))
    # The orchestrations' histories first: their instance ids are the execution rows the erasure then removes.
    purged: set[str] = set()
    final: list[str] = []
    erased = False
    try:
        orchestrations = await purge_orchestrations(
            await run_in_threadpool(execution_ids, tenant_id), client, purged_ids=purged
        )
        removed = await run_in_threadpool(
            erase_tenant,
            tenant_id,
            request_container(get_settings()),
            get_audit_store(),
            executions=final,
            purged=purged,
            holder=holder,
        )
        erased = True
    except ErasureInProgressError as exc:
        # Its lease ran out (renewals failed past ERASURE_LEASE_S) and another erasure took it: that one goes on, and
        # this one stopped at its next batch. Both went on and both answered 200, each writing its record.
        raise _erasure_in_progress(exc.retry_after_s) from None
    except ErasureRefusedError as exc:
        # Not reached while the mark holds (the control plane's refusal, the table's check): erase_tenant's own check.
        raise _erasure_refused(exc.status) from None
    except ErasureContendedError as exc:
        # Writers still at work on the tenant (its last requests, activities under way): the tenant is still there,
        # and the erasure asked again a moment later completes. It answered 500.
        raise ProblemError(
            503, "dependency-unavailable", "Service unavailable", str(exc), headers={"Retry-After": "5"}
        ) from None
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        if not erased:
            # Dropped with the tenant row when the rows went; an erasure that failed frees the tenant for the next.
            await run_in_threadpool(_end_lease, tenant_id, holder)
    # Again for every execution the rows held when they went: one accepted just before the suspension started its
    # orchestration after the list above, which then outlived the tenant with its input. None is created after that.
    # The row deletion recorded each of them not purged above for the sweeper (ADR 0046): this only hastens it.
    removed["orchestrations"] = orchestrations + await _purge_after_rows(
        tenant_id, [i for i in final if i not in purged], client
    )
    tenant_directory.forget()
    detail = {"tenant_name": tenant.name, "removed": removed}
    await run_in_threadpool(
        record_mutation, context, Action.TENANT_ERASE, Resource("Tenant", str(tenant_id), None, {}), detail
    )
    # The erased tenant keeps exactly one record: this erasure, by whom and when.
    await run_in_threadpool(record_tenant_event, tenant_id, context, Action.TENANT_ERASE, detail)
    return TenantErased(tenant_id=tenant_id, removed=removed)


async def _keep_erasure_lease(tenant_id: UUID, holder: UUID) -> None:
    """Renew the erasure's lease every ERASURE_RENEW_S while it runs (cancelled at its end); a renewal that fails is
    logged and tried again, one that finds no lease (the rows gone with it) ends the renewals."""
    while True:
        await asyncio.sleep(ERASURE_RENEW_S)
        try:
            held = await run_in_threadpool(renew_erasure_lease, tenant_id, holder)
        except Exception as exc:
            logger.warning("erasure of tenant %s: its lease not renewed (%s: %s)", tenant_id, type(exc).__name__, exc)
            continue
        if not held:
            return


def _end_lease(tenant_id: UUID, holder: UUID) -> None:
    """Drop a failed erasure's lease; when that fails too, the lease runs out by itself (ERASURE_LEASE_S)."""
    try:
        end_erasure_lease(tenant_id, holder)
    except Exception as exc:
        logger.warning(
            "erasure of tenant %s: its lease not dropped (%s: %s); it runs out by itself",
            tenant_id,
            type(exc).__name__,
            exc,
        )


async def _purge_after_rows(tenant_id: UUID, instance_ids: list[str], client: Any) -> int:
    """Purge the orchestrations of an erased tenant's executions not purged before its rows went. The row deletion
    recorded each of them, due at once, for the sweeper to purge until gone (ADR 0046, amended 2026-12-08): a host
    killed before or during this purge leaves them to it. Those found gone here are no longer the sweeper's; those a
    failure leaves are noted again (the record may have gone meanwhile) and logged."""
    purged: set[str] = set()
    try:
        count = await purge_orchestrations(instance_ids, client, purged_ids=purged)
    except Exception as exc:
        left = [instance_id for instance_id in instance_ids if instance_id not in purged]
        noted = await run_in_threadpool(note_erased_orchestrations, tenant_id, left)
        logger.warning(
            "erasure of tenant %s: orchestrations %s could not be purged after its rows went (%s: %s); %s",
            tenant_id,
            left,
            type(exc).__name__,
            exc,
            "the sweeper purges them" if noted else "purge them",
        )
        await run_in_threadpool(forget_purged_orchestrations, tenant_id, sorted(purged))
        return len(purged)
    # Every one found gone: purged now, or nothing there.
    await run_in_threadpool(forget_purged_orchestrations, tenant_id, instance_ids)
    return count


CANCEL_PAGE_MAX = 100
"""Executions one operator's cancel works on: each is a transaction and a raise to its run."""
_CANCEL_LIST = "tenant-executions-cancel"


class ExecutionCancelled(BaseModel):
    """What an operator's cancel did to one execution."""

    execution_id: UUID
    outcome: control.OperatorOutcome
    status: str
    handed_over: bool


class TenantExecutionsCancelled(BaseModel):
    """A page of a suspended tenant's executions that had not ended, each with what its cancel did."""

    items: list[ExecutionCancelled]
    next_cursor: str | None


def _cancel_position(cursor: str | None, tenant_id: UUID) -> UUID | None:
    """The execution id a cancel page's cursor resumes after (None: the first page); 400 for any other cursor, one
    issued for another tenant's executions included (it would skip this tenant's up to its position)."""
    after = marked_list_position(cursor, _CANCEL_LIST, "after")
    if after is None:
        return None
    if marked_list_position(cursor, _CANCEL_LIST, "tenant") != str(tenant_id):
        raise InvalidCursorError("the cursor is one this list issued for another tenant")
    try:
        return UUID(str(after))
    except ValueError:
        raise InvalidCursorError("the cursor is not one this list issued") from None


def _tenant_active(status: str, done: list[ExecutionCancelled] | None = None) -> ProblemError:
    """The refusal of an operator's cancel of a tenant that is not suspended: its own principals can cancel. `done`:
    what the page did before it found the tenant reactivated (each audited), listed under `items`."""
    return ProblemError(
        409,
        "tenant-active",
        "Conflict",
        f"The tenant is {status}: its own principals cancel its executions. An operator cancels them once the tenant"
        " is suspended.",
        extensions=None if done is None else {"items": [item.model_dump(mode="json") for item in done]},
    )


class _CancelAudit:
    """How each operator's cancel is audited, inside the transaction that records it (ADR 0027): in the tenant's
    trail with the cancel itself, and in the operator's once that transaction has committed, before its raise. An
    operator's record that fails is kept, never raised: raised at the transaction's exit it made the committed cancel
    look failed, its raise was never made and the record was lost; `write_kept` writes the kept ones again."""

    def __init__(self, context: RequestContext, tenant_id: UUID) -> None:
        self._context, self._tenant_id = context, tenant_id
        self._resource = Resource("Tenant", str(tenant_id), None, {})
        self._kept: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the page's cancels record in threads of their own

    def __call__(self, conn: Any, execution_id: UUID, recorded: bool) -> None:
        """Audit one execution's cancel (`recorded` False: a repeat raising a cancel whose raise was lost)."""
        detail = {"operation": "cancel", "executions": [str(execution_id)], "recorded": recorded}
        # The tenant's own trail: its admins see who cancelled their executions, once it is active again.
        record_tenant_event(self._tenant_id, self._context, Action.EXECUTION_CANCEL, detail, conn=conn)
        when_released(conn, lambda: self._operators_trail(detail), only="commit")

    def _write(self, detail: dict[str, Any]) -> None:
        """The operator's own record, in its tenant's trail, which this tenant's transaction cannot write."""
        record_mutation(self._context, Action.EXECUTION_CANCEL, self._resource, detail)

    def _operators_trail(self, detail: dict[str, Any]) -> None:
        """Write the operator's record once the cancel committed; kept, for `write_kept`, when that fails."""
        try:
            self._write(detail)
        except Exception as exc:
            logger.warning("operator's cancel record %s not written yet (%s: %s)", detail, type(exc).__name__, exc)
            with self._lock:
                self._kept.append(detail)

    def write_kept(self) -> list[dict[str, Any]]:
        """Write again the operator's records that failed, once the page's cancels have ended (each raised); those
        failing still are logged, by execution, and answered."""
        with self._lock:
            kept, self._kept = self._kept, []
        unwritten: list[dict[str, Any]] = []
        for detail in kept:
            try:
                self._write(detail)
            except Exception as exc:
                logger.error(
                    "operator %s's cancel of executions %s of tenant %s is not in the operator's trail (%s: %s): %s",
                    self._context.principal.id,
                    detail["executions"],
                    self._tenant_id,
                    type(exc).__name__,
                    exc,
                    detail,
                )
                unwritten.append(detail)
        return unwritten


def _unaudited(unwritten: list[dict[str, Any]], done: list[ExecutionCancelled]) -> ProblemError:
    """503 for a page whose cancels were done (listed under `items`, each told to its run) but some of whose records
    in the operator's trail could not be written (`unaudited`; logged with their details)."""
    executions = [execution for detail in unwritten for execution in detail["executions"]]
    return ProblemError(
        503,
        "dependency-unavailable",
        "Service unavailable",
        f"The cancels listed under `items` were done, but the audit trail could not record {len(executions)} of them"
        " in the operator's trail (`unaudited`; the platform's log keeps each). A repeat does not record them again.",
        headers={"Retry-After": str(DEPENDENCY_RETRY_AFTER_S)},
        extensions={"items": [item.model_dump(mode="json") for item in done], "unaudited": executions},
    )


def _next_cancel_cursor(tenant_id: UUID, page: control.OperatorPage, limit: int) -> str | None:
    """The cursor after the last execution the page handled: null once the page listed the last of them and handled
    them all, or the tenant is gone."""
    if not page.items or page.ended is not None or (page.complete and page.listed < limit):
        return None
    return list_cursor(_CANCEL_LIST, {"tenant": str(tenant_id), "after": str(page.items[-1].execution_id)})


@router.post(
    "/{tenant_id}/executions/cancel",
    status_code=202,
    response_model=TenantExecutionsCancelled,
    summary="Cancel a suspended tenant's executions",
    responses={
        **AUTH_ERRORS,
        400: BAD_CURSOR,
        404: NOT_FOUND,
        409: {
            **CONFLICT,
            "description": "The tenant is not suspended (`tenant-active`): nothing more is cancelled; what the page"
            " cancelled before it found the tenant reactivated is listed under `items`",
        },
        422: INVALID,
    },
)
async def cancel_executions(
    tenant_id: UUID,
    context: Annotated[RequestContext, Depends(permission(Action.TENANT_UPDATE))],
    _no_body: TakesNoBody,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=CANCEL_PAGE_MAX),
    cursor: str | None = None,
    client: Any = Depends(get_durable_client),  # noqa: B008
) -> TenantExecutionsCancelled:
    """Cancel, as the execution's own cancel route does, up to `limit` of a suspended tenant's executions that have
    not ended, in id order (Platform.Admin): a suspended tenant's own principals are refused everything, its cancels
    included (ADR 0027). Each is recorded as cancelled by the operator, its queued remote work ended and its run told;
    a pending one no orchestration runs ends cancelled at once. `next_cursor` (null on the last page) resumes after
    the executions this page handled: a page whose task hub is slow stops starting cancels after a bound and answers
    with the part it handled (each raise is bounded; one cut off is `handed_over` false). Safe to send again: a repeat
    records nothing more and raises only a cancel whose raise was lost (`handed_over` false, which the sweeper also
    raises again; `already-requested` when there is nothing to raise); sent again from the first page later, it lists
    what has still not ended. Each cancel recorded or raised is audited as it is recorded, in the tenant's trail and
    the operator's; a record of the operator's trail that cannot be written fails no cancel: once the page's cancels
    have ended (each raised) it answers 503 with what was done under `items` and the executions not in the operator's
    trail under `unaudited`. A tenant reactivated meanwhile stops the page: 409, with what was done before under
    `items`. The request takes no body."""
    tenant = await run_in_threadpool(_authorized_tenant, context, Action.TENANT_UPDATE, tenant_id)
    # After the decision (ADR 0022): a refused caller learns nothing of the cursor.
    after = _cancel_position(cursor, tenant_id)
    if tenant.status != "suspended":
        raise _tenant_active(tenant.status)
    audit = _CancelAudit(context, tenant_id)
    try:
        page = await control.operator_cancel_page(
            client, tenant_id, context.principal.id, audit, after=after, limit=limit
        )
    finally:
        # After every cancel of the page has ended, raises included: a record failing makes no cancel look failed.
        unwritten = await run_in_threadpool(audit.write_kept)
    items = [ExecutionCancelled(**vars(cancel)) for cancel in page.items]
    if unwritten:
        raise _unaudited(unwritten, items)
    if page.ended == "tenant-active":
        raise _tenant_active("active", items)
    next_cursor = _next_cancel_cursor(tenant_id, page, limit)
    return TenantExecutionsCancelled(items=items, next_cursor=next_cursor)
