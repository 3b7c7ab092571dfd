# intent_ref: platform.identity
"""The request pipeline's guard: bearer token -> provisioned tenant -> rate limit -> ABAC decision -> audit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import psycopg
from fastapi import Depends, Request
from opentelemetry import trace
from starlette.concurrency import run_in_threadpool

from shared.api.admission import Permit, get_admission, size_worker_threads
from shared.api.middleware import request_id_var
from shared.api.problems import FieldError, ProblemError, over_rate, unknown_tenant
from shared.audit import AuditRecord, get_audit_store
from shared.audit.model import split_listing
from shared.auth.principal import Principal
from shared.auth.tokens import (
    InvalidTokenError,
    KeysNotCachedError,
    SigningKeysUnavailableError,
    TokenValidator,
    VerifiedToken,
    bearer_token,
)
from shared.auth.validator import get_token_validator
from shared.db.session import platform_transaction
from shared.observability.tracing import TENANT_ID
from shared.policy.authorizer import Decision, Resource, TenantFacts, get_authorizer, refusal_detail
from shared.policy.decisions import decide, record_decision
from shared.policy.tenant_policies import tenant_policy_texts
from shared.ratelimit import limit_for, take_tenant_token
from shared.tenants.models import Tenant
from shared.tenants.repository import tenant_directory

logger = logging.getLogger(__name__)
Row = TypeVar("Row")

_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
AUTHORIZATION = "Authorization"
ONCE_AFTER_SIGN_IN = ("Last-Event-ID",)
"""Headers besides Authorization that routes read as one value (the first, were they repeated): each must come once.
If-Match is a list, whose lines the edge joins into one (`accepted_input.one_line_per_list_header`)."""


@dataclass(frozen=True)
class RequestContext:
    """Who is calling, for which tenant, in which request."""

    principal: Principal
    tenant: Tenant
    request_id: str
    permit: Permit | None = field(default=None, compare=False, repr=False)
    """The request's slot in its tenant's in-flight bound (None outside the HTTP gateway)."""

    @property
    def tenant_facts(self) -> TenantFacts:
        """The tenant attributes policies and gates decide on."""
        return self.tenant.facts()


def token_validator() -> TokenValidator:
    """FastAPI dependency: the process-wide validator (tests override it)."""
    return get_token_validator()


def _unauthorized(reason: str) -> ProblemError:
    return ProblemError(401, "invalid-token", "Unauthorized", reason, headers=dict(_INVALID_TOKEN))


def single_header(request: Request, name: str) -> str | None:
    """The request's one `name` header (None without one); 400 `repeated-header` when it comes more than once.

    A proxy in front may read another of the repeats than the app would, and then disagree with it about the caller
    (Authorization) or the request: refused as a repeated Idempotency-Key is, never one of them taken."""
    values = request.headers.getlist(name)
    if len(values) <= 1:
        return values[0] if values else None
    detail = f"send one {name} header, not {len(values)}"
    # RFC 6750: a request that repeats a parameter of the bearer scheme is `invalid_request`.
    headers = {"WWW-Authenticate": 'Bearer error="invalid_request"'} if name == AUTHORIZATION else None
    raise ProblemError(
        400,
        "repeated-header",
        "Bad request",
        detail,
        errors=[FieldError(pointer=f"/header/{name.lower()}", detail=detail)],
        headers=headers,
        extensions={"header": name},
    )


def refuse_repeated_headers(request: Request) -> None:
    """400 when a header of ONCE_AFTER_SIGN_IN is repeated: checked once the caller is known, so that a caller
    without a valid credential hears 401 first, as for any other malformed request (ADR 0022)."""
    for name in ONCE_AFTER_SIGN_IN:
        single_header(request, name)


async def identified(
    request: Request,
    validator: TokenValidator = Depends(token_validator),  # noqa: B008
) -> RequestContext:
    """Identify the caller: 400 for a repeated Authorization header (then for a repeated Last-Event-ID),
    401 bad token or unprovisioned tenant. A suspended tenant's caller is identified too: `authenticated` refuses it
    once the request is admitted and counted, as every request of the tenant is.

    On the event loop when everything it needs is cached (the signing keys, the caller's tenant), which is almost
    always; otherwise on a worker thread, so that fetching keys or reading the tenant never blocks the loop.
    """
    authorization = single_header(request, AUTHORIZATION)
    try:
        context = _identify(authorization, validator, offline=True)
    except _NeedsIO as needs:
        context = await run_in_threadpool(_identify, authorization, validator, verified=needs.verified)
    refuse_repeated_headers(request)
    return context


class _NeedsIO(Exception):
    """What `_identify(..., offline=True)` would need is not cached: it is done again where I/O may happen, from
    the token as validated already (`verified`), if it was."""

    def __init__(self, verified: VerifiedToken | None = None) -> None:
        super().__init__()
        self.verified = verified


def _identify(
    authorization: str | None,
    validator: TokenValidator,
    *,
    offline: bool = False,
    verified: VerifiedToken | None = None,
) -> RequestContext:
    """The caller's context (or its 401 or 503); `offline`: _NeedsIO rather than any I/O."""
    if verified is None:
        verified = _verified(authorization, validator, offline=offline)
    context = caller_context(verified, request_id_var.get(), offline=offline)
    if context is None:
        raise unknown_tenant()
    return context


def _suspended() -> ProblemError:
    """The 403 of a suspended tenant's request."""
    return ProblemError(
        403, "tenant-suspended", "Forbidden", "This tenant is suspended.", extensions={"reason": "tenant_suspended"}
    )


def refuse_suspended(context: RequestContext) -> NoReturn:
    """Record the denial of a suspended tenant's request and refuse it with 403."""
    tenant = context.tenant
    try:
        record_decision(
            context,
            "request",
            Resource("Tenant", str(tenant.id), tenant.id, {}),
            Decision(False, "tenant_suspended", ()),
        )
    except psycopg.errors.InsufficientPrivilege as exc:
        # The database takes no record of a tenant whose row is gone (migration 0041): erased since this instance
        # cached it, the tenant keeps only its erasure's record (ADR 0012). The caller is still refused.
        logger.warning("deny record of tenant %s not written (erased meanwhile?): %s", tenant.id, exc)
    raise _suspended()


def _verified(authorization: str | None, validator: TokenValidator, *, offline: bool) -> VerifiedToken:
    """The validated bearer token, or its 401 or 503; `offline`: _NeedsIO when the keys are not cached."""
    try:
        return validator.validate(bearer_token(authorization), offline=offline)
    except KeysNotCachedError:
        raise _NeedsIO from None
    except SigningKeysUnavailableError as exc:
        # Not the caller's fault: the issuer's keys cannot be fetched and none are cached.
        logger.error("token validation unavailable: %s", exc.reason)
        raise ProblemError(
            503,
            "identity-unavailable",
            "Service unavailable",
            "Signing keys cannot be fetched right now; retry shortly.",
            headers={"Retry-After": "5"},
        ) from None
    except InvalidTokenError as exc:
        logger.info("rejected token: %s", exc.reason)
        raise _unauthorized(exc.reason) from None


async def authenticated(
    request: Request,
    identity: RequestContext = Depends(identified),  # noqa: B008
    _threads: None = Depends(size_worker_threads),
) -> AsyncIterator[RequestContext]:
    """Authenticate the caller and admit the request: 401 bad token, 429 `tenant-busy` over the tenant's in-flight
    bound and its queue, 429 `rate-limited` over its rate, then 403 for a suspended tenant.

    A suspended tenant's request is admitted and counted as any other before it is refused: each writes a deny
    record, and uncounted, a suspended tenant's client could fill its trail as fast as it could send.

    Async: a request queued for its tenant's permit waits on the event loop, holding no worker thread, so one
    tenant's burst cannot park the threads other tenants' requests need. It yields, so the permit is given back
    once the response has been sent (or the request has failed).
    """
    tenant = identity.tenant
    # Before the rate take, which is the request's first borrow: the bound covers every connection the tenant's
    # requests hold, and a request refused here has used none.
    permit = await get_admission().admit_waiting(tenant.id)
    try:
        # A transaction of its own, committed before any work: a refused request (429) changes nothing else.
        try:
            verdict = await run_in_threadpool(
                take_tenant_token, tenant.id, limit_for(tenant.quotas.model_dump(exclude_none=True))
            )
        except psycopg.errors.ForeignKeyViolation:
            # The bucket's tenant row is gone: erased since this instance cached it, which an erasure of a suspended
            # tenant allows for the cache's few seconds. Nothing is counted or recorded for it.
            raise _suspended() from None
        if not verdict.allowed:
            raise over_rate(tenant.id, verdict.retry_after_s)
        if tenant.status != "active":
            await run_in_threadpool(refuse_suspended, identity)
        trace.get_current_span().set_attribute(TENANT_ID, str(tenant.id))
        context = replace(identity, permit=permit)
        request.state.context = context
        yield context
    finally:
        permit.release()


def caller_context(verified: VerifiedToken, request_id: str, *, offline: bool = False) -> RequestContext | None:
    """The caller of a validated token as a platform tenant's principal; None when its Entra tenant is not
    provisioned (the tenant comes from the directory, never from anything the caller sent besides the token).
    `offline`: from the directory's cache only, _NeedsIO when it holds no fresh answer."""
    if offline:
        known, tenant = tenant_directory.cached(verified.entra_tenant_id)
        if not known:
            raise _NeedsIO(verified)
    else:
        tenant = tenant_directory.resolve(platform_transaction, verified.entra_tenant_id)
    return None if tenant is None else RequestContext(verified.principal(tenant.id), tenant, request_id)


def authorize(
    context: RequestContext,
    action: str,
    resource: Resource,
    *,
    conn: Any | None = None,
    detail: dict[str, Any] | None = None,
) -> Decision:
    """Decide `action` on `resource` for the caller, audit the decision (allow and deny), refuse with 403.

    Called inside the caller's open tenant transaction (`conn`, or found by itself) it borrows no second connection:
    the allow record commits with the caller's transaction (and is written on its own if that rolls back), and a
    deny record is written on its own once the caller's transaction has ended, because the 403 rolls it back.
    """
    decision = decide(context, action, resource, conn=conn, detail=detail)
    if not decision.allowed:
        why = refusal_detail(action, decision.reason)
        raise ProblemError(403, "forbidden", "Forbidden", why, extensions={"reason": decision.reason})
    return decision


def readable(
    context: RequestContext,
    action: str,
    rows: Sequence[Row],
    resource_of: Callable[[Row], Resource],
    key_of: Callable[[Row], str],
    *,
    conn: Any,
    detail: Mapping[str, Any] | None = None,
    named: str = "items",
    listed: Callable[[Decision], bool] | None = None,
) -> list[Row]:
    """The rows of a listing's page the caller may `action` (read), each decided on `resource_of(row)` as reading
    it alone is; one audit record per outcome, naming its rows' keys under `named` (ADR 0011, amended 2026-12-06), or
    as many as keep each under the record's bound (`split_listing`, ADR 0012 amended 2026-12-07).

    `listed`: which outcomes keep their rows (the allowed ones unless given); a refused outcome whose rows are kept
    is not recorded (the listing's own permission, decided and recorded before, is what shows them): a record of a
    denial for rows that were shown would read as a refusal that never was."""
    policies = tenant_policy_texts(context.tenant.id)
    # By outcome, not by content: rows seldom share labels, and a record per content wrote one per row for a tenant
    # without a single policy.
    groups: dict[Decision, tuple[Resource, list[int]]] = {}
    for index, row in enumerate(rows):
        resource = resource_of(row)
        # Each row is decided, unaudited: while no policy names its type by id, rows of one content cost one
        # evaluation (the Authorizer remembers the rest, ADR 0017), and a forbid naming one row by id reaches that
        # row alone, which a decision on another row of the same content would not.
        decision = get_authorizer().decide(
            context.principal, action, resource, tenant=context.tenant_facts, tenant_policies=policies
        )
        groups.setdefault(decision, (resource, []))[1].append(index)
    kept: set[int] = set()
    for decision, (resource, members) in groups.items():
        keep = decision.allowed if listed is None else listed(decision)
        if keep:
            kept.update(members)
        if keep and not decision.allowed:
            continue
        keys = list(dict.fromkeys(key_of(rows[index]) for index in members))
        # Over as many records as keep each under the record's bound: one record of 500 ids was cut to its marker.
        for facts in split_listing({"operation": "list", **(detail or {})}, named, keys):
            record_decision(context, action, resource, decision, conn=conn, detail=facts, decided=True)
    return [row for index, row in enumerate(rows) if index in kept]


def tenant_resource(kind: str, resource_id: UUID | str, tenant_id: UUID, **attributes: Any) -> Resource:
    """A tenant-owned resource for a decision."""
    return Resource(kind, str(resource_id), tenant_id, attributes)


def record_mutation(
    context: RequestContext, action: str, resource: Resource, detail: dict[str, Any], *, conn: Any | None = None
) -> None:
    """Audit a change that happened (after its allow decision), with what changed."""
    record_decision(context, action, resource, Decision(True, "applied", ()), conn=conn, detail=detail)


def record_tenant_event(
    tenant_id: UUID, context: RequestContext, action: str, detail: dict[str, Any], *, conn: Any | None = None
) -> None:
    """Audit an action by the caller into another tenant's trail (the control plane acting on a tenant), in the
    control plane's own transaction: its role may add records about tenants to any trail (migration 0028), the trail
    of a tenant whose row is gone included (the erasure's own record), where the runtime role may add none (0041).
    With `conn`, an open transaction of that tenant (the runtime role's, which may add to its own tenant's trail while
    the row is there, 0060), inside it: the record commits or rolls back with the change it tells of."""
    record = AuditRecord.new(
        tenant_id=tenant_id,
        principal_id=context.principal.id,
        action=action,
        resource_type="Tenant",
        resource_id=str(tenant_id),
        decision="allow",
        reason="applied",
        request_id=context.request_id,
        detail=detail,
        occurred_at=datetime.now(UTC),
    )
    if conn is not None:
        get_audit_store().record(record, conn=conn)
        return
    with platform_transaction() as own:
        get_audit_store().record(record, conn=own)
