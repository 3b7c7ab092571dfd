# intent_ref: platform.events
"""A tenant's webhook subscriptions (Tenant.Admin): subscribe a URL to domain event types, change, rotate its
secret, read its delivery log, delete (ADR 0030)."""

from __future__ import annotations

import difflib
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool

from shared.api.accepted_input import TakesNoBody, no_body_doc
from shared.api.idempotency import idempotency_key as idempotency_key_header
from shared.api.idempotency import remember, replay_if_kept, replay_or_claim
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import FieldError, ProblemError, too_many_requests
from shared.api.responses import (
    AUTH_ERRORS,
    BAD_IDEMPOTENCY_KEY,
    INVALID,
    PRECONDITION_FAILED,
    RATE_LIMITED,
    Responses,
    problem_doc,
)
from shared.api.security import RequestContext, authorize
from shared.api.transactions import TenantConnection
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.etags import if_match_tags
from shared.events import webhook_store as store
from shared.events.event_types import ALL_EVENT_TYPES, DOMAIN_EVENT_TYPES
from shared.events.webhooks import (
    SAVE_LOOKUP_RETRY_AFTER_S,
    SAVE_LOOKUP_TIMEOUT_S,
    WebhookUrlCheckBusyError,
    WebhookUrlRefusedError,
    check_subscription_url,
    subscription_limit,
)
from shared.free_text import SHOWN, SHOWN_AS_WRITTEN
from shared.observability.urls import kept_url
from shared.policy.actions import Action
from shared.policy.authorizer import Resource
from shared.tenants.repository import tenant_settings

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], route_class=GuardedRoute)
SubscriptionId = Annotated[UUID, Path(description="The subscription's id.")]
IfMatch = Annotated[
    str | None,
    Header(
        description="The subscription's ETag as last read: a stale one is 412 and changes nothing; `*` matches any "
        "existing subscription. Optional (ADR 0045): without it the request applies to the subscription as it is."
    ),
]
_ETAG_HEADER: dict[str, Any] = {
    "description": 'The strong ETag of the subscription as it is now (`"<id>.v<n>"`): any change of what it shows '
    "moves it, a failed delivery's count too. Send it back in If-Match.",
    "schema": {"type": "string"},
}
_WITH_ETAG: dict[str, Any] = {"headers": {"ETag": _ETAG_HEADER}}


def _known_event_type(value: str) -> str:
    """`value` when it is `*` or a type in DOMAIN_EVENT_TYPES, else a validation error naming it (and the type it
    probably meant: `execution.complete` was a typo that subscribed to nothing)."""
    if value == ALL_EVENT_TYPES or value in DOMAIN_EVENT_TYPES:
        return value
    close = difflib.get_close_matches(value, sorted(DOMAIN_EVENT_TYPES), n=1)
    raise PydanticCustomError(
        "unknown_event_type",
        "'{value}' is not an event type the platform emits{hint}: docs/webhooks.md lists them, or * for all",
        {"value": value, "hint": f" (did you mean '{close[0]}'?)" if close else ""},
    )


EventType = Annotated[
    str,
    Field(
        pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$",
        json_schema_extra={"enum": ["*", *sorted(DOMAIN_EVENT_TYPES)]},
    ),
    AfterValidator(_known_event_type),
]


def _each_once(values: list[str]) -> list[str]:
    """`values` when no event type is listed twice (a repeat subscribes to nothing more, and 50 of one type filled
    the list's bound), else a validation error naming the repeat and the entries that hold it."""
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            raise PydanticCustomError(
                "repeated_event_type",
                "'{value}' is listed twice (entries {first} and {again}): list each event type once",
                {"value": value, "first": first[value], "again": index},
            )
        first[value] = index
    return values


def _all_alone(values: list[str]) -> list[str]:
    """`values` unless `*` is listed beside a named type, else a validation error naming both: `*` already receives
    every type, so the named one adds nothing, and the list read as "these types" or "all" depending on the reader."""
    if ALL_EVENT_TYPES in values and len(values) > 1:
        star = values.index(ALL_EVENT_TYPES)
        other = next(index for index, value in enumerate(values) if value != ALL_EVENT_TYPES)
        raise PydanticCustomError(
            "all_event_types_beside_others",
            "'*' (entry {star}) is every event type and '{other}' (entry {index}) is listed beside it: send ['*'] "
            "alone, or the types without '*'",
            {"star": star, "other": values[other], "index": other},
        )
    return values


