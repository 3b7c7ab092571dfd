# intent_ref: platform.execution
"""Built-in work items onto `module-work`: the dispatch's publish, and the worker's hand-back of the items a batch
did not finish within its hold (ADR 0048)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.engine.protocol import MODULE_WORK_HUB, WorkItem
from shared.events.publisher import OutboundEvent, PropertyValue, get_publisher
from shared.observability.tracing import TRACEPARENT, with_traceparent

FIRST_ENQUEUED = "qp-first-enqueued"
"""The application property of a handed-back item that says when the item first went on the hub (ISO 8601): its
wait on the hub (qp.module_work.lag) counts from then, not from its last hand-back."""

PUBLISH_TIMEOUT_S = 120.0
"""A publish of work is given up after this (the SDK's send and its first token, 60 s each): a link whose open hung
held it, and `module-work`'s turn, for the SDK's retries (over 15 minutes). The caller's retry publishes the same
work again, on a fresh link (the stuck one is set aside), and the worker's claim keeps copies of one attempt from
running twice (ADR 0026)."""


@dataclass(frozen=True)
class Carried:
    """A received item and what it came with that goes with it when it is handed back."""

    item: WorkItem
    traceparent: str | None = None
    """Its dispatch's trace context: a hand-back is no new trace."""
    first_enqueued: str | None = None
    """When it first went on the hub (ISO 8601)."""


def publish_work(items: Sequence[WorkItem]) -> None:
    """Put `items` on `module-work` in one send, each with the current span's trace context."""
    _publish([(item, with_traceparent(_properties(item)), _partition_key(item)) for item in items], PUBLISH_TIMEOUT_S)


def hand_back_work(carried: Sequence[Carried], *, timeout: float = PUBLISH_TIMEOUT_S) -> None:
    """Put items received in one batch back on `module-work`, in one send, each with what it came with.

    All under the first one's key: each item's own key led it to the batch's partition, so that key leads them all
    there again, where copies of one attempt still meet, in one batch of the hub's instead of a send per key.
    """
    if not carried:
        return
    key = _partition_key(carried[0].item)
    sent = []
    for entry in carried:
        properties = _properties(entry.item)
        if entry.traceparent is not None:
            properties[TRACEPARENT] = entry.traceparent
        if entry.first_enqueued is not None:
            properties[FIRST_ENQUEUED] = entry.first_enqueued
        sent.append((entry.item, properties, key))
    _publish(sent, timeout)


def _properties(item: WorkItem) -> dict[str, PropertyValue]:
    return {"type": "step.work", "action": item.action}


def _partition_key(item: WorkItem) -> str:
    # Keyed by attempt, not tenant (ADR 0026): a slow item holds up only what shares its partition, and copies of
    # one attempt still meet in one partition, where the worker's claim sorts them out.
    return f"{item.execution_id}:{item.step_id}:{item.phase}:{item.attempt}"


def _publish(items: Sequence[tuple[WorkItem, dict[str, PropertyValue], str]], timeout: float) -> None:
    if not items:
        return
    events = [
        OutboundEvent(body=item.model_dump(mode="json"), partition_key=key, properties=properties)
        for item, properties, key in items
    ]
    get_publisher().publish(MODULE_WORK_HUB, events, timeout=timeout)
