# intent_ref: platform.execution
"""Executions end to end on a devhost child process with Postgres and Azurite: the execute API, the orchestrator,
module work over the local Event Hubs log, and every control route. Side effects land on a local HTTP server that
records each request, so "happened once" is counted, not assumed."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from devhost.child import PROJECT_ROOT, DevhostProcess, free_port
from devhost.identity import mint_token_cli
from devhost.workers import WORKER_COUNT_SETTING

pytestmark = pytest.mark.e2e

TERMINAL = ("succeeded", "failed", "cancelled")
REQUESTER = "11111111-1111-4111-8111-111111111111"
APPROVER = "22222222-2222-4222-8222-222222222222"


@dataclass
class Recorded:
    """One request the side-effect server received."""

    name: str
    key: str | None
    started: float
    finished: float = 0.0


@dataclass
class SideEffects:
    """A local service that steps call: it records every request, fails or sleeps when told to."""

    port: int
    requests: list[Recorded] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str, **query: Any) -> str:
        suffix = "&".join(f"{key}={value}" for key, value in query.items())
        return f"http://127.0.0.1:{self.port}/{name}" + (f"?{suffix}" if suffix else "")

    def named(self, name: str) -> list[Recorded]:
        with self.lock:
            return [request for request in self.requests if request.name == name]


@pytest.fixture(scope="module")
def side_effects() -> Iterator[SideEffects]:
    state = SideEffects(port=0)  # the port the server is given by the system, below

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            parsed = urlparse(self.path)
            name = parsed.path.strip("/")
            query = {key: values[0] for key, values in parse_qs(parsed.query).items()}
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            record = Recorded(name, self.headers.get("idempotency-key"), time.time())
            with state.lock:
                state.requests.append(record)
                seen = sum(1 for request in state.requests if request.name == name)
            time.sleep(float(query.get("sleep", 0)))
            record.finished = time.time()
            fail = name in state.failing or seen <= int(query.get("fail_times", 0))
            body: Any = {"name": name, "seen": seen}
            if query.get("big"):
                body["blob"] = "x" * int(query["big"])
            payload = json.dumps(body).encode()
            self.send_response(500 if fail else 200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


@dataclass
class Platform:
    """The devhost serving the platform app, and a way to mint tokens for it."""

    host: DevhostProcess
    root: Path
    owner_url: str

    @property
    def base(self) -> str:
        return self.host.base_url

    def headers(self, roles: list[str], tenant: str = "contoso", oid: str | None = REQUESTER) -> dict[str, str]:
        token = mint_token_cli(self.root, self.base, tenant, roles, [], oid, 3600, False)
        return {"Authorization": f"Bearer {token}"}


def start_platform_host(
    pg: Any, azurite: Any, log: Path, port: int | None = None, env: dict[str, str] | None = None
) -> DevhostProcess:
    """The platform with its demo tenants in a devhost on the session's Postgres and Azurite; `env` adds settings."""
    return DevhostProcess(
        app_dir=PROJECT_ROOT,
        data_dir=pg.root,
        port=port or free_port(),
        env={"QP_BLOB_CONNECTION_STRING": azurite.connection_string, "QP_TASK_HUB": "ExecutionsE2E", **(env or {})},
        log_path=log,
        extra_args=("--seed-demo",),
    ).start()


def allow_local_side_effects(platform: Platform) -> None:
    """contoso's Tenant.Admin lets its steps call 127.0.0.1 (the SSRF guard refuses loopback otherwise)."""
    allowed = httpx.patch(
        f"{platform.base}/api/v1/tenant",
        json={"settings": {"allowed_hosts": ["127.0.0.1"]}},
        headers=platform.headers(["Tenant.Admin"]),
    )
    assert allowed.status_code == 200, allowed.text


@pytest.fixture(scope="module")
def platform(
    pg: Any, azurite: Any, tmp_path_factory: pytest.TempPathFactory, side_effects: SideEffects
) -> Iterator[Platform]:
    # Functions run in two worker processes, as `make run` and the benchmarks run them (devhost/workers.py).
    host = start_platform_host(
        pg, azurite, tmp_path_factory.mktemp("engine") / "devhost.log", env={WORKER_COUNT_SETTING: "2"}
    )
    running = Platform(host, pg.root, pg.owner_url)
    allow_local_side_effects(running)
    yield running
    host.stop()


AUTHOR = ["Intent.Author", "Intent.Executor", "Intent.Reader"]


def create_intent(
    platform: Platform,
    steps: list[dict[str, Any]],
    *,
    target: str = "staging",
    inputs: dict[str, Any] | None = None,
    name: str | None = None,
) -> str:
    definition: dict[str, Any] = {"target": target, "steps": steps}
    if inputs is not None:
        definition["inputs"] = inputs
    body = {"name": name or f"e2e-{uuid.uuid4().hex[:10]}", "definition": definition}
    created = httpx.post(f"{platform.base}/api/v1/intents", json=body, headers=platform.headers(AUTHOR))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def execute(
    platform: Platform, intent_id: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{platform.base}/api/v1/intents/{intent_id}/execute",
        json=body,
        headers=headers or platform.headers(AUTHOR),
        timeout=30,
    )


def started(platform: Platform, intent_id: str, body: dict[str, Any] | None = None) -> str:
    response = execute(platform, intent_id, body)
    assert response.status_code == 202, response.text
    return str(response.json()["execution_id"])


