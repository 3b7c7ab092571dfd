# intent_ref: platform.gateway
"""Liveness and readiness endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from shared.api.problems import PROBLEM_JSON, ProblemError
from shared.api.readiness import current_checks

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """The answer of a healthy probe."""

    status: str
    checks: dict[str, str] = {}


@router.get("/api/health", response_model=Health, summary="Liveness: the process answers")
def health() -> Health:
    """Liveness: answers without touching any dependency."""
    return Health(status="ok")


@router.get(
    "/api/ready",
    response_model=Health,
    summary="Readiness: Postgres and blob storage answer",
    responses={503: {"description": "A dependency is down", "content": {PROBLEM_JSON: {}}}},
)
async def ready() -> Any:
    """Readiness: 200 when every dependency answers, else 503 problem+json naming what is down."""
    # Async: probes share one check per process (its results reused briefly), awaited on the event loop, so a burst
    # of probes holds neither worker threads nor pooled connections that tenants' requests need.
    results = await current_checks()
    down = [r for r in results if not r.ok]
    if not down:
        return Health(status="ready", checks={r.name: "ok" for r in results})
    # Raised, not returned: the error path gives it the request id every other problem carries.
    raise ProblemError(
        503,
        "dependency-unavailable",
        "Service unavailable",
        "Not ready: " + ", ".join(r.name for r in down) + " unavailable.",
        headers={"Retry-After": "5"},
        extensions={"checks": {r.name: "ok" if r.ok else f"down ({r.detail})" for r in results}},
    )
