# intent_ref: platform.access-control
"""Route permissions: whether the caller could do a route's action at all is decided before its body is read.

FastAPI reads a route's JSON body before it solves the dependencies and validates the body after them, so a caller
without the role would hear a 422 describing the schema (and a malformed body would leave no audit record). Every
/api/v1 route therefore takes its request context from `permission(action)`, its first dependency, and its router
uses `GuardedRoute`, which holds a body that does not parse until that decision has been made:

- The decision is Cedar's, on the route's action and on what is known before the body: the caller's tenant, the
  control plane, or the resource type of the action with the id from the path. Attributes that only the stored row
  or the body can give (an intent's target, an execution's requester, labels) take every value that a platform
  policy tells apart (`_candidates`), and the caller passes when any of them is allowed. Tenant policies are left
  out here: they only forbid, usually on those attributes, so they would refuse what the full decision might allow.
  The pre-check is thus never stricter than the full decision on the loaded resource, which each route still makes
  (and audits) as before; a test checks this for every action and role.
- A refusal is audited here (a deny with its reason, detail `{"stage": "role"}`) and answered 403 problem+json
  whose `reason` is the decision's code and whose `detail` says it in words (for `role_required`, with the roles
  that would allow the action); nothing else runs. A pass is not audited: the route's own decision on the
  resource, which follows, is the one record of the request's authorization, so no request is recorded twice.

What bounds a hostile body's CPU (the route takes the edge's document, and its model sees only the first unknown
members) is `BoundedBodyRoute`'s, which `GuardedRoute` extends and the routes without a pre-check use as it is. A
permission-checked route's body is not parsed at the edge at all: its permission check parses it, on a worker thread,
once the caller is signed in, allowed the action and admitted within its tenant's bounds, so that no caller without
a token, and no tenant over its bounds, makes anybody parse a body sent to such a route; a body sent where no route
takes it (404, 405) is not parsed either. The task-token completion routes are the exception, as their credential,
the task token, may be in the body. Sent in the `X-Task-Token` header, it is verified (signature and expiry) before
the body is parsed, and refused (401) without the body parsed; the body of a verified one is parsed on its tenant's
limiter of verified results. Sent in the body only (workers from before the header), the edge parses the body before
the token is checked, a caller without a valid token's too, on a worker thread of the limiter that such bodies alone
use (`COMPLETION_PARSES` in shared.api.accepted_input, one body at a time per process), with at most
`UNVERIFIED_BODIES` of them held per process (503 with Retry-After past it): a flood of them delays no result whose
header token verified (`edge_document` there; ADR 0027).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import anyio
import anyio.to_thread
from fastapi import Depends, HTTPException, Request, Response
from fastapi._compat import ModelField
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, PlainValidator, RootModel, WrapValidator
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope

from shared.accepted_json import MAX_REFUSALS, NotAcceptedJSONError
from shared.api.accepted_input import (
    ACCEPTED_DOCUMENT,
    UNPARSED_BODY,
    parse_body,
    parsed,
    refused_problem,
)
from shared.api.problems import CountedValidationError, ProblemError
from shared.api.query_params import refuse_repeated_query
from shared.api.security import RequestContext, authenticated
from shared.api.transactions import PERMITTED, in_route_transaction
from shared.audit import AuditRecord, get_audit_store
from shared.auth.principal import APP_ROLES, Principal
from shared.loop_limiters import LoopTenantParses
from shared.policy.actions import Action
from shared.policy.authorizer import Decision, Reason, Resource, TenantFacts, get_authorizer, refusal_detail
from shared.policy.facts import TENANT_ACTIVE

__all__ = [
    "ACCEPTED_DOCUMENT",
    "RESOURCE_TYPES",
    "BoundedBodyRoute",
    "GuardedRoute",
    "RoutePermission",
    "permission",
    "received_document",
    "role_decision",
    "route_permission",
]

RESOURCE_TYPES: dict[Action, str] = {
    **dict.fromkeys(
        (
            Action.TENANT_CREATE,
            Action.TENANT_READ,
            Action.TENANT_UPDATE,
            Action.TENANT_LIST,
            Action.TENANT_EXPORT,
            Action.TENANT_ERASE,
        ),
        "Platform",
    ),
    **dict.fromkeys(
        (
            Action.TENANT_SETTINGS_READ,
            Action.TENANT_SETTINGS_UPDATE,
            Action.INTENT_LIST,
            Action.BLUEPRINT_LIST,
            Action.EXECUTION_LIST,
            Action.MODULE_LIST,
            Action.INGRESS_REJECTION_LIST,
            Action.WORK_LEASE,
            Action.WORK_HEARTBEAT,
            Action.WORK_LIST,
            Action.WEBHOOK_READ,
            Action.WEBHOOK_MANAGE,
        ),
        "Tenant",
    ),
    **dict.fromkeys((Action.POLICY_READ, Action.POLICY_CREATE, Action.POLICY_DELETE), "Policy"),
    Action.AUDIT_READ: "AuditLog",
    **dict.fromkeys((Action.MODULE_REGISTER, Action.MODULE_READ), "Module"),
    **dict.fromkeys(
        (
            Action.INTENT_READ,
            Action.INTENT_CREATE,
            Action.INTENT_UPDATE,
            Action.INTENT_ARCHIVE,
            Action.INTENT_ROLLBACK,
            Action.INTENT_EXECUTE,
        ),
        "Intent",
    ),
    **dict.fromkeys(
        (
            Action.BLUEPRINT_READ,
            Action.BLUEPRINT_CREATE,
            Action.BLUEPRINT_UPDATE,
            Action.BLUEPRINT_ARCHIVE,
            Action.BLUEPRINT_ROLLBACK,
        ),
        "Blueprint",
    ),
    **dict.fromkeys((Action.EXECUTION_READ, Action.EXECUTION_CANCEL, Action.EXECUTION_APPROVE), "Execution"),
}
"""The resource type each action applies to in the Cedar schema (a test checks every action is listed)."""

ANY_ID = "*"
"""The resource id when the path names none (a collection, or an item the body describes)."""
_UNUSABLE_ID = "invalid"
_PLAIN_ID = re.compile(r"[\x21-\x7e]{1,200}")
_BODY_ERROR = "qp.deferred_body_error"
_UNLISTED = "qp.unlisted_members"
_UNREAD_BODY = object()
_NOT_HANDED = object()
_JSON_SPACE = re.compile(rb"[ \t\n\r]*")
_STAND_IN = UUID(int=0)


@dataclass(frozen=True)
class RoutePermission:
    """What a route's pre-check decides: the action, and the path parameter that names the resource (if any)."""

    action: Action
    resource_param: str | None


