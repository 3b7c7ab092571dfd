# intent_ref: platform.devhost
"""HTTP functions for the devhost's own answers: one that declares HEAD beside GET, one that takes a body."""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="probe", methods=["GET", "HEAD"])
def probe(req: func.HttpRequest) -> func.HttpResponse:
    """Say which method reached the function, in a header and in the body."""
    return func.HttpResponse(f"seen {req.method}", headers={"X-Seen-Method": req.method}, mimetype="text/plain")


@app.route(route="upload", methods=["POST"])
def upload(req: func.HttpRequest) -> func.HttpResponse:
    """Answer the size of the body."""
    return func.HttpResponse(str(len(req.get_body())), mimetype="text/plain")
