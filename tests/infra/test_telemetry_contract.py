# intent_ref: platform.telemetry
"""The monitoring (alerts, workbook, triage runbook) queries only what the app emits: its metrics with their
dimensions, its span names, and the telemetry events it records on spans."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shared import telemetry
from shared.ingress import process as ingress
from shared.observability import metrics, tracing
from tools.export_openapi import render_openapi

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "bicep" / "monitoring"
RUNBOOK = ROOT / "docs" / "runbooks" / "incident-triage.md"
OPERATIONS = ROOT / "docs" / "operations.md"

_METRIC = re.compile(r"'(qp\.[a-z_.]+)'")
_DIMENSION = re.compile(r"customDimensions\['([^']+)'\]")
_SPAN_PREFIX = re.compile(r"name (?:startswith|!startswith) '([^']+)'")
_MESSAGE = re.compile(r"message (?:==|in) (\([^)]*\)|'[^']*')")

# Every dimension the app puts on a metric, a span or a span event that the queries may read.
EMITTED_DIMENSIONS = {
    tracing.TENANT_ID,
    tracing.INTENT_ID,
    tracing.EXECUTION_ID,
    tracing.STEP_ID,
    tracing.ACTION,
    metrics.STATUS,
    metrics.OUTCOME,
    metrics.REASON,
    metrics.POOL,
    # The fields of the telemetry events, which are events on spans (traces with the event's name as message).
    "execution_id",
    "step_id",
    "attempt",
    "duration_ms",
    "reason",
    "error",
    "event_id",
    "principal",
    "detail",
    # The exporter's own: a span's links (the `execution start` root links the request that asked for it).
    "_MS.links",
}
# The names of the spans the app starts itself (the instrumentations name the others by route or statement).
EMITTED_SPAN_PREFIXES = {"module ", "activity ", "intent-requests ", "execution "}


def _queries() -> dict[str, str]:
    alerts: dict[str, Any] = json.loads((MONITORING / "alerts.json").read_text(encoding="utf-8"))
    workbook: dict[str, Any] = json.loads((MONITORING / "workbook.json").read_text(encoding="utf-8"))
    queries = {f"alert {name}": str(alert["query"]) for name, alert in alerts.items()}
    queries.update(
        {
            f"workbook {item['name']}": str(item["content"]["query"])
            for item in workbook["items"]
            if "query" in item["content"]
        }
    )
    for path in (RUNBOOK, OPERATIONS):
        text = path.read_text(encoding="utf-8")
        blocks = re.findall(r"```kusto\n(.*?)```", text, flags=re.S)
        queries.update({f"{path.name} block {n}": block for n, block in enumerate(blocks)})
    return queries


@pytest.mark.parametrize("name", sorted(_queries()))
def test_every_query_names_only_metrics_dimensions_spans_and_events_the_app_emits(name: str) -> None:
    query = _queries()[name]
    assert "qp.telemetry " not in query, f"{name} parses log lines; query the metrics and spans instead"
    for metric in _METRIC.findall(query):
        assert metric in metrics.NAMES, f"{name}: the app emits no metric {metric}"
    for dimension in _DIMENSION.findall(query):
        assert dimension in EMITTED_DIMENSIONS, f"{name}: nothing the app emits carries {dimension}"
    for prefix in _SPAN_PREFIX.findall(query):
        assert prefix in EMITTED_SPAN_PREFIXES, f"{name}: the app starts no span named {prefix}*"
    for listed in _MESSAGE.findall(query):
        for event in re.findall(r"'([^']+)'", listed):
            assert event in telemetry.EVENTS, f"{name}: {event} is not an event the app records"


def test_the_alerts_cover_what_operators_must_hear_about() -> None:
    alerts = {name: query for name, query in _queries().items() if name.startswith("alert ")}
    named = set().union(*(set(_METRIC.findall(q)) for q in alerts.values()))
    # Failure rate, stuck executions, queue lag, pool saturation, rejected intent requests (and 5xx, latency).
    assert {
        metrics.EXECUTIONS_ENDED,
        metrics.EXECUTIONS_STALLED,
        metrics.MODULE_WORK_LAG,
        metrics.WORK_QUEUE_LAG,
        metrics.DB_POOL_IN_USE,
        metrics.INGRESS_REJECTED,
    } <= named, named
    assert any("resultCode" in q for q in alerts.values())  # the 5xx rate


def test_every_metric_is_shown_in_the_workbook_and_documented() -> None:
    workbook = " ".join(q for name, q in _queries().items() if name.startswith("workbook "))
    operations = OPERATIONS.read_text(encoding="utf-8")
    for metric in metrics.NAMES:
        assert f"'{metric}'" in workbook, f"no workbook panel shows {metric}"
        assert f"`{metric}`" in operations, f"docs/operations.md does not describe {metric}"


def test_every_alert_is_explained_in_the_operations_guide() -> None:
    alerts: dict[str, Any] = json.loads((MONITORING / "alerts.json").read_text(encoding="utf-8"))
    operations = OPERATIONS.read_text(encoding="utf-8")
    for name in alerts:
        assert f"`{name}`" in operations, f"docs/operations.md does not say what {name} means and what to do"


def test_the_ingress_rejections_runbook_explains_each_reason_the_tenant_has_no_record_of() -> None:
    # These are counted and logged only, never recorded for a tenant: the alert's row is where an operator learns what
    # to look for. An event dropped after the trigger's last retry (`dropped`) was counted and not explained there.
    row = next(
        line
        for line in OPERATIONS.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `ingress-rejections` |")
    )
    for reason in ("unauthenticated", ingress.DROPPED):
        assert f"`{reason}`" in row, f"the ingress-rejections row does not explain reason {reason}"
    for named in ("event id", "hub", "partition", "sequence number", "tenant", "request reference"):
        assert named in row, f"the ingress-rejections row does not say the dropped line names the {named}"


def test_a_telemetry_line_is_still_logged_for_the_log_stream() -> None:
    line = telemetry.telemetry_line("step.completed", tenant_id="t1", action="http.request", duration_ms=12)
    assert json.loads(line[len(telemetry.PREFIX) :]) == {
        "event": "step.completed",
        "tenant_id": "t1",
        "action": "http.request",
        "duration_ms": 12,
    }


def test_the_http_alerts_and_the_api_latency_panel_count_only_rows_with_a_url() -> None:
    # A module step's consumer span (`module <action>`) is a `requests` row without a url: counted, a tenant's slow
    # endpoint paged operators as API latency and diluted the 5xx rate.
    alerts: dict[str, Any] = json.loads((MONITORING / "alerts.json").read_text(encoding="utf-8"))
    for name in ("latency-p95", "http-5xx-rate"):
        query = str(alerts[name]["query"])
        assert re.match(r"requests \| where isnotempty\(url\)", query), f"alert {name} counts rows without a url"
    # The API latency panel, in the workbook and in the operations guide.
    panels = {name: q for name, q in _queries().items() if "percentile(duration, 95)" in q and "by name" in q}
    assert "workbook API latency p95 by operation (ms)" in panels, panels
    for name, query in panels.items():
        assert query.startswith("requests | where isnotempty(url)"), f"{name} counts rows without a url"


def test_open_event_streams_take_each_instances_latest_count_not_the_sum_of_exports() -> None:
    # The up-down counter is exported cumulative: every export is an instance's current count, so summing the rows
    # counted one open stream once per export.
    panels = [q for name, q in _queries().items() if f"'{metrics.EVENT_STREAMS_OPEN}'" in q]
    assert panels
    for query in panels:
        assert "arg_max(timestamp, value) by tenant, cloud_RoleInstance" in query, query
        assert query.index("arg_max") < query.index("sum(value)"), query


def test_the_runbook_finds_a_stalls_execution_by_its_id_not_its_operation_id() -> None:
    # The sweeper records a stall in its own run's trace: a stall's operation_Id opens the sweeper run, not the
    # execution, so the runbook must say how to get from the stall's execution_id to the execution's trace.
    runbook = RUNBOOK.read_text(encoding="utf-8")
    assert "execution.stalled`): the sweeper records it in its own run's trace" in runbook
    finders = [q for name, q in _queries().items() if name.startswith(RUNBOOK.name) and "operation_Id" in q]
    assert any(f"customDimensions['{tracing.EXECUTION_ID}']" in q and "by operation_Id" in q for q in finders)


# The alert and the panel leave a long poll out by the path of its url (a route's name, `GET .../{execution_id}/...`,
# would read as a workbook parameter in the panel): `not(<path> matches regex @'<pattern>')`.
_LONG_POLLS_LEFT_OUT = re.compile(r"not\(tostring\(parse_url\(url\)\.Path\) matches regex @'([^']+)'\)")
_WAIT = re.compile(r"(^|_)wait(_|$)", re.IGNORECASE)


def _routes() -> dict[str, dict[str, Any]]:
    """Every operation of the app's OpenAPI document, by `METHOD path`, with its component schemas resolved."""
    document: dict[str, Any] = json.loads(render_openapi())
    schemas: dict[str, Any] = document["components"]["schemas"]
    routes = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = {str(parameter["name"]) for parameter in operation.get("parameters", [])}
            for content in operation.get("requestBody", {}).get("content", {}).values():
                ref = str(content.get("schema", {}).get("$ref", ""))
                names |= set(schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}))
            routes[f"{method.upper()} {path}"] = {"path": path, "fields": names, "text": json.dumps(operation)}
    return routes