_PERMISSIONS: dict[Callable[..., Coroutine[Any, Any, RequestContext]], RoutePermission] = {}


def _candidates(action: Action, resource_id: str, tenant_id: UUID, principal_id: str) -> list[Resource]:
    kind = RESOURCE_TYPES[action]
    match kind:
        case "Platform":
            return [Resource.platform()]
        case "Tenant":
            return [Resource.tenant(tenant_id)]
        case "Intent":
            # No platform policy permits more for production than for any other target.
            return [Resource("Intent", resource_id, tenant_id, {"target": "", "labels": {}})]
        case "Execution":
            # Someone else's first, so a refusal names the missing role rather than self-approval; the caller's
            # own, because a requester may cancel its own execution without an operator role.
            return [
                Resource("Execution", resource_id, tenant_id, {"target": "", "requested_by": by, "labels": {}})
                for by in ("", principal_id)
            ]
        case "Module":
            return [Resource("Module", resource_id, tenant_id, {"name": resource_id})]
        case _:
            return [Resource(kind, resource_id, tenant_id, {})]


def role_decision(
    principal: Principal, tenant: TenantFacts, action: Action, resource_id: str = ANY_ID
) -> tuple[Decision, Resource]:
    """Whether `principal` could do `action` on some resource of its tenant with this id, whatever the attributes
    the body or the stored row will give it; the decision and the resource it names (not audited)."""
    candidates = _candidates(action, resource_id, tenant.id, principal.id)
    decisions = [get_authorizer().decide(principal, action, resource, tenant=tenant) for resource in candidates]
    for decision, resource in zip(decisions, candidates, strict=True):
        if decision.allowed:
            return decision, resource
    return decisions[0], candidates[0]


@functools.cache
def _granting_roles(action: Action) -> tuple[str, ...]:
    """The app roles any one of which passes `action`'s pre-check, for a refusal to name. The pre-check leaves
    tenant policies and the resource's attributes out, so the answer is the same for every caller of an active
    tenant: worked out once per action, for a stand-in caller (no real tenant or resource is looked at)."""
    facts = TenantFacts(_STAND_IN, TENANT_ACTIVE, frozenset(), frozenset())
    return tuple(
        role
        for role in sorted(APP_ROLES)
        if role_decision(
            Principal(_STAND_IN, _STAND_IN, _STAND_IN, frozenset({role}), frozenset(), False), facts, action
        )[0].allowed
    )


