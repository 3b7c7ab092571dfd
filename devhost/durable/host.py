# intent_ref: platform.devhost-durable
"""DurableHost: the Durable Functions component of the devhost (store, dispatcher, HTTP API, client binding)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from devhost.component import HostContext
from devhost.durable.api import DurableApi
from devhost.durable.binding import client_binding_json
from devhost.durable.engine import SAFETY_POLL_S, Engine
from devhost.durable.management import Management
from devhost.durable.store import NOTIFY_CHANNEL, SCHEMA, Database, Store
from devhost.notifications import Notifications
from shared.db.migrate import apply_migrations

MIGRATIONS = Path(__file__).with_name("migrations")


class DurableHost:
    """Durable Functions for the local host, persisted in Postgres (schema devhost_durable).

    Every orchestration continues from its committed history after a restart, including after a crash.
    """

    def __init__(self, ctx: HostContext, *, max_activities: int = 8, poll_interval: float = SAFETY_POLL_S) -> None:
        self._ctx = ctx
        self._db = Database(ctx.database_url)
        self._store = Store(ctx.task_hub)
        self._engine = Engine(ctx, self._db, self._store, max_activities=max_activities, poll_interval=poll_interval)
        self.management = Management(
            self._db, self._store, ctx.index.orchestrators, self._engine.wake, self._engine.wake_instance
        )
        self._api = DurableApi(self.management, ctx.task_hub, ctx.host_key)
        self._notifications: Notifications | None = None

    def add_routes(self, app: web.Application) -> None:
        """The management API on the RPC prefix (/durabletask/) and the public webhook prefix."""
        self._api.add_routes(app)

    async def start(self) -> None:
        """Apply the schema's migrations, take the task hub and resume whatever the store says is pending."""
        await asyncio.to_thread(apply_migrations, self._ctx.database_url, MIGRATIONS, schema=SCHEMA)
        await self._db.open()
        try:
            await self._db.lease_task_hub(self._ctx.task_hub)
            # The host's one listening connection when it has one; a bare component (tests) listens on its own.
            self._notifications = self._ctx.notifications or Notifications(self._ctx.database_url)
            self._notifications.subscribe(NOTIFY_CHANNEL, self._engine.on_notify)
            await self._engine.start()
        except BaseException:
            await self._db.close()
            raise

    async def stop(self) -> None:
        """Stop dispatching; persisted state stays for the next start."""
        if self._notifications is not None:
            self._notifications.unsubscribe(NOTIFY_CHANNEL, self._engine.on_notify)
            if self._notifications is not self._ctx.notifications:
                await self._notifications.stop()
            self._notifications = None
        await self._engine.stop()
        await self._db.close()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no episode or activity is runnable or running (timers not yet due excepted)."""
        await self._engine.wait_idle(timeout)

    def client_binding_json(self, origin: str | None = None) -> str:
        """The JSON a durable_client_input binding receives; management URLs use `origin` (default base_url)."""
        return client_binding_json(self._ctx.base_url, self._ctx.task_hub, origin, self._ctx.host_key)
