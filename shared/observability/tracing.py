# intent_ref: platform.telemetry
"""The execution's trace: its W3C context carried through the orchestration, module work and remote workers.

An execution's spans all belong to one trace of the platform's own: its start opens a new root span (`execution
start`) linked to the request (or `intent-requests` event) that asked for it, never continuing a caller's context,
and puts that root's `traceparent` into the orchestration's input, the orchestrator hands it to every activity, the
dispatch puts it on each `module-work` event's properties and beside each queued remote item, and whoever picks the
work up continues the trace from there. The orchestrator itself starts no span: it replays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT = "traceparent"
"""The W3C header, the event property and the input field that carry an execution's trace context."""

TENANT_ID = "tenant.id"
INTENT_ID = "intent.id"
INTENT_VERSION = "intent.version"
EXECUTION_ID = "execution.id"
STEP_ID = "step.id"
STEP_ATTEMPT = "step.attempt"
ACTION = "action"

AttributeValue = str | int | float | bool
_propagator = TraceContextTextMapPropagator()
tracer = trace.get_tracer("quantum-platform")


def current_traceparent() -> str | None:
    """The active span's context as a `traceparent` value; None when nothing is traced."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def with_traceparent(properties: Mapping[str, Any]) -> dict[str, Any]:
    """`properties` plus the active span's `traceparent` (as the Azure SDKs put it on an event), when traced."""
    traceparent = current_traceparent()
    return {**properties, TRACEPARENT: traceparent} if traceparent else dict(properties)


def execution_attributes(
    *,
    tenant_id: object = None,
    execution_id: object = None,
    intent_id: object = None,
    intent_version: object = None,
    step_id: object = None,
    attempt: object = None,
    action: object = None,
) -> dict[str, AttributeValue]:
    """The dimensions every execution span carries, without the ones not known here."""
    named = {
        TENANT_ID: tenant_id,
        EXECUTION_ID: execution_id,
        INTENT_ID: intent_id,
        INTENT_VERSION: intent_version,
        STEP_ID: step_id,
        STEP_ATTEMPT: attempt,
        ACTION: action,
    }
    return {
        key: value if isinstance(value, int | float | bool) else str(value)
        for key, value in named.items()
        if value is not None
    }


@contextmanager
def continued_span(
    name: str,
    traceparent: str | None,
    attributes: Mapping[str, AttributeValue],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A span continuing the trace `traceparent` names (or the current one when None), current while the block runs.

    An exception leaving the block marks the span failed and is recorded on it; it still propagates."""
    context = _propagator.extract({TRACEPARENT: traceparent}) if traceparent else None
    with tracer.start_as_current_span(name, context=context, kind=kind, attributes=dict(attributes)) as span:
        yield span


def span_context_of(traceparent: object) -> SpanContext | None:
    """The span context a `traceparent` value names; None when absent or malformed."""
    if not isinstance(traceparent, str) or not traceparent:
        return None
    context = trace.get_current_span(_propagator.extract({TRACEPARENT: traceparent})).get_span_context()
    return context if context.is_valid else None


def current_span_context() -> SpanContext | None:
    """The active span's context; None when nothing is traced."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextmanager
def root_span(
    name: str,
    linked: SpanContext | None,
    attributes: Mapping[str, AttributeValue],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A span starting a trace of the platform's own, current while the block runs, linked to `linked`.

    A caller's context (a request's `traceparent`, an event's property) is anyone's choice, made before the caller is
    verified: continued, it would put an execution's spans into whatever trace the caller named (another tenant's).
    Linked, the caller's trace still shows where it led, and the platform's trace stays its own."""
    links = [Link(linked)] if linked is not None and linked.is_valid else []
    with tracer.start_as_current_span(
        name, context=Context(), kind=kind, attributes=dict(attributes), links=links
    ) as span:
        yield span


def mark_failed(span: Span, description: str) -> None:
    """Mark a span failed without an exception (a step that ended in a verdict of failure)."""
    span.set_status(Status(StatusCode.ERROR, description[:300]))