def _path_id(request: Request, param: str | None) -> str:
    raw = request.path_params.get(param) if param is not None else None
    if not isinstance(raw, str):
        return ANY_ID
    try:
        return str(UUID(raw))
    except ValueError:
        # The route answers 422 for it later; the audit record keeps only an id that can be stored and read.
        return raw if _PLAIN_ID.fullmatch(raw) else _UNUSABLE_ID


def _record_deny(context: RequestContext, action: Action, resource: Resource, decision: Decision) -> None:
    # Written at once, on its own: no transaction is open yet, and the 403 that follows changes nothing else.
    get_audit_store().record(
        AuditRecord.new(
            tenant_id=context.tenant.id,
            principal_id=context.principal.id,
            action=action.value,
            resource_type=resource.type,
            resource_id=resource.id,
            decision="deny",
            reason=decision.reason,
            request_id=context.request_id,
            detail={"stage": "role"},
            occurred_at=datetime.now(UTC),
        )
    )


TENANT_PARSE_THREADS = 1
"""Bodies of one tenant parsed at once, per process. A parse holds the interpreter's lock for most of its time (0.4 s
of CPU for a hostile 660 KB body), so a tenant's five admitted requests parsing at once parse no faster than one
after the other and only crowd out the event loop that every tenant's requests run on: measured through the devhost
(50 such bodies of one tenant that parse and are then refused), another tenant's read took 1.2-1.7 s with five
parses at once, 0.2-0.5 s with one. A tenant's parses queue on the event loop, holding no thread, and never behind
another tenant's."""
_TENANT_PARSES = LoopTenantParses(TENANT_PARSE_THREADS)
"""Per event loop (shared.loop_limiters): one limiter shared by every loop, the API served on a few threads each with
its own loop, hung the loops after the first."""


async def _parse_held_body(request: Request, tenant_id: UUID) -> None:
    """Parse the body the edge left to this check (`UNPARSED_BODY`), on a worker thread, one of the tenant's at a
    time, and hand the document to the route's body parameter; 422 when it is not accepted JSON, as the edge
    answered it before."""
    body = request.scope.pop(UNPARSED_BODY, None)
    if not isinstance(body, bytes):
        return
    limiter = _TENANT_PARSES.of(tenant_id)

    def parse() -> None:
        document = parse_body(body)
        if isinstance(request, _BodyRequest):
            # Here too, off the event loop: a document of many members costs its trimming and its copy.
            request.take(document)

    try:
        await anyio.to_thread.run_sync(parse, limiter=limiter)
    except NotAcceptedJSONError as exc:
        raise refused_problem(exc) from None


def _raise_deferred_body_error(request: Request) -> None:
    """Answer for a body that did not parse, as it would have been answered before."""
    error = request.scope.pop(_BODY_ERROR, None)
    if isinstance(error, json.JSONDecodeError):
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", error.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": error.msg},
                }
            ],
            body=error.doc,
        )
    if error is not None:
        raise HTTPException(status_code=400, detail="There was an error parsing the body")


def permission(
    action: Action, *, resource_param: str | None = None
) -> Callable[..., Coroutine[Any, Any, RequestContext]]:
    """A dependency giving the route its request context once the caller could do `action` at all (else 403).

    `resource_param` names the path parameter holding the resource's id; without it the resource is the tenant,
    the control plane or the collection, by the action's resource type. Make it the route's first dependency.
    """

    async def check(request: Request, context: Annotated[RequestContext, Depends(authenticated)]) -> RequestContext:
        # On the event loop: the decision is CPU only, most often remembered (shared/policy/authorizer.py), and holds
        # the GIL on a worker thread as much as here, so a thread hop would only add its own cost. A deny record is
        # written on a worker thread.
        decision, resource = role_decision(
            context.principal, context.tenant_facts, action, _path_id(request, resource_param)
        )
        if not decision.allowed:
            await run_in_threadpool(_record_deny, context, action, resource, decision)
            needs = _granting_roles(action) if decision.reason == Reason.ROLE_REQUIRED else ()
            detail = refusal_detail(action.value, decision.reason, needs=needs)
            raise ProblemError(403, "forbidden", "Forbidden", detail, extensions={"reason": decision.reason})
        # Only now, after sign-in, the tenant's admission and rate token (`authenticated`) and this decision: a
        # caller refused any of them has had nothing parsed for it.
        await _parse_held_body(request, context.tenant.id)
        _raise_deferred_body_error(request)
        refuse_repeated_query(request)
        request.scope[PERMITTED] = action
        return context

    check.__name__ = check.__qualname__ = f"permission_{action.value.replace('.', '_')}"
    _PERMISSIONS[check] = RoutePermission(action, resource_param)
    return check


