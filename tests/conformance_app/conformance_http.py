# intent_ref: platform.devhost
"""HTTP triggers of the conformance app: request/response conversion as the Functions host does it."""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="echo/{name}/{count:int}", methods=["POST", "PUT"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    """Echo what the request carried, as the function sees it."""
    body = {
        "method": req.method,
        "route": dict(req.route_params),
        "query": dict(req.params),
        "header": req.headers.get("x-custom"),
        "body": req.get_body().decode(),
        "json": req.get_json() if req.get_body() else None,
    }
    return func.HttpResponse(json.dumps(body), status_code=201, mimetype="application/json", headers={"X-Echo": "yes"})


@bp.route(route="plain", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def plain(req: func.HttpRequest) -> str:
    """A function that returns a plain string."""
    return "plain text"


@bp.route(route="broken", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def broken(req: func.HttpRequest) -> func.HttpResponse:
    """A function that raises."""
    raise ValueError("deliberate failure")


@bp.route(route="with-context", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def with_context(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """An async function that asks for the invocation context."""
    return func.HttpResponse(
        json.dumps({"function_name": context.function_name, "invocation_id": context.invocation_id}),
        mimetype="application/json",
    )