def _long_polls(routes: dict[str, dict[str, Any]]) -> set[str]:
    """The routes that wait on purpose: a `wait`/`wait_s` parameter or body field, or a long poll by their docs."""
    return {
        name
        for name, route in routes.items()
        if any(_WAIT.search(field) for field in route["fields"]) or "long poll" in route["text"].lower()
    }


def _sample_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0f4c8a2e-6b1d-4e5f-9a3c-7d2b1e0f9c84", path)


def test_every_long_poll_route_is_left_out_of_the_latency_alert_and_panels() -> None:
    # An idle worker's lease (wait_s up to 30 s) held the alert's p95 at its wait: the alert fired all day.
    routes = _routes()
    long_polls = _long_polls(routes)
    assert {"GET /api/v1/executions/{execution_id}/events", "POST /api/v1/work/lease"} <= long_polls, long_polls
    alerts: dict[str, Any] = json.loads((MONITORING / "alerts.json").read_text(encoding="utf-8"))
    latency = {"alert latency-p95": str(alerts["latency-p95"]["query"])}
    latency.update({name: q for name, q in _queries().items() if "percentile(duration, 95)" in q and "by name" in q})
    assert "workbook API latency p95 by operation (ms)" in latency, latency
    for name, query in latency.items():
        assert query.startswith("requests | where isnotempty(url) and not("), f"{name} leaves no long poll out"
        [pattern] = _LONG_POLLS_LEFT_OUT.findall(query)
        for route in sorted(routes):
            left_out = re.search(pattern, _sample_path(routes[route]["path"])) is not None
            assert left_out == (route in long_polls), f"{name}: {route} {'is' if left_out else 'is not'} left out"


