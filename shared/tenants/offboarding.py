# intent_ref: platform.tenants
"""Tenant offboarding: export everything a tenant has (its rows as a JSON archive, and its blobs), then erase every
trace of it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobClient, ContainerClient, ContentSettings
from psycopg import errors, sql

from shared.audit import AuditStore, get_audit_store
from shared.audit.postgres import PostgresAuditStore
from shared.db.session import bounded_lock_waits, platform_transaction, tenant_transaction
from shared.storage.blob import StorageCall, unbounded
from shared.tenants.models import Tenant
from shared.tenants.repository import (
    TenantRowBusyError,
    erasure_under_way,
    get_tenant,
    hold_tenant,
    mark_erasing,
    tenant_settings,
)

# Every app table that holds tenant rows, children before parents (erasure order; a writer that adds a child row
# meanwhile makes the erasure's transaction run again, `ROW_ERASE_ATTEMPTS`). A test fails when a new tenant table is
# missing here, so erasure cannot silently leave one behind.
TENANT_TABLES = (
    "idempotency_keys",
    "webhook_deliveries",
    "webhook_subscriptions",
    "outbox",
    "ingress_rejections",
    "execution_events",
    "work_items",
    "work_pollers",
    "step_attempts",
    "execution_steps",
    "task_token_keys",
    "executions",
    "intent_versions",
    "intents",
    "tenant_policies",
    "rate_buckets",
    "tenant_locks",
    "modules",
    "audit_outbox",
    "audit_events",
)
# What the export archive carries: every row of these tables, each column as stored but for `WITHHELD_COLUMNS`.
# `AUDIT_TRAIL` comes from the audit store, the others from the tables of their names. Every tenant table is either
# here or in `NOT_EXPORTED`, and a test fails when one is in neither: a table added later is archived, or left out on
# purpose, never lost to an erasure unnoticed.
EXPORTED_TABLES = (
    "intents",
    "intent_versions",
    "executions",
    "execution_steps",
    "step_attempts",
    "work_items",
    "execution_events",
    "tenant_policies",
    "modules",
    "ingress_rejections",
    "webhook_subscriptions",
    "webhook_deliveries",
    "outbox",
    # The outbox before the trail: a record is written to the store before it leaves the outbox, so one the relay
    # moves while the export reads is in one of the two reads at least; read the other way round, it was in neither.
    "audit_outbox",
    "audit_events",
)
WITHHELD_COLUMNS: Mapping[str, frozenset[str]] = {
    # The signing secret (sealed, ADR 0040): whoever holds the archive could sign webhooks the tenant's receivers
    # trust. The API shows it once, when created or rotated, and never reads it back; a new home rotates its own.
    "webhook_subscriptions": frozenset({"secret"}),
}
NOT_EXPORTED: Mapping[str, str] = {
    "task_token_keys": "a secret (sealed, ADR 0040): it signs task tokens that complete the tenant's steps",
    "idempotency_keys": "answers kept 24 hours for a retry, not data; a webhook create's holds its secret sealed",
    "rate_buckets": "a counter of the tenant's requests, not its data",
    "tenant_locks": "lock rows; they hold nothing of the tenant's (ADR 0002)",
    "work_pollers": "operational bookkeeping: when the tenant's workers last polled each action (a wait reason's"
    " hint, overwritten by every poll and trimmed); the work itself is in work_items and step_attempts",
}
"""Tenant tables the export leaves out on purpose, and why; erasure deletes them with the rest (`TENANT_TABLES`)."""
AUDIT_TRAIL = "audit_events"
"""The archive's audit trail: the configured audit store's export, so a trail kept in Cosmos DB is archived as well
(read from the table, it was archived empty); the Postgres store's export is that table."""


logger = logging.getLogger(__name__)
ORCHESTRATION_SETTLE_S = 30.0
"""How long an erasure waits for a terminated orchestration to reach a terminal state before purging it."""


def tenant_blob_prefix(tenant_id: UUID) -> str:
    """Every blob of a tenant is named under this prefix."""
    return f"{tenant_id}/"


def tenant_exists(tenant_id: UUID, *, within_s: float | None = None) -> bool:
    """Whether the tenant row is there, in a short transaction of its own (an erasure holding it is waited for).

    With `within_s`, the borrow of a pooled connection, that wait and the look itself are each bounded by it (the
    borrow's timeout, `lock_timeout` through `bounded_lock_waits`, and a transaction-local `statement_timeout`):
    psycopg_pool.PoolTimeout, psycopg.errors.LockNotAvailable or QueryCanceled past it, for a caller that must not
    hold its thread for the pool's timeout while the pool is exhausted, nor its thread and its connection for the 60 s
    statement timeout while an erasure holds the row."""
    if within_s is None:
        with tenant_transaction(tenant_id) as conn:
            return hold_tenant(conn, tenant_id)
    bound_ms = max(1, math.ceil(within_s * 1000))
    with bounded_lock_waits(bound_ms), tenant_transaction(tenant_id, borrow_timeout_s=within_s) as conn:
        conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)", (f"{bound_ms}ms",))
        return hold_tenant(conn, tenant_id)


_EXPORTABLE = "SELECT erasing_since IS NULL AS exportable FROM app.tenants WHERE id = %s FOR KEY SHARE"


def export_may_stand(tenant_id: UUID) -> bool:
    """Whether an export of the tenant may be kept: its row is there and not marked for erasure, read in a short
    transaction of its own (an erasure holding the row is waited for).

    A marked tenant is as good as gone: its erasure has begun deleting (it marks before anything goes, and nothing
    clears the mark), and one that failed after its first blob pass left the row while the export's archive and
    copies went; kept, the export answered with a manifest naming blobs that were no longer there."""
    with tenant_transaction(tenant_id) as conn:
        row = conn.execute(_EXPORTABLE, (tenant_id,)).fetchone()
    return bool(row and row["exportable"])


def kept_for_tenant(
    tenant_id: UUID,
    container: ContainerClient,
    name: str,
    *,
    within: StorageCall = unbounded,
    look_within_s: float | None = None,
) -> bool:
    """After the tenant's blob `name` was written: True while the tenant is there; False, the blob deleted, when the
    tenant was erased meanwhile.

    An erasure deletes the tenant's blobs once more after its rows: that last pass sees a blob written before the
    tenant row went, while one written after it outlived the tenant for ever. Looked at after the write, the row tells
    which: there, the row's delete and the last pass are still to come; gone, the blob is its writer's to remove. No
    connection is held while the blob is written: a slow blob store would hold the pool from every tenant.
    `within` bounds the delete (a module's: a window of its own from when it is tried, REMOVAL_WINDOW_S, whatever is
    left of its attempt, ADR 0026). `look_within_s` bounds the look at the tenant row (`tenant_exists`), else an
    erasure holding the row is waited for up to the statement timeout: past it LockNotAvailable (or QueryCanceled) is
    raised, and the blob, written before the erasure's row delete commits, is left to the erasure's last pass.
    """
    if tenant_exists(tenant_id, within_s=look_within_s):
        return True
    try:
        within(f"the removal of {name!r}", lambda **options: container.delete_blob(name, **options))
    except ResourceNotFoundError:
        pass  # removed by the erasure's own pass
    except Exception as exc:
        # The tenant is gone all the same, and its writer must not be retried as if it were not. The erasure's record
        # may have been dropped already (its prefix was empty for seven days): noted again, the timer looks again.
        _note_blob_left(tenant_id, f"blob {name!r}", exc)
    return False


