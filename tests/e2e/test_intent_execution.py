# intent_ref: platform.execution
"""The intent orchestrator on the devhost's DurableHost, in-process on the session Postgres, with a test run_step.

Each test runs one host (its own task hub) on a fresh event loop; run_step's behaviour comes from step parameters
and its calls are recorded to a file, so overlap and order are proved from recorded timestamps.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus

from devhost.child import PROJECT_ROOT
from devhost.loader import FunctionIndex, load_function_app
from tests.e2e.durable_support import serve_durable_host, wait_for_status

pytestmark = pytest.mark.e2e

EXECUTION_APP = PROJECT_ROOT / "tests" / "execution_app"
ORCHESTRATOR = "intent_execution_orchestrator"


@lru_cache(maxsize=1)
def execution_index() -> FunctionIndex:
    """The test app's index; cached because get_functions() may run only once per app object."""
    return load_function_app(EXECUTION_APP / "function_app.py")


@dataclass
class Harness:
    """A running DurableHost, the SDK client and the folder where run_step records its calls."""

    client: df.DurableOrchestrationClient
    state_dir: Path

    async def start(self, steps: list[dict[str, Any]], inputs: dict[str, Any] | None = None) -> str:
        execution_id = uuid.uuid4().hex
        request = {"execution_id": execution_id, "tenant_id": "t-1", "definition": {"steps": steps},
                   "inputs": inputs or {}}
        return str(await self.client.start_new(ORCHESTRATOR, execution_id, request))

    async def wait(self, instance_id: str, until: Callable[[DurableOrchestrationStatus], bool] | None = None,
                   timeout: float = 15.0) -> DurableOrchestrationStatus:
        """Poll get_status until `until` holds (default: a terminal status); fail at the deadline."""
        return await wait_for_status(self.client, instance_id, until, timeout)

    async def wait_for_steps(self, instance_id: str, **states: str) -> dict[str, Any]:
        """Wait until the custom status shows each named step in the given state; return that status."""
        def holds(status: DurableOrchestrationStatus) -> bool:
            steps = custom(status).get("steps", {})
            return all(steps.get(step, {}).get("state") == state for step, state in states.items())
        return custom(await self.wait(instance_id, holds))

    def calls(self) -> list[dict[str, Any]]:
        path = self.state_dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def open_gate(self, gate: str) -> None:
        (self.state_dir / f"gate-{gate}").touch()


def custom(status: DurableOrchestrationStatus) -> dict[str, Any]:
    value = status.custom_status
    if isinstance(value, str):
        value = json.loads(value)
    return value or {}


def output(status: DurableOrchestrationStatus) -> dict[str, Any]:
    assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed, status.to_json()
    value = status.output
    return json.loads(value) if isinstance(value, str) else value


Scenario = Callable[[Harness], Awaitable[None]]


@pytest.fixture()
def execution(pg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Scenario], None]]:  # type: ignore[no-untyped-def]
    """Run a scenario against a fresh DurableHost serving the execution test app on a free port."""
    monkeypatch.setenv("EXECUTION_STATE_DIR", str(tmp_path))

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            hub = f"x{uuid.uuid4().hex[:12]}"
            async with serve_durable_host(execution_index(), EXECUTION_APP, pg.owner_url, tmp_path, hub,
                                          poll_interval=0.05) as served:
                await scenario(Harness(served.client, tmp_path))

        asyncio.run(main())

    yield run


def span(calls: list[dict[str, Any]], step: str, attempt: int = 1) -> tuple[float, float]:
    """When a step's (non-compensation) attempt started and ended, from run_step's records."""
    mine = [c for c in calls if c["step_id"] == step and c["attempt"] == attempt and not c["compensation"]]
    return (next(c["at"] for c in mine if c["event"] == "start"), next(c["at"] for c in mine if c["event"] == "end"))


def test_diamond_runs_in_parallel_resolves_references_and_skips_by_when(
        execution: Callable[[Scenario], None]) -> None:
    steps = [
        {"id": "a", "action": "make", "value": "${inputs.version}"},
        {"id": "b", "action": "left", "depends_on": ["a"], "from_a": "${steps.a.output.echo.value}", "gate": "mid"},
        {"id": "c", "action": "right", "depends_on": ["a"], "tag": "v-${steps.a.output.echo.value}", "gate": "mid"},
        {"id": "prod-only", "action": "x", "depends_on": ["a"], "when": "${inputs.env} == 'prod'"},
        {"id": "d", "action": "join", "depends_on": ["b", "c", "prod-only"],
         "b": "${steps.b.output.echo.from_a}", "c": "${steps.c.output.echo.tag}",
         "skipped": "${steps.prod-only.output}"},
    ]

    async def scenario(h: Harness) -> None:
        instance = await h.start(steps, {"version": 7, "env": "dev"})
        # Both middle steps are running at once (held by the same gate), the join still pending.
        status = await h.wait_for_steps(instance, a="succeeded", b="running", c="running", d="pending")
        assert status["status"] == "running" and status["steps"]["prod-only"] == {"state": "skipped"}
        h.open_gate("mid")
        result = output(await h.wait(instance))
        assert result["status"] == "succeeded" and result["skipped"] == ["prod-only"]
        assert result["outputs"]["b"]["echo"]["from_a"] == 7  # a whole-string reference keeps the JSON type
        assert result["outputs"]["d"]["echo"] == {"b": 7, "c": "v-7", "skipped": None}
        calls = h.calls()
        assert "prod-only" not in {c["step_id"] for c in calls}
        (b_start, b_end), (c_start, c_end) = span(calls, "b"), span(calls, "c")
        assert b_start < c_end and c_start < b_end
        assert span(calls, "d")[0] >= max(b_end, c_end)
        final = custom(await h.wait(instance))
        assert final["status"] == "succeeded"
        assert {step: s["state"] for step, s in final["steps"].items()} == {
            "a": "succeeded", "b": "succeeded", "c": "succeeded", "prod-only": "skipped", "d": "succeeded"}

    execution(scenario)


