# intent_ref: platform.database
"""The request's transaction, from one dependency: a route takes `TenantConnection` (the caller's tenant) or
`ControlConnection` (the control plane) and commits by returning, rolls back by raising (ADR 0039).

The transaction opens after the route's permission check (its first dependency), so a caller without the role
borrows nothing; it commits once the route has returned and its answer is rendered, before a byte is sent, so a
failed commit answers with a problem, never with a success. Routes that must commit before they call something
else (the orchestration client, a remote store) and the streams that wait between reads take their transactions
in the services they call instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import psycopg
from fastapi import Depends, Request
from psycopg.rows import DictRow
from starlette.concurrency import run_in_threadpool

from shared.api.permissions import permission_checked
from shared.api.security import RequestContext, authenticated
from shared.db.session import request_transaction


async def _run(call: Any) -> Any:
    # Shielded: a request cancelled (its client gone) while a step runs still learns the step's outcome, so a
    # borrowed connection is always handed back, a commit is never taken for a rollback, and deferred work runs.
    with anyio.CancelScope(shield=True):
        return await run_in_threadpool(call)


def _after_the_permission_check(request: Request) -> None:
    if not permission_checked(request):
        # A route's mistake, caught by its first test: it would borrow before the caller is known to be allowed.
        raise RuntimeError("a route takes its transaction after its permission check, its first dependency")


async def tenant_connection(
    request: Request, context: Annotated[RequestContext, Depends(authenticated)]
) -> AsyncIterator[psycopg.Connection[DictRow]]:
    """The caller's tenant transaction, for the route's whole body."""
    _after_the_permission_check(request)
    async with request_transaction(context.tenant.id, _run) as conn:
        yield conn


async def control_connection(request: Request) -> AsyncIterator[psycopg.Connection[DictRow]]:
    """A control-plane transaction (every tenant row, no tenant's data), for the route's whole body."""
    _after_the_permission_check(request)
    async with request_transaction(None, _run) as conn:
        yield conn


# scope="function": ended when the route returns, before the answer is sent (the default waits until it is sent).
TenantConnection = Annotated[psycopg.Connection[DictRow], Depends(tenant_connection, scope="function")]
ControlConnection = Annotated[psycopg.Connection[DictRow], Depends(control_connection, scope="function")]
