# intent_ref: platform.hardening
"""ASGI middleware: only accepted JSON bodies and storable path, query and header text reach a route."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote, unquote_to_bytes

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.routing import iter_route_contexts
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The container bound, its code and its count (the `as` imports) live with the accepted JSON, which the ingress shares
# without importing the API; this module keeps its names for them.
from shared.accepted_json import MAX_BODY_CONTAINERS as MAX_BODY_CONTAINERS
from shared.accepted_json import (
    NOT_UTF8,
    UNSTORABLE_TEXT,
    NotAcceptedJSONError,
    Refusal,
    is_json_media_type,
    loads,
    pointer_token,
    text_refusal,
    too_many_containers,
)
from shared.accepted_json import TOO_MANY_CONTAINERS as TOO_MANY_CONTAINERS
from shared.accepted_json import containers as containers
from shared.api.problems import (
    FieldError,
    ProblemError,
    error_response,
    invalid_fields,
    problem_response,
    too_many_requests,
)
from shared.api.request_ids import scope_request_id
from shared.api.responses import problem_doc

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ACCEPTED_DOCUMENT = "qp.accepted_document"
"""The scope key of the body as the edge parsed it, for the route to take instead of parsing the bytes a second
time (shared.api.permissions): the document is the one `json.loads` gives for accepted JSON."""
UNPARSED_BODY = "qp.unparsed_body"
"""The scope key of a body the edge left unparsed for the route's permission check, which parses it once the caller
is signed in, allowed the route's action and admitted within the tenant's bounds (shared.api.permissions)."""
EDGE_PARSE_THREADS = 1
"""Bodies parsed at once, per process, by each of the edge's limiters, for the routes no permission check guards. A
parse holds the interpreter's lock for most of its time, so more threads would parse no faster and only crowd out the
event loop every request runs on (see `TENANT_PARSE_THREADS` in shared.api.permissions); an anonymous flood queues
on the event loop, holding no thread that sync routes and sign-in need. A body no route takes (404, 405) is not
parsed at all."""
COMPLETION_PARSES = anyio.CapacityLimiter(EDGE_PARSE_THREADS)
"""The limiter of the task-token completion routes' bodies sent without a verified token in `TASK_TOKEN_HEADER` (the
token only in the body, as workers sent it before the header), theirs alone: such results never queue behind another
edge parse, and a flood of them holds up no other route's, nor any result whose header token verified."""
TASK_TOKEN_HEADER = "X-Task-Token"  # noqa: S105  # a header name, not a secret
"""The header a remote worker sends its result's task token in (ADR 0027): verified before the body is parsed. Not
Authorization, which the gateway reads as the caller's Entra bearer token."""
UNVERIFIED_BODIES = 16
"""Completion bodies without a verified header token that one process holds, waiting for or in their parse; one
more is answered 429 `completions-busy` at once (not 503: anyone past the gateway can fill the bound, and a 5xx
pages the operator). A parse of a hostile MiB takes 0.13-0.24 s, so the last of them waits 2-4 s, and the
bodies held are at most this many times the body limit: without the bound, a flood queued without end, in memory,
and a real result behind 30 of them arrived 7 s late, after its lease (409 `lease-expired`, its work lost)."""
UNVERIFIED_RETRY_AFTER_S = 2
"""Retry-After of the 429 for a body past `UNVERIFIED_BODIES`, or past `VERIFIED_BODIES_PER_TENANT`: about the time
the bodies ahead of it take."""
VERIFIED_BODIES_PER_TENANT = 16
"""Completion bodies whose header token verified that one process holds per tenant of the token, waiting for or in
their parse; one more is answered 429 `tenant-busy`. The edge verifies the token's signature and expiry only (whether
it was spent, or names this path, is the route's to say, after the parse), and a token lives for its item's deadline
(a day by default): a holder of one, spent or not, could otherwise hold any number of bodies in the memory every
tenant's requests share."""
VERIFIED_BODIES = 64
"""The same for all tenants together, per process (429 `completions-busy` past it)."""
_EDGE_PARSES = anyio.CapacityLimiter(EDGE_PARSE_THREADS)
"""The limiter of any other route's body parsed at the edge (a route of another class; none of the app's today)."""
ACCEPTED_CHARSETS = frozenset({"utf-8", "utf8"})
"""The charsets a JSON body may name (RFC 8259 JSON is UTF-8; the body is decoded as UTF-8 whatever it says)."""
# RFC 9110 §5.5: a field value with CR, LF or NUL must be refused; the other controls have no business there either.
_HEADER_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PARAM = re.compile(r"^\{([^}:]+)(?::[^}]*)?\}$")
CONTROL_CHARACTER = "control_character"