def route_permission(route: APIRoute) -> RoutePermission | None:
    """The permission a route's first dependency checks; None when its first dependency is not a permission."""
    dependencies = route.dependant.dependencies
    first = dependencies[0].call if dependencies else None
    return _PERMISSIONS.get(first) if first is not None else None


def _stand_in(body: bytes) -> Any:
    """What FastAPI is handed as a permission-checked route's body, which it reads before it runs the dependencies
    and validates after them: for an object or an array, an empty one that the permission check fills in place with
    the document it parses (`_BodyRequest.take`); for `true`, `false` and `null`, that value. A string or a number
    is known only once parsed: a value of its kind stands in, and `GuardedRoute` takes no body that would not refuse
    every string and number alike. A body that is not JSON is refused by the check before anything is validated.

    Only the first character after any white space is looked at, which is not parsing: a scan of at most the body's
    length, as the edge's copy of it was."""
    start = _JSON_SPACE.match(body)
    first = body[start.end() : start.end() + 1] if start is not None else b""
    match first:
        case b"{":
            return {}
        case b"[":
            return []
        case b"t":
            return True
        case b"f":
            return False
        case b"n":
            return None
        case b"-" | b"0" | b"1" | b"2" | b"3" | b"4" | b"5" | b"6" | b"7" | b"8" | b"9":
            return 0
        case _:
            return ""


class _BodyRequest(Request):
    """A request whose JSON body, when the edge parsed it already, is that document (not parsed a second time) with
    only the first unknown members of the route's model, and is kept for the route's dependencies
    (`received_document`); when the edge left it to the permission check, a stand-in that the check fills with what
    it parses (`_stand_in`); a deferring one sets an unparseable body aside for the pre-check to answer after
    deciding."""

    def __init__(self, scope: Scope, receive: Receive, known: frozenset[str] | None, *, defer: bool) -> None:
        super().__init__(scope, receive)
        self._known, self._defer = known, defer
        self.received: Any = None
        self._held: Any = _NOT_HANDED
        self._taken = False

    def take(self, document: Any) -> None:
        """The body as the permission check parsed it, trimmed for the route's model; poured into the stand-in
        FastAPI was handed, which it validates only after the dependencies, this check first among them."""
        received = _trimmed(self.scope, document, self._known)
        held = self._held
        if isinstance(held, dict) and isinstance(received, dict):
            held.update(received)
            received = held
        elif isinstance(held, list) and isinstance(received, list):
            held.extend(received)
            received = held
        elif isinstance(held, dict | list):
            # Unreachable: a JSON text that parses is of the kind its first character begins.
            raise RuntimeError("a permission-checked body parsed as another kind than its first character began")
        self.received = received
        self._taken = True

    def require_taken(self) -> None:
        """Raise when FastAPI was handed a stand-in that no permission check filled: the route would run on an empty
        object or array (or a value of the body's kind), not on the body, which nothing parsed or refused."""
        if self._held is not _NOT_HANDED and not self._taken:
            # A route's mistake (a permission dependency that is not first, or replaced): never answered as a success.
            raise RuntimeError("a permission-checked route was to run on a body its permission check never parsed")

    async def json(self) -> Any:
        if self._held is not _NOT_HANDED:
            return self._held
        if UNPARSED_BODY in self.scope:
            # Parsed by the permission check, after sign-in and admission; FastAPI validates what it is handed here
            # only after that check has run, so a container filled in place then is validated as the document.
            self._held = _stand_in(self.scope[UNPARSED_BODY])
            return self._held
        if ACCEPTED_DOCUMENT in self.scope:
            self.received = _trimmed(self.scope, self.scope.pop(ACCEPTED_DOCUMENT), self._known)
            return self.received
        try:
            self.received = await super().json()
        except (ValueError, RecursionError) as exc:  # what json.loads raises on bytes that are not JSON
            if not self._defer:
                raise  # answered by FastAPI at once, as a route without a pre-check always was
            self.scope[_BODY_ERROR] = exc
            return _UNREAD_BODY
        return self.received


