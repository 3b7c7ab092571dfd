# intent_ref: platform.gateway
"""Stage timers for the request path, installed in a devhost process before it loads the app (bench only)."""

from __future__ import annotations

import contextvars
import functools
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The request a span belongs to (the caller's X-Request-Id), and the spans open around the current code.
_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("probe_key", default=None)
_path: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("probe_path", default=())
_lock = threading.Lock()
_records: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
KEY_PREFIX = "pr-"


@contextmanager
def span(name: str) -> Iterator[None]:
    """Time the enclosed code as `name`, nested under the spans already open, for the current request."""
    key = _key.get()
    if key is None:
        yield
        return
    token = _path.set((*_path.get(), name))
    path = "/".join(_path.get())
    started, cpu_started = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        # Wall time grows with whatever else the machine runs; this thread's CPU time much less so.
        elapsed, cpu = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu_started) * 1000
        _path.reset(token)
        with _lock:
            _records[key].append((path, elapsed, cpu))


def _timed(owner: Any, attribute: str, name: str) -> None:
    original: Callable[..., Any] = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with span(name):
            return original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


def _timed_context(owner: Any, attribute: str, name: str) -> None:
    original: Callable[..., Any] = getattr(owner, attribute)

    @contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with span(name), original(*args, **kwargs) as value:
            yield value

    setattr(owner, attribute, wrapper)


def _timed_bridge(module: Any) -> None:
    original = module.serve

    async def serve(gateway: Any, req: Any) -> Any:
        request_id = req.headers.get("x-request-id") or ""
        token = _key.set(request_id if request_id.startswith(KEY_PREFIX) else None)
        try:
            with span("bridge"):
                return await original(gateway, req)
        finally:
            _key.reset(token)

    module.serve = serve


def install() -> None:
    """Wrap the stages; must run before the function app is imported (routes capture their dependencies)."""
    import psycopg
    from psycopg_pool import ConnectionPool

    import shared.api.adapter as adapter
    import shared.api.security as security
    from shared.api.middleware import RequestIdMiddleware
    from shared.audit.postgres import PostgresAuditStore
    from shared.auth.tokens import TokenValidator
    from shared.policy.authorizer import Authorizer
    from shared.policy.tenant_policies import _PolicyCache
    from shared.tenants.repository import TenantDirectory

    _timed_bridge(adapter)
    _async_timed(RequestIdMiddleware, "__call__", "asgi")
    _timed(security, "authenticated", "authenticated")
    _timed(security, "authorize", "authorize")
    _timed(TokenValidator, "validate", "token.validate")
    _timed(TenantDirectory, "resolve", "tenant.resolve")
    _timed(Authorizer, "decide", "cedar.decide")
    _timed(_PolicyCache, "get", "policy.texts")
    _timed(PostgresAuditStore, "record", "audit.record")
    _timed_context(ConnectionPool, "connection", "db.tx")
    _timed(ConnectionPool, "getconn", "db.getconn")
    _timed(psycopg.Transaction, "__enter__", "db.begin")
    _timed(psycopg.Transaction, "__exit__", "db.commit")
    _timed(psycopg.Cursor, "execute", "db.stmt")


def _async_timed(owner: Any, attribute: str, name: str) -> None:
    original = getattr(owner, attribute)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with span(name):
            return await original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


def dump(path: Path) -> None:
    """Write every request's spans as JSON: {request id: [[span path, wall ms, thread CPU ms], ...]}."""
    with _lock:
        path.write_text(json.dumps(_records))
