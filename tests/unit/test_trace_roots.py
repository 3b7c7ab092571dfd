# intent_ref: platform.telemetry
"""A caller's trace context is linked, never continued: an `intent-requests` event's producer cannot choose the trace
the platform records its processing (and the execution it starts) under."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.ingress import process
from shared.ingress.request import IngressEvent
from shared.observability import tracing

VICTIM = "4bf92f3577b34da6a3ce929d0e0e4736"
HOSTILE = f"00-{VICTIM}-00f067aa0ba902b7-01"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def test_an_intent_request_is_processed_in_a_trace_of_its_own_linked_to_the_producers(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    async def fake_process_event(event: IngressEvent, _client: Any, _checker: Any) -> Any:
        seen.append(tracing.current_traceparent())
        return None

    monkeypatch.setattr(process, "process_event", fake_process_event)
    event = IngressEvent(b"{}", "0", 7, None, properties={tracing.TRACEPARENT: HOSTILE})
    asyncio.run(process.process_batch([event], client=None, validator=object()))  # type: ignore[arg-type]
    [span] = spans.get_finished_spans()
    assert span.name == "intent-requests process" and span.parent is None
    assert format(span.context.trace_id, "032x") != VICTIM
    assert seen[0] is not None and VICTIM not in seen[0]
    [link] = span.links
    assert format(link.context.trace_id, "032x") == VICTIM


def test_a_malformed_traceparent_is_neither_continued_nor_linked(spans: InMemorySpanExporter) -> None:
    with tracing.root_span("execution start", tracing.span_context_of("00-zz-01"), {}):
        pass
    [span] = spans.get_finished_spans()
    assert span.parent is None and list(span.links) == []