def received_document(request: Request) -> Any:
    """The JSON body as the route's body model is given it (the edge's document, trimmed like the model's), for a
    dependency that must read a member before the model is validated; None when there is none (no JSON body, or a
    request not handled by a `BoundedBodyRoute`)."""
    return request.received if isinstance(request, _BodyRequest) else None


def _known_members(route: APIRoute) -> frozenset[str] | None:
    """The members a route's body model takes, when the body is one model that refuses any other; else None."""
    field = route.body_field
    if field is None or len(route.dependant.body_params) != 1:
        return None
    annotation = field.field_info.annotation
    models = [kind for kind in typing.get_args(annotation) or (annotation,) if kind is not type(None)]
    model = models[0] if len(models) == 1 else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or model.model_config.get("extra") != "forbid":
        return None
    validators = model.__pydantic_decorators__.model_validators.values()
    if any(validator.info.mode != "after" for validator in validators):
        return None  # one that runs first may take or rename members: what is unknown is then not known here
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        names.update(alias for alias in (info.alias, info.validation_alias) if isinstance(alias, str))
        if not isinstance(info.validation_alias, str | None):
            return None  # alias paths or choices: not worth modelling here
    return frozenset(names)


def _trimmed(scope: Scope, document: Any, known: frozenset[str] | None) -> Any:
    """`document` without the unknown members past the first MAX_REFUSALS, their number kept in the scope.

    A body of a hundred thousand members its model refuses made pydantic build, and FastAPI copy, an error for
    each, about 0.5 s of CPU, to list the first MAX_REFUSALS of them. The model sees the known members and the first
    unknown ones, so its errors begin as they did; `detail` still counts all (`BoundedBodyRoute`)."""
    if known is None or not isinstance(document, dict) or len(document) <= len(known) + MAX_REFUSALS:
        return document
    unknown = [name for name in document if name not in known]
    if len(unknown) <= MAX_REFUSALS:
        return document
    kept = known.union(unknown[:MAX_REFUSALS])
    scope[_UNLISTED] = len(unknown) - MAX_REFUSALS
    return {name: value for name, value in document.items() if name in kept}


_VALIDATORS_FIRST = (BeforeValidator, PlainValidator, WrapValidator)


def _refuses_bare_values(annotation: Any) -> bool:
    """Whether a body of this type refuses every JSON string and number with the same errors, whatever its value:
    objects (a dict, a model whose validation starts with its fields), arrays, null, and unions of them."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *metadata = typing.get_args(annotation)
        return not any(isinstance(item, _VALIDATORS_FIRST) for item in metadata) and _refuses_bare_values(base)
    if origin in (typing.Union, types.UnionType):
        return all(_refuses_bare_values(member) for member in typing.get_args(annotation))
    if annotation is type(None) or annotation in (dict, list) or origin in (dict, list):
        return True
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or issubclass(annotation, RootModel):
        return False
    custom_schema = any(
        "__get_pydantic_core_schema__" in vars(kind) for kind in annotation.__mro__[:-1] if kind is not BaseModel
    )
    validators = annotation.__pydantic_decorators__.model_validators.values()
    return not custom_schema and all(validator.info.mode == "after" for validator in validators)


def _body_fields(dependant: Dependant) -> list[ModelField]:
    """Every body parameter of a route, its dependencies' (at any depth) with its own: FastAPI validates each of
    them against the body, not only the endpoint's."""
    fields = list(dependant.body_params)
    for sub in dependant.dependencies:
        fields.extend(_body_fields(sub))
    return fields


def _check_deferred_body(route: APIRoute) -> None:
    """Refuse a permission-checked route whose body a string or number could pass, or answer by its value: such a
    body is validated as a stand-in of its kind (`_stand_in`), so the answer must not depend on which one it is."""
    if route.body_field is None or route._embed_body_fields:
        return  # no body, or members of it: FastAPI reads them with `.get`, which no string or number has
    # Not embedded: every body parameter of one name, wherever it is declared, is validated against the whole body.
    for field in _body_fields(route.dependant):
        info = field.field_info
        if any(isinstance(item, _VALIDATORS_FIRST) for item in info.metadata) or not _refuses_bare_values(
            info.annotation
        ):
            raise TypeError(
                f"{route.path}: a permission-checked route's body must be an object or an array (or null): its body"
                " is parsed after the permission check, and FastAPI is handed a stand-in for a string or a number"
                f" (`{field.name}`)"
            )


