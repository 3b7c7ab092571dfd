# intent_ref: platform.hardening
"""A function app for the devhost: the faulty gateway through the real adapter, and functions that raise."""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response
from starlette.types import ASGIApp

from shared.api.adapter import Gateway, asgi_gateway, serve
from tests.security.faulty_gateway import SECRET, faulty_app

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_gateway = asgi_gateway(faulty_app())


class _BrokenGateway(Gateway):
    """An adapter that fails before the app sees the request (a malformed request it cannot translate)."""

    @property
    def app(self) -> ASGIApp:
        raise ValueError(SECRET)


_broken_adapter = _BrokenGateway(faulty_app())


@app.route(route="adapter-broken", methods=["GET"])
async def adapter_broken(req: Request) -> Response:
    """The gateway function's own safety net, with an adapter that raises."""
    return await serve(_broken_adapter, req)


@app.route(route="function-broken", methods=["GET"])
def function_broken(req: Request) -> Response:
    """A function that raises: the host itself must still answer with a problem body."""
    raise RuntimeError(SECRET)


@app.route(route="{*path}", methods=["GET"])
async def gateway(req: Request) -> Response:
    """Every other path: the faulty gateway, exactly as functions/http_api.py serves the real one."""
    return await serve(_gateway, req)
