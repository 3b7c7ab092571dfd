# intent_ref: platform.execution
"""A tenant's places in a worker process: at most TENANT_ADMITTED of its items at once, another tenant's places its
own, and a wait for a place that is cancelled (its batch's hold ended) keeps none (ADR 0048)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from shared.engine.module_threads import TENANT_ADMITTED, tenant_place


async def _take(tenant: uuid.UUID, stack: contextlib.AsyncExitStack, count: int) -> None:
    for _ in range(count):
        await stack.enter_async_context(tenant_place(tenant))


async def _gets_a_place(tenant: uuid.UUID, within_s: float = 0.1) -> bool:
    try:
        async with asyncio.timeout(within_s):
            async with tenant_place(tenant):
                return True
    except TimeoutError:
        return False


def test_a_tenant_holds_at_most_its_places_and_another_tenants_are_its_own() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        tenant, other = uuid.uuid4(), uuid.uuid4()
        async with contextlib.AsyncExitStack() as stack:
            await _take(tenant, stack, TENANT_ADMITTED)
            full = await _gets_a_place(tenant)
            others = await _gets_a_place(other)
        return full, others, await _gets_a_place(tenant)

    full, others, after = asyncio.run(scenario())
    assert full is False  # the next item of the tenant waits
    assert others is True
    assert after is True  # the places came back with the block


def test_a_place_that_comes_free_goes_to_the_item_waiting_for_it() -> None:
    async def scenario() -> bool:
        tenant = uuid.uuid4()
        stack = contextlib.AsyncExitStack()
        await _take(tenant, stack, TENANT_ADMITTED)
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(stack.aclose()))
        return await _gets_a_place(tenant, within_s=5.0)

    assert asyncio.run(scenario()) is True


def test_waits_cancelled_keep_no_place() -> None:
    async def scenario() -> int:
        tenant = uuid.uuid4()
        async with contextlib.AsyncExitStack() as stack:
            await _take(tenant, stack, TENANT_ADMITTED)
            waiting = [asyncio.ensure_future(_gets_a_place(tenant, within_s=30.0)) for _ in range(3)]
            await asyncio.sleep(0.02)
            for wait in waiting:
                wait.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        async with contextlib.AsyncExitStack() as stack:
            taken = 0
            while taken <= TENANT_ADMITTED and await _gets_a_place_kept(tenant, stack):
                taken += 1
            return taken

    assert asyncio.run(scenario()) == TENANT_ADMITTED


async def _gets_a_place_kept(tenant: uuid.UUID, stack: contextlib.AsyncExitStack) -> bool:
    try:
        async with asyncio.timeout(0.05):
            await stack.enter_async_context(tenant_place(tenant))
            return True
    except TimeoutError:
        return False