def follow(
    platform: Platform, execution_id: str, *, until: tuple[str, ...] = TERMINAL, timeout: float = 60
) -> tuple[str, list[dict[str, Any]]]:
    """Read the event stream (long poll) until the execution reaches one of `until`; returns it and all events."""
    headers = platform.headers(["Intent.Reader"])
    events: list[dict[str, Any]] = []
    after, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = httpx.get(
            f"{platform.base}/api/v1/executions/{execution_id}/events",
            params={"after": after, "wait": 5},
            headers=headers,
            timeout=15,
        ).json()
        events.extend(page["items"])
        after = page["next_after"]
        if page["status"] in until:
            return page["status"], events
    raise AssertionError(f"execution {execution_id} did not reach {until}: {[e['type'] for e in events]}")


def detail(platform: Platform, execution_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{platform.base}/api/v1/executions/{execution_id}", headers=platform.headers(["Intent.Reader"])
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def steps_of(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in execution["steps"]}


def http(side_effects: SideEffects, name: str, **query: Any) -> dict[str, Any]:
    return {"action": "http.request", "method": "POST", "url": side_effects.url(name, **query)}


def test_parallel_branches_overlap_and_the_stream_tells_the_story(
    platform: Platform, side_effects: SideEffects
) -> None:
    tag = uuid.uuid4().hex[:6]
    intent = create_intent(
        platform,
        [
            {"id": "left", **http(side_effects, f"left-{tag}", sleep=1), "depends_on": []},
            {"id": "right", **http(side_effects, f"right-{tag}", sleep=1), "depends_on": []},
            {"id": "join", **http(side_effects, f"join-{tag}"), "depends_on": ["left", "right"]},
        ],
    )
    execution_id = started(platform, intent)
    status, events = follow(platform, execution_id)
    assert status == "succeeded"
    types = [event["type"] for event in events]
    assert types[0] == "execution_started" and types[-1] == "execution_completed"
    assert types.count("step_started") == 3 and types.count("step_completed") == 3
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    completed = {event["step"]: event["result"] for event in events if event["type"] == "step_completed"}
    assert completed["join"]["status"] == 200
    steps = steps_of(detail(platform, execution_id))
    left, right = (steps[name]["attempts"][0] for name in ("left", "right"))
    # Overlap from the recorded attempt timestamps: each started before the other finished.
    assert left["started_at"] < right["finished_at"] and right["started_at"] < left["finished_at"]
    assert steps["join"]["attempts"][0]["started_at"] >= max(left["finished_at"], right["finished_at"])


def test_input_is_validated_and_a_bad_request_changes_nothing(platform: Platform) -> None:
    intent = create_intent(
        platform,
        [{"id": "pause", "action": "wait", "seconds": 0.1}],
        inputs={"type": "object", "properties": {"version": {"type": "string"}}, "required": ["version"]},
    )
    refused = execute(platform, intent, {"input": {"version": 3}})
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"][0]["pointer"] == "/input/version"
    listing = httpx.get(
        f"{platform.base}/api/v1/executions", params={"intent_id": intent}, headers=platform.headers(["Intent.Reader"])
    ).json()
    assert listing["items"] == []
    plan_refused = execute(platform, intent, {"input": {"version": "1"}, "plan_hash": "0" * 64})
    assert plan_refused.status_code == 409 and plan_refused.json()["plan_hash"] != "0" * 64


def test_retry_then_success_shows_attempts_and_the_wait_reason(platform: Platform, side_effects: SideEffects) -> None:
    name = f"flaky-{uuid.uuid4().hex[:6]}"
    intent = create_intent(
        platform,
        [
            {
                "id": "build",
                **http(side_effects, name, fail_times=1),
                "retry": {"max_attempts": 3, "initial_interval_s": 3, "backoff": 2},
            }
        ],
    )
    execution_id = started(platform, intent)
    follow(platform, execution_id, until=("running",), timeout=10)
    deadline, reason = time.monotonic() + 15, None
    while time.monotonic() < deadline:
        reason = detail(platform, execution_id)["wait_reason"]
        if reason and reason.startswith("retrying step build in"):
            break
        time.sleep(0.2)
    assert reason is not None and reason.endswith("(attempt 2 of 3)"), reason
    status, events = follow(platform, execution_id)
    assert status == "succeeded"
    assert [e["type"] for e in events if e["step"] == "build"] == [
        "step_started",
        "step_failed",
        "step_retrying",
        "step_started",
        "step_completed",
    ]
    attempts = steps_of(detail(platform, execution_id))["build"]["attempts"]
    assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    assert len({request.key for request in side_effects.named(name)}) == 2


def test_timeout_fails_the_step_and_the_execution(platform: Platform, side_effects: SideEffects) -> None:
    intent = create_intent(
        platform, [{"id": "slow", **http(side_effects, f"slow-{uuid.uuid4().hex[:6]}", sleep=6), "timeout_s": 1}]
    )
    execution_id = started(platform, intent)
    status, events = follow(platform, execution_id)
    assert status == "failed"
    failed = [e for e in events if e["type"] == "step_failed"]
    assert failed and failed[0]["data"]["reason"] == "timed_out"
    execution = detail(platform, execution_id)
    assert "timed out after 1 s" in execution["error"]
    assert steps_of(execution)["slow"]["attempts"][0]["state"] == "timed_out"


def test_failure_compensates_completed_steps_in_reverse_order(platform: Platform, side_effects: SideEffects) -> None:
    tag = uuid.uuid4().hex[:6]
    undo = {"undo-a": f"undo-a-{tag}", "undo-b": f"undo-b-{tag}"}
    intent = create_intent(
        platform,
        [
            {"id": "a", **http(side_effects, f"a-{tag}"), "compensate": http(side_effects, undo["undo-a"])},
            {"id": "b", **http(side_effects, f"b-{tag}"), "compensate": http(side_effects, undo["undo-b"])},
            {"id": "c", **http(side_effects, f"c-{tag}", fail_times=99)},
            {"id": "d", **http(side_effects, f"d-{tag}")},
        ],
    )
    execution_id = started(platform, intent)
    status, events = follow(platform, execution_id)
    assert status == "failed"
    undone = [e["step"] for e in events if e["type"] == "compensation_completed"]
    assert undone == ["b", "a"]
    (b_undo,), (a_undo,) = side_effects.named(undo["undo-b"]), side_effects.named(undo["undo-a"])
    assert b_undo.started < a_undo.started
    assert side_effects.named(f"d-{tag}") == []  # nothing new starts after the failure
    types = [e["type"] for e in events]
    assert types.index("execution_compensating") < types.index("compensation_started")
    assert types[-1] == "execution_failed"
    execution = detail(platform, execution_id)
    assert execution["output"]["failed_step"] == "c" and execution["output"]["compensated"] == ["b", "a"]


def _approval_intent(platform: Platform, side_effects: SideEffects, tag: str) -> str:
    return create_intent(
        platform,
        [
            {
                "id": "prepare",
                **http(side_effects, f"prepare-{tag}"),
                "compensate": http(side_effects, f"unprepare-{tag}"),
            },
            {"id": "gate", "action": "approval", "message": "ship it?"},
            {"id": "ship", **http(side_effects, f"ship-{tag}")},
        ],
    )


def test_approval_approved_by_another_principal_and_self_approval_refused(
    platform: Platform, side_effects: SideEffects
) -> None:
    tag = uuid.uuid4().hex[:6]
    execution_id = started(platform, _approval_intent(platform, side_effects, tag))
    status, events = follow(platform, execution_id, until=("waiting",))
    requested = [e for e in events if e["type"] == "approval_requested"]
    assert requested and requested[0]["data"]["message"] == "ship it?"
    # What the run waits for is on the stream before the status says it waits.
    waiting = [e for e in events if e["type"] == "execution_waiting"]
    assert waiting and requested[0]["seq"] < waiting[0]["seq"]
    assert detail(platform, execution_id)["wait_reason"] == "waiting for approval of step gate"
    url = f"{platform.base}/api/v1/executions/{execution_id}/approvals/gate"
    # The requester holds the Approver role too, and is still refused.
    own = httpx.post(url, json={"decision": "approve"}, headers=platform.headers(["Intent.Approver"]))
    assert own.status_code == 403 and own.json()["reason"] == "self_approval"
    assert own.json()["detail"] == (
        "Not allowed to execution.approve: an approver may not approve an execution they requested."
    )
    reader = httpx.post(url, json={"decision": "approve"}, headers=platform.headers(["Intent.Reader"], oid=APPROVER))
    assert reader.status_code == 403
    assert detail(platform, execution_id)["status"] == "waiting"
    approver = platform.headers(["Intent.Approver"], oid=APPROVER)
    decided = httpx.post(url, json={"decision": "approve", "comment": "ok"}, headers=approver)
    assert decided.status_code == 200 and decided.json()["applied"] is True
    status, events = follow(platform, execution_id)
    assert status == "succeeded"
    assert len(side_effects.named(f"ship-{tag}")) == 1
    again = httpx.post(url, json={"decision": "reject"}, headers=approver)
    assert again.status_code == 409


def test_approval_rejected_fails_and_compensates(platform: Platform, side_effects: SideEffects) -> None:
    tag = uuid.uuid4().hex[:6]
    execution_id = started(platform, _approval_intent(platform, side_effects, tag))
    follow(platform, execution_id, until=("waiting",))
    rejected = httpx.post(
        f"{platform.base}/api/v1/executions/{execution_id}/approvals/gate",
        json={"decision": "reject", "comment": "freeze"},
        headers=platform.headers(["Intent.Approver"], oid=APPROVER),
    )
    assert rejected.status_code == 200
    status, events = follow(platform, execution_id)
    assert status == "failed"
    assert "rejected by" in detail(platform, execution_id)["error"]
    assert len(side_effects.named(f"unprepare-{tag}")) == 1 and side_effects.named(f"ship-{tag}") == []


def test_cancel_stops_scheduling_compensates_and_ends_cancelled(platform: Platform, side_effects: SideEffects) -> None:
    tag = uuid.uuid4().hex[:6]
    intent = create_intent(
        platform,
        [
            {
                "id": "prepare",
                **http(side_effects, f"prepare-{tag}"),
                "compensate": http(side_effects, f"unprepare-{tag}"),
            },
            {"id": "soak", "action": "wait", "seconds": 60},
            {"id": "ship", **http(side_effects, f"ship-{tag}")},
        ],
    )
    execution_id = started(platform, intent)
    deadline = time.monotonic() + 20
    while steps_of(detail(platform, execution_id))["soak"]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelled = httpx.post(f"{platform.base}/api/v1/executions/{execution_id}/cancel", headers=platform.headers(AUTHOR))
    assert cancelled.status_code == 202, cancelled.text
    status, events = follow(platform, execution_id)
    assert status == "cancelled"
    assert len(side_effects.named(f"unprepare-{tag}")) == 1 and side_effects.named(f"ship-{tag}") == []
    assert steps_of(detail(platform, execution_id))["soak"]["state"] == "cancelled"
    again = httpx.post(f"{platform.base}/api/v1/executions/{execution_id}/cancel", headers=platform.headers(AUTHOR))
    assert again.status_code == 409


def test_retry_from_the_failed_step_reuses_completed_outputs(platform: Platform, side_effects: SideEffects) -> None:
    tag = uuid.uuid4().hex[:6]
    intent = create_intent(
        platform,
        [
            {"id": "build", **http(side_effects, f"build-{tag}")},
            {"id": "deploy", **http(side_effects, f"deploy-{tag}")},
        ],
    )
    side_effects.failing.add(f"deploy-{tag}")
    first = started(platform, intent)
    assert follow(platform, first)[0] == "failed"
    side_effects.failing.discard(f"deploy-{tag}")
    retried = httpx.post(f"{platform.base}/api/v1/executions/{first}/retry", json={}, headers=platform.headers(AUTHOR))
    assert retried.status_code == 202, retried.text
    second = retried.json()["execution_id"]
    status, events = follow(platform, second)
    assert status == "succeeded"
    assert len(side_effects.named(f"build-{tag}")) == 1  # reused, not run again
    assert len(side_effects.named(f"deploy-{tag}")) == 2
    execution = detail(platform, second)
    assert execution["retry_of"] == first
    assert steps_of(execution)["build"]["reused"] is True
    assert "build" not in {e["step"] for e in events if e["type"] == "step_started"}


def test_large_outputs_are_stored_as_blobs_and_referenced(platform: Platform, side_effects: SideEffects) -> None:
    tag = uuid.uuid4().hex[:6]
    intent = create_intent(
        platform,
        [
            {"id": "big", **http(side_effects, f"big-{tag}", big=100_000)},
            # A later step reads parts of the stored output, in its parameters and in its condition.
            {
                "id": "use",
                **http(side_effects, f"after-{tag}-" + "${steps.big.output.status}"),
                "when": "${steps.big.output.status} == 200",
            },
            {"id": "never", **http(side_effects, f"never-{tag}"), "when": "${steps.big.output.status} == 500"},
        ],
    )
    execution_id = started(platform, intent)
    assert follow(platform, execution_id)[0] == "succeeded"
    steps = steps_of(detail(platform, execution_id))
    output = steps["big"]["output"]
    assert set(output) == {"$blob"} and output["$blob"]["size"] > 64 * 1024
    assert output["$blob"]["name"].split("/")[0] != ""
    assert len(side_effects.named(f"after-{tag}-200")) == 1
    assert steps["never"]["state"] == "skipped" and side_effects.named(f"never-{tag}") == []


def test_child_intent_runs_as_a_sub_orchestration(platform: Platform, side_effects: SideEffects) -> None:
    tag = uuid.uuid4().hex[:6]
    child_name = f"child-{tag}"
    create_intent(platform, [{"id": "touch", **http(side_effects, f"child-touch-{tag}")}], name=child_name)
    parent = create_intent(platform, [{"id": "run-child", "action": "intent.run", "intent": child_name}])
    execution_id = started(platform, parent)
    assert follow(platform, execution_id)[0] == "succeeded"
    step = steps_of(detail(platform, execution_id))["run-child"]
    child = detail(platform, step["child_execution_id"])
    assert child["status"] == "succeeded" and child["parent_execution_id"] == execution_id
    assert step["output"]["outputs"]["touch"]["status"] == 200


def test_a_child_intent_runs_only_with_its_requesters_authority(platform: Platform) -> None:
    """An Executor's staging intent cannot reach production through a child: the child start is decided like a
    direct execute, for the requester, with the roles their token carried when the root execution started."""
    tag = uuid.uuid4().hex[:6]
    child_name = f"prod-child-{tag}"
    child_intent = create_intent(
        platform, [{"id": "pause", "action": "wait", "seconds": 0.01}], target="production", name=child_name
    )
    parent = create_intent(platform, [{"id": "run-child", "action": "intent.run", "intent": child_name}])

    refused = started(platform, parent)  # an Executor (AUTHOR): staging is theirs, production is not
    assert follow(platform, refused)[0] == "failed"
    step = steps_of(detail(platform, refused))["run-child"]
    assert step["state"] == "failed" and step.get("child_execution_id") is None
    assert "production_requires_deployer" in step["attempts"][-1]["error"]
    children = httpx.get(
        f"{platform.base}/api/v1/executions",
        params={"intent_id": child_intent},
        headers=platform.headers(["Intent.Reader"]),
    )
    assert children.status_code == 200 and children.json()["items"] == [], "no child execution was recorded"

    deployer = platform.headers(["Intent.Deployer", "Intent.Reader"])
    response = execute(platform, parent, {}, deployer)
    assert response.status_code == 202, response.text
    allowed = str(response.json()["execution_id"])
    assert follow(platform, allowed)[0] == "succeeded"
    child = detail(platform, steps_of(detail(platform, allowed))["run-child"]["child_execution_id"])
    assert child["status"] == "succeeded" and child["target"] == "production"


def _child_waiting_for_approval(platform: Platform, side_effects: SideEffects, tag: str) -> str:
    """A child intent that prepares something (compensated on the way out), then waits for an approval."""
    name = f"child-{tag}"
    create_intent(
        platform,
        [
            {
                "id": "prepare",
                **http(side_effects, f"child-prepare-{tag}"),
                "compensate": http(side_effects, f"child-unprepare-{tag}"),
            },
            {"id": "gate", "action": "approval", "depends_on": ["prepare"]},
        ],
        name=name,
    )
    return name


def _child_of(platform: Platform, execution_id: str, step_id: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        child = steps_of(detail(platform, execution_id))[step_id].get("child_execution_id")
        if child:
            return str(child)
        time.sleep(0.2)
    raise AssertionError(f"step {step_id} of {execution_id} started no child")


def test_cancelling_a_parent_cancels_its_running_child(platform: Platform, side_effects: SideEffects) -> None:
    tag = uuid.uuid4().hex[:6]
    child_name = _child_waiting_for_approval(platform, side_effects, tag)
    parent = started(
        platform, create_intent(platform, [{"id": "run-child", "action": "intent.run", "intent": child_name}])
    )
    child = _child_of(platform, parent, "run-child")
    follow(platform, child, until=("waiting",))
    cancelled = httpx.post(f"{platform.base}/api/v1/executions/{parent}/cancel", headers=platform.headers(AUTHOR))
    assert cancelled.status_code == 202, cancelled.text
    assert follow(platform, parent)[0] == "cancelled"
    status, events = follow(platform, child)
    assert status == "cancelled"
    assert [e["data"]["by"] for e in events if e["type"] == "cancel_requested"] == [f"execution:{parent}"]
    assert len(side_effects.named(f"child-unprepare-{tag}")) == 1
    # The cancel it passed down, carried out: cancelled like every step the cancel stops (it read failed before).
    assert steps_of(detail(platform, parent))["run-child"]["state"] == "cancelled"


def test_a_failing_parent_cancels_its_child_instead_of_waiting_for_it(
    platform: Platform, side_effects: SideEffects
) -> None:
    tag = uuid.uuid4().hex[:6]
    child_name = _child_waiting_for_approval(platform, side_effects, tag)
    parent = started(
        platform,
        create_intent(
            platform,
            [
                {"id": "run-child", "action": "intent.run", "intent": child_name, "depends_on": []},
                {"id": "boom", **http(side_effects, f"boom-{tag}", fail_times=99), "depends_on": []},
            ],
        ),
    )
    status, _ = follow(platform, parent)
    assert status == "failed" and detail(platform, parent)["output"]["failed_step"] == "boom"
    assert follow(platform, _child_of(platform, parent, "run-child"))[0] == "cancelled"
    # Stopped by the failure, as a wait is: cancelled, not a second failure beside the cause.
    child_step = steps_of(detail(platform, parent))["run-child"]
    assert (child_step["state"], child_step["error"]) == ("cancelled", "an earlier step failed")


def test_the_same_idempotency_key_under_concurrency_starts_one_execution(
    platform: Platform, side_effects: SideEffects
) -> None:
    name = f"once-{uuid.uuid4().hex[:6]}"
    intent = create_intent(platform, [{"id": "once", **http(side_effects, name)}])
    headers = {**platform.headers(AUTHOR), "Idempotency-Key": f"key-{name}"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: execute(platform, intent, {"input": {}}, headers), range(8)))
    assert {response.status_code for response in responses} == {202}
    assert len({response.json()["execution_id"] for response in responses}) == 1
    assert sum(response.json()["created"] for response in responses) == 1
    execution_id = responses[0].json()["execution_id"]
    status, events = follow(platform, execution_id)
    assert status == "succeeded"
    assert [e["type"] for e in events].count("execution_started") == 1
    assert len(side_effects.named(name)) == 1
    listing = httpx.get(
        f"{platform.base}/api/v1/executions", params={"intent_id": intent}, headers=platform.headers(["Intent.Reader"])
    ).json()
    assert len(listing["items"]) == 1
    other = execute(platform, intent, {"input": {"x": 1}}, headers)
    # The key was used for another request: 422 on every route (ADR 0022).
    assert other.status_code == 422 and other.json()["type"].endswith("/idempotency-key")


def test_module_work_delivered_twice_is_applied_once(platform: Platform, side_effects: SideEffects, pg: Any) -> None:
    name = f"dup-{uuid.uuid4().hex[:6]}"
    intent = create_intent(platform, [{"id": "only", **http(side_effects, name)}])
    execution_id = started(platform, intent)
    assert follow(platform, execution_id)[0] == "succeeded"
    with psycopg.connect(pg.owner_url) as conn:
        row = conn.execute(
            "SELECT body FROM devhost_eventhubs.events WHERE hub = 'module-work'"
            " AND convert_from(body, 'UTF8')::jsonb ->> 'execution_id' = %s",
            (execution_id,),
        ).fetchone()
    assert row is not None
    item = json.loads(bytes(row[0]))
    published = httpx.post(
        f"{platform.base}/devhost/eventhubs/module-work/events",
        json={"events": [{"body": item, "partition_key": item["tenant_id"]}]},
        headers=platform.host.key_header,
    )
    assert published.status_code == 200, published.text
    time.sleep(3)  # the worker takes the duplicate within a poll interval
    assert len(side_effects.named(name)) == 1
    _, events = follow(platform, execution_id)
    assert [e["type"] for e in events].count("step_completed") == 1


def test_each_step_result_reaches_the_orchestration_once_by_its_dispatch_or_as_an_event(
    platform: Platform, side_effects: SideEffects, pg: Any
) -> None:
    """ADR 0034: a quick module's result is answered by the dispatch that started it (or, past the dispatch's wait,
    raised by its worker); a module that may take long is never waited for."""
    steps = [
        {"id": "emit", "action": "event.emit", "type": "e2e.delivery", "data": {"n": 1}},
        {"id": "call", "depends_on": ["emit"], **http(side_effects, f"deliver-{uuid.uuid4().hex[:6]}")},
        {"id": "write", "depends_on": ["call"], "action": "artifact.write", "name": "d.json", "content": {"n": 2}},
        {"id": "again", "depends_on": ["write"], "action": "event.emit", "type": "e2e.delivery", "data": {"n": 3}},
    ]
    execution_id = started(platform, create_intent(platform, steps))
    assert follow(platform, execution_id)[0] == "succeeded"
    # The superuser on the platform's database: it reads every tenant's rows, unbound by row-level security.
    platform_db = conninfo_to_dict(pg.owner_url)["dbname"]
    with psycopg.connect(make_conninfo(pg.admin_url, dbname=platform_db)) as conn:
        delivery = dict(
            conn.execute(
                "SELECT step_id, delivery FROM app.step_attempts WHERE execution_id = %s", (execution_id,)
            ).fetchall()
        )
        history = conn.execute(
            "SELECT (event ->> 'EventType')::int, event ->> 'Name' FROM devhost_durable.history"
            " WHERE instance_id = %s ORDER BY position",
            (execution_id,),
        ).fetchall()
    raised = [name for kind, name in history if kind == 15]  # EventRaised
    scheduled = [name for kind, name in history if kind == 4]  # TaskScheduled
    assert delivery.pop("call") is None  # http.request may take long: no dispatch waits for it
    assert set(delivery.values()) <= {"answered", "released"} and "answered" in delivery.values()
    delivery["call"] = None
    assert sorted(raised) == sorted(f"run:{step}:1" for step, how in delivery.items() if how != "answered")
    # The last step answered with its dispatch: that dispatch recorded the success, no activity of its own did.
    assert scheduled.count("record_status") == (0 if delivery["again"] == "answered" else 1), scheduled


def orchestration_completed(conn: psycopg.Connection[Any], instance_id: str, timeout_s: float = 30.0) -> None:
    """Wait until the devhost's Durable store records the orchestration as completed."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute(
            "SELECT runtime_status FROM devhost_durable.instances WHERE instance_id = %s", (instance_id,)
        ).fetchone()
        if row is not None and row[0] == "Completed":
            return
        assert time.monotonic() < deadline, f"orchestration {instance_id}: {row}"
        time.sleep(0.05)


def test_a_chain_of_quick_steps_runs_in_one_dispatch_that_carries_on(platform: Platform, pg: Any) -> None:
    """ADR 0036: the first dispatch carries on from level to level while every step is quick built-in work, so the
    whole chain is one activity and two episodes, and every step still ran once, in order, over module-work."""
    steps = [
        {"id": "one", "action": "event.emit", "type": "e2e.carry", "data": {"n": 1}},
        {
            "id": "two",
            "action": "artifact.write",
            "name": "carry.json",
            "content": {"n": "${steps.one.output.event_id}"},
        },
        {"id": "three", "action": "event.emit", "type": "e2e.carry", "data": {"n": 3}},
    ]
    execution_id = started(platform, create_intent(platform, steps))
    status, events = follow(platform, execution_id)
    assert status == "succeeded"
    assert [e["step"] for e in events if e["type"] == "step_completed"] == ["one", "two", "three"]
    platform_db = conninfo_to_dict(pg.owner_url)["dbname"]
    with psycopg.connect(make_conninfo(pg.admin_url, dbname=platform_db)) as conn:
        # The last dispatch records the run's success before its answer reaches the orchestration: its history is
        # whole once the orchestration has completed too.
        orchestration_completed(conn, execution_id)
        history = conn.execute(
            "SELECT (event ->> 'EventType')::int, event ->> 'Name' FROM devhost_durable.history"
            " WHERE instance_id = %s ORDER BY position",
            (execution_id,),
        ).fetchall()
        attempts = conn.execute(
            "SELECT step_id, attempt, delivery, claims FROM app.step_attempts WHERE execution_id = %s ORDER BY step_id",
            (execution_id,),
        ).fetchall()
    scheduled = [name for kind, name in history if kind == 4]  # TaskScheduled
    assert [(step, attempt, claims) for step, attempt, _, claims in attempts] == [
        ("one", 1, 1),
        ("three", 1, 1),
        ("two", 1, 1),
    ]
    if all(delivery == "answered" for _, _, delivery, _ in attempts):
        # Every result came within the dispatch's wait.
        assert scheduled == ["dispatch_steps"], scheduled
        assert sum(1 for kind, _ in history if kind == 12) == 2  # OrchestratorStarted: the start and the answer
    else:
        # A loaded machine may miss the wait: the dispatch then answers what it has, and the orchestration asks for
        # the next level itself once the missed result is raised to it. So one dispatch, and one more for each
        # level after a missed result; a missed result of the last level needs none (the run's end is recorded).
        missed_before_the_last = sum(
            1 for step, _, delivery, _ in attempts if step != "three" and delivery != "answered"
        )
        assert scheduled.count("dispatch_steps") == 1 + missed_before_the_last, (scheduled, attempts)
    detail_steps = steps_of(detail(platform, execution_id))
    assert detail_steps["two"]["output"]["size"] > 0


def test_another_tenants_execution_is_not_found_on_every_route(platform: Platform, side_effects: SideEffects) -> None:
    intent = create_intent(platform, [{"id": "gate", "action": "approval"}])
    execution_id = started(platform, intent)
    follow(platform, execution_id, until=("waiting",))
    other = platform.headers(
        ["Intent.Reader", "Intent.Executor", "Intent.Approver", "Intent.Deployer"], tenant="fabrikam", oid=APPROVER
    )
    base = f"{platform.base}/api/v1/executions/{execution_id}"
    for method, url, body in (
        ("GET", base, None),
        ("GET", f"{base}/events", None),
        ("POST", f"{base}/cancel", None),
        ("POST", f"{base}/approvals/gate", {"decision": "approve"}),
        ("POST", f"{base}/retry", {}),
        ("POST", f"{platform.base}/api/v1/intents/{intent}/execute", {}),
    ):
        response = httpx.request(method, url, json=body, headers=other)
        assert response.status_code == 404, (url, response.status_code, response.text)
    assert detail(platform, execution_id)["status"] == "waiting"
    httpx.post(f"{base}/cancel", headers=platform.headers(AUTHOR))
    assert follow(platform, execution_id)[0] == "cancelled"


def _change_tenant(platform: Platform, tenant: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Platform.Admin changes a tenant through the control plane; `change` maps the tenant to the PATCH body."""
    admin = platform.headers(["Platform.Admin"])
    tenant_id, cursor = None, None
    while tenant_id is None:  # every page: other tests' tenants may come first
        params = {"cursor": cursor} if cursor else {}
        listing = httpx.get(f"{platform.base}/api/v1/tenants", headers=admin, params=params).json()
        tenant_id = next((item["id"] for item in listing["items"] if item["name"] == tenant), None)
        cursor = listing["next_cursor"]
        assert tenant_id is not None or cursor, f"no tenant named {tenant}"
    current = httpx.get(f"{platform.base}/api/v1/tenants/{tenant_id}", headers=admin)
    changed = httpx.patch(
        f"{platform.base}/api/v1/tenants/{tenant_id}",
        json=change(current.json()),
        headers={**admin, "If-Match": current.headers["etag"]},
    )
    assert changed.status_code == 200, changed.text


def _set_quota(platform: Platform, tenant: str, quota: int | None) -> None:
    _change_tenant(platform, tenant, lambda t: {"quotas": {**t["quotas"], "max_concurrent_executions": quota}})


def test_a_module_the_tenant_no_longer_allows_is_refused_when_executed(
    platform: Platform, side_effects: SideEffects
) -> None:
    headers = platform.headers(AUTHOR, tenant="fabrikam")
    body = {
        "name": f"gated-{uuid.uuid4().hex[:6]}",
        "definition": {
            "target": "staging",
            "steps": [
                {"id": "notify", "action": "event.emit", "type": "x.y"},
                {"id": "pause", "action": "wait", "seconds": 1},
            ],
        },
    }
    intent = httpx.post(f"{platform.base}/api/v1/intents", json=body, headers=headers).json()["id"]
    _change_tenant(
        platform, "fabrikam", lambda t: {"allowed_modules": [m for m in t["allowed_modules"] if m != "event"]}
    )
    try:
        refused = execute(platform, intent, {}, headers)
        assert refused.status_code == 403, refused.text
        assert refused.json()["violations"] == [{"step": "notify", "reason": "module_not_allowed", "value": "event"}]
        listing = httpx.get(
            f"{platform.base}/api/v1/executions",
            params={"intent_id": intent},
            headers=platform.headers(["Intent.Reader"], tenant="fabrikam"),
        ).json()
        assert listing["items"] == []
    finally:
        _change_tenant(platform, "fabrikam", lambda t: {"allowed_modules": [*t["allowed_modules"], "event"]})


def test_the_concurrent_execution_quota_answers_429(platform: Platform) -> None:
    _set_quota(platform, "fabrikam", 1)
    try:
        headers = platform.headers(AUTHOR, tenant="fabrikam")
        body = {
            "name": f"quota-{uuid.uuid4().hex[:6]}",
            "definition": {"target": "staging", "steps": [{"id": "gate", "action": "approval"}]},
        }
        intent = httpx.post(f"{platform.base}/api/v1/intents", json=body, headers=headers).json()["id"]
        first = execute(platform, intent, {}, headers)
        assert first.status_code == 202
        second = execute(platform, intent, {}, headers)
        assert second.status_code == 429 and second.headers["retry-after"]
        assert second.json()["limit"] == 1
        listing = httpx.get(
            f"{platform.base}/api/v1/executions",
            params={"intent_id": intent},
            headers=platform.headers(["Intent.Reader"], tenant="fabrikam"),
        ).json()
        assert len(listing["items"]) == 1  # the refused start recorded nothing
        plan = httpx.post(f"{platform.base}/api/v1/intents/{intent}/plan", headers=headers).json()
        assert plan["quota"] == {"max_concurrent_executions": 1, "running_executions": 1, "headroom": 0}
        assert plan["caller_may_execute"] is False
        first_url = f"{platform.base}/api/v1/executions/{first.json()['execution_id']}"
        assert httpx.post(f"{first_url}/cancel", headers=headers).status_code == 202
        # Waited for: a cancel left unfinished when this module's devhost stops would hold fabrikam's slot.
        deadline = time.monotonic() + 60
        while httpx.get(first_url, headers=headers).json()["status"] != "cancelled":
            assert time.monotonic() < deadline, "the cancel did not end the execution"
            time.sleep(0.2)
    finally:
        _set_quota(platform, "fabrikam", None)


def test_production_needs_a_deployer_and_the_body_key_is_an_idempotency_key(platform: Platform) -> None:
    intent = create_intent(platform, [{"id": "pause", "action": "wait", "seconds": 0.1}], target="production")
    refused = execute(platform, intent, {})
    assert refused.status_code == 403 and refused.json()["reason"] == "production_requires_deployer"
    deployer = platform.headers(["Intent.Deployer", "Intent.Reader"])
    body = {"input": {}, "idempotency_key": f"producer-{uuid.uuid4().hex[:8]}"}
    first, second = (execute(platform, intent, body, deployer) for _ in range(2))
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["execution_id"] == second.json()["execution_id"] and second.json()["created"] is False
    assert follow(platform, first.json()["execution_id"])[0] == "succeeded"


def test_a_pinned_version_is_decided_on_its_own_target(platform: Platform) -> None:
    """Version 1 runs in production, version 2 in staging: an Executor may run version 2, never version 1, though
    the intent's current version is staging's."""
    name = f"moved-{uuid.uuid4().hex[:6]}"
    intent = create_intent(
        platform, [{"id": "pause", "action": "wait", "seconds": 0.01}], target="production", name=name
    )
    moved = httpx.put(
        f"{platform.base}/api/v1/intents/{intent}",
        headers={**platform.headers(AUTHOR), "If-Match": f'"{intent}.v1"'},
        json={
            "name": name,
            "definition": {"target": "staging", "steps": [{"id": "pause", "action": "wait", "seconds": 0.01}]},
        },
    )
    assert moved.status_code == 200, moved.text
    refused = execute(platform, intent, {"version": 1})
    assert refused.status_code == 403 and refused.json()["reason"] == "production_requires_deployer", refused.text
    current = execute(platform, intent, {"version": 2})
    assert current.status_code == 202, current.text
    deployer = execute(platform, intent, {"version": 1}, platform.headers(["Intent.Deployer", "Intent.Reader"]))
    assert deployer.status_code == 202, deployer.text
    assert detail(platform, deployer.json()["execution_id"])["target"] == "production"


def test_retry_on_a_newer_version_requires_the_reused_steps_unchanged(
    platform: Platform, side_effects: SideEffects
) -> None:
    tag = uuid.uuid4().hex[:6]
    name = f"evolving-{tag}"
    steps = [
        {"id": "build", **http(side_effects, f"build-{tag}")},
        {"id": "deploy", **http(side_effects, f"dep-{tag}")},
    ]
    intent = create_intent(platform, steps, name=name)
    side_effects.failing.add(f"dep-{tag}")
    failed = started(platform, intent)
    assert follow(platform, failed)[0] == "failed"
    side_effects.failing.discard(f"dep-{tag}")
    headers = platform.headers(AUTHOR)

    def new_version(version_steps: list[dict[str, Any]], etag: str) -> str:
        updated = httpx.put(
            f"{platform.base}/api/v1/intents/{intent}",
            headers={**headers, "If-Match": etag},
            json={"name": name, "definition": {"target": "staging", "steps": version_steps}},
        )
        assert updated.status_code == 200, updated.text
        return str(updated.headers["etag"])

    etag = new_version([{**steps[0], "url": side_effects.url(f"build2-{tag}")}, steps[1]], f'"{intent}.v1"')
    changed = httpx.post(f"{platform.base}/api/v1/executions/{failed}/retry", json={"version": 2}, headers=headers)
    assert changed.status_code == 409 and "build" in changed.json()["detail"]
    new_version([steps[0], {**steps[1], "url": side_effects.url(f"dep3-{tag}")}], etag)
    retried = httpx.post(f"{platform.base}/api/v1/executions/{failed}/retry", json={"version": 3}, headers=headers)
    assert retried.status_code == 202, retried.text
    assert follow(platform, retried.json()["execution_id"])[0] == "succeeded"
    assert len(side_effects.named(f"build-{tag}")) == 1 and len(side_effects.named(f"dep3-{tag}")) == 1
    assert detail(platform, retried.json()["execution_id"])["intent_version"] == 3
