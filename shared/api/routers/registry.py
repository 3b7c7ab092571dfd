# intent_ref: platform.registry
"""The intent and blueprint registry API: one router factory, mounted at /api/v1/intents and /api/v1/blueprints."""

# No `from __future__ import annotations`: the routes annotate with per-kind aliases local to definition_router,
# which FastAPI can only resolve when annotations are evaluated where they are written.

import uuid
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Annotated, Any, TypeVar
from uuid import UUID

import psycopg
from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from shared.api.accepted_input import TakesNoBody, no_body_doc
from shared.api.idempotency import idempotency_key as idempotency_key_header
from shared.api.idempotency import remember, replay_or_claim
from shared.api.permissions import GuardedRoute, permission
from shared.api.problems import ProblemError, invalid_fields
from shared.api.responses import BAD_IDEMPOTENCY_KEY
from shared.api.routers.registry_models import (
    COMMON_ERRORS,
    E400,
    E404,
    E409_ARCHIVED,
    E409_NAME,
    E412,
    E422,
    E428,
    ITEM_ERRORS,
    BlueprintRef,
    FieldChangeOut,
    PlannedStepOut,
    QuotaHeadroomOut,
    RegistryDiff,
    RegistryItem,
    RegistryItemPage,
    RegistryItemSummary,
    RegistryPlan,
    RegistryValidation,
    RegistryVersion,
    RegistryVersionPage,
    RollbackRequest,
    StepAuthorization,
    request_examples,
)
from shared.api.security import RequestContext, authorize, readable, record_mutation
from shared.api.transactions import TenantConnection
from shared.check_gate import costly_check
from shared.db.session import tenant_transaction
from shared.engine.start import active_executions, concurrent_limit
from shared.etags import if_match_tags
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT
from shared.policy.actions import Action
from shared.policy.authorizer import Decision, Resource, get_authorizer, refusal_detail
from shared.policy.decisions import decide as decide_audited
from shared.policy.decisions import record_decision
from shared.policy.tenant_policies import tenant_policy_texts
from shared.registry import service
from shared.registry.model import MAX_LABELS, LabelKey, LabelValue, Slug, Step, Target
from shared.registry.repository import HeadRow, Kind, ListedHead, Status, VersionRow


@dataclass(frozen=True)
class _KindSpec:
    """What differs between the intents and the blueprints routes: names, actions and the resource type."""

    kind: Kind
    resource_type: str
    read: Action
    list: Action
    create: Action
    update: Action
    archive: Action
    rollback: Action

    @property
    def path(self) -> str:
        return f"/api/v1/{self.kind}s"


_SPECS: dict[Kind, _KindSpec] = {
    "intent": _KindSpec(
        "intent",
        "Intent",
        Action.INTENT_READ,
        Action.INTENT_LIST,
        Action.INTENT_CREATE,
        Action.INTENT_UPDATE,
        Action.INTENT_ARCHIVE,
        Action.INTENT_ROLLBACK,
    ),
    "blueprint": _KindSpec(
        "blueprint",
        "Blueprint",
        Action.BLUEPRINT_READ,
        Action.BLUEPRINT_LIST,
        Action.BLUEPRINT_CREATE,
        Action.BLUEPRINT_UPDATE,
        Action.BLUEPRINT_ARCHIVE,
        Action.BLUEPRINT_ROLLBACK,
    ),
}

# --- mapping ----------------------------------------------------------------------------------------------------


def _pin(ref: dict[str, Any] | None) -> BlueprintRef | None:
    return None if ref is None else BlueprintRef.model_validate(ref)


def _item_out(item: service.Item) -> RegistryItem:
    head, current = item.head, item.version
    return RegistryItem(
        id=head.id,
        name=head.name,
        description=current.description,
        labels=current.labels,
        status=head.status,
        version=current.version,
        definition=current.definition,
        blueprint_ref=_pin(current.blueprint_ref),
        origin=current.origin,
        created_by=head.created_by,
        created_at=head.created_at,
        updated_at=head.updated_at,
        archived_at=head.archived_at,
        version_created_by=current.created_by,
        version_created_at=current.created_at,
    )


def _summary_out(head: HeadRow) -> RegistryItemSummary:
    return RegistryItemSummary(
        id=head.id,
        name=head.name,
        description=head.description,
        labels=head.labels,
        status=head.status,
        version=head.current_version,
        created_at=head.created_at,
        updated_at=head.updated_at,
        archived_at=head.archived_at,
    )


def _version_out(row: VersionRow) -> RegistryVersion:
    return RegistryVersion(**{**asdict(row), "blueprint_ref": _pin(row.blueprint_ref)})