EventTypes = Annotated[list[EventType], AfterValidator(_each_once), AfterValidator(_all_alone)]
"""The event types a subscription receives, each once, in the order given; `*` alone or not at all."""
MayRead = Annotated[RequestContext, Depends(permission(Action.WEBHOOK_READ))]
MayManage = Annotated[RequestContext, Depends(permission(Action.WEBHOOK_MANAGE))]
NOT_FOUND = problem_doc(404, "not-found", "Not found", "no webhook subscription 3f2e...", "No such subscription")
REFUSED = problem_doc(
    422,
    "validation-error",
    "Request validation failed",
    "1 invalid field(s)",
    "The body does not validate (`validation-error`, each problem with a JSON pointer; an event type the platform "
    "does not emit is named by its entry, e.g. `/event_types/1`; one listed twice, or `*` beside a named type, by "
    "`/event_types`), or the URL "
    "fails the platform's SSRF guard, is not https outside local development, or its host does not resolve within "
    f"{SAVE_LOOKUP_TIMEOUT_S:g} s (`webhook-url-refused`, its pointer `/url`): a name whose servers do not answer is "
    "refused as one that does not exist, for the same URL would wait as long again",
    errors=[
        {
            "pointer": "/event_types/1",
            "detail": "'execution.complete' is not an event type the platform emits (did you mean "
            "'execution.completed'?): docs/webhooks.md lists them, or * for all",
        }
    ],
)
URL_CHECK_BUSY = problem_doc(
    429,
    "webhook-url-check-busy",
    "Too many requests",
    "the URL's host cannot be checked now: cannot resolve hooks.contoso.example: earlier lookups of it (or too many "
    f"others) still wait; retry in {SAVE_LOOKUP_RETRY_AFTER_S} s.",
    f"{RATE_LIMITED['description']}; or the URL's host cannot be looked up now (`webhook-url-check-busy`): the "
    "tenant's earlier lookups, of that host or of others whose servers do not answer, take every place it has in "
    "this instance. The URL may be right: the same request succeeds once they end",
)
SAVING_ERRORS: Responses = {**AUTH_ERRORS, 429: URL_CHECK_BUSY}
"""What a request that checks a URL may be refused with: AUTH_ERRORS, its 429 with the URL check's own."""
QUOTA_REACHED = problem_doc(
    409,
    "webhook-quota",
    "Conflict",
    "the tenant has 25 webhook subscriptions, its quota: delete one before adding another",
    "The tenant has as many subscriptions as its quota allows (`max_webhook_subscriptions`)",
    limit=25,
)
_EXAMPLE: dict[str, Any] = {
    "url": "https://hooks.contoso.example/quantum",
    "event_types": ["execution.completed", "execution.failed"],
    "description": "release bot",
}


_EVENT_TYPES_DESCRIPTION = (
    "Domain event types to deliver, each once, or `*` alone for all. A type the platform does not emit is refused "
    "with 422, its pointer naming the entry (`/event_types/1`); a type listed twice, or `*` beside a named type, is "
    "refused with 422 at `/event_types`."
)


Description = Annotated[
    str,
    Field(max_length=500, description=f"What the subscription is for, for people to read: {SHOWN_AS_WRITTEN}"),
    SHOWN,
]
"""A subscription's description: listed to the tenant's admins and written into logs, so shown as written."""


class SubscriptionIn(BaseModel):
    """A URL and the domain event types it receives (`*`: all)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    url: str = Field(min_length=8, max_length=2048)
    event_types: EventTypes = Field(min_length=1, max_length=50, description=_EVENT_TYPES_DESCRIPTION)
    description: Description = ""


class SubscriptionPatch(BaseModel):
    """What to change; `enabled: true` re-enables a disabled subscription and resends its failed deliveries."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": True}]})

    url: str | None = Field(None, min_length=8, max_length=2048)
    # Checked only when sent: a subscription stored before the check keeps its types through other changes.
    event_types: EventTypes | None = Field(None, min_length=1, max_length=50, description=_EVENT_TYPES_DESCRIPTION)
    description: Description | None = None
    enabled: bool | None = None


