# intent_ref: platform.gateway
"""The API explorer: Swagger UI from the app's own assets (no CDN, so it works offline and behind a strict
network), and the OpenAPI document's security schemes, so "Authorize" and "Try it out" work with a token."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

from shared.api.problems import PROBLEM_JSON, ProblemError
from shared.api.responses import REPEATED_HEADER

DOCS_URL = "/api/docs"
ASSETS_URL = f"{DOCS_URL}/assets"
OAUTH2_REDIRECT_URL = f"{DOCS_URL}/oauth2-redirect"
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
"""The only files served: Swagger UI's bundle, its style sheet and an icon, from the pinned fastapi-offline."""
ENTRA = "https://login.microsoftonline.com/organizations/oauth2/v2.0"
# Routes whose caller is not an Entra principal: health probes, and remote results (the task token is the
# credential, ADR 0014/0027).
_PUBLIC_SUFFIXES = ("/complete", "/fail")
_PUBLIC_PATHS = frozenset({"/api/health", "/api/ready"})


def _asset(name: str) -> bytes:
    return (files("fastapi_offline") / "static" / name).read_bytes()


def _scopes(audience: str) -> tuple[str, str]:
    """The delegated scope and the app-only `.default` of the API (its app id URI, else its first audience)."""
    audiences = [a.strip() for a in audience.split(",") if a.strip()]
    api = next((a for a in audiences if a.startswith("api://")), audiences[0])
    return f"{api}/access_as_user", f"{api}/.default"


def install_docs(app: FastAPI, audience: str) -> None:
    """Serve `/api/docs` and its assets from the app, and declare how callers authenticate in the OpenAPI."""
    delegated, app_only = _scopes(audience)
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS_URL)
    def swagger_ui() -> HTMLResponse:
        """The explorer page; every asset it loads comes from this app."""
        return get_swagger_ui_html(
            openapi_url=str(app.openapi_url),
            title=f"{app.title} - explorer",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            init_oauth={"usePkceWithAuthorizationCodeGrant": True, "scopes": delegated},
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @router.get(OAUTH2_REDIRECT_URL)
    def oauth2_redirect() -> HTMLResponse:
        """Where Entra returns the explorer's sign-in."""
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(f"{ASSETS_URL}/{{name}}")
    def asset(name: str) -> Response:
        """One of the explorer's assets, cached by browsers for a day."""
        if name not in ASSETS:
            raise ProblemError(404, "not-found", "Not found", f"no explorer asset {name!r}")
        return Response(_asset(name), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})

    app.include_router(router)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "entra": {
                    "type": "oauth2",
                    "description": "Microsoft Entra ID: a user (delegated scope) or a daemon app (app roles).",
                    "flows": {
                        "authorizationCode": {
                            "authorizationUrl": f"{ENTRA}/authorize",
                            "tokenUrl": f"{ENTRA}/token",
                            "scopes": {delegated: "Act as the signed-in user, within their app roles"},
                        },
                        "clientCredentials": {
                            "tokenUrl": f"{ENTRA}/token",
                            "scopes": {app_only: "A daemon app, with the app roles granted to it"},
                        },
                    },
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token as is (locally: `python -m devhost token ...`).",
                },
            }
            schema["security"] = [{"entra": [delegated]}, {"bearer": []}]
            for path, operations in schema.get("paths", {}).items():
                if path in _PUBLIC_PATHS or path.endswith(_PUBLIC_SUFFIXES):
                    for operation in operations.values():
                        operation["security"] = []
                for operation in operations.values():
                    _document_repeated_header(operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_repeated_header(operation: dict[str, Any]) -> None:
    """Name the 400 `repeated-header` among the answers of an operation that signs its caller in (it documents 401):
    the edge gives it on every such route, beside any 400 of the route's own, whose examples it joins."""
    responses = operation.get("responses", {})
    if "401" not in responses:
        return
    repeated = REPEATED_HEADER["content"][PROBLEM_JSON]["example"]
    own = responses.get("400")
    if own is None:
        responses["400"] = {
            "description": REPEATED_HEADER["description"],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": repeated}},
        }
        return
    if own.get("content", {}).get(PROBLEM_JSON, {}).get("example") == repeated:
        return
    problem = own.setdefault("content", {}).setdefault(
        PROBLEM_JSON, {"schema": {"$ref": "#/components/schemas/Problem"}}
    )
    examples = problem.setdefault("examples", {})
    if "example" in problem:
        first = problem.pop("example")
        examples[str(first.get("type", "")).rsplit("/", 1)[-1] or "problem"] = {"value": first}
    if "repeated-header" not in examples:
        examples["repeated-header"] = {"value": repeated}
        also = str(REPEATED_HEADER["description"])
        own["description"] = f"{own.get('description', '')}; or {also[:1].lower()}{also[1:]}"
