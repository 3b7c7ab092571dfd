# intent_ref: platform.execution
"""The intent orchestrator on the devhost's DurableHost, in-process on the session Postgres, with test activities."""

# Each test runs one host (its own task hub) on a fresh event loop. The test dispatch_steps runs each step attempt as
# its parameters say and raises the verdict event, as a module worker would; its calls are recorded to a file, so
# overlap and order are proved from recorded timestamps. The test activities record every bookkeeping write.

from __future__ import annotations

import asyncio
import json
import sys
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
from shared.engine.protocol import ORCHESTRATOR
from tests.e2e.durable_support import serve_durable_host, wait_for_status

pytestmark = pytest.mark.e2e

EXECUTION_APP = PROJECT_ROOT / "tests" / "execution_app"


@lru_cache(maxsize=1)
def execution_index() -> FunctionIndex:
    """The test app's index; cached because get_functions() may run only once per app object."""
    return load_function_app(EXECUTION_APP / "function_app.py")


@dataclass
class Harness:
    """A running DurableHost, the SDK client and the folder where the test activities record calls and progress."""

    client: df.DurableOrchestrationClient
    state_dir: Path

    async def start(self, steps: list[dict[str, Any]], inputs: dict[str, Any] | None = None) -> str:
        execution_id = uuid.uuid4().hex
        request = {
            "execution_id": execution_id,
            "tenant_id": "t-1",
            "definition": {"steps": steps},
            "inputs": inputs or {},
        }
        return str(await self.client.start_new(ORCHESTRATOR, execution_id, request))

    async def wait(
        self, instance_id: str, until: Callable[[DurableOrchestrationStatus], bool] | None = None, timeout: float = 15.0
    ) -> DurableOrchestrationStatus:
        """Poll get_status until `until` holds (default: a terminal status); fail at the deadline."""
        return await wait_for_status(self.client, instance_id, until, timeout)

    async def wait_for_steps(self, instance_id: str, **states: str) -> dict[str, Any]:
        """Wait until the custom status shows each named step in the given state; return that status."""

        def holds(status: DurableOrchestrationStatus) -> bool:
            steps = custom(status).get("steps", {})
            return all(steps.get(step, {}).get("state") == state for step, state in states.items())

        return custom(await self.wait(instance_id, holds))

    def calls(self) -> list[dict[str, Any]]:
        """The test attempts' records: a start and an end line per step attempt (run or compensation)."""
        return self._lines("calls.jsonl")

    def progress(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The test activities' records, in the order written; only those of `kind` if given."""
        return [entry for entry in self._lines("progress.jsonl") if kind is None or entry["kind"] == kind]

    def _lines(self, name: str) -> list[dict[str, Any]]:
        path = self.state_dir / name
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
            async with serve_durable_host(
                execution_index(), EXECUTION_APP, pg.owner_url, tmp_path, hub, poll_interval=0.05
            ) as served:
                invoker = served.host._ctx.invoker
                if invoker.durable_binding is None:
                    # dispatch_steps's durable_client_input: DevHost fills it for every trigger; do the same here.
                    invoker.durable_binding = served.host.client_binding_json
                await scenario(Harness(served.client, tmp_path))
                # Let attempts still out (e.g. one that timed out) end and raise their events on this loop, before
                # the SDK's module-global session is closed.
                await sys.modules["execution_test_steps"].drain()
                await served.host.wait_idle()

        asyncio.run(main())

    yield run


def span(calls: list[dict[str, Any]], step: str, attempt: int = 1) -> tuple[float, float]:
    """When a step's (non-compensation) attempt started and ended, from the test attempts' records."""
    mine = [c for c in calls if c["step_id"] == step and c["attempt"] == attempt and not c["compensation"]]
    return (next(c["at"] for c in mine if c["event"] == "start"), next(c["at"] for c in mine if c["event"] == "end"))


def test_diamond_runs_in_parallel_resolves_references_and_skips_by_when(execution: Callable[[Scenario], None]) -> None:
    steps = [
        {"id": "a", "action": "make", "value": "${inputs.version}"},
        {"id": "b", "action": "left", "depends_on": ["a"], "from_a": "${steps.a.output.echo.value}", "gate": "mid"},
        {"id": "c", "action": "right", "depends_on": ["a"], "tag": "v-${steps.a.output.echo.value}", "gate": "mid"},
        {"id": "prod-only", "action": "x", "depends_on": ["a"], "when": "${inputs.env} == 'prod'"},
        {
            "id": "d",
            "action": "join",
            "depends_on": ["b", "c", "prod-only"],
            "b": "${steps.b.output.echo.from_a}",
            "c": "${steps.c.output.echo.tag}",
            "skipped": "${steps.prod-only.output}",
        },
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
            "a": "succeeded",
            "b": "succeeded",
            "c": "succeeded",
            "prod-only": "skipped",
            "d": "succeeded",
        }

    execution(scenario)


def test_retry_after_failures_then_success_with_visible_attempts(execution: Callable[[Scenario], None]) -> None:
    steps = [
        {
            "id": "flaky",
            "action": "x",
            "fail_times": 2,
            "retry": {"max_attempts": 3, "initial_interval_s": 0.4, "backoff": 1.0},
        }
    ]

    async def scenario(h: Harness) -> None:
        instance = await h.start(steps)
        retrying = (await h.wait_for_steps(instance, flaky="retrying"))["steps"]["flaky"]
        assert retrying["max_attempts"] == 3 and retrying["next_attempt"] == retrying["attempt"] + 1
        assert "failed on attempt" in retrying["error"] and retrying["retry_at"]
        result = output(await h.wait(instance))
        assert result == {
            "status": "succeeded",
            "outputs": {"flaky": {"echo": {"fail_times": 2}, "attempt": 3}},
            "skipped": [],
        }
        starts = [c for c in h.calls() if c["event"] == "start"]
        assert [c["attempt"] for c in starts] == [1, 2, 3]
        # The pause before each retry is a durable timer of initial_interval_s.
        assert starts[1]["at"] - starts[0]["at"] >= 0.35 and starts[2]["at"] - starts[1]["at"] >= 0.35
        retries = [(r["attempt"], r["next_attempt"], r["max_attempts"]) for r in h.progress("retrying")]
        assert retries == [(1, 2, 3), (2, 3, 3)]
        final = custom(await h.wait(instance))
        assert final["steps"]["flaky"] == {"state": "succeeded", "attempt": 3}

    execution(scenario)


def test_timeout_is_a_durable_timer_racing_the_step(execution: Callable[[Scenario], None]) -> None:
    steps = [{"id": "slow", "action": "x", "gate": "slow", "timeout_s": 1}, {"id": "next", "action": "x"}]

    async def scenario(h: Harness) -> None:
        started = time.monotonic()
        instance = await h.start(steps)
        try:
            status = await h.wait(instance)
        finally:
            h.open_gate("slow")  # release the abandoned attempt
        result = output(status)
        assert time.monotonic() - started >= 1.0
        assert result["status"] == "failed" and result["failed_step"] == "slow"
        assert "timed out after 1 s" in result["error"] and result["compensated"] == []
        # The timer won: the attempt was settled as timed out, before the step's own verdict could arrive.
        settled = h.progress("settle")
        assert [(s["step_id"], s["phase"], s["attempt"], s["ok"], s["state"]) for s in settled] == [
            ("slow", "run", 1, False, "timed_out")
        ]
        slow_end = [c["at"] for c in h.calls() if c["step_id"] == "slow" and c["event"] == "end"]
        assert not slow_end or slow_end[0] > settled[0]["at"]
        assert "next" not in {c["step_id"] for c in h.calls()}
        final = custom(status)
        assert final["status"] == "failed" and final["steps"]["next"] == {"state": "pending"}
        assert final["steps"]["slow"]["state"] == "failed"

    execution(scenario)


def test_a_timed_out_attempt_is_retried_and_its_late_verdict_ignored(execution: Callable[[Scenario], None]) -> None:
    steps = [
        {
            "id": "nap",
            "action": "x",
            # Attempt 1 ends 1.5 s past its timeout: after attempt 2 starts (its timeout counts from its recorded
            # start, rules 10, so the retry starts later by the time the dispatch's answer took: 0.8 s of margin was
            # not always enough on a loaded machine) and well before attempt 2 times out.
            "sleep": 4.5,
            "timeout_s": 3,
            "retry": {"max_attempts": 2, "initial_interval_s": 0.1},
        }
    ]

    async def scenario(h: Harness) -> None:
        instance = await h.start(steps)
        result = output(await h.wait(instance))
        assert result["status"] == "failed" and result["failed_step"] == "nap"
        assert result["error"] == "step nap timed out after 3 s"
        settles = h.progress("settle")
        assert [(s["attempt"], s["ok"], s["state"]) for s in settles] == [
            (1, False, "timed_out"),
            (2, False, "timed_out"),
        ]
        # Attempt 1's own (successful) verdict came while attempt 2 ran: it did not count for attempt 2.
        starts = {c["attempt"]: c["at"] for c in h.calls() if c["event"] == "start"}
        first_end = next(c["at"] for c in h.calls() if c["attempt"] == 1 and c["event"] == "end")
        assert starts[1] < starts[2] < first_end < settles[1]["at"]
        assert custom(await h.wait(instance))["steps"]["nap"]["state"] == "failed"

    execution(scenario)


def test_final_failure_waits_for_running_steps_then_compensates_in_reverse_order(
    execution: Callable[[Scenario], None],
) -> None:
    steps = [
        {
            "id": "a",
            "action": "create",
            "compensate": {"action": "undo-a", "what": "${steps.a.output.echo.name}"},
            "name": "thing-a",
        },
        {
            "id": "b",
            "action": "create",
            "depends_on": ["a"],
            "sleep": 1.2,
            "compensate": {"action": "undo-b", "gate": "undo"},
        },
        {"id": "c", "action": "create", "depends_on": ["a"]},
        {
            "id": "boom",
            "action": "break",
            "depends_on": ["a"],
            "fail": True,
            "retry": {"max_attempts": 2, "initial_interval_s": 0.1},
        },
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
        assert states == {
            "a": "compensated",
            "b": "compensated",
            "c": "succeeded",
            "boom": "failed",
            "after": "pending",
        }
        assert custom(status)["status"] == "failed"

    execution(scenario)


def test_cancel_lets_running_work_end_starts_nothing_new_and_compensates_in_reverse_order(
    execution: Callable[[Scenario], None],
) -> None:
    steps = [
        {
            "id": "a",
            "action": "create",
            "compensate": {"action": "undo-a", "what": "${steps.a.output.echo.name}"},
            "name": "thing-a",
        },
        {"id": "b", "action": "create", "depends_on": ["a"], "gate": "hold", "compensate": {"action": "undo-b"}},
        {"id": "c", "action": "create", "depends_on": ["a"]},
        {"id": "d", "action": "create", "depends_on": ["b", "c"], "compensate": {"action": "undo-d"}},
    ]

    async def scenario(h: Harness) -> None:
        instance = await h.start(steps)
        await h.wait_for_steps(instance, a="succeeded", b="running", c="succeeded", d="pending")
        await h.client.raise_event(instance, "cancel", {})
        cancelled_at = time.time()
        h.open_gate("hold")
        status = await h.wait(instance)
        result = output(status)
        assert result == {
            "status": "cancelled",
            "failed_step": None,
            "error": "cancelled",
            "compensated": ["b", "a"],
            "compensation_failed": {},
        }
        calls = h.calls()
        # b was out when the cancel came: it was let finish (and so is undone), and d never started.
        assert span(calls, "b")[1] > cancelled_at
        assert "d" not in {c["step_id"] for c in calls}
        undo = [(c["step_id"], c["action"], c["params"]) for c in calls if c["compensation"] and c["event"] == "start"]
        assert undo == [("b", "undo-b", {}), ("a", "undo-a", {"what": "thing-a"})]
        final = custom(status)
        assert final["status"] == "cancelled"
        assert {step: s["state"] for step, s in final["steps"].items()} == {
            "a": "compensated",
            "b": "compensated",
            "c": "succeeded",
            "d": "pending",
        }
        assert [r["status"] for r in h.progress("execution")][-2:] == ["compensating", "cancelled"]

    execution(scenario)