def refused_problem(exc: NotAcceptedJSONError) -> ProblemError:
    """The 422 problem for input that is not accepted: each error a FieldError (pointer, detail) with its `code`.

    The errors go in as an extension member, as the registry's do, because the shared FieldError has no `code`.
    """
    errors = [{**FieldError(pointer=r.pointer, detail=r.detail).model_dump(), "code": r.code} for r in exc.refusals]
    return ProblemError(
        422,
        "validation-error",
        "Request validation failed",
        f"{len(errors)} invalid field(s)",
        extensions={"errors": errors},
    )


def _decoded(raw: bytes, pointer: str) -> tuple[str, Refusal | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), Refusal(pointer, "the value is not UTF-8 once percent-decoded", NOT_UTF8)
    detail = text_refusal(text)
    return text, None if detail is None else Refusal(pointer, detail, UNSTORABLE_TEXT)


def query_refusals(query_string: bytes) -> list[Refusal]:
    """Query parameters (names and values, percent-decoded as the routes see them) that are not storable text."""
    found: list[Refusal] = []
    for pair in query_string.split(b"&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition(b"=")
        name, name_refusal = _decoded(unquote_to_bytes(raw_name.replace(b"+", b" ")), "")
        pointer = f"/query/{pointer_token(name)}"
        if name_refusal is not None:
            found.append(Refusal(pointer, f"parameter name: {name_refusal.detail}", name_refusal.code))
        _, value_refusal = _decoded(unquote_to_bytes(raw_value.replace(b"+", b" ")), pointer)
        if value_refusal is not None:
            found.append(value_refusal)
    return found


def parse_body(body: bytes) -> Any:
    """The document of a request body when it is accepted JSON with at most MAX_BODY_CONTAINERS arrays and objects;
    NotAcceptedJSONError otherwise. CPU only, up to a second or so for a hostile MiB: call it through `parsed`."""
    found = containers(body)
    if found > MAX_BODY_CONTAINERS:
        raise too_many_containers(found)
    return loads(body)


async def parsed(body: bytes, *, limiter: anyio.CapacityLimiter | None = None) -> Any:
    """`parse_body` on a worker thread (of `limiter`, else the shared ones), never on the event loop: a parse run
    there stopped every other request of every tenant for as long as it took."""
    return await anyio.to_thread.run_sync(parse_body, body, limiter=limiter)


def media_type_refusal(content_type: str | None) -> str | None:
    """Why a body of this Content-Type is refused (415), or None: it is not JSON, or names a charset other than
    UTF-8, which the body would not be read as."""
    if not is_json_media_type(content_type):
        return f"Send the body as application/json, not {content_type or 'without a Content-Type'}."
    assert content_type is not None  # a JSON media type was named
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ACCEPTED_CHARSETS:
            return f"Send the body as UTF-8, with charset=utf-8 or no charset, not charset={charset or '(empty)'}."
    return None


ACCEPTED_CONTENT_CODINGS = frozenset({"identity"})
"""The Content-Encoding a request body may name: none other is decoded, so a body labelled gzip would be taken as the
raw JSON it is not (415 `unsupported-media-type`)."""


def content_encoding_refusal(scope: Scope) -> str | None:
    """Why a body with the scope's Content-Encoding is refused (415), or None: it names a coding other than identity
    (on any of its lines, in any of their comma-separated items)."""
    headers: Any = scope.get("headers") or []
    codings = [
        item.strip().lower()
        for name, value in headers
        if bytes(name).lower() == b"content-encoding"
        for item in bytes(value).decode("latin-1").split(",")
        if item.strip()
    ]
    refused = [coding for coding in codings if coding not in ACCEPTED_CONTENT_CODINGS]
    if not refused:
        return None
    return f"Send the body without a content coding (Content-Encoding: identity or none), not {', '.join(refused)}."


def carries_body(scope: Scope) -> bool:
    """Whether the request says it sends a body (RFC 9112 §6.3): a Transfer-Encoding, or a Content-Length that is not
    0 (one that is not a number too: read, within the size limit, rather than trusted)."""
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() != "0")


