# intent_ref: platform.gateway
"""The HTTP gateway function: every request goes to the FastAPI app, with the durable client in reach, and its
answer streams back as the app sends it (an execution's events as server-sent events)."""

import azure.durable_functions as df
import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.api.adapter import asgi_gateway, serve
from shared.api.app import create_app
from shared.api.durable import durable_client_var
from shared.typed_triggers import typed

bp = df.Blueprint()

# Built at import so that a missing or malformed setting stops the host from starting.
_gateway = asgi_gateway(create_app())


@typed(bp.function_name("http_api"))
@typed(
    bp.route(
        route="{*path}",
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        auth_level=func.AuthLevel.ANONYMOUS,
    )
)
@typed(bp.durable_client_input(client_name="client"))
async def http_api(req: Request, client: df.DurableOrchestrationClient) -> Response:
    """Serve one API request through the FastAPI gateway; no error escapes as a failed invocation."""
    token = durable_client_var.set(client)
    try:
        return await serve(_gateway, req)
    finally:
        durable_client_var.reset(token)
