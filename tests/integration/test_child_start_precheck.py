# intent_ref: platform.tenant-isolation
"""A child intent's start checks its input with no pooled connection held, as a direct start does: between a short
read, which decides the child once, and the transaction that records its step's attempt and starts it."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

import shared.db.session as session
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import start as start_module
from shared.engine import steps as store
from shared.engine.progress import record_progress
from shared.engine.steps import StepSeed
from shared.registry import service as registry
from shared.registry.schema_refs import evaluate_tenant_schema
from shared.tenants.models import Tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.pool_of_one_harness import (  # noqa: F401  # the fixture one_connection
    GATE_WAIT_S,
    INPUT_SCHEMA,
    Gate,
    one_connection,
    other_tenants_transaction_completes,
    tenant_record,
)

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
SCHEMA = INPUT_SCHEMA
VALID = {"a": ["p", "q", "q"]}
STEP = "s0"


class Parent:
    """A tenant with an intent whose input schema is costly (`child`) and a pending root execution whose intent.run
    step `s0` starts it, requested by a Deployer."""

    def __init__(self, api: ApiHarness) -> None:
        self.api = api
        self.key = f"children-{uuid.uuid4().hex[:6]}"
        self.tenant: Tenant = tenant_record(api.provision(self.key, allowed_modules=["wait", "intent"]).id)
        self.child = f"leaf-{uuid.uuid4().hex[:6]}"
        self.child_id = self._save(self.child, {"target": "staging", "inputs": SCHEMA, "steps": [_wait()]})
        top = self._save(
            f"top-{uuid.uuid4().hex[:6]}",
            {"target": "staging", "steps": [{"id": STEP, "action": "intent.run", "intent": self.child}]},
        )
        requester = Requester(f"{uuid.uuid4()}/{uuid.uuid4()}", frozenset({"Intent.Deployer"}), app_only=False)
        with tenant_transaction(self.tenant.id) as conn:
            self.root, _ = repo.create_execution(
                conn,
                execution_id=uuid.uuid4(),
                intent_id=top,
                intent_version=registry.get(conn, "intent", top).version.version,
                target="staging",
                input={},
                requester=requester,
            )
            store.seed_steps(conn, self.root.id, [StepSeed(STEP, "intent.run", 1)])

    def _save(self, name: str, definition: dict[str, Any]) -> uuid.UUID:
        body = {"name": name, "definition": definition}
        created = self.api.client.post("/api/v1/intents", json=body, headers=self.api.headers(self.key, AUTHOR))
        assert created.status_code == 201, created.text
        return uuid.UUID(created.json()["id"])

    def start_child(self, inputs: dict[str, Any] = VALID) -> dict[str, Any]:
        """What the dispatch's start of the root's step (attempt 1), with the child's `inputs`, answers."""
        answer: dict[str, Any] = record_progress(
            {
                "kind": "start_child",
                "execution_id": str(self.root.id),
                "tenant_id": str(self.tenant.id),
                "step_id": STEP,
                "attempt": 1,
                "params": {"intent": self.child, "inputs": inputs},
            }
        )
        return answer

    def children(self) -> list[uuid.UUID]:
        with tenant_transaction(self.tenant.id) as conn:
            rows = conn.execute(
                "SELECT id FROM app.executions WHERE parent_execution_id = %s", (self.root.id,)
            ).fetchall()
        return [row["id"] for row in rows]

    def decisions(self) -> list[dict[str, Any]]:
        """The audit records of the child's decision (read as the admin, bypassing RLS)."""
        with psycopg.connect(self.api.admin_url, dbname="quantum", row_factory=dict_row) as conn:
            return conn.execute(
                "SELECT * FROM app.audit_events WHERE request_id = %s", (f"{self.root.id}/{STEP}",)
            ).fetchall()


def _wait() -> dict[str, Any]:
    return {"id": "w", "action": "wait", "seconds": 1}


