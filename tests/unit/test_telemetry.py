# intent_ref: platform.telemetry
"""Telemetry lines: declared names only, one parseable line each, long text cut."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, cast

import psycopg
import pytest

from shared import telemetry
from shared.observability.urls import hide_urls, kept_url


def _parsed(line: str) -> dict[str, object]:
    assert line.startswith(telemetry.PREFIX)
    parsed: dict[str, object] = json.loads(line[len(telemetry.PREFIX) :])
    return parsed


def test_an_undeclared_event_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown telemetry event"):
        telemetry.telemetry_line("execution.exploded", tenant_id="t")


def test_a_line_is_one_line_of_json_without_empty_fields() -> None:
    tenant, execution = uuid.uuid4(), uuid.uuid4()
    line = telemetry.telemetry_line(
        "step.failed",
        tenant_id=tenant,
        execution_id=execution,
        step_id="build",
        attempt=2,
        duration_ms=None,
        error="first line\nsecond line",
    )
    assert "\n" not in line
    assert _parsed(line) == {
        "event": "step.failed",
        "tenant_id": str(tenant),
        "execution_id": str(execution),
        "step_id": "build",
        "attempt": 2,
        "error": "first line\nsecond line",
    }


def test_long_text_is_cut() -> None:
    error = _parsed(telemetry.telemetry_line("execution.failed", tenant_id="t", error="x" * 5000))["error"]
    assert isinstance(error, str) and 300 <= len(error) < 400 and error.endswith("...")


def test_emit_logs_the_line_at_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="qp.telemetry"):
        telemetry.emit("step.completed", tenant_id="t", action="wait", duration_ms=5)
    [record] = caplog.records
    assert (record.name, record.levelno) == ("qp.telemetry", logging.INFO)
    assert _parsed(record.getMessage()) == {
        "event": "step.completed",
        "tenant_id": "t",
        "action": "wait",
        "duration_ms": 5,
    }


def test_an_outcome_recorded_outside_a_transaction_this_context_opened_is_published_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A test's or a script's own connection: no commit of the session helper's will publish it, so it goes now.
    conn = cast("psycopg.Connection[Any]", object())
    with caplog.at_level(logging.INFO, logger="qp.telemetry"):
        telemetry.emit_on_commit(conn, "step.failed", tenant_id="t", action="wait", reason="failed")
    [record] = caplog.records
    assert _parsed(record.getMessage()) == {
        "event": "step.failed",
        "tenant_id": "t",
        "action": "wait",
        "reason": "failed",
    }
    with pytest.raises(ValueError, match="unknown telemetry event"):  # refused when recorded, not at the commit
        telemetry.emit_on_commit(conn, "execution.exploded", tenant_id="t")


def test_a_metric_names_built_in_actions_and_calls_every_registered_one_remote() -> None:
    # Tenants name their own modules, as many as they register: each name was a series of its own per tenant.
    from shared.observability.metrics import metric_action

    assert metric_action("artifact.write") == "artifact.write"
    assert metric_action("verify-deployment") == "verify-deployment"
    assert metric_action("build-docker-image") == metric_action(f"tenant-made-{uuid.uuid4().hex}") == "remote"


def test_a_tenant_s_intents_beyond_the_bound_share_one_series_and_leave_other_tenants_theirs() -> None:
    # Every series lives as long as the process: a tenant running a new intent each time grew memory without end.
    from shared.observability.metrics import INTENTS_PER_TENANT, OTHER_INTENTS, metric_intent

    busy, quiet = str(uuid.uuid4()), str(uuid.uuid4())
    first = [uuid.uuid4() for _ in range(INTENTS_PER_TENANT)]
    assert [metric_intent(busy, intent) for intent in first] == [str(intent) for intent in first]
    assert metric_intent(busy, uuid.uuid4()) == metric_intent(busy, uuid.uuid4()) == OTHER_INTENTS
    assert metric_intent(busy, first[0]) == str(first[0])
    theirs = uuid.uuid4()
    assert metric_intent(quiet, theirs) == str(theirs)


def test_execution_metrics_record_the_bounded_intent(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.observability import metrics

    recorded: list[dict[str, str]] = []

    class Recorder:
        def add(self, _: int, attributes: dict[str, str]) -> None:
            recorded.append(attributes)

        def record(self, _: float, attributes: dict[str, str]) -> None:
            recorded.append(attributes)

    monkeypatch.setattr(metrics, "_counter", lambda *_: Recorder())
    monkeypatch.setattr(metrics, "_histogram", lambda *_: Recorder())
    monkeypatch.setattr(metrics, "INTENTS_PER_TENANT", 1)
    tenant = uuid.uuid4()
    kept, later = uuid.uuid4(), uuid.uuid4()
    metrics.execution_started(tenant, kept)
    metrics.execution_ended(tenant, later, "succeeded", 0.5)
    metrics.execution_stalled(tenant, later)
    assert [attributes["intent.id"] for attributes in recorded] == [str(kept)] + [metrics.OTHER_INTENTS] * 3


def test_a_url_in_an_error_keeps_its_host_and_nothing_after_it() -> None:
    # A failed http.request step's error quotes the URL its tenant wrote, query and webhook-path token included.
    error = (
        "POST https://hooks.example.com/services/T0/XYZSECRET?api_key=tok123 failed: ConnectError: "
        "[Errno 111] for url 'http://user:pw@10.0.0.5:8080/x?code=fnkey'"
    )
    line = telemetry.telemetry_line("step.failed", tenant_id="t", error=error)
    for secret in ("XYZSECRET", "tok123", "fnkey", "user:pw"):
        assert secret not in line
    assert _parsed(line)["error"] == (
        "POST https://hooks.example.com/REDACTED failed: ConnectError: [Errno 111] for url 'http://10.0.0.5:8080/REDACTED'"
    )


def test_a_url_that_does_not_parse_keeps_only_its_scheme() -> None:
    line = telemetry.telemetry_line("step.failed", tenant_id="t", error="GET http://host:abc/secret?k=1 failed")
    assert _parsed(line)["error"] == "GET http://REDACTED failed"


def test_a_quote_in_a_url_does_not_end_it() -> None:
    # User info and paths may hold `'` unencoded: the URL was cut there, and everything after it was kept.
    error = (
        "GET http://u:pa'PWSECRET@127.0.0.1:7149/fail?api_key=QSECRET answered 500, expected 2xx; "
        "then GET http://127.0.0.1:7149/o'clock/PATHSECRET?k=QSECRET2 (see 'https://h.example/a'b')."
    )
    line = telemetry.telemetry_line("step.failed", tenant_id="t", error=error)
    for secret in ("PWSECRET", "QSECRET", "PATHSECRET", "clock", "pa'"):
        assert secret not in line
    assert _parsed(line)["error"] == (
        "GET http://127.0.0.1:7149/REDACTED answered 500, expected 2xx; "
        "then GET http://127.0.0.1:7149/REDACTED (see 'https://h.example/REDACTED')."
    )


def test_the_sentence_around_a_url_survives_its_redaction() -> None:
    cases = {
        "<http://h.example/x?k=1>, then": "<http://h.example/REDACTED>, then",
        '"https://h.example:8443/p"; next': '"https://h.example:8443/REDACTED"; next',
        "at http://h.example/.": "at http://h.example/.",
        "(http://user:pw@h.example)": "(http://h.example/)",
        "bad http://host:abc/s'ecret'!": "bad http://REDACTED'!",
        # A URL does not run on past a double quote (compact JSON), nor is a bare scheme in prose taken for one.
        '{"url":"https://a.example/p?k=1","status":500}': '{"url":"https://a.example/REDACTED","status":500}',
        "see 'http://' here": "see 'http://' here",
        "url 'http://h.example/a?k=1', then": "url 'http://h.example/REDACTED', then",
    }
    for text, kept in cases.items():
        assert hide_urls(text) == kept, text


def test_an_audited_url_keeps_its_scheme_host_and_port_only() -> None:
    assert kept_url("http://user:pw@h.example:8080/hooks/TOKEN?sig=x") == "http://h.example:8080/REDACTED"
    assert kept_url("https://h.example/") == "https://h.example/"
    assert kept_url("http://host:abc/secret") == "http://REDACTED"
    assert kept_url("user:secret@h.example/x") == "REDACTED"
    assert kept_url("http://h.example/a secret") == "REDACTED"