_HANDLED: ContextVar[_BodyRequest | None] = ContextVar("qp_body_request", default=None)
"""The request a `BoundedBodyRoute` is handling, for its endpoint's wrapper (`_on_a_taken_body`) to ask."""
_CHECKS_BODY = "__qp_checks_taken_body__"


def _on_a_taken_body(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """`endpoint`, refusing to run (RuntimeError, a 500) on a stand-in its permission check never filled.

    FastAPI validates the stand-in whether or not that check ran; this runs after every dependency and before the
    endpoint (and its transaction), whatever kind of function the endpoint is: a generator is returned unstarted."""
    if getattr(endpoint, _CHECKS_BODY, False):
        return endpoint  # a route copied with its endpoint (an included router's) is checked once

    def check() -> None:
        request = _HANDLED.get()
        if request is not None:
            request.require_taken()

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def checked_coroutine(*args: Any, **kwargs: Any) -> Any:
            check()
            return await endpoint(*args, **kwargs)

        wrapped: Callable[..., Any] = checked_coroutine
    else:

        @functools.wraps(endpoint)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check()
            return endpoint(*args, **kwargs)

        wrapped = checked
    setattr(wrapped, _CHECKS_BODY, True)
    return wrapped


class BoundedBodyRoute(APIRoute):
    """A route whose JSON body is the edge's parsed document, of which a body model that refuses other members sees
    only the first MAX_REFUSALS unknown ones; its validation error counts the rest (ADR 0023). The route class of
    routes with a body and no permission pre-check (the task-token completion routes); `GuardedRoute` adds the
    pre-check's deferral of body errors."""

    defers_body_errors = False
    """Whether a body that does not parse is set aside for the permission dependency to answer."""

    @property
    def parses_body_after_permission(self) -> bool:
        """Whether the route's permission check parses its body (the edge leaves it unparsed)."""
        return False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, given a request that takes the edge's document (and, when the route defers, sets body
        parse errors aside); a validation error of a trimmed body counts the unknown members left out."""
        handler = super().get_route_handler()
        known = _known_members(self)
        defer = self.defers_body_errors

        async def bounded(request: Request) -> Response:
            if UNPARSED_BODY in request.scope and not self.parses_body_after_permission:
                # Left by the edge for a permission check that this route does not make: parsed here instead.
                try:
                    request.scope[ACCEPTED_DOCUMENT] = await parsed(request.scope.pop(UNPARSED_BODY))
                except NotAcceptedJSONError as exc:
                    raise refused_problem(exc) from None
            body_request = _BodyRequest(request.scope, request.receive, known, defer=defer)
            handling = _HANDLED.set(body_request)
            try:
                return await handler(body_request)
            except RequestValidationError as exc:
                unlisted = request.scope.pop(_UNLISTED, 0)
                if unlisted:
                    raise CountedValidationError(exc, unlisted) from None
                raise
            finally:
                _HANDLED.reset(handling)
                request.scope.pop(_UNLISTED, None)

        return bounded


class GuardedRoute(BoundedBodyRoute):
    """The route class of every router with permission-checked routes: a body that does not parse is answered
    only after the route's permission dependency has decided (403 first for a caller without the role), and a
    route's transaction is opened around it on its own thread (`in_route_transaction`).

    A permission-checked route's body is parsed by that dependency; FastAPI, which reads the body before the
    dependencies, is handed a stand-in that the check fills (`_stand_in`), so its own validation takes the document
    and no framework class is changed. Such a route's body, wherever it is declared (the endpoint or a dependency),
    must be an object, an array or null (`_check_deferred_body`), and a route whose stand-in that check never
    filled does not run (`_on_a_taken_body`)."""

    defers_body_errors = True

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _on_a_taken_body(in_route_transaction(endpoint)), **kwargs)
        self._parses_body = route_permission(self) is not None
        if self._parses_body:
            _check_deferred_body(self)

    @property
    def parses_body_after_permission(self) -> bool:
        """Whether the route has a permission check, which then parses its body after sign-in and admission."""
        return self._parses_body