def _checks_recorded(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each input check made from now on, as whether a pooled connection was held while it ran."""
    held: list[bool] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        held.append(session.holding() is not None)
        return evaluate_tenant_schema(*args, **kwargs)

    monkeypatch.setattr(start_module, "evaluate_tenant_schema", recorded)
    return held


def test_a_child_start_holds_no_connection_while_its_input_is_checked_and_is_decided_once(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = Parent(api)
    other = tenant_record(api.provision(f"other-{uuid.uuid4().hex[:6]}").id)
    gate = Gate()
    monkeypatch.setattr(start_module, "evaluate_tenant_schema", gate.wrap(evaluate_tenant_schema))
    with ThreadPoolExecutor(1) as pool:
        answered = pool.submit(parent.start_child)
        try:
            assert gate.entered.wait(GATE_WAIT_S), "the child's input was never checked"
            completed = other_tenants_transaction_completes(other.id)
        finally:
            gate.released.set()
        answer = answered.result()
    assert completed, "another tenant's transaction found no connection while the child's input was checked"
    assert "execution_id" in answer, answer
    assert parent.children() == [uuid.UUID(answer["execution_id"])]
    assert answer["input"]["inputs"] == VALID
    assert gate.calls == 1  # checked once, outside the transactions, and not again inside the writing one
    # Decided in the read before the check, taken again by the writing transaction: one decision, one record.
    [record] = parent.decisions()
    assert (record["action"], record["decision"]) == ("intent.execute", "allow")


def test_a_replayed_child_start_finds_its_child_and_checks_nothing_inside_a_transaction(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = Parent(api)
    checks = _checks_recorded(monkeypatch)
    first = parent.start_child()
    assert checks == [False]
    # Run again (a re-executed activity): the same child by its key, its input rebuilt from the recorded one after a
    # check made before the writing transaction, once.
    again = parent.start_child()
    assert again == first
    assert parent.children() == [uuid.UUID(first["execution_id"])]
    assert checks == [False, False]
    # Each dispatch decided the child once.
    assert [record["decision"] for record in parent.decisions()] == ["allow", "allow"]


def test_a_version_saved_while_a_childs_input_is_checked_is_checked_again_and_decided_once(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = Parent(api)
    headers = api.headers(parent.key, AUTHOR)
    calls: list[tuple[Any, bool]] = []

    def save() -> None:
        """A version that takes nothing but objects with `b`, with the same target and labels."""
        item = api.client.get(f"/api/v1/intents/{parent.child_id}", headers=headers)
        body = {
            "name": parent.child,
            "definition": {"target": "staging", "inputs": {"type": "object", "required": ["b"]}, "steps": [_wait()]},
        }
        saved = api.client.put(
            f"/api/v1/intents/{parent.child_id}", json=body, headers={**headers, "If-Match": item.headers["ETag"]}
        )
        assert saved.status_code == 200, saved.text

    def save_meanwhile(schema: Any, instance: Any, **kwargs: Any) -> Any:
        calls.append((schema.get("required"), session.holding() is not None))
        if len(calls) == 1:
            with ThreadPoolExecutor(1) as saver:  # as another request would, outside this start's context
                saver.submit(save).result()
        return evaluate_tenant_schema(schema, instance, **kwargs)

    monkeypatch.setattr(start_module, "evaluate_tenant_schema", save_meanwhile)
    answer = parent.start_child()
    # Valid for the version checked first, not for the one saved meanwhile, which is the one that would run.
    verdict = answer["verdict"]
    assert (verdict["ok"], verdict["retryable"]) == (False, False), verdict
    assert verdict["error"] == f"child intent {parent.child} cannot start: the input has 1 problem"
    assert calls == [(None, False), (["b"], False)]
    assert parent.children() == []
    [record] = parent.decisions()  # the new version's resource is the same: not decided again
    assert record["decision"] == "allow"