def _note_blob_left(tenant_id: UUID, what: str, failure: Exception) -> None:
    """Record that erased `tenant_id` has blobs left (`what`, as the log names them), for the `erased_tenant_blobs`
    timer (ADR 0046)."""
    try:
        with platform_transaction() as conn:
            conn.execute(NOTE_ERASED_TENANT, (tenant_id,))
    except Exception as exc:
        # Neither storage nor the database: only an operator can tell which blob it was.
        logger.error(
            "%s of erased tenant %s was not removed (%s: %s) nor recorded for removal (%s: %s); remove it",
            what,
            tenant_id,
            type(failure).__name__,
            failure,
            type(exc).__name__,
            exc,
        )
        return
    # Still an ERROR, as operators were told of these before: the timer retries, but storage refused a delete.
    logger.error(
        "%s of erased tenant %s was not removed (%s: %s); the erased_tenant_blobs timer removes it",
        what,
        tenant_id,
        type(failure).__name__,
        failure,
    )


EXPORT_BATCH_ROWS = 500
"""Rows an export holds in memory at once: it reads each table a page of this many rows at a time."""
EXPORT_SPOOL_BYTES = 8 * 1024 * 1024
"""An archive up to this size is assembled in memory; a bigger one in a temporary file, then uploaded from it."""
EXPORTS_FOLDER = "exports"
"""The folder under a tenant's prefix where its exports are written, each in a folder of its own named by its time."""
EXPORT_ARCHIVE = "archive.json"
"""The export's rows, in its folder."""
EXPORT_MANIFEST = "manifest.json"
"""The export's list of what it holds, in its folder: written last, so an export without one is not complete."""
EXPORT_CHUNK_BYTES = 4 * 1024 * 1024
"""A blob's bytes an export holds in memory at once while it copies them: one ranged read, then one block."""
EXPORT_LOOK_S = 5.0
"""How often an export looks at its tenant while it copies blobs: an erasure meanwhile stops the copy early."""


class TenantGoneError(LookupError):
    """The tenant was erased before its export began, or while it ran (its export is then removed again)."""


class ExportTooLongError(RuntimeError):
    """The export's blobs were still being copied at its deadline: it stopped, and what it wrote is removed."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export was written and what it holds: its folder, the archive and the manifest in it, the rows of
    each kind and the tenant's blobs copied beside them."""

    blob_name: str
    counts: dict[str, int]
    folder: str
    manifest: str
    blobs: int
    blob_bytes: int


def export_folder(tenant_id: UUID, at: datetime) -> str:
    """The folder of the tenant's export begun `at` (under its prefix, so its erasure removes it)."""
    return f"{tenant_blob_prefix(tenant_id)}{EXPORTS_FOLDER}/{at:%Y%m%dT%H%M%S%fZ}/"


def export_tenant(
    tenant: Tenant,
    container: ContainerClient,
    audit_store: AuditStore | None = None,
    *,
    folder: str | None = None,
    deadline: float | None = None,
    remove_on_failure: bool = True,
) -> ExportResult:
    """Export the tenant to a folder `<tenant>/exports/<time>/` of its own: `archive.json` (its rows, read under its
    own RLS context, and its audit trail from `audit_store`, by default the configured one), a copy of every blob
    under its prefix but its exports (stored outputs and artifacts) under the same name relative to the prefix, and
    `manifest.json`, written last, naming each blob with its size, sha256 and MD5. A `$blob` reference's name (or an
    artifact's `blob_name`) `<tenant>/<path>` is the export's `<path>`. Memory is bounded (the archive spooled as
    before, a blob copied a chunk at a time). TenantGoneError when the tenant was erased, or marked for erasure,
    before or meanwhile; nothing of the export is left then. Any other failure removes what the export wrote, so it
    is safe to send again. `folder` (by default one named by the time now) is given by an export job, which records it
    before anything is written so that a retry of a killed attempt removes it (`export_jobs`). `deadline` (a
    `time.monotonic()` value, an export job's) is looked at after the archive, before each blob and before each chunk
    of a blob: past it, ExportTooLongError, and nothing of the export is left as on any failure. An export job passes
    `remove_on_failure=False`: on any failure, TenantGoneError included, what was written stays for it to remove
    (bounded) after it has recorded the failure, the folder being listed on the job."""
    audit_store = audit_store or get_audit_store()
    folder = folder or export_folder(tenant.id, datetime.now(UTC))
    try:
        result = _write_export(tenant, container, audit_store, folder, deadline)
    except BaseException:
        # An export cut short is no export: the next one writes a whole folder of its own. A tenant gone before the
        # first write left nothing to remove. A job removes it itself, bounded, once its failure is recorded: removed
        # here, unbounded, a tenant gone meanwhile held the job `running` for as long (and its job may go with the
        # tenant, so the job notes the tenant for the `erased_tenant_blobs` timer when its pass stops early).
        if remove_on_failure:
            _remove_export(tenant.id, container, folder)
        raise
    # The erasure does not wait for an export. Looked at after the last write, a tenant still there means its
    # erasure's last blob pass comes later and removes the export; a tenant gone means that pass may be over, and the
    # export is removed here (a host killed in between leaves it to the `erased_tenant_blobs` timer, ADR 0046). A
    # tenant marked for erasure counts as gone (`export_may_stand`): its erasure may have failed after its first pass.
    if not export_may_stand(tenant.id):
        if remove_on_failure:
            _remove_export(tenant.id, container, folder)
        raise TenantGoneError(str(tenant.id))
    return result


def _write_export(
    tenant: Tenant, container: ContainerClient, audit_store: AuditStore, folder: str, deadline: float | None
) -> ExportResult:
    """Write the archive, then the blobs, then the manifest to `folder`; TenantGoneError once the tenant is seen
    gone, ExportTooLongError once `deadline` has passed (after the archive, before a blob or a chunk)."""
    counts: dict[str, int] = {}
    archive = _upload_archive(tenant, counts, audit_store, container, folder + EXPORT_ARCHIVE)
    # The archive of a big tenant may take long to read and upload: the copy does not begin past the deadline.
    _check_deadline(str(tenant.id), deadline)
    with tempfile.SpooledTemporaryFile(max_size=EXPORT_SPOOL_BYTES) as listed:
        copied, copied_bytes = _copy_blobs(tenant.id, container, folder, listed, deadline)
        manifest_name = folder + EXPORT_MANIFEST
        head = {
            "tenant_id": str(tenant.id),
            "folder": folder,
            "archive": {"name": EXPORT_ARCHIVE, **archive},
            "references": f"a blob the rows name {tenant_blob_prefix(tenant.id)}<path> ($blob references, artifacts'"
            " blob_name) is <path> in this folder",
            "blob_count": copied,
            "blob_bytes": copied_bytes,
        }
        with tempfile.SpooledTemporaryFile(max_size=EXPORT_SPOOL_BYTES) as manifest:
            manifest.write(json.dumps(head, sort_keys=True)[:-1].encode() + b', "blobs": [')
            listed.seek(0)
            while piece := listed.read(EXPORT_CHUNK_BYTES):
                manifest.write(piece)
            manifest.write(b"]}")
            _upload_spool(container, manifest_name, manifest)
    return ExportResult(archive["blob_name"], counts, folder, manifest_name, copied, copied_bytes)


def _upload_archive(
    tenant: Tenant, counts: dict[str, int], audit_store: AuditStore, container: ContainerClient, name: str
) -> dict[str, Any]:
    """Spool and upload the archive of the tenant's rows as `name`; its name, size and sha256."""
    digest = hashlib.sha256()
    with tempfile.SpooledTemporaryFile(max_size=EXPORT_SPOOL_BYTES) as spool:
        for piece in _archive(tenant, counts, audit_store):
            spool.write(piece)
            digest.update(piece)
        # No transaction is open while the archive uploads: one held across it (with the tenant row locked) held
        # back every tenant's events and webhooks, and past the idle bound its session was ended after the upload (a
        # 503, and the retry wrote a second archive).
        size = _upload_spool(container, name, spool)
    return {"blob_name": name, "size": size, "sha256": digest.hexdigest()}


