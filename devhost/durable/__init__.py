# intent_ref: platform.devhost-durable
"""Durable Functions for the local host: the out-of-process protocol, persisted in Postgres."""

from devhost.durable.host import DurableHost

__all__ = ["DurableHost"]
