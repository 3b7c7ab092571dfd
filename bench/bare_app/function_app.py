# intent_ref: platform.registry
"""The baseline for bench/registry.py: a bare FastAPI endpoint behind one HTTP function, served like the platform."""

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response
from fastapi import FastAPI

from shared.api.adapter import asgi_gateway, serve
from shared.typed_triggers import typed

bare = FastAPI()


@bare.get("/api/bare")
def bare_endpoint() -> dict[str, bool]:
    """Answer at once: no auth, no database."""
    return {"ok": True}


app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_gateway = asgi_gateway(bare)


@typed(app.route(route="{*path}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS))
async def bare_api(req: Request) -> Response:
    """Hand every request to the bare FastAPI app, as functions/http_api.py does for the platform."""
    return await serve(_gateway, req)