class SubscriptionOut(BaseModel):
    """A subscription; `secret` only in the answer that created or rotated it."""

    id: UUID
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    dropped_events: int = Field(
        description="Events it wanted that were never recorded for it, and so never sent: they came while it was"
        f" disabled, or its oldest delivery had failed {store.STALLED_AFTER_FAILURES} attempts in a row, with"
        f" {store.STALLED_BACKLOG_MAX:,} deliveries waiting already."
    )
    created_at: datetime
    updated_at: datetime
    secret: str | None = Field(None, description="`whsec_...`: shown once; verify signatures with it.")


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]


class SecretOut(BaseModel):
    """The new signing secret, shown once."""

    id: UUID
    secret: str


# No `id`: the row's number is drawn from a sequence every tenant's deliveries share, and its gaps counted other
# tenants' webhooks (found by a review of tenant isolation).
class DeliveryOut(BaseModel):
    """One delivery, known by its `message_id` (the `webhook-id` its receiver gets; one delivery per subscription and
    event): the event, its state, attempts and the receiver's last answer."""

    message_id: str
    event_type: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]


def _out(subscription: store.Subscription, secret: str | None = None) -> SubscriptionOut:
    shown = {name: getattr(subscription, name) for name in SubscriptionOut.model_fields if name != "secret"}
    return SubscriptionOut(**shown, secret=secret)


def _with_secret_opened(tenant_id: UUID, kept: Any) -> Any:
    """A create's or rotation's kept answer as first given: its secret opened (an answer kept before sealing holds it
    plain)."""
    if not isinstance(kept, dict) or not isinstance(kept.get("secret"), str):
        return kept
    owner = store.sealed_for(tenant_id, UUID(str(kept["id"])))
    return {**kept, "secret": store.open_secret(kept["secret"], owner)}


def _check_url(tenant_id: UUID, url: str) -> None:
    """The SSRF guard on `url` with the tenant's allowed hosts; the host is resolved with no connection held, within
    SAVE_LOOKUP_TIMEOUT_S and in the tenant's share of the process's lookups."""
    with tenant_transaction(tenant_id) as conn:
        hosts = [str(h) for h in tenant_settings(conn).get("allowed_hosts") or []]
    try:
        check_subscription_url(url, hosts, environment=get_settings().QP_ENVIRONMENT, tenant=tenant_id)
    except WebhookUrlRefusedError as exc:
        # A host whose name servers never answer is refused as one that does not exist: the same URL would wait as
        # long again, so an answer that invites a retry would only take the lookup places again.
        detail = str(exc)
        errors = [FieldError(pointer="/url", detail=detail)]
        raise ProblemError(422, "webhook-url-refused", "Unprocessable content", detail, errors=errors) from None
    except WebhookUrlCheckBusyError as exc:
        # 429 with Retry-After, not 422: the URL may well be right, and the same request succeeds once the lookups
        # holding the places end. Not 503: the places are nearly always the tenant's own share, taken by its earlier
        # lookups, as a tenant's requests in flight are (`tenant-busy`).
        detail = f"the URL's host cannot be checked now: {exc}; retry in {SAVE_LOOKUP_RETRY_AFTER_S} s."
        raise too_many_requests(tenant_id, "webhook-url-check-busy", detail, SAVE_LOOKUP_RETRY_AFTER_S) from None


NO_BODY = no_body_doc("the subscription id is not a UUID")


def _stale(subscription_id: UUID) -> ProblemError:
    return ProblemError(
        412,
        "precondition-failed",
        "Precondition failed",
        f"webhook subscription {subscription_id} changed since that ETag was issued; GET it again.",
    )


def _gone(subscription_id: UUID) -> ProblemError:
    """A request sent with If-Match whose subscription was deleted after it was found: no current representation
    matches (RFC 9110), so its precondition fails, as a delete sent with the same ETag as the one that won."""
    return ProblemError(
        412,
        "precondition-failed",
        "Precondition failed",
        f"webhook subscription {subscription_id} was deleted since that ETag was issued.",
    )


