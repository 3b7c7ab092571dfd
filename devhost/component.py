# intent_ref: platform.devhost
"""What every part of the local host (durable, event hubs, timers, identity) offers the host that runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from devhost.invoker import FunctionRunner
from devhost.loader import FunctionIndex
from devhost.notifications import Notifications


@dataclass(frozen=True)
class HostContext:
    """What a component gets from the host: the indexed app, the invoker and where state lives."""

    index: FunctionIndex
    invoker: FunctionRunner
    """Runs triggered functions: in the host process, or in its worker processes (FUNCTIONS_WORKER_PROCESS_COUNT)."""
    database_url: str
    """Owner connection to the platform database; each component keeps its state in a schema of its own."""
    data_dir: Path
    """The host's data folder (.data by default): files that must survive a restart go here."""
    base_url: str
    """The origin the host serves on, e.g. http://127.0.0.1:7071 (known before start())."""
    task_hub: str
    host_key: str | None = None
    """The master key the host asks for on its guarded routes (None: a bare component, nothing guards it)."""
    notifications: Notifications | None = None
    """The host's one LISTEN connection, shared by its components (None: a bare component listens on its own)."""


class Component(Protocol):
    """A part of the host with its own routes and background work."""

    def add_routes(self, app: web.Application) -> None:
        """Register this component's HTTP routes (called once, before the server starts)."""

    async def start(self) -> None:
        """Create its schema if needed, recover persisted work and start its background tasks."""

    async def stop(self) -> None:
        """Stop background tasks; persisted state stays for the next start."""
