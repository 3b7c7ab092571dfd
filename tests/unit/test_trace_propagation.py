# intent_ref: platform.telemetry
"""Incoming requests and events are read with W3C `traceparent` only: a caller's `baggage` and `tracestate` headers
are neither taken, nor logged, nor sent on."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace

from shared.observability import setup

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = propagate.get_global_textmap()
    monkeypatch.setattr(setup, "_mode", None)
    monkeypatch.setattr(setup, "_start_file", lambda _path, _resource: None)
    monkeypatch.setattr(setup, "_instrument_libraries", lambda _sql_spans: None)
    assert setup.configure_telemetry(None, "telemetry.jsonl") == "file"
    yield
    propagate.set_global_textmap(before)


def test_an_oversized_baggage_header_is_ignored_and_not_logged(
    configured: None, caplog: pytest.LogCaptureFixture
) -> None:
    # The baggage propagator logged such a header whole at WARNING, on every request that sent it.
    huge = ",".join(f"tenant.id{n}=evil" for n in range(10000))
    with caplog.at_level(logging.WARNING):
        context = propagate.extract({"traceparent": TRACEPARENT, "baggage": huge})
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert "evil" not in caplog.text
    assert format(trace.get_current_span(context).get_span_context().trace_id, "032x") in TRACEPARENT
    assert not any("baggage" in str(key) for key in context)


def test_a_malformed_tracestate_is_ignored_and_not_logged(configured: None, caplog: pytest.LogCaptureFixture) -> None:
    # With a valid traceparent, OpenTelemetry parsed the caller's tracestate and logged a malformed one whole, at
    # WARNING (up to 8 KB a request, before authentication); the app uses no tracestate.
    with caplog.at_level(logging.DEBUG):
        context = propagate.extract({"traceparent": TRACEPARENT, "tracestate": "Bad Key=" + "evil" * 2000})
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert "evil" not in caplog.text
    assert format(trace.get_current_span(context).get_span_context().trace_id, "032x") in TRACEPARENT


def test_a_callers_tracestate_is_neither_kept_nor_sent_on(configured: None) -> None:
    # A valid one was kept on the request's span and injected into the app's own outbound calls.
    context = propagate.extract({"traceparent": TRACEPARENT, "tracestate": "vendor=secret"})
    span_context = trace.get_current_span(context).get_span_context()
    assert span_context.is_valid and len(span_context.trace_state) == 0
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    assert carrier == {"traceparent": TRACEPARENT}
    assert propagate.get_global_textmap().fields == {"traceparent"}