def _found(
    conn: Any,
    subscription_id: UUID,
    *,
    to_change: bool = False,
    enabling: bool = False,
    conditional: bool = False,
) -> store.Subscription:
    """The subscription (locked until the transaction ends when `to_change`, after its deliveries not yet delivered
    when the change is `enabling` a disabled one), or a 404; a 412 when the request is `conditional` (If-Match, `*`
    too) and the subscription, there when the ETag was checked, is gone by this read."""
    if to_change:
        found = store.get_to_change(conn, subscription_id, enabling=enabling)
    else:
        found = store.get(conn, subscription_id)
    if found is None and conditional:
        raise _gone(subscription_id)
    if found is None:
        raise ProblemError(404, "not-found", "Not found", f"no webhook subscription {subscription_id}")
    return found


@router.post("", status_code=201, response_model=SubscriptionOut, summary="Subscribe a URL to events",
             responses={**SAVING_ERRORS, 201: _WITH_ETAG, 400: BAD_IDEMPOTENCY_KEY, 409: QUOTA_REACHED,
                        422: REFUSED})  # fmt: skip
async def create(
    body: SubscriptionIn,
    context: MayManage,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
) -> SubscriptionOut | Response:
    """Subscribe `url` to `event_types`; the answer carries the signing secret, once, and the ETag (Tenant.Admin).
    With `Idempotency-Key` a retry gets the first answer (the same subscription, secret and ETag) and subscribes
    nothing more."""
    tenant_id = context.tenant.id

    def reveal(stored: Any) -> Any:
        return _with_secret_opened(tenant_id, stored)

    def replayed() -> Response | None:
        """The first answer to the key, read before the URL is checked: a retry of a create that took place gets it
        whatever the URL's lookup would answer now (slow name servers made it 422 or 429). None for a new create,
        which claims the key once the URL is checked."""
        with tenant_transaction(tenant_id) as conn:
            return replay_if_kept(conn, idempotency_key, request, body.model_dump(mode="json"), reveal=reveal)

    def run() -> SubscriptionOut | Response:
        # The scheme, host and port only: a URL carries its receiver's secrets, and audit records outlive them.
        authorize(context, Action.WEBHOOK_MANAGE, Resource.tenant(tenant_id), detail={"url": kept_url(body.url)})
        first = replayed()
        if first is not None:
            return first
        _check_url(tenant_id, body.url)  # resolves the host: off the event loop, before any write
        with tenant_transaction(tenant_id) as conn:
            replay = replay_or_claim(
                conn,
                idempotency_key,
                request,
                body.model_dump(mode="json"),
                reveal=reveal,
            )
            if replay is not None:  # a duplicate that ran while the URL was checked
                return replay
            try:
                created, secret = store.create(
                    conn,
                    tenant_id=tenant_id,
                    url=body.url,
                    event_types=body.event_types,
                    description=body.description,
                    max_subscriptions=subscription_limit(context.tenant.quotas),
                )
            except store.SubscriptionQuotaError as exc:
                raise ProblemError(
                    409, "webhook-quota", "Conflict", str(exc), extensions={"limit": exc.limit}
                ) from None
            out = _out(created, secret)
            # The answer kept for a retry holds the secret sealed, as the subscription does.
            kept = out.model_dump(mode="json")
            kept["secret"] = store.seal_secret(tenant_id, created.id, secret)
            remember(conn, idempotency_key, 201, kept, {"ETag": created.etag})
        response.headers["ETag"] = created.etag
        return out

    return await run_in_threadpool(run)


@router.get("", response_model=SubscriptionPage, summary="List webhook subscriptions", responses={**AUTH_ERRORS})
def list_all(context: MayRead, conn: TenantConnection) -> SubscriptionPage:
    """The tenant's subscriptions, without their secrets (Tenant.Admin)."""
    authorize(context, Action.WEBHOOK_READ, Resource.tenant(context.tenant.id), conn=conn)
    return SubscriptionPage(items=[_out(s) for s in store.list_all(conn)])