def _upload_spool(container: ContainerClient, name: str, spool: Any) -> int:
    """Upload the JSON in `spool` (written to its end) as the new blob `name`; its size."""
    size = int(spool.tell())
    spool.seek(0)
    container.upload_blob(
        name, spool, length=size, overwrite=False, content_settings=ContentSettings(content_type="application/json")
    )
    return size


def _copy_blobs(
    tenant_id: UUID, container: ContainerClient, folder: str, listed: Any, deadline: float | None = None
) -> tuple[int, int]:
    """Copy every blob under the tenant's prefix but its exports into `folder` under the same relative name, writing
    each one's manifest entry to `listed` (comma-separated JSON objects); how many blobs and bytes. Looks at the
    tenant every `EXPORT_LOOK_S` (TenantGoneError once it is gone or marked for erasure), and at `deadline` before
    each blob and each chunk of one (ExportTooLongError once it has passed)."""
    prefix = tenant_blob_prefix(tenant_id)
    exports = f"{prefix}{EXPORTS_FOLDER}/"
    copied = copied_bytes = 0
    looked = time.monotonic()
    for source in container.list_blobs(name_starts_with=prefix):
        if source.name.startswith(exports):
            continue  # earlier exports (and this one) are not the tenant's data
        # Stopped between blobs (and between chunks of one, `_staged_copy`), so the attempt ends before the host ends
        # its run, and its job says why.
        _check_deadline(str(tenant_id), deadline)
        if time.monotonic() - looked >= EXPORT_LOOK_S:
            if not export_may_stand(tenant_id):
                raise TenantGoneError(str(tenant_id))
            looked = time.monotonic()
        entry = _copy_blob(container, source.name, folder + source.name[len(prefix) :], deadline)
        if entry is None:
            continue  # removed meanwhile (a compensated artifact): no longer the tenant's
        entry["name"] = source.name[len(prefix) :]
        listed.write((b"," if copied else b"") + json.dumps(entry, sort_keys=True).encode())
        copied += 1
        copied_bytes += int(entry["size"])
    return copied, copied_bytes


def _check_deadline(tenant: str, deadline: float | None) -> None:
    """ExportTooLongError (naming `tenant`) once `deadline` (a `time.monotonic()` value, or None for none) has
    passed."""
    if deadline is not None and time.monotonic() >= deadline:
        raise ExportTooLongError(tenant)


COPY_ATTEMPTS = 3
"""Tries of one blob's copy whose source was rewritten while it was read (an artifact's later attempt)."""


def _copy_blob(
    container: ContainerClient, source: str, target: str, deadline: float | None = None
) -> dict[str, Any] | None:
    """Copy blob `source` to the new blob `target` through this host a chunk at a time, every read held to the
    source's ETag; its size, sha256, MD5 (also the copy's Content-MD5) and content type, or None when the source is
    gone. ExportTooLongError before a chunk once `deadline` has passed (its staged blocks discarded)."""
    for attempt in range(1, COPY_ATTEMPTS + 1):
        try:
            return _copy_once(container, source, target, deadline)
        except ResourceNotFoundError:
            return None
        except ResourceModifiedError:
            if attempt == COPY_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _copy_once(container: ContainerClient, source: str, target: str, deadline: float | None) -> dict[str, Any]:
    """One copy of `source` as it is now (ResourceModifiedError when it is rewritten meanwhile): one Put Blob for a
    blob of one chunk (all or nothing), staged blocks committed at the end for a bigger one, discarded on any way
    out before their commit."""
    properties = container.get_blob_client(source).get_blob_properties()
    size, etag = int(properties.size), properties.etag
    content_type = properties.content_settings.content_type or "application/octet-stream"
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    copy = container.get_blob_client(target)
    blocks: list[BlobBlock] = []
    try:
        last = _staged_copy(container, source, size, etag, copy, blocks, (sha256, md5), deadline)
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(md5.digest()))
        metadata = {"sha256": sha256.hexdigest()}
        if blocks:
            copy.commit_block_list(blocks, content_settings=settings, metadata=metadata)
        else:
            copy.upload_blob(last, overwrite=False, content_settings=settings, metadata=metadata)
    except BaseException as exc:
        # Staged blocks are the tenant's bytes, and no listing shows them unless asked for uncommitted blobs: left,
        # neither the export's cleanup nor the erasure nor the timer found them (storage drops them after a week;
        # the emulator never). A source gone meanwhile is no failure of the export, which goes on: nothing else
        # would remove them then.
        if blocks:
            _discard_after(container, target, exc)
        raise
    return {
        "size": size,
        "sha256": sha256.hexdigest(),
        "content_md5": base64.b64encode(md5.digest()).decode(),
        "content_type": content_type,
    }


def _discard_after(container: ContainerClient, target: str, failure: BaseException) -> None:
    """Discard the blocks staged for `target` by a copy that failed with `failure`. A discard that fails is logged
    when `failure` ends the export, which then goes on (the export's removal lists staged blocks and takes them):
    raised instead, storage's error replaced it, and a job past its deadline was recorded `storage-unavailable`,
    not `too-large`. It is raised when the copy goes on past `failure` (a source gone or rewritten meanwhile), since
    nothing else would remove the blocks then."""
    try:
        discard_staged(container, target)
    except Exception as exc:
        if isinstance(failure, ResourceNotFoundError | ResourceModifiedError):
            raise
        # The tenant, not the blob: its name is the tenant's artifact path, its data.
        logger.warning(
            "an export copy of tenant %s left staged blocks (%s); the export's removal takes them",
            target.split("/", 1)[0],
            type(exc).__name__,
        )


def _staged_copy(
    container: ContainerClient,
    source: str,
    size: int,
    etag: str,
    copy: BlobClient,
    blocks: list[BlobBlock],
    digests: tuple[Any, Any],
    deadline: float | None = None,
) -> bytes:
    """Read `source` a chunk at a time (held to `etag`) into `digests`, staging each chunk as a block of `copy` (its
    id appended to `blocks`) when there is more than one; the last chunk read. ExportTooLongError before a chunk once
    `deadline` has passed."""
    last = b""
    for offset in range(0, size, EXPORT_CHUNK_BYTES):
        # A big blob is many chunks: looked at between blobs only, its copy ran on past the deadline to the host's
        # time limit. What was staged is discarded by the caller.
        _check_deadline(source.split("/", 1)[0], deadline)
        last = container.download_blob(
            source,
            offset=offset,
            length=min(EXPORT_CHUNK_BYTES, size - offset),
            etag=etag,
            match_condition=MatchConditions.IfNotModified,
        ).readall()
        for digest in digests:
            digest.update(last)
        if size > EXPORT_CHUNK_BYTES:
            # Appended before it is staged: a stage that fails may have reached storage all the same.
            blocks.append(BlobBlock(base64.b64encode(f"{offset // EXPORT_CHUNK_BYTES:010d}".encode()).decode()))
            copy.stage_block(blocks[-1].id, last)
    return last


TENANT_LISTING = ["uncommittedblobs"]
"""What every listing that removes a tenant's blobs (or tells that none is left) includes: a blob with staged blocks
only (a copy cut short before its commit) is left out of a plain listing."""


def delete_blob_of_any_kind(container: ContainerClient, name: str) -> bool:
    """Delete blob `name`, committed or with staged blocks only; False when it was not there (deleted meanwhile)."""
    try:
        container.delete_blob(name)
    except ResourceNotFoundError:
        # Storage answers 404 to the delete of a blob with staged blocks only (the emulator deletes it).
        return discard_staged(container, name)
    return True


