# intent_ref: platform.telemetry
"""An execution's trace across the orchestrator's activities: the orchestrator attaches it, each activity continues it.

The orchestrator replays, so it starts no span of its own; it only passes on, with each activity's input, the trace
context and intent its start input carried (deterministic: the same on every replay). The activity takes them off
before its model sees the input and runs inside a span of the execution's trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.engine.machine import Spec
from shared.observability.tracing import TRACEPARENT, continued_span, execution_attributes

TRACE_KEY = "trace"
"""The input field that carries the trace to an activity (the activity models never see it)."""


def attach(body: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """An activity's input with the execution's trace and intent, when the start carried a trace."""
    if spec.traceparent is None:
        return body
    trace = {TRACEPARENT: spec.traceparent, "intent_id": spec.intent_id, "intent_version": spec.intent_version}
    return {**body, TRACE_KEY: trace}


@contextmanager
def activity_span(activity: str, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A span named after the activity in the execution's trace, current while the block runs; yields the request
    it was given minus the trace."""
    trace = request.get(TRACE_KEY)
    body = {key: value for key, value in request.items() if key != TRACE_KEY}
    trace = trace if isinstance(trace, dict) else {}
    traceparent = trace.get(TRACEPARENT)
    attributes = execution_attributes(
        tenant_id=body.get("tenant_id"),
        execution_id=body.get("execution_id"),
        intent_id=trace.get("intent_id"),
        intent_version=trace.get("intent_version"),
    )
    with continued_span(f"activity {activity}", traceparent if isinstance(traceparent, str) else None, attributes):
        yield body