@router.get("/{subscription_id}", response_model=SubscriptionOut, summary="Get a webhook subscription",
            responses={**AUTH_ERRORS, 200: _WITH_ETAG, 404: NOT_FOUND})  # fmt: skip
def get_one(
    subscription_id: SubscriptionId, context: MayRead, conn: TenantConnection, response: Response
) -> SubscriptionOut:
    """One subscription, without its secret, with its ETag (Tenant.Admin)."""
    authorize(context, Action.WEBHOOK_READ, Resource.tenant(context.tenant.id), conn=conn)
    found = _found(conn, subscription_id)
    response.headers["ETag"] = found.etag
    return _out(found)


@router.patch("/{subscription_id}", response_model=SubscriptionOut, summary="Change a webhook subscription",
              responses={**SAVING_ERRORS, 200: _WITH_ETAG, 404: NOT_FOUND, 412: PRECONDITION_FAILED,
                         422: REFUSED})  # fmt: skip
async def change(
    subscription_id: SubscriptionId,
    body: SubscriptionPatch,
    context: MayManage,
    response: Response,
    if_match: IfMatch = None,
) -> SubscriptionOut:
    """Change the URL, event types, description, or enable/disable (Tenant.Admin). With `If-Match`, only the
    subscription that ETag was issued for: a stale one is 412 (before the URL is checked) and of two changes sent with
    one ETag exactly one applies, and one whose subscription is deleted while the change runs is 412 too (without
    If-Match: 404). Without it the change applies to the subscription as it is (ADR 0045). The answer carries the new
    ETag; a change that changes nothing keeps the ETag and `updated_at`."""
    tags = if_match_tags(if_match)

    def run() -> SubscriptionOut:
        authorize(
            context, Action.WEBHOOK_MANAGE, Resource.tenant(context.tenant.id), detail={"id": str(subscription_id)}
        )
        if if_match is not None:
            # Early, for the answer's sake: a stale ETag is 412 whatever the URL, and a subscription gone already is
            # 404 (`*` included: only one deleted while the change runs is 412). The UPDATE compares again, on the
            # locked row, which is what keeps two changes with one ETag from both applying.
            with tenant_transaction(context.tenant.id) as conn:
                seen = _found(conn, subscription_id)
            if tags is not None and not store.matches(seen, tags):
                raise _stale(subscription_id)
        if body.url is not None:
            _check_url(context.tenant.id, body.url)
        with tenant_transaction(context.tenant.id) as conn:
            # Read locked: what is kept and whether it is re-enabled are decided from the row as it is, not from a
            # read that a sender's disabling commits past. A change that re-enables it (and so resumes its failed
            # deliveries) locks those deliveries first, as a delete and the sender do, so that none deadlocks it; one
            # that sends `enabled: true` to an enabled subscription locks none of them.
            current = _found(
                conn, subscription_id, to_change=True, enabling=body.enabled is True, conditional=if_match is not None
            )
            try:
                changed = store.update(
                    conn,
                    current,
                    url=body.url or current.url,
                    event_types=body.event_types or current.event_types,
                    description=current.description if body.description is None else body.description,
                    enabled=current.enabled if body.enabled is None else body.enabled,
                    if_match=tags,
                )
            except store.PreconditionFailedError:
                raise _stale(subscription_id) from None
        response.headers["ETag"] = changed.etag
        return _out(changed)

    return await run_in_threadpool(run)


@router.post("/{subscription_id}/rotate-secret", response_model=SecretOut, summary="Rotate the signing secret",
             responses={**AUTH_ERRORS, 200: _WITH_ETAG, 400: BAD_IDEMPOTENCY_KEY, 404: NOT_FOUND,
                        412: PRECONDITION_FAILED, 422: NO_BODY})  # fmt: skip
