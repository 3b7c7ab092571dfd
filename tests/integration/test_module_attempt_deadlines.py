# intent_ref: platform.modules
"""A built-in module ends by its attempt's deadline: a poll or an exchange that outlived it held a module thread
(and its tenant's share of them) for nothing, up to the poll's own `timeout` of 30 days, and other tenants' items
found no thread (ADR 0026)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.engine import module_threads, worker
from shared.engine.protocol import WorkItem
from shared.modules import ModuleContext, StepFailed, run_module
from shared.modules.contract import Abandoned
from shared.modules.http_request import HttpRequestModule
from shared.modules.http_wait_healthy import HttpWaitHealthyModule
from shared.registry.catalog import HttpWaitHealthyParams
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_builtin_modules import FakeClock
from tests.integration.test_module_worker_claims import (  # noqa: F401  # batches_held_whole: the fixture
    BOUND_S,
    _dispatched,
    _Echo,
    _Raiser,
    _until,
    batches_held_whole,
)

pytestmark = pytest.mark.integration

LOCAL = ["127.0.0.1"]


class _Handler(BaseHTTPRequestHandler):
    """`/unhealthy` answers 503 until the server turns healthy; `/hang` answers nothing until the server is shut."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.probed.set()
        if self.path == "/hang":
            self.server.released.wait(BOUND_S)
            return
        self.send_response(200 if self.server.healthy else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.healthy = False
        self.probed = threading.Event()
        self.released = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    instance = _Server()
    threading.Thread(target=instance.serve_forever, daemon=True).start()
    try:
        yield instance
    finally:
        instance.healthy = True  # a poll left behind by a failed assertion returns at its next probe
        instance.released.set()
        instance.shutdown()
        instance.server_close()


class _Watched(HttpWaitHealthyModule):
    """http.wait_healthy that counts the polls still running."""

    def __init__(self) -> None:
        super().__init__(allow_private=True)
        self.running = 0
        self.deadlines: list[float | None] = []
        self._lock = threading.Lock()

    def poll(self, ctx: ModuleContext, params: HttpWaitHealthyParams) -> dict[str, Any]:
        with self._lock:
            self.running += 1
            self.deadlines.append(ctx.deadline)
        try:
            return super().poll(ctx, params)
        finally:
            with self._lock:
                self.running -= 1


def test_polls_abandoned_at_their_deadline_end_and_free_the_threads_for_other_tenants(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    pg: Any,
    server: _Server,
) -> None:
    # One poll each of as many tenants as there are module threads: each tenant holding none takes any free thread
    # (two tenants' shares no longer take them all, ADR 0038 amended), so the polls take every one.
    polling = [api.provision(f"deadline-{n}").id for n in range(module_threads.MODULE_THREADS)]
    c = api.provision("deadline-c").id
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            'UPDATE app.tenants SET settings = \'{"allowed_hosts": ["127.0.0.1"]}\' WHERE id = ANY(%s)', (polling,)
        )
    waiter, echo = _Watched(), _Echo()
    modules = {waiter.action: waiter, echo.action: echo}
    # Each step allows 2 s; its parameters ask to poll for an hour.
    polls = [
        _dispatched(app_pool, tenant, waiter.action, timeout_s=2).model_copy(
            update={"params": {"url": server.url("/unhealthy"), "timeout": 3600, "interval": 0.2}}
        )
        for tenant in polling
    ]
    assert len(polls) == module_threads.MODULE_THREADS
    raiser = _Raiser()

    async def first() -> int:
        return await worker.process_batch([item.model_dump_json() for item in polls], raiser, modules)

    async def second(late: WorkItem) -> int:
        return await worker.process_batch([late.model_dump_json()], raiser, modules)

    try:
        assert asyncio.run(first()) == len(polls)
        assert all(raiser.to(item.execution_id)[0]["state"] == "timed_out" for item in polls)
        assert len(waiter.deadlines) == len(polls) and None not in waiter.deadlines  # each knew its deadline
        # Every abandoned poll has ended and given its thread back (before: they went on for the hour).
        assert _until(lambda: waiter.running == 0)
        late = _dispatched(app_pool, c, echo.action, timeout_s=10)
        assert asyncio.run(second(late)) == 1
        assert raiser.to(late.execution_id) == [{"ok": True, "output": {"ran": echo.runs[0]}}]
    finally:
        # Polls left running by a failed assertion end at their next probe, before the server goes away.
        server.healthy = True
        _until(lambda: waiter.running == 0)


def _ctx(*, deadline_in: float | None = None) -> ModuleContext:
    deadline = None if deadline_in is None else time.monotonic() + deadline_in
    return ModuleContext(
        uuid.uuid4(), str(uuid.uuid4()), "step-1", 1, tenant_settings={"allowed_hosts": LOCAL}, deadline=deadline
    )