def discard_staged(container: ContainerClient, name: str) -> bool:
    """Remove blob `name` with whatever blocks are staged for it: an empty block list committed drops them (and
    makes the blob one that a delete reaches), then the blob is deleted; False when it was gone by then."""
    container.get_blob_client(name).commit_block_list([])
    try:
        container.delete_blob(name)
    except ResourceNotFoundError:
        return False  # deleted meanwhile (an erasure's pass)
    return True


def _remove_export(
    tenant_id: UUID,
    container: ContainerClient,
    folder: str,
    *,
    until: float | None = None,
    limit: int | None = None,
) -> tuple[int, bool]:
    """Delete every blob of the export in `folder`; how many deletes it tried, and whether it went through the whole
    listing without a failure. What storage refuses is noted for the `erased_tenant_blobs` timer when the tenant is
    gone, logged otherwise. Bounded (`until`, a `time.monotonic()` value, or `limit` deletes given): it stops at the
    first failure, past `until` or after `limit` deletes, the rest left for a later pass. A folder that is not one of
    the tenant's exports is refused: nothing is deleted."""
    if not is_export_folder(tenant_id, folder):
        logger.error("export folder %r is not one of tenant %s's exports: nothing of it is removed", folder, tenant_id)
        return 0, False
    bounded = until is not None or limit is not None
    try:
        listing = iter(container.list_blobs(name_starts_with=folder, include=TENANT_LISTING))
        names = [blob.name for blob in (itertools.islice(listing, limit) if limit is not None else listing)]
    except Exception as exc:
        _left_behind(tenant_id, folder, None, exc)
        return 0, False
    tried = left = 0
    failure: Exception | None = None
    for name in names:
        if until is not None and time.monotonic() >= until:
            return tried, False  # the next pass goes on
        tried += 1
        try:
            delete_blob_of_any_kind(container, name)
        except Exception as exc:
            left, failure = left + 1, exc
            if bounded:
                # In an outage every delete waits out the client's retries (about a minute): one failure says enough.
                _left_behind(tenant_id, folder, None, exc)
                return tried, False
    if failure is not None:
        _left_behind(tenant_id, folder, left, failure)
    return tried, failure is None and (limit is None or len(names) < limit)


def is_export_folder(tenant_id: UUID, folder: str) -> bool:
    """Whether `folder` names a folder inside the tenant's exports folder (never the exports folder itself, another
    tenant's blobs or the whole container)."""
    exports = f"{tenant_blob_prefix(tenant_id)}{EXPORTS_FOLDER}/"
    return folder.startswith(exports) and folder.endswith("/") and len(folder) > len(exports)


@dataclass(frozen=True)
class ExportRemoval:
    """One removal of an export folder: whether it was then listed empty, how many deletes it tried, whether its name
    was refused (not a folder of the tenant's exports), and whether it stopped early (a failure, or a bound)."""

    empty: bool
    tried: int
    refused: bool = False
    stopped: bool = False


def remove_export(
    tenant_id: UUID,
    container: ContainerClient,
    folder: str,
    *,
    until: float | None = None,
    limit: int | None = None,
) -> ExportRemoval:
    """Delete the blobs of the export in `folder` (a killed attempt's, a failed job's), bounded by `until` and
    `limit` as `_remove_export`; whether the folder was then listed empty. Never raises: what storage refuses is
    logged, or noted for the `erased_tenant_blobs` timer when the tenant is gone, and the export job that named the
    folder keeps it to remove it again (`export_jobs`). A name that is not a folder of the tenant's exports (bad
    data) is refused and logged, nothing deleted."""
    if not is_export_folder(tenant_id, folder):
        logger.error("export folder %r is not one of tenant %s's exports: refused", folder, tenant_id)
        return ExportRemoval(empty=False, tried=0, refused=True)
    tried, whole = _remove_export(tenant_id, container, folder, until=until, limit=limit)
    if not whole and (until is not None or limit is not None):
        return ExportRemoval(empty=False, tried=tried, stopped=True)  # the next pass goes on
    try:
        left = container.list_blobs(name_starts_with=folder, include=TENANT_LISTING)
        return ExportRemoval(empty=next(iter(left), None) is None, tried=tried)
    except Exception as exc:
        logger.warning("export folder %r of tenant %s could not be listed (%s)", folder, tenant_id, type(exc).__name__)
        return ExportRemoval(empty=False, tried=tried)


def _left_behind(tenant_id: UUID, folder: str, left: int | None, failure: Exception) -> None:
    """Blobs of an export in `folder` that could not be removed (`left` of them; None: not even listed): the timer's
    when the tenant is gone, an operator's otherwise. The log names the folder, not the blobs: their names are the
    tenant's artifact paths, its data."""
    what = f"{'some' if left is None else left} blobs of export folder {folder!r}"
    try:
        gone = not tenant_exists(tenant_id)
    except Exception:
        gone = True  # noted for the timer, which removes nothing of a tenant that is not erased
    if gone:
        _note_blob_left(tenant_id, what, failure)
    else:
        logger.error(
            "%s of tenant %s were not removed (%s: %s); an export without its manifest is incomplete",
            what,
            tenant_id,
            type(failure).__name__,
            failure,
        )


def _archive(tenant: Tenant, counts: dict[str, int], audit_store: AuditStore) -> Iterator[bytes]:
    """The archive's bytes, a batch of rows at a time; `counts` gets each table's rows once it is written.

    Every read is a short transaction of its own, none open while the bytes are written (ADR 0012): a tenant
    transaction has an id from its start (the tenant pin writes a row), and the domain-event relay sends only the
    events of transactions older than every one running, so one open across a big tenant's tables held back every
    tenant's events and webhooks for as long."""
    with tenant_transaction(tenant.id) as conn:
        # Read, not held (FOR KEY SHARE until the upload was what stalled the relay): the look after the upload
        # tells an erasure meanwhile.
        current = get_tenant(conn, tenant.id)
        if current is None or current.erasing_since is not None:
            raise TenantGoneError(str(tenant.id))
        # The tenant's own settings document (its Tenant.Admin writes it and reads it back whole; bounded to 64 KiB)
        # is the tenant's data as much as its rows are; the platform keeps no secret in it.
        settings = tenant_settings(conn)
    head = {
        "exported_at": datetime.now(UTC).isoformat(),
        "tenant": {**tenant.model_dump(mode="json"), "settings": settings},
    }
    yield json.dumps(head, default=str, sort_keys=True)[:-1].encode()  # the object stays open for the tables
    for table in EXPORTED_TABLES:
        yield f", {json.dumps(table)}: [".encode()
        written = 0
        for batch in _batches(_exported_rows(tenant.id, table, audit_store), EXPORT_BATCH_ROWS):
            yield b"".join(
                (b"," if written + index else b"") + json.dumps(row, default=str, sort_keys=True).encode()
                for index, row in enumerate(batch)
            )
            written += len(batch)
        counts[table] = written
        yield b"]"
    yield b"}"


def _exported_rows(tenant_id: UUID, table: str, audit_store: AuditStore) -> Iterable[dict[str, Any]]:
    """The rows the archive holds for `table`: the trail from the audit store, but the Postgres store's (the table of
    that name) a page per transaction as the other tables, which its own export reads in one transaction."""
    if table == AUDIT_TRAIL and not isinstance(audit_store, PostgresAuditStore):
        # A store outside Postgres (Cosmos DB) holds no transaction here while it is read.
        return audit_store.export(tenant_id)
    # The Postgres store's table is read on the tenants' pool, where that store reads unless built with another.
    return _table_rows(tenant_id, table)


