# intent_ref: platform.gateway
"""RFC 9457 problem details: the one shape every error of the API takes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.pagination import InvalidCursorError

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://quantum-platform.dev/problems/"


class FieldError(BaseModel):
    """One invalid field: a JSON pointer into the request and what is wrong there."""

    pointer: str
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem details document."""

    type: str = Field(description="URI identifying the problem type")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raise anywhere in request handling to answer with a problem+json response."""

    def __init__(self, status: int, slug: str, title: str, detail: str | None = None, *,
                 errors: list[FieldError] | None = None, headers: dict[str, str] | None = None,
                 extensions: dict[str, Any] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.errors, self.headers, self.extensions = errors, headers or {}, extensions or {}


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 406: "Not acceptable", 409: "Conflict", 413: "Payload too large",
           415: "Unsupported media type", 422: "Unprocessable content", 429: "Too many requests",
           500: "Internal server error", 503: "Service unavailable"}


def _slug(status: int) -> str:
    return _TITLES.get(status, "error").lower().replace(" ", "-")


def problem_response(status: int, slug: str, title: str, detail: str | None = None, *, instance: str | None = None,
                     errors: list[FieldError] | None = None, headers: dict[str, str] | None = None,
                     extensions: dict[str, Any] | None = None) -> JSONResponse:
    """A problem+json response; `slug` names the problem type, `extensions` adds RFC 9457 extension members."""
    content = problem_document(status, slug, title, detail, instance=instance, errors=errors, extensions=extensions)
    return JSONResponse(content, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_document(status: int, slug: str, title: str, detail: str | None = None, *, instance: str | None = None,
                     errors: list[FieldError] | None = None,
                     extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    """The problem+json object itself (extension members first, the standard members win)."""
    body = Problem(type=PROBLEM_BASE + slug, title=title, status=status, detail=detail, instance=instance,
                   errors=errors)
    return {**(extensions or {}), **body.model_dump(exclude_none=True)}


def json_pointer(location: tuple[Any, ...] | list[Any]) -> str:
    """A JSON pointer (RFC 6901) for a pydantic error location, without its 'body'/'query' prefix."""
    parts = [str(p) for p in location[1:]] if location and location[0] == "body" else [str(p) for p in location]
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts) if parts else ""


def install_problem_handlers(app: FastAPI) -> None:
    """Turn every error (HTTP, validation, domain, unexpected) into problem+json; never leak a stack trace."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.slug, exc.title, exc.detail, instance=request.url.path,
                                errors=exc.errors, headers=exc.headers, extensions=exc.extensions)

    @app.exception_handler(InvalidCursorError)
    async def _cursor(request: Request, exc: InvalidCursorError) -> JSONResponse:
        return problem_response(400, "invalid-cursor", "Bad request", str(exc), instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = _TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem_response(exc.status_code, _slug(exc.status_code), title, detail,
                                instance=request.url.path, headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [FieldError(pointer=json_pointer(tuple(e.get("loc", ()))), detail=str(e.get("msg", "invalid")))
                  for e in exc.errors()]
        return problem_response(422, "validation-error", "Request validation failed",
                                f"{len(errors)} invalid field(s)", instance=request.url.path, errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001  # logged below
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal-error", "Internal server error",
                                "The request failed unexpectedly; quote the X-Request-Id when reporting it.",
                                instance=request.url.path)
