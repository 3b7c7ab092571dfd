# intent_ref: platform.registry
"""The baseline for bench/registry.py: a bare FastAPI endpoint behind one HTTP function, served like the platform."""

import azure.durable_functions as df
import azure.functions as func
from fastapi import FastAPI

bare = FastAPI()


@bare.get("/api/bare")
def bare_endpoint() -> dict[str, bool]:
    """Answer at once: no auth, no database."""
    return {"ok": True}


app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
_gateway = func.AsgiMiddleware(bare)


@app.route(route="{*path}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def bare_api(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Hand every request to the bare FastAPI app, as functions/http_api.py does for the platform."""
    return await _gateway.handle_async(req, context)