def _plan_out(plan: service.Plan, kind: Kind) -> RegistryPlan:
    steps = [
        PlannedStepOut(
            id=step.id,
            action=step.action,
            module=step.module,
            remote=step.remote,
            timeout_s=step.timeout_s,
            depends_on=step.depends_on,
            level=step.level,
            when=step.when,
            compensate=step.compensate,
            authorization=None
            if step.decision is None
            else StepAuthorization(
                action=Action.INTENT_EXECUTE.value, allowed=step.decision.allowed, reason=step.decision.reason
            ),
        )
        for step in plan.steps
    ]
    may_execute = (
        None
        if kind == "blueprint"
        else (
            plan.item.head.status == "active"
            and plan.quota.headroom != 0
            and all(step.authorization is not None and step.authorization.allowed for step in steps)
        )
    )
    return RegistryPlan(
        id=plan.item.head.id,
        name=plan.item.head.name,
        version=plan.item.version.version,
        status=plan.item.head.status,
        target=plan.item.target,
        blueprint_ref=plan.blueprint_ref,
        levels=plan.levels,
        steps=steps,
        quota=QuotaHeadroomOut(**asdict(plan.quota)),
        caller_may_execute=may_execute,
        plan_hash=plan.plan_hash,
    )


def _problem(exc: service.RegistryError) -> ProblemError:
    match exc:
        case service.NotFoundError() | service.UnknownVersionError():
            return ProblemError(404, "not-found", "Not found", str(exc))
        case service.ArchivedError():
            return ProblemError(409, "archived", "Conflict", str(exc))
        case service.NameConflictError():
            return ProblemError(409, "conflict", "Conflict", str(exc))
        case service.PreconditionFailedError():
            return ProblemError(
                412,
                "precondition-failed",
                "Precondition failed",
                "The item changed since that ETag was issued; GET it again.",
            )
        case service.DefinitionInvalidError():
            # The errors go in as an extension member: each carries its `code` beside pointer and detail, which
            # the shared FieldError model would drop.
            errors = [{"pointer": error.pointer, "detail": error.message, "code": error.code} for error in exc.errors]
            return ProblemError(
                422,
                "invalid-definition",
                "Unprocessable content",
                exc.detail,
                extensions={"errors": errors},
                unlisted=exc.unlisted,
            )
    return ProblemError(500, "internal-error", "Internal server error")


# The body is decided on before it is validated: only what its model would accept reaches the Authorizer. A malformed
# body answers 422 from validation, not 403 from a decision failed closed; and an oversized one (a target of a million
# characters under a tenant's `like` policies cost 2 s a decision) costs what a valid one does (ADR 0011).
_BODY_LABELS: TypeAdapter[dict[str, str]] = TypeAdapter(
    Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
)
_BODY_TARGET: TypeAdapter[str] = TypeAdapter(Target)
_BODY_NAME: TypeAdapter[str] = TypeAdapter(Slug)


