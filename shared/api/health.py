# intent_ref: platform.gateway
"""Liveness and readiness endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from shared.api.problems import PROBLEM_BASE, PROBLEM_JSON
from shared.api.readiness import run_checks

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
def ready() -> Any:
    """Readiness: 200 when every dependency answers, else 503 problem+json naming what is down."""
    results = run_checks()
    down = [r for r in results if not r.ok]
    if not down:
        return Health(status="ready", checks={r.name: "ok" for r in results})
    body = {
        "type": PROBLEM_BASE + "dependency-unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": "Not ready: " + ", ".join(r.name for r in down) + " unavailable.",
        "instance": "/api/ready",
        "checks": {r.name: "ok" if r.ok else f"down ({r.detail})" for r in results},
    }
    return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON, headers={"Retry-After": "5"})
