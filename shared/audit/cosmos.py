# intent_ref: platform.audit
"""The Cosmos DB audit store: one container partitioned by /tenantId, every query scoped to one partition."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
from azure.cosmos import ContainerProxy, DatabaseProxy, PartitionKey
from azure.cosmos._retry_options import RetryOptions
from azure.cosmos.documents import ConnectionPolicy
from azure.cosmos.exceptions import CosmosHttpResponseError, CosmosResourceExistsError, CosmosResourceNotFoundError

from shared.audit.factory import AUDIT_MIN_RETENTION_DAYS
from shared.audit.model import AuditPage, AuditQuery, AuditRecord, InvalidCursorError, decode_cursor, encode_cursor
from shared.audit.outbox import AuditOutbox, Delete, RecordRefusedError, Write, outlives_tenant, write_budget

_CURSOR_KIND = "cosmos"
PARTITION_KEY_PATH = "/tenantId"
MAX_TTL_S = 2**31 - 1
"""The longest per-item time to live Cosmos DB accepts, in seconds."""

# The container's indexing policy; the IaC that creates the container in Azure must carry the same one.
# The composite index serves the page order (ORDER BY on two properties needs one); detail is free-form
# and never filtered on, so it is not indexed.
AUDIT_INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/detail/*"}, {"path": '/"_etag"/?'}],
    "compositeIndexes": [
        [
            {"path": "/occurredAt", "order": "descending"},
            {"path": "/id", "order": "descending"},
        ]
    ],
}

# The query is assembled only from these constants; every value travels as a parameter. The tenant
# predicate is always present, in addition to the partition key, so the query is scoped even where the
# partition key header is not honoured.
_SELECT = (
    "SELECT c.id, c.tenantId, c.occurredAt, c.principalId, c.action, c.resourceType, c.resourceId,"
    " c.decision, c.reason, c.requestId, c.detail FROM c WHERE c.tenantId = @tenantId"
)
_EQUALS_FILTERS = {
    "action": (" AND c.action = @action", "@action"),
    "decision": (" AND c.decision = @decision", "@decision"),
    "principal_id": (" AND c.principalId = @principalId", "@principalId"),
    "resource_type": (" AND c.resourceType = @resourceType", "@resourceType"),
    "resource_id": (" AND c.resourceId = @resourceId", "@resourceId"),
}
_ORDER = " ORDER BY c.occurredAt DESC, c.id DESC"
EXPORT_PAGE_ITEMS = 500
"""Records an export reads per round trip, and so holds at once."""
# Bounds the round trips one page may take when the service returns short pages.
_MAX_ROUND_TRIPS = 10
# What the service answers for a document it will never take (malformed; over the 2 MB item limit): retrying cannot
# help. Anything else (throttling, an outage, a container or a role assignment still missing) can pass. A 400 is also
# what a container that does not match the code answers every document: it is doubtful (`RecordRefusedError`), and a
# batch refused so throughout waits instead of being set aside.
_REFUSED_FOR_GOOD = frozenset({400, 413})
_DOUBTFUL = frozenset({400})

RetentionLookup = Callable[[uuid.UUID], int | None]
"""Days of audit retention for a tenant; None keeps its records until they are erased."""


def retention_ttl_s(days: int) -> int:
    """The per-item time to live, in seconds, of a record of a tenant that keeps its trail `days` days: never shorter
    than the platform's floor (`AUDIT_MIN_RETENTION_DAYS`; a setting stored before the floor existed, or written
    around the settings route, is raised to it), never longer than Cosmos DB takes (it refuses a write past
    `MAX_TTL_S`, about 68 years: a longer setting keeps the records as long as the store can say)."""
    if days < 1:
        raise ValueError("audit retention must be at least one day")
    return min(max(days, AUDIT_MIN_RETENTION_DAYS) * 86_400, MAX_TTL_S)


def inline_connection_policy() -> ConnectionPolicy:
    """The connection policy of the client for the copies after a commit: no retries at all, one request a write.

    The client's `retry_throttle_total=0` is no such thing: it is read with `or`, and 0 falls back to the default
    nine retries. A policy's `RetryOptions` are taken as they are, and the SDK's throttling policy retries only while
    its attempts are under `max_retry_attempt_count`: with 0, a 429 is raised at once, nothing slept.

    Without endpoint discovery, no regional retry either: the SDK retried a 503 (and a 5xx, a timeout, a failed
    connection) in the next region, or once in the only one, after a fixed 0.5 s sleep, looking at the call's `timeout`
    before the sleep only, and the retry had the whole read timeout again (a copy took 1.3 to 1.4 s of its 1 s). Its
    service-unavailable, timeout-failover, service-request and service-response policies each answer "no retry" when
    `EnableEndpointDiscovery` is off, so the error is raised at once. The relay's client keeps discovery and
    failover."""
    policy = ConnectionPolicy()
    policy.RetryOptions = RetryOptions(max_retry_attempt_count=0, max_wait_time_in_seconds=0)
    policy.EnableEndpointDiscovery = False
    return policy


def format_time(moment: datetime) -> str:
    """UTC with fixed-width microseconds, so string order is time order (Cosmos compares strings)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def create_audit_container(database: DatabaseProxy, name: str) -> ContainerProxy:
    """Create (if missing) the audit container: tests and local use; in Azure the IaC creates it."""
    return database.create_container_if_not_exists(
        id=name,
        partition_key=PartitionKey(path=PARTITION_KEY_PATH),
        indexing_policy=AUDIT_INDEXING_POLICY,
        # -1: TTL is on but items without their own `ttl` never expire; each record carries its tenant's.
        default_ttl=-1,
    )