def _table_rows(tenant_id: UUID, table: str) -> Iterator[dict[str, Any]]:
    """Every row of `app.<table>` the tenant's context shows, but for its `WITHHELD_COLUMNS`: `EXPORT_BATCH_ROWS` at a
    time in primary key order, each page read in a transaction of its own that has ended before its rows are handed
    on. A row there throughout is read once (a key never changes); one added or removed meanwhile may or may not be,
    as a row written while a single read ran."""
    after: list[Any] | None = None
    page: _Page | None = None
    while True:
        with tenant_transaction(tenant_id) as conn:
            page = page or _page_of(conn, table)
            rows = conn.execute(page.query(after is not None), [*(after or ()), EXPORT_BATCH_ROWS]).fetchall()
        yield from rows
        if len(rows) < EXPORT_BATCH_ROWS:
            return
        after = [rows[-1][column] for column in page.keys]


@dataclass(frozen=True)
class _Page:
    """How one page of a table is read: its columns (all but the withheld), after the last one's primary key."""

    table: str
    columns: sql.Composable
    keys: tuple[str, ...]

    def query(self, after: bool) -> sql.Composed:
        """The page's SELECT: the first, or the one after a row whose key values come before the LIMIT."""
        keys = sql.SQL(", ").join(sql.Identifier(key) for key in self.keys)
        where = sql.SQL("WHERE ({}) > ({})").format(keys, sql.SQL(", ").join(sql.Placeholder() * len(self.keys)))
        return sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT %s").format(
            self.columns, sql.Identifier("app", self.table), where if after else sql.SQL(""), keys
        )


_PRIMARY_KEY = (
    "SELECT a.attname FROM pg_catalog.pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
    " JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
    " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n"
)


def _page_of(conn: Any, table: str) -> _Page:
    """How `table` is read a page at a time, from the catalog (every exported table has a primary key: a test)."""
    qualified = sql.Identifier("app", table)
    keys = tuple(str(row["attname"]) for row in conn.execute(_PRIMARY_KEY, (qualified.as_string(conn),)).fetchall())
    columns: sql.Composable = sql.SQL("*")
    if withheld := WITHHELD_COLUMNS.get(table):
        # Left out of the SELECT, so a withheld value never leaves Postgres; the other columns as the table has them.
        described = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(qualified)).description
        columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in described if c.name not in withheld)
    return _Page(table, columns, keys)


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """`rows` in lists of up to `size`."""
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


_FORGET_CREATE_ANSWERS = (
    "DELETE FROM control.idempotency_keys WHERE response_body ->> 'id' = %s OR response_body ->> 'tenant_id' = %s"
)
"""The control plane's kept answers that name the tenant: its create's (`id`) and its export requests' (`tenant_id`)."""
_FORGET_EXPORT_JOBS = "DELETE FROM control.tenant_export_jobs WHERE tenant_id = %s"
NOTE_ERASED_TENANT = (
    "INSERT INTO control.erased_tenant_blobs (tenant_id) VALUES (%s)"
    " ON CONFLICT (tenant_id) DO UPDATE SET noted_at = now(), failure = NULL"
)
"""Records an erased tenant whose prefix the `erased_tenant_blobs` timer empties (migration 0053, ADR 0046); noted
again, its record is kept seven more days, and a sweep that read it before drops nothing."""


class ErasureContendedError(RuntimeError):
    """The erasure could not finish for writers still at work on the tenant (a row added under one it deleted, a
    deadlock, an orchestration that would not settle); nothing of the tenant's rows is gone, and asking again
    completes it."""


class ErasureRefusedError(RuntimeError):
    """The tenant is not a suspended tenant marked for erasure: nothing of it is erased."""

    def __init__(self, status: str, message: str | None = None) -> None:
        super().__init__(message or f"the tenant is {status}, not a suspended tenant marked for erasure")
        self.status = status


class ErasureNotBegunError(ErasureRefusedError):
    """The tenant is suspended but not marked for erasure: `begin_erasure` marks it (and audits the mark) first."""

    def __init__(self) -> None:
        super().__init__("suspended", "the tenant is suspended but not marked for erasure: begin its erasure first")


ERASURE_LEASE_S = 120
"""How long an erasure's lease (`control.tenant_erasures`, migration 0078) holds without a renewal: another erasure of
the tenant is refused while it holds, and one whose host was killed leaves the tenant erasable again this long after
its last renewal."""
ERASURE_RENEW_S = 30.0
"""How often a running erasure renews its lease (`renew_erasure_lease`)."""
ERASURE_RETRY_AFTER_S = 5
"""Retry-After of an erasure refused because the tenant row's lock was not had at once (an erasure's last
transaction holds it)."""
_TAKE_LEASE = (
    "INSERT INTO control.tenant_erasures AS e (tenant_id, holder, lease_until)"
    " VALUES (%s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (tenant_id) DO UPDATE SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until"
    " WHERE e.lease_until < now() OR e.holder = EXCLUDED.holder RETURNING holder"
)
_LEASE_LEFT = (
    "SELECT greatest(1, ceil(extract(epoch FROM lease_until - now())))::integer AS left_s"
    " FROM control.tenant_erasures WHERE tenant_id = %s"
)
_RENEW_LEASE = (
    "UPDATE control.tenant_erasures SET lease_until = now() + make_interval(secs => %s)"
    " WHERE tenant_id = %s AND holder = %s"
)
_DROP_LEASE = "DELETE FROM control.tenant_erasures WHERE tenant_id = %s AND holder = %s"
_FORGET_LEASE = "DELETE FROM control.tenant_erasures WHERE tenant_id = %s"


