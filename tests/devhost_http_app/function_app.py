# intent_ref: platform.devhost
"""HTTP functions for the devhost's own answers: one that declares HEAD beside GET, and two that take a body (one as
the worker's HTTP stream, as the gateway does)."""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import PlainTextResponse, Request, Response

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="probe", methods=["GET", "HEAD"])
def probe(req: func.HttpRequest) -> func.HttpResponse:
    """Say which method reached the function, in a header and in the body."""
    return func.HttpResponse(f"seen {req.method}", headers={"X-Seen-Method": req.method}, mimetype="text/plain")


@app.route(route="upload", methods=["POST"])
def upload(req: func.HttpRequest) -> func.HttpResponse:
    """Answer the size of the body."""
    return func.HttpResponse(str(len(req.get_body())), mimetype="text/plain")


@app.route(route="upload-stream", methods=["POST"])
async def upload_stream(req: Request) -> Response:
    """Answer the size of the body, taken as an HTTP stream."""
    return PlainTextResponse(str(len(await req.body())))