class CosmosAuditStore:
    """Audit records as documents of one container partitioned by tenant; a transaction's records through the
    audit outbox, since Cosmos DB cannot join it."""

    def __init__(
        self,
        container: ContainerProxy,
        *,
        retention_days: RetentionLookup | None = None,
        outbox: Callable[[Write, Delete], AuditOutbox] = AuditOutbox,
        inline_container: ContainerProxy | None = None,
    ) -> None:
        """`inline_container`: the same container through a client that retries no throttled write
        (`inline_connection_policy`), for the copies after a commit (`write_budget`); without it they go through
        `container`, whose client may sleep a throttled write's retry-after past their bound."""
        self._container = container
        self._inline_container = inline_container or container
        self._retention_days = retention_days
        self._outbox = outbox(self._write_copy, self._delete_copy)

    def record(self, record: AuditRecord, *, conn: psycopg.Connection[Any] | None = None) -> None:
        """Append `record` through the audit outbox: with `conn` (the caller's open transaction) queued inside it,
        so it is written once that transaction commits and never if it rolls back; without, queued in a transaction
        of its own. Either way an outage of Cosmos DB delays the record and fails nothing. Created, not upserted: an
        existing record is never overwritten."""
        document = _document(record)
        if conn is not None:
            self._outbox.queue(conn, record.tenant_id, record.id, document)
            return
        self._outbox.queue_alone(record.tenant_id, record.id, document)

    def relay_queued(self) -> int:
        """Write the records the outbox still holds (the timer `audit_outbox_relay`); returns how many."""
        return self._outbox.relay().copied

    def _write_copy(self, tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        try:
            self._create(tenant_id, document)
        except CosmosResourceExistsError:
            pass  # copied before (by the relay, or before a failure to remove it from the outbox)
        except CosmosHttpResponseError as exc:
            if exc.status_code in _REFUSED_FOR_GOOD:
                raise RecordRefusedError(
                    f"{exc.status_code}: {exc.message or exc.reason}", doubtful=exc.status_code in _DOUBTFUL
                ) from exc
            raise

    def _delete_copy(self, tenant_id: uuid.UUID, record_id: uuid.UUID) -> None:
        """Delete a record the outbox copied for a tenant erased meanwhile (by id, in the tenant's partition)."""
        try:
            self._container.delete_item(str(record_id), partition_key=str(tenant_id))
        except CosmosResourceNotFoundError:
            pass  # never landed, or the erasure's second pass removed it

    def _create(self, tenant_id: uuid.UUID, document: dict[str, Any]) -> None:
        # The container files a document under the partition it names, so one naming another tenant than the one it
        # is written for would land in that tenant's trail.
        if document.get("tenantId") != str(tenant_id):
            raise RecordRefusedError(f"the document names another tenant than {tenant_id}")
        days = self._retention_days(tenant_id) if self._retention_days else None
        if days is not None:
            # Every record of a tenant's partition, the control plane's records of its actions on the tenant included,
            # under the tenant's retention (floored): the operator's own trail holds those actions too, under its own.
            document = {**document, "ttl": retention_ttl_s(days)}
        budget = write_budget()
        if budget is None:
            self._container.create_item(document)  # the relay's: the client's retries and timeouts
            return
        # The copy after a commit, in its request: through the client that retries nothing (`inline_connection_policy`:
        # the SDK checks `timeout` before a retry's sleep, not during it, then sleeps the service's whole retry-after,
        # a 429 asking 8 s holding the request 8 s, or 0.5 s before a 503's retry), so one request. The SDK bounds its
        # connect by what is left of `timeout`, but its wait for the answer only by `read_timeout`: half the budget to
        # each, so the request ends within the budget (`INLINE_S` states the bound). No connection retries; the relay
        # retries what this leaves.
        half = budget / 2
        self._inline_container.create_item(
            document, timeout=budget, connection_timeout=half, read_timeout=half, retry_total=0
        )

    def query(self, q: AuditQuery) -> AuditPage:
        """One page of `q.tenant_id`'s records, newest first, continuing from the cursor's position."""
        tenant = str(q.tenant_id)
        text = _SELECT
        parameters: list[dict[str, object]] = [{"name": "@tenantId", "value": tenant}]
        for attribute, (clause, name) in _EQUALS_FILTERS.items():
            value = getattr(q, attribute)
            if value is not None:
                text += clause
                parameters.append({"name": name, "value": value})
        if q.since is not None:
            text += " AND c.occurredAt >= @since"
            parameters.append({"name": "@since", "value": format_time(q.since)})
        if q.until is not None:
            text += " AND c.occurredAt < @until"
            parameters.append({"name": "@until", "value": format_time(q.until)})
        text += _ORDER

        position = decode_cursor(_CURSOR_KIND, q)
        token = position.get("c") if position else None
        callers_token = token is not None
        items: list[AuditRecord] = []
        for _ in range(_MAX_ROUND_TRIPS):
            pages = self._container.query_items(
                text,
                parameters=parameters,
                partition_key=tenant,
                max_item_count=q.limit - len(items),
            ).by_page(token)
            try:
                page: Iterable[dict[str, Any]] = next(pages, [])
            except CosmosHttpResponseError as exc:
                # The cursor is only encoded, not sealed, so the service's token in it can be edited: one the service
                # cannot read (400) is the caller's bad cursor. Later round trips send the service's own tokens.
                if callers_token and exc.status_code == 400:
                    raise InvalidCursorError("malformed cursor") from None
                raise
            callers_token = False
            items.extend(_to_record(doc) for doc in page)
            token = getattr(pages, "continuation_token", None)
            if token is None or len(items) >= q.limit:
                break
        next_cursor = encode_cursor(_CURSOR_KIND, q, {"c": token}) if token else None
        return AuditPage(items=items, next_cursor=next_cursor)

    def export(
        self,
        tenant_id: uuid.UUID,
        *,
        conn: psycopg.Connection[Any] | None = None,  # noqa: ARG002  # the interface's; Cosmos DB cannot join it
    ) -> Iterator[dict[str, Any]]:
        """Every record in the tenant's partition (the query is scoped by partition key and tenant), as rows of
        `app.audit_events`, read `EXPORT_PAGE_ITEMS` at a time as the iteration goes."""
        tenant = str(tenant_id)
        # No ORDER BY: the archive keeps no order, and the service then serves the partition as it stores it.
        pages = self._container.query_items(
            _SELECT,
            parameters=[{"name": "@tenantId", "value": tenant}],
            partition_key=tenant,
            max_item_count=EXPORT_PAGE_ITEMS,
        ).by_page()
        for page in pages:
            for document in page:
                yield _row(_to_record(document))

    def erase(self, tenant_id: uuid.UUID) -> int:
        """Delete every record in the tenant's partition (the query is scoped by partition key and tenant)."""
        return self._delete(tenant_id, keep=lambda _document: False)

    def erase_outlived(self, tenant_id: uuid.UUID) -> int:
        """Delete every record in the erased tenant's partition but its erasure's own."""
        return self._delete(tenant_id, keep=outlives_tenant)

    def _delete(self, tenant_id: uuid.UUID, *, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Delete the records of the tenant's partition that `keep` does not keep; answers how many."""
        tenant = str(tenant_id)
        ids = [
            doc["id"]
            for doc in self._container.query_items(
                "SELECT c.id, c.tenantId, c.action, c.resourceType, c.resourceId FROM c WHERE c.tenantId = @tenantId",
                parameters=[{"name": "@tenantId", "value": tenant}],
                partition_key=tenant,
            )
            if not keep(doc)
        ]
        for item_id in ids:
            self._container.delete_item(item_id, partition_key=tenant)
        return len(ids)


def _document(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": str(record.id),
        "tenantId": str(record.tenant_id),
        "occurredAt": format_time(record.occurred_at),
        "principalId": record.principal_id,
        "action": record.action,
        "resourceType": record.resource_type,
        "resourceId": record.resource_id,
        "decision": record.decision,
        "reason": record.reason,
        "requestId": record.request_id,
        "detail": dict(record.detail),
    }


def _to_record(doc: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        tenant_id=uuid.UUID(doc["tenantId"]),
        id=uuid.UUID(doc["id"]),
        occurred_at=datetime.strptime(doc["occurredAt"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
        principal_id=doc["principalId"],
        action=doc["action"],
        resource_type=doc["resourceType"],
        resource_id=doc.get("resourceId"),
        decision=doc["decision"],
        reason=doc.get("reason") or "",
        request_id=doc.get("requestId"),
        detail=doc.get("detail") or {},
    )


def _row(record: AuditRecord) -> dict[str, Any]:
    """The record as the Postgres store's row of `app.audit_events` (same keys and value types), so an archive reads
    the same whichever store kept the trail."""
    return {
        "tenant_id": record.tenant_id,
        "id": record.id,
        "occurred_at": record.occurred_at,
        "principal_id": record.principal_id,
        "action": record.action,
        "resource_type": record.resource_type,
        "resource_id": record.resource_id,
        "decision": record.decision,
        "reason": record.reason,
        "request_id": record.request_id,
        "detail": dict(record.detail),
    }
