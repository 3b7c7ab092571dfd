# intent_ref: platform.devhost
"""Serve HTTP-triggered functions: aiohttp request -> Datum('http') -> function -> HTTP response."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.functions import meta

from devhost.invoker import FunctionInvocationError, Invoker
from devhost.loader import function_name, trigger_of

logger = logging.getLogger(__name__)

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
BindingJson = Callable[[str], str]


def aiohttp_path(route_prefix: str, route: str) -> str:
    """Translate a Functions route template into an aiohttp path ({*x}, {x:int}, {x?} included)."""
    path = re.sub(r"\{\*(\w+)\}", r"{\1:.*}", route)
    path = re.sub(r"\{(\w+):(?:int|long)\}", r"{\1:-?\\d+}", path)
    path = re.sub(r"\{(\w+):alpha\}", r"{\1:[A-Za-z]+}", path)
    path = re.sub(r"\{(\w+):guid\}", r"{\1:[0-9A-Fa-f-]+}", path)
    path = re.sub(r"\{(\w+)\?\}", r"{\1:[^/]*}", path)
    # Any other constraint (bool, datetime, regex, ...) is not checked locally: the function validates.
    path = re.sub(r"\{(\w+):(?!\.\*|-\?|\[)[^}]*\}", r"{\1}", path)
    prefix = f"/{route_prefix}" if route_prefix else ""
    return f"{prefix}/{path.lstrip('/')}"


async def _http_datum(request: web.Request) -> meta.Datum:
    body = await request.read()
    return meta.Datum(type="http", value={
        "method": meta.Datum(request.method, "string"),
        "url": meta.Datum(str(request.url), "string"),
        "headers": {k.lower(): meta.Datum(v, "string") for k, v in request.headers.items()},
        "params": {k: meta.Datum(v, "string") for k, v in request.match_info.items()},
        "query": {k: meta.Datum(v, "string") for k, v in request.query.items()},
        "body": meta.Datum(body, "bytes"),
    })


def _to_response(out: meta.Datum | None) -> web.Response:
    if out is None:
        return web.Response(status=204)
    if out.type != "http":
        return web.Response(text="" if out.value is None else str(out.value), content_type="text/plain")
    value: dict[str, Any] = out.value
    headers = {k: str(h.value) for k, h in value.get("headers", {}).items()}
    body = value.get("body")
    payload = b"" if body is None or body.value is None else body.value
    if isinstance(payload, str):
        payload = payload.encode()
    headers.pop("Content-Length", None)
    headers.pop("content-length", None)
    return web.Response(status=int(value["status_code"].value), body=payload, headers=headers)


def make_handler(function: func.Function, invoker: Invoker,
                 durable_binding: BindingJson | None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler that invokes `function` as the Functions host would."""
    trigger = trigger_of(function)
    client_bindings = [b.name for b in function.get_bindings() if b.type == "durableClient"]

    async def handle(request: web.Request) -> web.StreamResponse:
        inputs = {trigger.name: await _http_datum(request)}
        if client_bindings:
            if durable_binding is None:
                raise web.HTTPServiceUnavailable(text="durable functions are not enabled in this host")
            origin = f"{request.scheme}://{request.host}"
            for name in client_bindings:
                inputs[name] = meta.Datum(durable_binding(origin), "string")
        try:
            out = await invoker.invoke(function, inputs, trace_parent=request.headers.get("traceparent", ""))
        except FunctionInvocationError as exc:
            # The real host answers 500 with no body and logs the failure.
            logger.error("Executed '%s' (Failed): %s", exc.function_name, exc.friendly, exc_info=exc.exc)
            return web.Response(status=500)
        return _to_response(out)

    return handle


def add_http_routes(app: web.Application, functions: list[func.Function], invoker: Invoker, route_prefix: str,
                    durable_binding: BindingJson | None) -> list[str]:
    """Register every HTTP function; catch-all routes go last so specific ones win. Returns the paths."""
    ordered = sorted(functions, key=lambda f: "{*" in (trigger_of(f).route or ""))
    paths = []
    for function in ordered:
        trigger = trigger_of(function)
        path = aiohttp_path(route_prefix, str(trigger.route or function_name(function)))
        methods = [str(getattr(m, "value", m)).upper() for m in (trigger.methods or ALL_METHODS)]
        handler = make_handler(function, invoker, durable_binding)
        for method in methods:
            if method == "HEAD" and "GET" in methods:
                continue  # aiohttp answers HEAD for GET routes
            app.router.add_route(method, path, handler)
        paths.append(path)
    return paths
