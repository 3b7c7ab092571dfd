# intent_ref: platform.execution
"""The part of the Durable client the control plane and the sweeper call, and that client with every call bounded.

A hung task hub holds a caller for the client's own minutes per call; the sweeper's runs and an operator's pages have
budgets of seconds, so each of their calls is cut off (TimeoutError) at a bound of the caller's choosing. A call cut
off may still take effect in the task hub: each caller leaves its work so that a repeat is harmless (ADR 0014, 0027).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from shared.engine.protocol import EventRaiser

_T = TypeVar("_T")


class DurableClient(EventRaiser, Protocol):
    """The part of the Durable client the sweeper uses."""

    async def get_status(self, instance_id: str, *, show_input: bool = False) -> Any:
        """The instance's status (its input too when `show_input`); falsy (or None) when no such instance exists."""

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        """Start an orchestration with the given instance id and input."""

    async def terminate(self, instance_id: str, reason: str) -> None:
        """Terminate a running orchestration instance (a message its backend applies asynchronously)."""

    async def purge_instance_history(self, instance_id: str) -> Any:
        """Delete an ended instance's history (a relaunch's, its tenant erased meanwhile: `unless_erased`)."""


@dataclass(frozen=True)
class BoundedRaiser:
    """An event raiser whose raises are cut off at `seconds` (TimeoutError, then the call is abandoned)."""

    client: EventRaiser
    seconds: float

    async def within_bound(self, call: Awaitable[_T]) -> _T:
        """`call`'s answer, or TimeoutError once it has taken `seconds`."""
        return await asyncio.wait_for(call, self.seconds)

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        """Raise an event to an orchestration, within the bound."""
        await self.within_bound(self.client.raise_event(instance_id, event_name, event_data))


@dataclass(frozen=True)
class BoundedClient(BoundedRaiser):
    """The Durable client with each of its calls cut off at `seconds`."""

    client: DurableClient

    async def get_status(self, instance_id: str, *, show_input: bool = False) -> Any:
        """The instance's status, within the bound (the input is asked for only when wanted: not every client takes
        the keyword)."""
        call = (
            self.client.get_status(instance_id, show_input=True) if show_input else self.client.get_status(instance_id)
        )
        return await self.within_bound(call)

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        """Start an orchestration, within the bound."""
        return await self.within_bound(self.client.start_new(orchestration_function_name, instance_id, client_input))

    async def terminate(self, instance_id: str, reason: str) -> None:
        """Terminate an orchestration, within the bound."""
        await self.within_bound(self.client.terminate(instance_id, reason))

    async def purge_instance_history(self, instance_id: str) -> Any:
        """Delete an instance's history, within the bound."""
        return await self.within_bound(self.client.purge_instance_history(instance_id))


def bounded(client: DurableClient, seconds: float) -> DurableClient:
    """`client` with each call cut off at `seconds`; as it is when it is bounded already (its own bound holds)."""
    return client if isinstance(client, BoundedClient) else BoundedClient(client, seconds)