def _seconds_allowed(message: str) -> float:
    """The time limit an exchange's DeadlineExceeded message names."""
    found = re.search(r"no complete answer from 127\.0\.0\.1 within ([0-9.e+-]+) s", message)
    assert found is not None, message
    return float(found.group(1))


def test_a_poll_ends_at_its_attempts_deadline_not_at_its_own_timeout(server: _Server) -> None:
    clock = FakeClock()
    module = HttpWaitHealthyModule(sleep=clock.sleep, clock=clock, allow_private=True)
    params = {"url": server.url("/unhealthy"), "timeout": 3600, "interval": 2}
    with pytest.raises(StepFailed) as failed:
        run_module(module.action, _ctx(deadline_in=9), params, {module.action: module})
    # Probes at 0, 2, 4, 6 and 8 s; the next would come after the deadline, so it waits for the abandonment.
    assert failed.value.message.startswith(f"{params['url']} not healthy by its attempt's deadline (5 probes")
    assert clock.sleeps[:4] == [2, 2, 2, 2] and len(clock.sleeps) == 5


def test_a_poll_whose_timeout_is_its_attempts_keeps_its_own_verdict(server: _Server) -> None:
    clock = FakeClock()
    module = HttpWaitHealthyModule(sleep=clock.sleep, clock=clock, allow_private=True)
    params = {"url": server.url("/unhealthy"), "timeout": 9, "interval": 2}
    with pytest.raises(StepFailed) as failed:
        # The worker's claim came a moment before the module started: the deadline is a hair before the poll's own.
        run_module(module.action, _ctx(deadline_in=9), params, {module.action: module})
    assert failed.value.message.startswith(f"{params['url']} not healthy after 9 s (5 probes; last: status 503)")


def test_a_probe_ends_by_its_attempts_deadline(server: _Server) -> None:
    clock = FakeClock()
    module = HttpWaitHealthyModule(sleep=clock.sleep, clock=clock, allow_private=True)
    params = {"url": server.url("/hang"), "timeout": 3600, "interval": 3000}
    with pytest.raises(StepFailed) as failed:
        run_module(module.action, _ctx(deadline_in=0.5), params, {module.action: module})
    assert failed.value.details["probes"] == 1
    # The probe's own limit is 10 s; the attempt had half a second left.
    assert _seconds_allowed(failed.value.details["last"]) <= 0.5


def test_an_abandoned_poll_ends_without_waiting_out_its_interval(server: _Server) -> None:
    module = HttpWaitHealthyModule(allow_private=True)
    ctx = _ctx()
    failures: list[StepFailed] = []

    def poll() -> None:
        try:
            params = {"url": server.url("/unhealthy"), "interval": 3600, "timeout": 7200}
            run_module(module.action, ctx, params, {module.action: module})
        except StepFailed as exc:
            failures.append(exc)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    assert server.probed.wait(BOUND_S)
    ctx.abandoned.set()  # what the worker does once it no longer waits for the attempt
    thread.join(BOUND_S)
    assert not thread.is_alive()
    [failure] = failures
    assert isinstance(failure, Abandoned)
    assert "not healthy when its attempt was abandoned (1 probes; last: status 503)" in failure.message


def test_a_poll_abandoned_during_its_last_wait_before_the_deadline_ends_for_the_abandonment(server: _Server) -> None:
    # The next probe would come after the attempt's deadline, so the poll waits for it; abandoned during that wait,
    # it failed as "not healthy by its attempt's deadline", the deadline still far, and was taken for its own verdict.
    module = HttpWaitHealthyModule(allow_private=True)
    ctx = _ctx(deadline_in=600)
    failures: list[StepFailed] = []

    def poll() -> None:
        try:
            params = {"url": server.url("/unhealthy"), "interval": 3600, "timeout": 7200}
            run_module(module.action, ctx, params, {module.action: module})
        except StepFailed as exc:
            failures.append(exc)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    assert server.probed.wait(BOUND_S)
    ctx.abandoned.set()
    thread.join(BOUND_S)
    assert not thread.is_alive()
    [failure] = failures
    assert isinstance(failure, Abandoned), failure.message
    assert "not healthy when its attempt was abandoned (1 probes; last: status 503)" in failure.message


def test_an_http_request_ends_by_its_attempts_deadline(server: _Server) -> None:
    module = HttpRequestModule(allow_private=True)
    with pytest.raises(StepFailed) as failed:
        run_module(module.action, _ctx(deadline_in=0.5), {"url": server.url("/hang")}, {module.action: module})
    assert failed.value.retryable
    # The module's own limit is 30 s; the attempt had half a second left.
    assert _seconds_allowed(failed.value.message) <= 0.5
