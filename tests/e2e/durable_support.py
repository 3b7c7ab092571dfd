# intent_ref: platform.devhost-durable
"""Shared ways for tests to reach a durable host: serve one in-process, wait for a status, call the SDK client."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import azure.durable_functions as df
from aiohttp import web
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from azure.durable_functions.models.utils import http_utils

from devhost.component import HostContext
from devhost.durable import DurableHost
from devhost.durable.binding import client_binding_json
from devhost.invoker import Invoker
from devhost.loader import FunctionIndex
from devhost.workers import WorkerPool

TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}
T = TypeVar("T")


async def wait_for_status(
    client: df.DurableOrchestrationClient,
    instance_id: str,
    until: Callable[[DurableOrchestrationStatus], bool] | None = None,
    timeout: float = 20.0,
) -> DurableOrchestrationStatus:
    """Poll get_status until `until` holds (default: a terminal status); fail at the deadline."""
    until = until or (lambda s: s.runtime_status is not None and s.runtime_status.value in TERMINAL)
    deadline = time.monotonic() + timeout
    while True:
        status = await client.get_status(instance_id)
        if status and until(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{instance_id} did not get there in time: {status.to_json() if status else None}")
        await asyncio.sleep(0.03)


@dataclass
class ServedHost:
    """A DurableHost listening on a free port, with the SDK client bound to it."""

    host: DurableHost
    client: df.DurableOrchestrationClient
    base_url: str
    hub: str


@asynccontextmanager
async def serve_durable_host(
    index: FunctionIndex,
    app_dir: Path,
    owner_url: str,
    data_dir: Path,
    hub: str,
    workers: int = 0,
    **host_options: Any,
) -> AsyncIterator[ServedHost]:
    """Run a DurableHost for `index` (both API prefixes mounted) on this event loop; stop it all afterwards.

    With `workers`, its functions run in that many worker processes (devhost/workers.py), as the devhost runs them
    with FUNCTIONS_WORKER_PROCESS_COUNT."""
    # Bound here, on a port the system picks, before the host names it in its URLs: a port asked for first and
    # bound later can be taken in between by another test process.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    invoker = Invoker(str(app_dir))
    pool = WorkerPool(app_dir, workers, lambda: host.client_binding_json()) if workers else None
    host = DurableHost(HostContext(index, pool or invoker, owner_url, data_dir, base_url, hub), **host_options)
    invoker.durable_binding = host.client_binding_json  # as DevHost does: client bindings on every trigger
    app = web.Application()
    host.add_routes(app)
    if pool is not None:
        await pool.start()
    await host.start()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener).start()
    try:
        yield ServedHost(host, df.DurableOrchestrationClient(host.client_binding_json()), base_url, hub)
    finally:
        # The SDK's aiohttp session is module-global: it must not outlive this event loop.
        await http_utils._close_session()
        await runner.cleanup()
        await host.stop()
        if pool is not None:
            await pool.stop()
        invoker.shutdown()


def with_client(
    base_url: str, task_hub: str, call: Callable[[df.DurableOrchestrationClient], Awaitable[T]], key: str
) -> T:
    """Run `call` with an SDK client for a devhost child process (`key`: its master key), on a fresh event loop."""

    async def main() -> T:
        try:
            binding = client_binding_json(base_url, task_hub, system_key=key)
            return await call(df.DurableOrchestrationClient(binding))
        finally:
            await http_utils._close_session()  # module-global session: never reuse it across event loops

    return asyncio.run(main())
