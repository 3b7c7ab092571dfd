# intent_ref: platform.telemetry
"""Telemetry events: each one counts in the platform's meters, marks the current span, and logs one line.

The meters (shared.observability.metrics) are what the alerts and the workbook query; the span event puts the
outcome on the execution's trace; the log line (a fixed prefix, then compact JSON) is for reading a log stream and
for the triage runbook's searches.
"""

from __future__ import annotations

import json
import logging
from typing import Final
from uuid import UUID

from opentelemetry import trace

from shared.observability import metrics
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


def emit(event: str, *, tenant_id: UUID | str, **fields: FieldValue) -> None:
    """Count one telemetry event, add it to the current span, log its line (INFO, logger `qp.telemetry`);
    ValueError for a name EVENTS does not declare."""
    line = telemetry_line(event, tenant_id=tenant_id, **fields)
    _count(event, tenant_id, fields)
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(event, {"tenant.id": str(tenant_id), **_cleaned(fields)})
    logger.info("%s", line)


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