def test_module_work_lag_and_each_tenants_queue_lag_are_alerted_on_apart() -> None:
    # One mean over both let 2000 promptly leased remote items hide a 300 s module-work outage (3 s), and one
    # tenant's stopped workers page for the platform.
    alerts: dict[str, Any] = json.loads((MONITORING / "alerts.json").read_text(encoding="utf-8"))
    by_metric: dict[str, list[str]] = {}
    for name, alert in alerts.items():
        named = set(_METRIC.findall(str(alert["query"])))
        if named & {metrics.MODULE_WORK_LAG, metrics.WORK_QUEUE_LAG}:
            assert len(named) == 1, f"{name} mixes {sorted(named)}"
            by_metric.setdefault(named.pop(), []).append(name)
    [module_work] = by_metric[metrics.MODULE_WORK_LAG]
    [work_queue] = by_metric[metrics.WORK_QUEUE_LAG]
    module_query = str(alerts[module_work]["query"])
    # The mean, and the longest single wait (a few stuck events among many quick ones).
    assert "total / n" in module_query and "max(valueMax)" in module_query, module_query
    queue_query = str(alerts[work_queue]["query"])
    # Each tenant's mean on its own, one alert per tenant that names it: the rule splits by the query's tenant column.
    per_tenant = queue_query.index(f"tenant = tostring(customDimensions['{tracing.TENANT_ID}'])")
    by_tenant = queue_query.index("sum(valueCount) by tenant")
    assert per_tenant < by_tenant and queue_query.endswith("| project tenant, lag"), queue_query
    assert alerts[work_queue]["dimensions"] == [{"name": "tenant", "operator": "Include", "values": ["*"]}]
    assert "dimensions" not in alerts[module_work], "module-work is the platform's, one alert for every tenant"
    # Both stacks pass an alert's dimensions on to its rule.
    bicep = (ROOT / "bicep" / "modules" / "alerts.bicep").read_text(encoding="utf-8")
    assert "dimensions: contains(alert.value, 'dimensions') ? alert.value.dimensions : []" in bicep
    terraform = (ROOT / "terraform" / "modules" / "alerts" / "main.tf").read_text(encoding="utf-8")
    assert "for_each = try(each.value.dimensions, [])" in terraform and "values   = dimension.value.values" in terraform
    # A tenant's own workers are the tenant's to fix: a lower severity (a higher number) than the platform's hub.
    assert alerts[work_queue]["severity"] > alerts[module_work]["severity"]