def _body_name(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body's name for an audit record's detail if its model would accept it, else its length: the body's name
    went in whatever it was, and a name of a million characters made a record of megabytes (ADR 0012)."""
    name = body.get("name")
    if name is None:
        return {"name": None}
    if not isinstance(name, str):
        return {"name_type": type(name).__name__}
    try:
        return {"name": _BODY_NAME.validate_python(name)}
    except ValidationError:
        return {"name_chars": len(name)}


def _labels(value: Any) -> dict[str, str]:
    """The body's labels if its model would accept them, else none."""
    if not isinstance(value, Mapping) or len(value) > MAX_LABELS:
        return {}  # before validating: a hundred thousand bad keys would cost an error each
    try:
        return _BODY_LABELS.validate_python(value)
    except ValidationError:
        return {}


def _body_resource(spec: _KindSpec, resource_id: str, tenant_id: UUID, body: Mapping[str, Any]) -> Resource:
    """The resource as a request body would save it."""
    definition = body.get("definition")
    try:
        target = _BODY_TARGET.validate_python(definition.get("target")) if isinstance(definition, Mapping) else None
    except ValidationError:
        target = None
    return _resource(spec, resource_id, tenant_id, target, _labels(body.get("labels")))


def _resource(
    spec: _KindSpec, resource_id: str, tenant_id: UUID, target: str | None, labels: dict[str, str]
) -> Resource:
    if spec.resource_type == "Intent":
        # Cedar needs a string; an intent without a target deploys nowhere, which no policy calls production.
        return Resource("Intent", resource_id, tenant_id, {"target": target or "", "labels": labels})
    return Resource("Blueprint", resource_id, tenant_id, {"labels": labels})


def _label_filter(values: list[str] | None) -> dict[str, str] | None:
    """`key:value` filters as one object; None when two values of one key make the filter match nothing."""
    wanted: dict[str, str] = {}
    for value in values or []:
        key, colon, label = value.partition(":")
        if not colon or not key:
            raise invalid_fields(("/query/label", f"{value!r} is not key:value"))
        if wanted.setdefault(key, label) != label:
            return None
    return wanted


def _with_etag(content: BaseModel, etag: str) -> JSONResponse:
    return JSONResponse(content.model_dump(mode="json"), headers={"ETag": etag})


_ETAG_HEADER = {
    "description": 'The strong ETag of the item\'s current representation: `"<id>.v<version>"` while it is active, '
    '`"<id>.v<version>.archived"` once archived; send it back in If-Match.',
    "schema": {"type": "string"},
}
_WITH_ETAG: dict[str, Any] = {"headers": {"ETag": _ETAG_HEADER}}
_ROLLBACK_BASE = (
    'A new version equal to `to_version`, its origin `{"kind": "rollback", "from_version": n}`; the old\nversion must'
    " still validate"
)
_ROLLBACK = {
    "intent": f"{_ROLLBACK_BASE}, and must not close a cycle of intents that run each other (422 `recursive_intent`,"
    " naming the path). `If-Match` is optional here (Author).",
    "blueprint": f"{_ROLLBACK_BASE}. `If-Match` is optional here (Author).",
}
"""What a rollback answers, by kind: only an intent's steps can run intents (declarations pin blueprint versions)."""


def _plan_refused(noun: str) -> dict[str, Any]:
    """The OpenAPI 422 answer of a plan: a body sent (the request takes none), a malformed id, or a current version
    that no longer validates; an example of each slug."""
    sent = no_body_doc(
        f"the {noun}'s id is not a UUID (`validation-error`); or the current version no longer validates"
        " (`invalid-definition`, its problems listed)"
    )
    return {
        **sent,
        "content": {
            media: {
                "schema": body["schema"],
                "examples": {
                    "validation-error": {"value": body["example"]},
                    "invalid-definition": {"value": E422["content"][media]["example"]},
                },
            }
            for media, body in sent["content"].items()
        },
    }


_CREATED: dict[str, Any] = {
    "description": "Created",
    "headers": {
        "Location": {"description": "The new item's URL.", "schema": {"type": "string"}},
        "ETag": _ETAG_HEADER,
    },
}


_Content = tuple[str | None, tuple[tuple[str, str], ...]]


def _content(target: Any, labels: dict[str, str]) -> _Content:
    """What a read decision depends on beyond the item: its target (a string one) and labels, as one hashable key."""
    return (target if isinstance(target, str) else None), tuple(sorted(labels.items()))


def _by_content(rows: list[VersionRow]) -> list[list[VersionRow]]:
    """`rows` grouped by what a read decision on a version depends on beyond its item (its target and labels), so
    a page decides each distinct content once rather than each version."""
    groups: dict[_Content, list[VersionRow]] = {}
    for row in rows:
        groups.setdefault(_content(row.definition.get("target"), row.labels), []).append(row)
    return list(groups.values())


_T = TypeVar("_T")
CHECK_ATTEMPTS = 2
"""Checks of a save's or a plan's definition made outside its writing transaction before one is made inside: only a
change to what a check read (the catalog, a blueprint; for a plan, the item's current version), made while it ran,
takes a request past one."""


class _OneDecision:
    """A request's permission on an item it changes or plans, decided on each version it meets and recorded once: on
    the version the request used (the one the writing transaction locked, or planned), or, when the request ends
    before that (a stale If-Match, an unknown version), the one it last met. A refusal is recorded at once (403).
    Recording each version met wrote an allow record per attempt for one request racing others."""

    def __init__(
        self,
        context: RequestContext,
        action: Action,
        resource_of: Callable[[service.Item], Resource],
        detail: Callable[[service.Item], dict[str, Any]],
    ) -> None:
        self._context = context
        self._action = action
        self._resource_of = resource_of
        self._detail = detail
        self._made: tuple[Resource, Decision, dict[str, Any]] | None = None
        self._recorded = False

    def __call__(self, item: service.Item) -> None:
        """Decide on `item` as the current transaction holds it; 403 (recorded) when refused."""
        context, resource = self._context, self._resource_of(item)
        decision = get_authorizer().decide(
            context.principal,
            self._action,
            resource,
            tenant=context.tenant_facts,
            tenant_policies=tenant_policy_texts(context.tenant.id),
        )
        self._made = (resource, decision, self._detail(item))
        if not decision.allowed:
            self.record(None)
            why = refusal_detail(self._action, decision.reason)
            raise ProblemError(403, "forbidden", "Forbidden", why, extensions={"reason": decision.reason})

    def record(self, conn: service.Conn | None) -> None:
        """Record the last decision made, once (with `conn`'s transaction, else on its own once none is held)."""
        if self._made is None or self._recorded:
            return
        self._recorded = True
        resource, decision, detail = self._made
        record_decision(self._context, self._action, resource, decision, conn=conn, detail=detail, decided=True)


def _checked_outside(
    context: RequestContext,
    pending: Callable[[service.Conn], service.PendingCheck | None],
    write: Callable[[service.Conn, service.OutsideCheck | None], _T],
    decided: _OneDecision | None = None,
) -> _T:
    """`write`'s answer, in a transaction of its own, with the definition check `pending` read for (in a short
    transaction before) made in between with no transaction open: a definition with a large `inputs` schema costs
    seconds of CPU, and a tenant's requests in flight would otherwise hold that many of the shared pool's connections
    for as long, leaving the other tenants none. `write` takes the check's outcome only while what it read stands
    (service.CheckStaleError otherwise: it is made again, then, the last time, inside `write`'s transaction, as every
    save once was, holding its turn at the gate taken before that transaction opens). `pending` answers None for a
    request `write` answers without a check (a replay).

    The check waits for its tenant's turn (`costly_check`: one at a time per tenant, a few per process), holding no
    connection: its CPU shares the interpreter with every request this process serves. `decided`: the request's
    permission, which `write` records once it holds the version it uses; a request that ends before (a refusal of
    `pending`'s) has it recorded here, as it was last decided."""
    try:
        # The last attempt's check runs in `write`'s transaction: its slot is taken before the transaction opens (the
        # wait holds no connection) and kept across it, weighed as the document last read was (none read: costly).
        last: service.PendingCheck | None = None
        read = False
        for _ in range(CHECK_ATTEMPTS):
            with tenant_transaction(context.tenant.id) as conn:
                found = last = pending(conn)
            read = True
            outside = None
            if found is not None:
                outside = service.cached_outside(found, tenant=context.tenant_facts)
                if outside is None:
                    with costly_check(context.tenant.id, document=found.doc):
                        outside = service.check_outside(found, tenant=context.tenant_facts)
            try:
                with tenant_transaction(context.tenant.id) as conn:
                    return write(conn, outside)
            except service.CheckStaleError:
                continue
        slot = (
            nullcontext()
            if read and last is None  # nothing to check (a replay)
            else costly_check(context.tenant.id, document=None if last is None else last.doc)
        )
        with slot, tenant_transaction(context.tenant.id) as conn:
            return write(conn, None)
    finally:
        if decided is not None:
            decided.record(None)


def _replays(conn: service.Conn, key: str | None, request: Request, body: Any) -> bool:
    """Whether `key` already answered this request (a retry, answered by replay and never checked again); 422 when it
    was used for another. The key is not claimed: the claim is the writing transaction's."""
    if key is None:
        return False
    with conn.transaction() as probe:
        replay = replay_or_claim(conn, key, request, body)
        if replay is None:
            raise psycopg.Rollback(probe)  # claimed just now: given back
    return True


# --- routes -----------------------------------------------------------------------------------------------------


def definition_router(kind: Kind) -> APIRouter:
    """The registry routes of one kind; intents and blueprints share every rule and line of code."""
    spec = _SPECS[kind]
    router = APIRouter(prefix=spec.path, tags=[f"{kind}s"], route_class=GuardedRoute)
    noun = kind
    examples = request_examples(kind)
    Json = Annotated[
        dict[str, Any],
        Body(openapi_examples=examples, description="See GET /api/v1/schemas/intent for the definition schema."),
    ]
    ItemId = Annotated[UUID, Path(description=f"The {noun}'s id.")]
    IfMatch = Annotated[str | None, Header(description="The ETag of the current version.")]
    IdempotencyKey = Annotated[str | None, Depends(idempotency_key_header)]
    # Each route's context comes from its permission check: the caller's role is decided before the body is read.
    MayCreate = Annotated[RequestContext, Depends(permission(spec.create))]
    MayList = Annotated[RequestContext, Depends(permission(spec.list))]
    MayRead = Annotated[RequestContext, Depends(permission(spec.read, resource_param="item_id"))]
    MayUpdate = Annotated[RequestContext, Depends(permission(spec.update, resource_param="item_id"))]
    MayArchive = Annotated[RequestContext, Depends(permission(spec.archive, resource_param="item_id"))]
    MayRollback = Annotated[RequestContext, Depends(permission(spec.rollback, resource_param="item_id"))]

    def load(conn: service.Conn, item_id: UUID) -> service.Item:
        try:
            return service.get(conn, kind, item_id)
        except service.RegistryError as exc:
            raise _problem(exc) from None

    def resource_of(context: RequestContext, item: service.Item) -> Resource:
        return _resource(spec, str(item.head.id), context.tenant.id, item.target, item.version.labels)

    def version_resource(context: RequestContext, item: service.Item, row: VersionRow) -> Resource:
        """The resource a read of version `row` of `item` is decided on: that version's target and labels."""
        # A version is read as what it holds: a tenant forbid on a label or a target sees an old version's own,
        # not the current version's (ADR 0011, amended 2026-12-06).
        return resource_of(context, service.Item(item.head, row))

    def readable_versions(
        context: RequestContext, conn: service.Conn, item: service.Item, rows: list[VersionRow]
    ) -> list[VersionRow]:
        """The versions in `rows` the caller may read; one audited decision per distinct content in the page (a
        page of 200 versions with a handful of label sets costs a handful of decisions and records)."""
        allowed: set[int] = set()
        # An empty page is decided on the current version: every request keeps its authorization record.
        for members in _by_content(rows) or [[item.version]]:
            numbers = [row.version for row in members]
            resource = version_resource(context, item, members[0])
            detail = {"operation": "list_versions", "versions": numbers}
            if decide_audited(context, spec.read, resource, conn=conn, detail=detail).allowed:
                allowed.update(numbers)
        return [row for row in rows if row.version in allowed]

    def readable_items(context: RequestContext, conn: service.Conn, rows: list[ListedHead]) -> list[ListedHead]:
        """The items in `rows` the caller may read, each decided on its current version's target and labels as a read
        of it alone is; one audit record per outcome in the page, naming its items."""
        return readable(
            context,
            spec.read,
            rows,
            lambda row: _resource(spec, str(row.id), context.tenant.id, row.target, row.labels),
            lambda row: str(row.id),
            conn=conn,
        )

    def read_versions(
        context: RequestContext, conn: service.Conn, item: service.Item, numbers: list[int], detail: dict[str, Any]
    ) -> list[VersionRow]:
        """The versions `numbers` of `item` once the caller may read each (403); 404 for one the item lacks, after a
        decision on the current version, so a caller who may not read the item learns nothing of its history."""
        rows: dict[int, VersionRow] = {}
        for number in dict.fromkeys(numbers):
            try:
                rows[number] = service.version(conn, kind, item.head.id, number)
            except service.RegistryError as exc:
                authorize(context, spec.read, resource_of(context, item), detail=detail, conn=conn)
                raise _problem(exc) from None
        for members in _by_content(list(rows.values())):
            resource = version_resource(context, item, members[0])
            versions = [row.version for row in members]
            authorize(context, spec.read, resource, detail={**detail, "versions": versions}, conn=conn)
        return [rows[number] for number in numbers]

    def authorize_new_version(
        context: RequestContext, action: Action, created: service.Item, detail: dict[str, Any], conn: service.Conn
    ) -> Resource:
        # The decision on the stored version says whether the caller may change the item; this one, on the version
        # the change creates (its target and labels), whether the item may become that: without it a tenant forbid
        # on production or on a label is bypassed by creating what it allows and updating or rolling back into what
        # it forbids. Taken before the commit, so a refusal (403) rolls the new version and its event back.
        resource = resource_of(context, created)
        authorize(context, action, resource, detail={**detail, "version": created.version.version}, conn=conn)
        return resource

    def decider(
        context: RequestContext, action: Action, detail: Callable[[service.Item], dict[str, Any]]
    ) -> _OneDecision:
        """The request's permission to do `action` on the item: decided before its check on the item as read (a
        refusal costs no check) and again on the item the writing transaction holds, recorded once (`_OneDecision`)."""
        return _OneDecision(context, action, lambda item: resource_of(context, item), detail)

    @router.post(
        "",
        status_code=201,
        response_model=RegistryItem,
        summary=f"Create {_a(noun)} {noun} (version 1)",
        responses={
            201: _CREATED,
            **COMMON_ERRORS,
            400: BAD_IDEMPOTENCY_KEY,
            409: E409_NAME,
            422: {
                **E422,
                "description": "The definition does not validate, or the Idempotency-Key "
                "was used for a different request",
            },
        },
    )
    def create(context: MayCreate, body: Json, request: Request, idempotency_key: IdempotencyKey) -> Response:
        """Validate and store version 1; 201 with Location and ETag. With `Idempotency-Key` a retry replays the
        first response, and the key with another body is 422."""
        item_id = uuid.uuid4()
        resource = _body_resource(spec, str(item_id), context.tenant.id, body)
        decided: list[bool] = []

        def pending(conn: service.Conn) -> service.PendingCheck | None:
            if not decided:  # the body is the resource: one decision, whatever the attempts
                authorize(context, spec.create, resource, detail=_body_name(body), conn=conn)
                decided.append(True)
            if _replays(conn, idempotency_key, request, body):
                return None
            return service.pending_create(conn, kind, body)

        def write(conn: service.Conn, outside: service.OutsideCheck | None) -> Response:
            replay = replay_or_claim(conn, idempotency_key, request, body)
            if replay is not None:
                return replay
            item = service.create(
                conn,
                kind,
                body,
                item_id=item_id,
                tenant=context.tenant_facts,
                created_by=context.principal.id,
                outside=outside,
            )
            record_mutation(context, spec.create, resource, {"name": item.head.name, "version": 1}, conn=conn)
            content = _item_out(item).model_dump(mode="json")
            headers = {"Location": f"{spec.path}/{item_id}", "ETag": item.etag}
            remember(conn, idempotency_key, 201, content, headers)
            return JSONResponse(content, status_code=201, headers=headers)

        try:
            return _checked_outside(context, pending, write)
        except service.RegistryError as exc:
            raise _problem(exc) from None

    @router.get(
        "", response_model=RegistryItemPage, summary=f"List {noun}s", responses={**COMMON_ERRORS, 400: E400, 422: E422}
    )
    def list_all(
        context: MayList,
        conn: TenantConnection,
        name_prefix: Annotated[str | None, Query(max_length=63, description="Names starting with this.")] = None,
        label: Annotated[
            list[str] | None, Query(description="key:value; repeat to require several.", examples=["team:web"])
        ] = None,
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> RegistryItemPage:
        """The tenant's items by name, filtered by name prefix, labels and status; cursor-paginated (Reader). Each
        item is decided as reading it alone is, on its current version's target and labels: the ones a tenant policy
        forbids the caller are left out, so a page may hold fewer than `limit` items (even none) and still name a next
        page."""
        # The listing itself is decided on the Tenant (an empty page keeps that one decision); the page's items on
        # their content (ADR 0011, amended 2026-12-06), else a forbid on reading them showed their names and labels.
        authorize(context, spec.list, Resource.tenant(context.tenant.id), conn=conn)
        labels = _label_filter(label)
        if labels is None:
            return RegistryItemPage(items=[], next_cursor=None)
        rows, next_cursor = service.list_items(
            conn, kind, name_prefix=name_prefix, labels=labels, status=status, cursor=cursor, limit=limit
        )
        readable = readable_items(context, conn, rows)
        return RegistryItemPage(items=[_summary_out(row) for row in readable], next_cursor=next_cursor)

    @router.post(
        "/validate",
        response_model=RegistryValidation,
        summary=f"Validate {_a(noun)} {noun} without saving it",
        responses={**COMMON_ERRORS, 422: E422},
    )
    def validate(context: MayCreate, body: Json) -> RegistryValidation:
        """Its problems at once, at most 50 from each check (422), or the normalized definition and its plan (200);
        nothing is saved."""
        # Two short transactions around the check's evaluation, which holds no pooled connection: a MiB of schemas
        # costs seconds of CPU against the meta-schema, and a tenant's requests in flight (half the pool) would
        # otherwise hold that many connections for as long, leaving the other tenants none.
        with tenant_transaction(context.tenant.id) as conn:
            authorize(
                context,
                spec.create,
                _body_resource(spec, "unsaved", context.tenant.id, body),
                detail={"operation": "validate", **_body_name(body)},
                conn=conn,
            )
            reads = service.check_reads(conn, kind, body)
        try:
            with costly_check(context.tenant.id, document=body):
                evaluated = service.check_evaluated(
                    reads, kind, body, tenant=context.tenant_facts, saving=True, sent=True
                )
            with tenant_transaction(context.tenant.id) as conn:
                checked = service.check_finish(conn, kind, evaluated)
        except service.RegistryError as exc:
            raise _problem(exc) from None
        request = checked.request
        return RegistryValidation(
            name=request.name,
            description=request.description,
            labels=dict(request.labels),
            definition=checked.normalized,
            levels=checked.levels,
            blueprint_ref=checked.result.blueprint_ref,
            plan_hash=checked.plan_hash,
        )

    @router.get(
        "/{item_id}",
        response_model=RegistryItem,
        summary=f"Read {_a(noun)} {noun}",
        responses={200: _WITH_ETAG, **COMMON_ERRORS, 404: E404},
    )
    def read(item_id: ItemId, context: MayRead, conn: TenantConnection) -> JSONResponse:
        """The current version, with its ETag (Reader)."""
        item = load(conn, item_id)
        authorize(context, spec.read, resource_of(context, item), conn=conn)
        return _with_etag(_item_out(item), item.etag)

    @router.put(
        "/{item_id}",
        response_model=RegistryItem,
        summary=f"Update {_a(noun)} {noun} (a new version)",
        responses={200: _WITH_ETAG, **ITEM_ERRORS, 409: E409_ARCHIVED, 412: E412, 428: E428},
    )
    def update(item_id: ItemId, context: MayUpdate, body: Json, if_match: IfMatch = None) -> JSONResponse:
        """Store the next version; `If-Match` with the current ETag is required (stale: 412). Of two updates
        with one ETag exactly one wins (Author)."""
        decided = decider(context, spec.update, lambda item: {"from_version": item.version.version})
        tags = if_match_tags(if_match)

        def pending(conn: service.Conn) -> service.PendingCheck:
            item = load(conn, item_id)
            decided(item)
            if not if_match:
                raise ProblemError(
                    428, "precondition-required", "Precondition required", f"Send If-Match with the {noun}'s ETag."
                )
            return service.pending_update(conn, kind, item, body, if_match=tags)

        def write(conn: service.Conn, outside: service.OutsideCheck | None) -> JSONResponse:
            updated = service.update(
                conn,
                kind,
                item_id,
                body,
                if_match=tags,
                tenant=context.tenant_facts,
                created_by=context.principal.id,
                outside=outside,
                authorize=decided,  # on the locked version, the one the new version follows
            )
            decided.record(conn)
            from_version = {"from_version": updated.version.version - 1}
            new = authorize_new_version(context, spec.update, updated, from_version, conn)
            record_mutation(context, spec.update, new, {"version": updated.version.version}, conn=conn)
            return _with_etag(_item_out(updated), updated.etag)

        try:
            return _checked_outside(context, pending, write, decided)
        except service.RegistryError as exc:
            raise _problem(exc) from None

    @router.delete(
        "/{item_id}",
        response_model=RegistryItem,
        summary=f"Archive {_a(noun)} {noun}",
        responses={
            200: _WITH_ETAG,
            **COMMON_ERRORS,
            404: E404,
            412: E412,
            422: no_body_doc(f"the {noun}'s id is not a UUID"),
        },
    )
    def archive(
        item_id: ItemId,
        context: MayArchive,
        _no_body: TakesNoBody,
        conn: TenantConnection,
        if_match: IfMatch = None,
    ) -> JSONResponse:
        """Archive: no new versions or executions; versions kept and reads still work. Archiving an archived
        item changes nothing (200 again), unless `If-Match` (optional) misses the current ETag, which ends in
        `.archived` once archived: a stale one is 412 whatever the status. The ETag the archive was made with
        (its current version's, without `.archived`) also answers 200, so a retry of that request finds it
        done (Author). The request takes no body (the precondition goes in `If-Match`): a body is refused with 422
        and archives nothing."""

        def decide(item: service.Item) -> None:
            # On the item under the archive's row lock: a decision on it as read before could let an update that
            # committed in between (a forbidden label, say) be archived on a permission given to the version before.
            detail = {"version": item.version.version}
            authorize(context, spec.archive, resource_of(context, item), conn=conn, detail=detail)

        try:
            archived, changed = service.archive(conn, kind, item_id, if_match=if_match_tags(if_match), authorize=decide)
        except service.RegistryError as exc:
            raise _problem(exc) from None
        if changed:
            record_mutation(
                context,
                spec.archive,
                resource_of(context, archived),
                {"version": archived.version.version},
                conn=conn,
            )
        return _with_etag(_item_out(archived), archived.etag)

    @router.post(
        "/{item_id}/rollback",
        response_model=RegistryItem,
        summary=f"Roll {_a(noun)} {noun} back (a new version equal to an old one)",
        description=_ROLLBACK[kind],
        responses={200: _WITH_ETAG, **ITEM_ERRORS, 409: E409_ARCHIVED, 412: E412},
    )
    def rollback(
        item_id: ItemId, context: MayRollback, body: RollbackRequest, if_match: IfMatch = None
    ) -> JSONResponse:
        """A new version equal to `to_version` (`_ROLLBACK`)."""
        decided = decider(context, spec.rollback, lambda _item: {"to_version": body.to_version})
        tags = if_match_tags(if_match)

        def pending(conn: service.Conn) -> service.PendingCheck:
            item = load(conn, item_id)
            decided(item)
            return service.pending_rollback(conn, kind, item, body.to_version, if_match=tags)

        def write(conn: service.Conn, outside: service.OutsideCheck | None) -> JSONResponse:
            rolled = service.rollback(
                conn,
                kind,
                item_id,
                body.to_version,
                if_match=tags,
                tenant=context.tenant_facts,
                created_by=context.principal.id,
                outside=outside,
                authorize=decided,
            )
            decided.record(conn)
            new = authorize_new_version(context, spec.rollback, rolled, {"to_version": body.to_version}, conn)
            record_mutation(
                context,
                spec.rollback,
                new,
                {"version": rolled.version.version, "from_version": body.to_version},
                conn=conn,
            )
            return _with_etag(_item_out(rolled), rolled.etag)

        try:
            return _checked_outside(context, pending, write, decided)
        except service.UnknownVersionError as exc:
            raise ProblemError(
                422,
                "validation-error",
                "Request validation failed",
                str(exc),
                extensions={"errors": [{"pointer": "/to_version", "detail": str(exc), "code": "unknown_version"}]},
            ) from None
        except service.RegistryError as exc:
            raise _problem(exc) from None

    @router.get(
        "/{item_id}/versions",
        response_model=RegistryVersionPage,
        summary=f"List {_a(noun)} {noun}'s versions",
        responses={**COMMON_ERRORS, 400: E400, 404: E404},
    )
    def list_versions(
        item_id: ItemId,
        context: MayRead,
        conn: TenantConnection,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    ) -> RegistryVersionPage:
        """Every version the caller may read, oldest first, cursor-paginated (Reader). Each version is decided on
        its own target and labels, as reading it alone is: the ones a tenant policy forbids the caller are left out,
        so a page may hold fewer than `limit` items (even none) and still name a next page."""
        item = load(conn, item_id)
        try:
            rows, next_cursor = service.versions(conn, kind, item_id, cursor=cursor, limit=limit)
        except service.RegistryError as exc:
            raise _problem(exc) from None
        readable = readable_versions(context, conn, item, rows)
        return RegistryVersionPage(items=[_version_out(row) for row in readable], next_cursor=next_cursor)

    @router.get(
        "/{item_id}/versions/{number}",
        response_model=RegistryVersion,
        summary=f"Read one version of {_a(noun)} {noun}",
        responses={**COMMON_ERRORS, 404: E404},
    )
    def read_version(
        item_id: ItemId, number: Annotated[int, Path(ge=1)], context: MayRead, conn: TenantConnection
    ) -> RegistryVersion:
        """One immutable version, decided on its own target and labels (Reader)."""
        item = load(conn, item_id)
        (row,) = read_versions(context, conn, item, [number], {"version": number})
        return _version_out(row)

    @router.get(
        "/{item_id}/diff",
        response_model=RegistryDiff,
        summary=f"Compare two versions of {_a(noun)} {noun}",
        responses={**COMMON_ERRORS, 404: E404},
    )
    def diff(
        item_id: ItemId,
        context: MayRead,
        conn: TenantConnection,
        from_version: Annotated[int, Query(alias="from", ge=1)],
        to_version: Annotated[int, Query(alias="to", ge=1)],
    ) -> RegistryDiff:
        """Steps added, removed and changed (with paths, old and new values), and a short summary; the caller must
        be allowed to read both versions, each decided on its own target and labels (Reader)."""
        item = load(conn, item_id)
        detail = {"operation": "diff", "from": from_version, "to": to_version}
        old, new = read_versions(context, conn, item, [from_version, to_version], detail)
        result = service.diff_versions(old, new)
        return RegistryDiff(
            from_version=result.from_version,
            to_version=result.to_version,
            **{key: value for key, value in result.definition.items() if key != "summary"},
            metadata_changed=[FieldChangeOut(**asdict(change)) for change in result.metadata_changed],
            summary=result.summary,
        )

    @router.post(
        "/{item_id}/plan",
        response_model=RegistryPlan,
        summary=f"Plan {_a(noun)} {noun} (dry run)",
        responses={**ITEM_ERRORS, 422: _plan_refused(noun)},
    )
    def plan(item_id: ItemId, context: MayRead, _no_body: TakesNoBody) -> RegistryPlan:
        """The current version's steps in execution levels, each with its module and the caller's decision for
        executing it (an `intent.run` step: for executing the child intent it runs), the tenant's quota headroom and
        the plan hash; nothing is saved or started (Reader). The request takes no body (the version planned is the
        current one): a body is refused with 422."""
        may_read = decider(context, spec.read, lambda item: {"operation": "plan", "version": item.version.version})

        def pending(conn: service.Conn) -> service.PendingCheck:
            item = load(conn, item_id)
            may_read(item)
            return service.pending_plan(conn, kind, item)

        def write(conn: service.Conn, outside: service.OutsideCheck | None) -> RegistryPlan:
            return planned(context, item_id, conn, outside, may_read)

        try:
            return _checked_outside(context, pending, write, may_read)
        except service.RegistryError as exc:
            raise _problem(exc) from None

    def planned(
        context: RequestContext,
        item_id: UUID,
        conn: service.Conn,
        outside: service.OutsideCheck | None,
        may_read: _OneDecision,
    ) -> RegistryPlan:
        """`plan`'s answer, in its transaction; `outside`: its check, made before it (else made here); `may_read`:
        the caller's permission, decided on the version planned."""
        decide = None
        if kind == "intent":
            policies = tenant_policy_texts(context.tenant.id)

            def may_execute(item: service.Item) -> Decision:
                return get_authorizer().decide(
                    context.principal,
                    Action.INTENT_EXECUTE,
                    resource_of(context, item),
                    tenant=context.tenant_facts,
                    tenant_policies=policies,
                )

            walk = service.DescendantWalk(conn, may_execute=may_execute)

            def decide(_conn: service.Conn, planned: service.Item, step: Step) -> Decision:
                # Per step; not audited: the plan request was. The resource is the version being planned (which may
                # be newer than the one authorized above), or for an intent.run step the child intent and every
                # intent below it, each decided as its start will be, on the root requester's authority (ADR 0035).
                # One walk for the whole plan: each child looked up once, each intent followed read once, one budget
                # of intents below the children.
                return walk.step_decision(planned, step)

        quota = service.QuotaHeadroom.of(concurrent_limit(context.tenant.quotas), active_executions(conn))
        result = service.plan(
            conn,
            kind,
            item_id,
            tenant=context.tenant_facts,
            decide=decide,
            quota=quota,
            outside=outside,
            authorize=may_read,
        )
        may_read.record(conn)
        return _plan_out(result, kind)

    return router


def _a(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"
