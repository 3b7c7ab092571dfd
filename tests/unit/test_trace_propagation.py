# intent_ref: platform.telemetry
"""Incoming requests and events are read with W3C trace context only: a caller's `baggage` header is neither taken
nor logged."""

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