class ErasureInProgressError(RuntimeError):
    """Another erasure of the tenant is running (it holds the tenant's erasure lease, or its last transaction holds the
    tenant row): nothing was done, and this one may be sent again after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"another erasure of the tenant is running; send it again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def begin_erasure(
    tenant_id: UUID, *, audit: Callable[[Any, Tenant], None] | None = None, holder: UUID | None = None
) -> Tenant:
    """Mark the tenant as being erased, in a short transaction of its own under its row's lock, before anything of
    it goes; returns the marked tenant. `audit` gets that transaction and the tenant as this call marks it, so the
    mark's own record commits exactly with the mark (a repeat, which finds the mark set, writes none).

    ErasureRefusedError when it is not suspended, TenantGoneError when it does not exist. Checked on an unlocked read
    only, a tenant set active while its erasure ran was erased all the same. Once marked, the control plane refuses
    any change of its status (409 `tenant-erasing`), and nothing clears the mark: an erasure that failed or was
    interrupted is sent again, which finds the mark set and goes on (ADR 0012). `erase_tenant` erases no tenant
    that is not marked.

    With `holder` (the erasure's own random id), the tenant's erasure lease is taken in the same transaction, for
    ERASURE_LEASE_S (renewed by `renew_erasure_lease`, dropped with the tenant row or by `end_erasure_lease`).
    ErasureInProgressError, nothing written, when another erasure holds the lease, or when the row's lock is not had
    within ROW_LOCK_WAIT_MS and the tenant is marked or leased (an erasure's last transaction holds it; held by
    anything else, TenantRowBusyError): a repeat waited on that lock, each holding a
    connection of the control plane's small pool, until every tenant's token lookups failed; and two at once both
    erased, the second's late pass removing the first's record."""
    with platform_transaction() as conn:
        on_marked = None if audit is None else partial(audit, conn)
        try:
            tenant = mark_erasing(conn, tenant_id, on_marked=on_marked)
        except TenantRowBusyError:
            # Held by its erasure (marked, or a lease taken): 409. Held by anything else (a change of the tenant, an
            # administrator): TenantRowBusyError, a 503. Each answered that an erasure of the tenant was running.
            if erasure_under_way(conn, tenant_id):
                raise ErasureInProgressError(ERASURE_RETRY_AFTER_S) from None
            raise
        if holder is not None and tenant is not None and tenant.erasing_since is not None:
            if conn.execute(_TAKE_LEASE, (tenant_id, holder, ERASURE_LEASE_S)).fetchone() is None:
                left = conn.execute(_LEASE_LEFT, (tenant_id,)).fetchone()
                raise ErasureInProgressError(int(left["left_s"]) if left else ERASURE_RETRY_AFTER_S)
    if tenant is None:
        raise TenantGoneError(str(tenant_id))
    if tenant.erasing_since is None:
        raise ErasureRefusedError(tenant.status)
    return tenant


def renew_erasure_lease(tenant_id: UUID, holder: UUID) -> bool:
    """Extend the erasure lease `holder` holds by ERASURE_LEASE_S; False when it holds none (ended, or taken over once
    it had run out)."""
    with platform_transaction() as conn:
        return conn.execute(_RENEW_LEASE, (ERASURE_LEASE_S, tenant_id, holder)).rowcount == 1


def _hold_lease(conn: Any, tenant_id: UUID, holder: UUID | None) -> None:
    """In `conn`'s transaction (each batch's, and the first and the last of the row deletion): renew the erasure lease
    `holder` holds, or ErasureInProgressError when it holds none (its lease ran out and another erasure took it, or
    that one has ended). The renewals beside the erasure stopped without a word once their lease was gone, and nothing
    else looked at it: after ERASURE_LEASE_S of failed renewals an erasure sent again took the lease while this one
    still deleted, and both answered 200, each writing its record. Nothing is looked at without a `holder`."""
    if holder is None:
        return
    if conn.execute(_RENEW_LEASE, (ERASURE_LEASE_S, tenant_id, holder)).rowcount != 1:
        left = conn.execute(_LEASE_LEFT, (tenant_id,)).fetchone()
        raise ErasureInProgressError(int(left["left_s"]) if left else ERASURE_RETRY_AFTER_S)


def end_erasure_lease(tenant_id: UUID, holder: UUID) -> None:
    """Drop the erasure lease `holder` holds (an erasure that failed: it may be sent again at once). The row
    deletion's last transaction drops it with the tenant row."""
    with platform_transaction() as conn:
        conn.execute(_DROP_LEASE, (tenant_id, holder))


_STILL_MARKED = "SELECT status, erasing_since FROM app.tenants WHERE id = %s"


def _check_marked(row: Mapping[str, Any] | None) -> None:
    """ErasureRefusedError unless the tenant row (None: gone, which a concurrent erasure's end leaves) is suspended and
    marked for erasure."""
    if row is not None and row["status"] != "suspended":
        raise ErasureRefusedError(str(row["status"]))
    if row is not None and row["erasing_since"] is None:
        raise ErasureNotBegunError


ROW_ERASE_ATTEMPTS = 5
"""Runs of the row deletion (its batches, then its last transaction) before the erasure answers that it should be
asked again."""
ERASE_BATCH_ROWS = 1000
"""Rows of one table one batch of the row deletion deletes, in a short transaction of its own."""
ROW_ERASE_PAUSE_S = 0.5
"""The pause before the row deletion runs again, times its attempt: the writers it met commit meanwhile."""
_CONTENDED = (errors.ForeignKeyViolation, errors.DeadlockDetected, errors.SerializationFailure)
"""What a writer at work on the tenant makes the row deletion fail with: a child row added under a parent already
read for deletion (its cancel's event, an activity under way), or each waiting on the other's rows."""
_LOCK_TENANT = "SELECT 1 FROM app.tenants WHERE id = %s FOR UPDATE"


def erase_tenant(
    tenant_id: UUID,
    container: ContainerClient,
    audit_store: AuditStore,
    *,
    executions: list[str] | None = None,
    purged: Iterable[str] = (),
    holder: UUID | None = None,
) -> dict[str, int]:
    """Delete the tenant's blobs, every row of it, its audit trail and its tenant row; returns counts per kind.

    Runs as the control plane inside the erased tenant's context: its DELETE policies reach that tenant only.
    Safe to run again after a partial failure: what lives outside Postgres goes first, while the tenant row still
    lets the erasure be asked again, and once more after the rows, for what was written while they went.
    `executions` gets the ids of every execution the rows held when they went (the last read once no other could be
    created): their orchestrations are the caller's to purge again, those started after its first purge included.
    Each of them but those in `purged` (the caller's first purge purged them) is recorded in
    `control.erased_tenant_orchestrations`, due at once, in the transaction that deletes it (ADR 0046): a host killed
    after it leaves the sweeper to purge what the caller's purge would have.
    The rows go in batches (`ERASE_BATCH_ROWS` of a table, each a short transaction), then what is left and the tenant
    row in one short transaction (`_erase_rest`). ErasureContendedError when writers kept adding rows under it: the
    tenant row is still there, marked, and asking again completes it.
    ErasureRefusedError, nothing deleted, unless the tenant is suspended and marked (`begin_erasure`), looked at
    before the blobs go and again under the row deletion's lock: every erasure goes through the mark, and so through
    its audit record and the control plane's refusal of a status change; a tenant already gone is erased again (what
    an interrupted erasure's writers left).
    With `holder` (the erasure's lease, `begin_erasure`), the lease is renewed in the first transaction, in every batch
    and in the last transaction: ErasureInProgressError, and nothing more deleted, once it holds none (another erasure
    took it after it ran out).
    """
    # Whoever calls: the mark cannot be cleared nor the tenant set active while it is set (the control plane's
    # refusal, the table's check), and the blobs and the audit trail are gone for good once deleted. Left to the
    # caller, a direct call erased a tenant no operator had marked, nor audited, and an active one as readily.
    with platform_transaction() as conn:
        _check_marked(conn.execute(_STILL_MARKED, (tenant_id,)).fetchone())
        # Before the audit trail goes: an erasure that lost its lease erased the record of the one that took it.
        _hold_lease(conn, tenant_id, holder)
    # The audit trail may live outside Postgres (Cosmos DB). Erased after the tenant row, a failure there left the
    # trail for ever: every retry answered 404, the tenant being gone.
    removed: dict[str, int] = {
        "blobs": delete_tenant_blobs(tenant_id, container),
        "audit_records": audit_store.erase(tenant_id),
    }
    rows = _Erased(listing=executions is not None, purged=frozenset(purged))
    for attempt in range(1, ROW_ERASE_ATTEMPTS + 1):
        try:
            _erase_batches(tenant_id, rows, holder)
            _erase_rest(tenant_id, rows, holder)
            break
        except _CONTENDED as exc:
            # That batch (or the last transaction) rolled back: the writer it met has committed (or given up) by now,
            # and the next run's deletes, each reading afresh, take its rows too. Table after table, the erasure
            # deleted a child table and then met a row a writer added to it under a parent not yet deleted: a 500,
            # every time writers were at work.
            if attempt == ROW_ERASE_ATTEMPTS:
                raise ErasureContendedError(
                    f"writers kept changing the tenant's rows while they were deleted ({type(exc).__name__});"
                    " the tenant and some of its rows are still there: ask again"
                ) from exc
            logger.info("erasure of tenant %s met a writer (%s); running again", tenant_id, type(exc).__name__)
            time.sleep(ROW_ERASE_PAUSE_S * attempt)
    removed.update(rows.removed)
    if executions is not None:
        executions[:] = rows.executions
    # What was written while the rows went: an audit batch the outbox relay was carrying, a blob of a request that
    # had passed its tenant check (an export, a step's output). The tenant is gone now, so a failure here cannot be
    # retried through the API: blobs left are the timer's (recorded above), audit records are logged for an operator.
    # Each store is tried whatever the other did: one try for both, blob storage failing skipped the audit trail, and
    # the records a copy wrote before the rows went (it leaves them to this pass) outlived the tenant.
    late: tuple[tuple[str, Callable[[], int]], ...] = (
        ("blobs", partial(delete_tenant_blobs, tenant_id, container)),
        ("audit_records", partial(audit_store.erase, tenant_id)),
    )
    for kind, erase_late in late:
        try:
            removed[kind] += erase_late()
        except Exception:
            logger.exception("erasure of tenant %s: %s written meanwhile could not be removed", tenant_id, kind)
    return removed


