# intent_ref: platform.gateway
"""The Durable client of the current request, handed over by the HTTP function that carries the binding."""

from __future__ import annotations

import contextvars
from typing import Any

from shared.api.problems import ProblemError
from shared.engine.protocol import raise_to_orchestration

__all__ = ["durable_client_var", "get_durable_client", "raise_to_orchestration"]

_RETRY_AFTER = {"Retry-After": "5"}

# The HTTP function sets this around each request; FastAPI handlers run in a copy of that context.
durable_client_var: contextvars.ContextVar[Any | None] = contextvars.ContextVar("durable_client", default=None)


def get_durable_client() -> Any:
    """FastAPI dependency: the request's DurableOrchestrationClient, or 503 when none is bound (with Retry-After, as
    every 503 of the API: the client's retries wait for it)."""
    client = durable_client_var.get()
    if client is None:
        detail = "No orchestration client is bound to this request."
        raise ProblemError(503, "orchestration-unavailable", "Service unavailable", detail, headers=_RETRY_AFTER)
    return client
