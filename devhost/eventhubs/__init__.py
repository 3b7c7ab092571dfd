# intent_ref: platform.devhost-eventhubs
"""Local Event Hubs: a Postgres-backed partitioned log delivering batches to eventHubTrigger functions."""

from devhost.eventhubs.host import EventHubHost

__all__ = ["EventHubHost"]