NOTE_ERASED_ORCHESTRATION = (
    "INSERT INTO control.erased_tenant_orchestrations (instance_id, tenant_id, due_at)"
    " VALUES (%s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (instance_id) DO UPDATE SET noted_at = now(),"
    " due_at = GREATEST(control.erased_tenant_orchestrations.due_at, EXCLUDED.due_at)"
)
"""Records an orchestration that may outlive its erased tenant, due `secs` from now (migration 0069, ADR 0046); a
record due later (a start cut off) keeps its due time."""
_ERASE_BATCH = "SELECT app.erase_tenant_rows(%s, %s) AS removed"
_ERASE_EXECUTIONS = "SELECT erased.id FROM app.erase_tenant_executions(%s) AS erased (id)"


@dataclass
class _Erased:
    """What the row deletion removed so far, across its batches and its runs: counts per table and the ids of the
    executions it deleted (kept when `listing`). `purged`: executions whose orchestrations are purged already."""

    listing: bool
    purged: frozenset[str]
    removed: dict[str, int] = field(default_factory=dict)
    executions: list[str] = field(default_factory=list)

    def count(self, table: str, rows: int) -> None:
        self.removed[table] = self.removed.get(table, 0) + rows

    def deleted_executions(self, ids: list[str]) -> None:
        """Count and keep executions `ids`, once the transaction that deleted them has committed."""
        self.count("executions", len(ids))
        if self.listing:
            self.executions.extend(ids)

    def note_unpurged(self, conn: Any, tenant_id: UUID, ids: list[str]) -> None:
        """Record executions `ids`, deleted in `conn`'s transaction, that are not purged yet for the sweeper (ADR
        0046): a host killed after the commit would otherwise forget them."""
        left = [(UUID(instance_id), tenant_id, 0) for instance_id in ids if instance_id not in self.purged]
        if left:
            with conn.cursor() as cursor:
                cursor.executemany(NOTE_ERASED_ORCHESTRATION, left)


def _executions_left(tenant_id: UUID) -> bool:
    """Whether the tenant has executions still (read as the tenant: the control plane reads no tenant's rows)."""
    with tenant_transaction(tenant_id) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM app.executions) AS left").fetchone()
    return bool(row and row["left"])


def _erase_batches(tenant_id: UUID, erased: _Erased, holder: UUID | None = None) -> None:
    """Delete the tenant's rows table after table, `ERASE_BATCH_ROWS` at a time, each batch a short transaction of its
    own (a pinned tenant's functions, migration 0078). Nothing when the tenant row is gone.

    One transaction deleted every row: it had a transaction id from its first statement (the tenant pin writes a
    row), and the outbox relay sends only the events of transactions older than every one running, so every other
    tenant's events and webhooks waited for a big tenant's whole erasure. The tenant is suspended and marked by now:
    its requests are refused, and a late writer's row goes with the last transaction (`_erase_rest`). A host killed
    between two batches leaves the tenant row, marked, and some of its rows: the erasure sent again goes on.

    Each batch renews the erasure's lease (`_hold_lease`): ErasureInProgressError once another erasure took it. What a
    batch removed is counted once its transaction has committed. Executions that name each other in a cycle (edited
    or restored by hand) are never leaves: once no leaf is left, the executions left are deleted in one statement of a
    short transaction of their own, whose foreign keys are checked at its end, and the batches go on. The batches went
    on to the tables the executions name, whose rows those executions kept (a ForeignKeyViolation every run: 503 on
    every erasure sent again); then they stopped there, and every table after the executions was left to the last
    transaction, deleted unbounded while it held the tenant row."""
    for table in TENANT_TABLES:
        while True:
            ids: list[str] = []
            with platform_transaction() as conn:
                # Every batch: no batch deletes a tenant that is not suspended and marked (an unlocked read: the mark
                # is never cleared, and the table's check keeps a marked tenant suspended).
                row = conn.execute(_STILL_MARKED, (tenant_id,)).fetchone()
                if row is None:
                    return  # another erasure's last transaction removed it: its rows are gone
                _check_marked(row)
                # The table's lock before the pin, which gives the transaction its id: a batch that waits for its
                # table (a writer's lock of it) holds back no one's events meanwhile.
                conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(sql.Identifier("app", table)))
                conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
                # After the pin, which must come before the transaction's first write.
                _hold_lease(conn, tenant_id, holder)
                if table == "executions":
                    ids = [str(r["id"]) for r in conn.execute(_ERASE_EXECUTIONS, (ERASE_BATCH_ROWS,)).fetchall()]
                    erased.note_unpurged(conn, tenant_id, ids)
                    deleted = len(ids)
                else:
                    result = conn.execute(_ERASE_BATCH, (table, ERASE_BATCH_ROWS)).fetchone()
                    deleted = int(result["removed"]) if result else 0
            # Committed: counted now (counted inside, a batch rolled back at its commit was counted twice, run again).
            if table == "executions":
                erased.deleted_executions(ids)
                if deleted == 0 and _executions_left(tenant_id):
                    # No leaf left, yet executions left: a cycle. All of them in one statement (its foreign keys
                    # checked at its end) of a short transaction of their own, under the tenant row's lock as the last
                    # transaction's, so no execution is added meanwhile and the ids read are all it deletes; then the
                    # batches go on to the tables after the executions.
                    with tenant_transaction(tenant_id) as tenant_conn, platform_transaction() as conn:
                        conn.execute(
                            sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(sql.Identifier("app", table))
                        )
                        conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
                        if conn.execute(_LOCK_TENANT, (tenant_id,)).fetchone() is None:
                            return  # another erasure's last transaction removed it: its rows are gone
                        _check_marked(conn.execute(_STILL_MARKED, (tenant_id,)).fetchone())
                        _hold_lease(conn, tenant_id, holder)
                        ids = listed_execution_ids(tenant_conn)
                        deleted = conn.execute("DELETE FROM app.executions").rowcount
                        erased.note_unpurged(conn, tenant_id, ids)
                    erased.deleted_executions(ids)
                    erased.count("executions", deleted - len(ids))  # none: the tenant row was held
                    break
            else:
                erased.count(table, deleted)
            # Executions are taken leaves first (none another names), so a batch short of the bound is not the last.
            if deleted == 0 or (deleted < ERASE_BATCH_ROWS and table != "executions"):
                break


