# intent_ref: platform.devhost
"""Compose the local host: provision services, load the app, mount every component, serve until stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from devhost.component import Component, HostContext
from devhost.hostjson import load_host_json, load_local_settings
from devhost.http_functions import HostRunner, add_http_routes, host_problems
from devhost.http_streams import FUNCTIONS_HOST_MAX_BODY
from devhost.invoker import Invoker
from devhost.keys import HostKeyGuard, load_or_create_master_key
from devhost.loader import FunctionIndex, load_function_app
from devhost.notifications import Notifications
from devhost.provision import Provisioned, provision_database, provision_storage
from devhost.workers import WorkerPool, worker_count
from shared.config import SettingsError, get_settings, load_settings

logger = logging.getLogger("devhost")

BODY_CAP_MARGIN = 64 * 1024
"""How far past the app's body limit (QP_MAX_BODY_BYTES) the host still reads an HTTP function's request body,
decoded bytes counted: a body just over the limit gets the app's own 413, a larger one the host's, and no body (a
compressed one that inflates to gigabytes included) makes the host hold more than a few times the limit."""


def host_body_cap(max_body_bytes: int) -> int:
    """The most of an HTTP function's request body (decoded) the host reads for the app whose body limit is
    `max_body_bytes`. Its component routes keep the Functions host's own cap (FUNCTIONS_HOST_MAX_BODY)."""
    return max_body_bytes + BODY_CAP_MARGIN


@dataclass(frozen=True)
class HostOptions:
    """How `python -m devhost run` was asked to run."""

    app_dir: Path
    host: str = "127.0.0.1"
    port: int = 7071
    data_dir: Path = Path(".data")
    seed_demo: bool = False


def apply_local_settings(app_dir: Path) -> None:
    """Export local.settings.json Values like `func start` does; the real environment wins."""
    for key, value in load_local_settings(app_dir).items():
        os.environ.setdefault(key, value)


def provision(options: HostOptions) -> Provisioned:
    """Start or reach Postgres and blob storage and point the app's settings at them."""
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    database = provision_database(
        data_dir, os.environ.get("QP_DATABASE_URL") or None, os.environ.get("QP_DATABASE_CONTROL_URL") or None
    )
    blob, azurite = provision_storage(data_dir, os.environ.get("QP_BLOB_CONNECTION_STRING") or None, data_dir / "logs")
    if not os.environ.get("QP_AUTH_METADATA_URL"):
        # Locally the app trusts the devhost's own issuer; in Azure this points at Entra ID.
        from devhost.identity import openid_metadata_url

        os.environ["QP_AUTH_METADATA_URL"] = openid_metadata_url(f"http://{options.host}:{options.port}")
    os.environ["QP_DATABASE_URL"] = database.app_url
    os.environ["QP_DATABASE_CONTROL_URL"] = database.control_url
    os.environ["QP_DATABASE_OWNER_URL"] = database.owner_url
    # Local demos and tests call services on this machine; an explicit "false" still closes private networks.
    os.environ.setdefault("QP_ALLOW_PRIVATE_NETWORK_HOSTS", "true")
    if blob is not None:
        os.environ["QP_BLOB_CONNECTION_STRING"] = blob
        os.environ["AzureWebJobsStorage"] = blob
    storage_note = "Azurite (started here)" if azurite else f"blob storage: {'configured' if blob else 'none'}"
    notes = [database.description, storage_note]
    return Provisioned(
        database.owner_url,
        database.app_url,
        database.control_url,
        blob,
        azurite=azurite,
        postgres_dir=database.started_dir,
        notes=notes,
    )


def build_components(ctx: HostContext) -> list[Component]:
    """Every part of the host, in start order."""
    from devhost.demo_deployment import DemoDeployment
    from devhost.durable import DurableHost
    from devhost.eventhubs import EventHubHost
    from devhost.identity import DevIdentity
    from devhost.timers import TimerHost

    return [DevIdentity(ctx), DurableHost(ctx), EventHubHost(ctx), TimerHost(ctx), DemoDeployment()]


