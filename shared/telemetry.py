# intent_ref: platform.telemetry
"""Telemetry events: each one counts in the platform's meters, marks the current span, and logs one line.

The meters (shared.observability.metrics) are what the alerts and the workbook query; the span event puts the
outcome on the execution's trace, and is its one `traces` row in Application Insights (the workbook's and the triage
runbook's queries); the log line (a fixed prefix, then compact JSON) is for reading a local log stream, and is not
exported (shared.observability.setup: it would be a second row of the same fields). None of the three can be taken
back, so an outcome recorded in a transaction is published once that transaction has committed (`emit_on_commit`):
one rolled back and run again (a deadlock's victim, a timer's tenant share that failed on a lock wait) is counted
once, by the run that committed (ADR 0015).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import psycopg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span

from shared.db.session import transaction_bag, when_released
from shared.observability import metrics, tracing
from shared.observability.urls import hide_urls

PREFIX: Final = "qp.telemetry "
"""Every telemetry line starts with this; nothing else the platform logs does."""

EVENTS: Final = frozenset(
    {
        "execution.started",
        "execution.stalled",
        "execution.completed",
        "execution.failed",
        "execution.cancelled",
        "step.completed",
        "step.failed",
        "ingress.rejected",
    }
)
"""The telemetry event names: the monitoring queries may use these and no others (tests/infra checks)."""

_MAX_TEXT = 300
"""Longer strings (error messages) are cut: a trace line is for finding the cause, not for carrying payloads."""

FieldValue = str | int | float | bool | UUID | None

logger = logging.getLogger("qp.telemetry")
_problems = logging.getLogger(__name__)
"""Where a publication's own failure is reported: not on `logger`, whose lines all start with PREFIX."""

_PENDING: Final = "qp.telemetry.pending"
"""The transaction bag (shared.db.session.transaction_bag) holding the emissions its commit publishes."""


def telemetry_line(event: str, *, tenant_id: UUID | str, **fields: FieldValue) -> str:
    """The line `emit` logs: PREFIX and a JSON object with `event`, `tenant_id` and the non-null fields."""
    if event not in EVENTS:
        raise ValueError(f"unknown telemetry event {event!r}; declare it in shared/telemetry.py EVENTS")
    record = {"event": event, "tenant_id": str(tenant_id), **_cleaned(fields)}
    return PREFIX + json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def _cleaned(fields: dict[str, FieldValue]) -> dict[str, str | int | float | bool]:
    """The non-null fields, ids as text, URLs cut to their host and long strings cut (a tenant's error message is no
    payload carrier, and the URL it quotes can carry the tenant's secret)."""
    record: dict[str, str | int | float | bool] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, UUID):
            value = str(value)
        if isinstance(value, str):
            value = hide_urls(value)
            if len(value) > _MAX_TEXT:
                value = value[:_MAX_TEXT] + "..."
        record[name] = value
    return record


@dataclass(frozen=True, slots=True)
class _Emission:
    """One telemetry event, prepared when its outcome was recorded, published now or once its transaction commits."""

    event: str
    tenant_id: str
    fields: dict[str, FieldValue]
    line: str
    span: Span
    """The span current when the outcome was recorded: the event goes on it, wherever it is published."""


def _prepared(event: str, tenant_id: UUID | str, fields: dict[str, FieldValue]) -> _Emission:
    line = telemetry_line(event, tenant_id=tenant_id, **fields)  # refuses an undeclared name here, not later
    return _Emission(event, str(tenant_id), fields, line, trace.get_current_span())


def emit(event: str, *, tenant_id: UUID | str, **fields: FieldValue) -> None:
    """Count one telemetry event, add it to the current span, log its line (INFO, logger `qp.telemetry`), now;
    ValueError for a name EVENTS does not declare. For an outcome a transaction records, `emit_on_commit`."""
    _publish(_prepared(event, tenant_id, fields))


def emit_on_commit(conn: psycopg.Connection[Any], event: str, *, tenant_id: UUID | str, **fields: FieldValue) -> None:
    """`emit` for an outcome recorded in the transaction open on `conn`: published once it has committed, never if it
    rolls back; published now when `conn` is not a transaction this context opened with shared.db.session (a test's
    or a script's own connection), as `emit` would. ValueError at once for a name EVENTS does not declare.

    The span event goes on the span current now, as `emit`'s would. The transaction's outcome is its own, savepoints
    aside: an emission recorded inside a `conn.transaction()` block that rolls back while the transaction commits is
    still published (no outcome is recorded inside one; ADR 0015)."""
    emission = _prepared(event, tenant_id, fields)
    pending = transaction_bag(conn, _PENDING)
    if pending is None:
        _publish(emission)
        return
    if not pending:  # the first of the transaction's: one callback publishes them all
        when_released(conn, lambda: _publish_committed(pending), only="commit")
    pending.append(emission)


def _publish_committed(pending: list[_Emission]) -> None:
    for emission in pending:
        try:
            _publish(emission)
        except Exception:  # the change has committed: its telemetry failing must not fail the request that made it
            _problems.exception("telemetry event %s not published", emission.event)


def _publish(emission: _Emission) -> None:
    """Count it, put it on its span, log its line. Its span no longer recording (ended before the commit, or none
    was current: a timer's work, the sweeper's), the event gets a short span of its own, a child of that span when
    there was one, so that every outcome is a span event: the `traces` rows the workbook and the runbook query."""
    _count(emission.event, emission.tenant_id, emission.fields)
    attributes = {"tenant.id": emission.tenant_id, **_cleaned(emission.fields)}
    if emission.span.is_recording():
        emission.span.add_event(emission.event, attributes)
        logger.info("%s", emission.line)
        return
    fields = emission.fields
    span_attributes = tracing.execution_attributes(
        tenant_id=emission.tenant_id,
        execution_id=fields.get("execution_id"),
        intent_id=fields.get("intent_id"),
        intent_version=fields.get("intent_version"),
        step_id=fields.get("step_id"),
        attempt=fields.get("attempt"),
        action=fields.get("action"),
    )
    # The recorded span's context, ended or invalid (a new trace then), never the current one: the outcome belongs
    # where it was recorded. Current while the line is logged, so the log record joins the same trace.
    parent = trace.set_span_in_context(emission.span, Context())
    with tracing.tracer.start_as_current_span(
        f"telemetry {emission.event}", context=parent, attributes=span_attributes
    ) as span:
        span.add_event(emission.event, attributes)
        logger.info("%s", emission.line)


def _count(event: str, tenant_id: UUID | str, fields: dict[str, FieldValue]) -> None:
    duration_ms = fields.get("duration_ms")
    duration_s = duration_ms / 1000 if isinstance(duration_ms, int | float) else None
    intent_id = fields.get("intent_id")
    if event == "execution.started":
        metrics.execution_started(tenant_id, intent_id)
    elif event == "execution.stalled":
        metrics.execution_stalled(tenant_id, intent_id)
    elif event.startswith("execution."):
        metrics.execution_ended(tenant_id, intent_id, str(fields.get("status")), duration_s)
    elif event.startswith("step."):
        outcome = "succeeded" if event == "step.completed" else "failed"
        metrics.step_ended(tenant_id, str(fields.get("action")), outcome, duration_s)
    elif event == "ingress.rejected":
        metrics.ingress_rejected(tenant_id, str(fields.get("reason")))
