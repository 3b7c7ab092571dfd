# intent_ref: platform.gateway
"""Build the FastAPI application: routers, problem+json errors, request ids, body limits."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from shared.api import health
from shared.api.accepted_input import AcceptedInputMiddleware
from shared.api.docs import install_docs
from shared.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from shared.api.problems import install_problem_handlers
from shared.api.routers import (
    audit,
    execute,
    execution_control,
    executions,
    ingress,
    me,
    modules,
    policies,
    registry,
    task_completion,
    tenant_settings,
    tenants,
    webhooks,
    work,
)
from shared.config import get_settings
from shared.observability.setup import telemetry_mode

API_TITLE = "Quantum Platform API"
API_VERSION = "1.0.0"


def create_app() -> FastAPI:
    """The gateway app; settings are read (and validated) here, so a bad setting stops start-up."""
    settings = get_settings()
    # No redirect of `/x/` to `/x`: it answered before authentication, with a Location built from the client's Host
    # header; no route is documented with a trailing slash, so such a path is a 404 problem like any unknown one.
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    install_docs(app, settings.QP_AUTH_AUDIENCE)
    install_problem_handlers(app)
    app.include_router(health.router)
    for router in (
        me.router,
        tenants.router,
        tenant_settings.router,
        policies.router,
        audit.router,
        modules.router,
        registry.definition_router("intent"),
        registry.definition_router("blueprint"),
        execute.router,
        executions.router,
        execution_control.router,
        task_completion.router,
        work.router,
        webhooks.router,
        ingress.router,
    ):
        app.include_router(router)
    # Order: the request id wraps everything, so even a 413 carries one.
    app.add_middleware(AcceptedInputMiddleware)  # innermost: a body over the limit is 413 before parsing
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.QP_MAX_BODY_BYTES)
    app.add_middleware(RequestIdMiddleware)
    if telemetry_mode() != "off":
        # Outermost, so the request's span covers everything, a refusal by the middlewares included.
        FastAPIInstrumentor.instrument_app(app, excluded_urls="api/health,api/ready", exclude_spans=["receive", "send"])
    return app
