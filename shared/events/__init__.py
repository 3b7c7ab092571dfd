# intent_ref: platform.events
"""Domain events out of the platform: the Event Hubs publisher port and its backends."""

from shared.events.publisher import (
    AzureEventHubPublisher,
    EventPublisher,
    LocalEventHubPublisher,
    OutboundEvent,
    get_publisher,
)

__all__ = [
    "AzureEventHubPublisher",
    "EventPublisher",
    "LocalEventHubPublisher",
    "OutboundEvent",
    "get_publisher",
]
