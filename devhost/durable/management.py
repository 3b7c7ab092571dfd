# intent_ref: platform.devhost-durable
"""Client operations on instances (start, query, events, terminate, suspend/resume, restart, purge)."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

from devhost.durable.lifecycle import notify_parent, start_instance, utcnow
from devhost.durable.protocol import EventType, JsonDict, RuntimeStatus, event
from devhost.durable.store import Database, Instance, InstanceQuery, Store

MAX_INSTANCE_ID_LENGTH = 256


class Outcome(enum.Enum):
    """How a management call went, for the HTTP layer to map onto status codes."""

    OK = "ok"
    NOT_FOUND = "not found"
    GONE = "gone"  # the instance already finished
    CONFLICT = "conflict"  # a non-terminal instance already has the id
    NOT_TERMINAL = "not terminal"


class InvalidRequest(ValueError):
    """An argument the real host rejects with 400 (ArgumentException)."""


@dataclass(frozen=True)
class Started:
    outcome: Outcome
    instance_id: str


def validate_instance_id(instance_id: str) -> None:
    """The rules of DurableClient.StartNewAsync."""
    if instance_id.startswith("@"):
        raise InvalidRequest("Orchestration instance ids must not start with @.")
    if any(c in "/\\?#" or ord(c) < 32 or 127 <= ord(c) < 160 for c in instance_id):
        raise InvalidRequest("Orchestration instance ids must not contain /, \\, #, ?, or control characters.")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidRequest(f"Instance ID lengths must not exceed {MAX_INSTANCE_ID_LENGTH} characters.")


class Management:
    """Each operation is one transaction; the instance row lock serialises it with the instance's episodes."""

    def __init__(
        self,
        db: Database,
        store: Store,
        orchestrators: Collection[str],
        wake: Callable[[], None],
        wake_instance: Callable[[str], None] | None = None,
    ) -> None:
        self._db, self._store, self._orchestrators, self._wake = db, store, orchestrators, wake
        self._wake_instance = wake_instance

    async def start(self, name: str, instance_id: str | None, input_json: str | None, version: str = "") -> Started:
        """Start `name`; a finished instance with the id is replaced, a running one never is."""
        if name not in self._orchestrators:
            raise InvalidRequest(
                f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
            )
        instance_id = instance_id or uuid.uuid4().hex
        validate_instance_id(instance_id)
        async with self._db.connection() as conn, conn.transaction():
            created = await start_instance(
                self._store,
                conn,
                instance_id=instance_id,
                name=name,
                version=version,
                input_json=input_json,
                now=utcnow(),
            )
        if created:
            self._wake()
        return Started(Outcome.OK if created else Outcome.CONFLICT, instance_id)

    async def get(self, instance_id: str) -> Instance | None:
        async with self._db.connection() as conn:
            return await self._store.get(conn, instance_id)

    async def history(self, instance_id: str) -> list[JsonDict]:
        async with self._db.connection() as conn:
            return await self._store.history(conn, instance_id)

    async def query(self, query: InstanceQuery) -> list[Instance]:
        async with self._db.connection() as conn:
            return await self._store.query(conn, query)

    async def raise_event(self, instance_id: str, name: str, input_json: str) -> Outcome:
        """Queue EventRaised; a suspended instance keeps it until it resumes."""
        now = utcnow()
        async with self._db.connection() as conn:
            # Not bound to an execution: after continue-as-new the event reaches the new one.
            status = await self._store.raise_event(
                conn, instance_id, event(EventType.EventRaised, now, Name=name, Input=input_json), now
            )
        if status is None:
            return Outcome.NOT_FOUND
        if RuntimeStatus(status).is_terminal:
            return Outcome.GONE
        if self._wake_instance is not None:
            self._wake_instance(instance_id)
        else:
            self._wake()
        return Outcome.OK

    async def terminate(self, instance_id: str, reason: str | None) -> Outcome:
        async with self._db.connection() as conn, conn.transaction():
            instance = await self._store.get(conn, instance_id, lock=True)
            if instance is None:
                return Outcome.NOT_FOUND
            if instance.is_terminal:
                return Outcome.GONE
            now = utcnow()
            instance.runtime_status = RuntimeStatus.Terminated
            instance.output_json = None if reason is None else json.dumps(reason)
            instance.updated_at = now
            await self._store.append_history(
                conn,
                instance_id,
                [
                    event(EventType.ExecutionTerminated, now, Input=reason),
                    event(
                        EventType.ExecutionCompleted,
                        now,
                        OrchestrationStatus=RuntimeStatus.Terminated.dtfx_code,
                        Result=instance.output_json,
                        FailureDetails=None,
                    ),
                ],
            )
            await self._store.drop_inbox(conn, instance_id)
            await notify_parent(self._store, conn, instance, now, reason=reason, details=None)
            await self._store.save(conn, instance)
        self._wake()
        return Outcome.OK

    async def suspend(self, instance_id: str, reason: str | None) -> Outcome:
        return await self._set_suspended(instance_id, reason, suspend=True)

    async def resume(self, instance_id: str, reason: str | None) -> Outcome:
        return await self._set_suspended(instance_id, reason, suspend=False)

    async def _set_suspended(self, instance_id: str, reason: str | None, *, suspend: bool) -> Outcome:
        async with self._db.connection() as conn, conn.transaction():
            instance = await self._store.get(conn, instance_id, lock=True)
            if instance is None:
                return Outcome.NOT_FOUND
            if instance.is_terminal:
                return Outcome.GONE
            if (instance.runtime_status == RuntimeStatus.Suspended) == suspend:
                return Outcome.OK  # already there: accepted, nothing to do
            now = utcnow()
            history = await self._store.history(conn, instance_id)
            if suspend:
                instance.runtime_status = RuntimeStatus.Suspended
            else:
                instance.runtime_status = RuntimeStatus.Running if history else RuntimeStatus.Pending
            if history:
                # Only after the first episode: the SDK needs ExecutionStarted to be the second event it is given.
                kind = EventType.ExecutionSuspended if suspend else EventType.ExecutionResumed
                await self._store.append_history(conn, instance_id, [event(kind, now, Reason=reason)])
            instance.updated_at = now
            await self._store.save(conn, instance)
        self._wake()
        return Outcome.OK

    async def restart(self, instance_id: str, *, new_instance_id: bool) -> Started:
        """Start the instance's orchestrator again with its input, under a new id or the same one."""
        instance = await self.get(instance_id)
        if instance is None:
            raise InvalidRequest(f"An orchestration with the instanceId {instance_id} was not found.")
        target = uuid.uuid4().hex if new_instance_id else instance_id
        return await self.start(instance.name, target, instance.input_json, instance.version)

    async def purge(self, instance_id: str) -> Outcome:
        async with self._db.connection() as conn, conn.transaction():
            instance = await self._store.get(conn, instance_id, lock=True)
            if instance is None:
                return Outcome.NOT_FOUND
            if not instance.is_terminal:
                return Outcome.NOT_TERMINAL
            await self._store.purge(conn, [instance_id])
        return Outcome.OK

    async def purge_by(self, query: InstanceQuery) -> int:
        """Purge every instance matching the filters (the status filter, if any, is taken as given)."""
        async with self._db.connection() as conn, conn.transaction():
            instances = await self._store.query(conn, query)
            return await self._store.purge(conn, [i.instance_id for i in instances])