_TENANT_FILTER = "'{Tenant}' == '' or tenant == '{Tenant}'"


def test_the_workbook_has_a_tenant_parameter_every_tenants_panel_uses() -> None:
    workbook: dict[str, Any] = json.loads((MONITORING / "workbook.json").read_text(encoding="utf-8"))
    parameters = {
        str(parameter["name"])
        for item in workbook["items"]
        if item["type"] == 9
        for parameter in item["content"]["parameters"]
    }
    assert "Tenant" in parameters, parameters
    panels = {str(item["name"]): str(item["content"]["query"]) for item in workbook["items"] if item["type"] == 3}
    tenant_panels = [name for name, query in panels.items() if f"customDimensions['{tracing.TENANT_ID}']" in query]
    assert len(tenant_panels) >= 10, tenant_panels
    for name, query in panels.items():
        # A `{name}` the workbook has no parameter for would be sent to Log Analytics as is.
        assert set(re.findall(r"\{(\w+)\}", query)) <= parameters, f"{name} names an unknown parameter"
        if name in tenant_panels:
            assert _TENANT_FILTER in query, f"{name} shows every tenant whatever the Tenant parameter"
            assert query.index("tenant = ") < query.index(_TENANT_FILTER), f"{name} filters before tenant is set"
    # The runbook's first step uses it, and the operations guide shows each panel's query as the workbook has it.
    assert "*Tenant id*" in RUNBOOK.read_text(encoding="utf-8")
    operations = OPERATIONS.read_text(encoding="utf-8")
    for item in workbook["items"]:
        if item["type"] == 3:
            title, query = item["content"]["title"], item["content"]["query"]
            assert f"### {title}\n\n```kusto\n{query}\n```" in operations, f"docs/operations.md shows another {title}"


def test_the_operations_guide_opens_an_execution_by_its_start_not_the_requests_operation() -> None:
    # The execution runs under its own root, `execution start`, linked to the request: the request's operation_Id
    # opens the request only.
    operations = OPERATIONS.read_text(encoding="utf-8")
    assert "the request's `operation_Id` opens the whole execution" not in operations
    finders = [q for name, q in _queries().items() if name.startswith(OPERATIONS.name)]
    assert any("'execution start'" in q and "customDimensions['_MS.links']" in q for q in finders), finders


def test_top_errors_counts_exceptions_by_their_kind_not_their_line() -> None:
    """A 500's exported line starts with its own request id, so counting by `outerMessage` listed every 500 apart."""
    query = _queries()["workbook Top errors"]
    exceptions = query.split("(exceptions |", 1)[1].split("), (requests", 1)[0]
    assert "error = iff(isnotempty(problemId), problemId, type)" in exceptions, exceptions
    assert "outerMessage" not in exceptions, exceptions