def test_retry_after_failures_then_success_with_visible_attempts(execution: Callable[[Scenario], None]) -> None:
    steps = [{"id": "flaky", "action": "x", "fail_times": 2,
              "retry": {"max_attempts": 3, "initial_interval_s": 0.4, "backoff": 1.0}}]

    async def scenario(h: Harness) -> None:
        instance = await h.start(steps)
        retrying = (await h.wait_for_steps(instance, flaky="retrying"))["steps"]["flaky"]
        assert retrying["max_attempts"] == 3 and retrying["next_attempt"] == retrying["attempt"] + 1
        assert "failed on attempt" in retrying["error"] and retrying["retry_at"]
        result = output(await h.wait(instance))
        assert result == {"status": "succeeded", "outputs": {"flaky": {"echo": {"fail_times": 2}, "attempt": 3}},
                          "skipped": []}
        starts = [c for c in h.calls() if c["event"] == "start"]
        assert [c["attempt"] for c in starts] == [1, 2, 3]
        # The pause before each retry is a durable timer of initial_interval_s.
        assert starts[1]["at"] - starts[0]["at"] >= 0.35 and starts[2]["at"] - starts[1]["at"] >= 0.35
        final = custom(await h.wait(instance))
        assert final["steps"]["flaky"] == {"state": "succeeded", "attempt": 3}

    execution(scenario)


def test_timeout_is_a_durable_timer_racing_the_step(execution: Callable[[Scenario], None]) -> None:
    steps = [{"id": "slow", "action": "x", "gate": "slow", "timeout_s": 1},
             {"id": "next", "action": "x"}]

    async def scenario(h: Harness) -> None:
        started = time.monotonic()
        instance = await h.start(steps)
        try:
            status = await h.wait(instance)
        finally:
            h.open_gate("slow")  # release the abandoned activity's thread
        result = output(status)
        assert time.monotonic() - started >= 1.0
        assert result["status"] == "failed" and result["failed_step"] == "slow"
        assert "timed out after 1 s" in result["error"] and result["compensated"] == []
        assert "next" not in {c["step_id"] for c in h.calls()}
        final = custom(status)
        assert final["status"] == "failed" and final["steps"]["next"] == {"state": "pending"}
        assert final["steps"]["slow"]["state"] == "failed"

    execution(scenario)


def test_final_failure_waits_for_running_steps_then_compensates_in_reverse_order(
        execution: Callable[[Scenario], None]) -> None:
    steps = [
        {"id": "a", "action": "create", "compensate": {"action": "undo-a", "what": "${steps.a.output.echo.name}"},
         "name": "thing-a"},
        {"id": "b", "action": "create", "depends_on": ["a"], "sleep": 1.2,
         "compensate": {"action": "undo-b", "gate": "undo"}},
        {"id": "c", "action": "create", "depends_on": ["a"]},
        {"id": "boom", "action": "break", "depends_on": ["a"], "fail": True,
         "retry": {"max_attempts": 2, "initial_interval_s": 0.1}},
        {"id": "after", "action": "create", "depends_on": ["b", "boom"], "compensate": {"action": "undo-after"}},
    ]

    async def scenario(h: Harness) -> None:
        instance = await h.start(steps)
        compensating = await h.wait_for_steps(instance, b="compensating", a="succeeded", boom="failed")
        assert compensating["status"] == "compensating"
        h.open_gate("undo")
        status = await h.wait(instance)
        result = output(status)
        assert result["status"] == "failed" and result["failed_step"] == "boom"
        assert "failed on attempt 2" in result["error"]
        # b was still running when boom failed: it was awaited, so it is undone too, before a (reverse order).
        assert result["compensated"] == ["b", "a"] and result["compensation_failed"] == {}
        calls = h.calls()
        boom_end = max(c["at"] for c in calls if c["step_id"] == "boom" and c["event"] == "end")
        assert span(calls, "b")[1] > boom_end
        undo = [(c["step_id"], c["action"], c["params"]) for c in calls if c["compensation"] and c["event"] == "start"]
        assert undo == [("b", "undo-b", {"gate": "undo"}), ("a", "undo-a", {"what": "thing-a"})]
        assert "after" not in {c["step_id"] for c in calls}
        assert [c["attempt"] for c in calls if c["step_id"] == "boom" and c["event"] == "start"] == [1, 2]
        states = {step: s["state"] for step, s in custom(status)["steps"].items()}
        assert states == {"a": "compensated", "b": "compensated", "c": "succeeded", "boom": "failed",
                          "after": "pending"}
        assert custom(status)["status"] == "failed"

    execution(scenario)