def rotate(
    subscription_id: SubscriptionId,
    context: MayManage,
    _no_body: TakesNoBody,
    conn: TenantConnection,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Depends(idempotency_key_header)],
    if_match: IfMatch = None,
) -> SecretOut | Response:
    """A new signing secret, shown once; deliveries from now on are signed with it and, for a day, with the one it
    replaced (Tenant.Admin). With `Idempotency-Key` a retry gets the first answer (the same secret and ETag) and
    rotates nothing more: a second rotation would drop the secret receivers still hold. A stale `If-Match`
    (optional) is 412 and rotates nothing, as is one whose subscription is deleted while the rotation runs (without
    If-Match: 404). The answer carries the subscription's new ETag. The request takes no body: the platform draws the
    secret, and a body (`{"secret": ...}` among them) is refused with 422 and rotates nothing."""
    tenant_id = context.tenant.id
    detail = {"id": str(subscription_id)}
    authorize(context, Action.WEBHOOK_MANAGE, Resource.tenant(tenant_id), conn=conn, detail=detail)
    replay = replay_or_claim(
        conn, idempotency_key, request, None, reveal=lambda stored: _with_secret_opened(tenant_id, stored)
    )
    if replay is not None:
        return replay
    _found(conn, subscription_id)
    try:
        rotated = store.rotate(conn, context.tenant.id, subscription_id, if_match=if_match_tags(if_match))
    except store.PreconditionFailedError:
        if store.get(conn, subscription_id) is None:
            raise _gone(subscription_id) from None
        raise _stale(subscription_id) from None
    if rotated is None:  # deleted since it was found
        if if_match is not None:  # `*`: no current representation matches it either
            raise _gone(subscription_id)
        raise ProblemError(404, "not-found", "Not found", f"no webhook subscription {subscription_id}")
    secret, version = rotated
    etag = store.etag(subscription_id, version)
    out = SecretOut(id=subscription_id, secret=secret)
    # The answer kept for a retry holds the secret sealed, as the subscription does.
    kept = {**out.model_dump(mode="json"), "secret": store.seal_secret(tenant_id, subscription_id, secret)}
    remember(conn, idempotency_key, 200, kept, {"ETag": etag})
    response.headers["ETag"] = etag
    return out


@router.delete("/{subscription_id}", status_code=204, summary="Delete a webhook subscription",
               responses={**AUTH_ERRORS, 404: NOT_FOUND, 412: PRECONDITION_FAILED, 422: NO_BODY})  # fmt: skip
def delete(
    subscription_id: SubscriptionId,
    context: MayManage,
    _no_body: TakesNoBody,
    conn: TenantConnection,
    if_match: IfMatch = None,
) -> Response:
    """Remove the subscription and its delivery log (Tenant.Admin). A stale `If-Match` (optional) is 412 and removes
    nothing; `*` matches any subscription that exists. Of two deletes sent at once with one ETag (or `*`), one is 204
    and the other 412 (the subscription it names is gone); without If-Match both are 204. A subscription already gone
    when the delete arrives is 404. The request takes no body (the precondition goes in `If-Match`): a body is refused
    with 422 and removes nothing."""
    detail = {"id": str(subscription_id)}
    authorize(context, Action.WEBHOOK_MANAGE, Resource.tenant(context.tenant.id), conn=conn, detail=detail)
    _found(conn, subscription_id)
    try:
        removed = store.delete(conn, subscription_id, if_match=if_match_tags(if_match))
    except store.PreconditionFailedError:
        if store.get(conn, subscription_id) is None:
            raise _gone(subscription_id) from None
        raise _stale(subscription_id) from None
    if not removed and if_match is not None:  # `*`, and another delete removed it since it was found
        raise _gone(subscription_id)
    return Response(status_code=204)


@router.get("/{subscription_id}/deliveries", response_model=DeliveryPage, summary="Read a subscription's deliveries",
            responses={**AUTH_ERRORS, 404: NOT_FOUND, 422: INVALID})  # fmt: skip
def deliveries(subscription_id: SubscriptionId, context: MayRead, conn: TenantConnection) -> DeliveryPage:
    """The subscription's last 100 deliveries, newest first (Tenant.Admin)."""
    authorize(context, Action.WEBHOOK_READ, Resource.tenant(context.tenant.id), conn=conn)
    _found(conn, subscription_id)
    rows = store.deliveries(conn, subscription_id)
    return DeliveryPage(items=[DeliveryOut(**{k: row[k] for k in DeliveryOut.model_fields}) for row in rows])
