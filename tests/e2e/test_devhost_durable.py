# intent_ref: platform.devhost-durable
"""The local durable host against the SDK's own DurableOrchestrationClient, in-process, on a real Postgres.

Each test runs one DurableHost (its own task hub) on a fresh event loop and drives the conformance app's
orchestrators through the Durable HTTP API exactly as the SDK does in Azure.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import azure.durable_functions as df
import azure.functions as func
import psycopg
import pytest
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from azure.functions import meta

from devhost.durable import DurableHost
from devhost.durable.episode import Bookkeeping, Catalog, Episode, InstanceFacts, Message
from devhost.durable.protocol import EventType, ProtocolError, check_state, event
from devhost.invoker import Invoker
from tests.e2e.conformance_index import CONFORMANCE_APP, conformance_index
from tests.e2e.durable_support import serve_durable_host, wait_for_status

pytestmark = pytest.mark.e2e

Status = DurableOrchestrationStatus


@dataclass
class Harness:
    """A running DurableHost and the ways a test talks to it."""

    host: DurableHost
    client: df.DurableOrchestrationClient
    base_url: str
    hub: str
    owner_url: str
    state_dir: Path
    http: aiohttp.ClientSession

    async def wait(
        self, instance_id: str, until: Callable[[Status], bool] | None = None, timeout: float = 20.0
    ) -> Status:
        """Poll get_status until `until` holds (default: a terminal status); fail at the deadline."""
        return await wait_for_status(self.client, instance_id, until, timeout)

    async def run(self, name: str, value: Any = None, instance_id: str | None = None) -> Status:
        """Start an orchestration and wait for its end."""
        return await self.wait(await self.client.start_new(name, instance_id, value))

    async def history(self, instance_id: str) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(self.owner_url) as conn:
            cur = await conn.execute(
                "SELECT event FROM devhost_durable.history WHERE task_hub = %s AND instance_id = %s ORDER BY position",
                (self.hub, instance_id),
            )
            return [row[0] for row in await cur.fetchall()]

    async def inbox(self, instance_id: str) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(self.owner_url) as conn:
            cur = await conn.execute(
                "SELECT event FROM devhost_durable.inbox WHERE task_hub = %s AND instance_id = %s ORDER BY id",
                (self.hub, instance_id),
            )
            return [row[0] for row in await cur.fetchall()]

    def open_gate(self, gate: str) -> None:
        (self.state_dir / f"gate-{gate}").touch()


Scenario = Callable[[Harness], Awaitable[None]]


@pytest.fixture(params=[0, 2], ids=["functions-in-the-host", "two-worker-processes"])
def durable(
    pg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Callable[[Scenario], None]]:  # type: ignore[no-untyped-def]
    """Run a scenario against a fresh DurableHost served on a free port (both API prefixes mounted), its functions
    run in the host process and, again, in two worker processes."""
    monkeypatch.setenv("CONFORMANCE_STATE_DIR", str(tmp_path))

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            hub = f"t{uuid.uuid4().hex[:12]}"
            served_host = serve_durable_host(
                conformance_index(), CONFORMANCE_APP, pg.owner_url, tmp_path, hub, workers=request.param
            )
            async with served_host as served, aiohttp.ClientSession() as http:
                await scenario(Harness(served.host, served.client, served.base_url, hub, pg.owner_url, tmp_path, http))

        asyncio.run(main())

    yield run


def _events(history: list[dict[str, Any]], kind: EventType) -> list[dict[str, Any]]:
    return [e for e in history if e["EventType"] == kind]


# ---------------------------------------------------------------------------------------------- activities
def test_sequence_and_fan_out_complete_with_their_results(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        sequence, fan_out = await asyncio.gather(
            h.run("durable_sequence_orchestrator", {"name": "Tokyo"}),
            h.run("durable_fan_out_orchestrator", 6),
        )
        assert sequence.runtime_status == df.OrchestrationRuntimeStatus.Completed
        assert sequence.output == ["Hello Tokyo", "Hello Hello Tokyo"]
        # The SDK sends json.dumps(df_dumps(x)): the status input is that JSON *text*, as in Azure.
        assert sequence.input_ == '{"name": "Tokyo"}'
        assert fan_out.output == [1, 4, 9, 16, 25, 36]
        history = await h.history(fan_out.instance_id)
        scheduled = _events(history, EventType.TaskScheduled)
        assert [e["EventId"] for e in scheduled] == list(range(6))
        assert sorted(e["TaskScheduledId"] for e in _events(history, EventType.TaskCompleted)) == list(range(6))

    durable(scenario)


def test_status_api_codes_history_and_both_prefixes(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        done = await h.run("durable_sequence_orchestrator", {"name": "x"})
        waiting = await h.client.start_new("durable_approval_orchestrator")
        await h.wait(waiting, lambda s: s.custom_status == "waiting")
        for prefix in ("/durabletask", "/runtime/webhooks/durabletask"):
            async with h.http.get(f"{h.base_url}{prefix}/instances/{done.instance_id}") as resp:
                assert resp.status == 200
                assert (await resp.json())["runtimeStatus"] == "Completed"
            async with h.http.get(f"{h.base_url}{prefix}/instances/{waiting}") as resp:
                assert resp.status == 202
                assert resp.headers["Retry-After"] == "5"
            async with h.http.get(f"{h.base_url}{prefix}/instances/no-such-instance") as resp:
                assert resp.status == 404
        assert not await h.client.get_status("no-such-instance")

        status = await h.client.get_status(done.instance_id, show_history=True, show_history_output=True)
        events = status.historyEvents
        assert [e["EventType"] for e in events] == [
            "ExecutionStarted",
            "TaskCompleted",
            "TaskCompleted",
            "ExecutionCompleted",
        ]
        assert events[0]["FunctionName"] == "durable_sequence_orchestrator"
        assert events[1]["FunctionName"] == "durable_hello" and events[1]["Result"] == "Hello x"
        assert events[3]["OrchestrationStatus"] == "Completed"
        assert events[3]["Result"] == ["Hello x", "Hello Hello x"]
        without_output = await h.client.get_status(done.instance_id, show_history=True)
        assert "Result" not in without_output.historyEvents[1]

        async with h.http.get(f"{h.base_url}/durabletask/instances/{done.instance_id}?showInput=false") as resp:
            assert (await resp.json())["input"] is None

    durable(scenario)


# ---------------------------------------------------------------------------------------------- retries
def test_retry_succeeds_after_failures_and_reports_exhaustion(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        recovered, exhausted = await asyncio.gather(
            h.run("durable_retry_orchestrator", {"key": "r1", "fail_times": 2, "max_attempts": 3, "interval_ms": 200}),
            h.run("durable_retry_orchestrator", {"key": "r2", "fail_times": 9, "max_attempts": 2, "interval_ms": 200}),
        )
        assert recovered.output == {"result": "r1 ok on attempt 3"}
        error = exhausted.output["error"]
        assert error.startswith("Activity function 'durable_flaky' failed: ValueError: transient failure 2 of r2 \n ")
        assert (h.state_dir / "attempts-r2").read_text() == "2"  # no third attempt

        # DTFx RetryInterceptor layout: attempt, timer, attempt, timer (even after the last attempt), then the error.
        history = await h.history(exhausted.instance_id)
        ids = [
            (e["EventType"], e["EventId"])
            for e in history
            if e["EventType"] in (EventType.TaskScheduled, EventType.TimerCreated)
        ]
        assert ids == [
            (EventType.TaskScheduled, 0),
            (EventType.TimerCreated, 1),
            (EventType.TaskScheduled, 2),
            (EventType.TimerCreated, 3),
        ]
        first_timer = _events(history, EventType.TimerCreated)[0]
        first_failure = _events(history, EventType.TaskFailed)[0]
        waited = datetime.fromisoformat(first_timer["FireAt"]) - datetime.fromisoformat(first_failure["Timestamp"])
        assert waited >= timedelta(milliseconds=150)

    durable(scenario)


def test_retry_failure_and_completion_in_one_episode_keep_sequence_ids_aligned(
    durable: Callable[[Scenario], None],
) -> None:
    """§2.4: a retry's TaskFailed and another task's TaskCompleted delivered together must not misroute results."""

    async def scenario(h: Harness) -> None:
        instance_id = await h.client.start_new(
            "durable_retry_interleave_orchestrator", None, {"key": "mix", "gate": "mix", "interval_ms": 200}
        )
        await h.wait(instance_id, lambda s: s.custom_status == "scheduled")
        # Suspend so both results queue up, then resume: they are delivered in one episode.
        await h.client.suspend(instance_id, "batch the results")
        await h.wait(instance_id, lambda s: s.runtime_status == df.OrchestrationRuntimeStatus.Suspended)
        h.open_gate("mix")
        deadline = time.monotonic() + 20
        while len(await h.inbox(instance_id)) < 2:
            assert time.monotonic() < deadline, "the two activities did not both report"
            await asyncio.sleep(0.03)
        await h.client.resume(instance_id, "go")
        status = await h.wait(instance_id)
        assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed, status.output
        assert status.output == ["x", "Hello y", "mix ok on attempt 2"]
        history = await h.history(instance_id)
        batch = next(i for i, e in enumerate(history) if e["EventType"] == EventType.TaskFailed)
        assert history[batch + 1]["EventType"] == EventType.TaskCompleted  # really delivered together
        timer = _events(history, EventType.TimerCreated)[0]
        after = next(e for e in _events(history, EventType.TaskScheduled) if e["Name"] == "durable_hello")
        assert (timer["EventId"], after["EventId"]) == (2, 3)  # the retry timer's hidden id comes first

    durable(scenario)


# ---------------------------------------------------------------------------------------------- failures
def test_failing_orchestrator_is_failed_with_reason_and_custom_status(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        status = await h.run("durable_failing_orchestrator")
        assert status.runtime_status == df.OrchestrationRuntimeStatus.Failed
        assert status.output == "Orchestrator function 'durable_failing_orchestrator' failed: user bug"
        assert status.custom_status == "about to fail"
        async with h.http.get(
            f"{h.base_url}/durabletask/instances/{status.instance_id}?returnInternalServerErrorOnFailure=true"
        ) as resp:
            assert resp.status == 500
        history = await h.history(status.instance_id)
        assert _events(history, EventType.ExecutionCompleted)[0]["OrchestrationStatus"] == 3

    durable(scenario)


def test_nondeterminism_and_unsupported_actions_fail_the_instance(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        (h.state_dir / "choice-nd").write_text("durable_gated_echo")
        instance_id = await h.client.start_new(
            "durable_nondeterministic_orchestrator", None, {"key": "nd", "gate": "nd"}
        )
        deadline = time.monotonic() + 20
        while not _events(await h.history(instance_id), EventType.TaskScheduled):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.03)
        (h.state_dir / "choice-nd").write_text("durable_hello")  # the replay will schedule something else
        h.open_gate("nd")
        changed = await h.wait(instance_id)
        assert changed.runtime_status == df.OrchestrationRuntimeStatus.Failed
        assert "Non-Deterministic workflow detected" in changed.output
        assert "durable_gated_echo" in changed.output and "durable_hello" in changed.output

        entity = await h.run("durable_entity_orchestrator")
        assert entity.runtime_status == df.OrchestrationRuntimeStatus.Failed
        assert "does not support CallEntity actions" in entity.output

    durable(scenario)


def test_orchestrator_state_with_unknown_schema_or_action_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="schemaVersion"):
        check_state({"isDone": False, "actions": [[]]})
    with pytest.raises(ProtocolError, match="schemaVersion"):
        check_state({"isDone": False, "schemaVersion": 7, "actions": [[]]})
    facts = InstanceFacts("i", "e", "orch", None, None)
    started = Message(
        1,
        "e",
        event(
            EventType.ExecutionStarted,
            datetime.now(UTC),
            Name="orch",
            Version="",
            Input=None,
            OrchestrationInstance={"InstanceId": "i", "ExecutionId": "e"},
        ),
    )
    episode = Episode(
        facts=facts,
        past=[],
        messages=[started],
        book=Bookkeeping(),
        now=datetime.now(UTC),
        catalog=Catalog(orchestrators={"orch"}, activities=set()),
    )
    result = episode.finish(
        {"isDone": False, "schemaVersion": 2, "actions": [[{"actionType": 42}]]}, None, datetime.now(UTC)
    )
    assert result.status.value == "Failed"
    assert "unknown actionType 42" in (result.output_json or "")


# ---------------------------------------------------------------------------------------------- events and timers
@pytest.mark.filterwarnings("ignore:Potential duplicate Task completion:UserWarning")
def test_external_events_mirror_the_hosts_double_encoding(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        via_sdk = await h.client.start_new("durable_approval_orchestrator")
        raw = await h.client.start_new("durable_approval_orchestrator")
        for instance_id in (via_sdk, raw):
            await h.wait(instance_id, lambda s: s.custom_status == "waiting")
        # Raised twice while waiting: the first resolves the wait, the duplicate is harmless.
        await h.client.raise_event(via_sdk, "Approval", {"approved_by": "alice"})
        await h.client.raise_event(via_sdk, "Approval", {"approved_by": "mallory"})
        # Through sendEventPostUri with a raw JSON object the orchestrator gets the object itself.
        send_uri = h.client.create_http_management_payload(raw)["sendEventPostUri"].replace("{eventName}", "Approval")
        async with h.http.post(send_uri, data="hello", headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 400
        async with h.http.post(send_uri, json={"approved_by": "bob"}) as resp:
            assert resp.status == 202

        sdk_status, raw_status = await h.wait(via_sdk), await h.wait(raw)
        # A dict raised through the SDK arrives as JSON text, as in Azure (azure-functions-durable-python#295).
        assert sdk_status.output["approval"] == '{"approved_by": "alice"}'
        assert raw_status.output["approval"] == {"approved_by": "bob"}
        assert sdk_status.output["greeting"] == "Hello approver"
        assert sdk_status.custom_status == "waiting"  # the falsy {} set afterwards is never sent

        with pytest.raises(Exception, match="is gone"):
            await h.client.raise_event(via_sdk, "Approval", 1)
        with pytest.raises(Exception, match="No instance with ID"):
            await h.client.raise_event("no-such-instance", "Approval", 1)

    durable(scenario)


def test_timer_fires_at_its_time_and_loses_a_race_to_an_event(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        timer = await h.client.start_new("durable_timer_orchestrator", None, 0.5)
        event_wins = await h.client.start_new("durable_race_orchestrator", None, {"timeout_s": 30, "gate": "race"})
        timeout_wins = await h.client.start_new("durable_race_orchestrator", None, {"timeout_s": 0.3})
        await h.wait(event_wins, lambda s: s.custom_status == "racing")
        assert [e["EventType"] for e in await h.inbox(event_wins)] == [EventType.TimerFired]  # due in 30 s
        await h.client.raise_event(event_wins, "Go", "now")
        deadline = time.monotonic() + 20
        while not any(e.get("Name") == "durable_gated_echo" for e in await h.history(event_wins)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.03)
        # Still running, and the cancelled timer's pending TimerFired is gone.
        assert (await h.client.get_status(event_wins)).runtime_status == df.OrchestrationRuntimeStatus.Running
        assert await h.inbox(event_wins) == []
        h.open_gate("race")

        timed = await h.wait(timer)
        assert timed.runtime_status == df.OrchestrationRuntimeStatus.Completed
        fire_at = datetime.fromisoformat(timed.output["fire_at"])
        assert datetime.fromisoformat(timed.output["resumed_at"]) >= fire_at
        assert _events(await h.history(timer), EventType.TimerFired)[0]["TimerId"] == 0

        assert (await h.wait(event_wins)).output == 'event:"now":after'  # the event payload is JSON text
        assert (await h.wait(timeout_wins)).output == "timeout"
        assert not _events(await h.history(event_wins), EventType.TimerFired)

    durable(scenario)


# ---------------------------------------------------------------------------------------------- sub-orchestrations
def test_sub_orchestrations_succeed_fail_and_retry(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        parent = await h.run("durable_parent_orchestrator", {"value": 7, "key": "child"})
        assert parent.runtime_status == df.OrchestrationRuntimeStatus.Completed, parent.output
        assert parent.output["ok"] == {"input": 7, "squared": 49, "parent": parent.instance_id}
        assert parent.output["error"].startswith(
            "Orchestrator function 'durable_failing_child_orchestrator' failed: "
            "Activity function 'durable_fail' failed: ValueError: child boom"
        )
        assert parent.output["retried"] == "child ok on attempt 2"

        children = {s.instance_id: s for s in await h.client.get_status_all() if s.instance_id != parent.instance_id}
        by_name = {s.name: s for s in children.values()}
        first_child = by_name["durable_child_orchestrator"].instance_id
        execution_id, sequence = first_child.rsplit(":", 1)
        assert sequence == "0" and len(execution_id) == 32  # DTFx default: "<parent ExecutionId>:<id>"
        assert by_name["durable_failing_child_orchestrator"].runtime_status == df.OrchestrationRuntimeStatus.Failed
        flaky = sorted(
            (s for s in children.values() if s.name == "durable_flaky_child_orchestrator"),
            key=lambda s: int(s.instance_id.rsplit(":", 1)[1]),
        )
        assert [s.runtime_status.value for s in flaky] == ["Failed", "Completed"]  # one child per attempt

    durable(scenario)


def test_terminating_a_child_fails_the_parents_task(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        parent = await h.client.start_new("durable_supervisor_orchestrator", "boss")
        await h.wait("boss-child", lambda s: s.custom_status == "waiting")
        assert (await h.client.get_status("boss")).runtime_status == df.OrchestrationRuntimeStatus.Running
        await h.client.terminate("boss-child", "enough")
        status = await h.wait(parent)
        assert status.output == {"child_failed": "enough \n None"}  # Reason, then Details (none), as the SDK joins them

    durable(scenario)


def test_continue_as_new_starts_fresh_executions(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        status = await h.run("durable_counter_orchestrator", 0)
        assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed
        assert status.output == 3
        assert status.custom_status == {"count": 3}
        assert status.input_ == "3"  # the last execution's input
        history = await h.history(status.instance_id)
        assert len(_events(history, EventType.ExecutionStarted)) == 1  # only the final execution's history
        assert not _events(history, EventType.TaskScheduled)

    durable(scenario)


# ---------------------------------------------------------------------------------------------- control
def test_suspend_buffers_events_resume_delivers_them_terminate_ends(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        paused = await h.client.start_new("durable_approval_orchestrator")
        doomed = await h.client.start_new("durable_approval_orchestrator")
        for instance_id in (paused, doomed):
            await h.wait(instance_id, lambda s: s.custom_status == "waiting")

        await h.client.suspend(paused, "hold on")
        await h.client.raise_event(paused, "Approval", "while suspended")
        await h.host.wait_idle()
        status = await h.client.get_status(paused)
        assert status.runtime_status == df.OrchestrationRuntimeStatus.Suspended
        assert [e["Name"] for e in await h.inbox(paused)] == ["Approval"]  # buffered, not delivered
        await h.client.resume(paused, "carry on")
        resumed = await h.wait(paused)
        assert resumed.output["approval"] == '"while suspended"'  # a str raised via the SDK stays JSON text
        kinds = [e["EventType"] for e in await h.history(paused)]
        assert EventType.ExecutionSuspended in kinds and EventType.ExecutionResumed in kinds

        await h.client.terminate(doomed, "no longer needed")
        terminated = await h.wait(doomed)
        assert terminated.runtime_status == df.OrchestrationRuntimeStatus.Terminated
        assert terminated.output == "no longer needed"
        await h.client.terminate(doomed, "again")  # 410: accepted quietly by the SDK
        async with h.http.post(f"{h.base_url}/durabletask/instances/{doomed}/terminate?reason=x") as resp:
            assert resp.status == 410
        with pytest.raises(Exception, match="No instance with ID"):
            await h.client.suspend("no-such-instance", "x")

    durable(scenario)


def test_restart_and_purge(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        started_at = datetime.now(UTC) - timedelta(seconds=1)
        original = await h.run("durable_sequence_orchestrator", {"name": "again"})
        payload = await h.client.restart(original.instance_id)
        assert isinstance(payload, dict) and payload["id"] != original.instance_id  # the SDK returns the body
        copy = await h.wait(payload["id"])
        assert copy.output == original.output and copy.input_ == original.input_

        async def execution_id() -> str:
            started = _events(await h.history(original.instance_id), EventType.ExecutionStarted)
            return str(started[0]["OrchestrationInstance"]["ExecutionId"]) if started else ""

        first_execution = await execution_id()
        same = await h.client.restart(original.instance_id, restart_with_new_instance_id=False)
        assert same["id"] == original.instance_id
        deadline = time.monotonic() + 20
        while await execution_id() in ("", first_execution):
            assert time.monotonic() < deadline, "the restart did not start a new execution"
            await asyncio.sleep(0.03)
        assert (await h.wait(original.instance_id)).output == original.output

        waiting = await h.client.start_new("durable_approval_orchestrator")
        await h.wait(waiting, lambda s: s.custom_status == "waiting")
        with pytest.raises(Exception, match="409"):
            await h.client.restart(waiting, restart_with_new_instance_id=False)  # never replaces a running one
        with pytest.raises(Exception, match="412"):
            await h.client.purge_instance_history(waiting)  # only terminal instances can be purged

        purged = await h.client.purge_instance_history(copy.instance_id)
        assert purged.instances_deleted == 1
        assert not await h.client.get_status(copy.instance_id)
        assert await h.history(copy.instance_id) == []
        assert (await h.client.purge_instance_history(copy.instance_id)).instances_deleted == 0

        by_filter = await h.client.purge_instance_history_by(
            created_time_from=started_at, runtime_status=[df.OrchestrationRuntimeStatus.Completed]
        )
        assert by_filter.instances_deleted == 1  # the original; the waiting one is not Completed
        remaining = {s.instance_id for s in await h.client.get_status_all()}
        assert remaining == {waiting}

    durable(scenario)


def test_rewind_is_refused_with_the_hosts_messages(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        failed = await h.run("durable_failing_orchestrator")
        with pytest.raises(Exception, match="Rewind is not supported"):
            await h.client.rewind(failed.instance_id, "try again")
        done = await h.run("durable_sequence_orchestrator", {"name": "r"})
        with pytest.raises(Exception, match="only orchestrations in the"):
            await h.client.rewind(done.instance_id, "try again")

    durable(scenario)


# ---------------------------------------------------------------------------------------------- start and query
def test_start_rules_and_instance_queries(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        with pytest.raises(Exception, match="The function 'no_such_orchestrator' doesn't exist"):
            await h.client.start_new("no_such_orchestrator")

        running = await h.client.start_new("durable_approval_orchestrator", "batch-running")
        await h.wait(running, lambda s: s.custom_status == "waiting")
        with pytest.raises(Exception, match="already exists"):
            await h.client.start_new("durable_sequence_orchestrator", "batch-running", {"name": "x"})

        first = await h.run("durable_sequence_orchestrator", {"name": "one"}, "batch-done")
        second = await h.run("durable_sequence_orchestrator", {"name": "two"}, "batch-done")  # replaces it
        assert second.output == ["Hello two", "Hello Hello two"]
        assert second.created_time >= first.created_time
        async with h.http.post(f"{h.base_url}/durabletask/orchestrators/durable_sequence_orchestrator/a%23b") as resp:
            assert resp.status == 400
        async with h.http.post(
            f"{h.base_url}/durabletask/orchestrators/durable_sequence_orchestrator", data="{not json"
        ) as resp:
            assert resp.status == 400
        start_uri = f"{h.base_url}/runtime/webhooks/durabletask/orchestrators/durable_sequence_orchestrator"
        async with h.http.post(start_uri, json={"name": "raw"}) as resp:
            assert resp.status == 202
            payload = await resp.json()
            assert set(payload) == {
                "id",
                "statusQueryGetUri",
                "sendEventPostUri",
                "terminatePostUri",
                "rewindPostUri",
                "purgeHistoryDeleteUri",
                "restartPostUri",
                "suspendPostUri",
                "resumePostUri",
            }
            assert resp.headers["Location"] == payload["statusQueryGetUri"]
        async with h.http.post(f"{start_uri}?timeout=20&pollingInterval=0.05", json={"name": "wait"}) as resp:
            assert resp.status == 200
            assert await resp.json() == ["Hello wait", "Hello Hello wait"]

        other = await h.run("durable_fan_out_orchestrator", 1, "other-1")
        since = datetime.now(UTC) - timedelta(minutes=5)
        batch = await h.client.get_status_by(created_time_from=since, instance_id_prefix="batch-")
        assert sorted(s.instance_id for s in batch) == ["batch-done", "batch-running"]
        completed = await h.client.get_status_by(
            created_time_from=since, runtime_status=[df.OrchestrationRuntimeStatus.Completed], instance_id_prefix="o"
        )
        assert [s.instance_id for s in completed] == [other.instance_id]
        assert await h.client.get_status_by(created_time_from=datetime.now(UTC) + timedelta(hours=1)) == []
        everything = {s.instance_id for s in await h.client.get_status_all()}
        assert {"batch-done", "batch-running", other.instance_id} <= everything and len(everything) == 5
        async with h.http.get(f"{h.base_url}/durabletask/instances/?top=3") as resp:
            page = await resp.json()
            assert len(page) == 3 and resp.headers["x-ms-continuation-token"] == "3"
        async with h.http.get(
            f"{h.base_url}/durabletask/instances/?top=3", headers={"x-ms-continuation-token": "3"}
        ) as resp:
            rest = await resp.json()
        assert {s["instanceId"] for s in page + rest} == everything

    durable(scenario)


def test_http_starter_gets_a_working_client_binding(durable: Callable[[Scenario], None]) -> None:
    """The HTTP trigger path: the binding JSON given to durable_client_input drives the SDK unchanged."""

    async def scenario(h: Harness) -> None:
        index = conformance_index()
        starter = index.functions["start_durable_orchestration"]
        invoker = Invoker(str(CONFORMANCE_APP))
        origin = "http://public.example:7071"

        async def call(query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
            request = meta.Datum(
                type="http",
                value={
                    "method": meta.Datum("POST", "string"),
                    "url": meta.Datum(f"{origin}/api/durable/start/durable_sequence_orchestrator", "string"),
                    "headers": {"content-type": meta.Datum("application/json", "string")},
                    "params": {"functionName": meta.Datum("durable_sequence_orchestrator", "string")},
                    "query": {k: meta.Datum(v, "string") for k, v in query.items()},
                    "body": meta.Datum(json.dumps({"name": "http"}).encode(), "bytes"),
                },
            )
            out = await invoker.invoke(
                starter, {"req": request, "client": meta.Datum(h.host.client_binding_json(origin), "string")}
            )
            assert out is not None
            value = out.value
            headers = {k: v.value for k, v in value["headers"].items()}
            return int(value["status_code"].value), headers, json.loads(value["body"].value)

        try:
            code, headers, body = await call({})
            assert code == 202
            assert headers["Location"] == body["statusQueryGetUri"]
            assert body["statusQueryGetUri"].startswith(f"{origin}/runtime/webhooks/durabletask/instances/")
            assert (await h.wait(body["id"])).output == ["Hello http", "Hello Hello http"]
            code, _, output = await call({"wait": "10000"})
            assert (code, output) == (200, ["Hello http", "Hello Hello http"])
        finally:
            invoker.shutdown()

    durable(scenario)


def test_client_binding_json_has_the_real_hosts_shape(durable: Callable[[Scenario], None]) -> None:
    async def scenario(h: Harness) -> None:
        binding = json.loads(h.host.client_binding_json("https://example.test"))
        assert set(binding) == {
            "taskHubName",
            "connectionName",
            "creationUrls",
            "managementUrls",
            "baseUrl",
            "requiredQueryStringParameters",
            "rpcBaseUrl",
            "httpBaseUrl",
        }
        assert binding["taskHubName"] == h.hub
        assert binding["rpcBaseUrl"] == f"{h.base_url}/durabletask/"
        assert binding["baseUrl"] == "https://example.test/runtime/webhooks/durabletask"
        urls = binding["managementUrls"]
        assert urls["id"] == "INSTANCEID"
        assert urls["statusQueryGetUri"] == (
            f"https://example.test/runtime/webhooks/durabletask/instances/INSTANCEID?taskHub={h.hub}&connection=Storage"
        )
        assert set(urls) == {
            "id",
            "statusQueryGetUri",
            "sendEventPostUri",
            "terminatePostUri",
            "rewindPostUri",
            "purgeHistoryDeleteUri",
            "restartPostUri",
            "suspendPostUri",
            "resumePostUri",
        }
        assert json.loads(h.host.client_binding_json())["baseUrl"] == f"{h.base_url}/runtime/webhooks/durabletask"

    durable(scenario)


# ---------------------------------------------------------------------------------------------- id ordering, pure
_ordering_app = df.DFApp()


@_ordering_app.orchestration_trigger(context_name="context")
def two_retries(context: df.DurableOrchestrationContext) -> Any:
    """Retry `a` gets one attempt, `b` two; once `a` is exhausted the code schedules `c` while `b` still retries."""
    a = context.call_activity_with_retry("act", df.RetryOptions(100, 1), "a")
    b = context.call_activity_with_retry("act", df.RetryOptions(100, 2), "b")
    try:
        yield context.task_all([a, b])
    except Exception:
        c = yield context.call_activity("act", "c")
        b_result = yield b
        return [c, b_result]
    return "unreachable"


def test_exhausted_retry_timer_is_ordered_after_id_allocating_events() -> None:
    """The timer after a retry's last attempt allocates no id but resumes user code, which schedules new work;
    a retry timer with attempts left, in the same batch, must be delivered first or the ids diverge."""
    handle = next(f for f in _ordering_app.get_functions()).get_user_function()
    past: list[dict[str, Any]] = []
    book = Bookkeeping()

    def episode(events: list[dict[str, Any]]) -> Any:
        messages = [Message(i, "e", e) for i, e in enumerate(events)]
        now = datetime.now(UTC)
        current = Episode(
            facts=InstanceFacts("i", "e", "two_retries", None, None),
            past=past,
            messages=messages,
            book=book,
            now=now,
            catalog=Catalog(orchestrators={"two_retries"}, activities={"act"}),
        )
        result = current.finish(json.loads(handle(func.OrchestrationContext(current.context()))), None, now)
        past.extend(result.history)
        return result

    def failed(task_id: int) -> dict[str, Any]:
        return event(EventType.TaskFailed, datetime.now(UTC), TaskScheduledId=task_id, Reason="boom", Details="d")

    def fired(task_id: int) -> dict[str, Any]:
        return event(EventType.TimerFired, datetime.now(UTC), TimerId=task_id, FireAt="2020-01-01T00:00:00.000000Z")

    def completed(task_id: int, value: str) -> dict[str, Any]:
        return event(EventType.TaskCompleted, datetime.now(UTC), TaskScheduledId=task_id, Result=json.dumps(value))

    started = event(
        EventType.ExecutionStarted,
        datetime.now(UTC),
        Name="two_retries",
        Version="",
        Input=None,
        OrchestrationInstance={"InstanceId": "i", "ExecutionId": "e"},
        ParentInstance=None,
    )
    assert [a.task_id for a in episode([started]).activities] == [0, 1]  # a, b
    assert [t.task_id for t in episode([failed(0), failed(1)]).timers] == [2, 3]  # their retry timers
    # a's timer (exhausted: a fails, c gets scheduled) arrives before b's timer (b's second attempt).
    result = episode([fired(2), fired(3)])
    scheduled = {a.input: a.task_id for a in result.activities}
    assert scheduled == {'"b"': 4, '"c"': 5}  # b's re-attempt took its hidden id first, as the SDK does
    final = episode([completed(5, "C"), completed(4, "B")])
    assert final.status.value == "Completed"
    assert json.loads(final.output_json or "null") == ["C", "B"]
