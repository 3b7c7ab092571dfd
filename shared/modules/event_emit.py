# intent_ref: platform.modules
"""`event.emit`: a custom event on `platform-events`, keyed by tenant, with an id derived from its step."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from shared.events.publisher import PLATFORM_EVENTS_HUB, EventPublisher, OutboundEvent, get_publisher
from shared.modules.contract import Abandoned, Module, ModuleContext, StepFailed
from shared.registry.catalog import EventEmitParams

CUSTOM_EVENT_PREFIX = "custom."
"""Custom types are namespaced so a step can never impersonate a platform event (e.g. execution_completed)."""
_EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c5e-2b8a-5e4f-9a7c-0d2e4b6a8c1f")
MAX_EVENT_BYTES = 1_000_000
"""An event's body at most: Event Hubs takes a batch of at most 1 MiB (1,048,576 bytes, the body with its properties
and framing). A bigger one failed its send with the SDK's error, after the definition was accepted and its step ran."""


def event_id(ctx: ModuleContext) -> uuid.UUID:
    """The same for every delivery and every attempt of one step's emit (its compensation's is its own), so consumers
    deduplicate a re-published event by id.

    An attempt that timed out may have sent its event all the same (its send went on after the worker stopped waiting
    for it), and the step's next attempt sends it again: per attempt, the two copies had two ids and no consumer could
    tell them apart from two events. The parameters are the same in every attempt of a step (its references name its
    execution's inputs and upstream outputs, fixed by then), so one id names one event. It is the id attempt 1 always
    had (from its idempotency key), so a first attempt's event sent before this rule keeps its id when a later attempt
    re-sends it."""
    return uuid.uuid5(_EVENT_ID_NAMESPACE, replace(ctx, attempt=1).idempotency_key)


class EventEmitModule(Module[EventEmitParams]):
    action: ClassVar[str] = "event.emit"
    params_model = EventEmitParams
    timeout_s = 30
    answers_quickly = True

    def __init__(self, publisher: Callable[[], EventPublisher] = get_publisher) -> None:
        self._publisher = publisher

    def run(self, ctx: ModuleContext, params: EventEmitParams) -> Any:
        """Publish the custom event, by the attempt's deadline when it has one; its id is the output."""
        eid = str(event_id(ctx))
        event_type = CUSTOM_EVENT_PREFIX + params.type
        body = {
            "id": eid,
            "type": event_type,
            "time": datetime.now(UTC).isoformat(),
            "tenant_id": str(ctx.tenant_id),
            "execution_id": ctx.execution_id,
            "step_id": ctx.step_id,
            "data": params.data,
        }
        properties = {
            "event_id": eid,
            "event_type": event_type,
            "tenant_id": str(ctx.tenant_id),
            "execution_id": ctx.execution_id,
            "step_id": ctx.step_id,
        }
        event = OutboundEvent(body, str(ctx.tenant_id), properties)
        size = len(event.body_bytes())
        if size > MAX_EVENT_BYTES:
            raise StepFailed(
                f"event {event_type} not sent: it is {size} bytes, and an event may have at most {MAX_EVENT_BYTES}",
                retryable=False,
            )
        # The send ends by the attempt's deadline: the SDK's own retries (minutes when Event Hubs is away) held the
        # module thread, and its tenant's share of them, long after the worker had recorded the attempt timed out.
        left = ctx.time_left()
        if left is None:
            self._publisher().publish(PLATFORM_EVENTS_HUB, [event])
            return {"event_id": eid}
        if ctx.abandoned.is_set():
            raise Abandoned(f"event {event_type} not sent: its attempt was abandoned")
        if left <= 0:
            raise StepFailed(f"event {event_type} not sent: its attempt was past its deadline")
        try:
            self._publisher().publish(PLATFORM_EVENTS_HUB, [event], timeout=left)
        except TimeoutError as exc:
            # Retryable, as a timeout is: the next attempt sends it again, under the same id, so a send of this one
            # that got through all the same is deduplicated by its consumers, not read as a second event.
            raise StepFailed(f"event {event_type} not sent by its attempt's deadline: {exc}") from None
        return {"event_id": eid}
