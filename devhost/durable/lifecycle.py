# intent_ref: platform.devhost-durable
"""Instance lifecycle steps shared by episodes and the management API: start an execution, report its end."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from devhost.durable.protocol import EventType, RuntimeStatus, event, execution_started, parent_instance
from devhost.durable.store import Conn, Instance, Store


def utcnow() -> datetime:
    """The host clock (also what orchestrators see as current_utc_datetime, through OrchestratorStarted)."""
    return datetime.now(UTC)


def new_execution_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ParentLink:
    """The orchestration (and task) waiting for a sub-orchestration's result."""

    name: str
    instance_id: str
    execution_id: str
    task_id: int


async def start_instance(
    store: Store,
    conn: Conn,
    *,
    instance_id: str,
    name: str,
    version: str,
    input_json: str | None,
    now: datetime,
    parent: ParentLink | None = None,
) -> bool:
    """Create the instance, or replace a finished one with that id, and queue its ExecutionStarted.

    Returns False when a non-terminal instance already has the id: it is never replaced.
    """
    existing = await store.get(conn, instance_id, lock=True)
    if existing is not None and not existing.is_terminal:
        return False
    instance = Instance(
        instance_id=instance_id,
        execution_id=new_execution_id(),
        name=name,
        version=version,
        runtime_status=RuntimeStatus.Pending,
        input_json=input_json,
        created_at=now,
        updated_at=now,
    )
    if parent is not None:
        instance.parent_name, instance.parent_instance_id = parent.name, parent.instance_id
        instance.parent_execution_id, instance.parent_task_id = parent.execution_id, parent.task_id
    if existing is None:
        if not await store.insert(conn, instance):
            return False  # created concurrently by someone else
    else:
        await store.clear_history(conn, instance_id)
        await store.drop_inbox(conn, instance_id)
        await store.save(conn, instance)
    await queue_execution_started(store, conn, instance, now)
    return True


async def queue_execution_started(store: Store, conn: Conn, instance: Instance, now: datetime) -> None:
    """Queue the first event of the instance's current execution."""
    parent = None
    if instance.parent_instance_id is not None:
        parent = parent_instance(
            instance.parent_name or "",
            instance.parent_instance_id,
            instance.parent_execution_id or "",
            instance.parent_task_id if instance.parent_task_id is not None else -1,
        )
    started = execution_started(
        now,
        name=instance.name,
        version=instance.version,
        input_json=instance.input_json,
        instance_id=instance.instance_id,
        execution_id=instance.execution_id,
        parent=parent,
    )
    await store.send(conn, instance.instance_id, instance.execution_id, started, now)


async def notify_parent(
    store: Store,
    conn: Conn,
    instance: Instance,
    now: datetime,
    *,
    reason: str | None = None,
    details: str | None = None,
) -> None:
    """Deliver a finished sub-orchestration's result to the task waiting for it in its parent."""
    if instance.parent_instance_id is None or instance.parent_task_id is None:
        return
    task_id = instance.parent_task_id
    if instance.runtime_status == RuntimeStatus.Completed:
        result = event(
            EventType.SubOrchestrationInstanceCompleted, now, TaskScheduledId=task_id, Result=instance.output_json
        )
    else:
        result = event(
            EventType.SubOrchestrationInstanceFailed, now, TaskScheduledId=task_id, Reason=reason, Details=details
        )
    await store.send(conn, instance.parent_instance_id, instance.parent_execution_id, result, now, task_id=task_id)
