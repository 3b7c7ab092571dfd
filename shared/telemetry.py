# intent_ref: platform.telemetry
"""Telemetry events: one log line each, a fixed prefix then compact JSON, which the alerts and the workbook parse.

A log record's `extra` does not reach Application Insights' `customDimensions` from the Functions Python worker
without extra packages, but its message does reach `traces.message`; the queries in `bicep/monitoring/` read
`parse_json(substring(message, strlen(PREFIX)))` of the lines that start with PREFIX.
"""

from __future__ import annotations

import json
import logging
from typing import Final
from uuid import UUID

PREFIX: Final = "qp.telemetry "
"""Every telemetry line starts with this; nothing else the platform logs does."""

EVENTS: Final = frozenset(
    {
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
    record: dict[str, str | int | float | bool] = {"event": event, "tenant_id": str(tenant_id)}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, UUID):
            value = str(value)
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            value = value[:_MAX_TEXT] + "..."
        record[name] = value
    return PREFIX + json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def emit(event: str, *, tenant_id: UUID | str, **fields: FieldValue) -> None:
    """Log one telemetry event (INFO, logger `qp.telemetry`); ValueError for a name EVENTS does not declare."""
    logger.info("%s", telemetry_line(event, tenant_id=tenant_id, **fields))