class DevHost:
    """The running host: its aiohttp server and components."""

    def __init__(self, options: HostOptions, index: FunctionIndex, owner_url: str) -> None:
        self.options = options
        self.index = index
        self.invoker = Invoker(str(options.app_dir.resolve()))
        self.base_url = f"http://{options.host}:{options.port}"
        task_hub = os.environ.get("QP_TASK_HUB", "QuantumLocal")
        data_dir = options.data_dir.resolve()
        self.host_key = load_or_create_master_key(data_dir)
        self.guard = HostKeyGuard(self.host_key)
        self.notifications = Notifications(owner_url)

        def binding() -> str:  # asked for once the components exist
            return self.durable_binding(self.base_url)

        count = worker_count()
        self.workers = WorkerPool(options.app_dir.resolve(), count, binding) if count else None
        self.ctx = HostContext(
            index,
            self.workers or self.invoker,
            owner_url,
            data_dir,
            self.base_url,
            task_hub,
            self.host_key,
            self.notifications,
        )
        self.components = build_components(self.ctx)
        self.invoker.durable_binding = binding
        self.runner: HostRunner | None = None

    def durable_binding(self, origin: str) -> str:
        """The durableClient binding JSON (from the durable component)."""
        from devhost.durable import DurableHost

        durable = next(c for c in self.components if isinstance(c, DurableHost))
        return str(durable.client_binding_json(origin))

    def web_app(self) -> web.Application:
        """Component routes first, then the app's HTTP functions (catch-alls last).

        Every component route needs the master key unless it is public in Azure too (devhost/keys.py).
        """
        app = web.Application(
            # The component routes' cap: the Durable API takes orchestration inputs that may be several times the
            # request that caused them (ensure_ascii JSON makes "é" six bytes), and it needs the master key or
            # loopback. The HTTP functions' bodies have a cap of their own (`add_http_routes`).
            client_max_size=FUNCTIONS_HOST_MAX_BODY,
            # Outermost: an error aiohttp raises on any route (404, 405, 413) is answered as problem+json.
            middlewares=[host_problems, self.guard.middleware],
        )
        for component in self.components:
            component.add_routes(app)
        guarded = self.guard.guard(app.router.resources())
        logger.debug("routes that need the master key: %s", ", ".join(guarded))
        route_prefix = load_host_json(self.options.app_dir).route_prefix
        # Not the Functions host's 100 MiB: reading (and inflating) that much of a function's body for an app that
        # refuses anything over its limit cost every other request its memory and time.
        body_cap = host_body_cap(get_settings().QP_MAX_BODY_BYTES)
        add_http_routes(app, self.index.http, self.invoker, route_prefix, self.durable_binding, body_cap=body_cap)
        return app

    async def start(self) -> None:
        """Start every component, then listen."""
        app = self.web_app()
        if self.workers is not None:
            await self.workers.start()
        for component in self.components:
            await component.start()
        self.runner = HostRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.options.host, self.options.port).start()

    async def stop(self) -> None:
        """Stop listening, then stop components in reverse order."""
        if self.runner is not None:
            await self.runner.cleanup()
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:
                logger.exception("stopping %s failed", type(component).__name__)
        if self.workers is not None:
            await self.workers.stop()
        await self.notifications.stop()
        from azure.durable_functions.models.utils import http_utils

        await http_utils._close_session()
        self.invoker.shutdown()


def load_app(options: HostOptions) -> FunctionIndex:
    """Validate settings (fail fast, naming the setting) and import function_app.py."""
    try:
        load_settings()
    except SettingsError as exc:
        raise SystemExit(f"devhost: {exc}") from None
    try:
        return load_function_app(options.app_dir / "function_app.py")
    except SettingsError as exc:
        raise SystemExit(f"devhost: {exc}") from None


async def serve(options: HostOptions, on_ready: list[str]) -> None:
    """Run until SIGINT or SIGTERM."""
    provisioned = provision(options)
    try:
        if options.seed_demo:
            _seed(provisioned.app_url, provisioned.control_url, f"http://127.0.0.1:{options.port}")
        index = load_app(options)
        host = DevHost(options, index, provisioned.owner_url)
        try:
            await host.start()
        except BaseException:
            # What started before the failure (its port taken, say) would keep the process up, its threads running.
            await host.stop()
            raise
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        functions = ", ".join(sorted(index.functions))
        logger.info("loaded %d function(s): %s", len(index.functions), functions)
        logger.info("services: %s", "; ".join(provisioned.notes))
        for line in on_ready:
            print(line.format(base_url=host.base_url), flush=True)  # noqa: T201  # the host's console
        await stop.wait()
        logger.info("stopping")
        await host.stop()
    finally:
        provisioned.stop()


def _seed(app_url: str, control_url: str, base_url: str) -> None:
    from devhost.identity import dev_tenant_id
    from devhost.provision import DEMO_TENANTS, seed_demo_tenants
    from devhost.seed import seed_demo_blueprints, seed_demo_modules, seed_demo_settings

    inserted = seed_demo_tenants(control_url, {name: dev_tenant_id(name) for name in DEMO_TENANTS})
    if inserted:
        logger.info("seeded demo tenants: %s", ", ".join(inserted))
    seed_demo_modules(app_url)
    seed_demo_blueprints(app_url)
    seed_demo_settings(app_url, base_url)
