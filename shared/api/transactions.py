# intent_ref: platform.database
"""The request's transaction, from one dependency: a route takes `TenantConnection` (the caller's tenant) or
`ControlConnection` (the control plane) and commits by returning, rolls back by raising (ADR 0039).

The transaction opens after the route's permission check (its first dependency), so a caller without the role
borrows nothing, and it commits when the route returns, before its answer is sent, so a failed commit answers with a
problem, never with a success. It is opened and ended on the worker thread that runs the route (the route class
wraps the endpoint, `in_route_transaction`): the route sees it as its own transaction (joins it, is refused a second
borrow of its pool), and a request crosses no more threads than the route itself does. Routes that must commit
before they call something else (the orchestration client, a remote store) and the streams that wait between reads
take their transactions in the services they call instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin
from uuid import UUID

import psycopg
from fastapi import Depends, Request
from fastapi.dependencies.utils import get_typed_signature
from fastapi.params import Depends as DependsParam
from psycopg.rows import DictRow

from shared.api.security import RequestContext, authenticated
from shared.db.session import platform_transaction, tenant_transaction

PERMITTED = "qp.permitted"
"""Set in the request's scope by its permission check once the caller may do the route's action at all."""


@dataclass(frozen=True)
class _Pending:
    """What the dependency resolves to: which transaction the route's wrapper opens around the route."""

    tenant_id: UUID | None  # None: the control plane's

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("a route takes its transaction through a route class that opens it (GuardedRoute)")


def _after_the_permission_check(request: Request) -> None:
    if PERMITTED not in request.scope:
        # A route's mistake, caught by its first test: it would borrow before the caller is known to be allowed.
        raise RuntimeError("a route takes its transaction after its permission check, its first dependency")


async def tenant_connection(request: Request, context: Annotated[RequestContext, Depends(authenticated)]) -> _Pending:
    """The caller's tenant transaction, for the route's whole body."""
    _after_the_permission_check(request)
    return _Pending(context.tenant.id)


async def control_connection(request: Request) -> _Pending:
    """A control-plane transaction (every tenant row, no tenant's data), for the route's whole body."""
    _after_the_permission_check(request)
    return _Pending(None)


TenantConnection = Annotated[psycopg.Connection[DictRow], Depends(tenant_connection)]
ControlConnection = Annotated[psycopg.Connection[DictRow], Depends(control_connection)]
_DEPENDENCIES = (tenant_connection, control_connection)
_WRAPPED = "__qp_route_transaction__"


def _transaction_parameter(annotation: Any) -> bool:
    if get_origin(annotation) is not Annotated:
        return False
    return any(isinstance(meta, DependsParam) and meta.dependency in _DEPENDENCIES for meta in get_args(annotation))


def in_route_transaction(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """`endpoint` with the transaction its `TenantConnection` or `ControlConnection` parameter names opened around
    its call, on the thread that runs it; `endpoint` itself when it takes none."""
    if getattr(endpoint, _WRAPPED, False):
        return endpoint  # a route copied with its endpoint (an included router's) keeps its one transaction
    names = [
        name
        for name, parameter in get_typed_signature(endpoint).parameters.items()
        if _transaction_parameter(parameter.annotation)
    ]
    if not names:
        return endpoint
    if len(names) > 1 or inspect.iscoroutinefunction(endpoint):
        # A coroutine would run its statements on the event loop; two transactions are two borrows of one pool.
        raise TypeError(f"{endpoint.__qualname__}: one route transaction, in a plain `def` route")
    name = names[0]

    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Any:
        pending = kwargs[name]
        assert isinstance(pending, _Pending)  # what the dependency gives
        opened = platform_transaction() if pending.tenant_id is None else tenant_transaction(pending.tenant_id)
        with opened as conn:
            kwargs[name] = conn
            return endpoint(*args, **kwargs)

    setattr(run, _WRAPPED, True)
    return run
