# intent_ref: platform.telemetry
"""An execution's trace is the platform's own: a start asked for in a caller's trace (any `traceparent` a request
brings, before it is authenticated) stores a new root's context, linked to the caller's, never the caller's trace."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared.auth.principal import Requester
from shared.engine.start import StartRequest
from shared.engine.start_service import START_SPAN, begin
from shared.observability import tracing
from shared.policy.authorizer import Decision, Resource
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_start_service import _provision
from tests.unit.test_trace_roots import HOSTILE, VICTIM, spans  # noqa: F401  # `spans`: the fixture

pytestmark = pytest.mark.integration


def _allow(_action: str, _resource: Resource) -> Decision:
    return Decision(True, "permit", ())


def test_a_start_in_a_hostile_trace_stores_a_root_of_its_own_linked_to_the_callers(
    api: ApiHarness,  # noqa: F811
    spans: InMemorySpanExporter,
) -> None:
    tenant, intent_id = _provision(api, f"traces-{uuid.uuid4().hex[:8]}")
    # What the gateway's request span is: a continuation of whatever `traceparent` the caller sent.
    with tracing.continued_span("POST /api/v1/intents/{id}/execute", HOSTILE, {}, kind=SpanKind.SERVER):
        started = begin(
            tenant,
            lambda _conn: StartRequest(intent_id=intent_id, requester=Requester("t/o", frozenset(), app_only=False)),
            decide=_allow,
        )
    assert started.orchestration_input is not None
    stored = started.orchestration_input[tracing.TRACEPARENT]
    assert stored.split("-")[1] != VICTIM
    [root] = [span for span in spans.get_finished_spans() if span.name == START_SPAN]
    assert root.parent is None and stored.split("-")[1] == format(root.context.trace_id, "032x")
    assert stored.split("-")[2] == format(root.context.span_id, "016x")
    [link] = root.links
    assert format(link.context.trace_id, "032x") == VICTIM