def _erase_rest(tenant_id: UUID, erased: _Erased, holder: UUID | None = None) -> None:
    """One short transaction under the tenant row's lock: what the batches left (rows written meanwhile), the export
    jobs, the tenant row and the control plane's notes of it. ErasureRefusedError, nothing deleted, unless the locked
    row is suspended and marked for erasure; ErasureInProgressError, nothing deleted, unless `holder` still holds the
    erasure's lease (when given). What it removed is counted once it has committed."""
    # The ids are read as the tenant (the control plane reads no tenant's data), on a connection of the tenant pool
    # borrowed before the tenant row is locked: the tenant's writers that wait on that row each hold one, and with
    # the pool full of them a borrow after the lock waited for them while they waited for the erasure (PoolTimeout).
    with tenant_transaction(tenant_id) as tenant_conn, platform_transaction() as conn:
        conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
        # The tenant row first: a writer that adds a row naming the tenant (an execution, a domain event, a worker's
        # poller row) holds it (its foreign key's KEY SHARE) until it commits, and one that comes later waits here and
        # then finds the tenant gone. So no execution is created from now on, and the ids read next are all of them.
        # Audit records have no such key (the erasure's own outlives the row, ADR 0012); their policies take the same
        # lock (migration 0060), so one written meanwhile waits here too and is refused once the tenant is gone.
        conn.execute(_LOCK_TENANT, (tenant_id,))
        # Read under the lock just taken: no change of the row can come between this look and the deletes.
        _check_marked(conn.execute(_STILL_MARKED, (tenant_id,)).fetchone())
        # Under that lock too: an erasure that lost its lease to another (whose last transaction may have removed the
        # tenant already) deletes nothing more, and answers no second 200.
        _hold_lease(conn, tenant_id, holder)
        # Read committed: this statement sees every commit up to now, those of the writers the lock waited for.
        left = listed_execution_ids(tenant_conn)
        removed: dict[str, int] = {}
        for table in TENANT_TABLES:
            cursor = conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("app", table)))
            removed[table] = cursor.rowcount
        # The executions' ids as they go, recorded for the sweeper with them (ADR 0046): the caller's purge after the
        # rows only hastens it, and a host killed before or during that purge left an orchestration started late
        # (after the first purge) to outlive the tenant, its ids having been only in memory.
        erased.note_unpurged(conn, tenant_id, left)
        removed["executions"] -= len(left)  # counted by deleted_executions, after the commit
        # Its export jobs (migration 0070): an attempt running meanwhile finds its tenant gone and leaves nothing.
        # Before the tenant row, whose delete would cascade to them anyway.
        removed["export_jobs"] = conn.execute(_FORGET_EXPORT_JOBS, (tenant_id,)).rowcount
        removed["tenants"] = conn.execute("DELETE FROM app.tenants WHERE id = %s", (tenant_id,)).rowcount
        # The tenant's create answer and its export requests' answers, kept for a retry of their Idempotency-Key:
        # they name the tenant.
        removed["control_idempotency_keys"] = conn.execute(
            _FORGET_CREATE_ANSWERS, (str(tenant_id), str(tenant_id))
        ).rowcount
        # With the row's delete, so no erasure ends without it (a crash before the pass below included): the timer
        # `erased_tenant_blobs` empties the prefix of what this erasure and its writers could not remove.
        conn.execute(NOTE_ERASED_TENANT, (tenant_id,))
        # Its erasure lease (migration 0078), whoever holds it: the tenant is gone, and an erasure sent again is a 404.
        conn.execute(_FORGET_LEASE, (tenant_id,))
    erased.deleted_executions(left)
    for kind, rows in removed.items():
        erased.count(kind, rows)


def delete_tenant_blobs(tenant_id: UUID, container: ContainerClient, *, limit: int | None = None) -> int:
    """Delete every blob under the tenant's prefix (the first `limit` listed, when given); returns how many."""
    deleted = 0
    # Blobs with staged blocks only included (a copy cut short): a plain listing never showed them to an erasure.
    for blob in container.list_blobs(name_starts_with=tenant_blob_prefix(tenant_id), include=TENANT_LISTING):
        if limit is not None and deleted >= limit:
            break
        if delete_blob_of_any_kind(container, blob.name):
            deleted += 1
    return deleted


def execution_ids(tenant_id: UUID) -> list[str]:
    """The ids of the tenant's executions, which are its orchestrations' instance ids (read under its own RLS)."""
    with tenant_transaction(tenant_id) as conn:
        return listed_execution_ids(conn)


def listed_execution_ids(conn: Any) -> list[str]:
    """The ids of the executions of the tenant pinned in `conn`'s open transaction."""
    return [str(row["id"]) for row in conn.execute("SELECT id FROM app.executions").fetchall()]


PURGE_CONCURRENCY = 16
"""Orchestrations an erasure terminates and purges at once: one after another, a tenant of some thousands of
executions could not be erased within the function's time limit, every retry starting again from the first."""


async def purge_orchestrations(
    instance_ids: Sequence[str],
    client: Any,
    *,
    settle_s: float = ORCHESTRATION_SETTLE_S,
    concurrency: int = PURGE_CONCURRENCY,
    purged_ids: set[str] | None = None,
) -> int:
    """Terminate what still runs, then purge each orchestration's history, `concurrency` at a time; returns how many
    were purged (`purged_ids`, when given, gets their ids).

    Runs before the rows go, so a failure leaves the tenant erasable again (every step is idempotent);
    ErasureContendedError when an orchestration did not reach a terminal state within `settle_s`.
    """
    gate = asyncio.Semaphore(concurrency)

    async def purge(instance_id: str) -> int:
        async with gate:
            deleted = await _purge_one(instance_id, client, settle_s)
        if deleted and purged_ids is not None:
            purged_ids.add(instance_id)
        return deleted

    purged = sum(await asyncio.gather(*(purge(instance_id) for instance_id in instance_ids)))
    logger.info("purged %s of %s orchestrations", purged, len(instance_ids))
    return purged


_ACTIVE = ("Running", "Pending", "Suspended", "ContinuedAsNew")
_TERMINAL = ("Completed", "Failed", "Terminated", "Canceled")
PURGE_PAUSE_S = 0.2
"""Between two looks at an orchestration an erasure waits for."""


def _runtime(status: Any) -> str | None:
    runtime = getattr(status, "runtime_status", None) if status is not None else None
    return None if runtime is None else str(runtime.name)


_NOT_TERMINAL = "unexpected status code 412"
"""How the client's exception names the host's 412: a bare "412" is also in an instance id or another message."""


def _not_terminal(exc: Exception) -> bool:
    """Whether the purge was refused because the instance is not terminal: the host answers 412, which the client
    raises as a bare Exception naming the code."""
    return _NOT_TERMINAL in str(exc)


async def _purge_one(instance_id: str, client: Any, settle_s: float) -> int:
    """Terminate one orchestration if it still runs, wait for it to be terminal, purge its history.

    An orchestration whose start was under way when its status was read (none yet, or pending) may be running by
    the purge, which the host refuses (412): it is terminated and purged again, until `settle_s` has passed."""
    deadline = time.monotonic() + settle_s
    while True:
        if _runtime(await client.get_status(instance_id)) in _ACTIVE:
            try:
                await client.terminate(instance_id, "tenant erased")
            except TimeoutError:
                # Cut off (a caller's bound, the client's own timeout): it may still be applied, or never; the wait
                # below and the purge tell which, a purge refused past `settle_s` failing this one.
                logger.warning("terminating orchestration %s for an erasure was not answered in time", instance_id)
            except Exception:
                # Ended meanwhile (410) or not there (404): the purge below says what is left.
                logger.info("terminating orchestration %s for an erasure failed; purged as it is", instance_id)
            # Termination is a message the backend applies asynchronously; purge accepts terminal instances only.
            while time.monotonic() < deadline:
                if _runtime(await client.get_status(instance_id)) not in _ACTIVE:
                    break
                await asyncio.sleep(PURGE_PAUSE_S)
        try:
            result = await client.purge_instance_history(instance_id)
        except Exception as exc:
            if not _not_terminal(exc):
                raise
            if time.monotonic() >= deadline:
                raise ErasureContendedError(
                    f"orchestration {instance_id} did not end within {settle_s:g} s of its termination: ask again"
                ) from exc
            await asyncio.sleep(PURGE_PAUSE_S)
            continue
        return int(result.instances_deleted)
