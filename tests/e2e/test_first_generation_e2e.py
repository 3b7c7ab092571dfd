# intent_ref: platform.execution
"""The first-generation orchestrator (ADR 0025) on a devhost still runs an execution started before the upgrade to its
end: levels, built-in module work, a wait, a skip by `when`, and a failure whose completed steps are compensated."""

# An execution in flight at the upgrade is a recorded row whose orchestration runs under the old name with the old
# input. The test makes one the way the start path did then: the row through the start path's own writes, then the
# orchestration started under `intent_execution_orchestrator` through the devhost's durable API, and follows it to its
# end through the API, as any execution is followed.

from __future__ import annotations

import uuid
from typing import Any

import azure.durable_functions as df
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from psycopg_pool import ConnectionPool

from orchestrations.intent_execution_v1 import ORCHESTRATOR_V1
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine.start import StartRequest, start_execution
from shared.tenants.repository import get_tenant
from tests.e2e.durable_support import wait_for_status, with_client
from tests.e2e.test_execution_sweeper_e2e import _tenant_id, app_pool
from tests.e2e.test_executions_e2e import (
    Platform,
    SideEffects,
    create_intent,
    detail,
    follow,
    http,
    platform,
    pytestmark,
    side_effects,
    steps_of,
)

__all__ = ["app_pool", "platform", "pytestmark", "side_effects"]

TASK_HUB = "ExecutionsE2E"  # the platform fixture's hub
FIRST_GENERATION_INPUT = ("execution_id", "tenant_id", "definition", "inputs", "plan", "reused")
"""What the first generation reads from its input (its docstring); later start inputs only added keys."""


def start_first_generation(
    platform: Platform, pool: ConnectionPool[Any], pg: Any, intent_id: str, given: dict[str, Any] | None = None
) -> str:
    """Record the execution as the start path does, then start its orchestration under the first generation's name
    with the input that generation takes, as a start before the upgrade did; answers the execution id."""
    tenant_id = _tenant_id(pg, "contoso")
    with tenant_transaction(tenant_id, pool=pool) as conn:
        tenant = get_tenant(conn, tenant_id)
        assert tenant is not None
        recorded = start_execution(
            conn,
            tenant.facts(),
            StartRequest(
                intent_id=uuid.UUID(intent_id),
                input=given or {},
                requester=Requester("e2e", frozenset(), app_only=False),
            ),
            max_concurrent=1000,
            authorize=lambda _item: None,
        )
    assert recorded.orchestration_input is not None
    execution_id = str(recorded.execution.id)
    old_input = {key: recorded.orchestration_input[key] for key in FIRST_GENERATION_INPUT}

    async def launch(client: df.DurableOrchestrationClient) -> Any:
        return await client.start_new(ORCHESTRATOR_V1, execution_id, old_input)

    assert with_client(platform.base, TASK_HUB, launch, platform.host.host_key) == execution_id
    return execution_id


def orchestration(platform: Platform, execution_id: str) -> DurableOrchestrationStatus:
    """The instance's final status as the durable API reports it (its name, runtime status and output)."""

    async def ended(client: df.DurableOrchestrationClient) -> DurableOrchestrationStatus:
        return await wait_for_status(client, execution_id, timeout=30)

    return with_client(platform.base, TASK_HUB, ended, platform.host.host_key)