async def read_body(receive: Receive) -> bytes:
    """The whole request body; ClientDisconnect when the client goes away before it has sent it all."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            # Nobody is left to answer: the layers outside send nothing and log it at INFO (shared.api.problems).
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        more = bool(message.get("more_body", False))
    return b"".join(chunks)


def routed(scope: Scope) -> Any | None:
    """The route that takes this request, the first matching its method and path as routing picks it; None when
    none does (the app answers 404, or 405 when a route takes the path with another method)."""
    for context in iter_route_contexts(getattr(scope.get("app"), "routes", None) or []):
        route = context.original_route
        if route.matches(scope)[0] == Match.FULL:
            return route
    return None


class BodyPlaces:
    """At most `limit` bodies held at once, each from `take` to its `give_back`."""

    def __init__(self, limit: int) -> None:
        self.limit, self.taken = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take a place; False, taking none, when all `limit` are taken."""
        with self._lock:
            if self.taken >= self.limit:
                return False
            self.taken += 1
            return True

    def give_back(self) -> None:
        """Give back a place taken."""
        with self._lock:
            self.taken -= 1


UNVERIFIED_PLACES = BodyPlaces(UNVERIFIED_BODIES)
"""The places of the completion bodies without a verified header token (`UNVERIFIED_BODIES`), per process."""
VERIFIED_PLACES = BodyPlaces(VERIFIED_BODIES)
"""The places of the completion bodies whose header token verified, all tenants (`VERIFIED_BODIES`), per process."""


@dataclass(frozen=True)
class _TenantParses:
    """A tenant's completion bodies whose header token verified: their limiter, one body at a time (such a body waits
    for no unverified one, and for no other tenant's, as a permission-checked route's body in
    shared.api.permissions), and their places (`VERIFIED_BODIES_PER_TENANT`)."""

    limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(EDGE_PARSE_THREADS))
    places: BodyPlaces = field(default_factory=lambda: BodyPlaces(VERIFIED_BODIES_PER_TENANT))


_VERIFIED_PARSES: dict[Hashable, _TenantParses] = {}
"""Per tenant whose key verified a token, per process."""


def _unverified_full() -> ProblemError:
    """The 429 of a completion body without a verified header token, past `UNVERIFIED_BODIES`."""
    detail = (
        f"Too many results without a verified {TASK_TOKEN_HEADER} header are waiting here; send the same result again"
        f" in {UNVERIFIED_RETRY_AFTER_S} s, with its task token in the {TASK_TOKEN_HEADER} header."
    )
    return too_many_requests(
        "unverified", "completions-busy", detail, UNVERIFIED_RETRY_AFTER_S, limit=UNVERIFIED_PLACES.limit
    )


def _tenant_full(owner: Hashable) -> ProblemError:
    """The 429 of a completion body whose header token verified, past its tenant's places."""
    detail = (
        f"This tenant already has {VERIFIED_BODIES_PER_TENANT} results waiting here; send the same result again in"
        f" {UNVERIFIED_RETRY_AFTER_S} s."
    )
    return too_many_requests(owner, "tenant-busy", detail, UNVERIFIED_RETRY_AFTER_S, limit=VERIFIED_BODIES_PER_TENANT)


def _all_full(owner: Hashable) -> ProblemError:
    """The 429 of a completion body whose header token verified, past the process's places for all tenants."""
    detail = f"Too many results are waiting here; send the same result again in {UNVERIFIED_RETRY_AFTER_S} s."
    return too_many_requests(owner, "completions-busy", detail, UNVERIFIED_RETRY_AFTER_S, limit=VERIFIED_BODIES)


async def _parsed_holding(
    body: bytes, limiter: anyio.CapacityLimiter, places: Sequence[tuple[BodyPlaces, Callable[[], ProblemError]]]
) -> Any:
    """`parsed`, holding one of each of `places` from before its wait to its end; the refusal of the first that has
    none free (raised, taking none of them)."""
    taken: list[BodyPlaces] = []
    try:
        for place, refusal in places:
            if not place.take():
                raise refusal()
            taken.append(place)
        return await parsed(body, limiter=limiter)
    finally:
        for place in taken:
            place.give_back()


