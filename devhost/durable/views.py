# intent_ref: platform.devhost-durable
"""What the status API shows: the StatusResponsePayload of an instance and its human-oriented history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from devhost.durable.protocol import EventType, JsonDict, RuntimeStatus, json_text_to_value
from devhost.durable.store import Instance


def _seconds(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_payload(instance: Instance, *, show_input: bool = True) -> JsonDict:
    """HttpApiHandler.ConvertFrom: stored JSON texts shown as values (raw text when not JSON)."""
    return {
        "name": instance.name,
        "instanceId": instance.instance_id,
        "runtimeStatus": str(instance.runtime_status),
        "input": json_text_to_value(instance.input_json) if show_input else None,
        "customStatus": json_text_to_value(instance.custom_status_json),
        "output": json_text_to_value(instance.output_json),
        "createdTime": _seconds(instance.created_at),
        "lastUpdatedTime": _seconds(instance.updated_at),
    }


def history_view(history: list[JsonDict], *, show_output: bool) -> list[JsonDict]:
    """The projection DurableClient applies for showHistory: names for types, scheduling merged into results."""
    items: list[JsonDict] = [dict(e) for e in history]
    scheduled: dict[tuple[str, Any], int] = {}
    dropped: set[int] = set()
    for index, item in enumerate(items):
        try:
            kind = EventType(item["EventType"])
        except (KeyError, ValueError):
            continue
        item["EventType"] = kind.name
        if kind in (EventType.TaskScheduled, EventType.SubOrchestrationInstanceCreated):
            scheduled[(kind.name, item.get("EventId"))] = index
            item.pop("Version", None)
            item.pop("Input", None)
        elif kind in (
            EventType.TaskCompleted,
            EventType.TaskFailed,
            EventType.SubOrchestrationInstanceCompleted,
            EventType.SubOrchestrationInstanceFailed,
        ):
            source = (
                "TaskScheduled"
                if kind in (EventType.TaskCompleted, EventType.TaskFailed)
                else "SubOrchestrationInstanceCreated"
            )
            origin = scheduled.get((source, item.get("TaskScheduledId")))
            if origin is not None:
                item["ScheduledTime"] = items[origin]["Timestamp"]
                item["FunctionName"] = items[origin].get("Name")
                dropped.add(origin)
            item.pop("TaskScheduledId", None)
            _result(
                item, show_output and kind in (EventType.TaskCompleted, EventType.SubOrchestrationInstanceCompleted)
            )
        elif kind == EventType.ExecutionStarted:
            item["FunctionName"] = item.pop("Name", None)
            for key in ("OrchestrationInstance", "ParentInstance", "Version", "Tags", "Input"):
                item.pop(key, None)
        elif kind == EventType.ExecutionCompleted:
            code = item.get("OrchestrationStatus")
            names = {s.dtfx_code: str(s) for s in RuntimeStatus}
            item["OrchestrationStatus"] = names.get(code, code) if isinstance(code, int) else code
            _result(item, show_output)
        elif kind in (EventType.ExecutionTerminated, EventType.EventRaised):
            item.pop("Input", None)
        elif kind == EventType.TimerFired:
            item.pop("TimerId", None)
        elif kind in (EventType.OrchestratorStarted, EventType.OrchestratorCompleted):
            dropped.add(index)
        item.pop("EventId", None)
        item.pop("IsPlayed", None)
    return [item for index, item in enumerate(items) if index not in dropped]


def _result(item: JsonDict, show: bool) -> None:
    if show:
        item["Result"] = json_text_to_value(item.get("Result"))
    else:
        item.pop("Result", None)
