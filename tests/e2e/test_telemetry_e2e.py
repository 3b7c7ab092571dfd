# intent_ref: platform.telemetry
"""Telemetry through the Azure Monitor distro, captured by a local server that speaks the ingestion endpoint of a
connection string: one operation id from the start of an execution (linked to its request) to its last step (a
module step and a remote step), the dimensions on the spans, the platform's metrics, the app's own log records (and
no one else's), the long polls as the latency alert leaves them out, and requests that still succeed with the
endpoint down."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from devhost.child import PROJECT_ROOT
from devhost.workers import WORKER_COUNT_SETTING
from shared.observability.setup import APP_LOGGERS
from tests.e2e.conftest import DevhostFactory
from tests.e2e.test_remote_worker_e2e import TERMINAL, Tenant, worker_running

pytestmark = pytest.mark.e2e

NOTE_STEP = {"id": "note", "action": "artifact.write", "name": "note.json", "content": {"traced": True}}
MODULE_AND_REMOTE = {
    "name": "traced",
    "definition": {
        "target": "staging",
        "steps": [
            NOTE_STEP,
            {
                "id": "build",
                "action": "build-docker-image",
                "image": "myapp:latest",
                "context": "./app",
                "depends_on": ["note"],
            },
        ],
    },
}


class Ingestion:
    """An HTTP server that accepts what the exporter posts to `{IngestionEndpoint}/v2.1/track` and keeps it."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        captured = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  # the handler's protocol names it so
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                text = body.decode("utf-8")
                items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.split()]
                with captured.lock:
                    captured.envelopes.extend(items)
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer.encode())

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def connection_string(self) -> str:
        port = self.server.server_address[1]
        return f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{port}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.envelopes if e["data"]["baseType"] in ("RequestData", "RemoteDependencyData")]

    def metrics(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.envelopes if e["data"]["baseType"] == "MetricData"]

    def wait_for(self, what: str, found: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found():
                return
            time.sleep(0.25)
        raise AssertionError(f"never captured {what}; names: {sorted({_name(e) for e in self.spans()})}")


def _name(envelope: dict[str, Any]) -> str:
    return str(envelope["data"]["baseData"].get("name"))


def _props(envelope: dict[str, Any]) -> dict[str, Any]:
    return dict(envelope["data"]["baseData"].get("properties") or {})


def _operation(envelope: dict[str, Any]) -> str:
    return str(envelope["tags"]["ai.operation.id"])


def _metric_points(envelopes: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The properties of every captured data point of metric `name`."""
    return [_props(e) for e in envelopes if any(m["name"] == name for m in e["data"]["baseData"]["metrics"])]


@pytest.fixture
def ingestion() -> Iterator[Ingestion]:
    server = Ingestion()
    yield server
    server.stop()


@pytest.fixture
def traced_platform(devhost_factory: DevhostFactory, ingestion: Ingestion) -> Any:
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",  # its own endpoint is not reachable from here
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "QP_TELEMETRY_SQL_SPANS": "true",  # the statements as dependencies, as an operator turns them on to diagnose
        "QP_TASK_HUB": "TelemetryE2E",
    }
    return devhost_factory(app_dir=PROJECT_ROOT, env=env, extra_args=("--seed-demo",))


def test_one_trace_from_the_request_to_the_last_step_with_dimensions_and_metrics(
    traced_platform: Any, pg: Any, ingestion: Ingestion
) -> None:
    fabrikam = Tenant(traced_platform, pg, "fabrikam")
    tenant_id = httpx.get(f"{fabrikam.base}/api/v1/me", headers=fabrikam.headers, timeout=30).json()["tenant_id"]
    execution_id = fabrikam.start(MODULE_AND_REMOTE)
    with worker_running(traced_platform.base_url, fabrikam.worker_token):
        execution = fabrikam.wait_for(execution_id, lambda e: e["status"] in ("succeeded", "failed"), timeout=90)
    assert execution["status"] == "succeeded", execution

    def of_execution() -> list[dict[str, Any]]:
        return [e for e in ingestion.spans() if _props(e).get("execution.id") == execution_id]

    ingestion.wait_for(
        "the module step, the remote completion and the execution's end",
        lambda: (
            {"module artifact.write", "activity record_status"} <= {_name(e) for e in of_execution()}
            and any(_name(e).endswith("/complete") for e in of_execution())
        ),
    )
    spans = ingestion.spans()
    request = next(e for e in spans if _name(e) == "POST /api/v1/intents/{intent_id}/execute")
    assert _props(request)["tenant.id"] == tenant_id
    # Every span of the execution, from every process part, is in one operation of the platform's own, started by its
    # `execution start` root, which links the request that asked for it (a caller's traceparent is never continued).
    [operation] = {_operation(e) for e in of_execution()}
    start = next(e for e in spans if _name(e) == "execution start" and _operation(e) == operation)
    assert operation != _operation(request)
    assert request["data"]["baseData"]["id"] in str(_props(start).get("_MS.links")), _props(start)
    in_operation = [e for e in spans if _operation(e) == operation]
    names = {_name(e) for e in in_operation}
    assert {"activity dispatch_steps", "module artifact.write", "activity record_status"} <= names, names
    # The database statements of the start and of the steps are dependencies in the same operation.
    assert any(e["data"]["baseData"].get("type") == "postgresql" for e in in_operation), names

    module = next(e for e in of_execution() if _name(e) == "module artifact.write")
    assert {k: _props(module).get(k) for k in ("tenant.id", "step.id", "step.attempt", "action")} == {
        "tenant.id": tenant_id,
        "step.id": "note",
        "step.attempt": "1",
        "action": "artifact.write",
    }
    complete = next(e for e in of_execution() if _name(e).endswith("/complete"))
    assert _props(complete)["step.id"] == "build" and _props(complete)["tenant.id"] == tenant_id
    activity = next(e for e in of_execution() if _name(e) == "activity dispatch_steps")
    assert _props(activity)["intent.id"] and _props(activity)["intent.version"] == "1"

    # The outcomes are span events, which arrive as traces of the span's operation (the workbook's top errors).
    messages = [e for e in ingestion.envelopes if e["data"]["baseType"] == "MessageData"]
    started_events = [e for e in messages if e["data"]["baseData"]["message"] == "execution.started"]
    assert any(_props(e).get("tenant.id") == tenant_id and _operation(e) == operation for e in started_events)

    # The metrics, with their tenant dimensions.
    ingestion.wait_for(
        "the execution's metrics",
        lambda: any(p.get("status") == "succeeded" for p in _metric_points(ingestion.metrics(), "qp.executions.ended")),
    )
    metrics = ingestion.metrics()
    started = _metric_points(metrics, "qp.executions.started")
    assert any(p.get("tenant.id") == tenant_id for p in started), started
    ended = _metric_points(metrics, "qp.executions.ended")
    assert any(p.get("tenant.id") == tenant_id and p.get("status") == "succeeded" for p in ended), ended
    steps = _metric_points(metrics, "qp.step.duration")
    assert {p.get("action") for p in steps if p.get("tenant.id") == tenant_id} >= {"artifact.write"}, steps
    assert any(p.get("tenant.id") == tenant_id for p in _metric_points(metrics, "qp.work_queue.lag"))
    assert _metric_points(metrics, "qp.module_work.lag")
    assert {p.get("pool") for p in _metric_points(metrics, "qp.db.pool.wait")} >= {"quantum"}


def test_the_long_polls_are_the_requests_the_latency_alert_leaves_out(
    traced_platform: Any, pg: Any, ingestion: Ingestion
) -> None:
    # An idle worker's empty leases (wait_s up to 30 s) held the alert's p95 at their wait: it fired all day.
    fabrikam = Tenant(traced_platform, pg, "fabrikam")
    for _ in range(5):  # ordinary quick requests
        assert httpx.get(f"{fabrikam.base}/api/v1/me", headers=fabrikam.headers, timeout=30).status_code == 200
    answer = fabrikam.lease(["nothing-queued-here"], wait_s=0.5)  # an idle worker's poll
    assert answer.status_code == 200 and answer.json()["items"] == [], answer.text
    module_only = {"name": "long-poll", "definition": {**MODULE_AND_REMOTE["definition"], "steps": [NOTE_STEP]}}
    execution_id = fabrikam.start(module_only)
    events = httpx.get(
        f"{fabrikam.base}/api/v1/executions/{execution_id}/events",
        params={"after": 1000, "wait": 0.5},
        headers=fabrikam.headers,
        timeout=30,
    )
    assert events.status_code == 200, events.text

    def requests() -> dict[str, list[str]]:
        """The url paths of the captured API requests, by request name."""
        rows: dict[str, list[str]] = {}
        for envelope in ingestion.spans():
            data = envelope["data"]["baseData"]
            if envelope["data"]["baseType"] == "RequestData" and data.get("url"):
                rows.setdefault(str(data["name"]), []).append(urlsplit(str(data["url"])).path)
        return rows

    long_polls = {"POST /api/v1/work/lease", "GET /api/v1/executions/{execution_id}/events"}
    ingestion.wait_for(
        "the long polls and the quick requests", lambda: {*long_polls, "GET /api/v1/me"} <= set(requests())
    )
    alert = json.loads((PROJECT_ROOT / "bicep" / "monitoring" / "alerts.json").read_text(encoding="utf-8"))[
        "latency-p95"
    ]
    patterns = re.findall(r"matches regex @'([^']+)'", alert["query"])
    assert len(patterns) == 1, f"the alert leaves no long poll out by its path: {alert['query']}"
    pattern = patterns[0]
    for name, paths in requests().items():
        for path in paths:
            # Left out exactly when the request is a long poll, by the url the exporter gives Application Insights.
            assert (re.search(pattern, path) is not None) == (name in long_polls), (name, path, alert["query"])


_LOGGING_PROCESS = """
import logging, sys
from opentelemetry._logs import get_logger_provider
from shared.api import problems
from shared.ingress import process
from shared.observability.setup import configure_telemetry

assert configure_telemetry(sys.argv[1], None) == "azure-monitor"
logging.getLogger().setLevel(logging.INFO)  # as the Functions worker sets the root logger
try:
    raise RuntimeError("the database went away")
except RuntimeError as exc:  # as the app's handler of an unhandled error logs it
    problems.logger.error("request %s: unhandled error on %s", "req-e2e-500", "/api/v1/intents", exc_info=exc)
process.logger.error("intent-requests: event %s failed and will be retried: %s", "0/42", "down")
logging.getLogger("functions.timer_execution_sweeper").info("sweeper: app info line")
others = ("azure.core.pipeline.policies.http_logging_policy", "azure.identity", "httpx", "urllib3", "psycopg")
for name in (*others, "opentelemetry.sdk", "sharedlib", ""):
    logging.getLogger(name).info("third-party chatter from %s", name or "the root")
    logging.getLogger(name).warning("third-party warning from %s", name or "the root")
get_logger_provider().force_flush()
"""


def test_the_apps_own_log_records_are_exported_and_no_other_loggers(ingestion: Ingestion, tmp_path: Path) -> None:
    # Only `qp` was exported: a 500's `request <id>: unhandled error` (shared.api.problems), the line operators are
    # told to find by its request_id, never left the app's exporter.
    env = {**os.environ, "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "OTEL_BLRP_SCHEDULE_DELAY": "200"}
    env["TMPDIR"] = str(tmp_path)  # the exporter's retry store stays in the test's folder
    done = subprocess.run(
        [sys.executable, "-c", _LOGGING_PROCESS, ingestion.connection_string],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr

    def records() -> list[dict[str, Any]]:
        with ingestion.lock:
            return [e for e in ingestion.envelopes if e["data"]["baseType"] in ("MessageData", "ExceptionData")]

    def text(envelope: dict[str, Any]) -> str:
        data = envelope["data"]["baseData"]
        return str(data["exceptions"][0]["message"] if "exceptions" in data else data["message"])

    ingestion.wait_for("the app's log records", lambda: len(records()) >= 3)
    exported = {text(e): e for e in records()}
    unhandled = exported["request req-e2e-500: unhandled error on /api/v1/intents"]
    # With its stack, as an `exceptions` row whose outerMessage is the line (docs/operations.md).
    assert unhandled["data"]["baseType"] == "ExceptionData"
    assert "the database went away" in unhandled["data"]["baseData"]["exceptions"][0]["stack"]
    assert _props(unhandled)["logger_name"] == "shared.api.problems"
    retried = exported["intent-requests: event 0/42 failed and will be retried: down"]
    assert _props(retried)["logger_name"] == "shared.ingress.process"
    assert "sweeper: app info line" in exported
    # Nothing from outside the app's trees, at INFO or above; each record names an app logger.
    assert not [line for line in exported if "third-party" in line], sorted(exported)
    for line, envelope in exported.items():
        logger = str(_props(envelope).get("logger_name"))
        assert any(logger == tree or logger.startswith(f"{tree}.") for tree in APP_LOGGERS), (logger, line)


_FORWARDING_PROCESS = """
import json, logging, sys, uuid
from opentelemetry import trace
from opentelemetry._logs import get_logger_provider
from shared import telemetry
from shared.observability.setup import configure_telemetry
from shared.observability.tracing import tracer

forwarded = []


class Host(logging.Handler):  # as the Functions worker forwards every record that reaches the root to the host
    def emit(self, record):
        forwarded.append(record.getMessage())


logging.getLogger().setLevel(logging.INFO)
logging.getLogger().addHandler(Host())
assert configure_telemetry(sys.argv[1], None) == "azure-monitor"
with tracer.start_as_current_span("request"):
    telemetry.emit("execution.failed", tenant_id=uuid.UUID(int=7), execution_id=uuid.UUID(int=8), status="failed",
                   error="the step failed")
logging.getLogger("shared.ingress.process").warning("app warning line")
logging.getLogger("functions.timer_execution_sweeper").info("app info line")
for _ in range(2):  # the second export follows the first one's own log records
    trace.get_tracer_provider().force_flush()
    get_logger_provider().force_flush()
print(json.dumps(forwarded))
"""


def test_each_app_record_and_outcome_is_exported_once_and_not_forwarded_to_the_host(
    ingestion: Ingestion, tmp_path: Path
) -> None:
    # The app's trees propagated to the root, which the Functions worker forwards to the host, which sent each line to
    # the same Application Insights again; an outcome was its span event, its exported `qp.telemetry` line and the
    # host's copy of that line: three `traces` rows. The exporter's own INFO records reached the host too.
    env = {**os.environ, "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "OTEL_BLRP_SCHEDULE_DELAY": "200"}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _FORWARDING_PROCESS, ingestion.connection_string],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    forwarded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])

    def messages() -> list[str]:
        with ingestion.lock:
            return [
                str(e["data"]["baseData"]["message"])
                for e in ingestion.envelopes
                if e["data"]["baseType"] == "MessageData"
            ]

    ingestion.wait_for(
        "the records", lambda: {"execution.failed", "app warning line", "app info line"} <= {*messages()}
    )
    exported = messages()  # every envelope, counted: one each
    assert exported.count("execution.failed") == 1, exported
    assert exported.count("app warning line") == 1 and exported.count("app info line") == 1, exported
    assert not [m for m in exported if m.startswith("qp.telemetry ")], exported
    # Nothing of the app's, nor the exporter's INFO, reached the root (the host's log stream and its own export).
    assert not [m for m in forwarded if m.startswith("qp.telemetry ") or m.startswith("app ")], forwarded
    assert not [m for m in forwarded if "Transmission succeeded" in m or "Request URL" in m], forwarded


def test_requests_still_succeed_with_the_ingestion_endpoint_down(
    traced_platform: Any, pg: Any, ingestion: Ingestion
) -> None:
    fabrikam = Tenant(traced_platform, pg, "fabrikam")
    ingestion.stop()  # nothing listens on the connection string's endpoint any more
    execution_id = fabrikam.start({**MODULE_AND_REMOTE, "name": "untraced"})
    with worker_running(traced_platform.base_url, fabrikam.worker_token):
        execution = fabrikam.wait_for(execution_id, lambda e: e["status"] in ("succeeded", "failed"), timeout=90)
    assert execution["status"] == "succeeded", execution
    for _ in range(20):
        answer = httpx.get(f"{fabrikam.base}/api/v1/executions/{execution_id}", headers=fabrikam.headers, timeout=10)
        assert answer.status_code == 200, answer.text


def test_the_local_trace_command_prints_an_executions_trace_from_the_file(
    devhost_factory: DevhostFactory, pg: Any, tmp_path: Path
) -> None:
    telemetry_file = tmp_path / "telemetry.jsonl"
    env = {"QP_TELEMETRY_FILE": str(telemetry_file), "OTEL_BSP_SCHEDULE_DELAY": "200", "QP_TASK_HUB": "TraceFileE2E"}
    # As make run has it: the request in the host process, activities and modules in two worker processes, all
    # appending to one file and joining one trace.
    env[WORKER_COUNT_SETTING] = "2"
    host = devhost_factory(app_dir=PROJECT_ROOT, env=env, extra_args=("--seed-demo",))
    fabrikam = Tenant(host, pg, "fabrikam")
    module_only = {"name": "local-trace", "definition": {**MODULE_AND_REMOTE["definition"], "steps": [NOTE_STEP]}}
    execution_id = fabrikam.start(module_only)
    assert fabrikam.wait_for(execution_id, lambda e: e["status"] in TERMINAL)["status"] == "succeeded"

    # As the README has it (with the test's file instead of make run's .data/telemetry.jsonl).
    command = [sys.executable, "-m", "devhost", "trace", execution_id, "--file", str(telemetry_file)]
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        complete = "activity dispatch_steps" in done.stdout and "module artifact.write" in done.stdout
        if done.returncode == 0 and complete or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = [line.split("ms", 2)[2].split()[0:2] for line in lines[1:]]
    assert names[0] == ["execution", "start"], lines  # the root: the start, linked to the request
    # The dispatch (a worker process) and the module it started (either worker) continue the start's trace.
    assert ["activity", "dispatch_steps"] in names and ["module", "artifact.write"] in names, lines
    module_line = next(line for line in lines if "module artifact.write" in line)
    assert "step.id=note" in module_line and "[step.completed]" in module_line, module_line
    # A trace of an execution it has never seen: exit code 1 and why.
    missing = subprocess.run([*command[:4], str(uuid.uuid4()), *command[5:]], capture_output=True, text=True)
    assert missing.returncode == 1 and "no spans of execution" in missing.stderr
