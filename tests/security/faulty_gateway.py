# intent_ref: platform.hardening
"""A gateway that fails on purpose at every layer: route, dependency, middleware inside and outside the request id."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from fastapi import Depends, FastAPI
from psycopg_pool import PoolTimeout
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.api.middleware import RequestIdMiddleware
from shared.api.problems import install_problem_handlers
from shared.db.availability import DatabaseUnavailable

SECRET = "secret-internals-4f1c"
"""In every artificial failure's message: it must never reach a response body."""

OUTAGES: dict[str, Callable[[], Exception]] = {
    "database-refused": lambda: psycopg.OperationalError(f"connection refused ({SECRET})"),
    "database-shutdown": lambda: psycopg.errors.AdminShutdown(f"terminating connection ({SECRET})"),
    "pool-timeout": lambda: PoolTimeout(f"couldn't get a connection after 3.00 sec ({SECRET})"),
    "breaker-open": lambda: DatabaseUnavailable(f"the database is unavailable ({SECRET})"),
    "blob-unreachable": lambda: ServiceRequestError(f"Connection refused ({SECRET})"),
    "blob-dropped": lambda: ServiceResponseError(f"Connection aborted ({SECRET})"),
}


class _FailOn:
    """Raises (or, for None, returns without answering) when the request's path is one of `failures`."""

    def __init__(self, app: ASGIApp, failures: dict[str, Callable[[], Exception] | None]) -> None:
        self.app = app
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path in self.failures:
            fail = self.failures[path]
            if fail is None:
                return
            raise fail()
        await self.app(scope, receive, send)


def _boom() -> Exception:
    return RuntimeError(SECRET)


def faulty_app() -> FastAPI:
    """The gateway's error handling (problem handlers, request-id middleware) around deliberately broken parts."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/ok")
    def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/route")
    def route() -> None:
        raise _boom()

    @app.get("/async-route")
    async def async_route() -> None:
        raise _boom()

    def broken_dependency() -> None:
        raise _boom()

    @app.get("/dependency", dependencies=[Depends(broken_dependency)])
    def dependency() -> dict[str, bool]:
        return {"reached": True}

    for name, outage in OUTAGES.items():

        def raise_outage(outage: Callable[[], Exception] = outage) -> None:
            raise outage()

        app.add_api_route(f"/outage/{name}", raise_outage, methods=["GET"])

    inner: dict[str, Callable[[], Exception] | None] = {
        "/middleware/inner": _boom,
        "/middleware/inner-outage": OUTAGES["database-refused"],
    }
    outer: dict[str, Callable[[], Exception] | None] = {"/middleware/outer": _boom, "/middleware/silent": None}
    app.add_middleware(_FailOn, failures=inner)  # inside the request id, like the JSON guard and the body limit
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(_FailOn, failures=outer)  # outside it: only Starlette's catch-all and the boundary remain
    return app
