# intent_ref: platform.registry
"""A save's cycle walk made again under the tenant's `intent-runs` turn reads only what moved.

A save whose steps run an intent walks before the turn, then under it walks again when a head it looked up moved
meanwhile; versions never change, so the second walk takes the first's definitions and the answers of the names
that did not move (it read every definition again: 128 for 64)."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import pytest

from shared.db.session import tenant_transaction
from shared.policy.facts import TenantFacts
from shared.registry import service
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import AUTHOR, INTENTS, MODULES, intent_body, provision
from tests.integration.test_registry_cycle_lock_concurrent import while_held
from tests.integration.test_registry_save_cycles import _runs, reads  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration


def test_a_walk_made_again_reads_only_the_versions_that_moved(api: ApiHarness, reads: list[str]) -> None:  # noqa: F811
    tenant = provision(api, "review9-bound")
    facts = TenantFacts(api.tenants[tenant].id, "active", frozenset({"staging", "production"}), frozenset(MODULES))
    count = 70
    made: list[UUID] = []
    with tenant_transaction(api.tenants[tenant].id) as conn:
        for index in range(count):
            item = service.create(
                conn, "intent", intent_body(f"c-{index}"), item_id=uuid.uuid4(), tenant=facts, created_by="a"
            )
            made.append(item.head.id)

    def moving(conn: Any) -> object:  # c-0 moves, running an intent (none yet: nothing read): it takes the turn
        body = intent_body("c-0", _runs("s", "c-missing"))
        return service.update(conn, "intent", made[0], body, if_match=None, tenant=facts, created_by="a")

    top = intent_body("top", *(_runs(f"s{index}", f"c-{index}", depends_on=[]) for index in range(count)))
    reads.clear()
    answer, _ = while_held(
        api, tenant, moving, lambda: api.client.post(INTENTS, json=top, headers=api.headers(tenant, AUTHOR))
    )
    assert answer.status_code == 201, answer.text
    # The first walk reads MAX_CYCLE_INTENTS versions (c-0 to c-63); the second only c-0's new one.
    first = [f"c-{index}" for index in range(service.MAX_CYCLE_INTENTS)]
    assert reads == [*first, "c-0"], reads