async def edge_document(scope: Scope, route: Any, body: bytes) -> Any:
    """The document of a body the edge parses for `route` (one without a permission check), on the limiter that is
    its own; NotAcceptedJSONError when it is not accepted JSON, ProblemError when it is refused unparsed.

    A route with a `credential_owner(scope)` (the completion routes, `TaskTokenRoute`) has the credential of a header
    checked first: refused (its ProblemError) with the body never parsed, or verified, the body then taking one of
    its owner's places and one of the process's (429 when none is free) and parsed on its owner's limiter
    (`_VERIFIED_PARSES`); without one, the body takes one of `UNVERIFIED_PLACES` (429 when none is free) and is
    parsed on `COMPLETION_PARSES`. Any other route's body is parsed on `_EDGE_PARSES`."""
    credential_owner = getattr(route, "credential_owner", None)
    if credential_owner is None:
        return await parsed(body, limiter=_EDGE_PARSES)
    owner = await credential_owner(scope)
    if owner is None:
        return await _parsed_holding(body, COMPLETION_PARSES, [(UNVERIFIED_PLACES, _unverified_full)])
    tenant = _VERIFIED_PARSES.get(owner)
    if tenant is None:
        tenant = _VERIFIED_PARSES[owner] = _TenantParses()
    return await _parsed_holding(
        body,
        tenant.limiter,
        [(tenant.places, lambda: _tenant_full(owner)), (VERIFIED_PLACES, lambda: _all_full(owner))],
    )


def _path_parameter(scope: Scope, segments: list[str], index: int) -> str | None:
    """The name of the path parameter that the segment at `index` fills, from the app's own OpenAPI paths."""
    openapi = getattr(scope.get("app"), "openapi", None)
    paths: Any = openapi().get("paths", {}) if callable(openapi) else {}
    for template in paths:
        parts = str(template).split("/")
        if len(parts) != len(segments) or not all(
            p == s or _PARAM.match(p) for p, s in zip(parts, segments, strict=True)
        ):
            continue
        param = _PARAM.match(parts[index])
        if param:
            return param.group(1)
    return None


def path_refusals(scope: Scope) -> list[Refusal]:
    """Path segments that are not storable text (NUL, lone surrogates, invalid UTF-8), named by route parameter."""
    raw = scope.get("raw_path")
    raw_segments = bytes(raw).split(b"/") if raw else str(scope.get("path", "")).encode("utf-8", "replace").split(b"/")
    decoded = [_decoded(unquote_to_bytes(segment), "") for segment in raw_segments]
    segments = [text if refusal is None else "x" for text, refusal in decoded]
    found = []
    for index, (_, refusal) in enumerate(decoded):
        if refusal is not None:
            name = _path_parameter(scope, segments, index)
            at = "/path" if name is None else f"/path/{pointer_token(name)}"
            found.append(Refusal(at, refusal.detail, refusal.code))
    return found


def header_refusals(scope: Scope) -> list[Refusal]:
    """Header values with control characters (NUL, CR, LF...): never valid HTTP, never storable."""
    headers: Any = scope.get("headers") or []
    return [
        Refusal(
            f"/header/{pointer_token(bytes(name).decode('latin-1').lower())}",
            "control characters are not accepted in a header value",
            CONTROL_CHARACTER,
        )
        for name, value in headers
        if _HEADER_CONTROLS.search(bytes(value))
    ]


def _header(scope: Scope, wanted: bytes) -> str | None:
    headers: Any = scope.get("headers") or []
    for name, value in headers:
        if bytes(name).lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


LIST_HEADERS = (b"if-match",)
"""Headers whose value is a comma-separated list (RFC 9110 §5.3): sent on several lines, they are one list, which the
routes read as one value (the first line alone, were they left apart)."""