def test_the_first_generation_runs_levels_a_wait_and_a_skip_to_success(
    platform: Platform, app_pool: ConnectionPool[Any], pg: Any
) -> None:
    intent = create_intent(
        platform,
        [
            {"id": "emit", "action": "event.emit", "type": "e2e.first-generation", "data": {"env": "${inputs.env}"}},
            {"id": "pause", "action": "wait", "seconds": 0.2},
            {
                "id": "write",
                "action": "artifact.write",
                "depends_on": ["emit", "pause"],
                "name": "first-generation.json",
                "content": {"env": "${inputs.env}"},
            },
            {
                "id": "prod-only",
                "action": "event.emit",
                "type": "e2e.prod",
                "depends_on": ["emit"],
                "when": "${inputs.env} == 'prod'",
            },
        ],
        inputs={"type": "object", "properties": {"env": {"type": "string"}}},
    )
    execution_id = start_first_generation(platform, app_pool, pg, intent, {"env": "dev"})

    status, events = follow(platform, execution_id, timeout=30)
    assert status == "succeeded", [(e["type"], e["step"], e.get("data")) for e in events]
    ran = orchestration(platform, execution_id)
    assert ran.name == ORCHESTRATOR_V1
    assert ran.runtime_status == df.OrchestrationRuntimeStatus.Completed
    result = ran.output
    assert result["status"] == "succeeded" and result["skipped"] == ["prod-only"]
    assert set(result["outputs"]) == {"emit", "pause", "write"}
    assert "waited_until" in result["outputs"]["pause"]

    steps = steps_of(detail(platform, execution_id))
    assert {step: row["state"] for step, row in steps.items()} == {
        "emit": "succeeded",
        "pause": "succeeded",
        "write": "succeeded",
        "prod-only": "skipped",
    }
    assert steps["prod-only"]["attempts"] == []
    # The second level starts only after both of the first have ended.
    write_started = steps["write"]["attempts"][0]["started_at"]
    assert all(write_started >= steps[step]["attempts"][0]["finished_at"] for step in ("emit", "pause"))
    types = [event["type"] for event in events]
    assert types[0] == "execution_started" and types[-1] == "execution_completed"
    assert [e["step"] for e in events if e["type"] == "step_skipped"] == ["prod-only"]
    assert sorted(e["step"] for e in events if e["type"] == "step_completed") == ["emit", "pause", "write"]


def test_the_first_generation_compensates_completed_steps_when_a_step_fails(
    platform: Platform, side_effects: SideEffects, app_pool: ConnectionPool[Any], pg: Any
) -> None:
    tag = uuid.uuid4().hex[:6]
    intent = create_intent(
        platform,
        [
            {
                "id": "prepare",
                "action": "artifact.write",
                "name": f"prepare-{tag}.json",
                "content": {"ok": True},
                "compensate": http(side_effects, f"undo-prepare-{tag}"),
            },
            {
                "id": "announce",
                "action": "event.emit",
                "type": "e2e.first-generation",
                "depends_on": ["prepare"],
                "compensate": http(side_effects, f"undo-announce-{tag}"),
            },
            {"id": "deploy", **http(side_effects, f"deploy-{tag}", fail_times=99), "depends_on": ["announce"]},
            {"id": "verify", **http(side_effects, f"verify-{tag}"), "depends_on": ["deploy"]},
        ],
    )
    execution_id = start_first_generation(platform, app_pool, pg, intent)

    status, events = follow(platform, execution_id, timeout=30)
    assert status == "failed", [(e["type"], e["step"], e.get("data")) for e in events]
    ran = orchestration(platform, execution_id)
    assert ran.name == ORCHESTRATOR_V1
    assert ran.output["status"] == "failed" and ran.output["failed_step"] == "deploy"
    assert ran.output["compensated"] == ["announce", "prepare"] and ran.output["compensation_failed"] == {}

    # Each compensation ran once, the later-completed step's first; nothing ran after the failure.
    (announce_undo,) = side_effects.named(f"undo-announce-{tag}")
    (prepare_undo,) = side_effects.named(f"undo-prepare-{tag}")
    assert announce_undo.started < prepare_undo.started
    assert len(side_effects.named(f"deploy-{tag}")) == 1 and side_effects.named(f"verify-{tag}") == []
    types = [event["type"] for event in events]
    assert types.index("execution_compensating") < types.index("compensation_started")
    assert [e["step"] for e in events if e["type"] == "compensation_completed"] == ["announce", "prepare"]
    assert types[-1] == "execution_failed"

    execution = detail(platform, execution_id)
    assert execution["output"]["failed_step"] == "deploy"
    assert execution["output"]["compensated"] == ["announce", "prepare"]
    steps = steps_of(execution)
    assert steps["deploy"]["state"] == "failed" and steps["verify"]["attempts"] == []
