# intent_ref: platform.tenants
"""A stalled start whose tenant is erased between the sweeper's read of its input and its start: the orchestration
the sweeper started is terminated and purged, none outlives the tenant."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.api.durable import get_durable_client
from shared.engine import sweeper
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_erase_launch_race import _StartingDurable, _suspend, _tenant_with_intent
from tests.integration.test_erase_races import _erase
from tests.integration.test_execution_sweeper import _recorded
from tests.integration.test_offboarding import _tenant_row_counts

pytestmark = pytest.mark.integration


class _ErasedBeforeStart(_StartingDurable):
    """The orchestration side, on which `before_start` (the tenant's erasure) runs as a start is asked for, before the
    instance exists: the erasure's purge finds nothing to purge."""

    def __init__(self) -> None:
        super().__init__()
        self.before_start: Callable[[], None] | None = None

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any | None = None
    ) -> str:
        before, self.before_start = self.before_start, None
        if before is not None:
            before()
        return await super().start_new(orchestration_function_name, instance_id, client_input)


def test_a_stalled_start_relaunched_after_its_tenants_erasure_leaves_no_orchestration(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    # The sweeper read a stalled start's input, then the tenant was erased, then the sweeper started its
    # orchestration: that orchestration, its history holding the tenant's input, outlived the tenant.
    client = _ErasedBeforeStart()
    api.client.app.dependency_overrides[get_durable_client] = lambda: client  # type: ignore[attr-defined]
    try:
        tenant, intent_id = _tenant_with_intent(api, "erased-before-relaunch")
        # What a request that died between its commit and its launch leaves: no instance, a stale start claim.
        stalled, _ = _recorded(app_pool, tenant.id, intent_id)
        execution_id = str(stalled)

        def erase() -> None:
            _suspend(api, tenant)
            erased = _erase(api, tenant)
            assert erased.status_code == 200, erased.text

        client.before_start = erase
        result = asyncio.run(sweeper.sweep_tenant(tenant.id, client, pool=app_pool))
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]

    assert client.before_start is None  # the sweeper did start it, after the erasure
    assert result.started == 1
    assert _tenant_row_counts(api, tenant.id)["tenants"] == 0
    assert client.instances == {}
    assert client.purged == [execution_id]
