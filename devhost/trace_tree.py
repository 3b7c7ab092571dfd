# intent_ref: platform.telemetry
"""`python -m devhost trace EXECUTION_ID`: one execution's trace, from the local telemetry file, as a tree."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.observability.line_file import rolled_path

SHOWN_ATTRIBUTES = ("tenant.id", "step.id", "step.attempt", "action", "http.route", "http.status_code", "db.statement")


@dataclass
class SpanNode:
    """One span as the file holds it, with its children in start order."""

    span_id: str
    parent_id: str | None
    trace_id: str
    name: str
    start: datetime
    end: datetime
    failed: bool
    attributes: dict[str, Any]
    events: list[str]
    children: list[SpanNode] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start).total_seconds() * 1000


def read_spans(path: Path) -> Iterator[SpanNode]:
    """Every span of the file and of the lines it moved aside when full (lines that are not spans, or not JSON, are
    skipped)."""
    for part in (rolled_path(path), path):
        if not part.exists():
            continue
        with part.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    span = json.loads(line).get("span")
                except (ValueError, AttributeError):
                    continue
                if isinstance(span, dict):
                    yield _node(span)


def _node(span: dict[str, Any]) -> SpanNode:
    context = span.get("context") or {}
    return SpanNode(
        span_id=str(context.get("span_id")),
        parent_id=span.get("parent_id"),
        trace_id=str(context.get("trace_id")),
        name=str(span.get("name")),
        start=datetime.fromisoformat(str(span["start_time"]).replace("Z", "+00:00")),
        end=datetime.fromisoformat(str(span["end_time"]).replace("Z", "+00:00")),
        failed=(span.get("status") or {}).get("status_code") == "ERROR",
        attributes=dict(span.get("attributes") or {}),
        events=[str(event.get("name")) for event in span.get("events") or []],
    )


def execution_trace(spans: Iterable[SpanNode], execution_id: str) -> list[SpanNode]:
    """The root spans of the traces that an execution's spans belong to, each with its tree below it."""
    spans = list(spans)
    traces = {span.trace_id for span in spans if span.attributes.get("execution.id") == execution_id}
    members = {span.span_id: span for span in spans if span.trace_id in traces}
    roots: list[SpanNode] = []
    for span in sorted(members.values(), key=lambda s: s.start):
        parent = members.get(span.parent_id or "")
        (parent.children if parent is not None else roots).append(span)
    return roots


def render(roots: list[SpanNode], *, statements: bool = False) -> list[str]:
    """The tree as text lines: offset from the trace's start, duration, name, the attributes worth reading."""
    if not roots:
        return []
    origin = min(root.start for root in roots)
    lines: list[str] = []

    def walk(node: SpanNode, depth: int) -> None:
        if node.attributes.get("db.system") == "postgresql" and not statements:
            return
        offset = (node.start - origin).total_seconds() * 1000
        shown = " ".join(f"{k}={node.attributes[k]}" for k in SHOWN_ATTRIBUTES if k in node.attributes)
        mark = " FAILED" if node.failed else ""
        events = f" [{', '.join(node.events)}]" if node.events else ""
        lines.append(f"{offset:9.1f} ms {node.duration_ms:9.1f} ms  {'  ' * depth}{node.name}{mark} {shown}{events}")
        for child in node.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return lines


def report(path: Path, execution_id: str, statements: bool) -> tuple[int, str]:
    """The exit code and text of `python -m devhost trace`: the execution's trace, or 1 and why there is none."""
    if not path.exists():
        return 1, f"no telemetry file at {path}: start the devhost with QP_TELEMETRY_FILE set (make run does)"
    lines = render(execution_trace(read_spans(path), execution_id), statements=statements)
    if not lines:
        return 1, f"no spans of execution {execution_id} in {path} (spans are written within a few seconds)"
    return 0, "\n".join(["   offset   duration  span", *lines])
