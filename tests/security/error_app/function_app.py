# intent_ref: platform.hardening
"""A function app for the devhost: the faulty gateway through the real adapter, and functions that raise."""

from typing import Any

import azure.functions as func

from shared.api.adapter import asgi_gateway, serve
from tests.security.faulty_gateway import SECRET, faulty_app

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_gateway = asgi_gateway(faulty_app())


class _BrokenAdapter(func.AsgiMiddleware):
    """An adapter that fails before the app sees the request (a malformed request it cannot translate)."""

    async def handle_async(self, req: func.HttpRequest, context: Any = None) -> func.HttpResponse:
        raise ValueError(SECRET)


_broken_adapter = _BrokenAdapter(faulty_app())


@app.route(route="adapter-broken", methods=["GET"])
async def adapter_broken(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """The gateway function's own safety net, with an adapter that raises."""
    return await serve(_broken_adapter, req, context)


@app.route(route="function-broken", methods=["GET"])
def function_broken(req: func.HttpRequest) -> func.HttpResponse:
    """A function that raises: the host itself must still answer with a problem body."""
    raise RuntimeError(SECRET)


@app.route(route="{*path}", methods=["GET"])
async def gateway(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Every other path: the faulty gateway, exactly as functions/http_api.py serves the real one."""
    return await serve(_gateway, req, context)