def one_line_per_list_header(scope: Scope) -> Scope:
    """`scope` with each of LIST_HEADERS sent on several lines joined into one, in the order sent."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name in LIST_HEADERS:
        lines = [value for key, value in headers if key.lower() == name]
        if len(lines) > 1:
            kept = [(key, value) for key, value in headers if key.lower() != name]
            headers = [*kept, (name, b", ".join(lines))]
            scope = {**scope, "headers": headers}
    return scope


class AcceptedInputMiddleware:
    """Refuse, before any route runs, what the platform does not accept: a request body that is not JSON, or not
    UTF-8 by its charset, or sent with a Content-Encoding other than identity (415), and path, query or header text
    that cannot be stored (422), each error named by a JSON pointer. A body is read whole before any route runs, for
    every method (a DELETE's too, which its route then refuses), and handed on byte for byte from memory; a request
    without a body passes untouched. A client that goes away mid-body gets no answer (ClientDisconnect).

    Whether a body is accepted JSON (422 otherwise) is decided by parsing it, which costs up to a second of CPU for a
    hostile MiB: a permission-checked route's body is left to its permission check (`UNPARSED_BODY`), which parses
    it after sign-in, the permission and the tenant's admission; a body no route takes is not parsed at all (the app
    answers 404 or 405); any other route's body (the task-token completion routes') is parsed here, on a worker
    thread of that route's own limiter, after the credential of its header is verified, when it sends one
    (`edge_document`). Registered inside the body size limit, so an oversized body is refused (413) before anything
    reads it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = one_line_per_list_header(scope)
        refused = path_refusals(scope) + query_refusals(bytes(scope.get("query_string", b""))) + header_refusals(scope)
        if refused:
            await self._refuse(scope, receive, send, refused)
            return
        takes_json = scope.get("method") in BODY_METHODS
        if not takes_json and not carries_body(scope):
            await self.app(scope, receive, send)
            return
        # Read whole here, before sign-in, whatever the method: a body read later (a DELETE's, by its route's refusal
        # of any body) was read holding one of its tenant's admitted places, and a client sending it slowly held the
        # place as long as it liked. Bounded by the size limit outside (413).
        body = await read_body(receive)
        if body:
            refusal = content_encoding_refusal(scope)
            if refusal is not None:
                response = problem_response(
                    415, "unsupported-media-type", "Unsupported media type", refusal, instance=_instance(scope)
                )
                await response(scope, receive, send)
                return
        if body and takes_json:
            refusal = media_type_refusal(_header(scope, b"content-type"))
            if refusal is not None:
                response = problem_response(
                    415, "unsupported-media-type", "Unsupported media type", refusal, instance=_instance(scope)
                )
                await response(scope, receive, send)
                return
            route = routed(scope)
            if route is None:
                # No route takes it (a 404, or a 405 for another method): answered without its body parsed, so a
                # flood of hostile bodies at any path costs nobody a parse.
                pass
            elif getattr(route, "parses_body_after_permission", False) is True:
                # `BoundedBodyRoute.parses_body_after_permission`, named here: that module builds on this one.
                # Parsed by the route's permission check, once the caller is signed in, may do the route's action
                # and is admitted within its tenant's bounds: a caller without a token, or a tenant over its bounds,
                # makes nobody parse anything (a 401 or 429 costs what it costs without a body).
                scope[UNPARSED_BODY] = body
            else:
                try:
                    # Kept for the route (shared.api.permissions), which then does not parse the bytes again.
                    scope[ACCEPTED_DOCUMENT] = await edge_document(scope, route, body)
                except NotAcceptedJSONError as exc:
                    await self._refuse(scope, receive, send, list(exc.refusals))
                    return
                except Exception as exc:
                    # A header credential refused or its key unreadable (a 401, 429 or 503), or no place left: the
                    # app's answer to the same error in a route, as a problem document.
                    instance, request_id = _instance(scope), scope_request_id(scope)
                    await error_response(exc, instance=instance, request_id=request_id)(scope, receive, send)
                    return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, refusals: list[Refusal]) -> None:
        problem = refused_problem(NotAcceptedJSONError(refusals))
        response = problem_response(
            problem.status,
            problem.slug,
            problem.title,
            problem.detail,
            instance=_instance(scope),
            extensions=problem.extensions,
        )
        await response(scope, receive, send)


def _instance(scope: Scope) -> str:
    # The path as the client wrote it, percent-encoded, so that a refused NUL or surrogate is not echoed raw.
    raw = scope.get("raw_path")
    if raw:
        return quote(bytes(raw), safe="/%")
    return quote(str(scope.get("path", "")).encode("utf-8", "replace"), safe="/")


NO_BODY = "this request takes no body: send it without one"


async def _takes_no_body(request: Request) -> None:
    """Refuse any body (422 `validation-error`, pointer ``: the whole body). Run after the route's permission check,
    which has refused a POST body that is not JSON; an empty body is no body."""
    if await request.body():
        raise invalid_fields(("", NO_BODY))


TakesNoBody = Annotated[None, Depends(_takes_no_body)]
"""The dependency of a route that takes no body, declared after its permission: a body is refused, never ignored. A
route that answered 2xx to one let its caller believe what it sent was taken (rotate-secret to `{"secret": ...}`, a
delete to `{"if_match": ...}` or `{"cascade": true}`); a body is read only up to the edge's size limit."""


def no_body_doc(otherwise: str) -> dict[str, Any]:
    """The OpenAPI 422 answer of a route taking no body; `otherwise`: its other causes (`the policy id is not a
    UUID`)."""
    return problem_doc(
        422,
        "validation-error",
        "Request validation failed",
        "1 invalid field(s)",
        "The request does not validate: a body was sent, and the request takes none (pointer ``, the whole body), or "
        + otherwise,
        errors=[{"pointer": "", "detail": NO_BODY}],
    )
