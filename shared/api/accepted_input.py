# intent_ref: platform.hardening
"""ASGI middleware: only accepted JSON bodies and storable path, query and header text reach a route."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.accepted_json import (
    JSON_STRING,
    NOT_UTF8,
    UNSTORABLE_TEXT,
    NotAcceptedJSONError,
    Refusal,
    is_json_media_type,
    loads,
    pointer_token,
    text_refusal,
)
from shared.api.permissions import ACCEPTED_DOCUMENT, defer_input_problem
from shared.api.problems import FieldError, ProblemError, problem_response

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_BODY_CONTAINERS = 100_000
"""Arrays and objects in one request body, counted before it is parsed (ADR 0023). Each costs the parsers, the
accepted-JSON walk and the route's model several microseconds, ten times what a byte of a string costs: a 1 MiB body
of 500,000 nested `[]` took about 2 s of CPU to answer, and 0.85 s on a route that ignores its body. Real documents
hold one container per 20 bytes or more; this allows one per 10 bytes of the default body limit."""
TOO_MANY_CONTAINERS = "too_many_containers"
# RFC 9110 §5.5: a field value with CR, LF or NUL must be refused; the other controls have no business there either.
_HEADER_CONTROLS = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PARAM = re.compile(r"^\{([^}:]+)(?::[^}]*)?\}$")
CONTROL_CHARACTER = "control_character"
# Strings are blanked out before brackets are counted: those inside one are not containers.
_STRING = re.compile(JSON_STRING.encode("ascii"), re.DOTALL)


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


def containers(body: bytes) -> int:
    """How many arrays and objects a JSON body holds, counted on its bytes without parsing them (brackets inside
    strings ignored), or at least how many when that is within MAX_BODY_CONTAINERS: a few milliseconds per MiB,
    where parsing a MiB of brackets costs a second."""
    brackets = body.count(b"[") + body.count(b"{")
    if brackets <= MAX_BODY_CONTAINERS:
        return brackets  # at most this many (those inside strings included): nothing more to count
    bare = _STRING.sub(b'""', body)
    return bare.count(b"[") + bare.count(b"{")


def _too_many_containers(found: int) -> NotAcceptedJSONError:
    detail = f"the body holds {found} arrays and objects; at most {MAX_BODY_CONTAINERS} are accepted"
    return NotAcceptedJSONError([Refusal("", detail, TOO_MANY_CONTAINERS)])


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


class AcceptedInputMiddleware:
    """Refuse, before any route runs, what the platform does not accept: a request body that is not JSON (415) or
    not accepted JSON (422), and path, query or header text that cannot be stored (422), each error named by a
    JSON pointer. An accepted body is handed on byte for byte; a request without a body passes untouched.

    Registered inside the body size limit, so an oversized body is refused (413) before it is parsed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = path_refusals(scope) + query_refusals(bytes(scope.get("query_string", b""))) + header_refusals(scope)
        if refused:
            await self._refuse(scope, receive, send, refused)
            return
        if scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body: nobody is left to answer
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if body:
            content_type = _header(scope, b"content-type")
            if not is_json_media_type(content_type):
                response = problem_response(
                    415,
                    "unsupported-media-type",
                    "Unsupported media type",
                    f"Send the body as application/json, not {content_type or 'without a Content-Type'}.",
                    instance=_instance(scope),
                )
                await response(scope, receive, send)
                return
            try:
                found = containers(body)
                if found > MAX_BODY_CONTAINERS:
                    raise _too_many_containers(found)
                # Kept for the route (shared.api.permissions), which then does not parse the bytes a second time.
                scope[ACCEPTED_DOCUMENT] = loads(body)
            except NotAcceptedJSONError as exc:
                # A permission-checked route first answers 403 to a caller without the role, then this refusal.
                if not defer_input_problem(scope, refused_problem(exc)):
                    await self._refuse(scope, receive, send, list(exc.refusals))
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
