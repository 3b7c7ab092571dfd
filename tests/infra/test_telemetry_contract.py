# intent_ref: platform.telemetry
"""The monitoring (alerts, workbook, triage runbook) queries only telemetry the app declares and logs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from shared import telemetry

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "bicep" / "monitoring"
RUNBOOK = ROOT / "docs" / "runbooks" / "incident-triage.md"

# A quoted literal that names an event (`step.failed`) or a family of them (`execution.`).
_EVENT_LITERAL = re.compile(r"'([a-z]+\.[a-z_]*)'")
_PARSE = f"where message startswith '{telemetry.PREFIX}'"
_EXTRACT = f"parse_json(substring(message, strlen('{telemetry.PREFIX}')))"


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
    runbook = RUNBOOK.read_text(encoding="utf-8")
    queries.update(
        {f"runbook block {n}": block for n, block in enumerate(re.findall(r"```kusto\n(.*?)```", runbook, flags=re.S))}
    )
    return queries


def _telemetry_queries() -> dict[str, str]:
    return {name: query for name, query in _queries().items() if telemetry.PREFIX.strip() in query}


def _named_events(query: str) -> set[str]:
    return {literal for literal in _EVENT_LITERAL.findall(query) if literal != telemetry.PREFIX.strip()}


def test_the_monitoring_reads_telemetry_and_the_outcomes_it_alerts_on() -> None:
    named = set().union(*(_named_events(q) for q in _telemetry_queries().values()))
    # The contract is not vacuous: the alert and the workbook's panels are built on these.
    assert {"execution.failed", "step.completed", "step.failed", "execution."} <= named
    assert any(name.startswith("alert ") for name in _telemetry_queries())


@pytest.mark.parametrize("name", sorted(_telemetry_queries()))
def test_every_queried_event_is_declared_and_parsed_the_way_it_is_logged(name: str) -> None:
    query = _telemetry_queries()[name]
    assert _PARSE in query and _EXTRACT in query, f"{name} must parse the line shared/telemetry.py writes"
    for event in _named_events(query):
        if event.endswith("."):
            assert any(e.startswith(event) for e in telemetry.EVENTS), f"{name}: no declared event is {event}*"
        else:
            assert event in telemetry.EVENTS, f"{name}: {event} is not declared in shared/telemetry.py EVENTS"


def test_nothing_queries_dimensions_or_events_the_app_never_writes() -> None:
    texts = {**_queries(), "runbook": RUNBOOK.read_text(encoding="utf-8")}
    for name, text in texts.items():
        # The Functions Python worker does not turn a log record's extra fields into customDimensions.
        assert "customDimensions.event" not in text, name


def test_rejected_intent_requests_are_alerted_and_shown() -> None:
    queries = _telemetry_queries()
    alerting = {name for name, query in queries.items() if "ingress.rejected" in _named_events(query)}
    assert any(name.startswith("alert ") for name in alerting), alerting
    assert any(name.startswith("workbook ") for name in alerting), alerting
    assert any(name.startswith("runbook ") for name in alerting), alerting


def test_a_telemetry_line_is_what_the_queries_parse() -> None:
    line = telemetry.telemetry_line(
        "step.completed", tenant_id="t1", action="http.request", duration_ms=12, step_id=None
    )
    assert line.startswith(telemetry.PREFIX)
    # substring(message, strlen(PREFIX)) is what the queries hand to parse_json.
    assert json.loads(line[len(telemetry.PREFIX) :]) == {
        "event": "step.completed",
        "tenant_id": "t1",
        "action": "http.request",
        "duration_ms": 12,
    }
