# intent_ref: platform.gateway
"""The Durable client of the current request, handed over by the HTTP function that carries the binding."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from shared.api.problems import ProblemError

logger = logging.getLogger(__name__)

# The HTTP function sets this around each request; FastAPI handlers run in a copy of that context.
durable_client_var: contextvars.ContextVar[Any | None] = contextvars.ContextVar("durable_client", default=None)


def get_durable_client() -> Any:
    """FastAPI dependency: the request's DurableOrchestrationClient, or 503 when none is bound."""
    client = durable_client_var.get()
    if client is None:
        raise ProblemError(
            503, "orchestration-unavailable", "Service unavailable", "No orchestration client is bound to this request."
        )
    return client


async def raise_to_orchestration(client: Any, instance_id: object, name: str, data: Any) -> bool:
    """Deliver an external event; False when the orchestration is not there (what was recorded before the event
    stands, and the orchestration reads it when it starts or settles)."""
    try:
        await client.raise_event(str(instance_id), name, data)
    except Exception as exc:
        logger.warning("could not raise %s to %s: %s", name, instance_id, exc)
        return False
    return True
