# intent_ref: platform.execution
"""The concurrent-execution quota counts root executions only (ADR 0014): a root's active children, however many,
neither refuse the tenant's next root nor show in the plan's quota headroom."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine.start import QuotaExceededError, Started, StartRequest
from shared.engine.start_service import begin
from shared.policy.authorizer import Decision, Resource
from shared.registry import service as registry
from shared.tenants.models import Tenant
from shared.tenants.repository import get_tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
QUOTA = 2
CHILDREN = 5


class Tenancy:
    """A tenant whose concurrent-execution quota is QUOTA, with a `leaf` intent (one wait) and a `parent` intent that
    runs it."""

    def __init__(self, api: ApiHarness) -> None:
        self.api = api
        self.key = f"roots-{uuid.uuid4().hex[:8]}"
        quotas = {"requests_per_minute": 100000, "burst": 10000, "max_concurrent_executions": QUOTA}
        handle = api.provision(self.key, quotas=quotas, allowed_modules=["wait", "intent"])
        with tenant_transaction(handle.id) as conn:
            tenant = get_tenant(conn, handle.id)
        assert tenant is not None
        self.tenant: Tenant = tenant
        self.requester = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False)
        self.leaf = self._save("leaf", [{"id": "pause", "action": "wait", "seconds": 1}])
        self.parent = self._save("parent", [{"id": "run", "action": "intent.run", "intent": "leaf"}])

    def _save(self, name: str, steps: list[dict[str, Any]]) -> uuid.UUID:
        body = {"name": name, "definition": {"target": "staging", "steps": steps}}
        created = self.api.client.post("/api/v1/intents", json=body, headers=self.api.headers(self.key, AUTHOR))
        assert created.status_code == 201, created.text
        return uuid.UUID(created.json()["id"])

    def start(self, intent_id: uuid.UUID) -> Started:
        """A root execution's start through the start service (pending: nothing launches it)."""
        return begin(
            self.tenant,
            lambda _conn: StartRequest(intent_id=intent_id, requester=self.requester),
            decide=_allow,
        )

    def children(self, root: repo.Execution, count: int, *, recorded_root: bool = True) -> None:
        """`count` active children of `root`, as its intent.run steps' starts leave them; `recorded_root` False: as
        children written before their root was recorded (migration 0036) were, with only their parent."""
        with tenant_transaction(self.tenant.id) as conn:
            version = registry.get(conn, "intent", self.leaf).version.version
            for index in range(count):
                repo.create_execution(
                    conn,
                    execution_id=uuid.uuid4(),
                    intent_id=self.leaf,
                    intent_version=version,
                    target="staging",
                    input={},
                    requester=self.requester,
                    parent_execution_id=root.id,
                    parent_step_id=f"run-{index}",
                    root_execution_id=root.id if recorded_root else None,
                )

    def headroom(self) -> dict[str, Any]:
        """The plan's quota headroom, as the caller reads it."""
        planned = self.api.client.post(
            f"/api/v1/intents/{self.leaf}/plan", headers=self.api.headers(self.key, ["Intent.Reader"])
        )
        assert planned.status_code == 200, planned.text
        quota: dict[str, Any] = planned.json()["quota"]
        return quota


def _allow(_action: str, _resource: Resource) -> Decision:
    return Decision(True, "permit", ())


def test_a_roots_active_children_leave_the_quota_to_the_tenants_roots(api: ApiHarness) -> None:
    tenancy = Tenancy(api)
    root = tenancy.start(tenancy.parent).execution
    tenancy.children(root, CHILDREN)
    tenancy.children(root, 1, recorded_root=False)  # a child from before roots were recorded is a child all the same
    assert tenancy.headroom() == {"max_concurrent_executions": QUOTA, "running_executions": 1, "headroom": 1}
    second = tenancy.start(tenancy.leaf)
    assert second.created and second.execution.status == "pending"
    assert tenancy.headroom() == {"max_concurrent_executions": QUOTA, "running_executions": 2, "headroom": 0}
    # The roots still use the quota up: a third is refused.
    with pytest.raises(QuotaExceededError):
        tenancy.start(tenancy.leaf)


def test_a_root_that_ended_frees_its_place_while_its_children_still_run(api: ApiHarness) -> None:
    tenancy = Tenancy(api)
    first, second = (tenancy.start(tenancy.parent).execution for _ in range(QUOTA))
    tenancy.children(first, CHILDREN)
    with pytest.raises(QuotaExceededError):
        tenancy.start(tenancy.leaf)
    with tenant_transaction(tenancy.tenant.id) as conn:
        repo.transition(conn, second.id, "cancelled")
    assert tenancy.start(tenancy.leaf).created
