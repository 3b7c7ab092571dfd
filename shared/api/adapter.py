# intent_ref: platform.gateway
"""The Functions HTTP adapter around an ASGI app: no request ends as an unhandled function exception."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
from starlette.types import ASGIApp

from shared.api.middleware import ErrorBoundary
from shared.api.problems import PROBLEM_JSON, internal_error_document
from shared.api.request_ids import REQUEST_ID_HEADER, choose_request_id

logger = logging.getLogger(__name__)


def asgi_gateway(app: ASGIApp) -> func.AsgiMiddleware:
    """The adapter for `app`, behind the boundary that answers whatever the app lets escape."""
    # The Functions host answers an unhandled function exception with an empty 500: nothing may reach it.
    gateway: func.AsgiMiddleware = func.AsgiMiddleware(ErrorBoundary(app))  # type: ignore[no-untyped-call]
    return gateway


async def serve(gateway: func.AsgiMiddleware, req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Answer `req` through `gateway`; a failure of the adapter itself still gets a problem+json 500."""
    try:
        response: Any = await gateway.handle_async(req, context)
    except Exception:
        return adapter_failure(req)
    if not isinstance(response, func.HttpResponse):  # the adapter's contract, checked rather than trusted
        logger.error("the gateway adapter answered %r instead of an HttpResponse", type(response).__name__)
        return adapter_failure(req, logged=True)
    return response


def adapter_failure(req: func.HttpRequest, *, logged: bool = False) -> func.HttpResponse:
    """A problem+json 500 for a request the adapter could not carry; the cause is logged with the request id."""
    request_id = choose_request_id(req.headers.get(REQUEST_ID_HEADER))
    try:
        path = urlsplit(req.url).path
    except ValueError:  # a URL the adapter could not parse either
        path = ""
    if not logged:
        logger.exception("request %s: the gateway adapter failed on %s %s", request_id, req.method, path)
    return func.HttpResponse(
        json.dumps(internal_error_document(request_id, path or None)),
        status_code=500,
        mimetype=PROBLEM_JSON,
        headers={"X-Request-Id": request_id},
    )
